/**
 * The measurement: every attack against every split point and noise level, on private-like
 * token sequences, with an attacker that trains and calibrates only on public token ids.
 * Takes token arrays, never files (the CLI reads and tokenizes the texts), so it runs anywhere.
 *
 * Per (k, sigma):
 *   the tab's rows     h1 = blocks[0,k)(embed(ids)) + N(0, sigma^2)       (seeded Rng)
 *   edge               decoder and search on h1, segment [0, k)
 *   cloud (m = cut(k)) decoder and search on h2 = blocks[k,m)(h1), segment [0, m); and the
 *                      labels from dL/dhL the tab sends back (hL = blocks[m,L)(h2), the tab's
 *                      head step on the next-token targets)
 * The attacker's training rows come from the public ids cut into windows as long as the
 * private sequences, with its own noise draw of the same sigma.
 */
import {
  type Gpt2Model,
  IGNORE_INDEX,
  type LoraAdapter,
  Rng,
  blocksForward,
  defaultSplitPlan,
  embedForward,
  getWeight,
  headLossStep,
} from '@splitllm/model';
import { RidgeDecoder, topN } from './decoder';
import { makeSegment } from './forward';
import { recoverLabelsFromGradient } from './gradient-labels';
import { noisyCopy } from './noise';
import { type AttackName, type Observer, type RecoveryFigure, tokenRate, wordCounts } from './recovery';
import { calibrateThreshold, searchRecover, trueDistances } from './search';

export interface MeasureOptions {
  model: Gpt2Model;
  /** the adapter the observers received (undefined: the base model) */
  adapter?: LoraAdapter;
  /** public token ids the attacker owns (its decoder's training text and its calibration text) */
  publicIds: ArrayLike<number>;
  /** private token sequences, each at most n_positions long (all the same length is typical) */
  sequences: Int32Array[];
  /** text of one token id (the tokenizer's decode of [id]), for word rates */
  piece: (id: number) => string;
  ks: number[];
  sigmas: number[];
  /** who attacks (default both); the cloud costs m/k times the edge */
  observers?: Observer[];
  /** the cloud's cut for split k (default: the default plan's m, at least k + 1) */
  cloudCut?: (k: number) => number;
  /** public tokens the decoder trains on (default 8192 when n_embd <= 256, else 2048) */
  trainTokens?: number;
  /** search candidates per position from the decoder (default 64; >= V scores the whole vocabulary) */
  shortlist?: number;
  /** seed of the tab's and the attacker's noise draws */
  seed?: number;
  onProgress?: (what: string) => void;
}

export interface MeasuredFigure extends RecoveryFigure {
  /** the layers the observer's rows come out of: k for the edge, m for the cloud */
  layers: number;
  positions: number;
  words: number;
  seconds: number;
}

/** Number of progress events measure() emits, for a progress bar. */
export function measureSteps(o: Pick<MeasureOptions, 'ks' | 'sigmas' | 'observers'>): number {
  const obs = o.observers ?? ['edge', 'cloud'];
  return o.ks.length * o.sigmas.length * obs.reduce((n, w) => n + (w === 'edge' ? 2 : 3), 0);
}

function checkOptions(o: MeasureOptions): void {
  const c = o.model.config;
  if (o.ks.length === 0 || o.sigmas.length === 0) throw new RangeError('measure: need at least one k and one sigma');
  for (const k of o.ks) {
    if (!(Number.isInteger(k) && k >= 1 && k < c.nLayer))
      throw new RangeError(`measure: k=${k} not in [1, ${c.nLayer - 1}]`);
  }
  for (const s of o.sigmas)
    if (!(Number.isFinite(s) && s >= 0)) throw new RangeError(`measure: sigma ${s} must be >= 0`);
  if (o.sequences.length === 0) throw new RangeError('measure: no private sequences');
  for (const s of o.sequences) {
    if (s.length < 2 || s.length > c.nPositions)
      throw new RangeError(`measure: sequence length ${s.length} not in [2, ${c.nPositions}]`);
    for (const id of s)
      if (!(id >= 0 && id < c.vocabSize)) throw new RangeError(`measure: token id ${id} outside the vocabulary`);
  }
}

/** Rows at every block boundary 0..upTo of `ids` [B, T]: out[l] = blocks[0,l)(embed). */
function boundaryRows(
  model: Gpt2Model,
  adapter: LoraAdapter | undefined,
  ids: Int32Array,
  B: number,
  T: number,
  upTo: number,
): Float32Array[] {
  const out = [embedForward(model, ids, B, T)];
  for (let l = 0; l < upTo; l++) out.push(blocksForward(model, adapter, out[l], B, T, l, l + 1).y);
  return out;
}

export function measure(o: MeasureOptions): MeasuredFigure[] {
  checkOptions(o);
  const { model, adapter } = o;
  const c = model.config;
  const D = c.nEmbd;
  const V = c.vocabSize;
  const L = c.nLayer;
  const observers = o.observers ?? ['edge', 'cloud'];
  const cut = o.cloudCut ?? ((k: number) => Math.max(defaultSplitPlan(c).m, k + 1));
  const seed = o.seed ?? 1;
  const shortlist = Math.min(o.shortlist ?? 64, V);
  const wte = getWeight(model.weights, 'wte.weight').data;
  const progress = o.onProgress ?? (() => {});

  // private sequences, grouped by length so each group runs as one batch
  const groups = new Map<number, Int32Array[]>();
  for (const s of o.sequences) groups.set(s.length, [...(groups.get(s.length) ?? []), s]);
  const maxK = Math.max(...o.ks);
  const priv = [...groups].map(([T, seqs]) => {
    const ids = new Int32Array(seqs.length * T);
    for (const [b, s] of seqs.entries()) ids.set(s, b * T);
    return { T, seqs, ids, rows: boundaryRows(model, adapter, ids, seqs.length, T, maxK) };
  });

  // public windows, as long as the longest private sequence
  const Tp = Math.max(...o.sequences.map((s) => s.length));
  const want = o.trainTokens ?? (D <= 256 ? 8192 : 2048);
  const Bp = Math.floor(Math.min(want, o.publicIds.length) / Tp);
  if (Bp < 2) throw new RangeError(`measure: the public text needs at least ${2 * Tp} tokens`);
  const pubIds = Int32Array.from({ length: Bp * Tp }, (_, i) => o.publicIds[i]);
  const pubRows = boundaryRows(model, adapter, pubIds, Bp, Tp, maxK);

  const results: MeasuredFigure[] = [];
  for (const k of o.ks) {
    for (const sigma of o.sigmas) {
      // the tab's draw and the attacker's own draw: distinct streams per (k, sigma)
      const tabRng = new Rng(seed * 7919 + k * 131 + Math.round(sigma * 1000));
      const attackerRng = new Rng(seed * 104729 + k * 137 + Math.round(sigma * 1000) + 1);
      const privH1 = priv.map((g) => noisyCopy(g.rows[k], sigma, tabRng));
      const pubH1 = noisyCopy(pubRows[k], sigma, attackerRng);
      for (const who of observers) {
        const m = who === 'edge' ? k : cut(k);
        if (!(m > k && m <= L) && who === 'cloud')
          throw new RangeError(`measure: cloud cut ${m} for k=${k} not in (k, ${L}]`);
        const privObs =
          who === 'edge'
            ? privH1
            : priv.map((g, i) => blocksForward(model, adapter, privH1[i], g.seqs.length, g.T, k, m).y);
        const pubObs = who === 'edge' ? pubH1 : blocksForward(model, adapter, pubH1, Bp, Tp, k, m).y;
        results.push(
          ...rowAttacks(o, k, sigma, who, m, privObs, pubObs, pubIds, Bp, Tp, shortlist, wte, priv, progress),
        );
        if (who === 'cloud') {
          const t0 = performance.now();
          const flags: boolean[][] = [];
          let truthAll: number[] = [];
          let guessAll: number[] = [];
          priv.forEach((g, gi) => {
            const B = g.seqs.length;
            const hL = blocksForward(model, adapter, privObs[gi], B, g.T, m, L).y;
            const targets = new Int32Array(B * g.T).fill(IGNORE_INDEX);
            for (let b = 0; b < B; b++) for (let t = 0; t + 1 < g.T; t++) targets[b * g.T + t] = g.ids[b * g.T + t + 1];
            const { dh } = headLossStep(model, hL, targets, B, g.T);
            const labels = recoverLabelsFromGradient(model, hL, dh, B, g.T);
            truthAll = truthAll.concat(Array.from(targets));
            guessAll = guessAll.concat(Array.from(labels));
            for (let b = 0; b < B; b++) {
              // the labels are tokens 1..T-1 of the sequence: their words are what leaks
              flags.push(Array.from({ length: g.T - 1 }, (_, t) => labels[b * g.T + t] === g.ids[b * g.T + t + 1]));
            }
          });
          const labelPieces = priv.flatMap((g) => g.seqs.map((s) => Array.from(s.subarray(1), o.piece)));
          results.push(
            figure(
              k,
              sigma,
              'gradient-labels',
              who,
              m,
              tokenRate(truthAll, guessAll),
              labelPieces,
              flags,
              t0,
              truthAll,
            ),
          );
          progress(`k=${k} sigma=${sigma} cloud gradient-labels`);
        }
      }
    }
  }
  return results;
}

function figure(
  k: number,
  sigma: number,
  attack: AttackName,
  who: Observer,
  layers: number,
  rate: number,
  pieces: string[][],
  flags: boolean[][],
  t0: number,
  truth: ArrayLike<number>,
): MeasuredFigure {
  let words = 0;
  let recovered = 0;
  pieces.forEach((p, i) => {
    const w = wordCounts(p, flags[i]);
    words += w.words;
    recovered += w.recovered;
  });
  let positions = 0;
  for (let i = 0; i < truth.length; i++) if (truth[i] !== IGNORE_INDEX) positions++;
  return {
    k,
    sigma,
    attack,
    who,
    tokenRate: rate,
    wordRate: words === 0 ? 0 : recovered / words,
    layers,
    positions,
    words,
    seconds: (performance.now() - t0) / 1000,
  };
}

/** Decoder and search on one observer's rows. */
function rowAttacks(
  o: MeasureOptions,
  k: number,
  sigma: number,
  who: Observer,
  m: number,
  privObs: Float32Array[],
  pubObs: Float32Array,
  pubIds: Int32Array,
  Bp: number,
  Tp: number,
  shortlist: number,
  wte: Float32Array,
  priv: Array<{ T: number; seqs: Int32Array[]; ids: Int32Array }>,
  progress: (what: string) => void,
): MeasuredFigure[] {
  const D = o.model.config.nEmbd;
  const V = o.model.config.vocabSize;
  const truth = priv.flatMap((g) => Array.from(g.ids));
  const pieces = priv.flatMap((g) => g.seqs.map((s) => Array.from(s, o.piece)));
  const flagsOf = (guess: ArrayLike<number>) => {
    const flags: boolean[][] = [];
    let off = 0;
    for (const g of priv) {
      for (const s of g.seqs) {
        flags.push(Array.from(s, (id, t) => guess[off + t] === id));
        off += s.length;
      }
    }
    return flags;
  };

  // (a) decoder
  let t0 = performance.now();
  const decoder = RidgeDecoder.train(pubObs, pubIds, wte, D);
  const scores = priv.map((g, i) => decoder.scores(privObs[i], g.seqs.length * g.T));
  const decoded: number[] = [];
  for (const s of scores)
    for (let r = 0; r < s.length / V; r++) decoded.push(topN(s.subarray(r * V, (r + 1) * V), 1)[0]);
  const out = [figure(k, sigma, 'decoder', who, m, tokenRate(truth, decoded), pieces, flagsOf(decoded), t0, truth)];
  progress(`k=${k} sigma=${sigma} ${who} decoder`);

  // (b) search, with the decoder's shortlist and a rescan threshold calibrated on two public windows
  t0 = performance.now();
  const seg = makeSegment(o.model, o.adapter, 0, m);
  const dists: number[] = [];
  let norm2 = 0;
  for (let b = 0; b < Math.min(2, Bp); b++) {
    const obs = pubObs.subarray(b * Tp * D, (b + 1) * Tp * D);
    dists.push(...trueDistances(seg, pubIds.subarray(b * Tp, (b + 1) * Tp), obs));
    for (const x of obs) norm2 += x * x;
  }
  const threshold = calibrateThreshold(dists, norm2 / dists.length);
  // per-dimension variance of a true row around the observed one; the language-model prior is
  // only worth its cost when there is noise to weigh it against (without, the distance alone is exact)
  const noiseVar = dists.reduce((a, d) => a + d, 0) / dists.length / D;
  const prior =
    sigma > 0 ? { segment: makeSegment(o.model, o.adapter, 0, o.model.config.nLayer), topN: 16 } : undefined;
  const found: number[] = [];
  priv.forEach((g, gi) => {
    for (let b = 0; b < g.seqs.length; b++) {
      const base = b * g.T;
      const r = searchRecover(seg, privObs[gi].subarray(base * D, (base + g.T) * D), g.T, {
        shortlist:
          shortlist < V ? (t) => topN(scores[gi].subarray((base + t) * V, (base + t + 1) * V), shortlist) : undefined,
        threshold: shortlist < V ? threshold : undefined,
        prior,
        noiseVar,
        // at most one position in eight rescans the whole vocabulary: bounds the cost once noise
        // or an early mistake pushes every distance over the threshold
        maxFullScans: Math.ceil(g.T / 8),
      });
      found.push(...r.ids);
    }
  });
  out.push(figure(k, sigma, 'search', who, m, tokenRate(truth, found), pieces, flagsOf(found), t0, truth));
  progress(`k=${k} sigma=${sigma} ${who} search`);
  return out;
}
