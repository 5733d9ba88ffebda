/**
 * What the user-trainer tests of both families share beyond fixtures.ts's shipped GPT-2: the shipped
 * LLaMA model, a split set-up (each tier's decoded segment under one plan, and the trainer options),
 * the reference edge and cloud around a user trainer (split steps, a real dL/dh1), the read-out of a
 * trainer's LoRA gradients through one AdamW step, adapter and loss comparisons, onnxruntime-web's
 * wasm options, the GPU getters, and the refusals both LLaMA engines share. One copy, so the engines'
 * tests cannot drift apart in how they drive a trainer.
 */
import {
  AdamW,
  blocksForward,
  cloneAdapter,
  cloudSegmentStep,
  decodeSegment,
  edgeSegmentBackward,
  edgeSegmentForward,
  embedForward,
  encodeSegment,
  initLoraAdapter,
  loraGradArrays,
  loraParameters,
  maxRelErr,
  modelDims,
  modelForwardBackward,
  userSegmentBackward,
  userSegmentForward,
  type AdamWOptions,
  type AnyModel,
  type LlamaModel,
  type LoraAdapter,
  type LoraConfig,
  type LoraGrads,
  type TokenBatch,
} from '@splitllm/model';
import { loadLlamaDir } from '@splitllm/model/node';
import { GpuError, type GpuContext } from '@splitllm/lora-kernels';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { expect } from 'vitest';
import type { OnnxWasmOptions } from '../src/engines/wasm';
import { ReferenceUserTrainer } from '../src/engines/reference';
import { nodeGpu } from '../src/node/gpu';
import type { UserTrainer, UserTrainerOptions } from '../src/trainer';

let llama: LlamaModel | undefined;
/** The shipped moby-llama-tiny (hidden 128, 4 layers, GQA 4/2, SwiGLU 344, vocab 1024), loaded once. */
export function shippedLlama(): LlamaModel {
  if (!llama) {
    const dir = loadLlamaDir(fileURLToPath(new URL('../../assets/models/moby-llama-tiny', import.meta.url)));
    llama = { config: dir.config, weights: dir.weights };
  }
  return llama;
}

/** What a page does: serve onnxruntime-web's dist/ and point wasmPaths at it (here a file: URL). */
const ortDist = dirname(createRequire(import.meta.url).resolve('onnxruntime-web/ort-wasm-simd-threaded.wasm'));
export const ortWasm: OnnxWasmOptions = { wasmPaths: `${pathToFileURL(ortDist).href}/`, numThreads: 1 };

let gpuPromise: Promise<GpuContext> | undefined;
/** The Node WebGPU device (SwiftShader here), created once per test file. */
export const testGpu = (): Promise<GpuContext> => (gpuPromise ??= nodeGpu());

/** A getGpu for a machine without a WebGPU adapter. */
export const noAdapter = async (): Promise<GpuContext> => {
  throw new GpuError('NO_ADAPTER', 'no WebGPU adapter (featureLevel core); no Vulkan driver found');
};

/** A model, one plan / LoRA / batch shape / AdamW, and each tier's segment as that tier receives it. */
export interface SplitSetup {
  model: AnyModel;
  options: UserTrainerOptions;
  /** the init seed of the reference edge's and cloud's adapters */
  seed: number;
  user: AnyModel;
  edge: AnyModel;
  cloud: AnyModel;
}

export function splitSetup(model: AnyModel, options: UserTrainerOptions, seed: number): SplitSetup {
  const segment = (tier: 'user' | 'edge' | 'cloud') =>
    decodeSegment(encodeSegment(model, options.plan, tier), tier).model;
  return { model, options, seed, user: segment('user'), edge: segment('edge'), cloud: segment('cloud') };
}

/** The reference edge's and cloud's fresh adapters (blocks [k, m) and [m, L) of the seed's init). */
function edgeAndCloudAdapters(s: SplitSetup): [LoraAdapter, LoraAdapter] {
  const { config } = s.model;
  const { plan, lora } = s.options;
  return [
    initLoraAdapter(config, lora, s.seed, plan.k, plan.m),
    initLoraAdapter(config, lora, s.seed, plan.m, modelDims(config).layers),
  ];
}

/** dL/dh1 from the reference edge and cloud (fresh adapters) for the reference h1 of `adapter` on `batch`. */
export function referenceDh1(s: SplitSetup, adapter: LoraAdapter, batch: TokenBatch): Float32Array {
  const { plan, batch: B, seq: T } = s.options;
  const h1 = userSegmentForward(s.user, adapter, batch, plan).h1;
  const [edgeA, cloudA] = edgeAndCloudAdapters(s);
  const e = edgeSegmentForward(s.edge, edgeA, h1, B, T, plan);
  const cl = cloudSegmentStep(s.cloud, cloudA, e.h2, batch.targets, B, T, plan);
  return edgeSegmentBackward(s.edge, edgeA, e.state, cl.dh2).dh1;
}

/**
 * Split steps, one batch each, with `trainer` as the user and the reference as edge and cloud (fresh
 * adapters and optimizers each call); the cloud's losses. `afterStep` runs after each step.
 */
export async function splitSteps(
  s: SplitSetup,
  trainer: UserTrainer,
  batches: readonly TokenBatch[],
  afterStep?: (step: number) => Promise<void>,
): Promise<number[]> {
  const { plan, batch: B, seq: T, adamw } = s.options;
  const [edgeA, cloudA] = edgeAndCloudAdapters(s);
  const edgeOpt = new AdamW(loraParameters(edgeA), adamw);
  const cloudOpt = new AdamW(loraParameters(cloudA), adamw);
  const losses: number[] = [];
  for (const [step, batch] of batches.entries()) {
    const h1 = await trainer.forward(batch);
    const e = edgeSegmentForward(s.edge, edgeA, h1, B, T, plan);
    const cl = cloudSegmentStep(s.cloud, cloudA, e.h2, batch.targets, B, T, plan);
    cloudOpt.step(loraGradArrays(cl.loraGrads));
    const eb = edgeSegmentBackward(s.edge, edgeA, e.state, cl.dh2);
    edgeOpt.step(loraGradArrays(eb.loraGrads));
    await trainer.backwardAndStep(eb.dh1);
    losses.push(cl.loss);
    await afterStep?.(step);
  }
  return losses;
}

/**
 * The centralized run the split steps must follow: the whole model (modelForwardBackward), one AdamW
 * over the whole adapter (the seed's init), one step per batch; its losses, and the user blocks' part
 * of each step's gradients and of the final adapter.
 */
export function centralRun(
  s: SplitSetup,
  batches: readonly TokenBatch[],
): { losses: number[]; userGrads: LoraGrads[]; userAdapter: AdapterArrays } {
  const { config } = s.model;
  const { plan, lora, adamw } = s.options;
  const userKeys = new Set(initLoraAdapter(config, lora, s.seed, 0, plan.k).layers.keys());
  const userPaths = <V>(m: Map<string, V>) => new Map([...m].filter(([path]) => userKeys.has(path)));
  const adapter = initLoraAdapter(config, lora, s.seed);
  const opt = new AdamW(loraParameters(adapter), adamw);
  const losses: number[] = [];
  const userGrads: LoraGrads[] = [];
  for (const batch of batches) {
    const r = modelForwardBackward(s.model, adapter, batch);
    losses.push(r.loss);
    userGrads.push(userPaths(r.loraGrads));
    opt.step(loraGradArrays(r.loraGrads));
  }
  return { losses, userGrads, userAdapter: userPaths(asArrays(adapter)) };
}

/** The last hidden state of the whole model on `batch` (no LoRA): what the head receives in a run. */
export function lastHiddenState(model: AnyModel, batch: TokenBatch): Float32Array {
  const h0 = embedForward(model, batch.inputIds, batch.B, batch.T);
  return blocksForward(model, undefined, h0, batch.B, batch.T, 0, modelDims(model.config).layers).y;
}

export type AdapterArrays = Map<string, { A: Float32Array; B: Float32Array }>;

export const asArrays = (a: LoraAdapter): AdapterArrays =>
  new Map([...a.layers].map(([k, p]) => [k, { A: p.A.data, B: p.B.data }]));

/** The worst maxRelErr over every A and B; the two must hold the same module paths. */
export function adapterErr(got: LoraAdapter, want: LoraAdapter | AdapterArrays): number {
  const w = want instanceof Map ? want : asArrays(want);
  expect([...got.layers.keys()].sort()).toEqual([...w.keys()].sort());
  let worst = 0;
  for (const [path, p] of w) {
    const g = got.layers.get(path)!;
    worst = Math.max(worst, maxRelErr(g.A.data, p.A), maxRelErr(g.B.data, p.B));
  }
  return worst;
}

export const relErrs = (got: number[], want: number[]): number[] =>
  got.map((g, i) => Math.abs(g - want[i]) / Math.abs(want[i]));

/**
 * The LoRA gradients of a user engine, read through its public interface and held to the reference's
 * (userSegmentBackward on the reference dL/dh1 of `batch`): with AdamW's eps = 1e8 and lr = 1e8 s, the
 * first step moves each parameter by -s g / (1 + |g| / 1e8), i.e. by -s g, so (after - before) / -s is
 * the gradient. s = 1 / (the smallest per-tensor max |g|) makes every tensor's step O(1) or more, above
 * the parameters, so float32 rounding of p + step costs ~1e-7 of each tensor's scale: the read-out
 * itself is checked on the reference engine at 1e-6, the engine at 1e-4 (see each test's header).
 * `make` creates the engine on `adapter` with the options it is given; `note` sees each engine error.
 * Returns the reference gradients.
 */
export async function expectGradientsThroughAdamW(
  s: SplitSetup,
  adapter: LoraAdapter,
  batch: TokenBatch,
  make: (options: UserTrainerOptions) => Promise<UserTrainer>,
  note: (kind: 'dA' | 'dB', err: number) => number = (_kind, err) => err,
): Promise<LoraGrads> {
  const dh1 = referenceDh1(s, adapter, batch);
  const want = userSegmentBackward(
    s.user,
    adapter,
    userSegmentForward(s.user, adapter, batch, s.options.plan).state,
    dh1,
  );
  let smallest = Infinity;
  for (const g of want.values())
    for (const a of [g.A, g.B])
      smallest = Math.min(
        smallest,
        a.reduce((m, v) => Math.max(m, Math.abs(v)), 0),
      );
  expect(smallest).toBeGreaterThan(0);
  const step = 1 / smallest;
  const sgd: AdamWOptions = { lr: 1e8 * step, beta1: 0.9, beta2: 0.999, eps: 1e8, weightDecay: 0 };
  const options = { ...s.options, adamw: sgd };
  const gradsOf = async (trainer: UserTrainer): Promise<AdapterArrays> => {
    await trainer.forward(batch);
    await trainer.backwardAndStep(dh1);
    const after = await trainer.readAdapter();
    const grads: AdapterArrays = new Map();
    for (const [path, p] of adapter.layers) {
      const q = after.layers.get(path)!;
      const g = (x: Float32Array, y: Float32Array) => x.map((v, i) => (v - y[i]) / -step);
      grads.set(path, { A: g(q.A.data, p.A.data), B: g(q.B.data, p.B.data) });
    }
    return grads;
  };
  const ref = ReferenceUserTrainer.create(s.user, adapter, options);
  const refGrads = await gradsOf(ref);
  ref.destroy();
  const trainer = await make(options);
  try {
    const got = await gradsOf(trainer);
    expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
    for (const [path, w] of want) {
      // the read-out itself, on the reference engine: exact to float32 rounding
      expect(maxRelErr(refGrads.get(path)!.A, w.A), `${path} dA (reference)`).toBeLessThan(1e-6);
      expect(maxRelErr(refGrads.get(path)!.B, w.B), `${path} dB (reference)`).toBeLessThan(1e-6);
      expect(note('dA', maxRelErr(got.get(path)!.A, w.A)), `${path} dA`).toBeLessThan(1e-4);
      expect(note('dB', maxRelErr(got.get(path)!.B, w.B)), `${path} dB`).toBeLessThan(1e-4);
    }
  } finally {
    trainer.destroy();
  }
  return want;
}

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * What a LLaMA user engine refuses at creation: GPT-2 LoRA targets, `adapter` without the pair
 * `missingPair`, and the user segment without the tensor `droppedTensor`.
 */
export async function expectLlamaCreateRefusals(
  s: SplitSetup,
  adapter: LoraAdapter,
  missingPair: string,
  droppedTensor: string,
  create: (model: AnyModel, adapter: LoraAdapter, options: UserTrainerOptions) => Promise<UserTrainer>,
): Promise<void> {
  const gpt2Lora: LoraConfig = { r: 8, alpha: 16, targets: ['attn.c_attn'] };
  await expect(
    create(s.user, { config: gpt2Lora, layers: new Map() }, { ...s.options, lora: gpt2Lora }),
  ).rejects.toThrow(/LoRA target "attn\.c_attn" is not one a llama-family model has/);
  const missing = cloneAdapter(adapter);
  missing.layers.delete(missingPair);
  await expect(create(s.user, missing, s.options)).rejects.toThrow(
    new RegExp(`no LoRA pair for ${escapeRegExp(missingPair)}`),
  );
  const without: AnyModel = {
    config: s.model.config,
    weights: new Map([...s.user.weights].filter(([n]) => n !== droppedTensor)),
  };
  await expect(create(without, adapter, s.options)).rejects.toThrow(
    new RegExp(`user segment has no tensor "${escapeRegExp(droppedTensor)}"`),
  );
}
