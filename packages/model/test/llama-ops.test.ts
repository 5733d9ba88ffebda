/**
 * The LLaMA family's reference ops (RMSNorm, RoPE, SwiGLU, grouped-query attention): forward
 * against direct formulas or the GPT-2 ops they generalize, backward against finite differences
 * (gradcheck.ts: step 3e-3, tolerance 1e-3 of the largest analytic entry).
 */
import { describe, expect, it } from 'vitest';
import type { Llama3RopeScaling } from '../src/llama-config';
import { causalAttentionBackward, causalAttentionForward } from '../src/ops/attention';
import { gqaAttentionBackward, gqaAttentionForward, type GqaShape } from '../src/ops/gqa-attention';
import { rmsNormBackward, rmsNormForward } from '../src/ops/rmsnorm';
import { RopeError, ropeBackward, ropeForward, ropeInverseFrequencies, ropeTable } from '../src/ops/rope';
import { swigluBackward, swigluForward } from '../src/ops/swiglu';
import { Rng } from '../src/rng';
import { FD_TOLERANCE, fdRelativeError, randomArray, weightedSum } from './gradcheck';

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe('rmsNorm', () => {
  const [M, D, eps] = [5, 12, 1e-6];
  const rng = new Rng(31);
  const x = randomArray(M * D, rng, 2);
  const weight = Float32Array.from(randomArray(D, rng, 0.3), (v) => 1 + v);

  it('divides each row by its root mean square and scales by the weight', () => {
    const { y } = rmsNormForward(x, weight, M, D, eps);
    for (let i = 0; i < M; i++) {
      const row = Array.from(x.subarray(i * D, (i + 1) * D));
      const rms = Math.sqrt(row.reduce((s, v) => s + v * v, 0) / D + eps);
      // one float32 rounding of a float64 value: relative error <= 2^-24 ~ 6e-8
      for (let j = 0; j < D; j++) expect(Math.abs(y[i * D + j] - (row[j] / rms) * weight[j])).toBeLessThan(1e-6);
    }
    // unit weight: every row has mean square 1 (up to eps, which is 1e-6 of a mean square ~4)
    const unit = rmsNormForward(x, new Float32Array(D).fill(1), M, D, eps).y;
    for (let i = 0; i < M; i++) {
      const ms = Array.from(unit.subarray(i * D, (i + 1) * D)).reduce((s, v) => s + v * v, 0) / D;
      expect(Math.abs(ms - 1)).toBeLessThan(1e-5);
    }
    // no mean subtraction (what sets it apart from layerNorm): a constant row stays constant, sign kept
    const c = rmsNormForward(new Float32Array(D).fill(-3), new Float32Array(D).fill(1), 1, D, eps).y;
    expect(c.every((v) => Math.abs(v + 1) < 1e-6)).toBe(true);
  });

  it('backward matches finite differences for x and the weight', () => {
    const w = randomArray(M * D, rng);
    const f = () => weightedSum(rmsNormForward(x, weight, M, D, eps).y, w);
    const { cache } = rmsNormForward(x, weight, M, D, eps);
    const g = rmsNormBackward(cache, weight, Float32Array.from(w), M, D, true);
    expect(fdRelativeError(f, x, g.dx)).toBeLessThan(FD_TOLERANCE);
    expect(fdRelativeError(f, weight, g.dweight!)).toBeLessThan(FD_TOLERANCE);
    expect(rmsNormBackward(cache, weight, Float32Array.from(w), M, D).dweight).toBeUndefined();
  });
});

describe('swiglu', () => {
  it('is silu(gate) * up, finite for large |gate|, and its backward matches finite differences', () => {
    // silu(1) = 1 / (1 + e^-1) = 0.7310585786..., silu(-2) = -2 / (1 + e^2) = -0.2384058440...
    const h = swigluForward(Float32Array.from([1, -2, 0, 100, -100]), Float32Array.from([1, 3, 5, 2, 2]));
    expect(h[0]).toBeCloseTo(0.7310585786, 6);
    expect(h[1]).toBeCloseTo(3 * -0.238405844, 6);
    expect(h[2]).toBe(0);
    expect(h[3]).toBeCloseTo(200, 4);
    expect(Math.abs(h[4])).toBeLessThan(1e-30);
    const far = swigluBackward(Float32Array.from([-1000, 1000]), Float32Array.from([1, 1]), Float32Array.from([1, 1]));
    expect([...far.dgate, ...far.dup].every(Number.isFinite)).toBe(true);

    const rng = new Rng(8);
    const gate = randomArray(60, rng, 2.5);
    const up = randomArray(60, rng);
    const w = randomArray(60, rng);
    const f = () => weightedSum(swigluForward(gate, up), w);
    const g = swigluBackward(gate, up, Float32Array.from(w));
    expect(fdRelativeError(f, gate, g.dgate)).toBeLessThan(FD_TOLERANCE);
    expect(fdRelativeError(f, up, g.dup)).toBeLessThan(FD_TOLERANCE);
  });
});

describe('rope', () => {
  const hd = 8;
  const theta = 10000;
  const inv = ropeInverseFrequencies(hd, theta);

  it('uses inv_freq = theta^(-2i/hd) and rotates the pairs (i, i + hd/2), as rotate_half does', () => {
    expect(Array.from(inv)).toEqual([1, 0.1, 0.01, 0.001].map(Math.fround));
    const T = 3;
    const table = ropeTable(inv, T);
    const rng = new Rng(1);
    const x = randomArray(T * hd, rng); // B = 1, one head
    const y = ropeForward(x, table, 1, T, 1, hd);
    const t = 2;
    const o = t * hd;
    for (let i = 0; i < hd / 2; i++) {
      const a = t * inv[i];
      // float32 inputs, float32 angle and cos/sin: agreement to a few float32 ulps
      expect(y[o + i]).toBeCloseTo(x[o + i] * Math.cos(a) - x[o + i + hd / 2] * Math.sin(a), 5);
      expect(y[o + i + hd / 2]).toBeCloseTo(x[o + i + hd / 2] * Math.cos(a) + x[o + i] * Math.sin(a), 5);
    }
    // an interleaved rotation (pairs (2i, 2i+1)) would give a different first entry at position 1
    const interleaved0 = x[hd] * Math.cos(1) - x[hd + 1] * Math.sin(1);
    expect(Math.abs(y[hd] - interleaved0)).toBeGreaterThan(1e-3);
  });

  it('is the identity at position 0, keeps norms, and q.k depends only on the position difference', () => {
    const [B, T, H] = [2, 12, 3];
    const table = ropeTable(inv, T);
    const rng = new Rng(2);
    const x = randomArray(B * T * H * hd, rng);
    const y = ropeForward(x, table, B, T, H, hd);
    const W = H * hd;
    for (let b = 0; b < B; b++)
      expect(Array.from(y.subarray(b * T * W, b * T * W + W))).toEqual(
        Array.from(x.subarray(b * T * W, b * T * W + W)),
      );
    for (let r = 0; r < B * T * H; r++) {
      const n0 = Array.from(x.subarray(r * hd, (r + 1) * hd)).reduce((s, v) => s + v * v, 0);
      const n1 = Array.from(y.subarray(r * hd, (r + 1) * hd)).reduce((s, v) => s + v * v, 0);
      expect(Math.abs(n1 - n0)).toBeLessThan(1e-5 * n0);
    }
    // the same q at every position and the same k at every position (one row of B = 1, one head)
    const q = randomArray(hd, rng);
    const k = randomArray(hd, rng);
    const qs = new Float32Array(T * hd);
    const ks = new Float32Array(T * hd);
    for (let t = 0; t < T; t++) {
      qs.set(q, t * hd);
      ks.set(k, t * hd);
    }
    const rq = ropeForward(qs, table, 1, T, 1, hd);
    const rk = ropeForward(ks, table, 1, T, 1, hd);
    const dot = (m: number, n: number) => {
      let s = 0;
      for (let c = 0; c < hd; c++) s += rq[m * hd + c] * rk[n * hd + c];
      return s;
    };
    // every pair (m, n) against (m - n, 0) or (0, n - m): float32 angles at positions <= 11
    // and float32 products keep the dot within ~1e-5 of a |q||k| ~ 8
    for (let m = 0; m < T; m++)
      for (let n = 0; n < T; n++) {
        const ref = m >= n ? dot(m - n, 0) : dot(0, n - m);
        expect(Math.abs(dot(m, n) - ref)).toBeLessThan(1e-5);
      }
    // and it does depend on the difference: a shift by 1 changes it
    expect(Math.abs(dot(3, 0) - dot(2, 0))).toBeGreaterThan(1e-3);
  });

  it('backward is the inverse rotation and matches finite differences', () => {
    const [B, T, H] = [2, 5, 2];
    const table = ropeTable(inv, T);
    const rng = new Rng(3);
    const x = randomArray(B * T * H * hd, rng);
    const back = ropeBackward(ropeForward(x, table, B, T, H, hd), table, B, T, H, hd);
    expect(maxAbsDiff(back, x)).toBeLessThan(1e-5); // R^T R = I up to float32 rounding of cos/sin
    const w = randomArray(x.length, rng);
    const f = () => weightedSum(ropeForward(x, table, B, T, H, hd), w);
    expect(fdRelativeError(f, x, ropeBackward(Float32Array.from(w), table, B, T, H, hd))).toBeLessThan(FD_TOLERANCE);
  });

  it('rescales inv_freq by wavelength band with Llama 3 rope_scaling (Llama 3.2 1B settings)', () => {
    const scaling: Llama3RopeScaling = {
      type: 'llama3',
      factor: 32,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
    };
    const base = ropeInverseFrequencies(64, 500000);
    const scaled = ropeInverseFrequencies(64, 500000, scaling);
    let high = 0;
    let low = 0;
    let medium = 0;
    for (let i = 0; i < 32; i++) {
      const wavelen = (2 * Math.PI) / base[i];
      if (wavelen < 8192 / 4) {
        expect(scaled[i]).toBe(base[i]);
        high++;
      } else if (wavelen > 8192) {
        expect(scaled[i]).toBe(Math.fround(base[i] / 32));
        low++;
      } else {
        // between the two ends, written out once by hand: s = (8192 / wavelen - 1) / (4 - 1)
        const s = (8192 / wavelen - 1) / 3;
        expect(scaled[i]).toBe(Math.fround(((1 - s) * base[i]) / 32 + s * base[i]));
        expect(scaled[i]).toBeLessThan(base[i]);
        expect(scaled[i]).toBeGreaterThan(base[i] / 32);
        medium++;
      }
    }
    // wavelen_i = 2 pi 5e5^(i/32): below 2048 for i <= 14 (ln(2048 / 2 pi) / ln(5e5) * 32 = 14.1),
    // above 8192 for i >= 18 (17.5): 15 high, 14 low and 3 medium frequencies
    expect([high, low, medium]).toEqual([15, 14, 3]);
    // rescaled frequencies still decrease monotonically (no band edge jumps up)
    for (let i = 1; i < 32; i++) expect(scaled[i]).toBeLessThan(scaled[i - 1]);
    expect(() => ropeInverseFrequencies(64, 500000, { ...scaling, highFreqFactor: 1 })).toThrow(RopeError);
    expect(() => ropeInverseFrequencies(7, 10000)).toThrow(/head_dim must be a positive even integer/);
  });
});

describe('gqaAttention', () => {
  const [B, T, H, hd] = [2, 5, 4, 3];
  const D = H * hd;

  /** q, k, v [B*T, D] packed as GPT-2's fused qkv [B*T, 3D]. */
  function pack(q: Float32Array, k: Float32Array, v: Float32Array): Float32Array {
    const qkv = new Float32Array(B * T * 3 * D);
    for (let r = 0; r < B * T; r++) {
      qkv.set(q.subarray(r * D, (r + 1) * D), r * 3 * D);
      qkv.set(k.subarray(r * D, (r + 1) * D), r * 3 * D + D);
      qkv.set(v.subarray(r * D, (r + 1) * D), r * 3 * D + 2 * D);
    }
    return qkv;
  }

  /** kv [B*T, Hkv*hd] with each kv head repeated for its H/Hkv query heads (transformers' repeat_kv). */
  function repeatKv(kv: Float32Array, Hkv: number): Float32Array {
    const out = new Float32Array(B * T * D);
    const group = H / Hkv;
    for (let r = 0; r < B * T; r++)
      for (let h = 0; h < H; h++)
        out.set(
          kv.subarray(r * Hkv * hd + Math.floor(h / group) * hd, r * Hkv * hd + (Math.floor(h / group) + 1) * hd),
          r * D + h * hd,
        );
    return out;
  }

  // GPT-2's op accumulates its output in float32, this one in float64 rounded once: they agree
  // to float32 rounding of values of order 1 (a few 1e-7), checked with 1e-5 of headroom
  const SAME_MATH = 1e-5;

  it.each([4, 2, 1])(
    'with %i kv heads equals GPT-2 attention on repeated k and v, gradients summed per group',
    (Hkv) => {
      const rng = new Rng(40 + Hkv);
      const shape: GqaShape = { B, T, H, Hkv, headDim: hd };
      const q = randomArray(B * T * D, rng);
      const k = randomArray(B * T * Hkv * hd, rng);
      const v = randomArray(B * T * Hkv * hd, rng);
      const dy = randomArray(B * T * D, rng);
      const mine = gqaAttentionForward(q, k, v, shape);
      const gpt2 = causalAttentionForward(pack(q, repeatKv(k, Hkv), repeatKv(v, Hkv)), B, T, D, H);
      expect(maxAbsDiff(mine.y, gpt2.y)).toBeLessThan(SAME_MATH);
      const g = gqaAttentionBackward(mine.cache, dy, shape);
      const g2 = causalAttentionBackward(gpt2.cache, dy, B, T, D, H);
      const dqRef = new Float32Array(B * T * D);
      const dkRef = new Float32Array(k.length);
      const dvRef = new Float32Array(v.length);
      const group = H / Hkv;
      for (let r = 0; r < B * T; r++)
        for (let h = 0; h < H; h++)
          for (let c = 0; c < hd; c++) {
            dqRef[r * D + h * hd + c] = g2[r * 3 * D + h * hd + c];
            const kvIdx = r * Hkv * hd + Math.floor(h / group) * hd + c;
            dkRef[kvIdx] += g2[r * 3 * D + D + h * hd + c];
            dvRef[kvIdx] += g2[r * 3 * D + 2 * D + h * hd + c];
          }
      expect(maxAbsDiff(g.dq, dqRef)).toBeLessThan(SAME_MATH);
      expect(maxAbsDiff(g.dk, dkRef)).toBeLessThan(SAME_MATH);
      expect(maxAbsDiff(g.dv, dvRef)).toBeLessThan(SAME_MATH);
    },
  );

  it('backward matches finite differences for q, k and v (2 kv heads for 4 query heads)', () => {
    const rng = new Rng(50);
    const shape: GqaShape = { B, T, H, Hkv: 2, headDim: hd };
    const q = randomArray(B * T * D, rng);
    const k = randomArray(B * T * 2 * hd, rng);
    const v = randomArray(B * T * 2 * hd, rng);
    const w = randomArray(B * T * D, rng);
    const f = () => weightedSum(gqaAttentionForward(q, k, v, shape).y, w);
    const g = gqaAttentionBackward(gqaAttentionForward(q, k, v, shape).cache, Float32Array.from(w), shape);
    expect(fdRelativeError(f, q, g.dq)).toBeLessThan(FD_TOLERANCE);
    expect(fdRelativeError(f, k, g.dk)).toBeLessThan(FD_TOLERANCE);
    expect(fdRelativeError(f, v, g.dv)).toBeLessThan(FD_TOLERANCE);
  });

  it('is causal and safe for large scores; refuses head counts that do not divide', () => {
    const rng = new Rng(51);
    const shape: GqaShape = { B, T, H, Hkv: 2, headDim: hd };
    const q = randomArray(B * T * D, rng);
    const k = randomArray(B * T * 2 * hd, rng);
    const v = randomArray(B * T * 2 * hd, rng);
    const y1 = gqaAttentionForward(q, k, v, shape).y;
    const k2 = k.slice();
    const v2 = v.slice();
    for (let c = 0; c < 2 * hd; c++) {
      k2[3 * 2 * hd + c] += 1; // batch 0, position 3
      v2[3 * 2 * hd + c] += 1;
    }
    const y2 = gqaAttentionForward(q, k2, v2, shape).y;
    expect(maxAbsDiff(y1.subarray(0, 3 * D), y2.subarray(0, 3 * D))).toBe(0);
    expect(maxAbsDiff(y1.subarray(3 * D, 4 * D), y2.subarray(3 * D, 4 * D))).toBeGreaterThan(1e-3);
    expect(
      gqaAttentionForward(
        q.map((x) => x * 100),
        k.map((x) => x * 100),
        v,
        shape,
      ).y.every(Number.isFinite),
    ).toBe(true);
    expect(() => gqaAttentionForward(q, k, v, { ...shape, Hkv: 3 })).toThrow(RangeError);
  });
});
