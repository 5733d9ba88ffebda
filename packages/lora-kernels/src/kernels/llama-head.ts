/**
 * The LLaMA family's LM head and its cross-entropy on the tab (labels on the device): from the
 * last hidden state hL [M = batch*seq, D] and the targets [M] (IGNORE_INDEX not counted),
 *   y = rmsnorm(hL; norm.weight),  logits = y W^T [M, V]  (W = lm_head.weight [V, D], or
 *   embed_tokens.weight when the config ties them), loss = mean over counted rows of
 *   lse - logit[target], dlogits = (softmax - onehot) / count, dy = dlogits W,
 *   dL/dhL = rmsnorm backward(dy).
 * The reference is llamaHeadLossStep / llamaHeadLogits in packages/model/src/llama.ts.
 *
 * GPT-2's head (head.ts) differs only in the norm (layer norm with a bias) and in always using
 * wte, so this is head.ts's ChunkedHead (the chunk rule, the fused cross-entropy, the per-step
 * flow) with RMSNorm as its final norm. The row variant (rmsnorm and cross-entropy, both row
 * reductions) follows the engine's layer-norm setting, as there.
 */
import type { LlamaConfig } from '@splitllm/model';
import type { GpuContext } from '../gpu';
import { ChunkedHead, chunkedHeadFloats, type LmHeadOptions } from './head';
import { rmsNormBackward, rmsNormForward } from './rmsnorm';

/** Floats the head allocates for `rows` rows in chunks of R (RMSNorm keeps rstd only). */
export function llamaHeadFloats(c: LlamaConfig, rows: number, R: number, splitK = 1): number {
  return chunkedHeadFloats(c.hiddenSize, c.vocabSize, rows, R, 1, splitK);
}

export interface LlamaLmHeadWeights {
  /** [V, D]: lm_head.weight, or embed_tokens.weight when tied */
  head: GPUBuffer;
  /** norm.weight [D] */
  norm: GPUBuffer;
}

/** The options of GPT-2's head: rows, chunk rows, the matmul and row variants. */
export type LlamaLmHeadOptions = LmHeadOptions;

/** The head of one LLaMA engine: ChunkedHead with RMSNorm (norm.weight) before lm_head. */
export class LlamaLmHead extends ChunkedHead {
  constructor(gpu: GpuContext, c: LlamaConfig, w: LlamaLmHeadWeights, o: LlamaLmHeadOptions) {
    const D = c.hiddenSize;
    super(gpu, { V: c.vocabSize, D, head: w.head, label: 'llama-head-step' }, o, (b) => {
      const rstd = b.scratch(b.chunkRows, 'head-chunk-rstd');
      const rn = { variant: o.rowVariant };
      return {
        forward: (rows) =>
          rmsNormForward(gpu, { x: b.h, weight: w.norm, y: b.y, rstd }, { M: rows, D, eps: c.rmsNormEps }, rn),
        backward: (rows) =>
          rmsNormBackward(gpu, { x: b.h, weight: w.norm, rstd, dy: b.dy, dx: b.dh }, { M: rows, D }, rn),
      };
    });
  }
}
