/**
 * The whole LLaMA-family model with LoRA: LoRA and base-weight gradients against finite
 * differences on tiny configs (grouped-query heads, q/k/v biases, an untied head, Llama 3 rope
 * scaling), blocks chained as split segments against the whole, and the LoRA adapter's targets,
 * paths, init and checks.
 */
import { describe, expect, it } from 'vitest';
import { AdapterCheckError } from '../src/adapter-ops';
import type { LlamaConfig } from '../src/llama-config';
import {
  LlamaModelError,
  llamaBlocksBackward,
  llamaBlocksForward,
  llamaEmbedForward,
  llamaForwardBackward,
  llamaHeadForward,
  llamaHeadLogits,
  llamaHeadLossStep,
  llamaLinearBackward,
  llamaLinearForward,
  llamaLoss,
  type LlamaLinearParams,
  type LlamaModel,
} from '../src/llama';
import {
  DEFAULT_LLAMA_LORA_TARGETS,
  LLAMA_LORA_TARGETS,
  type LlamaLoraAdapter,
  LlamaLoraError,
  type LlamaLoraTarget,
  checkLlamaAdapterFits,
  initLlamaLoraAdapter,
  llamaLoraModulePath,
  llamaLoraParameterCount,
  llamaLoraTargetDims,
  parseLlamaLoraModulePath,
  parseLlamaLoraTargets,
} from '../src/llama-lora';
import { llama3ScaledConfig, perturbedLlamaModel, tinyLlamaConfig, withRandomLoraB } from '../src/llama-fixtures';
import { llamaParameterShapes } from '../src/llama-weights';
import type { TokenBatch } from '../src/model';
import { IGNORE_INDEX } from '../src/ops/cross-entropy';
import { Rng } from '../src/rng';
import { FD_TOLERANCE, fdRelativeError, randomArray, sampleIndices, weightedSum } from './gradcheck';

/** D=16, 4 query heads sharing 2 kv heads of width 4, SwiGLU width 24, 2 layers, 40 tokens. */
const tiny: LlamaConfig = tinyLlamaConfig({
  vocabSize: 40,
  hiddenSize: 16,
  intermediateSize: 24,
  nLayer: 2,
  headDim: 4,
});

/** Qwen2-like: q/k/v biases and a separate lm_head. */
const qwenLike: LlamaConfig = { ...tiny, family: 'qwen2', qkvBias: true, tieWordEmbeddings: false };

/**
 * Llama 3 rope scaling with theta 100 and head_dim 4: inv_freq = [1, 0.1], wavelengths 6.3 and
 * 63, which with L = 128 and factors 1 / 4 fall in the high band (< 32, kept) and the medium band
 * (32..128, smoothed); plus every other bias Llama's config can ask for.
 */
const llama3Like: LlamaConfig = { ...llama3ScaledConfig(tiny, 128), qkvBias: true };

/** Adapter whose B is random too (a fresh B = 0 would make every dA vanish). */
function randomAdapter(config: LlamaConfig, targets: LlamaLoraTarget[], seed: number): LlamaLoraAdapter {
  return withRandomLoraB(initLlamaLoraAdapter(config, { r: 3, alpha: 6, targets }, seed), seed + 99, 0.3);
}

/** Two rows; the second is shorter and right-padded with ignored targets. */
function batch(): TokenBatch {
  const T = 7;
  const ids = [1, 17, 5, 5, 39, 0, 9, 1, 2, 8, 14, 2, 2, 2];
  const targets = [17, 5, 5, 39, 0, 9, 4, 2, 8, 14, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX];
  return { B: 2, T, inputIds: Int32Array.from(ids), targets: Int32Array.from(targets) };
}

const cases: Array<[string, LlamaConfig]> = [
  ['tied head, no biases', tiny],
  ['q/k/v biases, untied head (Qwen2)', qwenLike],
  ['Llama 3 rope scaling, all biases, untied head', llama3Like],
];

// The shared FD_TOLERANCE (1e-3) holds here with room: over every entry of every adapter tensor
// (not only the 6 sampled), the worst relative error at these seeds is 4.9e-4, and over every entry
// of every base tensor 3.1e-4. What is left is float32 rounding noise of the loss divided by 2h
// (it falls as 1/h: 4.0e-3, 1.3e-3, 2.8e-4 at h = 1e-3, 3e-3, 1e-2 on the worst tensor of another
// draw), largest on the tensors with the smallest gradients (the last block's k_proj). A wrong
// formula is far above it: a 1% error in one bias gradient or a missing RoPE in the k backward fails.
describe('llamaForwardBackward', () => {
  it.each(cases)('%s: LoRA gradients on all seven targets match finite differences', (_name, config) => {
    const model = perturbedLlamaModel(config, 1);
    const adapter = randomAdapter(config, [...LLAMA_LORA_TARGETS], 2);
    const b = batch();
    const r = llamaForwardBackward(model, adapter, b);
    expect(r.count).toBe(10);
    expect(r.baseGrads).toBeUndefined();
    expect([...r.loraGrads.keys()].sort()).toEqual([...adapter.layers.keys()].sort());
    const f = () => llamaLoss(model, adapter, b).loss;
    const rng = new Rng(3);
    for (const [path, pair] of adapter.layers) {
      const g = r.loraGrads.get(path)!;
      const idxA = sampleIndices(pair.A.data.length, 6, rng);
      const idxB = sampleIndices(pair.B.data.length, 6, rng);
      expect(fdRelativeError(f, pair.A.data, g.A, idxA), `${path} A`).toBeLessThan(FD_TOLERANCE);
      expect(fdRelativeError(f, pair.B.data, g.B, idxB), `${path} B`).toBeLessThan(FD_TOLERANCE);
    }
  });

  it.each(cases)('%s: base-weight gradients (pre-training) match finite differences for every tensor', (_n, config) => {
    const model = perturbedLlamaModel(config, 4);
    const b = batch();
    const r = llamaForwardBackward(model, undefined, b, { weightGrads: true });
    const f = () => llamaLoss(model, undefined, b).loss;
    const rng = new Rng(5);
    expect([...r.baseGrads!.keys()].sort()).toEqual([...model.weights.keys()].sort());
    for (const [name, t] of model.weights) {
      const g = r.baseGrads!.get(name)!;
      expect(g.length, name).toBe(t.data.length);
      expect(fdRelativeError(f, t.data, g, sampleIndices(t.data.length, 5, rng)), name).toBeLessThan(FD_TOLERANCE);
    }
  });

  it('a fresh adapter (B = 0) leaves the model unchanged; a trained one changes it', () => {
    const model = perturbedLlamaModel(tiny, 6);
    const b = batch();
    const fresh = initLlamaLoraAdapter(tiny, { r: 4, alpha: 8, targets: ['q_proj', 'down_proj'] }, 1);
    expect(llamaLoss(model, fresh, b).loss).toBe(llamaLoss(model, undefined, b).loss);
    const trained = randomAdapter(tiny, ['q_proj', 'down_proj'], 1);
    expect(llamaLoss(model, trained, b).loss).not.toBeCloseTo(llamaLoss(model, undefined, b).loss, 3);
  });

  it('an untied head holding a copy of embed_tokens gives the tied model exactly', () => {
    const tied = perturbedLlamaModel(tiny, 12);
    const untiedConfig = { ...tiny, tieWordEmbeddings: false };
    const weights = new Map(tied.weights);
    const embed = tied.weights.get('embed_tokens.weight')!;
    weights.set('lm_head.weight', { shape: [...embed.shape], data: embed.data.slice() });
    const untied: LlamaModel = { config: untiedConfig, weights };
    const b = batch();
    expect(llamaLoss(untied, undefined, b).loss).toBe(llamaLoss(tied, undefined, b).loss);
    // ... and its head gradient is the head half of the tied embedding's gradient
    const gt = llamaForwardBackward(tied, undefined, b, { weightGrads: true }).baseGrads!;
    const gu = llamaForwardBackward(untied, undefined, b, { weightGrads: true }).baseGrads!;
    const sum = gu.get('embed_tokens.weight')!.map((v, i) => v + gu.get('lm_head.weight')![i]);
    let maxDiff = 0;
    for (let i = 0; i < sum.length; i++)
      maxDiff = Math.max(maxDiff, Math.abs(sum[i] - gt.get('embed_tokens.weight')![i]));
    // float32 sums of the same two float64-accumulated terms: a few ulps of values below 1
    expect(maxDiff).toBeLessThan(1e-6);
  });

  it('padded positions do not change the loss of real ones (right padding, causal mask)', () => {
    const model = perturbedLlamaModel(qwenLike, 7);
    const b = batch();
    const other = { ...b, inputIds: b.inputIds.slice() };
    other.inputIds[12] = 33; // a padded input position in row 2
    expect(llamaLoss(model, undefined, other).loss).toBe(llamaLoss(model, undefined, b).loss);
  });

  it('refuses what it cannot run, naming it', () => {
    const model = perturbedLlamaModel(tiny, 8);
    const b = batch();
    const long: TokenBatch = { B: 1, T: 17, inputIds: new Int32Array(17), targets: new Int32Array(17) };
    expect(() => llamaLoss(model, undefined, long)).toThrow(/max_position_embeddings 16/);
    const badId = { ...b, inputIds: b.inputIds.map((v, i) => (i === 3 ? 40 : v)) };
    expect(() => llamaLoss(model, undefined, badId)).toThrow(/token id 40 at \[0, 3\] is outside the vocabulary/);
    const missing: LlamaModel = { config: qwenLike, weights: model.weights }; // no biases, no lm_head
    expect(() => llamaLoss(missing, undefined, b)).toThrow(LlamaModelError);
    expect(() => llamaLoss(missing, undefined, b)).toThrow(/missing tensor "layers.0.self_attn.q_proj.bias"/);
    const wrong = new Map(model.weights);
    wrong.set('norm.weight', { shape: [15], data: new Float32Array(15) });
    expect(() => llamaLoss({ config: tiny, weights: wrong }, undefined, b)).toThrow(/"norm.weight" holds 15 values/);
  });
});

describe('llamaLinear (nn.Linear layout with LoRA)', () => {
  it('is x W^T + b + s (x A) B and its backward matches finite differences', () => {
    const rng = new Rng(13);
    const [M, K, N, r] = [5, 6, 7, 2];
    const p: LlamaLinearParams = {
      W: randomArray(N * K, rng),
      b: randomArray(N, rng),
      K,
      N,
      lora: { A: randomArray(K * r, rng), B: randomArray(r * N, rng), r, scale: 1.5 },
    };
    const x = randomArray(M * K, rng);
    const { y, cache } = llamaLinearForward(p, x, M);
    const { A, B, scale } = p.lora!;
    for (let i = 0; i < M; i++)
      for (let j = 0; j < N; j++) {
        let ref = p.b![j];
        for (let k = 0; k < K; k++) ref += x[i * K + k] * p.W[j * K + k];
        for (let q = 0; q < r; q++) {
          let xa = 0;
          for (let k = 0; k < K; k++) xa += x[i * K + k] * A[k * r + q];
          ref += scale * xa * B[q * N + j];
        }
        expect(Math.abs(y[i * N + j] - ref)).toBeLessThan(1e-5); // float32 rounding of values of order 10
      }
    const w = randomArray(M * N, rng);
    const f = () => weightedSum(llamaLinearForward(p, x, M).y, w);
    const g = llamaLinearBackward(p, cache, Float32Array.from(w), M, true);
    expect(fdRelativeError(f, x, g.dx)).toBeLessThan(FD_TOLERANCE);
    expect(fdRelativeError(f, p.W, g.dW!)).toBeLessThan(FD_TOLERANCE);
    expect(fdRelativeError(f, p.b!, g.db!)).toBeLessThan(FD_TOLERANCE);
    expect(fdRelativeError(f, A, g.dA!)).toBeLessThan(FD_TOLERANCE);
    expect(fdRelativeError(f, B, g.dB!)).toBeLessThan(FD_TOLERANCE);
  });
});

describe('blocks as split segments', () => {
  it.each(cases)('%s: blocks [0,1) then [1,2) equal blocks [0,2), forward and backward', (_name, config) => {
    const model = perturbedLlamaModel(config, 20);
    const adapter = randomAdapter(config, ['q_proj', 'k_proj', 'o_proj', 'up_proj'], 21);
    const b = batch();
    const h0 = llamaEmbedForward(model, b.inputIds, b.B, b.T);
    const whole = llamaBlocksForward(model, adapter, h0, b.B, b.T, 0, 2);
    const first = llamaBlocksForward(model, adapter, h0, b.B, b.T, 0, 1);
    const second = llamaBlocksForward(model, adapter, first.y, b.B, b.T, 1, 2);
    // the same operations in the same order: identical, not merely close
    expect(second.y).toEqual(whole.y);
    // the head the tab runs with labels on the device gives the loss and gradient of the whole
    const head = llamaHeadLossStep(model, second.y, b.targets, b.B, b.T);
    const step = llamaForwardBackward(model, adapter, b);
    expect(head.loss).toBe(step.loss);
    expect(head.count).toBe(step.count);
    const wholeBack = llamaBlocksBackward(model, adapter, whole.cache, head.dh);
    const secondBack = llamaBlocksBackward(model, adapter, second.cache, head.dh);
    const firstBack = llamaBlocksBackward(model, adapter, first.cache, secondBack.dx);
    expect(firstBack.dx).toEqual(wholeBack.dx);
    const split = new Map([...firstBack.loraGrads, ...secondBack.loraGrads]);
    expect([...split.keys()].sort()).toEqual([...wholeBack.loraGrads.keys()].sort());
    for (const [path, g] of wholeBack.loraGrads) {
      expect(split.get(path)!.A).toEqual(g.A);
      expect(split.get(path)!.B).toEqual(g.B);
      expect(step.loraGrads.get(path)!.A).toEqual(g.A);
    }
    // each segment holds only its own blocks' gradients
    for (const path of firstBack.loraGrads.keys()) expect(parseLlamaLoraModulePath(path)!.layer).toBe(0);
    for (const path of secondBack.loraGrads.keys()) expect(parseLlamaLoraModulePath(path)!.layer).toBe(1);
  });

  it('headLogits on one position equals that row of the full head', () => {
    const model = perturbedLlamaModel(qwenLike, 22);
    const b = batch();
    const h0 = llamaEmbedForward(model, b.inputIds, b.B, b.T);
    const hL = llamaBlocksForward(model, undefined, h0, b.B, b.T, 0, 2).y;
    const full = llamaHeadForward(model, hL, b.targets, b.B, b.T).logits;
    const row = 9;
    const D = qwenLike.hiddenSize;
    const V = qwenLike.vocabSize;
    expect(llamaHeadLogits(model, hL.slice(row * D, (row + 1) * D))).toEqual(full.slice(row * V, (row + 1) * V));
  });
});

describe('LLaMA LoRA adapter', () => {
  it('parses target lists and names an unknown target', () => {
    expect(parseLlamaLoraTargets('q_proj, v_proj,q_proj')).toEqual(['q_proj', 'v_proj']);
    expect(parseLlamaLoraTargets(['mlp.gate_proj', 'self_attn.o_proj'])).toEqual(['gate_proj', 'o_proj']);
    expect(DEFAULT_LLAMA_LORA_TARGETS).toEqual(['q_proj', 'v_proj']);
    expect(() => parseLlamaLoraTargets('q_proj,c_attn')).toThrow(LlamaLoraError);
    expect(() => parseLlamaLoraTargets('q_proj,c_attn')).toThrow(/unknown LoRA target "c_attn".*q_proj, k_proj/);
    expect(() => parseLlamaLoraTargets('mlp.q_proj')).toThrow(/"mlp.q_proj"/);
    expect(() => parseLlamaLoraTargets(' , ')).toThrow(/at least one/);
  });

  it('module paths follow Hugging Face names and round-trip', () => {
    expect(llamaLoraModulePath(3, 'q_proj')).toBe('layers.3.self_attn.q_proj');
    expect(llamaLoraModulePath(0, 'down_proj')).toBe('layers.0.mlp.down_proj');
    for (const t of LLAMA_LORA_TARGETS)
      expect(parseLlamaLoraModulePath(llamaLoraModulePath(11, t))).toEqual({ layer: 11, target: t });
    expect(parseLlamaLoraModulePath('layers.1.mlp.q_proj')).toBeUndefined();
    expect(parseLlamaLoraModulePath('h.1.attn.c_attn')).toBeUndefined();
    expect(parseLlamaLoraModulePath('layers.01.self_attn.q_proj')).toBeUndefined();
  });

  it('dims match the base weights; init is PEFT-like, seeded, and independent of the block range', () => {
    const shapes = new Map(llamaParameterShapes(qwenLike));
    for (const t of LLAMA_LORA_TARGETS) {
      const [din, dout] = llamaLoraTargetDims(qwenLike, t);
      expect(shapes.get(`${llamaLoraModulePath(1, t)}.weight`)).toEqual([dout, din]);
    }
    const cfg = { r: 2, alpha: 4, targets: [...LLAMA_LORA_TARGETS] };
    const a = initLlamaLoraAdapter(qwenLike, cfg, 5);
    expect(a.layers.size).toBe(2 * 7);
    let count = 0;
    for (const [path, pair] of a.layers) {
      const { target } = parseLlamaLoraModulePath(path)!;
      const [din, dout] = llamaLoraTargetDims(qwenLike, target);
      expect(pair.A.shape).toEqual([din, 2]);
      expect(pair.B.shape).toEqual([2, dout]);
      expect(pair.B.data.every((v) => v === 0)).toBe(true);
      const bound = 1 / Math.sqrt(din);
      expect(pair.A.data.every((v) => Math.abs(v) <= bound)).toBe(true);
      expect(pair.A.data.some((v) => Math.abs(v) > bound / 2)).toBe(true);
      count += pair.A.data.length + pair.B.data.length;
    }
    expect(llamaLoraParameterCount(qwenLike, cfg, 0, 2)).toBe(count);
    const second = initLlamaLoraAdapter(qwenLike, cfg, 5, 1, 2);
    expect(second.layers.get('layers.1.mlp.up_proj')!.A.data).toEqual(a.layers.get('layers.1.mlp.up_proj')!.A.data);
    const other = initLlamaLoraAdapter(qwenLike, cfg, 6);
    expect(other.layers.get('layers.0.self_attn.q_proj')!.A.data).not.toEqual(
      a.layers.get('layers.0.self_attn.q_proj')!.A.data,
    );
    expect(() => initLlamaLoraAdapter(qwenLike, { ...cfg, r: 0 }, 1)).toThrow(/rank r must be a positive integer/);
  });

  it('checkLlamaAdapterFits names the module at fault', () => {
    const a = initLlamaLoraAdapter(tiny, { r: 2, alpha: 4, targets: ['k_proj', 'gate_proj'] }, 1);
    expect(() => checkLlamaAdapterFits(tiny, a)).not.toThrow();
    // k_proj is [D -> Hkv*hd] = [16 -> 8]: a model with as many kv heads as query heads needs [16 -> 16]
    expect(() => checkLlamaAdapterFits({ ...tiny, nKvHead: 4 }, a)).toThrow(
      /"layers.0.self_attn.k_proj" has A \[16,2\] and B \[2,8\].*B \[2,16\]/,
    );
    expect(() => checkLlamaAdapterFits({ ...tiny, nLayer: 1 }, a)).toThrow(/"layers.1.self_attn.k_proj" is past/);
    const stray = { config: a.config, layers: new Map(a.layers) };
    stray.layers.set('layers.0.self_attn.q_proj', a.layers.get('layers.0.self_attn.k_proj')!);
    expect(() => checkLlamaAdapterFits(tiny, stray)).toThrow(/not one of the adapter's targets/);
    const unknown = {
      config: a.config,
      layers: new Map([['h.0.attn.c_attn', a.layers.get('layers.0.mlp.gate_proj')!]]),
    };
    try {
      checkLlamaAdapterFits(tiny, unknown);
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(AdapterCheckError);
      expect((e as AdapterCheckError).code).toBe('ADAPTER_MODULE');
    }
  });
});
