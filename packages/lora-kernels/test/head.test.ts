/**
 * The head on the device (kernels/head.ts) against the reference: the fused cross-entropy kernel
 * against softmaxCrossEntropyForward / Backward, the chunk rule, and the engine's headStep /
 * headLogits against headLossStep / headLogits (packages/model/src/model.ts) at the shipped
 * model's shapes (V = 1024, D = 128) and on a random model whose V = 301 is no multiple of any
 * tile, in one chunk and in several (a forced small chunk, so chunk boundaries fall inside rows'
 * sequences and one chunk spans two sequences), with ignored targets, and with every target
 * ignored (count 0: the reference defines loss 0 and all-zero gradients).
 *
 * Tolerances (max |got - want| / max |want| per tensor; loss relative):
 *  - loss: 1e-5. Logits are float32 dot products over D <= 128 on both sides (the reference's
 *    matmulBT accumulates in float32 too, in another order), ~sqrt(D) * 6e-8 of their scale;
 *    the kernel's log-sum-exp is float32 over V terms (the reference's float64): a few ulps of
 *    lse ~ 7. The per-row terms are summed in float64 on both sides. Measured <= 3e-8.
 *  - dlogits of the kernel alone: 1e-5: exp(l - max) / sum in float32 against float64, a few
 *    ulps of the largest probability / count, at any logit scale (the kernel never forms
 *    exp(l - lse) with a float32 lse). Measured <= 5e-7.
 *  - dL/dhL: 1e-4, the bound of the engine test's LoRA gradients: dy = dlogits wte sums V = 1024
 *    products in float32 (the reference in float64), then the layer-norm backward's
 *    cancellations (g - mean(g) - xhat mean(g xhat)). Measured <= 1.3e-6.
 *  - logits: 1e-5, the matmul kernels' bound (float32 sums of D products).
 */
import {
  headLogits as refHeadLogits,
  headLossStep,
  IGNORE_INDEX,
  Rng,
  softmaxCrossEntropyBackward,
  softmaxCrossEntropyForward,
  type AdamWOptions,
  DEFAULT_ADAMW,
  type Gpt2Config,
  type Gpt2Model,
  type LoraConfig,
} from '@splitllm/model';
import { loadGpt2Dir } from '@splitllm/model/node';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { SOFTWARE_ADAPTER_VARIANTS, UserSegmentEngine, type KernelVariants } from '../src/engine';
import { GpuError } from '../src/gpu';
import {
  budgetChunkRows,
  CROSS_ENTROPY_VARIANTS,
  createCrossEntropyScale,
  HEAD_LOGITS_BUDGET_BYTES,
  headChunkRows,
  setCrossEntropyCount,
  softmaxCrossEntropyForwardBackward,
} from '../src/kernels/head';
import { GPU_DEFAULT_VARIANTS } from '../src/variants';
import { splitKSlices } from '../src/kernels/matmul';
import { adapterWithRandomB, maxRelErr, randn, scaledRandomModel, testDevice } from './harness';

const TOL_LOSS = 1e-5;
const TOL_DLOGITS = 1e-5;
const TOL_DH = 1e-4;
const TOL_LOGITS = 1e-5;

const shipped: Gpt2Model = loadGpt2Dir(fileURLToPath(new URL('../../assets/models/moby-tiny', import.meta.url)));

const randomConfig: Gpt2Config = {
  vocabSize: 301,
  nPositions: 40,
  nEmbd: 48,
  nLayer: 2,
  nHead: 3,
  nInner: 100,
  layerNormEpsilon: 1e-5,
  bosTokenId: 300,
  eosTokenId: 300,
};
const randomModel = scaledRandomModel(randomConfig, 7);

const lora: LoraConfig = { r: 4, alpha: 8, targets: ['attn.c_attn', 'mlp.c_fc'] };
const adamw: AdamWOptions = { ...DEFAULT_ADAMW, lr: 5e-3 };

/** Targets for B rows of T: random ids, the last third of the second row ignored (right padding). */
function targetsOf(V: number, B: number, T: number, rng: Rng): Int32Array {
  const t = new Int32Array(B * T);
  for (let b = 0; b < B; b++)
    for (let i = 0; i < T; i++) t[b * T + i] = b === 1 && i >= Math.floor((2 * T) / 3) ? IGNORE_INDEX : rng.int(V);
  return t;
}

/** Hidden states with a different scale and offset per row, as a last block's output has. */
function hiddenOf(M: number, D: number, rng: Rng): Float32Array {
  const h = randn(M * D, rng, 1);
  for (let r = 0; r < M; r++) {
    const s = 0.5 + 3 * rng.uniform();
    const o = rng.normal();
    for (let j = 0; j < D; j++) h[r * D + j] = h[r * D + j] * s + o;
  }
  return h;
}

describe('fused cross-entropy kernel', () => {
  // [rows, V, logit scale, ignored rows]: one column; not a multiple of 4, 64 or 128 (with a
  // logit scale of 40, so exp without the max subtracted would overflow); every row ignored.
  const cases: [number, number, number, number[]][] = [
    [3, 1, 1, [1]],
    [9, 301, 40, [0, 4, 5]],
    [5, 1000, 3, [2]],
    [4, 130, 1, [0, 1, 2, 3]],
  ];
  for (const variant of CROSS_ENTROPY_VARIANTS) {
    for (const [rows, V, scale, ignored] of cases) {
      it(`${variant}: rows=${rows} V=${V} scale=${scale} ignored=${ignored.length}`, async () => {
        const gpu = await testDevice();
        const rng = new Rng(rows * 31 + V);
        const logits = randn(rows * V, rng, scale);
        const targets = new Int32Array(rows);
        for (let i = 0; i < rows; i++) targets[i] = ignored.includes(i) ? IGNORE_INDEX : rng.int(V);
        const ref = softmaxCrossEntropyForward(logits, targets, rows, V);
        const refD = softmaxCrossEntropyBackward(ref.cache, rows, V);

        const bl = gpu.storage(logits);
        const bt = gpu.storage(targets);
        const bloss = gpu.storage(rows * 4);
        const s = createCrossEntropyScale(gpu);
        setCrossEntropyCount(gpu, s, ref.count);
        gpu.run(
          softmaxCrossEntropyForwardBackward(
            gpu,
            { logits: bl, targets: bt, loss: bloss, scale: s },
            { rows, V },
            { variant },
          ),
        );
        const [d, terms] = await Promise.all([gpu.readF32(bl, rows * V), gpu.readF32(bloss, rows)]);
        let total = 0;
        for (let i = 0; i < rows; i++) {
          if (targets[i] === IGNORE_INDEX) expect(terms[i], `loss term of ignored row ${i}`).toBe(0);
          else total += terms[i];
        }
        const loss = ref.count ? total / ref.count : 0;
        if (ref.count === 0) {
          expect(loss).toBe(0);
          expect(d.every((v) => v === 0)).toBe(true);
        } else {
          // V = 1: the loss is exactly 0 (log 1) and so are dlogits: judged against 1 instead
          const errs = { loss: Math.abs(loss - ref.loss) / Math.max(ref.loss, 1), dlogits: maxRelErr(d, refD) };
          if (V === 1) errs.dlogits = Math.max(...d.map(Math.abs));
          console.log(`cross-entropy ${variant} rows=${rows} V=${V}: loss ${errs.loss.toExponential(1)}, \
dlogits ${errs.dlogits.toExponential(1)}`);
          expect(errs.loss, 'loss').toBeLessThan(TOL_LOSS);
          expect(errs.dlogits, 'dlogits').toBeLessThan(TOL_DLOGITS);
        }
      });
    }
  }
});

describe('head chunk rule', () => {
  it('fills the logits budget in whole 64-row tiles, within the binding limit, rows and cap', async () => {
    const a = (await testDevice()).adapter;
    const big = { ...a, maxStorageBufferBindingSize: 2 ** 30 };
    expect(headChunkRows(big, 100_000, 1024)).toBe(HEAD_LOGITS_BUDGET_BYTES / 4096); // 8192, a whole number of tiles
    expect(headChunkRows(big, 58, 1024)).toBe(58); // a whole batch in one chunk
    expect(headChunkRows(big, 4096, 50257)).toBe(128); // 166 rows fit the budget: 2 tiles
    expect(headChunkRows(big, 58, 1024, 5)).toBe(5);
    // the binding limit under the budget: 100000 / 4096 = 24 rows (under one tile: not rounded)
    expect(headChunkRows({ ...a, maxStorageBufferBindingSize: 100_000 }, 4096, 1024)).toBe(24);
    const err = (() => {
      try {
        headChunkRows({ ...a, maxStorageBufferBindingSize: 4000 }, 10, 1024);
      } catch (e) {
        return e as GpuError;
      }
    })();
    expect(err).toBeInstanceOf(GpuError);
    expect(err?.code).toBe('DOES_NOT_FIT');
    expect(err?.message).toMatch(/one row of 1024 logits needs 4096 bytes, over .* maxStorageBufferBindingSize 4000/);
    expect(() => headChunkRows(big, 10, 1024, 0)).toThrow(/chunk rows must be a positive integer/);
  });

  it('budgetChunkRows is the rule on an adapter whose binding limit is over the budget', async () => {
    const big = { ...(await testDevice()).adapter, maxStorageBufferBindingSize: 2 ** 30 };
    // the size estimate and the variant timing's head products use it before any adapter is at hand
    for (const [rows, V] of [
      [512, 50257],
      [100_000, 1024],
      [58, 1024],
      [4096, 49152],
      [3, 2_000_000],
    ])
      expect(budgetChunkRows(rows, V), `${rows} rows, V ${V}`).toBe(headChunkRows(big, rows, V));
    expect(budgetChunkRows(512, 50257)).toBe(128);
  });
});

interface EngineCase {
  name: string;
  model: Gpt2Model;
  B: number;
  T: number;
  chunkRows?: number;
  variants: KernelVariants;
  /** chunks expected: [full chunks, rows of the partial last one] */
  chunks: [number, number];
}

const engineCases: EngineCase[] = [
  {
    name: 'shipped model (V=1024, D=128), one chunk, GPU-tuned kernels',
    model: shipped,
    B: 2,
    T: 29,
    variants: GPU_DEFAULT_VARIANTS,
    chunks: [1, 0],
  },
  {
    // chunks of 5 over 2 x 29 rows: 11 full + 3; rows 25..29 span the two sequences
    name: 'shipped model, forced chunks of 5, software-tuned kernels',
    model: shipped,
    B: 2,
    T: 29,
    chunkRows: 5,
    variants: SOFTWARE_ADAPTER_VARIANTS,
    chunks: [11, 3],
  },
  {
    name: 'shipped model, forced chunks of 5, GPU-tuned kernels',
    model: shipped,
    B: 2,
    T: 29,
    chunkRows: 5,
    variants: GPU_DEFAULT_VARIANTS,
    chunks: [11, 3],
  },
  {
    name: 'random model (V=301, D=48), chunks of 7, GPU-tuned kernels',
    model: randomModel,
    B: 3,
    T: 11,
    chunkRows: 7,
    variants: GPU_DEFAULT_VARIANTS,
    chunks: [4, 5],
  },
  {
    // dy = dlogits wte in 4 slices of V = 1024 (256 each), summed by the reduce pass
    name: 'shipped model, forced chunks of 5, GPU-tuned kernels, head split-K 4',
    model: shipped,
    B: 2,
    T: 29,
    chunkRows: 5,
    variants: { ...GPU_DEFAULT_VARIANTS, headSplitK: 4 },
    chunks: [11, 3],
  },
  {
    // V = 301 in slices of 48 (8 asked for, 7 run: the last one 13 long); blocked8x8 this time
    name: 'random model (V=301, D=48), chunks of 7, blocked8x8, head split-K 8',
    model: randomModel,
    B: 3,
    T: 11,
    chunkRows: 7,
    variants: { ...GPU_DEFAULT_VARIANTS, matmul: 'blocked8x8', headSplitK: 8 },
    chunks: [4, 5],
  },
  {
    name: 'random model (V=301, D=48), chunks of 7, software-tuned kernels',
    model: randomModel,
    B: 3,
    T: 11,
    chunkRows: 7,
    variants: SOFTWARE_ADAPTER_VARIANTS,
    chunks: [4, 5],
  },
];

describe('UserSegmentEngine head against headLossStep / headLogits', () => {
  for (const c of engineCases) {
    it(c.name, async () => {
      const gpu = await testDevice();
      const cfg = c.model.config;
      const { B, T } = c;
      const M = B * T;
      const engine = await UserSegmentEngine.create(gpu, c.model, adapterWithRandomB(cfg, lora, 3), {
        k: 1,
        lora,
        batch: B,
        seq: T,
        adamw,
        variants: c.variants,
        headChunkRows: c.chunkRows,
      });
      try {
        expect(Math.floor(M / engine.headChunkRows)).toBe(c.chunks[0]);
        expect(M % engine.headChunkRows).toBe(c.chunks[1]);
        // split-K: dy's product runs as that many dispatch layers, then the reduce; else neither
        const keys = engine.headChunkDispatches().map((d) => gpu.keyOf(d.pipeline));
        const split = c.variants.headSplitK ?? 1;
        expect(keys.includes('matmul-splitk-reduce'), 'the split-K reduce').toBe(split > 1);
        if (split > 1) {
          const sliced = engine.headChunkDispatches()[keys.indexOf('matmul-splitk-reduce') - 1];
          expect(sliced.workgroups[2]).toBe(splitKSlices(cfg.vocabSize, split).slices);
        }
        const rng = new Rng(M + cfg.vocabSize);
        for (let trial = 0; trial < 2; trial++) {
          const hL = hiddenOf(M, cfg.nEmbd, rng);
          const targets = targetsOf(cfg.vocabSize, B, T, rng);
          const want = headLossStep(c.model, hL, targets, B, T);
          const got = await engine.headStep(hL, targets);
          expect(got.count).toBe(want.count);
          const errs = { loss: Math.abs(got.loss - want.loss) / want.loss, dh: maxRelErr(got.dh, want.dh) };
          console.log(
            `head ${c.name} trial ${trial}: loss ${errs.loss.toExponential(1)}, dh ${errs.dh.toExponential(1)}`,
          );
          expect(errs.loss, 'loss').toBeLessThan(TOL_LOSS);
          expect(errs.dh, 'dL/dhL').toBeLessThan(TOL_DH);
        }

        // every target ignored: the reference's count 0 gives loss 0 and dL/dhL = 0
        const hL = hiddenOf(M, cfg.nEmbd, rng);
        const none = new Int32Array(M).fill(IGNORE_INDEX);
        const want = headLossStep(c.model, hL, none, B, T);
        expect(want).toMatchObject({ loss: 0, count: 0 });
        const got = await engine.headStep(hL, none);
        expect(got.count).toBe(0);
        expect(got.loss).toBe(0);
        expect(got.dh.every((v) => v === 0)).toBe(true);

        for (let i = 0; i < 3; i++) {
          const h = hiddenOf(1, cfg.nEmbd, rng);
          const err = maxRelErr(await engine.headLogits(h), refHeadLogits(c.model, h));
          expect(err, 'logits').toBeLessThan(TOL_LOGITS);
        }
      } finally {
        engine.destroy();
      }
    });
  }
});

describe('UserSegmentEngine head: the training step around it, and bad input', () => {
  it('a head step between forward and backward leaves the LoRA gradients as they were', async () => {
    const gpu = await testDevice();
    const cfg = shipped.config;
    const B = 2;
    const T = 16;
    const engine = await UserSegmentEngine.create(gpu, shipped, adapterWithRandomB(cfg, lora, 5), {
      k: 1,
      lora,
      batch: B,
      seq: T,
      adamw,
      variants: SOFTWARE_ADAPTER_VARIANTS,
      headChunkRows: 6,
    });
    try {
      const rng = new Rng(9);
      const ids = new Int32Array(B * T).map(() => rng.int(cfg.vocabSize));
      const dh1 = randn(B * T * cfg.nEmbd, rng, 0.01);
      await engine.forward(ids);
      engine.backward(dh1);
      const plain = await engine.readGrads();
      await engine.forward(ids);
      await engine.headStep(hiddenOf(B * T, cfg.nEmbd, rng), targetsOf(cfg.vocabSize, B, T, rng));
      await engine.headLogits(hiddenOf(1, cfg.nEmbd, rng));
      engine.backward(dh1);
      const around = await engine.readGrads();
      for (const [path, g] of plain) {
        expect(around.get(path)!.A, `${path} dA`).toEqual(g.A);
        expect(around.get(path)!.B, `${path} dB`).toEqual(g.B);
      }

      const hL = new Float32Array(B * T * cfg.nEmbd);
      const targets = new Int32Array(B * T);
      await expect(engine.headStep(hL.subarray(1), targets)).rejects.toThrow(/hL has 4095 values, expected 4096/);
      await expect(engine.headStep(hL, targets.subarray(1))).rejects.toThrow(/31 targets, expected 32/);
      targets[7] = cfg.vocabSize;
      await expect(engine.headStep(hL, targets)).rejects.toThrow(/target 1024 at row 7 is outside \[0, 1024\)/);
      targets[7] = 0;
      hL[5] = Number.NaN;
      await expect(engine.headStep(hL, targets)).rejects.toThrow(/non-finite value at 5/);
      await expect(engine.headLogits(new Float32Array(127))).rejects.toThrow(/h has 127 values, expected 128/);
    } finally {
      engine.destroy();
    }
  });
});
