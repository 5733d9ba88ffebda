/**
 * Every matmul variant x layout against the float64-accumulating reference (ops/matmul.ts) on
 * sizes that are not multiples of any tile, with bias / accumulate / alpha rotated over the cases.
 */
import { describe, expect, it } from 'vitest';
import { Rng, matmul as refNN, matmulAT as refTN, matmulBT as refNT } from '@splitllm/model';
import { GpuContext, GpuError } from '../src/gpu';
import {
  matmul,
  matmulWorkgroup,
  MATMUL_LAYOUTS,
  MATMUL_VARIANTS,
  pickFastestMatmul,
  SPLIT_K_VARIANTS,
  splitKSlices,
  type MatmulDims,
  type MatmulLayout,
} from '../src/kernels/matmul';
import { maxRelErr, randn, runAndRead, testDevice } from './harness';

// Float32 accumulation of K products vs the float64 reference: ~sqrt(K) * 6e-8 of the output's
// scale (<= 1e-6 for K <= 256); 1e-5 leaves 10x margin and still catches any indexing error (O(1)).
const TOL = 1e-5;

// [M, K, N]: degenerate, smaller than every tile, tile+1, irregular, exact tiles, multiples of 4
// (the vec4 paths of 'registers').
const SIZES: [number, number, number][] = [
  [1, 1, 1],
  [7, 13, 5],
  [65, 33, 129],
  [130, 67, 70],
  [64, 64, 64],
  [36, 44, 40],
];

function reference(layout: MatmulLayout, a: Float32Array, b: Float32Array, d: MatmulDims): Float32Array {
  if (layout === 'nn') return refNN(a, b, d.M, d.K, d.N);
  if (layout === 'nt') return refNT(a, b, d.M, d.K, d.N);
  return refTN(a, b, d.K, d.M, d.N);
}

describe('matmul kernels', () => {
  const errors: string[] = [];
  for (const variant of MATMUL_VARIANTS) {
    for (const layout of MATMUL_LAYOUTS) {
      it(`${variant} ${layout}`, async () => {
        const gpu = await testDevice();
        const rng = new Rng(11);
        let worst = 0;
        for (let s = 0; s < SIZES.length; s++) {
          const [M, K, N] = SIZES[s];
          const d = { M, K, N };
          // rotate the epilogue options over the sizes: plain, bias, accumulate, both (+ alpha)
          const withBias = s % 2 === 1;
          const accumulate = s % 4 >= 2;
          const alpha = s % 3 === 2 ? 0.5 : 1;
          const a = randn(M * K, rng);
          const b = randn(K * N, rng);
          const bias = randn(N, rng);
          const c0 = randn(M * N, rng);
          const prod = reference(layout, a, b, d);
          const want = new Float32Array(M * N);
          for (let i = 0; i < M; i++) {
            for (let j = 0; j < N; j++) {
              want[i * N + j] = alpha * prod[i * N + j] + (withBias ? bias[j] : 0) + (accumulate ? c0[i * N + j] : 0);
            }
          }
          const bufs = {
            a: gpu.storage(a),
            b: gpu.storage(b),
            c: gpu.storage(accumulate ? c0 : new Float32Array(M * N)),
            bias: withBias ? gpu.storage(bias) : undefined,
          };
          const got = await runAndRead(
            gpu,
            matmul(gpu, bufs, d, { layout, variant, accumulate, alpha }),
            bufs.c,
            M * N,
          );
          const err = maxRelErr(got, want);
          worst = Math.max(worst, err);
          expect(
            err,
            `${variant} ${layout} ${M}x${K}x${N} bias=${withBias} acc=${accumulate} alpha=${alpha}`,
          ).toBeLessThan(TOL);
          for (const x of Object.values(bufs)) x?.destroy();
        }
        errors.push(`${variant} ${layout}: ${worst.toExponential(2)}`);
      });
    }
  }

  it('reports the worst errors', () => {
    console.log(`matmul max relative error per variant/layout:\n  ${errors.join('\n  ')}`);
  });

  it('smaller workgroup shapes where the device allows 128 or 64 invocations (compat adapters)', async () => {
    const real = await testDevice();
    const rng = new Rng(5);
    const [M, K, N] = [70, 37, 67];
    const a = randn(M * K, rng);
    const b = randn(K * N, rng);
    for (const limit of [128, 64]) {
      // the same device, described as one with a lower invocation limit
      const gpu = new GpuContext(real.device, { ...real.adapter, maxComputeInvocationsPerWorkgroup: limit });
      for (const variant of MATMUL_VARIANTS) {
        const [x, y] = matmulWorkgroup(gpu, variant);
        expect(x * y).toBeLessThanOrEqual(limit);
        for (const layout of MATMUL_LAYOUTS) {
          const d = { M, K, N };
          const bufs = { a: gpu.storage(a), b: gpu.storage(b), c: gpu.storage(M * N * 4) };
          const got = await runAndRead(gpu, matmul(gpu, bufs, d, { layout, variant }), bufs.c, M * N);
          expect(maxRelErr(got, reference(layout, a, b, d)), `${variant} ${layout} limit ${limit}`).toBeLessThan(TOL);
          for (const x of Object.values(bufs)) x.destroy();
        }
      }
    }
    const tiny = new GpuContext(real.device, { ...real.adapter, maxComputeInvocationsPerWorkgroup: 32 });
    expect(() => matmulWorkgroup(tiny, 'blocked')).toThrow(GpuError);
  });

  // [M, K, N, splitK]: K not a multiple of the slice quantum (16), a last slice shorter than the
  // rest, more slices asked for than K has quanta (fewer run), K a multiple of 4 (the vec4 paths)
  const SPLIT_SIZES: [number, number, number, number][] = [
    [7, 1000, 9, 8],
    [65, 333, 70, 3],
    [36, 256, 40, 4],
    [5, 40, 12, 16],
    [130, 517, 67, 2],
  ];
  for (const variant of SPLIT_K_VARIANTS) {
    it(`split-K ${variant}: every layout against the reference, with the epilogue on the reduce`, async () => {
      const gpu = await testDevice();
      const rng = new Rng(23);
      for (const layout of MATMUL_LAYOUTS) {
        for (let s = 0; s < SPLIT_SIZES.length; s++) {
          const [M, K, N, splitK] = SPLIT_SIZES[s];
          const d = { M, K, N };
          const withBias = s % 2 === 0;
          const accumulate = s % 3 === 1;
          const alpha = s === 2 ? 0.25 : 1;
          const a = randn(M * K, rng);
          const b = randn(K * N, rng);
          const bias = randn(N, rng);
          const c0 = randn(M * N, rng);
          const prod = reference(layout, a, b, d);
          const want = prod.map((p, i) => alpha * p + (withBias ? bias[i % N] : 0) + (accumulate ? c0[i] : 0));
          const { slices } = splitKSlices(K, splitK);
          const bufs = {
            a: gpu.storage(a),
            b: gpu.storage(b),
            c: gpu.storage(accumulate ? c0 : new Float32Array(M * N)),
            bias: withBias ? gpu.storage(bias) : undefined,
            partials: gpu.storage(slices * M * N * 4),
          };
          const dispatches = matmul(gpu, bufs, d, { layout, variant, accumulate, alpha, splitK });
          expect(dispatches, 'the sliced product, then the reduce').toHaveLength(2);
          expect(dispatches[0].workgroups[2], `${M}x${K}x${N} in ${splitK}`).toBe(slices);
          const got = await runAndRead(gpu, dispatches, bufs.c, M * N);
          // K up to 1000 float32 products summed in up to 8 slices: ~sqrt(K) * 6e-8 (2e-6) of the scale
          expect(maxRelErr(got, want), `${variant} ${layout} ${M}x${K}x${N} splitK ${splitK}`).toBeLessThan(TOL);
          for (const x of Object.values(bufs)) x?.destroy();
        }
      }
    });
  }

  it('split-K slices: multiples of 16, fewer when K is short, one without a split', () => {
    expect(splitKSlices(50257, 8)).toEqual({ kSlice: 6288, slices: 8 });
    expect(splitKSlices(1000, 8)).toEqual({ kSlice: 128, slices: 8 });
    expect(splitKSlices(40, 16)).toEqual({ kSlice: 16, slices: 3 });
    expect(splitKSlices(333, 1)).toEqual({ kSlice: 333, slices: 1 });
    expect(splitKSlices(0, 4)).toEqual({ kSlice: 0, slices: 1 });
    expect(() => splitKSlices(100, 0)).toThrow(/positive integer/);
  });

  it('split-K refuses the variants without it, and a missing or short partials buffer', async () => {
    const gpu = await testDevice();
    const [M, K, N] = [8, 64, 8];
    const base = { a: gpu.storage(M * K * 4), b: gpu.storage(K * N * 4), c: gpu.storage(M * N * 4) };
    const partials = gpu.storage(4 * M * N * 4);
    expect(() => matmul(gpu, { ...base, partials }, { M, K, N }, { variant: 'registers', splitK: 4 })).toThrow(
      /splitK runs on blocked and blocked8x8, not 'registers'/,
    );
    expect(() => matmul(gpu, base, { M, K, N }, { variant: 'blocked', splitK: 4 })).toThrow(/needs a partials buffer/);
    expect(() =>
      matmul(gpu, { ...base, partials: gpu.storage(M * N * 4) }, { M, K, N }, { variant: 'blocked', splitK: 4 }),
    ).toThrow(/partials needs 256 floats/);
  });

  it('K = 0 gives bias (or keeps C when accumulating)', async () => {
    const gpu = await testDevice();
    const bias = new Float32Array([1, 2, 3]);
    const c = gpu.storage(new Float32Array(6).fill(9));
    const got = await runAndRead(
      gpu,
      matmul(
        gpu,
        { a: gpu.storage(16), b: gpu.storage(16), c, bias: gpu.storage(bias) },
        { M: 2, K: 0, N: 3 },
        { variant: 'registers' },
      ),
      c,
      6,
    );
    expect([...got]).toEqual([1, 2, 3, 1, 2, 3]);
  });

  it('rejects buffers smaller than the dims', async () => {
    const gpu = await testDevice();
    const small = gpu.storage(16);
    expect(() => matmul(gpu, { a: small, b: gpu.storage(400), c: gpu.storage(400) }, { M: 10, K: 10, N: 10 })).toThrow(
      /A needs 100 floats/,
    );
  });

  it('pickFastestMatmul returns one of the candidates', async () => {
    const gpu = await testDevice();
    const v = await pickFastestMatmul(gpu, { M: 32, K: 32, N: 32 }, { layouts: ['nn'], runs: 1 });
    expect(MATMUL_VARIANTS).toContain(v);
  });
});
