/**
 * The 'wasm' user engine (blocks as ONNX graphs on onnxruntime-web's wasm EP, in Node here)
 * against the TypeScript reference, on the shipped model cut at k=2 (two blocks, so the
 * graphs' saved-intermediate hand-over between blocks is exercised), LoRA r 8 on the default
 * targets, batch 2 x 32 with a right-padded row. onnxruntime-web is pointed at its dist folder
 * through wasmPaths, as a page serving those files would do.
 *
 * Tolerances (max |got - want| / max |want| per tensor, as in trainers.test.ts; measured values
 * in brackets):
 *  - h1, before and after a step: 1e-5 [4e-7, 5e-7]. onnxruntime's MLAS kernels accumulate in
 *    float32 (blocked, FMA), the reference in float64: ~sqrt(K) * 6e-8 per matmul (K <= 512
 *    here), compounded over two blocks.
 *  - LoRA gradients: 1e-4 [4e-7], as for the WGSL engine: the backward chains more products and
 *    cancellations than the forward. They are read through the public interface: with AdamW's
 *    eps = 1e8 and lr = 1e8 * s, its first step moves each parameter by -s g / (1 + |g| / 1e8),
 *    i.e. by -s g, so (after - before) / -s is the gradient. s = 1 / (the smallest per-tensor
 *    max |g|) makes every tensor's step O(1) or more, above the parameters (< 0.1), so float32
 *    rounding of p + step costs ~1e-7 of each tensor's scale: the read-out is checked on the
 *    reference engine itself at 1e-6 [1e-7].
 *  - with the run's AdamW (DEFAULT_LORA_TRAIN, eps 1e-8): adapter after one step 1e-2 [3e-6]
 *    and the loss curve of three split steps 1e-4 [1e-8], the WGSL engine's bounds. AdamW's
 *    first step is ~lr * sign(g) per element, so an element whose gradient is ~1e-8 on both
 *    sides may step either way (a "flip", 2 lr = 1e-2 absolute): the adapter is only compared
 *    loosely (the reasoning of trainers.test.ts; the gradient check above is the precise one).
 * onnxruntime-web runs one thread here, so repeating steps gives bit-identical losses.
 */
import {
  cloneAdapter,
  DEFAULT_LORA_TARGETS,
  DEFAULT_LORA_TRAIN,
  initLoraAdapter,
  maxRelErr,
  Rng,
  userSegmentForward,
  withRandomLoraB,
  type Gpt2Model,
  type LoraConfig,
  type TokenBatch,
} from '@splitllm/model';
import { paddedRandomBatch, shipped } from './fixtures';
import { describe, expect, it } from 'vitest';
import { OnnxWasmUserTrainer } from '../src/engines/wasm';
import { createUserTrainer } from '../src/create-trainer';
import { ReferenceUserTrainer } from '../src/engines/reference';
import {
  adapterErr,
  asArrays,
  expectGradientsThroughAdamW,
  noAdapter,
  ortWasm as wasm,
  referenceDh1,
  relErrs,
  splitSetup,
  splitSteps,
} from './split-harness';

const c = shipped.config;
const lora: LoraConfig = { r: 8, alpha: 16, targets: [...DEFAULT_LORA_TARGETS] };
const B = 2;
const T = 32;
const D = c.nEmbd;
const setup = splitSetup(shipped, { plan: { k: 2, m: 3 }, lora, batch: B, seq: T, adamw: DEFAULT_LORA_TRAIN.adamw }, 7);
const { options, user: userModel } = setup;
const { plan } = options;

const batches = [0, 1, 2].map((i) => paddedRandomBatch(c, 200 + i, B, T));
/** the initial adapter (B = 0, as a run starts) */
const userInit = initLoraAdapter(c, lora, 7, 0, plan.k);
/** an adapter as after some training: B non-zero, so that dA is not zero */
const trained = withRandomLoraB(cloneAdapter(userInit), 99, 0.05);

describe('wasm user engine (onnxruntime-web, wasm EP) against the reference', () => {
  it('h1 of the forward matches the reference within 1e-5', async () => {
    const trainer = await OnnxWasmUserTrainer.create(userModel, trained, options, wasm);
    try {
      expect(trainer.kind).toBe('wasm');
      expect(trainer.description).toMatch(/^wasm \(onnxruntime-web 1\.30\.0 wasm EP, 1 thread, intermediates kept\)$/);
      for (const batch of batches.slice(0, 2)) {
        const h1 = await trainer.forward(batch);
        expect(h1.length).toBe(B * T * D);
        const want = userSegmentForward(userModel, trained, batch, plan).h1;
        expect(maxRelErr(h1, want)).toBeLessThan(1e-5);
      }
    } finally {
      trainer.destroy();
    }
  });

  it('LoRA gradients (read through one AdamW step, see the header) match the reference within 1e-4', async () => {
    await expectGradientsThroughAdamW(setup, trained, batches[0], (o) =>
      OnnxWasmUserTrainer.create(userModel, trained, o, wasm),
    );
  });

  it("with the run's AdamW: the adapter and h1 after a step, three split steps, setAdapter restarts", async () => {
    const batch = batches[0];
    const dh1 = referenceDh1(setup, trained, batch);
    const ref = ReferenceUserTrainer.create(userModel, trained, options);
    const pristine = cloneAdapter(trained);
    const trainer = await OnnxWasmUserTrainer.create(userModel, trained, options, wasm);
    try {
      for (const t of [ref, trainer]) {
        await t.forward(batch);
        await t.backwardAndStep(dh1);
      }
      const refAfter = await ref.readAdapter();
      const after = await trainer.readAdapter();
      expect(adapterErr(after, asArrays(pristine))).toBeGreaterThan(1e-3); // it moved
      expect(adapterErr(after, asArrays(refAfter))).toBeLessThan(1e-2);
      // the caller's adapter was copied, never trained in place
      expect(adapterErr(trained, asArrays(pristine))).toBe(0);
      // readAdapter gives a copy
      after.layers.get('h.0.attn.c_attn')!.B.data.fill(123);
      expect(adapterErr(await trainer.readAdapter(), asArrays(after))).toBeGreaterThan(1);
      // the forward after the step, and a second step
      const h1 = await trainer.forward(batches[1]);
      expect(maxRelErr(h1, await ref.forward(batches[1]))).toBeLessThan(1e-5);
      await trainer.backwardAndStep(referenceDh1(setup, trained, batches[1]));

      // a new turn: fresh adapter, fresh AdamW; three split steps follow the reference engine
      await trainer.setAdapter(userInit);
      await ref.setAdapter(userInit);
      expect(adapterErr(await trainer.readAdapter(), asArrays(userInit))).toBe(0);
      const losses = await splitSteps(setup, trainer, batches);
      const refLosses = await splitSteps(setup, ref, batches);
      expect(losses[2]).toBeLessThan(losses[0]); // it trains
      expect(Math.max(...relErrs(losses, refLosses)), `losses ${losses} vs ${refLosses}`).toBeLessThan(1e-4);
      // setAdapter again: t restarts at 1, the same steps give the same losses (one thread: deterministic)
      await trainer.setAdapter(userInit);
      expect(await splitSteps(setup, trainer, batches.slice(0, 2))).toEqual(losses.slice(0, 2));
    } finally {
      ref.destroy();
      trainer.destroy();
    }
  });

  it(`refuses batches of another shape, bad ids, bad gradients and out-of-order calls, \
like the other engines`, async () => {
    const trainer = await OnnxWasmUserTrainer.create(userModel, userInit, options, wasm);
    try {
      const batch = batches[0];
      await expect(trainer.backwardAndStep(new Float32Array(B * T * D))).rejects.toThrow(/needs a forward first/);
      const wide: TokenBatch = { B: 3, T, inputIds: new Int32Array(3 * T), targets: new Int32Array(3 * T) };
      await expect(trainer.forward(wide)).rejects.toThrow(/takes batches of 2 x 32 tokens, got 3 x 32/);
      const short: TokenBatch = { B, T: 16, inputIds: new Int32Array(B * 16), targets: new Int32Array(B * 16) };
      await expect(trainer.forward(short)).rejects.toThrow(/takes batches of 2 x 32 tokens, got 2 x 16/);
      await expect(trainer.forward({ ...batch, inputIds: batch.inputIds.subarray(1) })).rejects.toThrow(
        /needs 64 input ids and targets, got 63 and 64/,
      );
      const badIds = batch.inputIds.slice();
      badIds[9] = c.vocabSize;
      await expect(trainer.forward({ ...batch, inputIds: badIds })).rejects.toThrow(
        /token id 1024 at position 9 is outside the vocabulary \[0, 1024\)/,
      );

      const h1 = await trainer.forward(batch);
      await expect(trainer.backwardAndStep(new Float32Array(5))).rejects.toThrow(/dL\/dh1 has 5 values, expected 8192/);
      const nan = new Float32Array(h1.length);
      nan[3] = NaN;
      await expect(trainer.backwardAndStep(nan)).rejects.toThrow(/non-finite value at 3/);
      const inf = new Float32Array(h1.length);
      inf[70] = -Infinity;
      await expect(trainer.backwardAndStep(inf)).rejects.toThrow(/non-finite value at 70/);
      // refused gradients leave the forward usable
      await trainer.backwardAndStep(new Rng(5).fillNormal(new Float32Array(h1.length), 1e-2));
      await expect(trainer.backwardAndStep(new Float32Array(h1.length))).rejects.toThrow(/needs a forward first/);

      // setAdapter drops a pending forward; a refused adapter leaves the trainer's own
      await trainer.forward(batch);
      await trainer.setAdapter(userInit);
      await expect(trainer.backwardAndStep(new Float32Array(h1.length))).rejects.toThrow(/needs a forward first/);
      const before = await trainer.readAdapter();
      await expect(trainer.setAdapter(initLoraAdapter(c, { ...lora, r: 4 }, 1, 0, plan.k))).rejects.toThrow(
        /adapter is LoRA r=4 alpha=16/,
      );
      const missing = cloneAdapter(userInit);
      missing.layers.delete('h.1.attn.c_proj');
      await expect(trainer.setAdapter(missing)).rejects.toThrow(/no LoRA pair for h\.1\.attn\.c_proj/);
      expect(adapterErr(await trainer.readAdapter(), asArrays(before))).toBe(0);
    } finally {
      trainer.destroy();
    }
    await expect(trainer.forward(batches[0])).rejects.toThrow(/used after destroy/);
    trainer.destroy(); // twice is harmless
  });

  it('refuses bad options, weights and adapters before loading anything', async () => {
    await expect(
      OnnxWasmUserTrainer.create(userModel, userInit, { ...options, plan: { k: 3, m: 3 } }, wasm),
    ).rejects.toThrow(/split plan k=3, m=3 is invalid/);
    await expect(OnnxWasmUserTrainer.create(userModel, userInit, { ...options, seq: 129 }, wasm)).rejects.toThrow(
      /sequence length 129 exceeds the model's 128 positions/,
    );
    const noBlock: Gpt2Model = {
      config: c,
      weights: new Map([...userModel.weights].filter(([n]) => n !== 'h.1.mlp.c_fc.weight')),
    };
    await expect(OnnxWasmUserTrainer.create(noBlock, userInit, options, wasm)).rejects.toThrow(
      /user segment has no tensor "h\.1\.mlp\.c_fc\.weight"/,
    );
    await expect(
      OnnxWasmUserTrainer.create(userModel, initLoraAdapter(c, lora, 7, 0, 1), options, wasm),
    ).rejects.toThrow(/no LoRA pair for h\.1\./);
    await expect(OnnxWasmUserTrainer.create(userModel, userInit, options, { numThreads: 0 })).rejects.toThrow(
      /numThreads must be a positive integer, got 0/,
    );
  });
});

describe("createUserTrainer and 'wasm'", () => {
  it("'wasm' builds the wasm engine without asking for a GPU", async () => {
    let asked = false;
    const r = await createUserTrainer(
      'wasm',
      userModel,
      userInit,
      options,
      async () => {
        asked = true;
        return noAdapter();
      },
      wasm,
    );
    try {
      expect(asked).toBe(false);
      expect(r.trainer.kind).toBe('wasm');
      expect(r.reason).toBe(`the wasm engine was asked for: ${r.trainer.description}`);
      const h1 = await r.trainer.forward(batches[0]);
      expect(maxRelErr(h1, userSegmentForward(userModel, userInit, batches[0], plan).h1)).toBeLessThan(1e-5);
    } finally {
      r.trainer.destroy();
    }
  });

  it("'auto' without a WebGPU adapter takes wasm and says why", async () => {
    const r = await createUserTrainer('auto', userModel, userInit, options, noAdapter, wasm);
    try {
      expect(r.trainer.kind).toBe('wasm');
      expect(r.reason).toBe(
        `no WebGPU device (no WebGPU adapter (featureLevel core); no Vulkan driver found): ${r.trainer.description}`,
      );
    } finally {
      r.trainer.destroy();
    }
    // a getGpu that throws something else
    const s = await createUserTrainer('auto', userModel, userInit, options, () =>
      Promise.reject(new Error('navigator.gpu is missing')),
    );
    expect(s.trainer.kind).toBe('wasm');
    expect(s.reason).toMatch(/^no WebGPU device \(navigator\.gpu is missing\): wasm /);
    s.trainer.destroy();
  });

  it("a wasm engine that cannot start: an Error for 'wasm', the reference with the reason for 'auto'", async () => {
    // the runtime runs with 1 thread in this worker (started here if no test did yet): asking for 3 cannot be honoured
    (await OnnxWasmUserTrainer.create(userModel, userInit, options, wasm)).destroy();
    await expect(createUserTrainer('wasm', userModel, userInit, options, noAdapter, { numThreads: 3 })).rejects.toThrow(
      new RegExp(
        /the wasm engine was asked for but could not start: wasm engine: /.source +
          /onnxruntime-web already runs with 1 thread\(s\) in this page\/worker; /.source +
          /it cannot switch to 3/.source,
      ),
    );
    const r = await createUserTrainer('auto', userModel, userInit, options, noAdapter, { numThreads: 3 });
    expect(r.trainer.kind).toBe('reference');
    expect(r.reason).toMatch(
      new RegExp(
        /^no WebGPU device \(no WebGPU adapter .*\) and the wasm engine could not start /.source +
          /\(wasm engine: onnxruntime-web /.source +
          /already runs with 1 thread\(s\).*\): reference \(TypeScript\) engine$/.source,
      ),
    );
    r.trainer.destroy();
    // bad options stay the caller's error, whatever the engine
    await expect(
      createUserTrainer('wasm', userModel, userInit, { ...options, batch: 0 }, noAdapter, wasm),
    ).rejects.toThrow(/batch 0 x seq 32 must be positive integers/);
  });
});
