/**
 * The user-segment engine against the reference: a whole split step (user on the GPU, edge and
 * cloud in the TypeScript reference) on the shipped model and on a random GPT-2-shaped model.
 *
 * Tolerances (max |got - want| / max |want| per tensor):
 *  - h1 and the loss of the reference continuation: 1e-5. Every op is float32 on both sides;
 *    the reference accumulates dot products in float64, the kernels in float32, which leaves
 *    ~sqrt(K) * 6e-8 per matmul (K <= 512 here: ~1.4e-6) and a few such layers in a chain.
 *  - LoRA gradients: 1e-4, as for the ONNX graphs: the backward chains more products and
 *    cancellations (layer-norm and softmax backward) than the forward.
 *  - parameters after AdamW: against the reference AdamW applied to the engine's own
 *    gradients, 1e-6 of the parameter scale. (Against the reference gradients, AdamW's first
 *    step moves every element by about lr * sign(g), so an element whose gradient is ~0 on both
 *    sides may step either way: that compares nothing about the kernels.)
 *  - three chained steps: the loss curve within 1e-4 relative of the reference's.
 */
import {
  adamwInit,
  adamwStep,
  DEFAULT_ADAMW,
  initLoraAdapter,
  LORA_TARGETS,
  userSegmentBackward,
  userSegmentForward,
  type AdamWOptions,
  type Gpt2Config,
  type Gpt2Model,
  type LoraAdapter,
  type LoraConfig,
  type SplitPlan,
} from '@splitllm/model';
import { loadGpt2Dir } from '@splitllm/model/node';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { GpuContext, GpuError } from '../src/gpu';
import { SOFTWARE_ADAPTER_VARIANTS, UserSegmentEngine, type KernelVariants } from '../src/engine';
import {
  chooseKernelVariants,
  engineMatmulShapes,
  GPU_DEFAULT_VARIANTS,
  headSplitKCandidates,
  isSoftwareAdapter,
} from '../src/variants';
import { MATMUL_VARIANTS, SPLIT_K_VARIANTS, timeSplitK } from '../src/kernels/matmul';
import {
  adapterWithRandomB,
  batchOf,
  continuation,
  expectEngineContract,
  maxRelErr,
  scaledRandomModel,
  testDevice,
} from './harness';

const shipped: Gpt2Model = loadGpt2Dir(fileURLToPath(new URL('../../assets/models/moby-tiny', import.meta.url)));

const randomConfig: Gpt2Config = {
  vocabSize: 301,
  nPositions: 40,
  nEmbd: 48,
  nLayer: 4,
  nHead: 3,
  nInner: 100,
  layerNormEpsilon: 1e-5,
  bosTokenId: 300,
  eosTokenId: 300,
};

const randomModel = () => scaledRandomModel(randomConfig, 3);
const adapterFor = adapterWithRandomB;

function cloneAdapter(a: LoraAdapter): LoraAdapter {
  const layers: LoraAdapter['layers'] = new Map();
  for (const [k, p] of a.layers)
    layers.set(k, {
      A: { shape: [...p.A.shape], data: p.A.data.slice() },
      B: { shape: [...p.B.shape], data: p.B.data.slice() },
    });
  return { config: { ...a.config }, layers };
}

const adamw: AdamWOptions = { ...DEFAULT_ADAMW, lr: 5e-3, weightDecay: 0.01 };

interface Case {
  name: string;
  model: Gpt2Model;
  lora: LoraConfig;
  plan: SplitPlan;
  T: number;
  variants?: KernelVariants;
}

const cases: Case[] = [
  {
    name: 'shipped model, k=1, attention pair, default (GPU-tuned) kernels',
    model: shipped,
    lora: { r: 8, alpha: 16, targets: ['attn.c_attn', 'attn.c_proj'] },
    plan: { k: 1, m: 3 },
    T: 37,
  },
  {
    name: 'shipped model, k=2, all four targets, software-tuned kernels',
    model: shipped,
    lora: { r: 4, alpha: 8, targets: [...LORA_TARGETS] },
    plan: { k: 2, m: 3 },
    T: 19,
    variants: SOFTWARE_ADAPTER_VARIANTS,
  },
  {
    name: 'random GPT-2-shaped model (48 wide, 3 heads), k=2, mlp.c_fc only',
    model: randomModel(),
    lora: { r: 3, alpha: 6, targets: ['mlp.c_fc'] },
    plan: { k: 2, m: 3 },
    T: 23,
  },
];

describe('UserSegmentEngine: one split step against the reference', () => {
  for (const c of cases) {
    it(c.name, async () => {
      const gpu = await testDevice();
      const adapter = adapterFor(c.model.config, c.lora, 10);
      const batch = batchOf(c.model.config, c.T, 20);
      const engine = await UserSegmentEngine.create(gpu, c.model, adapter, {
        k: c.plan.k,
        lora: c.lora,
        batch: batch.B,
        seq: batch.T,
        adamw,
        variants: c.variants,
      });
      try {
        const ref = userSegmentForward(c.model, adapter, batch, c.plan);
        const h1 = await engine.forward(batch.inputIds);
        expect(maxRelErr(h1, ref.h1), 'h1').toBeLessThan(1e-5);

        const refCont = continuation(c.model, adapter, ref.h1, batch, c.plan);
        const gpuCont = continuation(c.model, adapter, h1, batch, c.plan);
        expect(Math.abs(gpuCont.loss - refCont.loss) / refCont.loss, 'loss').toBeLessThan(1e-5);

        engine.backward(refCont.dh1);
        const refGrads = userSegmentBackward(c.model, adapter, ref.state, refCont.dh1);
        const grads = await engine.readGrads();
        expect([...grads.keys()].sort()).toEqual([...refGrads.keys()].sort());
        for (const [path, g] of refGrads) {
          expect(maxRelErr(grads.get(path)!.A, g.A), `${path} dA`).toBeLessThan(1e-4);
          expect(maxRelErr(grads.get(path)!.B, g.B), `${path} dB`).toBeLessThan(1e-4);
        }

        engine.step();
        const after = await engine.readAdapter();
        for (const path of refGrads.keys()) {
          const p = adapter.layers.get(path)!;
          for (const w of ['A', 'B'] as const) {
            const want = p[w].data.slice();
            adamwStep(want, grads.get(path)![w], adamwInit(want.length), 1, adamw);
            expect(maxRelErr(after.layers.get(path)![w].data, want), `${path} ${w} after AdamW`).toBeLessThan(1e-6);
          }
        }
      } finally {
        engine.destroy();
      }
    });
  }

  it('three chained training steps follow the reference loss curve (shipped model)', async () => {
    const gpu = await testDevice();
    const lora: LoraConfig = { r: 8, alpha: 16, targets: ['attn.c_attn', 'attn.c_proj'] };
    const plan = { k: 1, m: 3 };
    const refAdapter = adapterFor(shipped.config, lora, 30);
    const engine = await UserSegmentEngine.create(gpu, shipped, refAdapter, { k: 1, lora, batch: 2, seq: 29, adamw });
    const state = new Map(
      [...refAdapter.layers].flatMap(
        ([k, p]) =>
          [
            [`${k}A`, adamwInit(p.A.data.length)],
            [`${k}B`, adamwInit(p.B.data.length)],
          ] as const,
      ),
    );
    const ref = cloneAdapter(refAdapter);
    try {
      for (let step = 1; step <= 3; step++) {
        const batch = batchOf(shipped.config, 29, 40 + step);
        // reference: the whole split step in TypeScript
        const u = userSegmentForward(shipped, ref, batch, plan);
        const cont = continuation(shipped, ref, u.h1, batch, plan);
        const g = userSegmentBackward(shipped, ref, u.state, cont.dh1);
        for (const k of g.keys()) {
          const p = ref.layers.get(k)!;
          adamwStep(p.A.data, g.get(k)!.A, state.get(`${k}A`)!, step, adamw);
          adamwStep(p.B.data, g.get(k)!.B, state.get(`${k}B`)!, step, adamw);
        }
        // engine: the user segment on the GPU, edge and cloud in the reference (frozen copy: the
        // edge and cloud LoRA are not trained here, so both sides see the same continuation)
        const h1 = await engine.forward(batch.inputIds);
        const gc = continuation(shipped, refAdapter, h1, batch, plan);
        const rc = continuation(shipped, refAdapter, u.h1, batch, plan);
        expect(Math.abs(gc.loss - rc.loss) / rc.loss, `loss at step ${step}`).toBeLessThan(1e-4);
        engine.backward(gc.dh1);
        engine.step();
      }
      expect(engine.steps).toBe(3);
    } finally {
      engine.destroy();
    }
  });
});

describe('UserSegmentEngine: limits and bad input', () => {
  const lora: LoraConfig = { r: 8, alpha: 16, targets: ['attn.c_attn', 'attn.c_proj'] };

  it('says clearly when the model does not fit the adapter', async () => {
    const gpu = await testDevice();
    // the same device, described with a 256 KiB binding limit: wte (1024 x 128 floats) is 512 KiB
    const small = new GpuContext(gpu.device, { ...gpu.adapter, maxStorageBufferBindingSize: 256 * 1024 });
    const err = await UserSegmentEngine.create(small, shipped, initLoraAdapter(shipped.config, lora, 1), {
      k: 1,
      lora,
      batch: 2,
      seq: 16,
      adamw,
    }).catch((e) => e);
    expect(err).toBeInstanceOf(GpuError);
    expect(err.code).toBe('DOES_NOT_FIT');
    expect(err.message).toMatch(
      new RegExp(
        /does not fit this adapter: wte\.weight needs 524288 bytes, /.source +
          /over this adapter's maxStorageBufferBindingSize 262144/.source,
      ),
    );
  });

  it('refuses bad token ids, shapes, NaN gradients and out-of-order calls; setAdapter restarts cleanly', async () => {
    const gpu = await testDevice();
    const adapter = adapterFor(shipped.config, lora, 50);
    const engine = await UserSegmentEngine.create(gpu, shipped, adapter, { k: 1, lora, batch: 2, seq: 8, adamw });
    try {
      const batch = batchOf(shipped.config, 8, 51);
      await expectEngineContract(engine, batch.inputIds, 1e-2, {
        own: adapter,
        foreign: adapterWithRandomB(shipped.config, { ...lora, r: 4 }, 52),
        missing: adapterWithRandomB(shipped.config, lora, 53),
        missingName: 'h.0.attn.c_proj',
      });
    } finally {
      engine.destroy();
    }
  });
});

describe('kernel variants per adapter', () => {
  it('picks the barrier-free set on a software adapter, and times matmul at the engine shapes on a GPU', async () => {
    const gpu = await testDevice();
    const sw = await chooseKernelVariants(gpu, engineMatmulShapes(shipped.config, 2, 8));
    expect(isSoftwareAdapter(gpu.adapter)).toBe(true); // SwiftShader here
    expect(sw.variants).toEqual(SOFTWARE_ADAPTER_VARIANTS);
    // the same device described as a GPU: the matmul variant comes from timing
    const asGpu = new GpuContext(gpu.device, { ...gpu.adapter, isFallbackAdapter: false, name: 'Example GPU' });
    const hw = await chooseKernelVariants(asGpu, {
      full: [{ M: 16, K: 32, N: 48 }],
      lowRank: [{ M: 16, K: 32, N: 4 }],
      headBackward: { M: 8, K: 301, N: 24 },
    });
    expect(MATMUL_VARIANTS).toContain(hw.variants.matmul);
    expect(MATMUL_VARIANTS).toContain(hw.variants.lowRank);
    // every candidate (all variants but 'naive') with its time, for both kinds of product
    const times = `(\\w+ [\\d.]+ ms, ){${MATMUL_VARIANTS.length - 2}}\\w+ [\\d.]+ ms`;
    // then, where the full-size variant runs split-K, the head's dy at each candidate count for V = 301
    const splitTimed = SPLIT_K_VARIANTS.includes(hw.variants.matmul);
    const split = splitTimed ? '; head dy 8x301x24 split-K: (\\d+ [\\d.]+ ms, ){5}\\d+ [\\d.]+ ms' : '';
    expect(hw.reason).toMatch(
      new RegExp(`timed at the engine's shapes \\(full-size: ${times}; rank-r: ${times}${split}\\)$`),
    );
    expect(splitTimed ? [1, 2, 4, 8, 16, 32] : [1]).toContain(hw.variants.headSplitK);
    expect(hw.variants.layernorm).toBe(GPU_DEFAULT_VARIANTS.layernorm);
  });

  it("the head's split-K candidates and their timing", async () => {
    // GPT-2 small's chunk of 128 rows: every power of two to 64 (which runs as 63 slices of 800;
    // 63 x 128 x 768 floats: 24 MiB)
    expect(headSplitKCandidates({ M: 128, K: 50257, N: 768 })).toEqual([1, 2, 4, 8, 16, 32, 64]);
    // 512 rows: the partials' budget (32 MiB) stops at 16
    expect(headSplitKCandidates({ M: 512, K: 50257, N: 768 })).toEqual([1, 2, 4, 8, 16]);
    // V = 301: 8, 16 and 32 run as 7, 10 and 19 slices; 64 would run as 19 too
    expect(headSplitKCandidates({ M: 8, K: 301, N: 24 })).toEqual([1, 2, 4, 8, 16, 32]);
    const gpu = await testDevice();
    const timed = await timeSplitK(gpu, { M: 8, K: 301, N: 24 }, 'nn', 'blocked', [1, 2, 8], 1);
    expect(timed.map((t) => t.splitK).sort((a, b) => a - b)).toEqual([1, 2, 8]);
    for (let i = 1; i < timed.length; i++) expect(timed[i].ms).toBeGreaterThanOrEqual(timed[i - 1].ms);
    expect(timed.every((t) => t.ms > 0)).toBe(true);
  });
});
