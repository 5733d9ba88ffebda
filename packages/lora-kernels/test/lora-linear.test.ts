/**
 * LoRA linear forward (y, xa) and backward (dx, dA, dB) against ops/lora-linear.ts, every matmul
 * variant, on sizes that are not multiples of any tile; plus 'no adapter', the accumulate
 * options, and W stored [out, in] (nn.Linear, the LLaMA family: weightLayout 'out-in') with and
 * without a bias.
 */
import { describe, expect, it } from 'vitest';
import {
  Rng,
  loraLinearBackward as refBackward,
  loraLinearForward as refForward,
  type LoraLinearParams,
} from '@splitllm/model';
import type { GpuContext } from '../src/gpu';
import { MATMUL_VARIANTS, type MatmulVariant } from '../src/kernels/matmul';
import { loraLinearBackward, loraLinearForward, type LinearWeightLayout } from '../src/kernels/lora-linear';
import { maxRelErr, randn, testDevice } from './harness';

// Every output is a float32 sum of at most max(K, N, M) + r <= 100 products, compared with a
// float64-accumulating reference: ~sqrt(100) * 6e-8 = 6e-7 of the scale; 1e-5 is 10x margin.
const TOL = 1e-5;

interface Case {
  M: number;
  K: number;
  N: number;
  r: number;
}

function setup(c: Case, seed: number) {
  const rng = new Rng(seed);
  const p: LoraLinearParams = {
    W: randn(c.K * c.N, rng, 0.2),
    b: randn(c.N, rng, 0.1),
    K: c.K,
    N: c.N,
    lora:
      c.r > 0 ? { A: randn(c.K * c.r, rng, 0.2), B: randn(c.r * c.N, rng, 0.2), r: c.r, scale: 2 / c.r } : undefined,
  };
  const x = randn(c.M * c.K, rng);
  const dy = randn(c.M * c.N, rng);
  return { p, x, dy };
}

async function runGpu(
  gpu: GpuContext,
  c: Case,
  s: ReturnType<typeof setup>,
  variant: MatmulVariant | undefined,
  init?: { dx: Float32Array; dA: Float32Array; dB: Float32Array },
  lowRankVariant?: MatmulVariant,
  weightLayout?: LinearWeightLayout,
) {
  const { M, K, N, r } = c;
  const { p, x, dy } = s;
  // 'out-in': the same W uploaded transposed, [N, K]
  const W = weightLayout === 'out-in' ? p.W.map((_, i) => p.W[(i % K) * N + Math.floor(i / K)]) : p.W;
  const b = {
    x: gpu.storage(x),
    W: gpu.storage(W),
    b: p.b ? gpu.storage(p.b) : undefined,
    y: gpu.storage(M * N * 4),
    A: p.lora ? gpu.storage(p.lora.A) : undefined,
    B: p.lora ? gpu.storage(p.lora.B) : undefined,
    xa: r > 0 ? gpu.storage(M * r * 4) : undefined,
    dy: gpu.storage(dy),
    dx: gpu.storage(init ? init.dx : new Float32Array(M * K)),
    dA: r > 0 ? gpu.storage(init ? init.dA : new Float32Array(K * r)) : undefined,
    dB: r > 0 ? gpu.storage(init ? init.dB : new Float32Array(r * N)) : undefined,
  };
  const dims = { M, K, N, r, scale: p.lora?.scale };
  const accumulate = !!init;
  gpu.run([
    ...loraLinearForward(gpu, b, dims, { variant, lowRankVariant, weightLayout }),
    ...loraLinearBackward(gpu, b, dims, {
      variant,
      lowRankVariant,
      weightLayout,
      accumulateDx: accumulate,
      accumulateGrads: accumulate,
    }),
  ]);
  const out = {
    y: await gpu.readF32(b.y, M * N),
    xa: b.xa ? await gpu.readF32(b.xa, M * r) : undefined,
    dx: await gpu.readF32(b.dx, M * K),
    dA: b.dA ? await gpu.readF32(b.dA, K * r) : undefined,
    dB: b.dB ? await gpu.readF32(b.dB, r * N) : undefined,
  };
  for (const buf of Object.values(b)) buf?.destroy();
  return out;
}

const add = (a: Float32Array, b: Float32Array) => a.map((v, i) => v + b[i]);

describe('lora-linear kernels', () => {
  const errors: string[] = [];
  const C1: Case = { M: 13, K: 37, N: 29, r: 3 };
  const C2: Case = { M: 20, K: 48, N: 68, r: 8 }; // multiples of 4: the vec4 paths

  /** Every output of an adapted linear within TOL of the reference; the errors recorded under `label`. */
  function expectAdapted(
    label: string,
    got: Awaited<ReturnType<typeof runGpu>>,
    f: ReturnType<typeof refForward>,
    g: ReturnType<typeof refBackward>,
  ): void {
    const e = {
      y: maxRelErr(got.y, f.y),
      xa: maxRelErr(got.xa!, f.cache.xa!),
      dx: maxRelErr(got.dx, g.dx),
      dA: maxRelErr(got.dA!, g.dA!),
      dB: maxRelErr(got.dB!, g.dB!),
    };
    errors.push(
      `${label}: ` +
        Object.entries(e)
          .map(([k, v]) => `${k} ${v.toExponential(2)}`)
          .join(', '),
    );
    for (const [k, v] of Object.entries(e)) expect(v, `${label} ${k}`).toBeLessThan(TOL);
  }

  MATMUL_VARIANTS.forEach((variant, i) => {
    // the rank-r products run another variant than the full-size ones, so both settings are used
    const lowRank = MATMUL_VARIANTS[(i + 1) % MATMUL_VARIANTS.length];
    it(`forward and backward, ${variant} (rank-r products: ${lowRank})`, async () => {
      const gpu = await testDevice();
      for (const c of [C1, C2]) {
        const s = setup(c, 3 + c.M);
        const f = refForward(s.p, s.x, c.M);
        const g = refBackward(s.p, f.cache, s.dy, c.M);
        const got = await runGpu(gpu, c, s, variant, undefined, lowRank);
        expectAdapted(`${variant} ${c.M}x${c.K}x${c.N} r${c.r}`, got, f, g);
      }
    });
  });

  it('no adapter: plain linear', async () => {
    const gpu = await testDevice();
    const c: Case = { M: 9, K: 21, N: 17, r: 0 };
    const s = setup(c, 8);
    const f = refForward(s.p, s.x, c.M);
    const g = refBackward(s.p, f.cache, s.dy, c.M);
    const got = await runGpu(gpu, c, s, 'registers');
    const e = { y: maxRelErr(got.y, f.y), dx: maxRelErr(got.dx, g.dx) };
    errors.push(`no adapter ${c.M}x${c.K}x${c.N}: y ${e.y.toExponential(2)}, dx ${e.dx.toExponential(2)}`);
    expect(e.y).toBeLessThan(TOL);
    expect(e.dx).toBeLessThan(TOL);
  });

  it('accumulates into dx, dA, dB when asked', async () => {
    const gpu = await testDevice();
    const c = C1;
    const s = setup(c, 21);
    const f = refForward(s.p, s.x, c.M);
    const g = refBackward(s.p, f.cache, s.dy, c.M);
    const rng = new Rng(99);
    const init = { dx: randn(c.M * c.K, rng), dA: randn(c.K * c.r, rng), dB: randn(c.r * c.N, rng) };
    const got = await runGpu(gpu, c, s, undefined, init);
    const e = {
      dx: maxRelErr(got.dx, add(g.dx, init.dx)),
      dA: maxRelErr(got.dA!, add(g.dA!, init.dA)),
      dB: maxRelErr(got.dB!, add(g.dB!, init.dB)),
    };
    errors.push(
      `accumulate (default variant): ` +
        Object.entries(e)
          .map(([k, v]) => `${k} ${v.toExponential(2)}`)
          .join(', '),
    );
    for (const [k, v] of Object.entries(e)) expect(v, k).toBeLessThan(TOL);
  });

  it("W stored [out, in] ('out-in', nn.Linear), with and without a bias", async () => {
    const gpu = await testDevice();
    for (const [c, bias] of [
      [C1, true],
      [C2, false],
    ] as const) {
      const s = setup(c, 40 + c.M);
      if (!bias) s.p.b = undefined;
      const f = refForward(s.p, s.x, c.M);
      const g = refBackward(s.p, f.cache, s.dy, c.M);
      const got = await runGpu(gpu, c, s, 'registers', undefined, 'tiled', 'out-in');
      expectAdapted(`out-in ${c.M}x${c.K}x${c.N} r${c.r}${bias ? '' : ' no bias'}`, got, f, g);
    }
  });

  it('an adapter needs its scale and buffers', async () => {
    const gpu = await testDevice();
    const x = gpu.storage(16);
    expect(() => loraLinearForward(gpu, { x, W: x, y: gpu.storage(16) }, { M: 1, K: 1, N: 1, r: 1 })).toThrow(/scale/);
    expect(() => loraLinearForward(gpu, { x, W: x, y: gpu.storage(16) }, { M: 1, K: 1, N: 1, r: 1, scale: 1 })).toThrow(
      /A is required/,
    );
  });

  it('reports the errors', () => {
    console.log(`lora-linear max relative errors:\n  ${errors.join('\n  ')}`);
  });
});
