/**
 * Causal attention kernels against the reference (packages/model/src/ops/attention.ts, float64
 * dots and softmax sums): both variants, T not a multiple of any tile, head sizes below, at and
 * above the 32-wide staging chunk (hd = 1, 4, 7, 32, 43, 50), and large-magnitude scores.
 */
import { describe, expect, it } from 'vitest';
import { Rng, causalAttentionBackward, causalAttentionForward } from '@splitllm/model';
import { GpuContext, GpuError } from '../src/gpu';
import {
  ATTENTION_VARIANTS,
  attentionBackward,
  attentionForward,
  attentionProbsLength,
} from '../src/kernels/attention';
import { maxRelErr, randn, testDevice } from './harness';

// Float32 dots of hd <= 50 terms and sums of T <= 70 terms against float64 ones: sqrt(K) ulps of
// the scale, 1e-6 or so; the backward's dp - sum p dp cancels about one more digit.
const TOL_FORWARD = 5e-6;
const TOL_BACKWARD = 2e-5;
// qkv std 4: scores ~ 16 std, up to ~60. A float32 score carries ~ |s| 2^-24 sqrt(hd) of error,
// and p = exp(s - max) turns that absolute error into a relative one: ~1e-5 of p, plus exp's
// own 3 + 2|x| ulps (~7e-6 at x = -60).
const TOL_LARGE = 3e-5;

interface Case {
  B: number;
  T: number;
  D: number;
  H: number;
  std?: number;
}

const CASES: Case[] = [
  { B: 1, T: 1, D: 4, H: 4 },
  { B: 2, T: 5, D: 7, H: 1 },
  { B: 1, T: 33, D: 12, H: 3 },
  { B: 2, T: 17, D: 128, H: 4 },
  { B: 1, T: 33, D: 129, H: 3 },
  { B: 2, T: 70, D: 200, H: 4 },
  { B: 2, T: 33, D: 16, H: 2, std: 4 },
];

async function runAttention(
  gpu: GpuContext,
  c: Case,
  qkv: Float32Array,
  dy: Float32Array,
  variant: (typeof ATTENTION_VARIANTS)[number],
) {
  const { B, T, D } = c;
  const nP = attentionProbsLength(c);
  const bqkv = gpu.storage(qkv);
  const out = gpu.storage(B * T * D * 4);
  const probs = gpu.storage(nP * 4);
  const dout = gpu.storage(dy);
  const dscores = gpu.storage(nP * 4);
  const dqkv = gpu.storage(B * T * 3 * D * 4);
  gpu.run([
    ...attentionForward(gpu, { qkv: bqkv, out, probs }, c, { variant }),
    ...attentionBackward(gpu, { qkv: bqkv, probs, dout, dscores, dqkv }, c, { variant }),
  ]);
  const [y, p, dx] = await Promise.all([
    gpu.readF32(out, B * T * D),
    gpu.readF32(probs, nP),
    gpu.readF32(dqkv, B * T * 3 * D),
  ]);
  return { y, p, dx };
}

describe('attention kernels', () => {
  for (const variant of ATTENTION_VARIANTS) {
    for (const c of CASES) {
      const { B, T, D, H } = c;
      it(`${variant}: B=${B} T=${T} D=${D} H=${H}${c.std ? ` std=${c.std}` : ''}`, async () => {
        const gpu = await testDevice();
        const rng = new Rng(B * 100_000 + T * 1000 + D * 10 + H);
        const qkv = randn(B * T * 3 * D, rng, c.std ?? 1);
        const dy = randn(B * T * D, rng);
        const ref = causalAttentionForward(qkv, B, T, D, H);
        const refDqkv = causalAttentionBackward(ref.cache, dy, B, T, D, H);
        const got = await runAttention(gpu, c, qkv, dy, variant);
        const errs = {
          out: maxRelErr(got.y, ref.y),
          probs: maxRelErr(got.p, ref.cache.probs),
          dqkv: maxRelErr(got.dx, refDqkv),
        };
        console.log(
          `attention ${variant} B=${B} T=${T} D=${D} H=${H}${c.std ? ` std=${c.std}` : ''}:`,
          Object.entries(errs)
            .map(([k, v]) => `${k} ${v.toExponential(1)}`)
            .join(', '),
        );
        const large = c.std !== undefined;
        expect(errs.out).toBeLessThan(large ? TOL_LARGE : TOL_FORWARD);
        expect(errs.probs).toBeLessThan(large ? TOL_LARGE : TOL_FORWARD);
        expect(errs.dqkv).toBeLessThan(large ? TOL_LARGE : TOL_BACKWARD);
      });
    }

    it(`${variant}: huge scores (qkv std 100, scores ~1e4) stay finite, rows sum to 1`, async () => {
      const gpu = await testDevice();
      const c = { B: 1, T: 37, D: 8, H: 2 };
      const rng = new Rng(99);
      const qkv = randn(c.B * c.T * 3 * c.D, rng, 100);
      const dy = randn(c.B * c.T * c.D, rng);
      const got = await runAttention(gpu, c, qkv, dy, variant);
      for (const v of [got.y, got.p, got.dx]) expect(v.every(Number.isFinite)).toBe(true);
      let worst = 0;
      for (let row = 0; row < c.B * c.H * c.T; row++) {
        let s = 0;
        for (let j = 0; j < c.T; j++) s += got.p[row * c.T + j];
        worst = Math.max(worst, Math.abs(s - 1));
      }
      // T float32 terms, each rounded: T ulps at most
      expect(worst).toBeLessThan(c.T * 1.2e-7);
      // one-hot rows: the forward is a selection of v rows, exact up to the few entries near the max
      const ref = causalAttentionForward(qkv, c.B, c.T, c.D, c.H);
      const e = maxRelErr(got.y, ref.y);
      console.log(
        `attention ${variant} huge scores: out ${e.toExponential(1)}, |row sum - 1| ${worst.toExponential(1)}`,
      );
      // a score of 1e4 is only good to ~1e-3 in float32, so near-ties may split differently
      expect(e).toBeLessThan(2e-2);
    });
  }

  it('throws DOES_NOT_FIT on an adapter with too few invocations per workgroup', async () => {
    const gpu = await testDevice();
    const small = new GpuContext(gpu.device, { ...gpu.adapter, maxComputeInvocationsPerWorkgroup: 64 });
    const b = gpu.storage(16);
    const call = () => attentionForward(small, { qkv: b, out: b, probs: b }, { B: 1, T: 4, D: 4, H: 1 });
    expect(call).toThrow(GpuError);
    expect(call).toThrow(/invocations per workgroup/);
  });

  it('rejects D not a multiple of H', async () => {
    const gpu = await testDevice();
    const b = gpu.storage(16);
    expect(() => attentionForward(gpu, { qkv: b, out: b, probs: b }, { B: 1, T: 4, D: 6, H: 4 })).toThrow(
      /multiple of H/,
    );
  });
});
