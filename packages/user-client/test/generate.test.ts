/**
 * The user side of generation that needs no server: paddedForward (a fixed-shape engine used for
 * any context length) and the sampler. Generation through real servers is tested in
 * packages/cli/test/generate.test.ts.
 */
import { fileURLToPath } from 'node:url';
import {
  DEFAULT_LORA_TRAIN,
  initLoraAdapter,
  maxRelErr,
  Rng,
  userSegmentForward,
  type Gpt2Model,
  type LoraConfig,
} from '@splitllm/model';
import { loadGpt2Dir } from '@splitllm/model/node';
import { describe, expect, it } from 'vitest';
import { paddedForward, sampleToken } from '../src/generate';
import { ReferenceUserTrainer } from '../src/engines/reference';

const shipped: Gpt2Model = loadGpt2Dir(fileURLToPath(new URL('../../assets/models/moby-tiny', import.meta.url)));

describe('paddedForward', () => {
  it('gives h1 of the unpadded context (causal attention makes the padding invisible)', async () => {
    const c = shipped.config;
    const [B, T, k] = [2, 12, 1];
    const lora: LoraConfig = { r: 4, alpha: 8, targets: ['attn.c_attn', 'mlp.c_fc'] };
    const adapter = initLoraAdapter(c, lora, 3);
    const rng = new Rng(4);
    for (const p of adapter.layers.values()) rng.fillNormal(p.B.data, 0.1);
    const trainer = ReferenceUserTrainer.create(shipped, adapter, {
      plan: { k, m: 2 },
      lora,
      batch: B,
      seq: T,
      adamw: DEFAULT_LORA_TRAIN.adamw,
    });
    const forward = paddedForward((b) => trainer.forward(b), B, T, c.nEmbd, c.eosTokenId);
    for (const n of [1, 5, T]) {
      const ids = Int32Array.from({ length: n }, () => rng.int(c.vocabSize));
      const got = await forward(ids);
      const want = userSegmentForward(
        shipped,
        adapter,
        { B: 1, T: n, inputIds: ids, targets: new Int32Array(n) },
        { k, m: 2 },
      ).h1;
      expect(got).toHaveLength(n * c.nEmbd);
      expect(maxRelErr(got, want), `n = ${n}`).toBeLessThan(1e-6);
    }
    await expect(forward(new Int32Array(T + 1))).rejects.toThrow(/maxContext/);
    await expect(forward(new Int32Array(0))).rejects.toThrow(/fit/);
  });
});

describe('sampleToken', () => {
  const logits = Float32Array.of(1, 3, 3, -2, 0.5);

  it('greedy: the argmax, the lower id on a tie', () => {
    expect(sampleToken(logits, { temperature: 0, topK: 0 }, new Rng(1))).toBe(1);
    expect(sampleToken(logits, { temperature: 2, topK: 1 }, new Rng(1))).toBe(1);
  });

  it('samples softmax(logits / temperature) within the top k, reproducibly', () => {
    const counts = new Map<number, number>();
    const rng = new Rng(7);
    const n = 20_000;
    for (let i = 0; i < n; i++) {
      const t = sampleToken(logits, { temperature: 1, topK: 3 }, rng);
      counts.set(t, (counts.get(t) ?? 0) + 1);
    }
    expect([...counts.keys()].sort()).toEqual([0, 1, 2]);
    // p(0) = e^1 / (e^1 + 2 e^3) = 0.0634
    expect((counts.get(0) ?? 0) / n).toBeCloseTo(Math.E / (Math.E + 2 * Math.exp(3)), 2);
    const draw = (seed: number) => {
      const r = new Rng(seed);
      return Array.from({ length: 10 }, () => sampleToken(logits, { temperature: 0.7, topK: 0 }, r));
    };
    expect(draw(3)).toEqual(draw(3));
  });

  it('refuses bad options', () => {
    expect(() => sampleToken(logits, { temperature: -1, topK: 0 }, new Rng(1))).toThrow(/temperature/);
    expect(() => sampleToken(logits, { temperature: 1, topK: 1.5 }, new Rng(1))).toThrow(/topK/);
  });
});
