/**
 * embedding: h0[b, t] = wte[ids[b, t]] + wpe[t], ids int32 [B, T], tables [V, D] and
 * [n_positions, D], h0 [B*T, D]; the reference is packages/model/src/ops/embedding.ts.
 * Forward only: the embeddings are frozen under LoRA, so nothing flows back into them (the
 * gradient of h0 is where the user segment's backward ends).
 *
 * Token ids out of [0, V): the engine validates ids on the CPU before upload (the reference
 * throws a RangeError there), so the kernel never sees one in normal use. If one gets through
 * anyway, its whole row of h0 is NaN: never an out-of-bounds read, never a silently wrong but
 * finite embedding; the NaN reaches the loss, where it cannot be missed. (The NaN bit pattern
 * comes from the uniform, since WGSL constant expressions may not be NaN.)
 *
 * Kernel version: one invocation per output element (coalesced: neighbouring invocations read
 * neighbouring words of one table row), grid-stride loop; memory-bound, nothing to tile.
 *
 * Bindings: 0 ids (i32), 1 wte, 2 wpe, 3 out, 4 uniform {B*T, T, D, V, nan bits}. The LLaMA
 * family's embed_tokens (token-embedding.ts) is the same gather without wpe: embeddingWgsl and
 * embeddingGather serve both, so only the position term and its binding differ.
 */
import type { Dispatch, GpuContext } from '../gpu';

export interface EmbeddingBuffers {
  /** [B*T] int32 token ids */
  ids: GPUBuffer;
  /** [V, D] token embeddings */
  wte: GPUBuffer;
  /** [n_positions, D] position embeddings (rows 0..T-1 are read) */
  wpe: GPUBuffer;
  /** [B*T, D] output */
  out: GPUBuffer;
}

export interface EmbeddingDims {
  B: number;
  T: number;
  D: number;
  vocabSize: number;
  /** rows of wpe; when given, T is checked against it */
  nPositions?: number;
}

const WG = 128;
const NAN_BITS = 0x7fc00000;

/**
 * The gather kernel: out[row] = table[ids[row]] (+ wpe[row % T] with `positions`). Bindings: 0 ids,
 * 1 table, then 2 wpe with positions, then out and the uniform {rows, T, D, V, nan bits}.
 */
export function embeddingWgsl(positions: boolean): string {
  const wpe = positions ? '@group(0) @binding(2) var<storage, read> wpe: array<f32>;\n' : '';
  const next = positions ? 3 : 2;
  const sum = positions ? 'wte[u32(id) * D + c] + wpe[(row % dims.T) * D + c]' : 'wte[u32(id) * D + c]';
  return /* wgsl */ `
struct Dims { rows: u32, T: u32, D: u32, V: u32, nan: u32, _a: u32, _b: u32, _c: u32 };
@group(0) @binding(0) var<storage, read> ids: array<i32>;
@group(0) @binding(1) var<storage, read> wte: array<f32>;
${wpe}@group(0) @binding(${next}) var<storage, read_write> out: array<f32>;
@group(0) @binding(${next + 1}) var<uniform> dims: Dims;

@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let D = dims.D;
  let n = dims.rows * D;
  for (var i = gid.x; i < n; i += nwg.x * ${WG}u) {
    let row = i / D;
    let c = i - row * D;
    let id = ids[row];
    if (id >= 0 && u32(id) < dims.V) {
      out[i] = ${sum};
    } else {
      out[i] = bitcast<f32>(dims.nan);
    }
  }
}`;
}

export const EMBEDDING_FORWARD_WGSL = embeddingWgsl(true);

export interface EmbeddingGatherBuffers {
  /** [rows] int32 token ids */
  ids: GPUBuffer;
  /** [V, D] token embeddings */
  table: GPUBuffer;
  /** [T, D] at least: position embeddings, added to row r from row r % T; absent: none */
  positions?: GPUBuffer;
  /** [rows, D] output */
  out: GPUBuffer;
}

/** The gather's dispatch (dims already checked by the caller). Returns [] when rows * D is 0. */
export function embeddingGather(
  gpu: GpuContext,
  b: EmbeddingGatherBuffers,
  d: { rows: number; T: number; D: number; vocabSize: number },
): Dispatch[] {
  const n = d.rows * d.D;
  if (n === 0) return [];
  const positions = b.positions !== undefined;
  const kernel = positions ? 'embedding' : 'tokenEmbedding';
  gpu.requireInvocations(kernel, WG);
  const code = embeddingWgsl(positions);
  const pipeline = gpu.pipeline(positions ? 'embedding-forward' : 'token-embedding-forward', code);
  const uniform = gpu.uniform(
    [d.rows, d.T, d.D, d.vocabSize, NAN_BITS, 0, 0, 0],
    new Set(),
    positions ? 'embedding-dims' : 'token-embedding-dims',
  );
  const bound = b.positions ? [b.ids, b.table, b.positions, b.out, uniform] : [b.ids, b.table, b.out, uniform];
  return [gpu.dispatchOf(pipeline, bound, [gpu.gridStrideGroups(n, WG)])];
}

/** h0 = wte[ids] + wpe[pos]. Returns [] when B*T*D is 0. */
export function embeddingForward(gpu: GpuContext, buffers: EmbeddingBuffers, dims: EmbeddingDims): Dispatch[] {
  for (const k of ['B', 'T', 'D', 'vocabSize'] as const) {
    if (!Number.isInteger(dims[k]) || dims[k] < 0)
      throw new Error(`embedding: ${k} must be a non-negative integer, got ${dims[k]}`);
  }
  if (dims.nPositions !== undefined && dims.T > dims.nPositions) {
    throw new Error(`embedding: sequence length ${dims.T} exceeds n_positions ${dims.nPositions}`);
  }
  const b = buffers;
  return embeddingGather(
    gpu,
    { ids: b.ids, table: b.wte, positions: b.wpe, out: b.out },
    { rows: dims.B * dims.T, T: dims.T, D: dims.D, vocabSize: dims.vocabSize },
  );
}
