/** Every reference op: forward against a direct float64 formula, backward against finite differences. */
import { describe, expect, it } from 'vitest';
import { adamwInit, adamwStep } from '../src/ops/adamw';
import { causalAttentionBackward, causalAttentionForward } from '../src/ops/attention';
import { IGNORE_INDEX, softmaxCrossEntropyBackward, softmaxCrossEntropyForward } from '../src/ops/cross-entropy';
import { embeddingBackward, embeddingForward } from '../src/ops/embedding';
import { geluBackward, geluForward } from '../src/ops/gelu';
import { layerNormBackward, layerNormForward } from '../src/ops/layernorm';
import { loraLinearBackward, loraLinearForward, type LoraLinearParams } from '../src/ops/lora-linear';
import { linearBackward, linearForward, matmul, matmulAT, matmulBT } from '../src/ops/matmul';
import { Rng } from '../src/rng';
import { FD_TOLERANCE, fdRelativeError, randomArray, weightedSum } from './gradcheck';

/** Plain triple loop in float64: the definition of a matrix product. */
function naive(
  a: Float32Array,
  b: Float32Array,
  M: number,
  K: number,
  N: number,
  ta: boolean,
  tb: boolean,
): Float64Array {
  const o = new Float64Array(M * N);
  for (let i = 0; i < M; i++)
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += (ta ? a[k * M + i] : a[i * K + k]) * (tb ? b[j * K + k] : b[k * N + j]);
      o[i * N + j] = s;
    }
  return o;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe('matmul', () => {
  // sizes that are not multiples of the 4-row/4-column blocking, to exercise the remainders
  const shapes: Array<[number, number, number]> = [
    [1, 1, 1],
    [7, 5, 9],
    [13, 33, 6],
    [4, 8, 4],
  ];
  it.each(shapes)('all three layouts equal the float64 definition to float32 rounding at %i x %i x %i', (M, K, N) => {
    const rng = new Rng(M * 100 + K * 10 + N);
    const a = randomArray(M * K, rng);
    const b = randomArray(K * N, rng);
    const bias = randomArray(N, rng);
    const ref = naive(a, b, M, K, N, false, false);
    const withBias = ref.map((v, i) => v + bias[i % N]);
    // results are rounded once to float32 from a float64 sum: |err| <= 2^-24 |y| (+ tiny)
    const tol = 1e-6 * Math.max(1, ...Array.from(ref, Math.abs));
    expect(maxAbsDiff(matmul(a, b, M, K, N), ref)).toBeLessThan(tol);
    expect(maxAbsDiff(matmul(a, b, M, K, N, bias), withBias)).toBeLessThan(tol);
    const bt = randomArray(N * K, rng);
    expect(maxAbsDiff(matmulBT(a, bt, M, K, N), naive(a, bt, M, K, N, false, true))).toBeLessThan(tol);
    const at = randomArray(K * M, rng);
    expect(maxAbsDiff(matmulAT(at, b, K, M, N), naive(at, b, M, K, N, true, false))).toBeLessThan(tol);
  });

  it('linear backward matches finite differences for x, W and b', () => {
    const rng = new Rng(3);
    const [M, K, N] = [5, 6, 7];
    const x = randomArray(M * K, rng);
    const W = randomArray(K * N, rng);
    const b = randomArray(N, rng);
    const w = randomArray(M * N, rng);
    const f = () => weightedSum(linearForward(x, W, b, M, K, N), w);
    const g = linearBackward(Float32Array.from(w), x, W, M, K, N, true);
    expect(fdRelativeError(f, x, g.dx)).toBeLessThan(FD_TOLERANCE);
    expect(fdRelativeError(f, W, g.dW!)).toBeLessThan(FD_TOLERANCE);
    expect(fdRelativeError(f, b, g.db!)).toBeLessThan(FD_TOLERANCE);
  });
});

describe('loraLinear', () => {
  const rng = new Rng(11);
  const [M, K, N, r] = [6, 10, 7, 3];
  const p: LoraLinearParams = {
    W: randomArray(K * N, rng, 0.5),
    b: randomArray(N, rng),
    K,
    N,
    lora: { A: randomArray(K * r, rng), B: randomArray(r * N, rng), r, scale: 16 / 3 },
  };
  const x = randomArray(M * K, rng);
  const w = randomArray(M * N, rng);

  it('forward is x W + b + s (x A) B', () => {
    const { y } = loraLinearForward(p, x, M);
    const xw = naive(x, p.W, M, K, N, false, false);
    const xab = naive(Float32Array.from(naive(x, p.lora!.A, M, K, r, false, false)), p.lora!.B, M, r, N, false, false);
    const ref = xw.map((v, i) => v + p.b![i % N] + p.lora!.scale * xab[i]);
    expect(maxAbsDiff(y, ref)).toBeLessThan(1e-5);
  });

  it('backward matches finite differences for x, A, B and (pre-training) W', () => {
    const f = () => weightedSum(loraLinearForward(p, x, M).y, w);
    const { cache } = loraLinearForward(p, x, M);
    const g = loraLinearBackward(p, cache, Float32Array.from(w), M, true);
    expect(fdRelativeError(f, x, g.dx)).toBeLessThan(FD_TOLERANCE);
    expect(fdRelativeError(f, p.lora!.A, g.dA!)).toBeLessThan(FD_TOLERANCE);
    expect(fdRelativeError(f, p.lora!.B, g.dB!)).toBeLessThan(FD_TOLERANCE);
    expect(fdRelativeError(f, p.W, g.dW!)).toBeLessThan(FD_TOLERANCE);
  });

  it('does not compute a frozen-weight gradient unless asked', () => {
    const { cache } = loraLinearForward(p, x, M);
    const g = loraLinearBackward(p, cache, Float32Array.from(w), M);
    expect(g.dW).toBeUndefined();
    expect(g.dA).toBeDefined();
  });
});

describe('layerNorm', () => {
  it('forward normalizes each row and backward matches finite differences', () => {
    const rng = new Rng(5);
    const [M, D] = [4, 9];
    const x = randomArray(M * D, rng, 2);
    const gamma = randomArray(D, rng);
    const beta = randomArray(D, rng);
    const { y } = layerNormForward(x, new Float32Array(D).fill(1), new Float32Array(D), M, D, 1e-5);
    for (let i = 0; i < M; i++) {
      const row = Array.from(y.subarray(i * D, (i + 1) * D));
      const mean = row.reduce((s, v) => s + v, 0) / D;
      const variance = row.reduce((s, v) => s + (v - mean) ** 2, 0) / D;
      expect(Math.abs(mean)).toBeLessThan(1e-6);
      expect(Math.abs(variance - 1)).toBeLessThan(1e-4); // eps = 1e-5 shrinks it slightly
    }
    const w = randomArray(M * D, rng);
    const f = () => weightedSum(layerNormForward(x, gamma, beta, M, D, 1e-5).y, w);
    const { cache } = layerNormForward(x, gamma, beta, M, D, 1e-5);
    const g = layerNormBackward(cache, gamma, Float32Array.from(w), M, D, true);
    expect(fdRelativeError(f, x, g.dx)).toBeLessThan(FD_TOLERANCE);
    expect(fdRelativeError(f, gamma, g.dgamma!)).toBeLessThan(FD_TOLERANCE);
    expect(fdRelativeError(f, beta, g.dbeta!)).toBeLessThan(FD_TOLERANCE);
  });
});

describe('gelu (tanh)', () => {
  it('matches known values and finite differences', () => {
    // 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3))) evaluated independently
    const ref = (v: number) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));
    const xs = Float32Array.from([-3, -1, -0.5, 0, 0.5, 1, 3]);
    const y = geluForward(xs);
    for (const [i, v] of xs.entries()) expect(y[i]).toBeCloseTo(ref(v), 6);
    expect(y[5]).toBeCloseTo(0.841192, 5); // gelu_new(1)
    const rng = new Rng(9);
    const x = randomArray(40, rng, 2);
    const w = randomArray(40, rng);
    const f = () => weightedSum(geluForward(x), w);
    expect(fdRelativeError(f, x, geluBackward(x, Float32Array.from(w)))).toBeLessThan(FD_TOLERANCE);
  });
});

describe('causalAttention', () => {
  const [B, T, D, H] = [2, 5, 8, 2];
  const rng = new Rng(21);
  const qkv = randomArray(B * T * 3 * D, rng);

  it('is causal: changing a later position does not change earlier outputs', () => {
    const y1 = causalAttentionForward(qkv, B, T, D, H).y;
    const changed = qkv.slice();
    for (let c = 0; c < 3 * D; c++) changed[(0 * T + 4) * 3 * D + c] += 1; // batch 0, position 4
    const y2 = causalAttentionForward(changed, B, T, D, H).y;
    expect(maxAbsDiff(y1.subarray(0, 4 * D), y2.subarray(0, 4 * D))).toBe(0);
    expect(maxAbsDiff(y1.subarray(4 * D, 5 * D), y2.subarray(4 * D, 5 * D))).toBeGreaterThan(1e-3);
    // the first position attends only to itself: output = its own v
    for (let h = 0; h < H; h++)
      for (let c = 0; c < D / H; c++) expect(y1[h * (D / H) + c]).toBeCloseTo(qkv[2 * D + h * (D / H) + c], 6);
  });

  it('is numerically safe for large scores', () => {
    const big = qkv.map((v) => v * 100);
    const { y } = causalAttentionForward(big, B, T, D, H);
    expect(y.every(Number.isFinite)).toBe(true);
  });

  it('backward matches finite differences for q, k and v', () => {
    const w = randomArray(B * T * D, rng);
    const f = () => weightedSum(causalAttentionForward(qkv, B, T, D, H).y, w);
    const { cache } = causalAttentionForward(qkv, B, T, D, H);
    const d = causalAttentionBackward(cache, Float32Array.from(w), B, T, D, H);
    expect(fdRelativeError(f, qkv, d)).toBeLessThan(FD_TOLERANCE);
  });
});

describe('embedding', () => {
  it('adds token and position rows; backward scatter-adds (repeated ids accumulate)', () => {
    const [B, T, D, V, P] = [2, 3, 4, 6, 5];
    const rng = new Rng(2);
    const wte = randomArray(V * D, rng);
    const wpe = randomArray(P * D, rng);
    const ids = Int32Array.from([1, 5, 1, 0, 1, 2]);
    const h = embeddingForward(ids, wte, wpe, B, T, D, V);
    expect(h[1 * D + 2]).toBeCloseTo(wte[5 * D + 2] + wpe[1 * D + 2], 6);
    const w = randomArray(B * T * D, rng);
    const f = () => weightedSum(embeddingForward(ids, wte, wpe, B, T, D, V), w);
    const g = embeddingBackward(ids, Float32Array.from(w), B, T, D, V, P);
    expect(fdRelativeError(f, wte, g.dwte)).toBeLessThan(FD_TOLERANCE);
    expect(fdRelativeError(f, wpe, g.dwpe)).toBeLessThan(FD_TOLERANCE);
    expect(() => embeddingForward(Int32Array.from([0, 1, 6, 0, 0, 0]), wte, wpe, B, T, D, V)).toThrow(
      /outside the vocabulary/,
    );
  });
});

describe('softmaxCrossEntropy', () => {
  const [N, V] = [5, 7];
  const rng = new Rng(4);
  const logits = randomArray(N * V, rng, 2);
  const targets = Int32Array.from([3, IGNORE_INDEX, 0, 6, IGNORE_INDEX]);

  it('is the mean of -log softmax over counted rows only', () => {
    const r = softmaxCrossEntropyForward(logits, targets, N, V);
    let total = 0;
    for (const i of [0, 2, 3]) {
      const row = Array.from(logits.subarray(i * V, (i + 1) * V));
      const lse = Math.log(row.reduce((s, v) => s + Math.exp(v), 0));
      total += lse - row[targets[i]];
    }
    expect(r.count).toBe(3);
    expect(r.loss).toBeCloseTo(total / 3, 6);
    // large logits do not overflow
    expect(
      Number.isFinite(
        softmaxCrossEntropyForward(
          logits.map((v) => v * 1000),
          targets,
          N,
          V,
        ).loss,
      ),
    ).toBe(true);
  });

  it('backward matches finite differences and is zero on ignored rows', () => {
    const f = () => softmaxCrossEntropyForward(logits, targets, N, V).loss;
    const d = softmaxCrossEntropyBackward(softmaxCrossEntropyForward(logits, targets, N, V).cache, N, V);
    expect(fdRelativeError(f, logits, d)).toBeLessThan(FD_TOLERANCE);
    expect(Array.from(d.subarray(V, 2 * V)).every((v) => v === 0)).toBe(true);
  });
});

describe('adamw', () => {
  it('follows torch.optim.AdamW for two steps (computed by hand in float64)', () => {
    const o = { lr: 0.1, beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.1 };
    const p = Float32Array.from([1, -2]);
    const s = adamwInit(2);
    const g1 = Float32Array.from([0.5, -1]);
    const g2 = Float32Array.from([-0.25, 3]);
    adamwStep(p, g1, s, 1, o);
    adamwStep(p, g2, s, 2, o);
    const expected = [1, -2].map((p0, i) => {
      let q = p0;
      let m = 0;
      let v = 0;
      [g1[i], g2[i]].forEach((g, k) => {
        const t = k + 1;
        q -= o.lr * o.weightDecay * q;
        m = o.beta1 * m + (1 - o.beta1) * g;
        v = o.beta2 * v + (1 - o.beta2) * g * g;
        q -= (o.lr * (m / (1 - o.beta1 ** t))) / (Math.sqrt(v / (1 - o.beta2 ** t)) + o.eps);
      });
      return q;
    });
    expect(p[0]).toBeCloseTo(expected[0], 6);
    expect(p[1]).toBeCloseTo(expected[1], 6);
    // the first step moves every coordinate by about lr (Adam's normalized step)
    const q = Float32Array.from([0, 0]);
    adamwStep(q, Float32Array.from([1e-3, -5]), adamwInit(2), 1, { ...o, weightDecay: 0 });
    expect(q[0]).toBeCloseTo(-0.1, 5);
    expect(q[1]).toBeCloseTo(0.1, 5);
  });
});
