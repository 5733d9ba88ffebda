/**
 * GELU kernels against the reference (packages/model/src/ops/gelu.ts, float64 tanh): random
 * inputs of awkward lengths, and extreme inputs (where a naive WGSL tanh gives NaN on some
 * drivers and 1 + tanh u cancels).
 */
import { describe, expect, it } from 'vitest';
import { Rng, geluBackward as refBackward, geluForward as refForward } from '@splitllm/model';
import { geluBackward, geluForward } from '../src/kernels/gelu';
import { maxRelErr, randn, testDevice } from './harness';

// One exp and a few multiplies per element in float32; WGSL's exp is allowed 3 + 2|x| ulps
// (x <= 2|u| ~ 24 for |input| <= 4.5): 1e-5 covers that bound, the measured error is far lower.
const TOL = 1e-5;
// Tails: exp(-2u) at 2|u| up to ~17 (x = -5) is allowed 3 + 2 * 17 ulps = 4.4e-6 relative, and y
// there is x / (1 + exp(-2u)), all of it that exp.
const TOL_TAIL = 2e-5;

async function run(x: Float32Array, dy: Float32Array): Promise<{ y: Float32Array; dx: Float32Array }> {
  const gpu = await testDevice();
  const n = x.length;
  const bx = gpu.storage(x);
  const by = gpu.storage(n * 4);
  const bdy = gpu.storage(dy);
  const bdx = gpu.storage(n * 4);
  gpu.run([...geluForward(gpu, { x: bx, y: by }, { n }), ...geluBackward(gpu, { x: bx, dy: bdy, dx: bdx }, { n })]);
  const [y, dx] = await Promise.all([gpu.readF32(by, n), gpu.readF32(bdx, n)]);
  return { y, dx };
}

describe('gelu kernels', () => {
  for (const n of [1, 7, 129, 1000, 70_001]) {
    it(`random n=${n}`, async () => {
      const rng = new Rng(n);
      const x = randn(n, rng, 1.5);
      const dy = randn(n, rng);
      const { y, dx } = await run(x, dy);
      const ey = maxRelErr(y, refForward(x));
      const edx = maxRelErr(dx, refBackward(x, dy));
      console.log(`gelu n=${n}: y ${ey.toExponential(1)}, dx ${edx.toExponential(1)}`);
      expect(ey).toBeLessThan(TOL);
      expect(edx).toBeLessThan(TOL);
    });
  }

  it('extreme inputs stay finite and match elementwise', async () => {
    const special = [
      0, -0, 1e-30, -1e-30, 1e-3, -1e-3, 3, -3, 5, -5, 8.5, -8.5, 9.9, -9.9, 10, -10, 10.5, -10.5, 40, -40, 1e3, -1e3,
      1e15, -1e15, 1e30, -1e30, 3e38, -3e38,
    ];
    const x = new Float32Array(special);
    const dy = new Float32Array(x.length).fill(1);
    const { y, dx } = await run(x, dy);
    const wy = refForward(x);
    const wdx = refBackward(x, dy);
    // Per element, relative to max(1, |want|): the tails (|x| >= 5) are where a float32 tanh
    // form would lose everything (y ~ -1e-6 at x = -5 is all in 1 + tanh u).
    let worst = 0;
    for (let i = 0; i < x.length; i++) {
      expect(Number.isFinite(y[i]), `y(${x[i]}) = ${y[i]}`).toBe(true);
      expect(Number.isFinite(dx[i]), `dx(${x[i]}) = ${dx[i]}`).toBe(true);
      const e = Math.max(
        Math.abs(y[i] - wy[i]) / Math.max(1, Math.abs(wy[i])),
        Math.abs(dx[i] - wdx[i]) / Math.max(1, Math.abs(wdx[i])),
      );
      worst = Math.max(worst, e);
    }
    // the negative tail relative to its own size, y(-5) ~ -2.3e-7 (further out, the float64
    // reference's own 1 + tanh u cancels: it returns 0 at x = -8.5 where the kernel gives ~1e-23)
    for (const v of [-3, -5]) {
      const i = special.indexOf(v);
      const rel = Math.abs(y[i] - wy[i]) / Math.abs(wy[i]);
      worst = Math.max(worst, rel);
      expect(rel, `relative y(${v})`).toBeLessThan(TOL_TAIL);
    }
    console.log(`gelu extremes: worst ${worst.toExponential(1)}`);
    expect(worst).toBeLessThan(TOL_TAIL);
  });
});
