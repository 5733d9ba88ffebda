/**
 * The LLaMA user-segment engine (src/llama-engine.ts) against the reference (packages/model,
 * userSegmentForward / userSegmentBackward / headLossStep / headLogits, which dispatch to llama.ts
 * for this family) on small random LLaMA configs: D 32, 3 layers, 4 query heads sharing 2 kv heads
 * of width 8, SwiGLU width 48, vocab 64, batch 2 x 8 with a right-padded row. Cases: a tied head
 * with all seven targets; Qwen2's q/k/v biases with an untied head and the head in several chunks;
 * Llama 3 rope scaling with o and MLP biases; and block-0-only segments whose targets leave part of
 * the backward out (no q/k/v pair: no attention backward; k alone: no dq rotation; up alone: no
 * dL/da). Also the family dispatch (createUserSegmentEngine, engineMatmulShapesOf), the size
 * estimate, and bad input.
 *
 * Tolerances (max |got - want| / max |want| per tensor; losses relative), the GPT-2 engine test's
 * (test/engine.test.ts) and head test's (test/head.test.ts), whose reasoning carries over: every op
 * is float32 on both sides, the reference accumulating dot products in float64 and the kernels in
 * float32 (~sqrt(K) * 6e-8 per product, K <= 48 here), a few layers chained.
 *  - h1, the continuation's loss, the head's loss and the logits: 1e-5.
 *  - LoRA gradients and the head's dL/dhL: 1e-4: the backward chains more products and
 *    cancellations (rmsnorm, softmax and SwiGLU backward) than the forward.
 *  - parameters after AdamW: against the reference AdamW (packages/model's AdamW) applied to the
 *    engine's own gradients, 1e-6 of the parameter scale (AdamW moves an element whose gradient is
 *    ~0 by about lr either way, so against the reference gradients it would compare nothing).
 * Measured worst on SwiftShader over these cases: h1 5.9e-7, loss 8.2e-8, LoRA gradients 1.3e-6,
 * AdamW 1.1e-7, head loss 2.6e-8, dL/dhL 2.8e-7, logits 1.6e-7.
 */
import {
  AdamW,
  cloneAdapter,
  DEFAULT_ADAMW,
  FamilyError,
  headLogits,
  headLossStep,
  initLoraAdapter,
  LLAMA_LORA_TARGETS,
  loraGradArrays,
  loraParameters,
  llama3ScaledConfig,
  perturbedLlamaModel,
  Rng,
  userSegmentBackward,
  userSegmentForward,
  type AdamWOptions,
  type Gpt2Config,
  type LlamaConfig,
  type LoraAdapter,
  type LoraConfig,
  type SplitPlan,
  tinyLlamaConfig,
  withRandomLoraB,
} from '@splitllm/model';
import { describe, expect, it } from 'vitest';
import { SOFTWARE_ADAPTER_VARIANTS, UserSegmentEngine, type KernelVariants } from '../src/engine';
import { createUserSegmentEngine, engineMatmulShapesOf } from '../src/family-engine';
import { GpuContext, GpuError } from '../src/gpu';
import { LlamaEngineError, LlamaUserSegmentEngine, llamaUserEngineBytes } from '../src/llama-engine';
import { engineMatmulShapes } from '../src/variants';
import {
  adapterWithRandomB,
  batchOf,
  continuation,
  expectEngineContract,
  maxRelErr,
  scaledRandomModel,
  testDevice,
} from './harness';

const TOL_FORWARD = 1e-5;
const TOL_GRAD = 1e-4;
const TOL_ADAMW = 1e-6;

const base: LlamaConfig = tinyLlamaConfig();
const qwen2: LlamaConfig = { ...base, family: 'qwen2', qkvBias: true, tieWordEmbeddings: false };
const llama3: LlamaConfig = llama3ScaledConfig(base, 8);

/** Blocks [0, k) of a fresh init with B random too (a fresh B = 0 would make every dA vanish). */
function userAdapter(c: LlamaConfig, lora: LoraConfig, k: number, seed: number): LoraAdapter {
  return withRandomLoraB(initLoraAdapter(c, lora, seed, 0, k), seed + 1, 0.1);
}

/** A small GPT-2 config, for the family checks. */
const gpt2Config: Gpt2Config = {
  vocabSize: 50,
  nPositions: 16,
  nEmbd: 16,
  nLayer: 2,
  nHead: 2,
  nInner: 32,
  layerNormEpsilon: 1e-5,
  bosTokenId: 0,
  eosTokenId: 0,
};

const adamw: AdamWOptions = { ...DEFAULT_ADAMW, lr: 5e-3, weightDecay: 0.01 };
const T = 8;

interface Case {
  name: string;
  config: LlamaConfig;
  lora: LoraConfig;
  k: number;
  variants?: KernelVariants;
  headChunkRows?: number;
}

const cases: Case[] = [
  {
    name: 'tied head, no biases, all seven targets, k=2, software-tuned kernels',
    config: base,
    lora: { r: 4, alpha: 8, targets: [...LLAMA_LORA_TARGETS] },
    k: 2,
    variants: SOFTWARE_ADAPTER_VARIANTS,
  },
  {
    name: 'Qwen2 q/k/v biases, untied head in chunks of 5 rows, q_proj + v_proj, k=2, default (GPU-tuned) kernels',
    config: qwen2,
    lora: { r: 3, alpha: 6, targets: ['q_proj', 'v_proj'] },
    k: 2,
    headChunkRows: 5,
  },
  {
    name: 'Llama 3 rope scaling, o and MLP biases, o_proj + down_proj, k=1 (no attention backward)',
    config: llama3,
    lora: { r: 2, alpha: 4, targets: ['o_proj', 'down_proj'] },
    k: 1,
    variants: SOFTWARE_ADAPTER_VARIANTS,
  },
  {
    name: 'gate_proj + k_proj, k=1 (the attention backward for k alone: dq is never rotated back)',
    config: base,
    lora: { r: 2, alpha: 2, targets: ['gate_proj', 'k_proj'] },
    k: 1,
    variants: SOFTWARE_ADAPTER_VARIANTS,
  },
  {
    name: 'up_proj only, k=1 (the MLP backward alone: no dL/da, nothing of the attention branch)',
    config: qwen2,
    lora: { r: 2, alpha: 2, targets: ['up_proj'] },
    k: 1,
    variants: SOFTWARE_ADAPTER_VARIANTS,
  },
];

describe('LlamaUserSegmentEngine: one split step and the head against the reference', () => {
  cases.forEach((tc, i) => {
    it(tc.name, async () => {
      const gpu = await testDevice();
      const model = perturbedLlamaModel(tc.config, 10 + i);
      const plan: SplitPlan = { k: tc.k, m: tc.k + 1 };
      const adapter = userAdapter(tc.config, tc.lora, tc.k, 20 + i);
      const batch = batchOf(tc.config, T, 30 + i);
      const engine = await LlamaUserSegmentEngine.create(gpu, model, adapter, {
        k: tc.k,
        lora: tc.lora,
        batch: batch.B,
        seq: batch.T,
        adamw,
        variants: tc.variants,
        headChunkRows: tc.headChunkRows,
      });
      try {
        const ref = userSegmentForward(model, adapter, batch, plan);
        const h1 = await engine.forward(batch.inputIds);
        expect(maxRelErr(h1, ref.h1), 'h1').toBeLessThan(TOL_FORWARD);

        const refCont = continuation(model, adapter, ref.h1, batch, plan);
        const gpuCont = continuation(model, adapter, h1, batch, plan);
        expect(Math.abs(gpuCont.loss - refCont.loss) / refCont.loss, 'loss').toBeLessThan(TOL_FORWARD);

        // the head between a forward and its backward: it must leave the saved activations alone
        const hL = new Rng(40 + i).fillNormal(new Float32Array(h1.length), 1.5);
        const head = await engine.headStep(hL, batch.targets);
        const refHead = headLossStep(model, hL, batch.targets, batch.B, batch.T);
        expect(head.count).toBe(refHead.count);
        expect(Math.abs(head.loss - refHead.loss) / refHead.loss, 'head loss').toBeLessThan(TOL_FORWARD);
        expect(maxRelErr(head.dh, refHead.dh), 'head dL/dhL').toBeLessThan(TOL_GRAD);
        const one = hL.subarray(5 * tc.config.hiddenSize, 6 * tc.config.hiddenSize);
        expect(maxRelErr(await engine.headLogits(one), headLogits(model, one)), 'logits').toBeLessThan(TOL_FORWARD);
        if (tc.headChunkRows) expect(engine.headChunkRows).toBe(tc.headChunkRows);

        engine.backward(refCont.dh1);
        const refGrads = userSegmentBackward(model, adapter, ref.state, refCont.dh1);
        const grads = await engine.readGrads();
        expect([...grads.keys()].sort()).toEqual([...adapter.layers.keys()].sort());
        expect([...refGrads.keys()].sort()).toEqual([...adapter.layers.keys()].sort());
        for (const [path, g] of refGrads) {
          expect(maxRelErr(grads.get(path)!.A, g.A), `${path} dA`).toBeLessThan(TOL_GRAD);
          expect(maxRelErr(grads.get(path)!.B, g.B), `${path} dB`).toBeLessThan(TOL_GRAD);
        }

        engine.step();
        expect(engine.steps).toBe(1);
        const want = cloneAdapter(adapter);
        new AdamW(loraParameters(want), adamw).step(loraGradArrays(grads));
        const after = await engine.readAdapter();
        expect(after.config).toEqual(tc.lora);
        for (const [path, p] of want.layers) {
          const got = after.layers.get(path)!;
          expect(got.A.shape).toEqual(p.A.shape);
          expect(got.B.shape).toEqual(p.B.shape);
          expect(maxRelErr(got.A.data, p.A.data), `${path} A after AdamW`).toBeLessThan(TOL_ADAMW);
          expect(maxRelErr(got.B.data, p.B.data), `${path} B after AdamW`).toBeLessThan(TOL_ADAMW);
        }
      } finally {
        engine.destroy();
      }
    });
  });
});

describe('LlamaUserSegmentEngine: limits and bad input', () => {
  const lora: LoraConfig = { r: 2, alpha: 4, targets: ['q_proj', 'v_proj'] };
  const opts = { k: 1, lora, batch: 2, seq: T, adamw, variants: SOFTWARE_ADAPTER_VARIANTS };
  const model = perturbedLlamaModel(base, 50);

  it('refuses adapters that miss a pair or are of the other family, and a GPT-2 model', async () => {
    const gpu = await testDevice();
    const missing = userAdapter(base, lora, 1, 51);
    missing.layers.delete('layers.0.self_attn.v_proj');
    await expect(LlamaUserSegmentEngine.create(gpu, model, missing, opts)).rejects.toThrow(
      /LLaMA user-segment engine: the adapter has no LoRA pair for layers\.0\.self_attn\.v_proj/,
    );
    const gpt2Lora: LoraConfig = { r: 2, alpha: 4, targets: ['attn.c_attn'] };
    const wrong = { config: gpt2Lora, layers: new Map() };
    await expect(LlamaUserSegmentEngine.create(gpu, model, wrong, { ...opts, lora: gpt2Lora })).rejects.toThrow(
      /LoRA target "attn\.c_attn" is not one a llama-family model has \(choose from q_proj, k_proj/,
    );
    const gpt2 = scaledRandomModel(gpt2Config, 1);
    const err = await LlamaUserSegmentEngine.create(gpu, gpt2, missing, opts).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FamilyError);
    expect((err as Error).message).toMatch(/runs LLaMA-family models only; this model is GPT-2/);
    const noTensor = { config: base, weights: new Map(model.weights) };
    noTensor.weights.delete('layers.0.mlp.up_proj.weight');
    await expect(LlamaUserSegmentEngine.create(gpu, noTensor, userAdapter(base, lora, 1, 52), opts)).rejects.toThrow(
      /the model has no tensor layers\.0\.mlp\.up_proj\.weight/,
    );
    await expect(
      LlamaUserSegmentEngine.create(gpu, model, userAdapter(base, lora, 1, 52), { ...opts, seq: 17 }),
    ).rejects.toThrow(/sequence length 17 exceeds the model's max_position_embeddings 16/);
  });

  it('says clearly when the model does not fit the adapter', async () => {
    const gpu = await testDevice();
    // the same device, described with a 4 KiB binding limit: embed_tokens (64 x 32 floats) is 8 KiB
    const small = new GpuContext(gpu.device, { ...gpu.adapter, maxStorageBufferBindingSize: 4096 });
    const err = await LlamaUserSegmentEngine.create(small, model, userAdapter(base, lora, 1, 53), opts).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(GpuError);
    expect((err as GpuError).code).toBe('DOES_NOT_FIT');
    expect((err as Error).message).toMatch(
      /the user segment \([\d.]+ MiB on the GPU\) does not fit this adapter: embed_tokens\.weight needs 8192 bytes, /,
    );
  });

  it('refuses bad token ids, shapes, NaN gradients and out-of-order calls; setAdapter restarts cleanly', async () => {
    const gpu = await testDevice();
    const adapter = userAdapter(base, lora, 1, 54);
    const engine = await LlamaUserSegmentEngine.create(gpu, model, adapter, opts);
    try {
      const batch = batchOf(base, T, 55);
      // the LLaMA engine's refusals are coded (the messages are the shared ones expectEngineContract checks)
      expect(() => engine.backward(new Float32Array(2 * T * 32))).toThrow(LlamaEngineError);
      await expectEngineContract(engine, batch.inputIds, 1e-1, {
        own: adapter,
        foreign: userAdapter(base, { ...lora, r: 3 }, 1, 56),
        missing: userAdapter(base, lora, 1, 57),
        missingName: 'layers.0.self_attn.q_proj',
      });
    } finally {
      engine.destroy();
    }
  });
});

describe('either family', () => {
  it('createUserSegmentEngine builds the engine of the model family', async () => {
    const gpu = await testDevice();
    const lora: LoraConfig = { r: 2, alpha: 4, targets: ['v_proj'] };
    const llama = await createUserSegmentEngine(gpu, perturbedLlamaModel(base, 60), userAdapter(base, lora, 1, 61), {
      k: 1,
      lora,
      batch: 1,
      seq: 4,
      adamw,
      variants: SOFTWARE_ADAPTER_VARIANTS,
    });
    expect(llama).toBeInstanceOf(LlamaUserSegmentEngine);
    expect((await llama.forward(new Int32Array([1, 2, 3, 4]))).length).toBe(4 * 32);
    llama.destroy();

    const gLora: LoraConfig = { r: 2, alpha: 4, targets: ['attn.c_attn'] };
    const gpt2 = await createUserSegmentEngine(
      gpu,
      scaledRandomModel(gpt2Config, 2),
      adapterWithRandomB(gpt2Config, gLora, 3),
      { k: 1, lora: gLora, batch: 1, seq: 4, adamw, variants: SOFTWARE_ADAPTER_VARIANTS },
    );
    expect(gpt2).toBeInstanceOf(UserSegmentEngine);
    expect((await gpt2.forward(new Int32Array([1, 2, 3, 4]))).length).toBe(4 * 16);
    gpt2.destroy();
  });

  it('engineMatmulShapesOf gives each family its products; the size estimate counts an untied head', () => {
    const q = base.nHead * base.headDim; // 32 = D: q_proj and o_proj share their shape
    // each frozen weight forward ('nn') and backward ('nt') once per block (2 here), equal products
    // merged with their counts added (q and o are both 32 x 32; k and v both 32 -> 16; gate and up
    // both 32 -> 48); the LM head [64, 32] once; LoRA's rank-r products at the widest output (48)
    const nn = ['nn'];
    const nt = ['nt'];
    expect(engineMatmulShapesOf(base, 2, 8, 4, 2)).toEqual({
      full: [
        { M: 16, K: 32, N: q, layouts: nn, count: 4 },
        { M: 16, K: q, N: 32, layouts: nt, count: 4 },
        { M: 16, K: 32, N: 16, layouts: nn, count: 4 },
        { M: 16, K: 16, N: 32, layouts: nt, count: 4 },
        { M: 16, K: 32, N: 48, layouts: nn, count: 4 },
        { M: 16, K: 48, N: 32, layouts: nt, count: 4 },
        { M: 16, K: 48, N: 32, layouts: nn, count: 2 },
        { M: 16, K: 32, N: 48, layouts: nt, count: 2 },
        { M: 16, K: 32, N: 64, layouts: nt, count: 1 },
        { M: 16, K: 64, N: 32, layouts: nn, count: 1 },
      ],
      lowRank: [
        { M: 16, K: 32, N: 4, layouts: nn },
        { M: 16, K: 4, N: 48, layouts: nn },
        { M: 16, K: 48, N: 4, layouts: nt },
        { M: 16, K: 4, N: 32, layouts: nt },
        { M: 32, K: 16, N: 4, layouts: ['tn'] },
        { M: 4, K: 16, N: 48, layouts: ['tn'] },
      ],
      headBackward: { M: 16, K: 64, N: 32 },
    });
    expect(engineMatmulShapesOf(gpt2Config, 2, 8, 4, 3)).toEqual(engineMatmulShapes(gpt2Config, 2, 8, 4, 3));
    const o = { k: 2, lora: { r: 4, alpha: 8, targets: [...LLAMA_LORA_TARGETS] }, batch: 2, seq: 8 };
    const tied = llamaUserEngineBytes(base, o);
    expect(llamaUserEngineBytes({ ...base, tieWordEmbeddings: false }, o) - tied).toBe(64 * 32 * 4);
    // at least the weights it uploads: embedding, norms, and 2 blocks of 7 projections
    const perBlock = 32 * 32 * 2 + 32 * 16 * 2 + 32 * 48 * 3 + 2 * 32;
    expect(tied).toBeGreaterThan((64 * 32 + 32 + 2 * perBlock) * 4);
  });
});
