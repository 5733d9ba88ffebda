/**
 * softmaxCrossEntropy with ignored positions: loss = mean over rows whose target is not
 * IGNORE_INDEX of -log softmax(logits)[target]. Log-sum-exp with the max subtracted, float64.
 * Backward: dlogits = (softmax - onehot(target)) * dloss / count on counted rows, 0 elsewhere.
 */
export const IGNORE_INDEX = -100;

export interface CrossEntropyCache {
  logits: Float32Array;
  targets: Int32Array;
  /** log-sum-exp per row. */
  lse: Float64Array;
  count: number;
}

export function softmaxCrossEntropyForward(
  logits: Float32Array,
  targets: Int32Array,
  N: number,
  V: number,
): { loss: number; count: number; cache: CrossEntropyCache } {
  const lse = new Float64Array(N);
  let total = 0;
  let count = 0;
  for (let i = 0; i < N; i++) {
    const tgt = targets[i];
    if (tgt === IGNORE_INDEX) continue;
    if (!(tgt >= 0 && tgt < V)) throw new RangeError(`target ${tgt} at row ${i} is outside the vocabulary (${V})`);
    const row = i * V;
    let max = -Infinity;
    for (let j = 0; j < V; j++) if (logits[row + j] > max) max = logits[row + j];
    let s = 0;
    for (let j = 0; j < V; j++) s += Math.exp(logits[row + j] - max);
    lse[i] = max + Math.log(s);
    total += lse[i] - logits[row + tgt];
    count++;
  }
  const loss = count > 0 ? total / count : 0;
  return { loss, count, cache: { logits, targets, lse, count } };
}

export function softmaxCrossEntropyBackward(cache: CrossEntropyCache, N: number, V: number, dloss = 1): Float32Array {
  const { logits, targets, lse, count } = cache;
  const d = new Float32Array(N * V);
  if (count === 0) return d;
  const k = dloss / count;
  for (let i = 0; i < N; i++) {
    const tgt = targets[i];
    if (tgt === IGNORE_INDEX) continue;
    const row = i * V;
    const l = lse[i];
    for (let j = 0; j < V; j++) d[row + j] = Math.exp(logits[row + j] - l) * k;
    d[row + tgt] -= k;
  }
  return d;
}
