/**
 * AdamW kernel: several steps against adamwStep (ops/adamw.ts), with weight decay and a learning
 * rate changed between steps through the uniform (the dispatches are built once).
 */
import { describe, expect, it } from 'vitest';
import { Rng, adamwInit, adamwStep, type AdamWOptions } from '@splitllm/model';
import { adamw, createAdamwHyper, setAdamwStep } from '../src/kernels/adamw';
import { maxRelErr, randn, testDevice } from './harness';

// Elementwise float32 arithmetic (about 10 roundings per step) vs the reference's float64
// arithmetic rounded to float32 storage: ~1e-6 relative per step on m, v and the update, over 6
// steps: 1e-5. p is compared through its change p - p0 (~lr per step), far more sensitive than p;
// parameters are LoRA-sized (std 0.05) so that one float32 ulp of p (~4e-9) stays ~1e-6 of the
// change (with p ~ 1 a one-ulp storage difference alone is ~2e-5 of a 1e-2 update).
const TOL = 1e-5;

describe('adamw kernel', () => {
  it('matches adamwStep over several steps (weight decay, lr changed per step)', async () => {
    const gpu = await testDevice();
    const n = 1000 + 37; // not a multiple of the workgroup
    const rng = new Rng(4);
    const o: AdamWOptions = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1 };
    const p0 = randn(n, rng, 0.05);
    const grads = Array.from({ length: 6 }, (_, t) => {
      const g = randn(n, rng, 0.5);
      // exact zeros (v = 0 on step 1 exercises eps) and a few tiny gradients
      for (let i = 0; i < n; i += 97) g[i] = t === 0 ? 0 : g[i] * 1e-6;
      return g;
    });
    const lrs = [1e-2, 5e-3, 2e-2, 1e-2, 1e-3, 3e-2];

    const ref = { p: p0.slice(), s: adamwInit(n) };
    const bufs = {
      p: gpu.storage(p0),
      g: gpu.storage(n * 4),
      m: gpu.storage(n * 4),
      v: gpu.storage(n * 4),
      hyper: createAdamwHyper(gpu, o),
    };
    const step = adamw(gpu, bufs, { n }); // built once
    const errs: string[] = [];
    for (let t = 1; t <= grads.length; t++) {
      const lr = lrs[t - 1];
      adamwStep(ref.p, grads[t - 1], ref.s, t, { ...o, lr });
      gpu.write(bufs.g, grads[t - 1]);
      setAdamwStep(gpu, bufs.hyper, t, lr);
      gpu.run(step);
      const [p, m, v] = await Promise.all([gpu.readF32(bufs.p, n), gpu.readF32(bufs.m, n), gpu.readF32(bufs.v, n)]);
      const e = {
        p: maxRelErr(p, ref.p),
        dp: maxRelErr(
          p.map((x, i) => x - p0[i]),
          ref.p.map((x, i) => x - p0[i]),
        ),
        m: maxRelErr(m, ref.s.m),
        v: maxRelErr(v, ref.s.v),
      };
      errs.push(
        `t=${t}: ` +
          Object.entries(e)
            .map(([k, x]) => `${k} ${x.toExponential(2)}`)
            .join(', '),
      );
      for (const [k, x] of Object.entries(e)) expect(x, `step ${t} ${k}`).toBeLessThan(TOL);
    }
    console.log(`adamw max relative errors:\n  ${errs.join('\n  ')}`);
  });

  it('gradScale multiplies the gradient (clipping / averaging)', async () => {
    const gpu = await testDevice();
    const n = 67;
    const rng = new Rng(9);
    const o: AdamWOptions = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 };
    const p0 = randn(n, rng, 0.05);
    const g = randn(n, rng);
    const ref = { p: p0.slice(), s: adamwInit(n) };
    adamwStep(
      ref.p,
      g.map((x) => x * 0.25),
      ref.s,
      1,
      o,
    );
    const bufs = {
      p: gpu.storage(p0),
      g: gpu.storage(g),
      m: gpu.storage(n * 4),
      v: gpu.storage(n * 4),
      hyper: createAdamwHyper(gpu, o),
    };
    setAdamwStep(gpu, bufs.hyper, 1, o.lr, 0.25);
    gpu.run(adamw(gpu, bufs, { n }));
    const m = await gpu.readF32(bufs.m, n);
    expect(maxRelErr(m, ref.s.m)).toBeLessThan(TOL);
    const p = await gpu.readF32(bufs.p, n);
    expect(
      maxRelErr(
        p.map((x, i) => x - p0[i]),
        ref.p.map((x, i) => x - p0[i]),
      ),
    ).toBeLessThan(TOL);
  });

  it('rejects a step before 1', async () => {
    const gpu = await testDevice();
    const h = createAdamwHyper(gpu, { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 });
    expect(() => setAdamwStep(gpu, h, 0)).toThrow(/t must be/);
  });
});
