/**
 * The whole GPT-2 with LoRA: gradients against finite differences, and the three-segment split
 * against the whole model.
 */
import { describe, expect, it } from 'vitest';
import type { Gpt2Config } from '../src/config';
import { randomGpt2Weights } from '../src/init';
import { initLoraAdapter, LORA_TARGETS, type LoraAdapter, type LoraTarget } from '../src/lora';
import { mergeLoraIntoWeights } from '../src/formats/peft';
import {
  cloudSegmentStep,
  edgeSegmentBackward,
  edgeSegmentForward,
  gpt2ForwardBackward,
  gpt2Loss,
  userSegmentBackward,
  userSegmentForward,
  defaultSplitPlan,
  validateSplitPlan,
  type Gpt2Model,
  type TokenBatch,
} from '../src/model';
import { IGNORE_INDEX } from '../src/ops/cross-entropy';
import { Rng } from '../src/rng';
import { FD_TOLERANCE, fdRelativeError, sampleIndices } from './gradcheck';

const tiny: Gpt2Config = {
  vocabSize: 23,
  nPositions: 8,
  nEmbd: 12,
  nLayer: 4,
  nHead: 3,
  nInner: 20,
  layerNormEpsilon: 1e-5,
  bosTokenId: 22,
  eosTokenId: 22,
};

/** Random model; weights scaled up from GPT-2's 0.02 init so every path carries gradient. */
function tinyModel(seed: number): Gpt2Model {
  const weights = randomGpt2Weights(tiny, seed);
  const rng = new Rng(seed + 7);
  for (const [name, t] of weights) {
    if (name.endsWith('.weight') && !name.includes('ln_')) for (let i = 0; i < t.data.length; i++) t.data[i] *= 10;
    else for (let i = 0; i < t.data.length; i++) t.data[i] += 0.1 * rng.normal(); // biases, norms
  }
  return { config: tiny, weights };
}

/** Adapter whose B is random too (a fresh B = 0 would make every dA vanish). */
function randomAdapter(targets: LoraTarget[], seed: number): LoraAdapter {
  const a = initLoraAdapter(tiny, { r: 3, alpha: 6, targets }, seed);
  const rng = new Rng(seed + 99);
  for (const pair of a.layers.values()) rng.fillNormal(pair.B.data, 0.3);
  return a;
}

/** Two rows; the second is shorter and right-padded with ignored targets. */
function batch(): TokenBatch {
  const T = 7;
  const ids = [3, 17, 5, 5, 21, 0, 9, 11, 2, 8, 14, 22, 22, 22];
  const targets = [17, 5, 5, 21, 0, 9, 4, 2, 8, 14, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX];
  return { B: 2, T, inputIds: Int32Array.from(ids), targets: Int32Array.from(targets) };
}

describe('gpt2ForwardBackward', () => {
  it('LoRA gradients on all four targets match finite differences', () => {
    const model = tinyModel(1);
    const adapter = randomAdapter([...LORA_TARGETS], 2);
    const b = batch();
    const r = gpt2ForwardBackward(model, adapter, b);
    expect(r.count).toBe(10);
    expect(r.baseGrads).toBeUndefined();
    const f = () => gpt2Loss(model, adapter, b).loss;
    const rng = new Rng(3);
    for (const [path, pair] of adapter.layers) {
      const g = r.loraGrads.get(path)!;
      expect(fdRelativeError(f, pair.A.data, g.A, sampleIndices(pair.A.data.length, 6, rng)), `${path} A`).toBeLessThan(
        FD_TOLERANCE,
      );
      expect(fdRelativeError(f, pair.B.data, g.B, sampleIndices(pair.B.data.length, 6, rng)), `${path} B`).toBeLessThan(
        FD_TOLERANCE,
      );
    }
  });

  it('base-weight gradients (pre-training) match finite differences for every tensor', () => {
    const model = tinyModel(4);
    const b = batch();
    const r = gpt2ForwardBackward(model, undefined, b, { weightGrads: true });
    const f = () => gpt2Loss(model, undefined, b).loss;
    const rng = new Rng(5);
    expect(r.baseGrads!.size).toBe(model.weights.size);
    for (const [name, t] of model.weights) {
      const g = r.baseGrads!.get(name)!;
      // wte rows of tokens that never occur have zero gradient from the embedding side but
      // not from the tied head, so sampling any index is meaningful
      expect(fdRelativeError(f, t.data, g, sampleIndices(t.data.length, 5, rng)), name).toBeLessThan(FD_TOLERANCE);
    }
  });

  it('a fresh adapter (B = 0) leaves the model unchanged', () => {
    const model = tinyModel(6);
    const b = batch();
    const fresh = initLoraAdapter(tiny, { r: 4, alpha: 8, targets: ['attn.c_attn', 'mlp.c_fc'] }, 1);
    expect(gpt2Loss(model, fresh, b).loss).toBe(gpt2Loss(model, undefined, b).loss);
  });

  it('an adapter merged into the base weights gives the same loss with no adapter', () => {
    const model = tinyModel(10);
    const b = batch();
    const adapter = randomAdapter([...LORA_TARGETS], 11);
    const merged: Gpt2Model = { config: tiny, weights: mergeLoraIntoWeights(tiny, model.weights, adapter) };
    const withAdapter = gpt2Loss(model, adapter, b).loss;
    expect(withAdapter).not.toBeCloseTo(gpt2Loss(model, undefined, b).loss, 2);
    // W + s A B rounded to float32 once vs x W + s (x A) B: equal to float32 rounding
    expect(Math.abs(gpt2Loss(merged, undefined, b).loss - withAdapter)).toBeLessThan(1e-5 * Math.abs(withAdapter));
  });

  it('padded positions do not change the loss of real ones', () => {
    const model = tinyModel(7);
    const b = batch();
    const other = { ...b, inputIds: b.inputIds.slice() };
    other.inputIds[12] = 4; // a padded input position in row 2
    expect(gpt2Loss(model, undefined, other).loss).toBeCloseTo(gpt2Loss(model, undefined, b).loss, 12);
  });
});

describe('split into user, edge and cloud segments', () => {
  const plans = [
    { k: 1, m: 2 },
    { k: 1, m: 4 },
    { k: 2, m: 3 },
    { k: 3, m: 4 },
  ];
  const targetSets: LoraTarget[][] = [['attn.c_attn', 'attn.c_proj'], ['mlp.c_fc', 'mlp.c_proj'], [...LORA_TARGETS]];

  it.each(plans)('k=$k, m=$m gives the loss and every LoRA gradient of the whole model', (plan) => {
    const model = tinyModel(8);
    const b = batch();
    for (const targets of targetSets) {
      const adapter = randomAdapter(targets, 9);
      const whole = gpt2ForwardBackward(model, adapter, b);
      // chained by hand, as the three tiers will: h1 -> edge -> h2 -> cloud, then gradients back
      const user = userSegmentForward(model, adapter, b, plan);
      const edge = edgeSegmentForward(model, adapter, user.h1, b.B, b.T, plan);
      const cloud = cloudSegmentStep(model, adapter, edge.h2, b.targets, b.B, b.T, plan);
      const edgeBack = edgeSegmentBackward(model, adapter, edge.state, cloud.dh2);
      const userGrads = userSegmentBackward(model, adapter, user.state, edgeBack.dh1);
      expect(cloud.loss).toBe(whole.loss);
      const split = new Map([...userGrads, ...edgeBack.loraGrads, ...cloud.loraGrads]);
      expect([...split.keys()].sort()).toEqual([...whole.loraGrads.keys()].sort());
      for (const [path, g] of whole.loraGrads) {
        // same operations in the same order: identical, not merely close
        expect(split.get(path)!.A).toEqual(g.A);
        expect(split.get(path)!.B).toEqual(g.B);
      }
      // each tier holds only its own blocks' adapters
      for (const path of userGrads.keys()) expect(Number(path.split('.')[1])).toBeLessThan(plan.k);
      for (const path of cloud.loraGrads.keys()) expect(Number(path.split('.')[1])).toBeGreaterThanOrEqual(plan.m);
    }
  });

  it('rejects split plans that leave a tier without its part', () => {
    expect(() => validateSplitPlan(tiny, { k: 0, m: 2 })).toThrow(/1 <= k < m <= 4/);
    expect(() => validateSplitPlan(tiny, { k: 2, m: 2 })).toThrow();
    expect(() => validateSplitPlan(tiny, { k: 1, m: 5 })).toThrow();
    expect(() => validateSplitPlan(tiny, { k: 1, m: 4 })).not.toThrow();
  });

  it('the default plan is valid for every depth from 2 layers up', () => {
    expect(defaultSplitPlan(tiny)).toEqual({ k: 1, m: 3 });
    expect(defaultSplitPlan({ ...tiny, nLayer: 12 })).toEqual({ k: 3, m: 9 });
    for (let L = 2; L <= 48; L++)
      expect(() => validateSplitPlan({ ...tiny, nLayer: L }, defaultSplitPlan({ ...tiny, nLayer: L }))).not.toThrow();
  });
});
