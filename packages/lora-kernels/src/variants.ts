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
import { budgetChunkRows, HEAD_LOGITS_BUDGET_BYTES } from './kernels/head';
import { DEFAULT_LAYERNORM_VARIANT } from './kernels/layernorm';
import { DEFAULT_ATTENTION_VARIANT } from './kernels/attention';
import {
  DEFAULT_MATMUL_VARIANT,
  SPLIT_K_VARIANTS,
  splitKSlices,
  timeMatmulVariants,
  timeSplitK,
  type MatmulDims,
  type TimedMatmul,
} from './kernels/matmul';

export const GPU_DEFAULT_VARIANTS: Required<KernelVariants> = {
  matmul: DEFAULT_MATMUL_VARIANT,
  lowRank: DEFAULT_LOW_RANK_VARIANT,
  layernorm: DEFAULT_LAYERNORM_VARIANT,
  attention: DEFAULT_ATTENTION_VARIANT,
  headSplitK: 1,
};

/** A CPU implementation of WebGPU/Vulkan rather than a GPU. */
export function isSoftwareAdapter(a: AdapterSummary): boolean {
  return a.isFallbackAdapter || /swiftshader|llvmpipe|lavapipe|softpipe|warp|microsoft basic render/i.test(a.name);
}

export interface EngineShapes {
  /** the full-size products: the blocks' frozen weights and the LM head, in the layouts they run */
  full: TimedMatmul[];
  /** LoRA's rank-r products */
  lowRank: TimedMatmul[];
  /** the LM head's dy = dlogits W for a full chunk, [R, V] x [V, D] ('nn'): the product split-K is timed on */
  headBackward?: MatmulDims;
}

/** One step's products, as the engine runs them (what stepMatmulShapes builds the timing list from). */
export interface StepProducts {
  /** rows: batch * seq */
  M: number;
  /** hidden width */
  D: number;
  /** vocabulary: the LM head's rows (labels on the device, the default) */
  V: number;
  r: number;
  /** the blocks the user segment runs */
  blocks: number;
  /** one block's frozen weights, [K, N] each (x W is [M, K] x [K, N]) */
  weights: Array<[number, number]>;
  /** the widest output a LoRA pair adapts (its B is [r, N]) */
  loraOut: number;
}

/**
 * The products one user-segment step runs, each in its own layouts and weighted by how often a step
 * runs it (LoRA trains adapters only: no frozen weight gets a gradient, so no full-size 'tn'):
 *  - a block's frozen weight [K, N]: x W forward ('nn'), dy W^T backward ('nt'), once per block;
 *  - the LM head [V, D]: logits = y W^T ('nt') and dy = dlogits W ('nn'), once per chunk of rows;
 *  - LoRA's rank-r products at the widest adapted output N: x A, xa B ('nn'); g = s dy B^T,
 *    g A^T ('nt'); dA = x^T g, dB = s xa^T dy ('tn').
 * Equal products are merged with their counts added.
 */
export function stepMatmulShapes(p: StepProducts): EngineShapes {
  const { M, D, V, r, blocks, loraOut: N } = p;
  const full: TimedMatmul[] = [];
  for (const [K, n] of p.weights) {
    full.push({ M, K, N: n, layouts: ['nn'], count: blocks }, { M, K: n, N: K, layouts: ['nt'], count: blocks });
  }
  // the head runs its rows in chunks (kernels/head.ts): the chunk's products, once per chunk
  const R = budgetChunkRows(M, V);
  const chunks = Math.ceil(M / R);
  full.push({ M: R, K: D, N: V, layouts: ['nt'], count: chunks }, { M: R, K: V, N: D, layouts: ['nn'], count: chunks });
  const lowRank: TimedMatmul[] = [
    { M, K: D, N: r, layouts: ['nn'] },
    { M, K: r, N, layouts: ['nn'] },
    { M, K: N, N: r, layouts: ['nt'] },
    { M, K: r, N: D, layouts: ['nt'] },
    { M: D, K: M, N: r, layouts: ['tn'] },
    { M: r, K: M, N, layouts: ['tn'] },
  ];
  return { full: merged(full), lowRank: merged(lowRank), headBackward: { M: R, K: V, N: D } };
}

/**
 * The split-K counts timed for the head's dy = dlogits W: powers of two up to 64, each while it
 * gives more slices of V than the last (slices are whole multiples of 16 long, so a short V runs
 * fewer) and its partials (slices x R x D floats) stay within the head's logits budget.
 */
export function headSplitKCandidates(d: MatmulDims): number[] {
  const out = [1];
  let last = 1;
  for (let s = 2; s <= 64; s *= 2) {
    const { slices } = splitKSlices(d.K, s);
    if (slices <= last || slices * d.M * d.N * 4 > HEAD_LOGITS_BUDGET_BYTES) break;
    out.push(s);
    last = slices;
  }
  return out;
}

/** Equal products (same sizes and layouts) as one, with their counts added. */
function merged(list: TimedMatmul[]): TimedMatmul[] {
  const byKey = new Map<string, TimedMatmul>();
  for (const t of list) {
    const key = `${t.M}x${t.K}x${t.N} ${(t.layouts ?? []).join(',')}`;
    const seen = byKey.get(key);
    if (seen) seen.count = (seen.count ?? 1) + (t.count ?? 1);
    else byKey.set(key, { ...t });
  }
  return [...byKey.values()];
}

/** The products of one GPT-2 user-segment step (embedding + `blocks` blocks; see stepMatmulShapes). */
export function engineMatmulShapes(c: Gpt2Config, batch: number, seq: number, r = 8, blocks = 1): EngineShapes {
  const D = c.nEmbd;
  return stepMatmulShapes({
    M: batch * seq,
    D,
    V: c.vocabSize,
    r,
    blocks,
    weights: [
      [D, 3 * D],
      [D, D],
      [D, c.nInner],
      [c.nInner, D],
    ],
    loraOut: 3 * D,
  });
}

export interface VariantChoice {
  variants: Required<KernelVariants>;
  reason: string;
}

/**
 * Variants for this adapter: the software set on CPU adapters; on a GPU the defaults, with the
 * full-size and the rank-r matmul variants timed at `shapes` when given, and then, where the
 * full-size one runs split-K, the head's dy product timed at each of headSplitKCandidates.
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
  const matmul = full[0].variant;
  let headSplitK = 1;
  let split = '';
  const head = shapes.headBackward;
  if (head && SPLIT_K_VARIANTS.includes(matmul)) {
    const timed = await timeSplitK(gpu, head, 'nn', matmul, headSplitKCandidates(head));
    headSplitK = timed[0].splitK;
    const each = timed.map((t) => `${t.splitK} ${t.ms.toFixed(2)} ms`).join(', ');
    split = `; head dy ${head.M}x${head.K}x${head.N} split-K: ${each}`;
  }
  return {
    variants: { ...GPU_DEFAULT_VARIANTS, matmul, lowRank: low[0].variant, headSplitK },
    reason: `GPU adapter: matmul timed at the engine's shapes (full-size: ${list(full)}; rank-r: ${list(low)}${split})`,
  };
}
