/**
 * Token streams to batches. Training samples random windows of T+1 tokens (inputs and
 * next-token targets); evaluation walks the stream in non-overlapping windows so every token
 * after the first is predicted exactly once. Padding is on the right only (the causal mask then
 * keeps real positions from attending to it) and padded targets are IGNORE_INDEX.
 */
import type { TokenBatch } from './model';
import { IGNORE_INDEX } from './ops/cross-entropy';
import type { Rng } from './rng';

function fillRow(batch: TokenBatch, row: number, tokens: ArrayLike<number>, start: number, padId: number): void {
  const { T } = batch;
  const o = row * T;
  for (let t = 0; t < T; t++) {
    const i = start + t;
    const hasInput = i < tokens.length;
    batch.inputIds[o + t] = hasInput ? tokens[i] : padId;
    batch.targets[o + t] = hasInput && i + 1 < tokens.length ? tokens[i + 1] : IGNORE_INDEX;
  }
}

function emptyBatch(B: number, T: number): TokenBatch {
  return { B, T, inputIds: new Int32Array(B * T), targets: new Int32Array(B * T) };
}

/** B random windows; a stream shorter than T+1 gives padded rows. */
export function sampleBatch(tokens: ArrayLike<number>, B: number, T: number, rng: Rng, padId: number): TokenBatch {
  if (tokens.length < 2) throw new Error('need at least 2 tokens to train on');
  const batch = emptyBatch(B, T);
  const span = Math.max(1, tokens.length - T);
  for (let b = 0; b < B; b++) fillRow(batch, b, tokens, rng.int(span), padId);
  return batch;
}

/** Consecutive non-overlapping windows covering the stream, B rows per batch (last one padded). */
export function evalBatches(tokens: ArrayLike<number>, B: number, T: number, padId: number): TokenBatch[] {
  const starts: number[] = [];
  for (let s = 0; s + 1 < tokens.length; s += T) starts.push(s);
  const batches: TokenBatch[] = [];
  for (let i = 0; i < starts.length; i += B) {
    const rows = starts.slice(i, i + B);
    const batch = emptyBatch(rows.length, T);
    for (const [r, s] of rows.entries()) fillRow(batch, r, tokens, s, padId);
    batches.push(batch);
  }
  return batches;
}

/**
 * Cross-entropy (nats per token) of a unigram model fitted on the very tokens it is scored on,
 * with add-one smoothing over the vocabulary: the baseline a language model must beat. Scored
 * on the same positions the model is (every token after the first).
 */
export function unigramLoss(tokens: ArrayLike<number>, vocabSize: number): number {
  const counts = new Float64Array(vocabSize);
  for (let i = 1; i < tokens.length; i++) counts[tokens[i]]++;
  const total = tokens.length - 1 + vocabSize;
  let nll = 0;
  for (let i = 1; i < tokens.length; i++) nll -= Math.log((counts[tokens[i]] + 1) / total);
  return nll / (tokens.length - 1);
}
