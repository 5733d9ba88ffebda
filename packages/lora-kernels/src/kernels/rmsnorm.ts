/**
 * rmsNorm over the last dimension of x[M, D] (LLaMA's input_layernorm, post_attention_layernorm
 * and the final norm; the reference is packages/model/src/ops/rmsnorm.ts):
 *   forward   r = 1 / sqrt(sum_j x_j^2 / D + eps),  y = x * r * weight;  r[M] ("rstd") is saved.
 *   backward  (dx only: LLaMA's norm weights are frozen base weights, so no dweight; the engine
 *             never needs a reduction over rows)
 *             g = dy * weight,  xhat = x * r,  dx = r * (g - xhat * mean_j(g * xhat)),
 *             written (dx = ...) or accumulated (dx += ..., `accumulate`): the block backward's
 *             residual sums (da = dy + post_attention_layernorm'(..), dx = da + input_layernorm'(..))
 *             then need no extra pass, as with GPT-2's layerNorm kernel.
 *
 * Numerics: all float32. The sum of squares has only non-negative terms, so it cannot cancel
 * (unlike a variance): its rounding error is a few ulps times sqrt(D) (D in the sequential
 * 'thread' loop), and r inherits half of it. x^2 overflows float32 beyond |x| ~ 1.8e19, far above
 * any activation a LLaMA residual stream carries (outliers there are ~1e3).
 *
 * Kernel versions (`RmsNormVariant`, a setting; the same two as layerNorm's, so the engine's
 * `layernorm` variant setting can choose for both):
 *   'thread'     one invocation per row, sequential passes over it; no workgroup memory and no
 *                barriers. Uncoalesced on a GPU; the fast one on CPU Vulkan drivers.
 *   'workgroup'  one 128-invocation workgroup per row (the default, tuned for real GPUs):
 *                coalesced strided loops over the row and one two-level workgroup reduction
 *                (128 partials -> 16 -> every invocation sums the 16: 2 barriers) per pass:
 *                the forward reduces sum x^2, the backward sum g * x.
 * Both loop over rows with a grid stride, so M may exceed the dispatch limit.
 * Measured on SwiftShader (Node Dawn, 2 shared CPU cores; says nothing about a GPU), M=256
 * D=576 (printed by test/rmsnorm.test.ts): 'thread' forward 6.6 ms, backward 8.9 ms;
 * 'workgroup' 40 ms and 49 ms. Twice that and more while the machine
 * is busy. No GPU figure yet (written on a machine without one).
 *
 * Bindings, forward:  0 x, 1 weight, 2 y, 3 rstd, 4 uniform {M, D, eps, -}.
 *           backward: 0 x, 1 weight, 2 rstd, 3 dy, 4 dx (read_write), 5 uniform {M, D, accumulate, -}.
 * No output may alias an input (WebGPU rejects a writable binding aliasing another).
 *
 * KernelDimsError (below) is the error of every LLaMA-family kernel for dimensions that cannot be
 * (not integers, not divisible, zero where that is meaningless); limits of the adapter stay
 * GpuError('DOES_NOT_FIT').
 */
import { CodedError } from '@splitllm/model';
import { GpuError, type Dispatch, type GpuContext } from '../gpu';
import type { LayerNormVariant } from './layernorm';

/** Dimensions a kernel was given that no tensor can have; the message names the kernel and the setting. */
export class KernelDimsError extends CodedError<'BAD_KERNEL_DIMS'> {
  constructor(message: string) {
    super('BAD_KERNEL_DIMS', message);
  }
}

/** Throws KernelDimsError unless every named value is an integer >= min. */
export function checkKernelDims(kernel: string, dims: Record<string, number>, min: number): void {
  for (const [k, v] of Object.entries(dims)) {
    if (!Number.isInteger(v) || v < min)
      throw new KernelDimsError(`${kernel}: ${k} must be an integer >= ${min}, got ${v}`);
  }
}

export type RmsNormVariant = LayerNormVariant;
export const RMSNORM_VARIANTS: readonly RmsNormVariant[] = ['thread', 'workgroup'];
export const DEFAULT_RMSNORM_VARIANT: RmsNormVariant = 'workgroup';

export interface RmsNormForwardBuffers {
  /** [M, D] */
  x: GPUBuffer;
  /** [D] */
  weight: GPUBuffer;
  /** [M, D] output */
  y: GPUBuffer;
  /** [M] output, r per row, saved for the backward */
  rstd: GPUBuffer;
}

export interface RmsNormBackwardBuffers {
  /** [M, D], the forward's input */
  x: GPUBuffer;
  /** [D] */
  weight: GPUBuffer;
  /** [M], from the forward */
  rstd: GPUBuffer;
  /** [M, D] gradient of y */
  dy: GPUBuffer;
  /** [M, D] gradient of x: written, or added to with `accumulate` */
  dx: GPUBuffer;
}

export interface RmsNormDims {
  /** rows (B * T) */
  M: number;
  /** features per row (hidden_size) */
  D: number;
}

export interface RmsNormOptions {
  variant?: RmsNormVariant;
}

export interface RmsNormBackwardOptions extends RmsNormOptions {
  /** dx += ... instead of dx = ... */
  accumulate?: boolean;
}

// ---------------------------------------------------------------------------------------------
// WGSL

const WG = 128;
const WG_THREAD = 64;

const FORWARD_BINDINGS = /* wgsl */ `
struct Dims { M: u32, D: u32, eps: f32, _pad: u32 };
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(4) var<uniform> dims: Dims;
`;

const BACKWARD_BINDINGS = /* wgsl */ `
struct Dims { M: u32, D: u32, accumulate: u32, _pad: u32 };
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read> rstd: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;
@group(0) @binding(5) var<uniform> dims: Dims;
`;

/** 'thread' forward: one invocation per row. */
export const RMSNORM_FORWARD_THREAD_WGSL = /* wgsl */ `${FORWARD_BINDINGS}
@compute @workgroup_size(${WG_THREAD})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let D = dims.D;
  for (var row = gid.x; row < dims.M; row += nwg.x * ${WG_THREAD}u) {
    let base = row * D;
    var ss = 0.0;
    for (var j = 0u; j < D; j++) { let v = x[base + j]; ss += v * v; }
    let r = inverseSqrt(ss / f32(D) + dims.eps);
    for (var j = 0u; j < D; j++) { y[base + j] = x[base + j] * r * weight[j]; }
    rstd[row] = r;
  }
}`;

/**
 * Sum over the 128 invocations of a workgroup in two levels (16 partial sums of 8, then every
 * invocation adds the 16): 2 barriers instead of a tree's 7. A row loop may call it again at
 * once: the next call writes partials16 only after its first barrier, which no invocation
 * reaches before it has read this call's partials16.
 */
const WG_SUM = /* wgsl */ `
var<workgroup> partials: array<f32, ${WG}>;
var<workgroup> partials16: array<f32, 16>;

fn workgroup_sum(v: f32, lid: u32) -> f32 {
  partials[lid] = v;
  workgroupBarrier();
  if (lid < 16u) {
    var s = 0.0;
    for (var k = 0u; k < 8u; k++) { s += partials[lid * 8u + k]; }
    partials16[lid] = s;
  }
  workgroupBarrier();
  var t = 0.0;
  for (var k = 0u; k < 16u; k++) { t += partials16[k]; }
  return t;
}
`;

/** 'workgroup' forward: one workgroup per row. */
export const RMSNORM_FORWARD_WORKGROUP_WGSL = /* wgsl */ `${FORWARD_BINDINGS}${WG_SUM}
@compute @workgroup_size(${WG})
fn main(
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>
) {
  let D = dims.D;
  for (var row = wid.x; row < dims.M; row += nwg.x) {
    let base = row * D;
    var ss = 0.0;
    for (var j = lid; j < D; j += ${WG}u) { let v = x[base + j]; ss += v * v; }
    let r = inverseSqrt(workgroup_sum(ss, lid) / f32(D) + dims.eps);
    for (var j = lid; j < D; j += ${WG}u) { y[base + j] = x[base + j] * r * weight[j]; }
    if (lid == 0u) { rstd[row] = r; }
  }
}`;

/** 'thread' backward: one invocation per row. */
export const RMSNORM_BACKWARD_THREAD_WGSL = /* wgsl */ `${BACKWARD_BINDINGS}
@compute @workgroup_size(${WG_THREAD})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let D = dims.D;
  for (var row = gid.x; row < dims.M; row += nwg.x * ${WG_THREAD}u) {
    let base = row * D;
    let r = rstd[row];
    var sgx = 0.0;
    for (var j = 0u; j < D; j++) { sgx += dy[base + j] * weight[j] * x[base + j]; }
    // mean(g * xhat) * r = r^2 sum(g x) / D: the factor on x in dx = r g - x (...)
    let c = r * r * sgx / f32(D);
    for (var j = 0u; j < D; j++) {
      let v = r * (dy[base + j] * weight[j] - x[base + j] * c);
      if (dims.accumulate != 0u) { dx[base + j] += v; } else { dx[base + j] = v; }
    }
  }
}`;

/** 'workgroup' backward: one workgroup per row. */
export const RMSNORM_BACKWARD_WORKGROUP_WGSL = /* wgsl */ `${BACKWARD_BINDINGS}${WG_SUM}
@compute @workgroup_size(${WG})
fn main(
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>
) {
  let D = dims.D;
  for (var row = wid.x; row < dims.M; row += nwg.x) {
    let base = row * D;
    let r = rstd[row];
    var sgx = 0.0;
    for (var j = lid; j < D; j += ${WG}u) { sgx += dy[base + j] * weight[j] * x[base + j]; }
    let c = r * r * workgroup_sum(sgx, lid) / f32(D);
    for (var j = lid; j < D; j += ${WG}u) {
      let v = r * (dy[base + j] * weight[j] - x[base + j] * c);
      if (dims.accumulate != 0u) { dx[base + j] += v; } else { dx[base + j] = v; }
    }
  }
}`;

// ---------------------------------------------------------------------------------------------
// Dispatch

function plan(gpu: GpuContext, d: RmsNormDims, variant: RmsNormVariant, storageBuffers: number): [number] {
  checkKernelDims('rmsNorm', { M: d.M, D: d.D }, 0);
  if (!RMSNORM_VARIANTS.includes(variant))
    throw new KernelDimsError(`rmsNorm: variant must be one of ${RMSNORM_VARIANTS.join(', ')}, got '${variant}'`);
  const wg = variant === 'workgroup' ? WG : WG_THREAD;
  gpu.requireInvocations(`rmsNorm '${variant}'`, wg);
  const allowed = gpu.adapter.maxStorageBuffersPerShaderStage;
  if (allowed < storageBuffers)
    throw new GpuError(
      'DOES_NOT_FIT',
      `rmsNorm binds ${storageBuffers} storage buffers; this adapter allows ${allowed}`,
    );
  return [gpu.gridStrideGroups(d.M, variant === 'workgroup' ? 1 : WG_THREAD)];
}

/** y = x * r * weight over rows of D, saving r. Returns [] when M or D is 0. */
export function rmsNormForward(
  gpu: GpuContext,
  buffers: RmsNormForwardBuffers,
  dims: RmsNormDims & { eps: number },
  options: RmsNormOptions = {},
): Dispatch[] {
  const variant = options.variant ?? DEFAULT_RMSNORM_VARIANT;
  const workgroups = plan(gpu, dims, variant, 4);
  if (!(dims.eps >= 0 && Number.isFinite(dims.eps)))
    throw new KernelDimsError(`rmsNorm: eps (rms_norm_eps) must be finite and >= 0, got ${dims.eps}`);
  if (dims.M === 0 || dims.D === 0) return [];
  const code = variant === 'workgroup' ? RMSNORM_FORWARD_WORKGROUP_WGSL : RMSNORM_FORWARD_THREAD_WGSL;
  const pipeline = gpu.pipeline(`rmsnorm-forward-${variant}`, code);
  const uniform = gpu.uniform([dims.M, dims.D, dims.eps, 0], new Set([2]), 'rmsnorm-dims');
  const b = buffers;
  return [gpu.dispatchOf(pipeline, [b.x, b.weight, b.y, b.rstd, uniform], workgroups)];
}

/** dx (=, or += with `accumulate`) from dy, the forward's x and r. Returns [] when M or D is 0. */
export function rmsNormBackward(
  gpu: GpuContext,
  buffers: RmsNormBackwardBuffers,
  dims: RmsNormDims,
  options: RmsNormBackwardOptions = {},
): Dispatch[] {
  const variant = options.variant ?? DEFAULT_RMSNORM_VARIANT;
  const workgroups = plan(gpu, dims, variant, 5);
  if (dims.M === 0 || dims.D === 0) return [];
  const code = variant === 'workgroup' ? RMSNORM_BACKWARD_WORKGROUP_WGSL : RMSNORM_BACKWARD_THREAD_WGSL;
  const pipeline = gpu.pipeline(`rmsnorm-backward-${variant}`, code);
  const uniform = gpu.uniform([dims.M, dims.D, options.accumulate ? 1 : 0, 0], new Set(), 'rmsnorm-dims');
  const b = buffers;
  return [gpu.dispatchOf(pipeline, [b.x, b.weight, b.rstd, b.dy, b.dx, uniform], workgroups)];
}
