/**
 * Grouped-query causal attention kernels against the reference
 * (packages/model/src/ops/gqa-attention.ts: float64 dots, softmax sums and gradient sums): both
 * variants, Hkv = H (plain multi-head), Hkv = 1 (multi-query), groups of 2 and 3 (SmolLM2-135M's
 * H = 9, Hkv = 3, hd = 64), T not a multiple of any tile, head sizes below, at and above the
 * 32-wide staging chunk, and large-magnitude scores.
 */
import { describe, expect, it } from 'vitest';
import { Rng, gqaAttentionBackward as refBackward, gqaAttentionForward as refForward } from '@splitllm/model';
import { GpuContext, GpuError } from '../src/gpu';
import {
  GQA_ATTENTION_VARIANTS,
  gqaAttentionBackward,
  gqaAttentionForward,
  gqaAttentionProbsLength,
  type GqaAttentionDims,
  type GqaAttentionVariant,
} from '../src/kernels/gqa-attention';
import { timeDispatches } from '../src/kernels/matmul';
import { KernelDimsError } from '../src/kernels/rmsnorm';
import { maxRelErr, randn, testDevice } from './harness';

// Float32 dots of hd <= 64 terms and sums of T <= 40 terms against float64 ones: sqrt(K) ulps of
// the scale, ~1e-6; the backward's dp - sum p dp cancels about one more digit, and dk, dv add up
// G * T terms (G <= 4 heads). Measured worst (SwiftShader): forward 2.4e-7, backward 5.8e-7 (dk).
const TOL_FORWARD = 5e-6;
const TOL_BACKWARD = 2e-5;
// q, k, v std 4: scores ~ 16 std, up to ~60. A float32 score carries ~ |s| 2^-24 sqrt(hd) of
// error, and p = exp(s - max) turns that absolute error into a relative one: ~1e-5 of p, plus
// exp's own 3 + 2|x| ulps (~7e-6 at x = -60). Measured worst (SwiftShader): 1.9e-6 (dk).
const TOL_LARGE = 3e-5;

interface Case extends GqaAttentionDims {
  std?: number;
}

const CASES: Case[] = [
  { B: 1, T: 1, H: 4, Hkv: 4, headDim: 4 },
  { B: 2, T: 5, H: 3, Hkv: 1, headDim: 7 },
  { B: 1, T: 33, H: 4, Hkv: 2, headDim: 16 },
  { B: 2, T: 17, H: 4, Hkv: 1, headDim: 33 },
  { B: 1, T: 40, H: 9, Hkv: 3, headDim: 64 },
  { B: 2, T: 19, H: 2, Hkv: 2, headDim: 50 },
  { B: 2, T: 33, H: 4, Hkv: 2, headDim: 8, std: 4 },
];

function label(c: Case): string {
  return `B=${c.B} T=${c.T} H=${c.H} Hkv=${c.Hkv} hd=${c.headDim}${c.std ? ` std=${c.std}` : ''}`;
}

async function runGqa(
  gpu: GpuContext,
  c: GqaAttentionDims,
  inputs: { q: Float32Array; k: Float32Array; v: Float32Array; dy: Float32Array },
  variant: GqaAttentionVariant,
) {
  const nP = gqaAttentionProbsLength(c);
  const nQ = inputs.q.length;
  const nKv = inputs.k.length;
  const q = gpu.storage(inputs.q);
  const k = gpu.storage(inputs.k);
  const v = gpu.storage(inputs.v);
  const out = gpu.storage(nQ * 4);
  const probs = gpu.storage(nP * 4);
  const dout = gpu.storage(inputs.dy);
  const dscores = gpu.storage(nP * 4);
  const dq = gpu.storage(nQ * 4);
  const dk = gpu.storage(nKv * 4);
  const dv = gpu.storage(nKv * 4);
  gpu.run([
    ...gqaAttentionForward(gpu, { q, k, v, out, probs }, c, { variant }),
    ...gqaAttentionBackward(gpu, { q, k, v, probs, dout, dscores, dq, dk, dv }, c, { variant }),
  ]);
  const [y, p, gq, gk, gv] = await Promise.all([
    gpu.readF32(out, nQ),
    gpu.readF32(probs, nP),
    gpu.readF32(dq, nQ),
    gpu.readF32(dk, nKv),
    gpu.readF32(dv, nKv),
  ]);
  return { y, p, dq: gq, dk: gk, dv: gv };
}

function randomInputs(c: Case, seed: number, std = 1) {
  const rng = new Rng(seed);
  const nQ = c.B * c.T * c.H * c.headDim;
  const nKv = c.B * c.T * c.Hkv * c.headDim;
  return { q: randn(nQ, rng, std), k: randn(nKv, rng, std), v: randn(nKv, rng, std), dy: randn(nQ, rng) };
}

describe('gqaAttention kernels', () => {
  for (const variant of GQA_ATTENTION_VARIANTS) {
    for (const c of CASES) {
      it(`${variant}: ${label(c)}`, async () => {
        const gpu = await testDevice();
        const inputs = randomInputs(c, c.B * 100_000 + c.T * 1000 + c.H * 100 + c.Hkv * 10 + c.headDim, c.std);
        const shape = { B: c.B, T: c.T, H: c.H, Hkv: c.Hkv, headDim: c.headDim };
        const ref = refForward(inputs.q, inputs.k, inputs.v, shape);
        const refGrads = refBackward(ref.cache, inputs.dy, shape);
        const got = await runGqa(gpu, shape, inputs, variant);
        const errs = {
          out: maxRelErr(got.y, ref.y),
          probs: maxRelErr(got.p, ref.cache.probs),
          dq: maxRelErr(got.dq, refGrads.dq),
          dk: maxRelErr(got.dk, refGrads.dk),
          dv: maxRelErr(got.dv, refGrads.dv),
        };
        console.log(
          `gqa ${variant} ${label(c)}:`,
          Object.entries(errs)
            .map(([k, v]) => `${k} ${v.toExponential(1)}`)
            .join(', '),
        );
        const large = c.std !== undefined;
        expect(errs.out).toBeLessThan(large ? TOL_LARGE : TOL_FORWARD);
        expect(errs.probs).toBeLessThan(large ? TOL_LARGE : TOL_FORWARD);
        for (const e of [errs.dq, errs.dk, errs.dv]) expect(e).toBeLessThan(large ? TOL_LARGE : TOL_BACKWARD);
      });
    }

    it(`${variant}: huge scores (std 30, scores ~1e3) stay finite, rows sum to 1`, async () => {
      const gpu = await testDevice();
      const c = { B: 1, T: 37, H: 4, Hkv: 2, headDim: 8 };
      const inputs = randomInputs(c, 99, 30);
      const got = await runGqa(gpu, c, inputs, variant);
      for (const v of Object.values(got)) expect(v.every(Number.isFinite)).toBe(true);
      let worst = 0;
      for (let row = 0; row < c.B * c.H * c.T; row++) {
        let s = 0;
        for (let j = 0; j < c.T; j++) s += got.p[row * c.T + j];
        worst = Math.max(worst, Math.abs(s - 1));
      }
      // T float32 terms, each rounded: T ulps at most
      expect(worst).toBeLessThan(c.T * 1.2e-7);
      // near one-hot rows: the forward is nearly a selection of v rows
      const ref = refForward(inputs.q, inputs.k, inputs.v, c);
      const e = maxRelErr(got.y, ref.y);
      console.log(`gqa ${variant} huge scores: out ${e.toExponential(1)}, |row sum - 1| ${worst.toExponential(1)}`);
      // a score of 1e3 is only good to ~1e-4 in float32, and p = exp(s - max) turns that into a
      // relative error of p of the same size. Measured (SwiftShader): 2.0e-5; row sums 6.0e-8 off 1.
      expect(e).toBeLessThan(2e-3);
    });
  }

  it('the variants agree with each other on a SmolLM2-like shape (and their time is printed)', async () => {
    // both are checked against the reference above; this pins that they are interchangeable settings
    const gpu = await testDevice();
    const c = { B: 1, T: 64, H: 9, Hkv: 3, headDim: 64 };
    const inputs = randomInputs(c, 7);
    const [a, b] = [await runGqa(gpu, c, inputs, 'naive'), await runGqa(gpu, c, inputs, 'tiled')];
    for (const key of ['y', 'p', 'dq', 'dk', 'dv'] as const)
      expect(maxRelErr(a[key], b[key])).toBeLessThan(TOL_BACKWARD);
    // timing on this machine's adapter, for the header's figures (no assertion: the machine is shared)
    const nP = gqaAttentionProbsLength(c);
    const [q, dout, out, dq] = [inputs.q, inputs.dy, inputs.q, inputs.q].map((x) => gpu.storage(x.length * 4));
    const [k, v, dk, dv] = [0, 1, 2, 3].map(() => gpu.storage(inputs.k.length * 4));
    const [probs, dscores] = [gpu.storage(nP * 4), gpu.storage(nP * 4)];
    const times = [];
    for (const variant of GQA_ATTENTION_VARIANTS) {
      const fwd = gqaAttentionForward(gpu, { q, k, v, out, probs }, c, { variant });
      const bwd = gqaAttentionBackward(gpu, { q, k, v, probs, dout, dscores, dq, dk, dv }, c, { variant });
      const [f, bw] = [await timeDispatches(gpu, fwd), await timeDispatches(gpu, bwd)];
      times.push(`${variant} forward ${f.toFixed(1)} ms, backward ${bw.toFixed(1)} ms`);
    }
    console.log(`gqa ${label(c)} on ${gpu.adapter.name}: ${times.join('; ')}`);
  });

  it('throws DOES_NOT_FIT on an adapter with too few invocations per workgroup', async () => {
    const gpu = await testDevice();
    const small = new GpuContext(gpu.device, { ...gpu.adapter, maxComputeInvocationsPerWorkgroup: 64 });
    const b = gpu.storage(16);
    const dims = { B: 1, T: 4, H: 2, Hkv: 1, headDim: 4 };
    const call = () => gqaAttentionForward(small, { q: b, k: b, v: b, out: b, probs: b }, dims);
    expect(call).toThrow(GpuError);
    expect(call).toThrow(/invocations per workgroup/);
  });

  it('refuses H not a multiple of Hkv, naming both settings', async () => {
    const gpu = await testDevice();
    const b = gpu.storage(16);
    const call = () =>
      gqaAttentionForward(gpu, { q: b, k: b, v: b, out: b, probs: b }, { B: 1, T: 4, H: 6, Hkv: 4, headDim: 4 });
    expect(call).toThrow(KernelDimsError);
    expect(call).toThrow(/num_attention_heads = 6 is not a multiple of num_key_value_heads = 4/);
  });
});
