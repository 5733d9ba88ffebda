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
  cloneAdapter,
  DEFAULT_LORA_TRAIN,
  defaultLoraConfig,
  headLogits,
  headLossStep,
  initLoraAdapter,
  loraGradArrays,
  loraParameters,
  maxRelErr,
  paddedRandomBatch,
} from '@splitllm/model';
import { describe, expect, it } from 'vitest';
import { WgslUserTrainer } from '../src/engines/wgsl';
import {
  adapterErr,
  centralRun,
  expectLlamaCreateRefusals,
  lastHiddenState,
  relErrs,
  shippedLlama,
  splitSetup,
  splitSteps,
  testGpu,
} from './split-harness';

const shipped = shippedLlama();
const c = shipped.config;
const B = 2;
const T = 16;
const D = c.hiddenSize;
const adamw = DEFAULT_LORA_TRAIN.adamw;
const SEED = 11;
const STEPS = 3;
const setup = splitSetup(shipped, { plan: { k: 1, m: 3 }, lora: defaultLoraConfig(c), batch: B, seq: T, adamw }, SEED);
const { options, user: userModel } = setup;
const { plan, lora } = options;

const batches = Array.from({ length: STEPS }, (_, i) => paddedRandomBatch(c, 100 + i, B, T));
/** the user's initial adapter: blocks [0, k) of the same init the central run uses */
const userInit = initLoraAdapter(c, lora, SEED, 0, plan.k);

/** The centralized run: whole model, one AdamW over the whole adapter. */
const central = centralRun(setup, batches);

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
      const losses = await splitSteps(setup, trainer, batches, async (s) => {
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
      const again = await splitSteps(setup, trainer, batches.slice(0, 2));
      expect(Math.max(...relErrs(again, losses.slice(0, 2)))).toBeLessThan(1e-4);
    } finally {
      trainer.destroy();
    }
  });

  it('runs the head with labels on the device on the real last hidden state', async () => {
    const trainer = await WgslUserTrainer.create(await testGpu(), userModel, userInit, options);
    try {
      const batch = batches[0];
      const hL = lastHiddenState(shipped, batch);
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
    await expectLlamaCreateRefusals(
      setup,
      userInit,
      'layers.0.self_attn.v_proj',
      'lm_head.weight',
      (model, adapter, o) => WgslUserTrainer.create(gpu, model, adapter, o),
    );
  });
});
