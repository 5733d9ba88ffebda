/**
 * rope: rotary position embedding of q and k as LLaMA / Qwen2 apply it (Hugging Face's
 * `rotate_half`: the pairs are (i, i + hd/2) of each head, not interleaved); the reference is
 * packages/model/src/ops/rope.ts. x is [B*T, nHeads*hd] (the q_proj / k_proj output as is),
 * row (b, t) at position t. With c = cos[t, i], s = sin[t, i], i < hd/2:
 *   forward   y_i = x_i c - x_{i+hd/2} s,    y_{i+hd/2} = x_{i+hd/2} c + x_i s
 *   backward  the transposed rotation (the op is linear and orthogonal):
 *             dx_i = dy_i c + dy_{i+hd/2} s,  dx_{i+hd/2} = dy_{i+hd/2} c - dy_i s
 * The cos / sin tables [T, hd/2] are the reference's `ropeTable` (float32 angles t * invFreq,
 * rope_theta and Llama 3's rope_scaling already in invFreq), computed on the CPU and uploaded
 * once (`uploadRopeTable`): the WGSL has no trigonometry and nothing to know about scaling, and
 * its results are the reference's to a rounding of each output (two products and a sum).
 *
 * In place or not: without an output buffer the kernel rotates its input in place (each
 * invocation reads its pair before writing it and no other invocation touches that pair). The
 * engine can then rotate the q_proj / k_proj output where it lies (the forward needs only the
 * rotated q, k afterwards) and un-rotate dq, dk where attention's backward wrote them.
 *
 * Kernel version: one invocation per pair, grid-stride loop (the count may exceed the dispatch
 * limit); memory-bound, nothing to stage (the table rows are re-read by every head of a row and
 * stay in cache).
 *
 * Bindings: out of place 0 x, 1 cos, 2 sin, 3 y, 4 uniform; in place 0 x (read_write), 1 cos,
 * 2 sin, 3 uniform. Uniform {pairs = B*T*nHeads*hd/2, T, nHeads, half, sign (f32: +1 forward,
 * -1 backward), -, -, -}.
 */
import { RopeError, type RopeTable } from '@splitllm/model';
import type { Dispatch, GpuContext } from '../gpu';
import { checkKernelDims } from './rmsnorm';

/** The rope table on the GPU, with the shape it was made for. */
export interface RopeTableBuffers {
  /** [T, half] */
  cos: GPUBuffer;
  /** [T, half] */
  sin: GPUBuffer;
  /** positions the table covers */
  T: number;
  /** head_dim / 2 */
  half: number;
}

export interface RopeForwardBuffers {
  /** [B*T, nHeads*hd] */
  x: GPUBuffer;
  /** [B*T, nHeads*hd] output; when absent x is rotated in place */
  y?: GPUBuffer;
  table: RopeTableBuffers;
}

export interface RopeBackwardBuffers {
  /** [B*T, nHeads*hd] gradient of y */
  dy: GPUBuffer;
  /** [B*T, nHeads*hd] gradient of x (written); when absent dy is turned into dx in place */
  dx?: GPUBuffer;
  table: RopeTableBuffers;
}

export interface RopeDims {
  B: number;
  T: number;
  /** heads of this projection: num_attention_heads for q, num_key_value_heads for k */
  nHeads: number;
  headDim: number;
}

/** Uploads the reference's cos / sin table (once per model and sequence length). */
export function uploadRopeTable(gpu: GpuContext, table: RopeTable): RopeTableBuffers {
  if (table.cos.length !== table.T * table.half || table.sin.length !== table.T * table.half)
    throw new RopeError(`rope table: cos / sin must hold T * half = ${table.T * table.half} values`);
  return {
    cos: gpu.storage(table.cos, 'rope-cos'),
    sin: gpu.storage(table.sin, 'rope-sin'),
    T: table.T,
    half: table.half,
  };
}

const WG = 128;

const BODY = /* wgsl */ `
  for (var p = gid.x; p < dims.pairs; p += nwg.x * ${WG}u) {
    let i = p % dims.half;
    let rest = p / dims.half;    // (b * T + t) * nHeads + h
    let row = rest / dims.nHeads; // b * T + t
    let t = row % dims.T;
    let o = rest * 2u * dims.half + i; // = row * nHeads * hd + h * hd + i
    let c = cosT[t * dims.half + i];
    let s = dims.sign * sinT[t * dims.half + i];
    let x1 = SRC[o];
    let x2 = SRC[o + dims.half];
    DST[o] = x1 * c - x2 * s;
    DST[o + dims.half] = x2 * c + x1 * s;
  }`;

const UNIFORM = /* wgsl */ `
struct Dims { pairs: u32, T: u32, nHeads: u32, half: u32, sign: f32, _a: u32, _b: u32, _c: u32 };`;

const ENTRY = /* wgsl */ `@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>)`;

/** Rotation (sign +1) or its transpose (sign -1), out of place. */
export const ROPE_WGSL = /* wgsl */ `${UNIFORM}
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> cosT: array<f32>;
@group(0) @binding(2) var<storage, read> sinT: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> dims: Dims;
${ENTRY} {${BODY.replaceAll('SRC', 'x').replaceAll('DST', 'y')}
}`;

/** Rotation (sign +1) or its transpose (sign -1), in place. */
export const ROPE_IN_PLACE_WGSL = /* wgsl */ `${UNIFORM}
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> cosT: array<f32>;
@group(0) @binding(2) var<storage, read> sinT: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;
${ENTRY} {${BODY.replaceAll('SRC', 'x').replaceAll('DST', 'x')}
}`;

function rotate(
  gpu: GpuContext,
  src: GPUBuffer,
  dst: GPUBuffer | undefined,
  table: RopeTableBuffers,
  d: RopeDims,
  sign: 1 | -1,
): Dispatch[] {
  checkKernelDims('rope', { B: d.B, T: d.T, nHeads: d.nHeads }, 0);
  checkKernelDims('rope', { headDim: d.headDim }, 1);
  if (d.headDim % 2 !== 0) throw new RopeError(`rope: head_dim must be even, got ${d.headDim}`);
  if (d.headDim !== 2 * table.half)
    throw new RopeError(`rope: head_dim ${d.headDim} but the table has ${table.half} pairs`);
  if (d.T > table.T) throw new RopeError(`rope: ${d.T} positions but the table has ${table.T}`);
  const pairs = d.B * d.T * d.nHeads * table.half;
  if (pairs === 0) return [];
  gpu.requireInvocations('rope', WG);
  const uniform = gpu.uniform([pairs, d.T, d.nHeads, table.half, sign, 0, 0, 0], new Set([4]), 'rope-dims');
  const groups: [number] = [gpu.gridStrideGroups(pairs, WG)];
  if (dst) {
    const pipeline = gpu.pipeline('rope', ROPE_WGSL);
    return [gpu.dispatchOf(pipeline, [src, table.cos, table.sin, dst, uniform], groups)];
  }
  const pipeline = gpu.pipeline('rope-in-place', ROPE_IN_PLACE_WGSL);
  return [gpu.dispatchOf(pipeline, [src, table.cos, table.sin, uniform], groups)];
}

/** y = rope(x) (or x rotated in place when y is absent). Returns [] when there is nothing to rotate. */
export function ropeForward(gpu: GpuContext, buffers: RopeForwardBuffers, dims: RopeDims): Dispatch[] {
  return rotate(gpu, buffers.x, buffers.y, buffers.table, dims, 1);
}

/** dx = rope^T(dy) (or dy turned into dx in place when dx is absent). Returns [] when there is nothing to rotate. */
export function ropeBackward(gpu: GpuContext, buffers: RopeBackwardBuffers, dims: RopeDims): Dispatch[] {
  return rotate(gpu, buffers.dy, buffers.dx, buffers.table, dims, -1);
}
