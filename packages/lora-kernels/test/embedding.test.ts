/**
 * Embedding kernel against the reference (packages/model/src/ops/embedding.ts). Exact: one
 * float32 add per output, the same add the reference does, so the tolerance is 0.
 */
import { describe, expect, it } from 'vitest';
import { Rng, embeddingForward as refEmbedding } from '@splitllm/model';
import { embeddingForward } from '../src/kernels/embedding';
import { maxRelErr, randn, testDevice } from './harness';

describe('embedding kernel', () => {
  const cases = [
    { B: 1, T: 1, D: 1, V: 3, P: 1 },
    { B: 2, T: 5, D: 7, V: 11, P: 8 },
    { B: 3, T: 33, D: 129, V: 50, P: 40 },
    { B: 2, T: 70, D: 200, V: 1000, P: 70 },
  ];
  for (const { B, T, D, V, P } of cases) {
    it(`B=${B} T=${T} D=${D} V=${V}`, async () => {
      const gpu = await testDevice();
      const rng = new Rng(B * 1000 + T * 10 + D);
      const ids = new Int32Array(B * T);
      for (let i = 0; i < ids.length; i++) ids[i] = rng.int(V);
      ids[0] = V - 1; // the last row of wte
      const wte = randn(V * D, rng, 0.1);
      const wpe = randn(P * D, rng, 0.01);
      const want = refEmbedding(ids, wte, wpe, B, T, D, V);
      const out = gpu.storage(B * T * D * 4);
      gpu.run(
        embeddingForward(
          gpu,
          { ids: gpu.storage(ids), wte: gpu.storage(wte), wpe: gpu.storage(wpe), out },
          { B, T, D, vocabSize: V, nPositions: P },
        ),
      );
      const got = await gpu.readF32(out, B * T * D);
      const err = maxRelErr(got, want);
      console.log(`embedding B=${B} T=${T} D=${D}: ${err.toExponential(1)}`);
      expect(err).toBe(0);
    });
  }

  it('an out-of-range id gives a NaN row, and only that row', async () => {
    const gpu = await testDevice();
    const B = 1,
      T = 4,
      D = 5,
      V = 6;
    const rng = new Rng(7);
    const ids = new Int32Array([2, -1, V, 0]);
    const wte = randn(V * D, rng);
    const wpe = randn(T * D, rng);
    const out = gpu.storage(B * T * D * 4);
    gpu.run(
      embeddingForward(
        gpu,
        { ids: gpu.storage(ids), wte: gpu.storage(wte), wpe: gpu.storage(wpe), out },
        { B, T, D, vocabSize: V },
      ),
    );
    const got = await gpu.readF32(out, B * T * D);
    for (let t = 0; t < T; t++) {
      const row = Array.from(got.subarray(t * D, (t + 1) * D));
      if (t === 1 || t === 2) expect(row.every(Number.isNaN), `row ${t}`).toBe(true);
      else expect(row).toEqual(Array.from({ length: D }, (_, c) => Math.fround(wte[ids[t] * D + c] + wpe[t * D + c])));
    }
    expect(() => refEmbedding(ids, wte, wpe, B, T, D, V)).toThrow(RangeError);
  });

  it('rejects T over n_positions', async () => {
    const gpu = await testDevice();
    const b = gpu.storage(16);
    expect(() =>
      embeddingForward(gpu, { ids: b, wte: b, wpe: b, out: b }, { B: 1, T: 9, D: 1, vocabSize: 1, nPositions: 8 }),
    ).toThrow(/n_positions/);
  });
});
