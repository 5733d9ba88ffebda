/**
 * The LM head and its cross-entropy on the tab (labels on the device): from the last hidden state
 * hL [M = batch*seq, D] and the targets [M] (IGNORE_INDEX = -100 not counted),
 *   y = ln_f(hL),  logits = y wte^T  [M, V]  (tied to the embedding wte [V, D]),
 *   loss = mean over counted rows of lse(logits_row) - logits_row[target],
 *   dlogits = (softmax - onehot(target)) / count on counted rows, 0 on ignored rows,
 *   dy = dlogits wte,  dL/dhL = ln_f backward(dy).
 * The reference is headLossStep / headLogits in packages/model/src/model.ts (softmaxCrossEntropy
 * in packages/model/src/ops/cross-entropy.ts): count 0 gives loss 0 and dL/dhL = 0, as there.
 *
 * Never more logits than one chunk of rows: rows go through in chunks of R (headChunkRows), and
 * each chunk runs, in one compute pass on chunk-sized scratch: ln_f forward, logits = y wte^T
 * (the matmul kernels, 'nt'), the fused cross-entropy kernel below (loss terms, and dlogits
 * written over the logits in place), dy = dlogits wte (matmul 'nn'), ln_f backward. dy's
 * contraction runs over all of V for only R x D outputs, so it may run split-K (`splitK`, a
 * per-adapter setting that chooseKernelVariants times; kernels/matmul.ts). Copies
 * between the passes move the chunk's rows of hL and targets in and its rows of dL/dhL and loss
 * terms out. The count is taken from the targets on the CPU before any chunk runs, so 1/count
 * scales dlogits inside each chunk; the per-row loss terms are summed on the CPU in float64.
 * ChunkedHead is that flow for either model family; the final norm is the one part it leaves to
 * its caller (LmHead here: ln_f; LlamaLmHead in llama-head.ts: RMSNorm, and lm_head for wte).
 *
 * Kernel versions (the fused cross-entropy; `CrossEntropyVariant`, a setting that follows the
 * engine's layer-norm one: both are row reductions, and barriers are what separates them):
 *   'thread'     one invocation per row, three passes over its V logits (max, sum of exp,
 *                write); no workgroup memory and no barriers: the fast one on CPU Vulkan drivers.
 *   'workgroup'  one 128-invocation workgroup per row (tuned for real GPUs): coalesced strided
 *                loops and two two-level workgroup reductions (max, then sum of exp). Each
 *                invocation writes only the logits it read, so dlogits can overwrite them with
 *                no storage barrier; the invocation that owns the target column writes the row's
 *                loss term.
 * Both are numerically stable and loop over rows with a grid stride, so a chunk may exceed the
 * dispatch limit. Only exp(l - max) is ever taken (<= 1): the loss term is lse - l with
 * lse = max + log(sum), and softmax is exp(l - max) / sum rather than exp(l - lse), whose float32
 * lse would carry its rounding (half an ulp of |lse|: 8e-6 relative at |lse| ~ 150) into every
 * probability. Uniforms: rows and V per dispatch; 1/count in
 * its own uniform (`CrossEntropyScale`) rewritten each step, so dispatches are built once.
 *
 * Cross-entropy bindings: 0 logits (read_write: dlogits out), 1 targets (i32), 2 loss terms (out),
 * 3 uniform {rows, V}, 4 uniform {invCount}.
 */
import { IGNORE_INDEX, type Gpt2Config } from '@splitllm/model';
import { GpuError, type AdapterSummary, type Dispatch, type GpuContext } from '../gpu';
import { layerNormBackward, layerNormForward, type LayerNormVariant } from './layernorm';
import { DEFAULT_MATMUL_VARIANT, matmul, splitKSlices, type MatmulVariant } from './matmul';

export type CrossEntropyVariant = 'thread' | 'workgroup';
export const CROSS_ENTROPY_VARIANTS: readonly CrossEntropyVariant[] = ['thread', 'workgroup'];
export const DEFAULT_CROSS_ENTROPY_VARIANT: CrossEntropyVariant = 'workgroup';

// ---------------------------------------------------------------------------------------------
// WGSL: cross-entropy, forward and backward fused

const WG = 128;
const WG_THREAD = 64;

const CE_BINDINGS = /* wgsl */ `
struct Dims { rows: u32, V: u32, _a: u32, _b: u32 };
struct Scale { invCount: f32, _a: u32, _b: u32, _c: u32 };
@group(0) @binding(0) var<storage, read_write> logits: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<i32>;
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;
@group(0) @binding(4) var<uniform> scale: Scale;
`;

/** 'thread': one invocation per row. */
export const CROSS_ENTROPY_THREAD_WGSL = /* wgsl */ `${CE_BINDINGS}
@compute @workgroup_size(${WG_THREAD})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let V = dims.V;
  for (var row = gid.x; row < dims.rows; row += nwg.x * ${WG_THREAD}u) {
    let base = row * V;
    var m = logits[base];
    for (var j = 1u; j < V; j++) { m = max(m, logits[base + j]); }
    var s = 0.0;
    for (var j = 0u; j < V; j++) { s += exp(logits[base + j] - m); }
    let lse = m + log(s);
    let inv = 1.0 / s;
    let t = targets[row];
    // IGNORE_INDEX (and anything outside [0, V), which the CPU refuses first) counts nothing
    let counted = t >= 0 && u32(t) < V;
    var term = 0.0;
    for (var j = 0u; j < V; j++) {
      let l = logits[base + j];
      var d = 0.0;
      if (counted) {
        d = exp(l - m) * inv;
        if (j == u32(t)) { d -= 1.0; term = lse - l; }
        d *= scale.invCount;
      }
      logits[base + j] = d;
    }
    loss[row] = term;
  }
}`;

/** Two-level workgroup reduction over 128 invocations (16 partials of 8, 2 barriers), as layernorm's. */
const wgReduce = (name: string, op: (a: string, b: string) => string) => /* wgsl */ `
var<workgroup> ${name}_red: array<f32, ${WG}>;
var<workgroup> ${name}_red2: array<f32, 16>;

fn ${name}(v: f32, lid: u32) -> f32 {
  ${name}_red[lid] = v;
  workgroupBarrier();
  if (lid < 16u) {
    var s = ${name}_red[lid * 8u];
    for (var k = 1u; k < 8u; k++) { s = ${op('s', `${name}_red[lid * 8u + k]`)}; }
    ${name}_red2[lid] = s;
  }
  workgroupBarrier();
  var t = ${name}_red2[0];
  for (var k = 1u; k < 16u; k++) { t = ${op('t', `${name}_red2[k]`)}; }
  return t;
}
`;

/** 'workgroup': one workgroup per row. */
export const CROSS_ENTROPY_WORKGROUP_WGSL = /* wgsl */ `${CE_BINDINGS}
const WG = ${WG}u;
${wgReduce('rowMax', (a, b) => `max(${a}, ${b})`)}${wgReduce('rowSum', (a, b) => `${a} + ${b}`)}
@compute @workgroup_size(${WG})
fn main(
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>
) {
  let V = dims.V;
  for (var row = wid.x; row < dims.rows; row += nwg.x) {
    let base = row * V;
    var m = logits[base]; // a real logit for invocations past V too: the max is unchanged
    for (var j = lid; j < V; j += WG) { m = max(m, logits[base + j]); }
    let mx = rowMax(m, lid);
    var s = 0.0;
    for (var j = lid; j < V; j += WG) { s += exp(logits[base + j] - mx); }
    let sum = rowSum(s, lid);
    let lse = mx + log(sum);
    let inv = 1.0 / sum;
    let t = targets[row];
    let counted = t >= 0 && u32(t) < V;
    for (var j = lid; j < V; j += WG) {
      let l = logits[base + j];
      var d = 0.0;
      if (counted) {
        d = exp(l - mx) * inv;
        if (j == u32(t)) { d -= 1.0; loss[row] = lse - l; }
        d *= scale.invCount;
      }
      logits[base + j] = d;
    }
    if (!counted && lid == 0u) { loss[row] = 0.0; }
  }
}`;

// ---------------------------------------------------------------------------------------------
// Cross-entropy dispatch

export interface CrossEntropyBuffers {
  /** [rows, V] logits in; dlogits out (in place) */
  logits: GPUBuffer;
  /** [rows] i32 targets, IGNORE_INDEX for positions that do not count */
  targets: GPUBuffer;
  /** [rows] out: lse - logit[target] on counted rows, 0 on ignored ones */
  loss: GPUBuffer;
  /** 1/count, from createCrossEntropyScale / setCrossEntropyCount */
  scale: GPUBuffer;
}

export interface CrossEntropyDims {
  rows: number;
  V: number;
}

/** The uniform holding 1/count (shared by every chunk's dispatch; set once per step). */
export function createCrossEntropyScale(gpu: GpuContext): GPUBuffer {
  return gpu.uniform([0, 0, 0, 0], new Set([0]), 'cross-entropy-scale');
}

/** dlogits are scaled by 1/count (0 when nothing counts: every row is ignored, all dlogits 0). */
export function setCrossEntropyCount(gpu: GpuContext, scale: GPUBuffer, count: number): void {
  if (!Number.isInteger(count) || count < 0)
    throw new Error(`cross-entropy: count must be a non-negative integer, got ${count}`);
  gpu.writeUniform(scale, [count > 0 ? 1 / count : 0, 0, 0, 0], new Set([0]));
}

/**
 * Loss terms and dlogits (over the logits, in place) of `rows` rows of V logits. Returns [] when
 * rows is 0.
 */
export function softmaxCrossEntropyForwardBackward(
  gpu: GpuContext,
  buffers: CrossEntropyBuffers,
  dims: CrossEntropyDims,
  options: { variant?: CrossEntropyVariant } = {},
): Dispatch[] {
  const { rows, V } = dims;
  if (!Number.isInteger(rows) || rows < 0) throw new Error(`cross-entropy: rows must be >= 0, got ${rows}`);
  if (!Number.isInteger(V) || V < 1) throw new Error(`cross-entropy: V must be >= 1, got ${V}`);
  if (rows === 0) return [];
  if (buffers.logits.size < rows * V * 4)
    throw new Error(`cross-entropy: logits need ${rows * V} floats, the buffer holds ${buffers.logits.size / 4}`);
  const variant = options.variant ?? DEFAULT_CROSS_ENTROPY_VARIANT;
  const wg = variant === 'workgroup' ? WG : WG_THREAD;
  gpu.requireInvocations(`cross-entropy '${variant}'`, wg);
  const code = variant === 'workgroup' ? CROSS_ENTROPY_WORKGROUP_WGSL : CROSS_ENTROPY_THREAD_WGSL;
  const pipeline = gpu.pipeline(`cross-entropy-${variant}`, code);
  const uniform = gpu.uniform([rows, V, 0, 0], new Set(), 'cross-entropy-dims');
  const groups = gpu.gridStrideGroups(rows, variant === 'workgroup' ? 1 : WG_THREAD);
  const b = buffers;
  return [gpu.dispatchOf(pipeline, [b.logits, b.targets, b.loss, uniform, b.scale], [groups])];
}

// ---------------------------------------------------------------------------------------------
// Chunk rule

/**
 * Bytes of logits one chunk may hold. 32 MiB keeps the head's scratch small next to the rest of
 * the engine at any vocabulary (GPT-2's V = 50257: 128 rows, 25.7 MB) while leaving enough rows
 * per chunk for the products to fill a GPU (at V = 1024 a whole batch of up to 8192 rows is one
 * chunk).
 */
export const HEAD_LOGITS_BUDGET_BYTES = 32 * 2 ** 20;

/** Full row tiles of the largest matmul block ('blocked': 64 rows per workgroup). */
const ROW_TILE = 64;

/**
 * Rows per head chunk. The rule: R = floor(min(maxStorageBufferBindingSize, 32 MiB) / (4 V)) rows
 * of logits, rounded down to a multiple of 64 (whole matmul row tiles) when that leaves >= 64,
 * at least 1, and at most `rows` and `cap` (a test or a caller may force smaller chunks).
 * Throws GpuError('DOES_NOT_FIT') when one row of logits exceeds the binding limit.
 */
export function headChunkRows(adapter: AdapterSummary, rows: number, V: number, cap?: number): number {
  const perRow = 4 * V;
  if (perRow > adapter.maxStorageBufferBindingSize) {
    throw new GpuError(
      'DOES_NOT_FIT',
      `one row of ${V} logits needs ${perRow} bytes, over this adapter's maxStorageBufferBindingSize ` +
        `${adapter.maxStorageBufferBindingSize}`,
    );
  }
  if (cap !== undefined && !(Number.isInteger(cap) && cap >= 1))
    throw new Error(`head: chunk rows must be a positive integer, got ${cap}`);
  const r = wholeRowTiles(Math.floor(Math.min(adapter.maxStorageBufferBindingSize, HEAD_LOGITS_BUDGET_BYTES) / perRow));
  return Math.max(1, Math.min(r, rows, cap ?? Number.POSITIVE_INFINITY));
}

/** r rounded down to whole 64-row tiles when that leaves at least one. */
function wholeRowTiles(r: number): number {
  return r >= ROW_TILE ? r - (r % ROW_TILE) : r;
}

/**
 * Chunk rows at the budget alone, i.e. headChunkRows on an adapter whose binding limit is over
 * the budget (for an engine's size estimate and the variant timing's shapes, made before any
 * adapter is at hand): GPT-2's V = 50257 gives 128.
 */
export function budgetChunkRows(rows: number, V: number): number {
  return Math.max(1, Math.min(rows, wholeRowTiles(Math.floor(HEAD_LOGITS_BUDGET_BYTES / (4 * V)))));
}

/**
 * Floats a head allocates for `rows` rows in chunks of R: the full-size in/out (hL, targets,
 * dL/dhL, loss terms) and the chunk scratch (h, targets, y, logits, dy, dh, loss terms and the
 * norm's `normStats` floats per row).
 */
export function chunkedHeadFloats(
  D: number,
  V: number,
  rows: number,
  R: number,
  normStats: number,
  splitK = 1,
): number {
  return rows * (2 * D + 2) + R * (4 * D + 2 + normStats + V) + splitKPartialFloats(R, V, D, splitK);
}

/** Floats of the split-K partials of dy = dlogits W for a chunk of R rows (0 without a split). */
export function splitKPartialFloats(R: number, V: number, D: number, splitK: number): number {
  const { slices } = splitKSlices(V, splitK);
  return slices > 1 ? slices * R * D : 0;
}

/** Floats the GPT-2 head allocates for `rows` rows in chunks of R (ln_f keeps mean and rstd). */
export function headFloats(c: Gpt2Config, rows: number, R: number, splitK = 1): number {
  return chunkedHeadFloats(c.nEmbd, c.vocabSize, rows, R, 2, splitK);
}

// ---------------------------------------------------------------------------------------------
// The head on a device

export interface LmHeadWeights {
  /** [V, D], the tied embedding */
  wte: GPUBuffer;
  /** ln_f.weight, ln_f.bias [D] */
  gamma: GPUBuffer;
  beta: GPUBuffer;
}

export interface LmHeadOptions {
  /** rows per step (batch * seq) */
  rows: number;
  /** at most this many rows per chunk (default: headChunkRows' rule alone) */
  chunkRows?: number;
  matmul?: MatmulVariant;
  /** the final norm and cross-entropy (both row reductions) */
  rowVariant?: LayerNormVariant;
  /** dy = dlogits W in this many slices of V (default 1; > 1 needs a SPLIT_K_VARIANTS matmul) */
  splitK?: number;
}

export interface HeadStepResult {
  loss: number;
  count: number;
  /** dL/dhL [rows, D] */
  dh: Float32Array;
}

/** The chunk scratch a head's final norm works on (R = chunk rows), and where its own scratch comes from. */
export interface HeadNormBuffers {
  /** [R, D] the chunk's rows of hL: the norm's input */
  h: GPUBuffer;
  /** [R, D] out: the normed rows, which the logits are taken of */
  y: GPUBuffer;
  /** [R, D] dL/dy */
  dy: GPUBuffer;
  /** [R, D] out: dL/dh */
  dh: GPUBuffer;
  chunkRows: number;
  /** a buffer of `floats` floats that the head owns (and destroys) */
  scratch(floats: number, label: string): GPUBuffer;
}

/** A head's final norm over the first `rows` rows of the chunk: the one part the families' heads differ in. */
export interface HeadNorm {
  forward(rows: number): Dispatch[];
  backward(rows: number): Dispatch[];
}

export interface ChunkedHeadShape {
  V: number;
  D: number;
  /** [V, D]: the output embedding, logits = y head^T */
  head: GPUBuffer;
  /** the command encoder's label */
  label: string;
}

/**
 * A head of one engine, whatever its final norm: chunk scratch and dispatch lists built once (a
 * full chunk, the last partial chunk, and one row for generation); per step the hidden states and
 * targets go up and dL/dhL and the per-row loss terms come down. `norm` builds the norm's
 * dispatches on the chunk scratch (LmHead: ln_f; kernels/llama-head.ts: RMSNorm).
 */
export class ChunkedHead {
  readonly rows: number;
  /** rows per chunk */
  readonly chunkRows: number;
  private readonly V: number;
  private readonly D: number;
  private readonly label: string;
  private readonly hAll: GPUBuffer;
  private readonly tAll: GPUBuffer;
  private readonly dhAll: GPUBuffer;
  private readonly lossAll: GPUBuffer;
  private readonly h: GPUBuffer;
  private readonly t: GPUBuffer;
  private readonly dh: GPUBuffer;
  private readonly lossTerms: GPUBuffer;
  private readonly logits: GPUBuffer;
  private readonly scale: GPUBuffer;
  private readonly full: Dispatch[];
  private readonly tail: Dispatch[];
  private readonly oneRow: Dispatch[];
  private readonly owned: GPUBuffer[] = [];

  constructor(
    private readonly gpu: GpuContext,
    shape: ChunkedHeadShape,
    o: LmHeadOptions,
    norm: (buffers: HeadNormBuffers) => HeadNorm,
  ) {
    const { V, D } = shape;
    const M = o.rows;
    this.V = V;
    this.D = D;
    this.label = shape.label;
    this.rows = M;
    const R = headChunkRows(gpu.adapter, M, V, o.chunkRows);
    this.chunkRows = R;
    const buf = (floats: number, label: string) => {
      const b = gpu.storage(floats * 4, label);
      this.owned.push(b);
      return b;
    };
    this.hAll = buf(M * D, 'head-h');
    this.tAll = buf(M, 'head-targets');
    this.dhAll = buf(M * D, 'head-dh');
    this.lossAll = buf(M, 'head-loss');
    this.h = buf(R * D, 'head-chunk-h');
    this.t = buf(R, 'head-chunk-targets');
    const y = buf(R * D, 'head-chunk-y');
    this.logits = buf(R * V, 'head-chunk-logits');
    const dy = buf(R * D, 'head-chunk-dy');
    this.dh = buf(R * D, 'head-chunk-dh');
    this.lossTerms = buf(R, 'head-chunk-loss');
    this.scale = createCrossEntropyScale(gpu);
    this.owned.push(this.scale);
    const n = norm({ h: this.h, y, dy, dh: this.dh, chunkRows: R, scratch: buf });

    const mm = o.matmul ?? DEFAULT_MATMUL_VARIANT;
    const splitK = o.splitK ?? 1;
    const partialFloats = splitKPartialFloats(R, V, D, splitK);
    const partials = partialFloats > 0 ? buf(partialFloats, 'head-chunk-dy-partials') : undefined;
    const logitsOf = (rows: number) =>
      matmul(gpu, { a: y, b: shape.head, c: this.logits }, { M: rows, K: D, N: V }, { layout: 'nt', variant: mm });
    const chunk = (rows: number): Dispatch[] => [
      ...n.forward(rows),
      ...logitsOf(rows),
      ...softmaxCrossEntropyForwardBackward(
        gpu,
        { logits: this.logits, targets: this.t, loss: this.lossTerms, scale: this.scale },
        { rows, V },
        { variant: o.rowVariant },
      ),
      ...matmul(
        gpu,
        { a: this.logits, b: shape.head, c: dy, partials },
        { M: rows, K: V, N: D },
        { layout: 'nn', variant: mm, splitK },
      ),
      ...n.backward(rows),
    ];
    this.full = chunk(R);
    const tailRows = M % R;
    this.tail = tailRows ? chunk(tailRows) : [];
    this.oneRow = [...n.forward(1), ...logitsOf(1)];
  }

  /** One full chunk's dispatches, in order (for a benchmark's profile and tests; not for running). */
  chunkDispatches(): readonly Dispatch[] {
    return this.full;
  }

  /** Loss, count and dL/dhL for hL [rows, D] and targets [rows]. */
  async step(hL: Float32Array, targets: Int32Array): Promise<HeadStepResult> {
    const { rows: M, D, V } = this;
    if (hL.length !== M * D) throw new Error(`head: hL has ${hL.length} values, expected ${M * D} (${M} x ${D})`);
    if (targets.length !== M) throw new Error(`head: ${targets.length} targets, expected ${M}`);
    let count = 0;
    for (let i = 0; i < M; i++) {
      const t = targets[i];
      if (t === IGNORE_INDEX) continue;
      if (!(t >= 0 && t < V)) throw new Error(`head: target ${t} at row ${i} is outside [0, ${V}) and not ignored`);
      count++;
    }
    for (let i = 0; i < hL.length; i++)
      if (!Number.isFinite(hL[i])) throw new Error(`head: hL holds a non-finite value at ${i}`);
    setCrossEntropyCount(this.gpu, this.scale, count);
    this.gpu.write(this.hAll, hL);
    this.gpu.write(this.tAll, targets);
    const enc = this.gpu.device.createCommandEncoder({ label: this.label });
    const R = this.chunkRows;
    for (let r0 = 0; r0 < M; r0 += R) {
      const n = Math.min(R, M - r0);
      enc.copyBufferToBuffer(this.hAll, r0 * D * 4, this.h, 0, n * D * 4);
      enc.copyBufferToBuffer(this.tAll, r0 * 4, this.t, 0, n * 4);
      this.gpu.record(enc, n === R ? this.full : this.tail);
      enc.copyBufferToBuffer(this.dh, 0, this.dhAll, r0 * D * 4, n * D * 4);
      enc.copyBufferToBuffer(this.lossTerms, 0, this.lossAll, r0 * 4, n * 4);
    }
    this.gpu.device.queue.submit([enc.finish()]);
    const [dh, terms] = await Promise.all([this.gpu.readF32(this.dhAll, M * D), this.gpu.readF32(this.lossAll, M)]);
    let total = 0;
    for (let i = 0; i < M; i++) if (targets[i] !== IGNORE_INDEX) total += terms[i];
    return { loss: count > 0 ? total / count : 0, count, dh };
  }

  /** Next-token logits [V] from one last hidden state [D] (the final norm and the head). */
  async logitsOf(h: Float32Array): Promise<Float32Array> {
    if (h.length !== this.D) throw new Error(`head: h has ${h.length} values, expected ${this.D}`);
    for (let i = 0; i < h.length; i++)
      if (!Number.isFinite(h[i])) throw new Error(`head: h holds a non-finite value at ${i}`);
    this.gpu.write(this.h, h);
    this.gpu.run(this.oneRow);
    return this.gpu.readF32(this.logits, this.V);
  }

  destroy(): void {
    for (const b of this.owned) b.destroy();
    this.owned.length = 0;
  }
}

/** GPT-2's head: ln_f (a layer norm with a bias) and the tied embedding wte. */
export class LmHead extends ChunkedHead {
  constructor(gpu: GpuContext, c: Gpt2Config, w: LmHeadWeights, o: LmHeadOptions) {
    const D = c.nEmbd;
    super(gpu, { V: c.vocabSize, D, head: w.wte, label: 'head-step' }, o, (b) => {
      const mean = b.scratch(b.chunkRows, 'head-chunk-mean');
      const rstd = b.scratch(b.chunkRows, 'head-chunk-rstd');
      const ln = { variant: o.rowVariant };
      return {
        forward: (rows) =>
          layerNormForward(
            gpu,
            { x: b.h, gamma: w.gamma, beta: w.beta, y: b.y, mean, rstd },
            { M: rows, D, eps: c.layerNormEpsilon },
            ln,
          ),
        backward: (rows) =>
          layerNormBackward(gpu, { x: b.h, gamma: w.gamma, mean, rstd, dy: b.dy, dx: b.dh }, { M: rows, D }, ln),
      };
    });
  }
}
