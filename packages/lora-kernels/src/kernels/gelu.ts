/**
 * GELU, tanh approximation (GPT-2's "gelu_new"), elementwise over n floats; the reference is
 * packages/model/src/ops/gelu.ts. The bias add before it belongs to the matmul (its bias option).
 *   forward   y = 0.5 x (1 + tanh u),  u = sqrt(2/pi) (x + 0.044715 x^3)
 *   backward  dx = dy (0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2))
 *
 * Safe form: WGSL's tanh of a large argument is NaN on some drivers (sinh / cosh overflow), and
 * 1 + tanh u cancels for negative u. With s = sigmoid(2u) = 1 / (1 + exp(-2u)):
 *   1 + tanh u = 2 s,  1 - tanh^2 u = 4 s (1 - s),  1 - s = exp(-2u) s,  so
 *   y = x s,  dy/dx = s + 2 x s (1 - s) sqrt(2/pi) (1 + 3 * 0.044715 x^2).
 * u is computed from x clamped to [-10, 10] (x^3 cannot overflow) and clamped to [-40, 40]
 * (exp(80) is finite in float32): beyond those bounds s is 0 or 1 to float32 precision and
 * s (1 - s) underflows, so y = x or 0 (set to 0 for x < -10, where x s would scale a huge x by
 * s's floor 1.8e-35) and dy/dx = 1 or 0, as the exact function gives. Only
 * finite values are ever formed, since WGSL leaves the result of an overflow indeterminate.
 *
 * Kernel version: one invocation per element, grid-stride loop (n may exceed the dispatch
 * limit); memory-bound, so nothing to tile.
 *
 * Bindings, forward: 0 x, 1 y, 2 uniform {n}; backward: 0 x, 1 dy, 2 dx, 3 uniform {n}.
 * Outputs must not alias inputs (WebGPU rejects a writable binding aliasing another).
 */
import type { Dispatch, GpuContext } from '../gpu';

export interface GeluForwardBuffers {
  /** [n] pre-activation (c_fc output) */
  x: GPUBuffer;
  /** [n] output */
  y: GPUBuffer;
}

export interface GeluBackwardBuffers {
  /** [n] the forward's input */
  x: GPUBuffer;
  /** [n] gradient of y */
  dy: GPUBuffer;
  /** [n] gradient of x (written) */
  dx: GPUBuffer;
}

export interface GeluDims {
  /** element count */
  n: number;
}

const WG = 128;

const GELU_COMMON = /* wgsl */ `
const SQRT_2_OVER_PI = 0.7978845608028654;
const K3 = 0.044715;
// clamp(x) for the polynomial, and s = sigmoid(2u) = (1 + tanh u) / 2, overflow-free
fn gelu_s(xc: f32) -> f32 {
  let u = clamp(SQRT_2_OVER_PI * (xc + K3 * xc * xc * xc), -40.0, 40.0);
  return 1.0 / (1.0 + exp(-2.0 * u));
}
`;

export const GELU_FORWARD_WGSL = /* wgsl */ `
struct Dims { n: u32, _a: u32, _b: u32, _c: u32 };
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> dims: Dims;
${GELU_COMMON}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  for (var i = gid.x; i < dims.n; i += nwg.x * ${WG}u) {
    let v = x[i];
    // below -10 the exact y is under 1e-36 in magnitude; x s would scale a huge x by s's floor
    y[i] = select(v * gelu_s(clamp(v, -10.0, 10.0)), 0.0, v < -10.0);
  }
}`;

export const GELU_BACKWARD_WGSL = /* wgsl */ `
struct Dims { n: u32, _a: u32, _b: u32, _c: u32 };
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;
${GELU_COMMON}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  for (var i = gid.x; i < dims.n; i += nwg.x * ${WG}u) {
    let xc = clamp(x[i], -10.0, 10.0);
    let u = clamp(SQRT_2_OVER_PI * (xc + K3 * xc * xc * xc), -40.0, 40.0);
    let e = exp(-2.0 * u);
    let s = 1.0 / (1.0 + e);
    let oms = e * s; // 1 - s without cancellation
    let d = s + 2.0 * xc * s * oms * SQRT_2_OVER_PI * (1.0 + 3.0 * K3 * xc * xc);
    dx[i] = dy[i] * d;
  }
}`;

function groups(gpu: GpuContext, n: number): [number] {
  if (!Number.isInteger(n) || n < 0) throw new Error(`gelu: n must be a non-negative integer, got ${n}`);
  gpu.requireInvocations('gelu', WG);
  return [gpu.gridStrideGroups(n, WG)];
}

/** y = gelu(x). Returns [] when n is 0. */
export function geluForward(gpu: GpuContext, buffers: GeluForwardBuffers, dims: GeluDims): Dispatch[] {
  const wg = groups(gpu, dims.n);
  if (dims.n === 0) return [];
  const pipeline = gpu.pipeline('gelu-forward', GELU_FORWARD_WGSL);
  const uniform = gpu.uniform([dims.n, 0, 0, 0], new Set(), 'gelu-dims');
  return [gpu.dispatchOf(pipeline, [buffers.x, buffers.y, uniform], wg)];
}

/** dx = dy * gelu'(x). Returns [] when n is 0. */
export function geluBackward(gpu: GpuContext, buffers: GeluBackwardBuffers, dims: GeluDims): Dispatch[] {
  const wg = groups(gpu, dims.n);
  if (dims.n === 0) return [];
  const pipeline = gpu.pipeline('gelu-backward', GELU_BACKWARD_WGSL);
  const uniform = gpu.uniform([dims.n, 0, 0, 0], new Set(), 'gelu-dims');
  return [gpu.dispatchOf(pipeline, [buffers.x, buffers.dy, buffers.dx, uniform], wg)];
}
