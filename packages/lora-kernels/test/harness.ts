/**
 * Test harness for kernels: one Node WebGPU device per test file (software Vulkan here), upload,
 * run, read back, and the error measure every kernel test states its tolerance in.
 */
import { Rng } from '@splitllm/shared';
import type { Dispatch, GpuContext } from '../src/gpu';
import { nodeKernelDevice } from '../src/node';

let shared: Promise<GpuContext> | undefined;

/** The test device; created once per file. */
export function testDevice(): Promise<GpuContext> {
  shared ??= nodeKernelDevice();
  return shared;
}

/** Runs the dispatches and reads back `count` floats of `out`. */
export async function runAndRead(gpu: GpuContext, dispatches: Dispatch[], out: GPUBuffer, count: number): Promise<Float32Array> {
  gpu.run(dispatches);
  return gpu.readF32(out, count);
}

export function randn(n: number, rng: Rng, scale = 1): Float32Array {
  return rng.fillNormal(new Float32Array(n), scale);
}

/**
 * max |got - want| / max(max |want|, tiny): one number per tensor, relative to its scale, so
 * near-zero entries do not dominate. Float32 kernels summing K products in a different order
 * than the float64-accumulating reference differ by about sqrt(K) * 2^-24 of the scale.
 */
export function maxRelErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  if (got.length !== want.length) throw new Error(`length ${got.length} != ${want.length}`);
  let maxDiff = 0;
  let maxRef = 0;
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    if (!(d <= maxDiff)) maxDiff = Number.isNaN(d) ? Infinity : Math.max(maxDiff, d);
    maxRef = Math.max(maxRef, Math.abs(want[i]));
  }
  return maxDiff / Math.max(maxRef, 1e-30);
}
