/**
 * The types every family's model code shares (model.ts for GPT-2, llama.ts for the LLaMA family):
 * a batch, a LoRA pair, gradients and one step's result. Kept apart so that the families' files
 * import them from here rather than from each other.
 */
import type { Tensor } from './tensor';

/** A batch of B rows of T positions; targets[b,t] is the token after inputIds[b,t] or IGNORE_INDEX. */
export interface TokenBatch {
  B: number;
  T: number;
  inputIds: Int32Array;
  targets: Int32Array;
}

/** One adapted linear's LoRA pair: A [in, r], B [r, out] (the same layout for every family). */
export interface LoraPair {
  A: Tensor;
  B: Tensor;
}

/** Gradients of LoRA pairs, keyed like LoraAdapter.layers. */
export type LoraGrads = Map<string, { A: Float32Array; B: Float32Array }>;
/** Gradients of base weights, keyed by the weights' names (pre-training only). */
export type BaseGrads = Map<string, Float32Array>;

export interface StepResult {
  loss: number;
  /** number of counted (non-ignored) targets */
  count: number;
  loraGrads: LoraGrads;
  baseGrads?: BaseGrads;
}
