/**
 * Test harness for kernels: one Node WebGPU device per test file (software Vulkan here), upload,
 * run, read back, and the error measure every kernel test states its tolerance in.
 */
import {
  initLoraAdapter,
  randomGpt2Weights,
  Rng,
  type Gpt2Config,
  type Gpt2Model,
  type LoraAdapter,
  type LoraConfig,
} from '@splitllm/model';
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
export { maxRelErr } from '@splitllm/model';

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
  const a = initLoraAdapter(config, lora, seed);
  const rng = new Rng(seed + 1);
  for (const p of a.layers.values()) rng.fillNormal(p.B.data, 0.05);
  return a;
}
