/**
 * Attack (b): search with the known weights. The observer (edge: h1 = blocks [0,k); cloud:
 * h2 = blocks [0,m) of the tab's tokens) holds the public checkpoint and the adapter, so it can
 * compute the row any guess would give. Left to right, position t: every candidate token v is
 * run through the segment on top of the already recovered prefix (its keys and values cached,
 * see forward.ts) and the candidate whose row is closest to the observed row (squared Euclidean
 * distance: the maximum-likelihood choice under Gaussian noise) is kept and becomes part of the
 * prefix.
 *
 * Candidates: the whole vocabulary, or a shortlist (the decoder's top N) when the vocabulary is
 * large or time is short. A shortlist can miss the true token; the search then sees it, because
 * the best distance is far above what the true token gives, and rescans the whole vocabulary:
 * the `threshold` (calibrated on public text with `calibrateThreshold`) says what "far" is, and
 * `maxFullScans` bounds the cost (after an early mistake every later distance grows a little).
 *
 * With noise the attacker also knows what text is likely: the whole public model gives
 * p(v | recovered prefix), and the maximum a posteriori choice is
 *   argmin_v  ||row(v) - observed||^2 / (2 noiseVar) - log p(v | prefix)
 * (noiseVar: the per-dimension variance of the observed row around the true one, calibrated on
 * public text). The language model's own top candidates join the shortlist.
 */
import { getWeight, layerNormForward, matmulBT } from '@splitllm/model';
import {
  type PrefixCache,
  type Segment,
  acceptCandidate,
  candidateForward,
  embedCandidates,
  newPrefixCache,
} from './forward';

export interface SearchOptions {
  /** Candidates for position t given its observed row; default the whole vocabulary. */
  shortlist?: (t: number, row: Float32Array) => ArrayLike<number>;
  /** Distance above which the shortlist is deemed to have missed and the whole vocabulary is scored. */
  threshold?: number;
  /** At most this many whole-vocabulary rescans per sequence (default: no limit). */
  maxFullScans?: number;
  /** Candidates per forward batch (bounds memory; default 1024). */
  batch?: number;
  /** Language-model prior (maximum a posteriori search); needs noiseVar. */
  prior?: { segment: Segment; topN: number };
  /** Per-dimension variance of the observed rows around the true rows (> 0 with a prior). */
  noiseVar?: number;
}

export interface SearchResult {
  ids: Int32Array;
  /** Squared distance of the chosen candidate at each position. */
  distances: Float64Array;
  /** Positions rescanned over the whole vocabulary. */
  fullScans: number;
}

function allIds(V: number): Int32Array {
  const a = new Int32Array(V);
  for (let v = 0; v < V; v++) a[v] = v;
  return a;
}

/** Scores candidates at the cache's next position; returns the best one and its distance, having accepted it. */
function bestOf(
  seg: Segment,
  cache: PrefixCache,
  candidates: ArrayLike<number>,
  row: Float32Array,
  batch: number,
  penalty?: (id: number, dist: number) => number,
): { id: number; dist: number; accept: () => void } {
  const D = seg.model.config.nEmbd;
  const t = cache.length;
  let best = { id: -1, dist: Infinity, accept: () => {} };
  let bestScore = Infinity;
  for (let s = 0; s < candidates.length; s += batch) {
    const ids = Array.from({ length: Math.min(batch, candidates.length - s) }, (_, i) => candidates[s + i]);
    const out = candidateForward(seg, cache, embedCandidates(seg, ids, t), ids.length);
    for (let n = 0; n < ids.length; n++) {
      let d = 0;
      for (let e = 0; e < D; e++) {
        const diff = out.y[n * D + e] - row[e];
        d += diff * diff;
      }
      const score = penalty ? penalty(ids[n], d) : d;
      if (score < bestScore) {
        bestScore = score;
        best = { id: ids[n], dist: d, accept: () => acceptCandidate(seg, cache, out, n) };
      }
    }
  }
  return best;
}

/**
 * Recovers the tokens of one sequence from its observed rows [T, D] at the output of `seg`
 * (which must start at the embedding).
 */
export function searchRecover(seg: Segment, observed: Float32Array, T: number, opts: SearchOptions = {}): SearchResult {
  const c = seg.model.config;
  const D = c.nEmbd;
  if (seg.from !== 0) throw new Error('search: the segment must start at the embedding');
  if (!(Number.isInteger(T) && T >= 1 && T <= c.nPositions))
    throw new RangeError(`search: T=${T} not in [1, ${c.nPositions}]`);
  if (observed.length !== T * D) throw new RangeError(`search: observed rows must be [${T}, ${D}]`);
  const batch = opts.batch ?? 1024;
  const full = allIds(c.vocabSize);
  const cache = newPrefixCache(seg, T);
  const ids = new Int32Array(T);
  const distances = new Float64Array(T);
  let fullScans = 0;
  const lm = opts.prior ? new LmPrior(opts.prior.segment, T) : undefined;
  if (lm && !(opts.noiseVar !== undefined && opts.noiseVar > 0))
    throw new RangeError('search: a prior needs noiseVar > 0');
  const twoVar = 2 * (opts.noiseVar ?? 1);
  for (let t = 0; t < T; t++) {
    const row = observed.subarray(t * D, (t + 1) * D);
    const logp = lm?.logProbs();
    const penalty = logp ? (id: number, d: number) => d / twoVar - logp[id] : undefined;
    let candidates: ArrayLike<number> = opts.shortlist ? opts.shortlist(t, row) : full;
    if (logp && opts.prior && candidates !== full) {
      const set = new Set<number>(Array.from(candidates));
      for (const v of topOf(logp, opts.prior.topN)) set.add(v);
      candidates = Int32Array.from(set);
    }
    let best = bestOf(seg, cache, candidates, row, batch, penalty);
    const canRescan = opts.maxFullScans === undefined || fullScans < opts.maxFullScans;
    if (candidates !== full && opts.threshold !== undefined && best.dist > opts.threshold && canRescan) {
      fullScans++;
      const wide = bestOf(seg, cache, full, row, batch, penalty);
      if ((penalty ? penalty(wide.id, wide.dist) : wide.dist) < (penalty ? penalty(best.id, best.dist) : best.dist))
        best = wide;
    }
    best.accept();
    lm?.accept(best.id);
    ids[t] = best.id;
    distances[t] = best.dist;
  }
  return { ids, distances, fullScans };
}

/**
 * Squared distance between the observed rows and the rows the true tokens give on the true
 * prefix, per position: what a correct guess scores. Run on public text with the same noise,
 * its high quantile is the search's rescan threshold.
 */
export function trueDistances(seg: Segment, ids: ArrayLike<number>, observed: Float32Array): Float64Array {
  const D = seg.model.config.nEmbd;
  const T = ids.length;
  const cache = newPrefixCache(seg, T);
  const out = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    const r = bestOf(seg, cache, [ids[t]], observed.subarray(t * D, (t + 1) * D), 1);
    r.accept();
    out[t] = r.dist;
  }
  return out;
}

/**
 * Rescan threshold from public calibration distances: their q-quantile (default 0.99) times a
 * margin of 1.5, and never below 1e-6 of the mean squared row norm (float rounding between the
 * tab's engine and the attacker's forward must not trigger rescans when there is no noise).
 */
export function calibrateThreshold(distances: ArrayLike<number>, rowNorm2: number, q = 0.99): number {
  if (distances.length === 0) throw new RangeError('calibrateThreshold: no distances');
  const sorted = Float64Array.from(distances).sort();
  const qv = sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return Math.max(1.5 * qv, 1e-6 * rowNorm2);
}

function topOf(x: Float64Array, n: number): number[] {
  const idx = Array.from(x.keys());
  idx.sort((a, b) => x[b] - x[a]);
  return idx.slice(0, n);
}

/**
 * p(next token | accepted prefix) from the whole public model (blocks [0, L), ln_f, tied head),
 * run one accepted token at a time on its own prefix cache. Position 0 has no context: uniform.
 */
export class LmPrior {
  private readonly cache: PrefixCache;
  private logp: Float64Array;

  constructor(
    private readonly seg: Segment,
    capacity: number,
  ) {
    if (seg.from !== 0 || seg.to !== seg.model.config.nLayer)
      throw new Error('LmPrior: the segment must be the whole model');
    this.cache = newPrefixCache(seg, capacity);
    this.logp = new Float64Array(seg.model.config.vocabSize).fill(-Math.log(seg.model.config.vocabSize));
  }

  /** log p(v | prefix) for every v. */
  logProbs(): Float64Array {
    return this.logp;
  }

  accept(id: number): void {
    const c = this.seg.model.config;
    const out = candidateForward(this.seg, this.cache, embedCandidates(this.seg, [id], this.cache.length), 1);
    acceptCandidate(this.seg, this.cache, out, 0);
    const w = this.seg.model.weights;
    const ln = layerNormForward(
      out.y,
      getWeight(w, 'ln_f.weight').data,
      getWeight(w, 'ln_f.bias').data,
      1,
      c.nEmbd,
      c.layerNormEpsilon,
    );
    const logits = matmulBT(ln.y, this.seg.wte, 1, c.nEmbd, c.vocabSize);
    let max = -Infinity;
    for (const l of logits) if (l > max) max = l;
    let sum = 0;
    for (const l of logits) sum += Math.exp(l - max);
    const lse = max + Math.log(sum);
    this.logp = Float64Array.from(logits, (l) => l - lse);
  }
}
