/**
 * swiglu: the activation core of LLaMA's MLP, down_proj(silu(gate_proj(x)) * up_proj(x)),
 * elementwise over n = M * intermediate_size floats; the projections around it are (LoRA)
 * linears. The reference is packages/model/src/ops/swiglu.ts. With s = sigmoid(g):
 *   forward   h = silu(g) u = g s u
 *   backward  dgate = dh u s (1 + g (1 - s)),  dup = dh g s
 *
 * Safe sigmoid: 1 / (1 + exp(-g)) overflows exp for g < -88, and WGSL leaves the result of an
 * overflow indeterminate (not necessarily Infinity). With e = exp(-|g|) in (0, 1], never
 * overflowing, s = 1 / (1 + e) for g >= 0 and e / (1 + e) below, and 1 - s is the other of the
 * two: no cancellation in 1 - s either, so the backward's g (1 - s) is good to an ulp or two for
 * every g. Only finite values are formed for finite inputs (g s for a huge |g| is g or 0 exactly).
 *
 * Kernel version: one invocation per element, grid-stride loop (n may exceed the dispatch
 * limit); memory-bound, so nothing to tile. The backward recomputes s (one exp) rather than
 * have the forward save it: an exp is cheaper than an M * I float buffer per layer.
 *
 * Bindings, forward: 0 gate, 1 up, 2 h, 3 uniform {n}; backward: 0 gate, 1 up, 2 dh, 3 dgate,
 * 4 dup, 5 uniform {n}. Outputs must not alias inputs (WebGPU rejects a writable binding
 * aliasing another).
 */
import type { Dispatch, GpuContext } from '../gpu';
import { checkKernelDims } from './rmsnorm';

export interface SwigluForwardBuffers {
  /** [n] gate_proj output */
  gate: GPUBuffer;
  /** [n] up_proj output */
  up: GPUBuffer;
  /** [n] output, down_proj's input */
  h: GPUBuffer;
}

export interface SwigluBackwardBuffers {
  /** [n] the forward's gate */
  gate: GPUBuffer;
  /** [n] the forward's up */
  up: GPUBuffer;
  /** [n] gradient of h */
  dh: GPUBuffer;
  /** [n] gradient of gate (written) */
  dgate: GPUBuffer;
  /** [n] gradient of up (written) */
  dup: GPUBuffer;
}

export interface SwigluDims {
  /** element count (rows * intermediate_size) */
  n: number;
}

const WG = 128;

const SIGMOID = /* wgsl */ `
// (s, 1 - s) for s = sigmoid(g), from exp(-|g|) only: no overflow, no cancellation
fn sigmoid_pair(g: f32) -> vec2<f32> {
  let e = exp(-abs(g));
  let inv = 1.0 / (1.0 + e);
  let big = inv;    // the one of s, 1 - s that is >= 1/2
  let small = e * inv;
  return select(vec2<f32>(small, big), vec2<f32>(big, small), g >= 0.0);
}
`;

export const SWIGLU_FORWARD_WGSL = /* wgsl */ `
struct Dims { n: u32, _a: u32, _b: u32, _c: u32 };
@group(0) @binding(0) var<storage, read> gate: array<f32>;
@group(0) @binding(1) var<storage, read> up: array<f32>;
@group(0) @binding(2) var<storage, read_write> h: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;
${SIGMOID}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  for (var i = gid.x; i < dims.n; i += nwg.x * ${WG}u) {
    let g = gate[i];
    h[i] = g * sigmoid_pair(g).x * up[i];
  }
}`;

export const SWIGLU_BACKWARD_WGSL = /* wgsl */ `
struct Dims { n: u32, _a: u32, _b: u32, _c: u32 };
@group(0) @binding(0) var<storage, read> gate: array<f32>;
@group(0) @binding(1) var<storage, read> up: array<f32>;
@group(0) @binding(2) var<storage, read> dh: array<f32>;
@group(0) @binding(3) var<storage, read_write> dgate: array<f32>;
@group(0) @binding(4) var<storage, read_write> dup: array<f32>;
@group(0) @binding(5) var<uniform> dims: Dims;
${SIGMOID}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  for (var i = gid.x; i < dims.n; i += nwg.x * ${WG}u) {
    let g = gate[i];
    let sp = sigmoid_pair(g);
    let d = dh[i];
    // s (1 + g (1 - s)): for g -> -inf, s -> 0 faster than g grows, and s = 0 exactly once exp underflows
    dgate[i] = d * up[i] * (sp.x + g * sp.x * sp.y);
    dup[i] = d * g * sp.x;
  }
}`;

function groups(gpu: GpuContext, n: number): [number] {
  checkKernelDims('swiglu', { n }, 0);
  gpu.requireInvocations('swiglu', WG);
  return [gpu.gridStrideGroups(n, WG)];
}

/** h = silu(gate) * up. Returns [] when n is 0. */
export function swigluForward(gpu: GpuContext, buffers: SwigluForwardBuffers, dims: SwigluDims): Dispatch[] {
  const wg = groups(gpu, dims.n);
  if (dims.n === 0) return [];
  const pipeline = gpu.pipeline('swiglu-forward', SWIGLU_FORWARD_WGSL);
  const uniform = gpu.uniform([dims.n, 0, 0, 0], new Set(), 'swiglu-dims');
  return [gpu.dispatchOf(pipeline, [buffers.gate, buffers.up, buffers.h, uniform], wg)];
}

/** dgate and dup from dh and the forward's gate and up. Returns [] when n is 0. */
export function swigluBackward(gpu: GpuContext, buffers: SwigluBackwardBuffers, dims: SwigluDims): Dispatch[] {
  const wg = groups(gpu, dims.n);
  if (dims.n === 0) return [];
  const pipeline = gpu.pipeline('swiglu-backward', SWIGLU_BACKWARD_WGSL);
  const uniform = gpu.uniform([dims.n, 0, 0, 0], new Set(), 'swiglu-dims');
  const b = buffers;
  return [gpu.dispatchOf(pipeline, [b.gate, b.up, b.dh, b.dgate, b.dup, uniform], wg)];
}
