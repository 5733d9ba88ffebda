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
  AdamW,
  blocksForward,
  cloneAdapter,
  cloudSegmentStep,
  decodeSegment,
  DEFAULT_LORA_TRAIN,
  edgeSegmentBackward,
  edgeSegmentForward,
  embedForward,
  encodeSegment,
  headLogits,
  headLossStep,
  IGNORE_INDEX,
  initLoraAdapter,
  type AdamWOptions,
  type AnyModel,
  type LlamaConfig,
  type LoraAdapter,
  type LoraConfig,
  type LoraGrads,
  loraGradArrays,
  loraParameters,
  maxRelErr,
  Rng,
  type SplitPlan,
  type TokenBatch,
  userSegmentBackward,
  userSegmentForward,
} from '@splitllm/model';
import { loadLlamaDir } from '@splitllm/model/node';
import { GpuError, type GpuContext } from '@splitllm/lora-kernels';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { createUserTrainer } from '../src/create-trainer';
import { OnnxWasmUserTrainer, type OnnxWasmOptions } from '../src/engines/wasm';
import { ReferenceUserTrainer } from '../src/engines/reference';
import type { UserTrainer, UserTrainerOptions } from '../src/trainer';

const dir = loadLlamaDir(fileURLToPath(new URL('../../assets/models/moby-llama-tiny', import.meta.url)));
const shipped: AnyModel = { config: dir.config, weights: dir.weights };
const c: LlamaConfig = dir.config;
const plan: SplitPlan = { k: 2, m: 3 };
const lora: LoraConfig = {
  r: 8,
  alpha: 16,
  targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
};
const B = 2;
const T = 16;
const D = c.hiddenSize;
const adamw = DEFAULT_LORA_TRAIN.adamw;
const options: UserTrainerOptions = { plan, lora, batch: B, seq: T, adamw };

/** what a page does: serve onnxruntime-web's dist/ and point wasmPaths at it (here a file: URL) */
const ortDist = dirname(createRequire(import.meta.url).resolve('onnxruntime-web/ort-wasm-simd-threaded.wasm'));
const wasm: OnnxWasmOptions = { wasmPaths: `${pathToFileURL(ortDist).href}/`, numThreads: 1 };

const tierModel = (tier: 'user' | 'edge' | 'cloud'): AnyModel =>
  decodeSegment(encodeSegment(shipped, plan, tier), tier).model;
const userModel = tierModel('user');
const edgeModel = tierModel('edge');
const cloudModel = tierModel('cloud');

/** B rows of T random tokens; row 1 is right-padded (eos ids, ignored targets) after 2T/3. */
function paddedBatch(seed: number): TokenBatch {
  const rng = new Rng(seed);
  const inputIds = new Int32Array(B * T);
  const targets = new Int32Array(B * T);
  const real = Math.floor((2 * T) / 3);
  for (let b = 0; b < B; b++) {
    const row = Array.from({ length: T + 1 }, () => rng.int(c.vocabSize));
    for (let t = 0; t < T; t++) {
      const pad = b === 1 && t >= real;
      inputIds[b * T + t] = pad ? c.eosTokenIds[0] : row[t];
      targets[b * T + t] = pad ? IGNORE_INDEX : row[t + 1];
    }
  }
  return { B, T, inputIds, targets };
}

const batches = [0, 1, 2].map((i) => paddedBatch(300 + i));
/** the initial adapter (B = 0, as a run starts) */
const userInit = initLoraAdapter(c, lora, 7, 0, plan.k);
/** an adapter as after some training: B nonzero, so that dA is not zero */
const trained = (() => {
  const a = cloneAdapter(userInit);
  const rng = new Rng(99);
  for (const p of a.layers.values()) rng.fillNormal(p.B.data, 0.05);
  return a;
})();

function adapterErr(got: LoraAdapter, want: LoraAdapter): number {
  expect([...got.layers.keys()].sort()).toEqual([...want.layers.keys()].sort());
  let worst = 0;
  for (const [path, w] of want.layers) {
    const g = got.layers.get(path)!;
    worst = Math.max(worst, maxRelErr(g.A.data, w.A.data), maxRelErr(g.B.data, w.B.data));
  }
  return worst;
}

/** dL/dh1 from the reference edge and cloud (fresh adapters) for the reference h1 of `adapter` on `batch`. */
function realDh1(adapter: LoraAdapter, batch: TokenBatch): Float32Array {
  const h1 = userSegmentForward(userModel, adapter, batch, plan).h1;
  const edgeA = initLoraAdapter(c, lora, 7, plan.k, plan.m);
  const cloudA = initLoraAdapter(c, lora, 7, plan.m, c.nLayer);
  const e = edgeSegmentForward(edgeModel, edgeA, h1, B, T, plan);
  const cl = cloudSegmentStep(cloudModel, cloudA, e.h2, batch.targets, B, T, plan);
  return edgeSegmentBackward(edgeModel, edgeA, e.state, cl.dh2).dh1;
}

/**
 * Split steps on `steps` (one batch each) with `trainer` as the user, the reference as edge and cloud
 * (fresh adapters and optimizers).
 */
async function splitChain(trainer: UserTrainer, steps: readonly TokenBatch[]): Promise<number[]> {
  const edgeA = initLoraAdapter(c, lora, 7, plan.k, plan.m);
  const cloudA = initLoraAdapter(c, lora, 7, plan.m, c.nLayer);
  const edgeOpt = new AdamW(loraParameters(edgeA), adamw);
  const cloudOpt = new AdamW(loraParameters(cloudA), adamw);
  const losses: number[] = [];
  for (const batch of steps) {
    const h1 = await trainer.forward(batch);
    const e = edgeSegmentForward(edgeModel, edgeA, h1, B, T, plan);
    const cl = cloudSegmentStep(cloudModel, cloudA, e.h2, batch.targets, B, T, plan);
    cloudOpt.step(loraGradArrays(cl.loraGrads));
    const eb = edgeSegmentBackward(edgeModel, edgeA, e.state, cl.dh2);
    edgeOpt.step(loraGradArrays(eb.loraGrads));
    await trainer.backwardAndStep(eb.dh1);
    losses.push(cl.loss);
  }
  return losses;
}

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

const relErrs = (got: number[], want: number[]) => got.map((g, i) => Math.abs(g - want[i]) / Math.abs(want[i]));

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
    const batch = batches[0];
    const dh1 = realDh1(trained, batch);
    const want: LoraGrads = userSegmentBackward(
      userModel,
      trained,
      userSegmentForward(userModel, trained, batch, plan).state,
      dh1,
    );
    expect(want.size).toBe(plan.k * lora.targets.length);
    let smallest = Infinity;
    for (const g of want.values())
      for (const a of [g.A, g.B])
        smallest = Math.min(
          smallest,
          a.reduce((m, v) => Math.max(m, Math.abs(v)), 0),
        );
    expect(smallest).toBeGreaterThan(0);
    const s = 1 / smallest;
    const sgd: AdamWOptions = { lr: 1e8 * s, beta1: 0.9, beta2: 0.999, eps: 1e8, weightDecay: 0 };
    const gradsOf = async (trainer: UserTrainer) => {
      await trainer.forward(batch);
      await trainer.backwardAndStep(dh1);
      const after = await trainer.readAdapter();
      const grads = new Map<string, { A: Float32Array; B: Float32Array }>();
      for (const [path, p] of trained.layers) {
        const q = after.layers.get(path)!;
        const g = (x: Float32Array, y: Float32Array) => x.map((v, i) => (v - y[i]) / -s);
        grads.set(path, { A: g(q.A.data, p.A.data), B: g(q.B.data, p.B.data) });
      }
      return grads;
    };
    const ref = ReferenceUserTrainer.create(userModel, trained, { ...options, adamw: sgd });
    const refGrads = await gradsOf(ref);
    ref.destroy();
    const trainer = await OnnxWasmUserTrainer.create(userModel, trained, { ...options, adamw: sgd }, wasm);
    try {
      const got = await gradsOf(trainer);
      expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
      for (const [path, w] of want) {
        // the read-out itself, on the reference engine: exact to float32 rounding
        expect(maxRelErr(refGrads.get(path)!.A, w.A), `${path} dA (reference)`).toBeLessThan(1e-6);
        expect(maxRelErr(refGrads.get(path)!.B, w.B), `${path} dB (reference)`).toBeLessThan(1e-6);
        expect(track('dA', maxRelErr(got.get(path)!.A, w.A)), `${path} dA`).toBeLessThan(1e-4);
        expect(track('dB', maxRelErr(got.get(path)!.B, w.B)), `${path} dB`).toBeLessThan(1e-4);
      }
    } finally {
      trainer.destroy();
    }
  });

  it("with the run's AdamW: the adapter and h1 after a step, three split steps, setAdapter restarts", async () => {
    const batch = batches[0];
    const dh1 = realDh1(trained, batch);
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
      await trainer.backwardAndStep(realDh1(trained, batches[1]));

      // a new turn: fresh adapter, fresh AdamW; three split steps follow the reference engine
      await trainer.setAdapter(userInit);
      await ref.setAdapter(userInit);
      expect(adapterErr(await trainer.readAdapter(), userInit)).toBe(0);
      // one batch three times: random tokens' losses differ by batch, so only the same batch shows training
      const steps = [batches[2], batches[2], batches[2]];
      const losses = await splitChain(trainer, steps);
      const refLosses = await splitChain(ref, steps);
      expect(losses[2]).toBeLessThan(losses[0]); // it trains
      expect(
        track('split losses', Math.max(...relErrs(losses, refLosses))),
        `losses ${losses} vs ${refLosses}`,
      ).toBeLessThan(1e-4);
      // (the adapters themselves are not compared here: from B = 0, three steps of ~lr each, so an element
      // whose gradient is ~0 and that flipped is off by 2 lr against a scale of ~3 lr: measured 1.4e-2)
      // setAdapter again: t restarts at 1, the same steps give the same losses (one thread: deterministic)
      await trainer.setAdapter(userInit);
      expect(await splitChain(trainer, steps.slice(0, 2))).toEqual(losses.slice(0, 2));
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
      const h0 = embedForward(shipped, batch.inputIds, B, T);
      const hL = blocksForward(shipped, undefined, h0, B, T, 0, c.nLayer).y;
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
    const gpt2Lora: LoraConfig = { r: 8, alpha: 16, targets: ['attn.c_attn'] };
    await expect(
      OnnxWasmUserTrainer.create(
        userModel,
        { config: gpt2Lora, layers: new Map() },
        { ...options, lora: gpt2Lora },
        wasm,
      ),
    ).rejects.toThrow(/LoRA target "attn\.c_attn" is not one a llama-family model has/);
    const missing = cloneAdapter(userInit);
    missing.layers.delete('layers.1.mlp.down_proj');
    await expect(OnnxWasmUserTrainer.create(userModel, missing, options, wasm)).rejects.toThrow(
      /no LoRA pair for layers\.1\.mlp\.down_proj/,
    );
    const noBlock: AnyModel = {
      config: c,
      weights: new Map([...userModel.weights].filter(([n]) => n !== 'layers.1.mlp.up_proj.weight')),
    };
    await expect(OnnxWasmUserTrainer.create(noBlock, userInit, options, wasm)).rejects.toThrow(
      /user segment has no tensor "layers\.1\.mlp\.up_proj\.weight"/,
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
  const noGpu = async (): Promise<GpuContext> => {
    throw new GpuError('NO_ADAPTER', 'no WebGPU adapter (featureLevel core); no Vulkan driver found');
  };

  it("'wasm' and 'reference' build their engines, which agree", async () => {
    let asked = false;
    const w = await createUserTrainer(
      'wasm',
      userModel,
      trained,
      options,
      async () => {
        asked = true;
        return noGpu();
      },
      wasm,
    );
    const r = await createUserTrainer('reference', userModel, trained, options, noGpu, wasm);
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
      await expect(createUserTrainer(kind, userModel, adapter, o, noGpu, wasm)).rejects.toThrow(
        /LoRA target "attn\.c_attn" is not one a llama-family model has/,
      );
  });
});
