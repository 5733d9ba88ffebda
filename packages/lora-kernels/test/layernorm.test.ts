/**
 * LayerNorm kernels against the reference (packages/model/src/ops/layernorm.ts, float64
 * statistics): both variants, awkward row counts and widths, a large common offset, and the
 * accumulate option of the backward.
 */
import { describe, expect, it } from 'vitest';
import { Rng, layerNormBackward as refBackward, layerNormForward as refForward } from '@splitllm/model';
import { LAYERNORM_VARIANTS, layerNormBackward, layerNormForward } from '../src/kernels/layernorm';
import { maxRelErr, randn, testDevice } from './harness';

// Float32 statistics over D <= 768 elements against float64 ones: a few ulps of the scale.
const TOL = 2e-6;
// Backward: two row sums (<= 200 terms each) enter with cancellation in g - mean(g) - ...: sqrt(D) ulps.
const TOL_BACKWARD = 1e-5;
// Offset 300 with std 2: the float32 mean itself is only good to ulp(300)/2 = 1.5e-5, which is
// 8e-6 of the std, and every x - mean carries it (the reference keeps a float64 mean).
const TOL_OFFSET = 1e-5;
// The mean, measured against the std of x (a row mean is ~std/sqrt(D), so relative to itself it
// would be judged on cancellation): 'thread' sums D terms x - x_0 in sequence, running sums up to
// D |x_0| ~ D std, so sqrt(D) ulps of D std, over D: ~1e-6 of the std at D = 768.
const TOL_MEAN = 3e-6;

/** max |got - want| / scale */
function absErr(got: ArrayLike<number>, want: ArrayLike<number>, scale: number): number {
  let m = 0;
  for (let i = 0; i < want.length; i++) m = Math.max(m, Math.abs(got[i] - want[i]));
  return m / scale;
}

interface Case {
  M: number;
  D: number;
  offset?: number;
  scale?: number;
}

const CASES: Case[] = [
  { M: 1, D: 1 },
  { M: 3, D: 7 },
  { M: 67, D: 129 },
  { M: 130, D: 200 },
  { M: 5, D: 768 },
  { M: 9, D: 200, offset: 300, scale: 2 },
];

describe('layerNorm kernels', () => {
  for (const variant of LAYERNORM_VARIANTS) {
    for (const c of CASES) {
      it(`${variant}: M=${c.M} D=${c.D}${c.offset ? ` offset=${c.offset}` : ''}`, async () => {
        const gpu = await testDevice();
        const rng = new Rng(1000 + c.M * 7 + c.D);
        const { M, D } = c;
        const eps = 1e-5;
        const x = randn(M * D, rng, c.scale ?? 1);
        if (c.offset) for (let i = 0; i < x.length; i++) x[i] += c.offset;
        const gamma = randn(D, rng, 0.5).map((v) => v + 1);
        const beta = randn(D, rng, 0.5);
        const dy = randn(M * D, rng);
        const prior = randn(M * D, rng);

        const ref = refForward(x, gamma, beta, M, D, eps);
        const refDx = refBackward(ref.cache, gamma, dy, M, D).dx;

        const bx = gpu.storage(x);
        const bg = gpu.storage(gamma);
        const bb = gpu.storage(beta);
        const by = gpu.storage(M * D * 4);
        const bm = gpu.storage(M * 4);
        const br = gpu.storage(M * 4);
        const bdy = gpu.storage(dy);
        const bdx = gpu.storage(M * D * 4);
        const bacc = gpu.storage(prior);
        gpu.run([
          ...layerNormForward(
            gpu,
            { x: bx, gamma: bg, beta: bb, y: by, mean: bm, rstd: br },
            { M, D, eps },
            { variant },
          ),
          ...layerNormBackward(gpu, { x: bx, gamma: bg, mean: bm, rstd: br, dy: bdy, dx: bdx }, { M, D }, { variant }),
          ...layerNormBackward(
            gpu,
            { x: bx, gamma: bg, mean: bm, rstd: br, dy: bdy, dx: bacc },
            { M, D },
            { variant, accumulate: true },
          ),
        ]);
        const [y, mean, rstd, dx, acc] = await Promise.all([
          gpu.readF32(by, M * D),
          gpu.readF32(bm, M),
          gpu.readF32(br, M),
          gpu.readF32(bdx, M * D),
          gpu.readF32(bacc, M * D),
        ]);
        const wantAcc = prior.map((p, i) => p + refDx[i]);
        const tol = c.offset ? TOL_OFFSET : TOL;
        const errs = {
          y: maxRelErr(y, ref.y),
          mean: absErr(mean, ref.cache.mean, c.scale ?? 1),
          rstd: maxRelErr(rstd, ref.cache.rstd),
          dx: maxRelErr(dx, refDx),
          acc: maxRelErr(acc, wantAcc),
        };
        console.log(
          `layernorm ${variant} M=${M} D=${D}${c.offset ? ' offset' : ''}:`,
          Object.entries(errs)
            .map(([k, v]) => `${k} ${v.toExponential(1)}`)
            .join(', '),
        );
        expect(errs.y).toBeLessThan(tol);
        expect(errs.mean).toBeLessThan(c.offset ? TOL_OFFSET : TOL_MEAN);
        expect(errs.rstd).toBeLessThan(tol);
        expect(errs.dx).toBeLessThan(c.offset ? TOL_OFFSET : TOL_BACKWARD);
        expect(errs.acc).toBeLessThan(c.offset ? TOL_OFFSET : TOL_BACKWARD);
      });
    }
  }
});
