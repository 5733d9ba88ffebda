/**
 * Attack (a): a learned decoder from activation rows to token ids, trained only on text the
 * attacker owns (public text run through the public checkpoint and the adapter it received).
 *
 * Ridge regression from the row to the input embedding space, then the nearest wte row:
 *   features  f(h) = [h, layerNorm(h), 1]           (the normalized copy is what the next block
 *                                                    reads; the raw copy keeps the scale)
 *   map       W = argmin ||F W - E||^2 + lambda ||W||^2,  E = wte[true ids]
 *   decode    argmax_v 2 <f(h) W, wte_v> - ||wte_v||^2   (nearest wte row in Euclidean distance)
 * Why this and not a softmax classifier: it is one closed-form solve (about a second on the
 * shipped model), it generalizes to tokens the public text never shows (any wte row can win,
 * a classifier can only name classes it was trained on), and on the shipped model it measured
 * better (top-1 1.00 vs 0.73-0.80 for a least-squares one-hot classifier at k=1, no noise).
 * With noise the attacker trains on noisy rows (it knows sigma from the manifest), which is
 * also the right regularizer. The scores double as a shortlist for the search attack.
 */
import { matmul, matmulAT, matmulBT } from '@splitllm/model';

export interface RidgeDecoderOptions {
  /** Ridge strength relative to the mean diagonal of F^T F (scale-free). Default 1e-4 (picked on the shipped model). */
  lambda?: number;
  /** Also feed the LayerNorm-normalized row (F = 2D + 1 instead of D + 1). Default: when D <= 256 (cost is F^2). */
  normalizedCopy?: boolean;
}

export class RidgeDecoder {
  private constructor(
    readonly D: number,
    readonly V: number,
    private readonly normalizedCopy: boolean,
    /** [F, D] */
    private readonly W: Float32Array,
    private readonly wte: Float32Array,
    private readonly wteNorm2: Float32Array,
  ) {}

  private get F(): number {
    return this.normalizedCopy ? 2 * this.D + 1 : this.D + 1;
  }

  /**
   * Fits the decoder on rows [M, D] whose true tokens are `ids` [M]; `wte` is the model's token
   * embedding [V, D] (public).
   */
  static train(
    rows: Float32Array,
    ids: ArrayLike<number>,
    wte: Float32Array,
    D: number,
    opts: RidgeDecoderOptions = {},
  ): RidgeDecoder {
    const M = ids.length;
    if (!(D > 0) || wte.length % D !== 0) throw new RangeError('decoder: wte must be [V, D]');
    const V = wte.length / D;
    if (rows.length !== M * D) throw new RangeError(`decoder: ${M} ids need ${M * D} row values, got ${rows.length}`);
    if (M === 0) throw new RangeError('decoder: no training rows');
    const normalizedCopy = opts.normalizedCopy ?? D <= 256;
    const lambda = opts.lambda ?? 1e-4;
    if (!(lambda > 0)) throw new RangeError('decoder: lambda must be > 0');
    const F = normalizedCopy ? 2 * D + 1 : D + 1;
    const X = features(rows, M, D, normalizedCopy);
    const Y = new Float32Array(M * D);
    for (let i = 0; i < M; i++) {
      const id = ids[i];
      if (!(Number.isInteger(id) && id >= 0 && id < V))
        throw new RangeError(`decoder: token id ${id} outside [0, ${V})`);
      Y.set(wte.subarray(id * D, (id + 1) * D), i * D);
    }
    const A = Float64Array.from(matmulAT(X, X, M, F, F));
    const XtY = matmulAT(X, Y, M, F, D);
    let trace = 0;
    for (let a = 0; a < F; a++) trace += A[a * F + a];
    const ridge = (lambda * trace) / F;
    for (let a = 0; a < F; a++) A[a * F + a] += ridge;
    const W = Float32Array.from(choleskySolve(A, Float64Array.from(XtY), F, D));
    const wteNorm2 = new Float32Array(V);
    for (let v = 0; v < V; v++) {
      let s = 0;
      for (let e = 0; e < D; e++) s += wte[v * D + e] * wte[v * D + e];
      wteNorm2[v] = s;
    }
    return new RidgeDecoder(D, V, normalizedCopy, W, wte, wteNorm2);
  }

  /** Scores [M, V] of rows [M, D]: higher is closer (2 <pred, wte_v> - ||wte_v||^2). */
  scores(rows: Float32Array, M: number): Float32Array {
    if (rows.length !== M * this.D) throw new RangeError(`decoder: rows must be [${M}, ${this.D}]`);
    const pred = matmul(features(rows, M, this.D, this.normalizedCopy), this.W, M, this.F, this.D);
    const s = matmulBT(pred, this.wte, M, this.D, this.V);
    for (let i = 0; i < M; i++) {
      for (let v = 0; v < this.V; v++) s[i * this.V + v] = 2 * s[i * this.V + v] - this.wteNorm2[v];
    }
    return s;
  }

  /** Best token of each row. */
  predict(rows: Float32Array, M: number): Int32Array {
    const s = this.scores(rows, M);
    const out = new Int32Array(M);
    for (let i = 0; i < M; i++) out[i] = topN(s.subarray(i * this.V, (i + 1) * this.V), 1)[0];
    return out;
  }
}

/** Indices of the n largest values, best first. */
export function topN(scores: ArrayLike<number>, n: number): Int32Array {
  const k = Math.min(n, scores.length);
  const idx: number[] = [];
  const val: number[] = [];
  for (let v = 0; v < scores.length; v++) {
    const s = scores[v];
    if (idx.length === k && s <= val[k - 1]) continue;
    let p = idx.length === k ? k - 1 : idx.length;
    while (p > 0 && val[p - 1] < s) p--;
    idx.splice(p, 0, v);
    val.splice(p, 0, s);
    if (idx.length > k) {
      idx.pop();
      val.pop();
    }
  }
  return Int32Array.from(idx);
}

function features(rows: Float32Array, M: number, D: number, normalizedCopy: boolean): Float32Array {
  const F = normalizedCopy ? 2 * D + 1 : D + 1;
  const X = new Float32Array(M * F);
  for (let i = 0; i < M; i++) {
    const r = i * D;
    const o = i * F;
    for (let e = 0; e < D; e++) X[o + e] = rows[r + e];
    if (normalizedCopy) {
      let mu = 0;
      for (let e = 0; e < D; e++) mu += rows[r + e];
      mu /= D;
      let v = 0;
      for (let e = 0; e < D; e++) v += (rows[r + e] - mu) ** 2;
      const rs = 1 / Math.sqrt(v / D + 1e-5);
      for (let e = 0; e < D; e++) X[o + D + e] = (rows[r + e] - mu) * rs;
    }
    X[o + F - 1] = 1;
  }
  return X;
}

/** Solves A X = B for symmetric positive definite A [n, n], B [n, m] (float64 Cholesky). */
function choleskySolve(A: Float64Array, B: Float64Array, n: number, m: number): Float64Array {
  const L = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = A[i * n + j];
      for (let q = 0; q < j; q++) s -= L[i * n + q] * L[j * n + q];
      if (i === j) {
        if (!(s > 0)) throw new Error('decoder: the normal equations are not positive definite');
        L[i * n + i] = Math.sqrt(s);
      } else L[i * n + j] = s / L[j * n + j];
    }
  }
  const X = new Float64Array(n * m);
  const z = new Float64Array(n);
  for (let c = 0; c < m; c++) {
    for (let i = 0; i < n; i++) {
      let s = B[i * m + c];
      for (let q = 0; q < i; q++) s -= L[i * n + q] * z[q];
      z[i] = s / L[i * n + i];
    }
    for (let i = n - 1; i >= 0; i--) {
      let s = z[i];
      for (let q = i + 1; q < n; q++) s -= L[q * n + i] * X[q * m + c];
      X[i * m + c] = s / L[i * n + i];
    }
  }
  return X;
}
