/**
 * Residual add / accumulate kernels against plain loops. Exact: one float32 add per output, the
 * same add the loop does, so the tolerance is 0.
 */
import { describe, expect, it } from 'vitest';
import { Rng } from '@splitllm/model';
import { residualAccumulate, residualAdd } from '../src/kernels/residual';
import { maxRelErr, randn, testDevice } from './harness';

describe('residual kernels', () => {
  for (const n of [1, 7, 129, 70_001]) {
    it(`add and accumulate n=${n}`, async () => {
      const gpu = await testDevice();
      const rng = new Rng(n + 3);
      const a = randn(n, rng);
      const b = randn(n, rng);
      const out = gpu.storage(n * 4);
      const acc = gpu.storage(b);
      gpu.run([
        ...residualAdd(gpu, { a: gpu.storage(a), b: gpu.storage(b), out }, { n }),
        ...residualAccumulate(gpu, { a: gpu.storage(a), out: acc }, { n }),
      ]);
      const want = a.map((v, i) => v + b[i]);
      const [gotAdd, gotAcc] = await Promise.all([gpu.readF32(out, n), gpu.readF32(acc, n)]);
      expect(maxRelErr(gotAdd, want)).toBe(0);
      expect(maxRelErr(gotAcc, want)).toBe(0);
    });
  }
});
