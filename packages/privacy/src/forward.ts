/**
 * The attacker's own forward of a segment of blocks, built for candidate search: the prefix of a
 * sequence is run once and its keys and values kept per layer, then a whole batch of candidate
 * tokens for the next position is run against it in one go (each candidate attends to the
 * prefix and to itself). This is what makes scoring every vocabulary entry at every position
 * affordable: the prefix costs nothing per candidate beyond one attention dot product.
 *
 * It needs only what an honest-but-curious edge or cloud holds: the public base weights and
 * the adapter it received. The LoRA pair is folded into the base weight once (W + s A B), which
 * is the same function up to float rounding. The reference forward in @splitllm/model is the
 * oracle: the tests check that running a sequence position by position here gives its rows.
 */
import {
  type Gpt2Model,
  type LoraAdapter,
  type LoraTarget,
  geluForward,
  getWeight,
  layerNormForward,
  loraModulePath,
  loraScale,
  loraTargetDims,
  matmul,
} from '@splitllm/model';

interface Linear {
  W: Float32Array;
  b: Float32Array;
  K: number;
  N: number;
}

interface LayerParams {
  ln1g: Float32Array;
  ln1b: Float32Array;
  cAttn: Linear;
  cProj: Linear;
  ln2g: Float32Array;
  ln2b: Float32Array;
  fc: Linear;
  proj: Linear;
}

/** Weights of blocks [from, to) (LoRA folded in) and the embedding tables, ready for candidate forwards. */
export interface Segment {
  model: Gpt2Model;
  from: number;
  to: number;
  layers: LayerParams[];
  wte: Float32Array;
  wpe: Float32Array;
}

function linear(model: Gpt2Model, adapter: LoraAdapter | undefined, layer: number, target: LoraTarget): Linear {
  const [K, N] = loraTargetDims(model.config, target);
  const W0 = getWeight(model.weights, `h.${layer}.${target}.weight`).data;
  const b = getWeight(model.weights, `h.${layer}.${target}.bias`).data;
  const pair = adapter?.layers.get(loraModulePath(layer, target));
  if (!pair || !adapter) return { W: W0, b, K, N };
  // fold the adapter: W + s A B (a fresh adapter has B = 0 and folds to the base weight)
  const AB = matmul(pair.A.data, pair.B.data, K, adapter.config.r, N);
  const s = loraScale(adapter.config);
  const W = new Float32Array(K * N);
  for (let i = 0; i < W.length; i++) W[i] = W0[i] + s * AB[i];
  return { W, b, K, N };
}

/** Blocks [from, to) of `model` with `adapter` (undefined: the base model). from = 0 starts at the embedding. */
export function makeSegment(model: Gpt2Model, adapter: LoraAdapter | undefined, from: number, to: number): Segment {
  const L = model.config.nLayer;
  if (!(Number.isInteger(from) && Number.isInteger(to) && from >= 0 && from < to && to <= L)) {
    throw new RangeError(`segment [${from}, ${to}) is not a block range of a ${L}-layer model`);
  }
  const layers: LayerParams[] = [];
  for (let i = from; i < to; i++) {
    const w = (n: string) => getWeight(model.weights, `h.${i}.${n}`).data;
    layers.push({
      ln1g: w('ln_1.weight'),
      ln1b: w('ln_1.bias'),
      cAttn: linear(model, adapter, i, 'attn.c_attn'),
      cProj: linear(model, adapter, i, 'attn.c_proj'),
      ln2g: w('ln_2.weight'),
      ln2b: w('ln_2.bias'),
      fc: linear(model, adapter, i, 'mlp.c_fc'),
      proj: linear(model, adapter, i, 'mlp.c_proj'),
    });
  }
  return {
    model,
    from,
    to,
    layers,
    wte: getWeight(model.weights, 'wte.weight').data,
    wpe: getWeight(model.weights, 'wpe.weight').data,
  };
}

/** Keys and values of the accepted prefix of one sequence, per layer of the segment: [capacity, D] each. */
export interface PrefixCache {
  keys: Float32Array[];
  values: Float32Array[];
  length: number;
  capacity: number;
}

export function newPrefixCache(seg: Segment, capacity: number): PrefixCache {
  const D = seg.model.config.nEmbd;
  return {
    keys: seg.layers.map(() => new Float32Array(capacity * D)),
    values: seg.layers.map(() => new Float32Array(capacity * D)),
    length: 0,
    capacity,
  };
}

/** What a candidate forward leaves behind: the output rows [N, D] and each layer's qkv [N, 3D] (to extend a prefix). */
export interface CandidateOutput {
  y: Float32Array;
  qkv: Float32Array[];
}

/**
 * Runs N candidate rows x [N, D] (the segment's input at position `cache.length`) through the
 * segment, each attending to the cached prefix and to itself.
 */
export function candidateForward(seg: Segment, cache: PrefixCache, x: Float32Array, N: number): CandidateOutput {
  const c = seg.model.config;
  const D = c.nEmbd;
  const H = c.nHead;
  const hd = D / H;
  const scale = 1 / Math.sqrt(hd);
  const P = cache.length;
  if (P >= cache.capacity) throw new RangeError(`prefix cache is full (${cache.capacity} positions)`);
  if (x.length !== N * D) throw new RangeError(`candidate rows must be [${N}, ${D}]`);
  const qkvs: Float32Array[] = [];
  let h = x;
  const s = new Float64Array(P + 1);
  for (let li = 0; li < seg.layers.length; li++) {
    const p = seg.layers[li];
    const ln1 = layerNormForward(h, p.ln1g, p.ln1b, N, D, c.layerNormEpsilon).y;
    const qkv = matmul(ln1, p.cAttn.W, N, D, 3 * D, p.cAttn.b);
    qkvs.push(qkv);
    const keys = cache.keys[li];
    const values = cache.values[li];
    const att = new Float32Array(N * D);
    for (let n = 0; n < N; n++) {
      const row = n * 3 * D;
      for (let hh = 0; hh < H; hh++) {
        const q = row + hh * hd;
        const own = row + D + hh * hd;
        let max = -Infinity;
        for (let j = 0; j < P; j++) {
          const kr = j * D + hh * hd;
          let dot = 0;
          for (let e = 0; e < hd; e++) dot += qkv[q + e] * keys[kr + e];
          s[j] = dot * scale;
          if (s[j] > max) max = s[j];
        }
        let selfDot = 0;
        for (let e = 0; e < hd; e++) selfDot += qkv[q + e] * qkv[own + e];
        s[P] = selfDot * scale;
        if (s[P] > max) max = s[P];
        let sum = 0;
        for (let j = 0; j <= P; j++) {
          s[j] = Math.exp(s[j] - max);
          sum += s[j];
        }
        const o = n * D + hh * hd;
        for (let j = 0; j < P; j++) {
          const w = s[j] / sum;
          const vr = j * D + hh * hd;
          for (let e = 0; e < hd; e++) att[o + e] += w * values[vr + e];
        }
        const wSelf = s[P] / sum;
        const vOwn = row + 2 * D + hh * hd;
        for (let e = 0; e < hd; e++) att[o + e] += wSelf * qkv[vOwn + e];
      }
    }
    const proj = matmul(att, p.cProj.W, N, D, D, p.cProj.b);
    const a = new Float32Array(N * D);
    for (let i = 0; i < a.length; i++) a[i] = h[i] + proj[i];
    const ln2 = layerNormForward(a, p.ln2g, p.ln2b, N, D, c.layerNormEpsilon).y;
    const act = geluForward(matmul(ln2, p.fc.W, N, D, p.fc.N, p.fc.b));
    const mlp = matmul(act, p.proj.W, N, p.proj.K, D, p.proj.b);
    const y = new Float32Array(N * D);
    for (let i = 0; i < y.length; i++) y[i] = a[i] + mlp[i];
    h = y;
  }
  return { y: h, qkv: qkvs };
}

/** Appends candidate `n` of a candidateForward to the prefix (its keys and values at every layer). */
export function acceptCandidate(seg: Segment, cache: PrefixCache, out: CandidateOutput, n: number): void {
  const D = seg.model.config.nEmbd;
  const P = cache.length;
  for (let li = 0; li < seg.layers.length; li++) {
    const qkv = out.qkv[li];
    cache.keys[li].set(qkv.subarray(n * 3 * D + D, n * 3 * D + 2 * D), P * D);
    cache.values[li].set(qkv.subarray(n * 3 * D + 2 * D, n * 3 * D + 3 * D), P * D);
  }
  cache.length = P + 1;
}

/** Input rows of the segment for token candidates at position t (from = 0: wte[v] + wpe[t]). */
export function embedCandidates(seg: Segment, ids: ArrayLike<number>, t: number): Float32Array {
  const D = seg.model.config.nEmbd;
  const V = seg.model.config.vocabSize;
  if (seg.from !== 0) throw new Error('embedCandidates: the segment does not start at the embedding');
  if (!(t >= 0 && t < seg.model.config.nPositions)) throw new RangeError(`position ${t} is past n_positions`);
  const x = new Float32Array(ids.length * D);
  for (let n = 0; n < ids.length; n++) {
    const id = ids[n];
    if (!(Number.isInteger(id) && id >= 0 && id < V)) throw new RangeError(`token id ${id} is outside the vocabulary`);
    for (let e = 0; e < D; e++) x[n * D + e] = seg.wte[id * D + e] + seg.wpe[t * D + e];
  }
  return x;
}
