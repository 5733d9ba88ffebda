/**
 * SwiGLU kernels against the reference (packages/model/src/ops/swiglu.ts, float64 exp, rounded
 * once): random gates and ups of awkward lengths, and extreme gates (where 1 / (1 + exp(-g))
 * would overflow exp in float32 and 1 - s would cancel).
 */
import { describe, expect, it } from 'vitest';
import { Rng, swigluBackward as refBackward, swigluForward as refForward } from '@splitllm/model';
import { swigluBackward, swigluForward } from '../src/kernels/swiglu';
import { maxRelErr, randn, testDevice } from './harness';

// One exp and a few multiplies per element in float32; WGSL's exp is allowed 3 + 2|x| ulps, |x| =
// |g| <= ~8 for std-2 gates: up to ~19 ulps = 1.1e-6 of s in the bound; the products add a few
// more ulps. Measured worst (SwiftShader): 1.8e-7 (h), 1.9e-7 (dgate), 1.8e-7 (dup).
const TOL = 3e-6;
// Extremes, per element against max(1, |want|) and, for the negative tail, relative to the value
// itself: there s = e / (1 + e) is all exp(-|g|), allowed 3 + 2|g| ulps = 1.2e-5 at |g| = 50.
// Measured worst (SwiftShader): 1.2e-6 (the relative h at g = -50).
const TOL_TAIL = 2e-5;

async function run(gate: Float32Array, up: Float32Array, dh: Float32Array) {
  const gpu = await testDevice();
  const n = gate.length;
  const bg = gpu.storage(gate);
  const bu = gpu.storage(up);
  const bh = gpu.storage(n * 4);
  const bdh = gpu.storage(dh);
  const bdg = gpu.storage(n * 4);
  const bdu = gpu.storage(n * 4);
  gpu.run([
    ...swigluForward(gpu, { gate: bg, up: bu, h: bh }, { n }),
    ...swigluBackward(gpu, { gate: bg, up: bu, dh: bdh, dgate: bdg, dup: bdu }, { n }),
  ]);
  const [h, dgate, dup] = await Promise.all([gpu.readF32(bh, n), gpu.readF32(bdg, n), gpu.readF32(bdu, n)]);
  return { h, dgate, dup };
}

describe('swiglu kernels', () => {
  for (const n of [1, 7, 129, 1000, 70_001]) {
    it(`random n=${n}`, async () => {
      const rng = new Rng(4000 + n);
      const gate = randn(n, rng, 2);
      const up = randn(n, rng);
      const dh = randn(n, rng);
      const got = await run(gate, up, dh);
      const want = refBackward(gate, up, dh);
      const errs = {
        h: maxRelErr(got.h, refForward(gate, up)),
        dgate: maxRelErr(got.dgate, want.dgate),
        dup: maxRelErr(got.dup, want.dup),
      };
      console.log(
        `swiglu n=${n}:`,
        Object.entries(errs)
          .map(([k, v]) => `${k} ${v.toExponential(1)}`)
          .join(', '),
      );
      for (const e of Object.values(errs)) expect(e).toBeLessThan(TOL);
    });
  }

  it('extreme gates stay finite and match elementwise', async () => {
    const special = [
      0, -0, 1e-30, -1e-30, 1e-3, -1e-3, 5, -5, 20, -20, 50, -50, 87, -87, 89, -89, 100, -100, 1e3, -1e3, 1e15, -1e15,
      1e30, -1e30,
    ];
    const gate = new Float32Array(special);
    const up = new Float32Array(gate.length).fill(1.5);
    const dh = new Float32Array(gate.length).fill(1);
    const got = await run(gate, up, dh);
    const wantH = refForward(gate, up);
    const want = refBackward(gate, up, dh);
    let worst = 0;
    for (let i = 0; i < gate.length; i++) {
      for (const [g, w, what] of [
        [got.h, wantH, 'h'],
        [got.dgate, want.dgate, 'dgate'],
        [got.dup, want.dup, 'dup'],
      ] as const) {
        expect(Number.isFinite(g[i]), `${what}(${gate[i]}) = ${g[i]}`).toBe(true);
        worst = Math.max(worst, Math.abs(g[i] - w[i]) / Math.max(1, Math.abs(w[i])));
      }
    }
    // the negative tail relative to its own size: h(-20) ~ -3e-8 is all in s = e / (1 + e)
    for (const v of [-5, -20, -50]) {
      const i = special.indexOf(v);
      const rel = Math.abs(got.h[i] - wantH[i]) / Math.abs(wantH[i]);
      worst = Math.max(worst, rel);
      expect(rel, `relative h(${v})`).toBeLessThan(TOL_TAIL);
    }
    console.log(`swiglu extremes: worst ${worst.toExponential(1)}`);
    expect(worst).toBeLessThan(TOL_TAIL);
  });
});
