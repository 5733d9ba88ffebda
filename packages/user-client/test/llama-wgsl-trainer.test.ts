/**
 * The 'wgsl' user trainer on the LLaMA family: the shipped moby-llama-tiny (hidden 128, 4 layers,
 * 4 query heads sharing 2 kv heads, SwiGLU 344, vocab 1024, untied head), the trainer given only
 * the decoded user segment (embed_tokens, layers.0, norm, lm_head), chained with the TypeScript
 * edge and cloud (each with its own AdamW) for three split steps, against the centralized
 * reference run (modelForwardBackward + one AdamW over the whole adapter) on the same batches.
 * Plan k=1, m=3; the family's default LoRA (q_proj and v_proj, r 8, alpha 16); batch 2 x 16 with
 * a right-padded row; AdamW from DEFAULT_LORA_TRAIN. Then the head with labels on the device on
 * the model's real last hidden state, and what the trainer refuses. The GPT-2 counterpart is
 * trainers.test.ts.
 *
 * Tolerances (max |got - want| / max |want|, per tensor; those of trainers.test.ts and of
 * packages/lora-kernels/test/llama-engine.test.ts, whose reasoning carries over):
 *  - loss curve: 1e-4 relative: the kernels accumulate in float32, the reference in float64 (1e-5
 *    on one step's h1 and loss); over three steps the adapters drift apart by what AdamW makes of
 *    that.
 *  - LoRA gradients of each step against the central run's: 1e-4.
 *  - adapter after three steps: against the reference AdamW applied, step by step, to the
 *    engine's own gradients, 1e-6 of the parameter scale (not against the central adapter
 *    elementwise: AdamW moves an element whose gradient is ~0 by about lr either way).
 *  - head: loss and logits 1e-5, dL/dhL 1e-4 (the kernels' own bounds).
 *
 * The GPU is SwiftShader (software Vulkan) here, through the Node `webgpu` package.
 */
import {
  AdamW,
  blocksForward,
  cloneAdapter,
  cloudSegmentStep,
  decodeSegment,
  DEFAULT_LORA_TRAIN,
  defaultLoraConfig,
  edgeSegmentBackward,
  edgeSegmentForward,
  embedForward,
  encodeSegment,
  headLogits,
  headLossStep,
  IGNORE_INDEX,
  initLoraAdapter,
  loraGradArrays,
  loraParameters,
  maxRelErr,
  modelForwardBackward,
  Rng,
  type AnyModel,
  type LlamaConfig,
  type LoraAdapter,
  type LoraConfig,
  type LoraGrads,
  type SplitPlan,
  type TokenBatch,
} from '@splitllm/model';
import { loadLlamaDir } from '@splitllm/model/node';
import type { GpuContext } from '@splitllm/lora-kernels';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { WgslUserTrainer } from '../src/engines/wgsl';
import { nodeGpu } from '../src/node/gpu';
import type { UserTrainerOptions } from '../src/trainer';

const dir = loadLlamaDir(fileURLToPath(new URL('../../assets/models/moby-llama-tiny', import.meta.url)));
const shipped: AnyModel = { config: dir.config, weights: dir.weights };
const c: LlamaConfig = dir.config;
const plan: SplitPlan = { k: 1, m: 3 };
const lora: LoraConfig = defaultLoraConfig(c);
const B = 2;
const T = 16;
const D = c.hiddenSize;
const adamw = DEFAULT_LORA_TRAIN.adamw;
const options: UserTrainerOptions = { plan, lora, batch: B, seq: T, adamw };
const SEED = 11;
const STEPS = 3;

const tierModel = (tier: 'user' | 'edge' | 'cloud'): AnyModel =>
  decodeSegment(encodeSegment(shipped, plan, tier), tier).model;
const userModel = tierModel('user');
const edgeModel = tierModel('edge');
const cloudModel = tierModel('cloud');

let gpuPromise: Promise<GpuContext> | undefined;
const testGpu = () => (gpuPromise ??= nodeGpu());

/** B rows of T random tokens; row 1 is right-padded (eos ids, ignored targets) after 2T/3. */
function paddedBatch(seed: number): TokenBatch {
  const rng = new Rng(seed);
  const ids = new Int32Array(B * T);
  const targets = new Int32Array(B * T);
  const real = Math.floor((2 * T) / 3);
  for (let b = 0; b < B; b++) {
    const row = Array.from({ length: T + 1 }, () => rng.int(c.vocabSize));
    for (let t = 0; t < T; t++) {
      const pad = b === 1 && t >= real;
      ids[b * T + t] = pad ? c.eosTokenIds[0] : row[t];
      targets[b * T + t] = pad ? IGNORE_INDEX : row[t + 1];
    }
  }
  return { B, T, inputIds: ids, targets };
}

const batches = Array.from({ length: STEPS }, (_, i) => paddedBatch(100 + i));
/** the user's initial adapter: blocks [0, k) of the same init the central run uses */
const userInit = initLoraAdapter(c, lora, SEED, 0, plan.k);

const userPaths = (g: LoraGrads) => new Map([...g].filter(([path]) => /^layers\.0\./.test(path)));

/** The centralized run: whole model, one AdamW over the whole adapter. */
const central = (() => {
  const adapter = initLoraAdapter(c, lora, SEED);
  const opt = new AdamW(loraParameters(adapter), adamw);
  const losses: number[] = [];
  const userGrads: LoraGrads[] = [];
  for (const batch of batches) {
    const r = modelForwardBackward(shipped, adapter, batch);
    losses.push(r.loss);
    userGrads.push(userPaths(r.loraGrads));
    opt.step(loraGradArrays(r.loraGrads));
  }
  return { losses, userGrads };
})();

/** Split steps with the trainer as the user, the reference as edge and cloud (fresh adapters and optimizers). */
async function splitChain(
  trainer: WgslUserTrainer,
  steps: number,
  afterStep?: (step: number) => Promise<void>,
): Promise<number[]> {
  const edgeA = initLoraAdapter(c, lora, SEED, plan.k, plan.m);
  const cloudA = initLoraAdapter(c, lora, SEED, plan.m, c.nLayer);
  const edgeOpt = new AdamW(loraParameters(edgeA), adamw);
  const cloudOpt = new AdamW(loraParameters(cloudA), adamw);
  const losses: number[] = [];
  for (let s = 0; s < steps; s++) {
    const batch = batches[s];
    const h1 = await trainer.forward(batch);
    const e = edgeSegmentForward(edgeModel, edgeA, h1, B, T, plan);
    const cl = cloudSegmentStep(cloudModel, cloudA, e.h2, batch.targets, B, T, plan);
    cloudOpt.step(loraGradArrays(cl.loraGrads));
    const eb = edgeSegmentBackward(edgeModel, edgeA, e.state, cl.dh2);
    edgeOpt.step(loraGradArrays(eb.loraGrads));
    await trainer.backwardAndStep(eb.dh1);
    losses.push(cl.loss);
    await afterStep?.(s);
  }
  return losses;
}

const relErrs = (got: number[], want: number[]) => got.map((g, i) => Math.abs(g - want[i]) / Math.abs(want[i]));

function adapterErr(got: LoraAdapter, want: LoraAdapter): number {
  expect([...got.layers.keys()].sort()).toEqual([...want.layers.keys()].sort());
  let worst = 0;
  for (const [path, w] of want.layers) {
    const g = got.layers.get(path)!;
    worst = Math.max(worst, maxRelErr(g.A.data, w.A.data), maxRelErr(g.B.data, w.B.data));
  }
  return worst;
}

describe('the wgsl user trainer on a LLaMA-family model', () => {
  it('three split steps follow the central run; setAdapter restarts the optimizer', async () => {
    const trainer = await WgslUserTrainer.create(await testGpu(), userModel, userInit, options);
    try {
      expect(trainer.kind).toBe('wgsl');
      expect(trainer.description).toMatch(
        new RegExp(
          /^wgsl on .+ \(software adapter\): /.source +
            /kernels matmul registers, low-rank registers, rmsnorm thread, gqa-attention naive$/.source,
        ),
      );
      const shadow = cloneAdapter(userInit); // reference AdamW on the engine's own gradients
      const shadowOpt = new AdamW(loraParameters(shadow), adamw);
      const losses = await splitChain(trainer, STEPS, async (s) => {
        const grads = await trainer.engine.readGrads(); // the step leaves the gradients in place
        expect([...grads.keys()].sort()).toEqual(['layers.0.self_attn.q_proj', 'layers.0.self_attn.v_proj']);
        for (const [path, g] of central.userGrads[s]) {
          expect(maxRelErr(grads.get(path)!.A, g.A), `step ${s + 1} ${path} dA`).toBeLessThan(1e-4);
          expect(maxRelErr(grads.get(path)!.B, g.B), `step ${s + 1} ${path} dB`).toBeLessThan(1e-4);
        }
        shadowOpt.step(loraGradArrays(grads));
      });
      expect(losses.every(Number.isFinite)).toBe(true);
      expect(Math.max(...relErrs(losses, central.losses)), `losses ${losses} vs ${central.losses}`).toBeLessThan(1e-4);
      const after = await trainer.readAdapter();
      expect(adapterErr(after, shadow), 'adapter vs reference AdamW on the engine gradients').toBeLessThan(1e-6);
      expect(adapterErr(after, userInit)).toBeGreaterThan(1e-3); // it moved

      // a new turn: the initial adapter again, fresh AdamW: the same losses (t restarts at 1)
      await trainer.setAdapter(userInit);
      const again = await splitChain(trainer, 2);
      expect(Math.max(...relErrs(again, losses.slice(0, 2)))).toBeLessThan(1e-4);
    } finally {
      trainer.destroy();
    }
  });

  it('runs the head with labels on the device on the real last hidden state', async () => {
    const trainer = await WgslUserTrainer.create(await testGpu(), userModel, userInit, options);
    try {
      const batch = batches[0];
      const h0 = embedForward(shipped, batch.inputIds, B, T);
      const hL = blocksForward(shipped, undefined, h0, B, T, 0, c.nLayer).y;
      const got = await trainer.headStep(hL, batch.targets);
      const want = headLossStep(shipped, hL, batch.targets, B, T);
      expect(got.count).toBe(want.count);
      expect(Math.abs(got.loss - want.loss) / want.loss).toBeLessThan(1e-5);
      expect(maxRelErr(got.dh, want.dh)).toBeLessThan(1e-4);
      const last = hL.subarray((T - 1) * D, T * D);
      expect(maxRelErr(await trainer.headLogits(last), headLogits(shipped, last))).toBeLessThan(1e-5);
      await expect(trainer.headLogits(new Float32Array(D + 1))).rejects.toThrow(
        /a last hidden state has 129 values, expected 128/,
      );
    } finally {
      trainer.destroy();
    }
  });

  it("refuses the other family's LoRA targets, a missing pair and a segment without its weights", async () => {
    const gpu = await testGpu();
    const gpt2Lora: LoraConfig = { r: 8, alpha: 16, targets: ['attn.c_attn'] };
    await expect(
      WgslUserTrainer.create(gpu, userModel, { config: gpt2Lora, layers: new Map() }, { ...options, lora: gpt2Lora }),
    ).rejects.toThrow(/LoRA target "attn\.c_attn" is not one a llama-family model has/);
    const missing = cloneAdapter(userInit);
    missing.layers.delete('layers.0.self_attn.v_proj');
    await expect(WgslUserTrainer.create(gpu, userModel, missing, options)).rejects.toThrow(
      /no LoRA pair for layers\.0\.self_attn\.v_proj/,
    );
    const noHead: AnyModel = {
      config: c,
      weights: new Map([...userModel.weights].filter(([n]) => n !== 'lm_head.weight')),
    };
    await expect(WgslUserTrainer.create(gpu, noHead, userInit, options)).rejects.toThrow(
      /user segment has no tensor "lm_head\.weight"/,
    );
  });
});
