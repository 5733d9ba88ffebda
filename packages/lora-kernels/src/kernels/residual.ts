/**
 * residual: the elementwise sums of the pre-LN block that no other kernel absorbs.
 *   add         out = a + b        forward residuals: a = x + attn_out, x' = a + mlp_out,
 *                                  keeping x (ln_1's backward needs it) and a (ln_2's)
 *   accumulate  out += a           gradient sums, e.g. adding a branch's dx into the residual
 *                                  stream's gradient
 * Backward has nothing of its own: the gradient of a sum passes to both terms unchanged.
 *
 * What else covers these (prefer it; it saves a pass over memory):
 *   - matmul's `accumulate` (C += alpha A B + bias): a projection can add straight into a
 *     buffer that already holds the residual, when that buffer may be overwritten;
 *   - layerNormBackward's `accumulate` (dx += ...): the block backward's da = dy + ln_2'(..)
 *     and dx = da + ln_1'(..) are then done in place in dy's buffer, with no add at all.
 *
 * Kernel version: one invocation per element, grid-stride loop; memory-bound.
 *
 * Bindings, add: 0 a, 1 b, 2 out, 3 uniform {n}; accumulate: 0 a, 1 out (read_write), 2 uniform.
 * out must not alias a or b (WebGPU rejects a writable binding aliasing another).
 */
import type { Dispatch, GpuContext } from '../gpu';

export interface AddBuffers {
  a: GPUBuffer;
  b: GPUBuffer;
  /** out = a + b */
  out: GPUBuffer;
}

export interface AccumulateBuffers {
  a: GPUBuffer;
  /** out += a */
  out: GPUBuffer;
}

export interface ElementwiseDims {
  /** element count */
  n: number;
}

const WG = 128;

export const RESIDUAL_ADD_WGSL = /* wgsl */ `
struct Dims { n: u32, _a: u32, _b: u32, _c: u32 };
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  for (var i = gid.x; i < dims.n; i += nwg.x * ${WG}u) { out[i] = a[i] + b[i]; }
}`;

export const RESIDUAL_ACCUMULATE_WGSL = /* wgsl */ `
struct Dims { n: u32, _a: u32, _b: u32, _c: u32 };
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> dims: Dims;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  for (var i = gid.x; i < dims.n; i += nwg.x * ${WG}u) { out[i] += a[i]; }
}`;

function groups(gpu: GpuContext, n: number): [number] {
  if (!Number.isInteger(n) || n < 0) throw new Error(`residual: n must be a non-negative integer, got ${n}`);
  gpu.requireInvocations('residual', WG);
  return [gpu.gridStrideGroups(n, WG)];
}

/** out = a + b. Returns [] when n is 0. */
export function residualAdd(gpu: GpuContext, buffers: AddBuffers, dims: ElementwiseDims): Dispatch[] {
  const wg = groups(gpu, dims.n);
  if (dims.n === 0) return [];
  const pipeline = gpu.pipeline('residual-add', RESIDUAL_ADD_WGSL);
  const uniform = gpu.uniform([dims.n, 0, 0, 0], new Set(), 'residual-dims');
  return [gpu.dispatchOf(pipeline, [buffers.a, buffers.b, buffers.out, uniform], wg)];
}

/** out += a. Returns [] when n is 0. */
export function residualAccumulate(gpu: GpuContext, buffers: AccumulateBuffers, dims: ElementwiseDims): Dispatch[] {
  const wg = groups(gpu, dims.n);
  if (dims.n === 0) return [];
  const pipeline = gpu.pipeline('residual-accumulate', RESIDUAL_ACCUMULATE_WGSL);
  const uniform = gpu.uniform([dims.n, 0, 0, 0], new Set(), 'residual-dims');
  return [gpu.dispatchOf(pipeline, [buffers.a, buffers.out, uniform], wg)];
}
