/**
 * Which kernel variants to run on this adapter. The defaults are tuned for real GPUs (shared
 * memory tiles, a workgroup per row); CPU drivers (SwiftShader, lavapipe/llvmpipe, WARP) run
 * workgroup barriers very slowly and want the barrier-free variants instead (measured in
 * docs/benchmarks.md). On a real GPU the matmul variant can also be timed at the engine's own
 * shapes, which costs a few milliseconds.
 */
import type { Gpt2Config } from '@splitllm/shared';
import { SOFTWARE_ADAPTER_VARIANTS, type KernelVariants } from './engine';
import type { AdapterSummary, GpuContext } from './gpu';
import { DEFAULT_LAYERNORM_VARIANT } from './kernels/layernorm';
import { DEFAULT_ATTENTION_VARIANT } from './kernels/attention';
import { DEFAULT_MATMUL_VARIANT, timeMatmulVariants, type MatmulDims } from './kernels/matmul';

export const GPU_DEFAULT_VARIANTS: Required<KernelVariants> = {
  matmul: DEFAULT_MATMUL_VARIANT,
  layernorm: DEFAULT_LAYERNORM_VARIANT,
  attention: DEFAULT_ATTENTION_VARIANT,
};

/** A CPU implementation of WebGPU/Vulkan rather than a GPU. */
export function isSoftwareAdapter(a: AdapterSummary): boolean {
  return a.isFallbackAdapter || /swiftshader|llvmpipe|lavapipe|softpipe|warp|microsoft basic render/i.test(a.name);
}

/** The matmul shapes of one user-segment step (forward and backward use all three layouts). */
export function engineMatmulShapes(c: Gpt2Config, batch: number, seq: number): MatmulDims[] {
  const M = batch * seq;
  return [
    { M, K: c.nEmbd, N: 3 * c.nEmbd },
    { M, K: c.nEmbd, N: c.nInner },
    { M, K: c.nInner, N: c.nEmbd },
  ];
}

export interface VariantChoice {
  variants: Required<KernelVariants>;
  reason: string;
}

/**
 * Variants for this adapter: the software set on CPU adapters; on a GPU the defaults, with the
 * matmul variant timed at `shapes` when given.
 */
export async function chooseKernelVariants(gpu: GpuContext, shapes?: MatmulDims[]): Promise<VariantChoice> {
  if (isSoftwareAdapter(gpu.adapter)) {
    return { variants: { ...SOFTWARE_ADAPTER_VARIANTS }, reason: `${gpu.adapter.name} is a software adapter: barrier-free kernels` };
  }
  if (!shapes?.length) return { variants: { ...GPU_DEFAULT_VARIANTS }, reason: 'GPU adapter: GPU-tuned defaults' };
  const timings = await timeMatmulVariants(gpu, shapes, { runs: 3 });
  return {
    variants: { ...GPU_DEFAULT_VARIANTS, matmul: timings[0].variant },
    reason: `GPU adapter: matmul timed at the engine's shapes (${timings.map((t) => `${t.variant} ${t.ms.toFixed(2)} ms`).join(', ')})`,
  };
}
