/**
 * RoPE kernels against the reference (packages/model/src/ops/rope.ts: the same float32 cos / sin
 * table, each output formed in float64 and rounded once): forward and backward, out of place and
 * in place, q-like and k-like head counts (SmolLM2's 9 and 3 heads of 64), a sequence shorter
 * than the table, Llama 3's rope_scaling, and the table checks.
 */
import { describe, expect, it } from 'vitest';
import {
  Rng,
  RopeError,
  ropeBackward as refBackward,
  ropeForward as refForward,
  ropeInverseFrequencies,
  ropeTable,
  type Llama3RopeScaling,
} from '@splitllm/model';
import { ropeBackward, ropeForward, uploadRopeTable } from '../src/kernels/rope';
import { maxRelErr, randn, testDevice } from './harness';

// Each output is x1 c -/+ x2 s: two float32 products and a sum, each rounded (or one fused), against
// the reference's single rounding: at most ~2 ulps of |x1| + |x2|, which is <= sqrt(2) times the
// pair's norm, itself kept by the rotation. Measured worst (SwiftShader): 7.5e-8.
const TOL = 4e-7;
// backward(forward(x)) against x: two rotations, each as above, and c^2 + s^2 = 1 only to float32
// rounding of the table. Measured worst (SwiftShader): 1.2e-7.
const TOL_ROUND_TRIP = 8e-7;

const LLAMA3_SCALING: Llama3RopeScaling = {
  type: 'llama3',
  factor: 32,
  lowFreqFactor: 1,
  highFreqFactor: 4,
  originalMaxPositionEmbeddings: 8192,
};

interface Case {
  B: number;
  T: number;
  nHeads: number;
  headDim: number;
  theta: number;
  /** positions in the table (>= T) */
  tableT: number;
  scaling?: Llama3RopeScaling;
}

const CASES: Case[] = [
  { B: 1, T: 1, nHeads: 1, headDim: 2, theta: 10_000, tableT: 1 },
  { B: 2, T: 5, nHeads: 3, headDim: 8, theta: 10_000, tableT: 5 },
  { B: 1, T: 33, nHeads: 9, headDim: 64, theta: 100_000, tableT: 40 },
  { B: 2, T: 21, nHeads: 3, headDim: 64, theta: 100_000, tableT: 21 },
  // Llama 3.2's settings; positions up to 300 so the slowest frequencies turn measurably
  { B: 1, T: 300, nHeads: 2, headDim: 64, theta: 500_000, tableT: 300, scaling: LLAMA3_SCALING },
];

describe('rope kernels', () => {
  for (const c of CASES) {
    const name = `B=${c.B} T=${c.T} heads=${c.nHeads} hd=${c.headDim}${c.scaling ? ' llama3 scaling' : ''}`;
    it(name, async () => {
      const gpu = await testDevice();
      const rng = new Rng(3000 + c.T * 13 + c.nHeads * 7 + c.headDim);
      const { B, T, nHeads, headDim } = c;
      const n = B * T * nHeads * headDim;
      const table = ropeTable(ropeInverseFrequencies(headDim, c.theta, c.scaling ?? null), c.tableT);
      const x = randn(n, rng);
      const dy = randn(n, rng);
      const refY = refForward(x, table, B, T, nHeads, headDim);
      const refDx = refBackward(dy, table, B, T, nHeads, headDim);

      const tab = uploadRopeTable(gpu, table);
      const dims = { B, T, nHeads, headDim };
      const bx = gpu.storage(x);
      const by = gpu.storage(n * 4);
      const bdy = gpu.storage(dy);
      const bdx = gpu.storage(n * 4);
      const inPlaceX = gpu.storage(x);
      const inPlaceDy = gpu.storage(dy);
      const roundTrip = gpu.storage(n * 4);
      gpu.run([
        ...ropeForward(gpu, { x: bx, y: by, table: tab }, dims),
        ...ropeBackward(gpu, { dy: bdy, dx: bdx, table: tab }, dims),
        ...ropeForward(gpu, { x: inPlaceX, table: tab }, dims),
        ...ropeBackward(gpu, { dy: inPlaceDy, table: tab }, dims),
        ...ropeBackward(gpu, { dy: by, dx: roundTrip, table: tab }, dims),
      ]);
      const [y, dx, yIn, dxIn, back] = await Promise.all(
        [by, bdx, inPlaceX, inPlaceDy, roundTrip].map((b) => gpu.readF32(b, n)),
      );
      const errs = {
        y: maxRelErr(y, refY),
        dx: maxRelErr(dx, refDx),
        yInPlace: maxRelErr(yIn, refY),
        dxInPlace: maxRelErr(dxIn, refDx),
        roundTrip: maxRelErr(back, x),
      };
      console.log(
        `rope ${name}:`,
        Object.entries(errs)
          .map(([k, v]) => `${k} ${v.toExponential(1)}`)
          .join(', '),
      );
      expect(errs.y).toBeLessThan(TOL);
      expect(errs.dx).toBeLessThan(TOL);
      expect(errs.yInPlace).toBeLessThan(TOL);
      expect(errs.dxInPlace).toBeLessThan(TOL);
      expect(errs.roundTrip).toBeLessThan(TOL_ROUND_TRIP);
      // position 0 is the identity (cos 1, sin 0): a check that rows are matched to their positions
      const width = nHeads * headDim;
      for (let b = 0; b < B; b++) {
        const row = b * T * width;
        expect(Array.from(y.subarray(row, row + width))).toEqual(Array.from(x.subarray(row, row + width)));
      }
    });
  }

  it('refuses a table of another head_dim or too few positions, naming them', async () => {
    const gpu = await testDevice();
    const tab = uploadRopeTable(gpu, ropeTable(ropeInverseFrequencies(8, 10_000), 4));
    const b = gpu.storage(16);
    const call = (dims: { B: number; T: number; nHeads: number; headDim: number }) => () =>
      ropeForward(gpu, { x: b, y: b, table: tab }, dims);
    expect(call({ B: 1, T: 4, nHeads: 1, headDim: 16 })).toThrow(RopeError);
    expect(call({ B: 1, T: 4, nHeads: 1, headDim: 16 })).toThrow(/head_dim 16 but the table has 4 pairs/);
    expect(call({ B: 1, T: 5, nHeads: 1, headDim: 8 })).toThrow(/5 positions but the table has 4/);
    expect(call({ B: 1, T: 4, nHeads: 1, headDim: 7 })).toThrow(/even/);
    expect(call({ B: 0, T: 4, nHeads: 1, headDim: 8 })()).toEqual([]);
  });
});
