/**
 * Test harness for kernels: one Node WebGPU device per test file (software Vulkan here), upload,
 * run, read back, and the error measure every kernel test states its tolerance in; for the
 * engine tests of both families, a padded batch, the reference's edge and cloud after h1, and
 * the input checks and adapter round trip that both engines share (engine-base.ts).
 */
import {
  cloudSegmentStep,
  edgeSegmentBackward,
  edgeSegmentForward,
  initLoraAdapter,
  maxRelErr,
  modelDims,
  paddedRandomBatch,
  randomGpt2Weights,
  Rng,
  type AnyModel,
  type Gpt2Config,
  type Gpt2Model,
  type LoraAdapter,
  type LoraConfig,
  type ModelConfig,
  type SplitPlan,
  type TokenBatch,
  withRandomLoraB,
} from '@splitllm/model';
import { expect } from 'vitest';
import type { UserEngine } from '../src/family-engine';
import type { Dispatch, GpuContext } from '../src/gpu';
import { nodeKernelDevice } from '../src/node';

let shared: Promise<GpuContext> | undefined;

/** The test device; created once per file. */
export function testDevice(): Promise<GpuContext> {
  shared ??= nodeKernelDevice();
  return shared;
}

/** Runs the dispatches and reads back `count` floats of `out`. */
export async function runAndRead(
  gpu: GpuContext,
  dispatches: Dispatch[],
  out: GPUBuffer,
  count: number,
): Promise<Float32Array> {
  gpu.run(dispatches);
  return gpu.readF32(out, count);
}

export function randn(n: number, rng: Rng, scale = 1): Float32Array {
  return rng.fillNormal(new Float32Array(n), scale);
}

/**
 * The measure every kernel test states its tolerance in (max |got - want| / max |want|, from
 * @splitllm/model). Float32 kernels summing K products in another order than the
 * float64-accumulating reference differ by about sqrt(K) * 2^-24 of the scale.
 */
export { maxRelErr };

/** GPT-2's init with the linear weights scaled up and noise on biases and norms, so every path carries gradient. */
export function scaledRandomModel(config: Gpt2Config, seed: number): Gpt2Model {
  const weights = randomGpt2Weights(config, seed);
  const rng = new Rng(seed + 1);
  for (const [name, t] of weights) {
    if (name.endsWith('.weight') && !name.includes('ln_')) for (let i = 0; i < t.data.length; i++) t.data[i] *= 5;
    else for (let i = 0; i < t.data.length; i++) t.data[i] += 0.1 * rng.normal();
  }
  return { config, weights };
}

/** An adapter with B random too: a fresh B = 0 would make every dA vanish and weaken the test. */
export function adapterWithRandomB(config: Gpt2Config, lora: LoraConfig, seed: number): LoraAdapter {
  return withRandomLoraB(initLoraAdapter(config, lora, seed), seed + 1, 0.05);
}

/** Two rows of T tokens; the second is right-padded (the pad id, ignored targets) after 2T/3. */
export function batchOf(c: ModelConfig, T: number, seed: number): TokenBatch {
  return paddedRandomBatch(c, seed, 2, T);
}

/** The reference's edge and cloud on h1: loss and dL/dh1. */
export function continuation(model: AnyModel, a: LoraAdapter, h1: Float32Array, batch: TokenBatch, plan: SplitPlan) {
  const e = edgeSegmentForward(model, a, h1, batch.B, batch.T, plan);
  const cl = cloudSegmentStep(model, a, e.h2, batch.targets, batch.B, batch.T, plan);
  const back = edgeSegmentBackward(model, a, e.state, cl.dh2);
  return { loss: cl.loss, dh1: back.dh1 };
}

/** The adapters expectEngineContract offers setAdapter besides the engine's own. */
export interface ContractAdapters {
  /** the engine's adapter (its output before any step) */
  own: LoraAdapter;
  /** another LoRA config */
  foreign: LoraAdapter;
  /** the engine's LoRA config with the pair `missingName` deleted */
  missing: LoraAdapter;
  missingName: string;
}

/**
 * What both engines do the same way (engine-base.ts), on a fresh engine and a valid batch's ids:
 * out-of-order calls, a batch of the wrong size, an id outside the vocabulary, dL/dh1 of the
 * wrong length or with a NaN are refused, each by its message; one step (dL/dh1 normal at
 * `dhScale`) moves the output; setAdapter restores it and the step count; a foreign adapter, or
 * one missing a pair, is refused before anything is written.
 */
export async function expectEngineContract(
  engine: UserEngine,
  ids: Int32Array,
  dhScale: number,
  a: ContractAdapters,
): Promise<void> {
  const { batch, seq } = engine.options;
  const { width, vocab } = modelDims(engine.config);
  const rows = batch * seq;
  expect(() => engine.backward(new Float32Array(rows * width))).toThrow(/backward needs a forward first/);
  expect(() => engine.step()).toThrow(/step needs a backward first/);
  await expect(engine.forward(new Int32Array(rows - 1))).rejects.toThrow(
    `batches of ${batch} x ${seq} tokens, got ${rows - 1}`,
  );
  const bad = ids.slice();
  bad[5] = vocab;
  await expect(engine.forward(bad)).rejects.toThrow(
    `token id ${vocab} at position 5 is outside the vocabulary [0, ${vocab})`,
  );
  const first = await engine.forward(ids);
  const nan = new Float32Array(first.length);
  nan[7] = Number.NaN;
  expect(() => engine.backward(nan)).toThrow(/non-finite value at 7/);
  expect(() => engine.backward(new Float32Array(3))).toThrow(`expected ${rows * width}`);
  engine.backward(new Rng(1).fillNormal(new Float32Array(first.length), dhScale));
  engine.step();
  const moved = await engine.forward(ids);
  expect(maxRelErr(moved, first)).toBeGreaterThan(1e-6); // training changed the output
  engine.setAdapter(a.own);
  expect(engine.steps).toBe(0);
  expect(Array.from(await engine.forward(ids))).toEqual(Array.from(first));
  // a foreign adapter is refused before anything is written
  expect(() => engine.setAdapter(a.foreign)).toThrow(/another LoRA config/);
  a.missing.layers.delete(a.missingName);
  expect(() => engine.setAdapter(a.missing)).toThrow(`no LoRA pair for ${a.missingName}`);
  expect(Array.from(await engine.forward(ids))).toEqual(Array.from(first));
}
