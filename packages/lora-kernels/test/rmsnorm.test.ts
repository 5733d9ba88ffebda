/**
 * RMSNorm kernels against the reference (packages/model/src/ops/rmsnorm.ts: float64 sum of
 * squares and r, y rounded once): both variants, awkward row counts and widths (below, at and
 * above the 128-wide workgroup, SmolLM2's 576), large and tiny magnitudes (eps dominating), and
 * the accumulate option of the backward.
 */
import { describe, expect, it } from 'vitest';
import { Rng, rmsNormBackward as refBackward, rmsNormForward as refForward } from '@splitllm/model';
import { KernelDimsError, RMSNORM_VARIANTS, rmsNormBackward, rmsNormForward } from '../src/kernels/rmsnorm';
import { timeDispatches } from '../src/kernels/matmul';
import { maxRelErr, randn, testDevice } from './harness';

// Forward: a float32 sum of D <= 576 non-negative squares (no cancellation: a few ulps, growing
// like sqrt(D) in the tree sums and at worst like D in 'thread''s sequential loop), half of it in r,
// then two roundings in x r w. Measured worst (SwiftShader): 4.2e-7 (y), 3.6e-7 (rstd).
const TOL = 2e-6;
// Backward: the row sum of g x (D terms of both signs) enters dx through x r^2 mean(g x), and
// r g - x(...) can cancel: a few ulps of the terms, sqrt(D) for the sum. Judged against the size of
// the terms, max |r g| (g = dy weight), not of dx: at D = 1 the two terms cancel to eps / (x^2 + eps)
// of each (y = sign(x) weight is flat), so dx is ~1e-5 of its terms and no float32 kernel gets it
// to relative precision. Measured worst (SwiftShader): 2.6e-7 (dx), 2.6e-7 (acc).
const TOL_BACKWARD = 5e-6;

/** max |got - want| / scale */
function absErr(got: ArrayLike<number>, want: ArrayLike<number>, scale: number): number {
  let m = 0;
  for (let i = 0; i < want.length; i++) m = Math.max(m, Math.abs(got[i] - want[i]));
  return m / scale;
}

interface Case {
  M: number;
  D: number;
  scale?: number;
}

const CASES: Case[] = [
  { M: 1, D: 1 },
  { M: 3, D: 7 },
  { M: 67, D: 129 },
  { M: 130, D: 200 },
  { M: 5, D: 576 },
  // |x| ~ 1e3: mean(x^2) ~ 1e6, eps negligible; the relative errors must not grow with the scale
  { M: 9, D: 200, scale: 1000 },
  // |x| ~ 1e-3: mean(x^2) ~ 1e-6 against eps = 1e-5, so r is set mostly by eps
  { M: 4, D: 64, scale: 1e-3 },
];

describe('rmsNorm kernels', () => {
  for (const variant of RMSNORM_VARIANTS) {
    for (const c of CASES) {
      it(`${variant}: M=${c.M} D=${c.D}${c.scale ? ` scale=${c.scale}` : ''}`, async () => {
        const gpu = await testDevice();
        const rng = new Rng(2000 + c.M * 7 + c.D);
        const { M, D } = c;
        const eps = 1e-5;
        const x = randn(M * D, rng, c.scale ?? 1);
        const weight = randn(D, rng, 0.5).map((v) => v + 1);
        const dy = randn(M * D, rng);
        const prior = randn(M * D, rng);

        const ref = refForward(x, weight, M, D, eps);
        const refDx = refBackward(ref.cache, weight, dy, M, D).dx;

        const bx = gpu.storage(x);
        const bw = gpu.storage(weight);
        const by = gpu.storage(M * D * 4);
        const br = gpu.storage(M * 4);
        const bdy = gpu.storage(dy);
        const bdx = gpu.storage(M * D * 4);
        const bacc = gpu.storage(prior);
        const back = { x: bx, weight: bw, rstd: br, dy: bdy };
        gpu.run([
          ...rmsNormForward(gpu, { x: bx, weight: bw, y: by, rstd: br }, { M, D, eps }, { variant }),
          ...rmsNormBackward(gpu, { ...back, dx: bdx }, { M, D }, { variant }),
          ...rmsNormBackward(gpu, { ...back, dx: bacc }, { M, D }, { variant, accumulate: true }),
        ]);
        const [y, rstd, dx, acc] = await Promise.all([
          gpu.readF32(by, M * D),
          gpu.readF32(br, M),
          gpu.readF32(bdx, M * D),
          gpu.readF32(bacc, M * D),
        ]);
        const wantAcc = prior.map((p, i) => p + refDx[i]);
        let terms = 0; // max |r g|, the size of dx's terms
        for (let i = 0; i < M * D; i++)
          terms = Math.max(terms, Math.abs(ref.cache.rstd[Math.floor(i / D)] * dy[i] * weight[i % D]));
        const errs = {
          y: maxRelErr(y, ref.y),
          rstd: maxRelErr(rstd, ref.cache.rstd),
          dx: absErr(dx, refDx, terms),
          // the prior is ~1 and dx ~ r g: both set the size of the sum
          acc: absErr(acc, wantAcc, Math.max(terms, ...prior.map(Math.abs))),
        };
        console.log(
          `rmsnorm ${variant} M=${M} D=${D}${c.scale ? ` scale=${c.scale}` : ''}:`,
          Object.entries(errs)
            .map(([k, v]) => `${k} ${v.toExponential(1)}`)
            .join(', '),
        );
        expect(errs.y).toBeLessThan(TOL);
        expect(errs.rstd).toBeLessThan(TOL);
        expect(errs.dx).toBeLessThan(TOL_BACKWARD);
        expect(errs.acc).toBeLessThan(TOL_BACKWARD);
      });
    }
  }

  it('the variants agree at a SmolLM2-like shape (and their time is printed)', async () => {
    const gpu = await testDevice();
    const M = 256;
    const D = 576;
    const rng = new Rng(5);
    const bx = gpu.storage(randn(M * D, rng));
    const bw = gpu.storage(randn(D, rng, 0.5).map((v) => v + 1));
    const bdy = gpu.storage(randn(M * D, rng));
    const [by, bdx] = [gpu.storage(M * D * 4), gpu.storage(M * D * 4)];
    const br = gpu.storage(M * 4);
    const outs: Float32Array[][] = [];
    const times: string[] = [];
    for (const variant of RMSNORM_VARIANTS) {
      const fwd = rmsNormForward(gpu, { x: bx, weight: bw, y: by, rstd: br }, { M, D, eps: 1e-5 }, { variant });
      const bwd = rmsNormBackward(gpu, { x: bx, weight: bw, rstd: br, dy: bdy, dx: bdx }, { M, D }, { variant });
      gpu.run([...fwd, ...bwd]);
      outs.push(await Promise.all([gpu.readF32(by, M * D), gpu.readF32(bdx, M * D)]));
      // timing on this machine's adapter, for the header's figures (no assertion: the machine is shared)
      const [f, b] = [await timeDispatches(gpu, fwd), await timeDispatches(gpu, bwd)];
      times.push(`${variant} forward ${f.toFixed(2)} ms, backward ${b.toFixed(2)} ms`);
    }
    console.log(`rmsnorm M=${M} D=${D} on ${gpu.adapter.name}: ${times.join('; ')}`);
    expect(maxRelErr(outs[0][0], outs[1][0])).toBeLessThan(TOL);
    expect(maxRelErr(outs[0][1], outs[1][1])).toBeLessThan(TOL_BACKWARD);
  });

  it('M = 0 records nothing; bad dims and variants are refused with the setting named', async () => {
    const gpu = await testDevice();
    const b = gpu.storage(16);
    const buffers = { x: b, weight: b, y: b, rstd: b };
    expect(rmsNormForward(gpu, buffers, { M: 0, D: 8, eps: 1e-5 })).toEqual([]);
    expect(() => rmsNormForward(gpu, buffers, { M: 2.5, D: 8, eps: 1e-5 })).toThrow(KernelDimsError);
    expect(() => rmsNormForward(gpu, buffers, { M: 2, D: 8, eps: Number.NaN })).toThrow(/rms_norm_eps/);
    expect(() => rmsNormForward(gpu, buffers, { M: 2, D: 8, eps: 1e-5 }, { variant: 'tiles' as 'thread' })).toThrow(
      /variant/,
    );
  });
});
