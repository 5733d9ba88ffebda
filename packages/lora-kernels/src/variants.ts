/**
 * Which kernel variants to run on this adapter. The defaults are tuned for real GPUs (shared
 * memory tiles, a workgroup per row); CPU drivers (SwiftShader, lavapipe/llvmpipe, WARP) run
 * workgroup barriers very slowly and want the barrier-free variants instead (measured in
 * docs/benchmarks.md). On a real GPU the matmul variant can also be timed at the engine's own
 * shapes, which costs a few milliseconds.
 */
import type { Gpt2Config } from '@splitllm/model';
import { DEFAULT_LOW_RANK_VARIANT, SOFTWARE_ADAPTER_VARIANTS, type KernelVariants } from './engine';
import type { AdapterSummary, GpuContext } from './gpu';
import { DEFAULT_LAYERNORM_VARIANT } from './kernels/layernorm';
import { DEFAULT_ATTENTION_VARIANT } from './kernels/attention';
import { DEFAULT_MATMUL_VARIANT, timeMatmulVariants, type MatmulDims } from './kernels/matmul';

export const GPU_DEFAULT_VARIANTS: Required<KernelVariants> = {
  matmul: DEFAULT_MATMUL_VARIANT,
  lowRank: DEFAULT_LOW_RANK_VARIANT,
  layernorm: DEFAULT_LAYERNORM_VARIANT,
  attention: DEFAULT_ATTENTION_VARIANT,
};

/** A CPU implementation of WebGPU/Vulkan rather than a GPU. */
export function isSoftwareAdapter(a: AdapterSummary): boolean {
  return a.isFallbackAdapter || /swiftshader|llvmpipe|lavapipe|softpipe|warp|microsoft basic render/i.test(a.name);
}

export interface EngineShapes {
  /** the full-size products (x W; the backward's dy W^T has the same sizes) */
  full: MatmulDims[];
  /** LoRA's rank-r products: x A, xa B, and dA = x^T g */
  lowRank: MatmulDims[];
}

/** The matmul shapes of one user-segment step (forward and backward use all three layouts). */
export function engineMatmulShapes(c: Gpt2Config, batch: number, seq: number, r = 8): EngineShapes {
  const M = batch * seq;
  return {
    full: [
      { M, K: c.nEmbd, N: 3 * c.nEmbd },
      { M, K: c.nEmbd, N: c.nInner },
      { M, K: c.nInner, N: c.nEmbd },
    ],
    lowRank: [
      { M, K: c.nEmbd, N: r },
      { M, K: r, N: 3 * c.nEmbd },
      { M: c.nEmbd, K: M, N: r },
    ],
  };
}

export interface VariantChoice {
  variants: Required<KernelVariants>;
  reason: string;
}

/**
 * Variants for this adapter: the software set on CPU adapters; on a GPU the defaults, with the
 * full-size and the rank-r matmul variants timed at `shapes` when given.
 */
export async function chooseKernelVariants(gpu: GpuContext, shapes?: EngineShapes): Promise<VariantChoice> {
  if (isSoftwareAdapter(gpu.adapter)) {
    return {
      variants: { ...SOFTWARE_ADAPTER_VARIANTS },
      reason: `${gpu.adapter.name} is a software adapter: barrier-free kernels`,
    };
  }
  if (!shapes) return { variants: { ...GPU_DEFAULT_VARIANTS }, reason: 'GPU adapter: GPU-tuned defaults' };
  const full = await timeMatmulVariants(gpu, shapes.full, { runs: 3 });
  const low = await timeMatmulVariants(gpu, shapes.lowRank, { runs: 3 });
  const list = (ts: typeof full) => ts.map((t) => `${t.variant} ${t.ms.toFixed(2)} ms`).join(', ');
  return {
    variants: { ...GPU_DEFAULT_VARIANTS, matmul: full[0].variant, lowRank: low[0].variant },
    reason: `GPU adapter: matmul timed at the engine's shapes (full-size: ${list(full)}; rank-r: ${list(low)})`,
  };
}
