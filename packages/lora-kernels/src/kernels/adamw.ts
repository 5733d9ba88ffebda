/**
 * adamw: one AdamW step (torch.optim.AdamW, decoupled weight decay) on a flat float32 parameter
 * buffer with its gradient and moment buffers, in place. The reference is
 * packages/model/src/ops/adamw.ts (adamwStep), same formula term by term:
 *   g = gradScale * g                       (gradScale 1 unless set: clipping / averaging)
 *   m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
 *   p = p (1 - lr wd) - lr (m / bc1) / (sqrt(v / bc2) + eps),   bc1 = 1 - b1^t, bc2 = 1 - b2^t
 * t is the 1-based step count after this update. The step-dependent scalars (lr, the bias
 * corrections, 1 - lr wd) are computed on the CPU in float64 and live in a uniform buffer
 * (`AdamwHyper`) that any number of parameter buffers share: `setAdamwStep` rewrites it each step,
 * the dispatches never change.
 *
 * Kernel versions:
 *   v1  one invocation per element, workgroups of 64, 2D grid when one dimension would exceed
 *       the device's workgroup-count limit. Memory-bound (4 reads, 3 writes per element).
 */
import { GpuError, ceilDiv, type Dispatch, type GpuContext } from '../gpu';
import type { AdamWOptions } from '@splitllm/model';

const WG = 64;

export const ADAMW_WGSL = /* wgsl */ `
struct Hyper {
  lr: f32, beta1: f32, beta2: f32, eps: f32,
  omb1: f32, omb2: f32, bc1: f32, bc2: f32,
  decay: f32, gradScale: f32, t: u32, pad: u32,
};
struct Size { n: u32, rowStride: u32 };
@group(0) @binding(0) var<storage, read_write> p: array<f32>;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<uniform> h: Hyper;
@group(0) @binding(5) var<uniform> s: Size;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * s.rowStride + gid.x;
  if (i >= s.n) { return; }
  let gi = h.gradScale * g[i];
  let mi = h.beta1 * m[i] + h.omb1 * gi;
  let vi = h.beta2 * v[i] + h.omb2 * gi * gi;
  m[i] = mi;
  v[i] = vi;
  p[i] = p[i] * h.decay - (h.lr * (mi / h.bc1)) / (sqrt(vi / h.bc2) + h.eps);
}`;

/** The shared hyper-parameter uniform of an optimizer; update it with setAdamwStep. */
export interface AdamwHyper {
  buffer: GPUBuffer;
  options: AdamWOptions;
  /** the step last written (0: none yet; a dispatch before setAdamwStep would divide by 0) */
  t: number;
  lr: number;
  gradScale: number;
}

function hyperWords(o: AdamWOptions, t: number, lr: number, gradScale: number): number[] {
  const bc1 = t > 0 ? 1 - o.beta1 ** t : 1;
  const bc2 = t > 0 ? 1 - o.beta2 ** t : 1;
  return [lr, o.beta1, o.beta2, o.eps, 1 - o.beta1, 1 - o.beta2, bc1, bc2, 1 - lr * o.weightDecay, gradScale, t, 0];
}
const HYPER_F32 = new Set([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);

/** Creates the hyper-parameter uniform (step 0; call setAdamwStep before the first update). */
export function createAdamwHyper(gpu: GpuContext, options: AdamWOptions): AdamwHyper {
  const buffer = gpu.uniform(hyperWords(options, 0, options.lr, 1), HYPER_F32, 'adamw-hyper');
  return { buffer, options, t: 0, lr: options.lr, gradScale: 1 };
}

/**
 * Sets the step t (1-based, the count after this update), the learning rate (default: the
 * options' lr) and a gradient scale (default 1) for the next dispatches. Queue-ordered: it
 * applies to work submitted after this call.
 */
export function setAdamwStep(
  gpu: GpuContext,
  hyper: AdamwHyper,
  t: number,
  lr = hyper.options.lr,
  gradScale = 1,
): void {
  if (!Number.isInteger(t) || t < 1) throw new Error(`adamw: step t must be an integer >= 1, got ${t}`);
  hyper.t = t;
  hyper.lr = lr;
  hyper.gradScale = gradScale;
  gpu.writeUniform(hyper.buffer, hyperWords(hyper.options, t, lr, gradScale), HYPER_F32);
}

export interface AdamwBuffers {
  /** parameters, updated in place */
  p: GPUBuffer;
  g: GPUBuffer;
  /** first and second moments (zeros before the first step), updated in place */
  m: GPUBuffer;
  v: GPUBuffer;
  hyper: AdamwHyper;
}

export interface AdamwDims {
  /** elements to update */
  n: number;
}

/** One AdamW update of n elements; the step and learning rate come from buffers.hyper. */
export function adamw(gpu: GpuContext, buffers: AdamwBuffers, dims: AdamwDims): Dispatch[] {
  const { n } = dims;
  if (!Number.isInteger(n) || n < 0) throw new Error(`adamw: n must be a non-negative integer, got ${n}`);
  if (n === 0) return [];
  const groups = ceilDiv(n, WG);
  const max = gpu.adapter.maxComputeWorkgroupsPerDimension;
  const gx = Math.min(groups, max);
  const gy = ceilDiv(groups, gx);
  if (gy > max) throw new GpuError('DOES_NOT_FIT', `adamw: ${n} elements need more than ${max}^2 workgroups`);
  const size = gpu.uniform([n, gx * WG], new Set(), 'adamw-size');
  const pipeline = gpu.pipeline('adamw-v1', ADAMW_WGSL);
  return [gpu.dispatchOf(pipeline, [buffers.p, buffers.g, buffers.m, buffers.v, buffers.hyper.buffer, size], [gx, gy])];
}
