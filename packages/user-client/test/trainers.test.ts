/**
 * The user trainers on the shipped model, each given only the decoded user segment (wte, wpe,
 * h.0), chained with the TypeScript edge and cloud (each with its own AdamW) for three split
 * steps, against the centralized reference run (gpt2ForwardBackward + one AdamW over the whole
 * adapter) on the same batches. Plan k=1, m=3; LoRA r 8, alpha 16 on the default targets;
 * batch 2 x 32 with a right-padded row; AdamW from DEFAULT_LORA_TRAIN.
 *
 * Tolerances (max |got - want| / max |want|, per tensor; the reasoning of
 * packages/lora-kernels/test/engine.test.ts):
 *  - reference engine: loss curve and adapter within 1e-6. The split and the central run call
 *    the same per-block functions on the same float32 data in the same order, and AdamW is
 *    elementwise, so they are in fact bit-identical; 1e-6 leaves room for a harmless reordering.
 *  - wgsl engine, loss curve: 1e-4 relative. The kernels accumulate in float32, the reference in
 *    float64 (~sqrt(K) * 6e-8 per matmul, 1e-5 on h1 and one step's loss); over three steps the
 *    adapters drift apart by what AdamW makes of that, still far inside 1e-4.
 *  - wgsl engine, LoRA gradients of each step against the central run's: 1e-4 (the backward
 *    chains more products and cancellations than the forward).
 *  - wgsl engine, adapter after three steps: against the reference AdamW applied, step by step,
 *    to the engine's own gradients, 1e-6 of the parameter scale. Not against the central run's
 *    adapter elementwise: AdamW's update is about lr * m / sqrt(v), insensitive to a gradient's
 *    size, so an element whose gradient is near zero on both sides may step either way; that
 *    compares nothing about the kernels. The central adapter is still compared, at 1e-2: ~1e-3
 *    is measured here (AdamW divides by small gradients, whose float32 error is large relative
 *    to themselves), and no element flips on these seeds (a flip is 2 lr = 1e-2 absolute, 0.1
 *    of A's scale and more of B's). On another device a flip would be legitimate: if only that
 *    check fails while the shadow and gradient checks pass, suspect a flip, not the kernels.
 *
 * The GPU is SwiftShader (software Vulkan) here, through the Node `webgpu` package.
 */
import {
  cloneAdapter,
  AdamW,
  DEFAULT_LORA_TRAIN,
  DEFAULT_LORA_TARGETS,
  initLoraAdapter,
  loraGradArrays,
  loraParameters,
  maxRelErr,
  paddedRandomBatch,
  Rng,
  type Gpt2Model,
  type LoraAdapter,
  type LoraConfig,
  type TokenBatch,
} from '@splitllm/model';
import { shipped } from './fixtures';
import { GpuContext, GpuError } from '@splitllm/lora-kernels';
import { describe, expect, it } from 'vitest';
import { createUserTrainer } from '../src/create-trainer';
import { ReferenceUserTrainer } from '../src/engines/reference';
import { WgslUserTrainer } from '../src/engines/wgsl';
import type { UserTrainer } from '../src/trainer';
import { adapterErr, asArrays, centralRun, noAdapter, relErrs, splitSetup, splitSteps, testGpu } from './split-harness';

const c = shipped.config;
const lora: LoraConfig = { r: 8, alpha: 16, targets: [...DEFAULT_LORA_TARGETS] };
const B = 2;
const T = 32;
const adamw = DEFAULT_LORA_TRAIN.adamw;
const SEED = 11;
const STEPS = 3;

// each tier as it would receive its segment: the trainers see only wte, wpe and h.0
const setup = splitSetup(shipped, { plan: { k: 1, m: 3 }, lora, batch: B, seq: T, adamw }, SEED);
const { options, user: userModel } = setup;
const { plan } = options;

const batches = Array.from({ length: STEPS }, (_, i) => paddedRandomBatch(c, 100 + i, B, T));
/** the user's initial adapter: blocks [0, k) of the same init the central run uses */
const userInit = initLoraAdapter(c, lora, SEED, 0, plan.k);

/** The centralized run: whole model, one AdamW over the whole adapter. */
const central = centralRun(setup, batches);

interface EngineCase {
  kind: 'reference' | 'wgsl';
  make(adapter: LoraAdapter): Promise<UserTrainer>;
  lossTol: number;
}

const engines: EngineCase[] = [
  { kind: 'reference', make: async (a) => ReferenceUserTrainer.create(userModel, a, options), lossTol: 1e-6 },
  { kind: 'wgsl', make: async (a) => WgslUserTrainer.create(await testGpu(), userModel, a, options), lossTol: 1e-4 },
];

describe('user trainers: three split steps against the central reference run', () => {
  for (const eng of engines) {
    it(`${eng.kind}: loss curve, gradients and adapter; setAdapter restarts the optimizer`, async () => {
      const pristine = cloneAdapter(userInit);
      const trainer = await eng.make(userInit);
      try {
        expect(trainer.kind).toBe(eng.kind);
        const shadow = cloneAdapter(userInit); // wgsl: reference AdamW on the engine's own gradients
        const shadowOpt = new AdamW(loraParameters(shadow), adamw);
        const losses = await splitSteps(setup, trainer, batches, async (s) => {
          if (!(trainer instanceof WgslUserTrainer)) return;
          const grads = await trainer.engine.readGrads(); // the step leaves the gradients in place
          for (const [path, g] of central.userGrads[s]) {
            expect(maxRelErr(grads.get(path)!.A, g.A), `step ${s + 1} ${path} dA`).toBeLessThan(1e-4);
            expect(maxRelErr(grads.get(path)!.B, g.B), `step ${s + 1} ${path} dB`).toBeLessThan(1e-4);
          }
          shadowOpt.step(loraGradArrays(grads));
        });
        expect(losses.every(Number.isFinite)).toBe(true);
        expect(losses[STEPS - 1]).toBeLessThan(losses[0]); // it trains
        expect(Math.max(...relErrs(losses, central.losses)), `losses ${losses} vs ${central.losses}`).toBeLessThan(
          eng.lossTol,
        );

        const after = await trainer.readAdapter();
        const vsCentral = adapterErr(after, central.userAdapter);
        if (eng.kind === 'reference') {
          expect(vsCentral).toBeLessThan(1e-6);
        } else {
          expect(
            adapterErr(after, asArrays(shadow)),
            'adapter vs reference AdamW on the engine gradients',
          ).toBeLessThan(1e-6);
          expect(vsCentral, 'adapter vs the central run (see the header)').toBeLessThan(1e-2);
        }
        // the caller's adapter was copied, never trained in place
        expect(adapterErr(userInit, asArrays(pristine))).toBe(0);
        // readAdapter gives a copy
        after.layers.get('h.0.attn.c_attn')!.B.data.fill(123);
        expect(adapterErr(await trainer.readAdapter(), asArrays(after))).toBeGreaterThan(1);

        // a new turn: the initial adapter again, fresh AdamW: the same losses (t restarts at 1)
        await trainer.setAdapter(userInit);
        const again = await splitSteps(setup, trainer, batches.slice(0, 2));
        if (eng.kind === 'reference') expect(again).toEqual(losses.slice(0, 2));
        else expect(Math.max(...relErrs(again, losses.slice(0, 2)))).toBeLessThan(1e-4);
      } finally {
        trainer.destroy();
      }
    });

    it(`${eng.kind}: refuses batches of another shape, bad ids, bad gradients and out-of-order calls`, async () => {
      const trainer = await eng.make(userInit);
      try {
        const batch = batches[0];
        await expect(trainer.backwardAndStep(new Float32Array(B * T * c.nEmbd))).rejects.toThrow(
          /needs a forward first/,
        );
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
        badIds[9] = -1;
        await expect(trainer.forward({ ...batch, inputIds: badIds })).rejects.toThrow(/token id -1 at position 9/);

        const h1 = await trainer.forward(batch);
        expect(h1.length).toBe(B * T * c.nEmbd);
        await expect(trainer.backwardAndStep(new Float32Array(5))).rejects.toThrow(
          /dL\/dh1 has 5 values, expected 8192/,
        );
        const nan = new Float32Array(h1.length);
        nan[3] = NaN;
        await expect(trainer.backwardAndStep(nan)).rejects.toThrow(/non-finite value at 3/);
        await trainer.backwardAndStep(new Rng(5).fillNormal(new Float32Array(h1.length), 1e-2));
        await expect(trainer.backwardAndStep(new Float32Array(h1.length))).rejects.toThrow(/needs a forward first/);

        // an adapter of another LoRA config is refused and the trainer keeps its own
        const before = await trainer.readAdapter();
        await expect(trainer.setAdapter(initLoraAdapter(c, { ...lora, r: 4 }, 1, 0, 1))).rejects.toThrow(
          /adapter is LoRA r=4 alpha=16/,
        );
        const missing = cloneAdapter(userInit);
        missing.layers.delete('h.0.attn.c_proj');
        await expect(trainer.setAdapter(missing)).rejects.toThrow(/no LoRA pair for h\.0\.attn\.c_proj/);
        expect(adapterErr(await trainer.readAdapter(), asArrays(before))).toBe(0);
      } finally {
        trainer.destroy();
      }
      await expect(trainer.forward(batches[0])).rejects.toThrow(/used after destroy/);
    });
  }

  it("both engines refuse a model that lacks the user segment's weights", async () => {
    const noBlock: Gpt2Model = {
      config: c,
      weights: new Map([...userModel.weights].filter(([n]) => n !== 'h.0.attn.c_proj.weight')),
    };
    expect(() => ReferenceUserTrainer.create(noBlock, userInit, options)).toThrow(
      /user segment has no tensor "h\.0\.attn\.c_proj\.weight"/,
    );
    await expect(WgslUserTrainer.create(await testGpu(), noBlock, userInit, options)).rejects.toThrow(
      /user segment has no tensor/,
    );
    expect(() => ReferenceUserTrainer.create(userModel, userInit, { ...options, plan: { k: 2, m: 3 } })).toThrow(
      /user segment has no tensor "h\.1\./,
    );
  });
});

describe('createUserTrainer', () => {
  it(`'auto' on a software adapter times one step of wgsl and of wasm, keeps the faster, \
and the trial leaves no trace`, async () => {
    const { trainer, reason } = await createUserTrainer('auto', userModel, userInit, options, testGpu);
    try {
      const gpu = await testGpu();
      const m =
        /^software WebGPU adapter \((.+)\): wgsl ([\d.]+) ms\/step vs wasm ([\d.]+) ms\/step, using (wgsl|wasm)$/.exec(
          reason,
        );
      expect(m, reason).not.toBeNull();
      expect(m![1]).toBe(gpu.adapter.name);
      const [wgslMs, wasmMs] = [Number(m![2]), Number(m![3])];
      expect(wgslMs).toBeGreaterThan(0);
      expect(wasmMs).toBeGreaterThan(0);
      expect(trainer.kind).toBe(m![4]);
      expect(trainer.kind).toBe(wasmMs <= wgslMs ? 'wasm' : 'wgsl');
      if (trainer.kind === 'wgsl') {
        expect(trainer.description).toMatch(
          new RegExp(
            /^wgsl on .+ \(software adapter\): /.source +
              /kernels matmul registers, low-rank registers, layernorm thread, attention naive$/.source,
          ),
        );
      } else {
        expect(trainer.description).toMatch(/^wasm \(onnxruntime-web .* wasm EP, 1 thread, intermediates kept\)$/);
      }
      // the timed steps were undone: the given adapter, a fresh AdamW (the central run's losses)
      expect(adapterErr(await trainer.readAdapter(), asArrays(userInit))).toBe(0);
      const losses = await splitSteps(setup, trainer, batches);
      expect(Math.max(...relErrs(losses, central.losses)), `losses ${losses} vs ${central.losses}`).toBeLessThan(1e-4);
    } finally {
      trainer.destroy();
    }
  });

  it("'auto' takes wgsl on a hardware adapter, without timing wasm", async () => {
    const gpu = await testGpu();
    // the same device described as a discrete GPU (isSoftwareAdapter looks at the name and the fallback flag)
    const hw = new GpuContext(gpu.device, {
      ...gpu.adapter,
      name: 'acme / discrete / AcmeForce 9000',
      isFallbackAdapter: false,
    });
    const { trainer, reason } = await createUserTrainer('auto', userModel, userInit, options, async () => hw);
    try {
      expect(trainer.kind).toBe('wgsl');
      expect(trainer.description).toMatch(/^wgsl on acme \/ discrete \/ AcmeForce 9000 \(GPU\): /);
      expect(reason).toBe(`WebGPU device available: ${trainer.description}`);
    } finally {
      trainer.destroy();
    }
  });

  it("'auto' takes wasm without a device, or when the segment does not fit the device, and says why", async () => {
    const a = await createUserTrainer('auto', userModel, userInit, options, noAdapter);
    expect(a.trainer.kind).toBe('wasm');
    expect(a.reason).toBe(
      `no WebGPU device (no WebGPU adapter (featureLevel core); no Vulkan driver found): ${a.trainer.description}`,
    );
    a.trainer.destroy();

    // the same device described with a 256 KiB binding limit: wte (1024 x 128 floats) is 512 KiB
    const gpu = await testGpu();
    const small = new GpuContext(gpu.device, { ...gpu.adapter, maxStorageBufferBindingSize: 256 * 1024 });
    const b = await createUserTrainer('auto', userModel, userInit, options, async () => small);
    expect(b.trainer.kind).toBe('wasm');
    expect(b.reason).toMatch(
      new RegExp(
        /^software WebGPU adapter \(.+\): the wgsl engine failed /.source +
          /\(.*wte\.weight needs 524288 bytes.*\): using wasm, [\d.]+ ms\/step$/.source,
      ),
    );
    expect(adapterErr(await b.trainer.readAdapter(), asArrays(userInit))).toBe(0);
    b.trainer.destroy();
  });

  it("'wgsl' without a device throws; 'reference' never asks for one", async () => {
    const noGpu = async (): Promise<GpuContext> => {
      throw new GpuError('NO_WEBGPU', 'navigator.gpu is missing');
    };
    const err = await createUserTrainer('wgsl', userModel, userInit, options, noGpu).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GpuError);
    expect((err as GpuError).code).toBe('NO_WEBGPU');
    expect((err as Error).message).toMatch(
      /the wgsl engine was asked for but there is no WebGPU device: navigator\.gpu is missing/,
    );
    await expect(
      createUserTrainer('wgsl', userModel, userInit, options, () => Promise.reject(new Error('boom'))),
    ).rejects.toThrow(/no WebGPU device: boom/);

    let asked = false;
    const r = await createUserTrainer('reference', userModel, userInit, options, async () => {
      asked = true;
      return testGpu();
    });
    expect(r.trainer.kind).toBe('reference');
    expect(asked).toBe(false);
    r.trainer.destroy();

    const w = await createUserTrainer('wgsl', userModel, userInit, options, testGpu);
    expect(w.trainer.kind).toBe('wgsl');
    expect(w.reason).toBe(`the wgsl engine was asked for: ${w.trainer.description}`);
    w.trainer.destroy();
    await expect(createUserTrainer('metal' as 'wgsl', userModel, userInit, options, testGpu)).rejects.toThrow(
      /unknown user engine "metal" \(wgsl, wasm, reference or auto\)/,
    );
  });
});
