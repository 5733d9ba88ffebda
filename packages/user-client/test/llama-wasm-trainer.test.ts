/**
 * The 'wasm' user engine (OnnxWasmUserTrainer: blocks [0, k) as family-graphs.ts's ONNX graphs on
 * onnxruntime-web's wasm EP, in Node here) on a LLaMA-family model, against the reference engine
 * (ReferenceUserTrainer) and the reference math it wraps. The model is the shipped moby-llama-tiny
 * (hidden 128, 4 layers, 4 query heads sharing 2 kv heads, SwiGLU 344, vocab 1024, untied head),
 * and each engine gets only the decoded user segment (embed_tokens, layers.0-1, norm, lm_head), as
 * a tab does. Plan k=2 (two blocks, so the graphs' saved-intermediate hand-over between blocks is
 * exercised), m=3; LoRA r 8 on all seven targets; batch 2 x 16 with a right-padded row. The GPT-2
 * counterpart is onnx-wasm-trainer.test.ts, whose set-up and read-outs this file follows.
 *
 * Tolerances (max |got - want| / max |want| per tensor, as onnx-wasm-trainer.test.ts and
 * llama-wgsl-trainer.test.ts):
 *  - h1, before and after a step; the head's loss and logits: 1e-5. onnxruntime's MLAS kernels
 *    accumulate in float32, the reference in float64: ~sqrt(K) 6e-8 per matmul (K <= 344 here),
 *    compounded over two blocks (the LLaMA graphs were measured at worst 1e-6 on forward values).
 *  - LoRA gradients, dL/dhL: 1e-4: the backward chains more products, and the RMSNorm, softmax and
 *    SwiGLU backwards subtract nearly equal terms (measured at worst 1.4e-6 for the graphs). The
 *    gradients are read through the public interface: with AdamW's eps = 1e8 and lr = 1e8 s, the
 *    first step moves each parameter by -s g / (1 + |g| / 1e8), i.e. by -s g, so (after - before)
 *    / -s is the gradient; s = 1 / (the smallest per-tensor max |g|) makes every tensor's step O(1)
 *    or more, above the parameters (< 0.2), so float32 rounding of p + step costs ~1e-7 of each
 *    tensor's scale: the read-out is checked on the reference engine itself at 1e-6.
 *  - with the run's AdamW (eps 1e-8): the adapter after one step 1e-2 and the losses of three split
 *    steps 1e-4. AdamW's first step is ~lr sign(g) per element, so an element whose gradient is
 *    ~1e-8 on both sides may step either way (2 lr = 1e-2 absolute): the adapter is compared
 *    loosely, the gradient check above is the precise one.
 * onnxruntime-web runs one thread here, so repeating the same steps gives bit-identical losses.
 * The worst errors met are printed at the end; measured: h1 2.2e-6, head loss 1.6e-8, logits 5.9e-7,
 * dA 8.7e-7, dB 1.1e-6, dh 4.8e-6, adapter after one step 9.3e-4, split losses 5.0e-9.
 */
import {
  cloneAdapter,
  DEFAULT_LORA_TRAIN,
  headLogits,
  headLossStep,
  IGNORE_INDEX,
  initLoraAdapter,
  LLAMA_LORA_TARGETS,
  type LoraConfig,
  maxRelErr,
  paddedRandomBatch,
  userSegmentForward,
  withRandomLoraB,
} from '@splitllm/model';
import { afterAll, describe, expect, it } from 'vitest';
import { createUserTrainer } from '../src/create-trainer';
import { OnnxWasmUserTrainer } from '../src/engines/wasm';
import { ReferenceUserTrainer } from '../src/engines/reference';
import {
  adapterErr,
  expectGradientsThroughAdamW,
  expectLlamaCreateRefusals,
  lastHiddenState,
  noAdapter,
  ortWasm as wasm,
  referenceDh1,
  relErrs,
  shippedLlama,
  splitSetup,
  splitSteps,
} from './split-harness';

const shipped = shippedLlama();
const c = shipped.config;
const lora: LoraConfig = { r: 8, alpha: 16, targets: [...LLAMA_LORA_TARGETS] };
const B = 2;
const T = 16;
const D = c.hiddenSize;
const setup = splitSetup(shipped, { plan: { k: 2, m: 3 }, lora, batch: B, seq: T, adamw: DEFAULT_LORA_TRAIN.adamw }, 7);
const { options, user: userModel } = setup;
const { plan } = options;

const batches = [0, 1, 2].map((i) => paddedRandomBatch(c, 300 + i, B, T));
/** the initial adapter (B = 0, as a run starts) */
const userInit = initLoraAdapter(c, lora, 7, 0, plan.k);
/** an adapter as after some training: B nonzero, so that dA is not zero */
const trained = withRandomLoraB(cloneAdapter(userInit), 99, 0.05);

/** The worst relative error of the wasm engine met per kind of value, printed once at the end. */
const worst = new Map<string, number>();
function track(kind: string, err: number): number {
  worst.set(kind, Math.max(worst.get(kind) ?? 0, err));
  return err;
}
afterAll(() => {
  const line = [...worst].map(([k, v]) => `${k} ${v.toExponential(1)}`).join(', ');
  console.log(`wasm engine, worst relative errors vs the reference: ${line}`);
});

describe('wasm user engine on the shipped LLaMA model against the reference', () => {
  it('h1 of the forward matches the reference within 1e-5', async () => {
    const trainer = await OnnxWasmUserTrainer.create(userModel, trained, options, wasm);
    const ref = ReferenceUserTrainer.create(userModel, trained, options);
    try {
      expect(trainer.kind).toBe('wasm');
      for (const batch of batches.slice(0, 2)) {
        const h1 = await trainer.forward(batch);
        expect(h1.length).toBe(B * T * D);
        const want = userSegmentForward(shipped, trained, batch, plan).h1;
        expect(maxRelErr(await ref.forward(batch), want)).toBe(0); // the segment is the model's blocks
        expect(track('h1', maxRelErr(h1, want))).toBeLessThan(1e-5);
      }
    } finally {
      trainer.destroy();
      ref.destroy();
    }
  });

  it('LoRA gradients (read through one AdamW step, see the header) match the reference within 1e-4', async () => {
    const want = await expectGradientsThroughAdamW(
      setup,
      trained,
      batches[0],
      (o) => OnnxWasmUserTrainer.create(userModel, trained, o, wasm),
      track,
    );
    expect(want.size).toBe(plan.k * lora.targets.length);
  });

  it("with the run's AdamW: the adapter and h1 after a step, three split steps, setAdapter restarts", async () => {
    const batch = batches[0];
    const dh1 = referenceDh1(setup, trained, batch);
    const pristine = cloneAdapter(trained);
    const ref = ReferenceUserTrainer.create(userModel, trained, options);
    const trainer = await OnnxWasmUserTrainer.create(userModel, trained, options, wasm);
    try {
      for (const t of [ref, trainer]) {
        await t.forward(batch);
        await t.backwardAndStep(dh1);
      }
      const after = await trainer.readAdapter();
      expect(adapterErr(after, pristine)).toBeGreaterThan(1e-3); // it moved
      expect(track('adapter after 1 step', adapterErr(after, await ref.readAdapter()))).toBeLessThan(1e-2);
      expect(adapterErr(trained, pristine)).toBe(0); // the caller's adapter is copied, never trained in place
      const h1 = await trainer.forward(batches[1]);
      expect(track('h1', maxRelErr(h1, await ref.forward(batches[1])))).toBeLessThan(1e-5);
      await trainer.backwardAndStep(referenceDh1(setup, trained, batches[1]));

      // a new turn: fresh adapter, fresh AdamW; three split steps follow the reference engine
      await trainer.setAdapter(userInit);
      await ref.setAdapter(userInit);
      expect(adapterErr(await trainer.readAdapter(), userInit)).toBe(0);
      // one batch three times: random tokens' losses differ by batch, so only the same batch shows training
      const steps = [batches[2], batches[2], batches[2]];
      const losses = await splitSteps(setup, trainer, steps);
      const refLosses = await splitSteps(setup, ref, steps);
      expect(losses[2]).toBeLessThan(losses[0]); // it trains
      expect(
        track('split losses', Math.max(...relErrs(losses, refLosses))),
        `losses ${losses} vs ${refLosses}`,
      ).toBeLessThan(1e-4);
      // (the adapters themselves are not compared here: from B = 0, three steps of ~lr each, so an element
      // whose gradient is ~0 and that flipped is off by 2 lr against a scale of ~3 lr: measured 1.4e-2)
      // setAdapter again: t restarts at 1, the same steps give the same losses (one thread: deterministic)
      await trainer.setAdapter(userInit);
      expect(await splitSteps(setup, trainer, steps.slice(0, 2))).toEqual(losses.slice(0, 2));
    } finally {
      ref.destroy();
      trainer.destroy();
    }
  });

  it('runs the head (labels on the device) on the real last hidden state like the reference', async () => {
    const trainer = await OnnxWasmUserTrainer.create(userModel, userInit, options, wasm);
    const ref = ReferenceUserTrainer.create(userModel, userInit, options);
    try {
      const batch = batches[0];
      const hL = lastHiddenState(shipped, batch);
      const want = headLossStep(shipped, hL, batch.targets, B, T);
      const refStep = await ref.headStep(hL, batch.targets);
      expect(refStep.loss).toBe(want.loss);
      const got = await trainer.headStep(hL, batch.targets);
      expect(got.count).toBe(want.count);
      expect(got.count).toBeLessThan(B * T); // the padded row's ignored targets are not counted
      expect(track('head loss', Math.abs(got.loss - want.loss) / want.loss)).toBeLessThan(1e-5);
      expect(track('dh', maxRelErr(got.dh, want.dh))).toBeLessThan(1e-4);
      for (let b = 0; b < B; b++) {
        const last = hL.subarray((b * T + T - 1) * D, (b * T + T) * D);
        const wantLogits = headLogits(shipped, last);
        expect(maxRelErr(await ref.headLogits(last), wantLogits)).toBe(0);
        expect(track('logits', maxRelErr(await trainer.headLogits(last), wantLogits)), `row ${b}`).toBeLessThan(1e-5);
      }
      // no counted target: loss 0, count 0, dh all zero, as the reference
      const none = await trainer.headStep(hL, new Int32Array(B * T).fill(IGNORE_INDEX));
      expect(none.count).toBe(0);
      expect(none.loss).toBe(0);
      expect(none.dh.every((v) => v === 0)).toBe(true);
      await expect(trainer.headLogits(new Float32Array(D + 1))).rejects.toThrow(
        /a last hidden state has 129 values, expected 128/,
      );
      const bad = batch.targets.slice();
      bad[5] = c.vocabSize;
      await expect(trainer.headStep(hL, bad)).rejects.toThrow(/target 1024 at position 5 is outside \[0, 1024\)/);
    } finally {
      trainer.destroy();
      ref.destroy();
    }
  });

  it("refuses the other family's LoRA, a missing pair, a segment without its weights and bad ids", async () => {
    await expectLlamaCreateRefusals(
      setup,
      userInit,
      'layers.1.mlp.down_proj',
      'layers.1.mlp.up_proj.weight',
      (model, adapter, o) => OnnxWasmUserTrainer.create(model, adapter, o, wasm),
    );
    await expect(OnnxWasmUserTrainer.create(userModel, userInit, { ...options, seq: 129 }, wasm)).rejects.toThrow(
      /129/,
    );
    const trainer = await OnnxWasmUserTrainer.create(userModel, userInit, options, wasm);
    try {
      const ids = batches[0].inputIds.slice();
      ids[9] = c.vocabSize;
      await expect(trainer.forward({ ...batches[0], inputIds: ids })).rejects.toThrow(
        /token id 1024 at position 9 is outside the vocabulary \[0, 1024\)/,
      );
      await expect(trainer.backwardAndStep(new Float32Array(B * T * D))).rejects.toThrow(/needs a forward first/);
      await trainer.forward(batches[0]);
      await expect(trainer.backwardAndStep(new Float32Array(5))).rejects.toThrow(/dL\/dh1 has 5 values, expected 4096/);
    } finally {
      trainer.destroy();
    }
  });
});

describe('createUserTrainer on the LLaMA user segment', () => {
  it("'wasm' and 'reference' build their engines, which agree", async () => {
    let asked = false;
    const w = await createUserTrainer(
      'wasm',
      userModel,
      trained,
      options,
      async () => {
        asked = true;
        return noAdapter();
      },
      wasm,
    );
    const r = await createUserTrainer('reference', userModel, trained, options, noAdapter, wasm);
    try {
      expect(asked).toBe(false);
      expect(w.trainer.kind).toBe('wasm');
      expect(w.reason).toBe(`the wasm engine was asked for: ${w.trainer.description}`);
      expect(r.trainer.kind).toBe('reference');
      expect(r.reason).toBe('the reference engine was asked for');
      const want = userSegmentForward(userModel, trained, batches[2], plan).h1;
      expect(maxRelErr(await r.trainer.forward(batches[2]), want)).toBe(0);
      expect(track('h1', maxRelErr(await w.trainer.forward(batches[2]), want))).toBeLessThan(1e-5);
    } finally {
      w.trainer.destroy();
      r.trainer.destroy();
    }
  });

  it('a GPT-2 adapter is the caller’s error whatever the engine', async () => {
    const gpt2Lora: LoraConfig = { r: 8, alpha: 16, targets: ['attn.c_attn'] };
    const o = { ...options, lora: gpt2Lora };
    const adapter = { config: gpt2Lora, layers: new Map() };
    for (const kind of ['wasm', 'reference'] as const)
      await expect(createUserTrainer(kind, userModel, adapter, o, noAdapter, wasm)).rejects.toThrow(
        /LoRA target "attn\.c_attn" is not one a llama-family model has/,
      );
  });
});
