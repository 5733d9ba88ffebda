/**
 * matmul: C[M,N] = alpha * op(A) op(B) (+ bias[N]) (+ C), row-major float32, float32 accumulation.
 *
 * Layouts (what the LoRA backward needs without materializing a transpose; same names as the
 * reference ops in packages/model/src/ops/matmul.ts):
 *   'nn'  A[M,K]   · B[K,N]      (matmul:   y = x W, xa = x A, y += s xa B)
 *   'nt'  A[M,K]   · B[N,K]^T    (matmulBT: dx = dy W^T, g = s dy B^T, dx += g A^T)
 *   'tn'  A[K,M]^T · B[K,N]      (matmulAT: dA = x^T g, dB = s xa^T dy)
 * Options: a bias row added to every output row, `accumulate` (C += ..., for gradient
 * accumulation and residual/low-rank adds without an extra pass), and `alpha` (a scale on the
 * product, held in the uniform: the LoRA scale s).
 *
 * Kernel versions (`MatmulVariant`, a setting: the best one depends on the device):
 *   'naive'     one invocation per output, K-loop straight from global memory. The baseline.
 *   'tiled'     16x16 workgroup stages 16x16 tiles of A and B in workgroup memory; each
 *               invocation still computes one output, but each global load is reused 16 times.
 *               (8x8 where the device allows fewer than 256 invocations per workgroup.)
 *   'blocked'   64x64 output block per workgroup, K-slabs of 16 staged in workgroup memory
 *               (padded rows: no bank conflicts on the transposed stores), and a 4x4 register
 *               micro-tile per invocation (strided, so neighbouring invocations read
 *               neighbouring workgroup-memory words and write coalesced rows). 16x the
 *               arithmetic per workgroup-memory read of 'tiled'. The default: tuned for real
 *               GPUs. (64x32 or 32x32 blocks where the workgroup limit is 128 or 64.)
 *   'blocked8x8' 128x128 output block per workgroup, an 8x8 register micro-tile per invocation
 *               (4x the arithmetic per workgroup-memory read of 'blocked'), K-slabs of 8 in two
 *               workgroup buffers with the next slab prefetched into registers (one barrier per
 *               slab), vec4 loads from global and workgroup memory. The classic large-tile SGEMM
 *               shape, for large products on GPUs. (128x64 or 64x64 blocks where the workgroup
 *               limit is 128 or 64.)
 *   'registers' no workgroup memory and no barriers: each invocation computes a 4x4 tile of C
 *               from 4x4 tiles of A and B loaded as vec4 (vec4 bindings where the contiguous
 *               dimension is a multiple of 4, four scalar loads otherwise), multiplied as
 *               mat4x4. Barriers are very slow on CPU Vulkan drivers (SwiftShader, lavapipe),
 *               so this one is the fastest there. On a GPU its 'nt' reads are uncoalesced
 *               (neighbouring invocations read different rows of B[N,K]).
 * Measured, GFLOPS at 1024^3 nn/nt/tn (2048^3 on the GPU; Node Dawn):
 *   SwiftShader, 2 CPU cores:  naive ~0.2, tiled ~0.1, blocked 0.8-1.4, registers ~2.2
 *   NVIDIA H200 (Vulkan):      naive 2731/907/1584, tiled ~6000, blocked 15658/15281/16382,
 *                              registers 18431/6895/14392
 *   the same at 4096^3 (2026-11-28): blocked 17610/17367/17626, blocked8x8 32728/34758/33306
 *                              (49-52% of its 67 TFLOPS fp32 peak), registers 18865/7076/15237
 * Every variant handles sizes that are not multiples of its tile (guarded loads and stores).
 *
 * Split-K ('blocked' and 'blocked8x8', `splitK` > 1): K is cut into slices of a multiple of 16,
 * one per dispatch layer (workgroup z); each layer writes its raw partial product to its own
 * [M, N] slab of a `partials` scratch, and a second kernel (`matmul-splitk-reduce`) sums the slabs
 * in slice order and applies the epilogue (alpha, bias, accumulate). It is for a product whose
 * M x N gives far fewer workgroups than the GPU has cores while K is long: the LM head's
 * dy = dlogits W, [R, V] x [V, D] with K = V = 50257, runs a chunk of R = 128 rows on 6 (128x128)
 * or 24 (64x64) workgroups, each looping over all of V, on a card with 132 SMs. The kernels' K
 * range is a uniform (kSlice; kSlice = K without split-K), so one pipeline serves both.
 * `pickFastestMatmul` times the variants on the device and returns the fastest (on the H200,
 * 'tiled' wins the skinny LoRA products with N = r = 8, 'blocked' the 512x768x2304 one).
 *
 * Bindings: 0 A, 1 B, 2 C (read_write), 3 uniform {M, N, K, alpha, flags}, 4 bias (a 16-byte
 * placeholder when there is none). Bias and accumulate are uniform flags, not compile-time
 * switches: one pipeline per (variant, layout[, vec4 alignment]) serves every epilogue, which
 * matters where compiling is slow (SwiftShader: ~0.6 s for a 'blocked' pipeline).
 * C must not alias A or B (WebGPU rejects a writable binding aliasing another).
 */
import { GpuError, ceilDiv, type Dispatch, type GpuContext } from '../gpu';

export type MatmulLayout = 'nn' | 'nt' | 'tn';
export type MatmulVariant = 'naive' | 'tiled' | 'blocked' | 'blocked8x8' | 'registers';

export const MATMUL_VARIANTS: readonly MatmulVariant[] = ['naive', 'tiled', 'blocked', 'blocked8x8', 'registers'];
export const MATMUL_LAYOUTS: readonly MatmulLayout[] = ['nn', 'nt', 'tn'];

/** The default choice, tuned for real GPUs; CPU drivers want 'registers' (see pickFastestMatmul). */
export const DEFAULT_MATMUL_VARIANT: MatmulVariant = 'blocked';

/** C[M,N] with contraction length K, whatever the layout (for 'tn', A is stored [K,M]). */
export interface MatmulDims {
  M: number;
  K: number;
  N: number;
}

export interface MatmulBuffers {
  a: GPUBuffer;
  b: GPUBuffer;
  c: GPUBuffer;
  /** [N], added to every row of C */
  bias?: GPUBuffer;
  /** split-K only: scratch for the slices' partial products, splitK x M x N floats at least */
  partials?: GPUBuffer;
}

export interface MatmulOptions {
  layout?: MatmulLayout;
  variant?: MatmulVariant;
  /** C += alpha A B (+ bias) instead of C = ... */
  accumulate?: boolean;
  /** scale on the product (default 1) */
  alpha?: number;
  /**
   * K in this many slices (default 1: none), summed by a second pass (see the header): 'blocked'
   * and 'blocked8x8' only, with `partials` bound. Fewer run when K is short (splitKSlices).
   */
  splitK?: number;
}

/** Everything a WGSL source depends on; one pipeline per distinct config. */
export interface MatmulShaderConfig {
  variant: MatmulVariant;
  layout: MatmulLayout;
  /** workgroup size (x over N, y over M) */
  wg: [number, number];
  /** 'registers' only: A / B / C bound as vec4 arrays (contiguous dimension % 4 == 0) */
  vecA?: boolean;
  vecB?: boolean;
  vecC?: boolean;
}

// ---------------------------------------------------------------------------------------------
// WGSL

const BK = 16; // 'blocked': K-slab staged per barrier pair
const BK8 = 8; // 'blocked8x8': K-slab per workgroup buffer (two buffers)

function header(c: MatmulShaderConfig): string {
  const t = (v: boolean | undefined) => (v ? 'vec4<f32>' : 'f32');
  return /* wgsl */ `
// flags: bit 0 add bias, bit 1 accumulate into C (runtime: one pipeline serves every epilogue),
// bit 2 split-K: this layer's raw partial product to its slab of C (the partials), no epilogue.
// kSlice: the K range of layer z is [z kSlice, min(K, (z + 1) kSlice)) ('blocked', 'blocked8x8').
struct Dims { M: u32, N: u32, K: u32, alpha: f32, flags: u32, kSlice: u32 };
@group(0) @binding(0) var<storage, read> A: array<${t(c.vecA)}>;
@group(0) @binding(1) var<storage, read> B: array<${t(c.vecB)}>;
@group(0) @binding(2) var<storage, read_write> C: array<${t(c.vecC)}>;
@group(0) @binding(3) var<uniform> d: Dims;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
var<private> slab: u32; // split-K: where this layer's [M, N] partial product starts in C
`;
}

/** Scalar element accessors op(A)(m,k), op(B)(k,n) for the layout (scalar bindings only). */
function scalarAccess(layout: MatmulLayout): string {
  const a = layout === 'tn' ? 'A[k * d.M + m]' : 'A[m * d.K + k]';
  const b = layout === 'nt' ? 'B[n * d.K + k]' : 'B[k * d.N + n]';
  return /* wgsl */ `
fn a_at(m: u32, k: u32) -> f32 { return ${a}; }
fn b_at(k: u32, n: u32) -> f32 { return ${b}; }
`;
}

/** store(m, n, acc): the epilogue (alpha, bias, accumulate) for scalar C. */
const scalarStore = /* wgsl */ `
fn store(m: u32, n: u32, acc: f32) {
  let i = m * d.N + n;
  if ((d.flags & 4u) != 0u) { C[slab + i] = acc; return; }
  var o = d.alpha * acc;
  if ((d.flags & 1u) != 0u) { o += bias[n]; }
  if ((d.flags & 2u) != 0u) { o += C[i]; }
  C[i] = o;
}
`;

function naiveWgsl(c: MatmulShaderConfig): string {
  return `${header(c)}${scalarAccess(c.layout)}${scalarStore}
@compute @workgroup_size(${c.wg[0]}, ${c.wg[1]})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let n = gid.x;
  let m = gid.y;
  if (m >= d.M || n >= d.N) { return; }
  var acc = 0.0;
  for (var k = 0u; k < d.K; k++) { acc += a_at(m, k) * b_at(k, n); }
  store(m, n, acc);
}`;
}

function tiledWgsl(c: MatmulShaderConfig): string {
  const TS = c.wg[0];
  // Which of (row, col) of the tile each invocation loads: along the contiguous dimension of
  // the stored matrix, so neighbouring invocations read neighbouring words.
  const aIdx = c.layout === 'tn' ? 'let i = lid.x; let j = lid.y;' : 'let i = lid.y; let j = lid.x;';
  const bIdx = c.layout === 'nt' ? 'let i = lid.x; let j = lid.y;' : 'let i = lid.y; let j = lid.x;';
  return `${header(c)}${scalarAccess(c.layout)}${scalarStore}
const TS = ${TS}u;
const TP = ${TS + 1}u; // padded row stride
var<workgroup> As: array<f32, ${TS * (TS + 1)}>; // As[m * TP + k]
var<workgroup> Bs: array<f32, ${TS * (TS + 1)}>; // Bs[k * TP + n]
@compute @workgroup_size(${TS}, ${TS})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let m0 = wid.y * TS;
  let n0 = wid.x * TS;
  var acc = 0.0;
  for (var k0 = 0u; k0 < d.K; k0 += TS) {
    {
      ${aIdx}
      let gm = m0 + i; let gk = k0 + j;
      var v = 0.0;
      if (gm < d.M && gk < d.K) { v = a_at(gm, gk); }
      As[i * TP + j] = v;
    }
    {
      ${bIdx}
      let gk = k0 + i; let gn = n0 + j;
      var v = 0.0;
      if (gk < d.K && gn < d.N) { v = b_at(gk, gn); }
      Bs[i * TP + j] = v;
    }
    workgroupBarrier();
    for (var k = 0u; k < TS; k++) { acc += As[lid.y * TP + k] * Bs[k * TP + lid.x]; }
    workgroupBarrier();
  }
  let m = m0 + lid.y;
  let n = n0 + lid.x;
  if (m < d.M && n < d.N) { store(m, n, acc); }
}`;
}

function blockedWgsl(c: MatmulShaderConfig): string {
  const [TX, TY] = c.wg;
  const BM = 4 * TY;
  const BN = 4 * TX;
  const NT = TX * TY;
  // tile element idx -> (row r, col c) of the logical tile, contiguous in the stored matrix
  const aRC = c.layout === 'tn' ? 'let r = idx % BM; let c = idx / BM;' : 'let r = idx / BK; let c = idx % BK;';
  const bRC = c.layout === 'nt' ? 'let r = idx % BK; let c = idx / BK;' : 'let r = idx / BN; let c = idx % BN;';
  return `${header(c)}${scalarAccess(c.layout)}${scalarStore}
const TX = ${TX}u; const TY = ${TY}u; const NT = ${NT}u;
const BM = ${BM}u; const BN = ${BN}u; const BK = ${BK}u;
const AP = ${BM + 1}u; // padded stride of As rows (one row per k)
const BP = ${BN + 1}u;
var<workgroup> As: array<f32, ${BK * (BM + 1)}>; // As[k * AP + m]
var<workgroup> Bs: array<f32, ${BK * (BN + 1)}>; // Bs[k * BP + n]
@compute @workgroup_size(${TX}, ${TY})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let m0 = wid.y * BM;
  let n0 = wid.x * BN;
  let kLo = wid.z * d.kSlice;
  let kHi = min(d.K, kLo + d.kSlice);
  slab = wid.z * d.M * d.N;
  // acc[i][j] is C[m0 + lid.y + i*TY, n0 + lid.x + j*TX]
  var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
  for (var k0 = kLo; k0 < kHi; k0 += BK) {
    for (var idx = li; idx < BM * BK; idx += NT) {
      ${aRC}
      let gm = m0 + r; let gk = k0 + c;
      var v = 0.0;
      if (gm < d.M && gk < kHi) { v = a_at(gm, gk); }
      As[c * AP + r] = v;
    }
    for (var idx = li; idx < BK * BN; idx += NT) {
      ${bRC}
      let gk = k0 + r; let gn = n0 + c;
      var v = 0.0;
      if (gk < kHi && gn < d.N) { v = b_at(gk, gn); }
      Bs[r * BP + c] = v;
    }
    workgroupBarrier();
    for (var k = 0u; k < BK; k++) {
      let a = vec4<f32>(
        As[k * AP + lid.y], As[k * AP + lid.y + TY], As[k * AP + lid.y + 2u * TY], As[k * AP + lid.y + 3u * TY]
      );
      let b = vec4<f32>(
        Bs[k * BP + lid.x], Bs[k * BP + lid.x + TX], Bs[k * BP + lid.x + 2u * TX], Bs[k * BP + lid.x + 3u * TX]
      );
      acc[0] += a.x * b;
      acc[1] += a.y * b;
      acc[2] += a.z * b;
      acc[3] += a.w * b;
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    let m = m0 + lid.y + i * TY;
    if (m >= d.M) { break; }
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + lid.x + j * TX;
      if (n < d.N) { store(m, n, acc[i][j]); }
    }
  }
}`;
}

/**
 * 'blocked8x8': an 8x8 register micro-tile per invocation (4x the arithmetic per workgroup-memory
 * read of 'blocked'), a (8 TY) x (8 TX) output block per workgroup (128x128 at 16x16), K-slabs of
 * 8 held in two workgroup buffers (ping-pong), and the next slab loaded from global memory into
 * registers while the current one is multiplied: one barrier per slab instead of two. Global
 * loads are vec4 along the stored matrix's contiguous dimension where it is a multiple of 4 (the
 * same test as 'registers'), four guarded scalar loads otherwise; workgroup memory is read as vec4.
 * An invocation owns rows {4 ty + i, BM/2 + 4 ty + i} and columns {4 tx + j, BN/2 + 4 tx + j}
 * (i, j < 4): neighbouring invocations read neighbouring vec4s, and its stores are vec4 rows.
 * The code is generated unrolled (16 vec4 accumulators as plain variables): dynamic indexing of a
 * private array can put it in local memory on some drivers.
 */
function blocked8x8Wgsl(c: MatmulShaderConfig): string {
  const [TX, TY] = c.wg;
  const NT = TX * TY;
  const BM = 8 * TY;
  const BN = 8 * TX;
  const K8 = BK8;
  const AQ = BM / 4; // vec4s per k-row of As
  const BQ = BN / 4;
  const aSlab = K8 * AQ; // vec4s of one As buffer
  const bSlab = K8 * BQ;
  const L = c.layout;
  const aAlongK = L !== 'tn'; // A stored [M,K]: contiguous over k
  const bAlongK = L === 'nt'; // B stored [N,K]: contiguous over k
  // a vec4 of global memory at (row r, col c4..c4+3) of the stored matrix (row stride `stride`),
  // zero outside rows < `rows`, cols < `cols` (the K side bounded by this layer's kHi); `vec` when
  // bound as vec4 (stride % 4 == 0, and kHi is K or a multiple of 16: a vec4 is all in or all out)
  const load = (
    buf: string,
    vec: boolean | undefined,
    rows: string,
    cols: string,
    stride: string,
    r: string,
    c4: string,
  ) =>
    vec
      ? `select(vec4<f32>(0.0), ${buf}[(${r} * ${stride} + ${c4}) / 4u], ${r} < ${rows} && ${c4} < ${cols})`
      : `vec4<f32>(${[0, 1, 2, 3]
          .map((q) => `ld_${buf}(${r} < ${rows} && ${c4} + ${q}u < ${cols}, ${r} * ${stride} + ${c4} + ${q}u)`)
          .join(', ')})`;
  const scalarLoader = (buf: string) => `
fn ld_${buf}(ok: bool, i: u32) -> f32 { if (ok) { return ${buf}[i]; } return 0.0; }`;
  // tile vec4 number p of this invocation (idx = li + p NT): where it comes from, where it goes
  const aCount = (BM * K8) / 4 / NT;
  const bCount = (BN * K8) / 4 / NT;
  const fetch = (which: 'A' | 'B', p: number, k0: string) => {
    const alongK = which === 'A' ? aAlongK : bAlongK;
    const Q = which === 'A' ? AQ : BQ;
    const o = which === 'A' ? 'm0' : 'n0';
    const outer = which === 'A' ? 'd.M' : 'd.N';
    const vec = which === 'A' ? c.vecA : c.vecB;
    const idx = `(li + ${p * NT}u)`;
    // along k: row = m (or n) = idx / 2, k = (idx % 2) * 4; else row = k = idx / Q, col = (idx % Q) * 4
    return alongK
      ? load(which, vec, outer, 'kHi', 'd.K', `(${o} + ${idx} / 2u)`, `(${k0} + (${idx} % 2u) * 4u)`)
      : load(which, vec, 'kHi', outer, outer, `(${k0} + ${idx} / ${Q}u)`, `(${o} + (${idx} % ${Q}u) * 4u)`);
  };
  const put = (which: 'A' | 'B', p: number, v: string, buf: string) => {
    const alongK = which === 'A' ? aAlongK : bAlongK;
    const Q = which === 'A' ? AQ : BQ;
    const S = which === 'A' ? 'As' : 'Bs';
    const base = `${buf} * ${which === 'A' ? aSlab : bSlab}u`;
    const idx = `(li + ${p * NT}u)`;
    if (!alongK) return `${S}[${base} + ${idx}] = ${v};`;
    // transposed: the 4 k's of this vec4 go to 4 k-rows, at column (row / 4), lane (row % 4)
    return [0, 1, 2, 3]
      .map(
        (q) =>
          `${S}[${base} + ((${idx} % 2u) * 4u + ${q}u) * ${Q}u + (${idx} / 2u) / 4u][(${idx} / 2u) % 4u] = ${v}[${q}];`,
      )
      .join('\n      ');
  };
  const acc: string[] = [];
  for (let i = 0; i < 8; i++) for (let h = 0; h < 2; h++) acc.push(`c${i}${h}`);
  const fma: string[] = [];
  for (let k = 0; k < K8; k++) {
    fma.push(
      `{ let a0 = As[ab + ${k * AQ}u + lid.y]; let a1 = As[ab + ${k * AQ + TY}u + lid.y];` +
        ` let b0 = Bs[bb + ${k * BQ}u + lid.x]; let b1 = Bs[bb + ${k * BQ + TX}u + lid.x];`,
    );
    for (let i = 0; i < 8; i++) {
      const a = `a${i >> 2}.${'xyzw'[i & 3]}`;
      fma.push(`  c${i}0 += ${a} * b0; c${i}1 += ${a} * b1;`);
    }
    fma.push('}');
  }
  // C row of accumulator i: m0 + (i < 4 ? 4 ty + i : BM/2 + 4 ty + i - 4); column group h: n0 + h BN/2 + 4 tx
  const stores: string[] = [];
  for (let i = 0; i < 8; i++) {
    const m = `m0 + ${i < 4 ? 0 : BM / 2}u + 4u * lid.y + ${i & 3}u`;
    for (let h = 0; h < 2; h++) {
      const n = `n0 + ${h * (BN / 2)}u + 4u * lid.x`;
      stores.push(`put4(${m}, ${n}, c${i}${h});`);
    }
  }
  const put4 = c.vecC
    ? `
fn put4(m: u32, n: u32, acc: vec4<f32>) {
  if (m >= d.M || n >= d.N) { return; }
  let i = (m * d.N + n) / 4u;
  if ((d.flags & 4u) != 0u) { C[slab / 4u + i] = acc; return; }
  var o = d.alpha * acc;
  if ((d.flags & 1u) != 0u) { o += vec4<f32>(bias[n], bias[n + 1u], bias[n + 2u], bias[n + 3u]); }
  if ((d.flags & 2u) != 0u) { o += C[i]; }
  C[i] = o;
}`
    : `${scalarStore}
fn put4(m: u32, n: u32, acc: vec4<f32>) {
  if (m >= d.M) { return; }
  for (var j = 0u; j < 4u; j++) { if (n + j < d.N) { store(m, n + j, acc[j]); } }
}`;
  const loaders = `${c.vecA ? '' : scalarLoader('A')}${c.vecB ? '' : scalarLoader('B')}`;
  const fetchAll = (k0: string, prefix: string) =>
    [
      ...Array.from({ length: aCount }, (_, p) => `${prefix}a${p} = ${fetch('A', p, k0)};`),
      ...Array.from({ length: bCount }, (_, p) => `${prefix}b${p} = ${fetch('B', p, k0)};`),
    ].join('\n    ');
  const putAll = (buf: string) =>
    [
      ...Array.from({ length: aCount }, (_, p) => put('A', p, `na${p}`, buf)),
      ...Array.from({ length: bCount }, (_, p) => put('B', p, `nb${p}`, buf)),
    ].join('\n      ');
  const decl = [
    ...Array.from({ length: aCount }, (_, p) => `var na${p} = vec4<f32>(0.0);`),
    ...Array.from({ length: bCount }, (_, p) => `var nb${p} = vec4<f32>(0.0);`),
  ].join(' ');
  return `${header(c)}${loaders}${put4}
var<workgroup> As: array<vec4<f32>, ${2 * aSlab}>; // [buffer][k][m / 4]
var<workgroup> Bs: array<vec4<f32>, ${2 * bSlab}>; // [buffer][k][n / 4]
@compute @workgroup_size(${TX}, ${TY})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let m0 = wid.y * ${BM}u;
  let n0 = wid.x * ${BN}u;
  let kLo = wid.z * d.kSlice;
  let kHi = min(d.K, kLo + d.kSlice);
  slab = wid.z * d.M * d.N;
  ${acc.map((a) => `var ${a} = vec4<f32>(0.0);`).join(' ')}
  ${decl}
  ${fetchAll('kLo', 'n')}
  ${putAll('0u')}
  workgroupBarrier();
  var buf = 0u;
  for (var k0 = kLo; k0 < kHi; k0 += ${K8}u) {
    let more = k0 + ${K8}u < kHi;
    if (more) {
    ${fetchAll(`(k0 + ${K8}u)`, 'n')}
    }
    let ab = buf * ${aSlab}u;
    let bb = buf * ${bSlab}u;
    ${fma.join('\n    ')}
    if (more) {
      ${putAll('(1u - buf)')}
    }
    workgroupBarrier();
    buf = 1u - buf;
  }
  ${stores.join('\n  ')}
}`;
}

/**
 * 'registers': each invocation owns C[m0..m0+3, n0..n0+3]. Per k-step of 4 it loads the 4x4
 * tiles op(A)[m0.., k..] and op(B)[k.., n0..] as four vec4 each, in whichever orientation is
 * contiguous in memory, and accumulates with one mat4x4 product:
 *   columns of Am are rows of op(A) over k (a_i), columns of Bm are rows of op(B) over n (b_k),
 *   acc column i (C row m0+i over n) += Bm * a_i  =  sum_k a_i[k] * b_k,  i.e. acc += Bm * Am.
 * Out-of-range rows/columns are clamped for loads (their results are never stored); the K tail
 * (K % 4) runs one k at a time.
 */
function registersWgsl(c: MatmulShaderConfig): string {
  const L = c.layout;
  // vec4 of 4 consecutive scalar words starting at word index `i` (an expression)
  const scalar4 = (buf: string, i: string) =>
    `vec4<f32>(${buf}[${i}], ${buf}[${i} + 1u], ${buf}[${i} + 2u], ${buf}[${i} + 3u])`;
  const gather4 = (buf: string, idx: (q: string) => string) =>
    `vec4<f32>(${buf}[${idx('mi.x')}], ${buf}[${idx('mi.y')}], ${buf}[${idx('mi.z')}], ${buf}[${idx('mi.w')}])`;
  const gather4n = (buf: string, idx: (q: string) => string) =>
    `vec4<f32>(${buf}[${idx('ni.x')}], ${buf}[${idx('ni.y')}], ${buf}[${idx('ni.z')}], ${buf}[${idx('ni.w')}])`;

  // A tile loads -> Am (mat4x4, column i = op(A) row m0+i over k..k+3)
  let aLoad: string;
  if (L === 'tn') {
    // stored [K,M]: rows k+q are contiguous over m -> columns over m; Am = transpose
    const col = (q: number) =>
      c.vecA ? `A[((k + ${q}u) * d.M + m0) / 4u]` : gather4('A', (mm) => `(k + ${q}u) * d.M + ${mm}`);
    aLoad = `let Am = transpose(mat4x4<f32>(${[0, 1, 2, 3].map(col).join(', ')}));`;
  } else {
    const row = (q: string) => (c.vecA ? `A[(${q} * d.K + k) / 4u]` : scalar4('A', `${q} * d.K + k`));
    aLoad = `let Am = mat4x4<f32>(${['mi.x', 'mi.y', 'mi.z', 'mi.w'].map(row).join(', ')});`;
  }
  // B tile loads -> Bm (column q = op(B) row k+q over n0..n0+3)
  let bLoad: string;
  if (L === 'nt') {
    // stored [N,K]: rows n are contiguous over k -> columns over k; Bm = transpose
    const row = (q: string) => (c.vecB ? `B[(${q} * d.K + k) / 4u]` : scalar4('B', `${q} * d.K + k`));
    bLoad = `let Bm = transpose(mat4x4<f32>(${['ni.x', 'ni.y', 'ni.z', 'ni.w'].map(row).join(', ')}));`;
  } else {
    const row = (q: number) =>
      c.vecB ? `B[((k + ${q}u) * d.N + n0) / 4u]` : gather4n('B', (nn) => `(k + ${q}u) * d.N + ${nn}`);
    bLoad = `let Bm = mat4x4<f32>(${[0, 1, 2, 3].map(row).join(', ')});`;
  }
  // K tail, one k at a time (scalar reads; B/A bound as vec4 are read through the word index)
  const word = (buf: string, vec: boolean | undefined, i: string) =>
    vec ? `${buf}[(${i}) / 4u][(${i}) % 4u]` : `${buf}[${i}]`;
  const aWord = (mm: string) => word('A', c.vecA, L === 'tn' ? `k * d.M + ${mm}` : `${mm} * d.K + k`);
  const bWord = (nn: string) => word('B', c.vecB, L === 'nt' ? `${nn} * d.K + k` : `k * d.N + ${nn}`);
  const mx = ['mi.x', 'mi.y', 'mi.z', 'mi.w'];
  const nx = ['ni.x', 'ni.y', 'ni.z', 'ni.w'];

  const store = c.vecC
    ? `
    let ci = (m * d.N + n0) / 4u;
    var o = d.alpha * acc[i];
    if (addBias) { o += bv; }
    if (accumulate) { o += C[ci]; }
    C[ci] = o;`
    : `
    var o = d.alpha * acc[i];
    if (addBias) { o += bv; }
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + j;
      if (n >= d.N) { break; }
      let ci = m * d.N + n;
      if (accumulate) { C[ci] += o[j]; } else { C[ci] = o[j]; }
    }`;

  return `${header(c)}
@compute @workgroup_size(${c.wg[0]}, ${c.wg[1]})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let n0 = gid.x * 4u;
  let m0 = gid.y * 4u;
  if (n0 >= d.N || m0 >= d.M) { return; }
  let mi = min(vec4<u32>(m0, m0 + 1u, m0 + 2u, m0 + 3u), vec4<u32>(d.M - 1u));
  let ni = min(vec4<u32>(n0, n0 + 1u, n0 + 2u, n0 + 3u), vec4<u32>(d.N - 1u));
  var acc = mat4x4<f32>(); // column i: C row m0+i, over n0..n0+3
  var k = 0u;
  for (; k + 4u <= d.K; k += 4u) {
    ${aLoad}
    ${bLoad}
    acc += Bm * Am;
  }
  for (; k < d.K; k++) {
    let a = vec4<f32>(${mx.map(aWord).join(', ')});
    let b = vec4<f32>(${nx.map(bWord).join(', ')});
    acc[0] += a.x * b;
    acc[1] += a.y * b;
    acc[2] += a.z * b;
    acc[3] += a.w * b;
  }
  let addBias = (d.flags & 1u) != 0u;
  let accumulate = (d.flags & 2u) != 0u;
  var bv = vec4<f32>(0.0);
  if (addBias) { bv = vec4<f32>(bias[ni.x], bias[ni.y], bias[ni.z], bias[ni.w]); }
  for (var i = 0u; i < 4u; i++) {
    let m = m0 + i;
    if (m >= d.M) { break; }${store}
  }
}`;
}

/** The WGSL source of one matmul kernel configuration. */
export function matmulWgsl(c: MatmulShaderConfig): string {
  switch (c.variant) {
    case 'naive':
      return naiveWgsl(c);
    case 'tiled':
      return tiledWgsl(c);
    case 'blocked':
      return blockedWgsl(c);
    case 'blocked8x8':
      return blocked8x8Wgsl(c);
    case 'registers':
      return registersWgsl(c);
  }
}

// ---------------------------------------------------------------------------------------------
// Configuration and dispatch

/**
 * Workgroup shape of a variant on this device: the largest that fits
 * maxComputeInvocationsPerWorkgroup (256 on core adapters, 128 by default in compatibility mode).
 */
export function matmulWorkgroup(gpu: GpuContext, variant: MatmulVariant): [number, number] {
  const limit = gpu.adapter.maxComputeInvocationsPerWorkgroup;
  if (variant === 'registers') {
    if (limit >= 64) return [8, 8];
  } else if (variant === 'tiled') {
    if (limit >= 256) return [16, 16];
    if (limit >= 64) return [8, 8];
  } else if (variant === 'blocked8x8') {
    // 128x128, 128x64 or 64x64 blocks: the tile loads need 16 / TX and 16 / TY whole
    if (limit >= 256) return [16, 16];
    if (limit >= 128) return [16, 8];
    if (limit >= 64) return [8, 8];
  } else {
    // naive and blocked: 16x16, else 16x8 (blocked: 32x64 block), else 8x8 (32x32 block)
    if (limit >= 256) return [16, 16];
    if (limit >= 128) return [16, 8];
    if (limit >= 64) return [8, 8];
  }
  throw new GpuError(
    'DOES_NOT_FIT',
    `matmul '${variant}' needs at least 64 invocations per workgroup; this adapter allows ${limit}`,
  );
}

function shaderConfig(
  gpu: GpuContext,
  dims: MatmulDims,
  layout: MatmulLayout,
  variant: MatmulVariant,
): MatmulShaderConfig {
  const wg = matmulWorkgroup(gpu, variant);
  const c: MatmulShaderConfig = { variant, layout, wg };
  if (variant === 'registers' || variant === 'blocked8x8') {
    c.vecA = (layout === 'tn' ? dims.M : dims.K) % 4 === 0;
    c.vecB = (layout === 'nt' ? dims.K : dims.N) % 4 === 0;
    c.vecC = dims.N % 4 === 0;
  }
  if (variant === 'blocked' || variant === 'tiled' || variant === 'blocked8x8') {
    const words =
      variant === 'blocked'
        ? BK * (4 * wg[1] + 1) + BK * (4 * wg[0] + 1)
        : variant === 'blocked8x8'
          ? 2 * BK8 * (8 * wg[1] + 8 * wg[0])
          : 2 * wg[0] * (wg[0] + 1);
    if (words * 4 > gpu.adapter.maxComputeWorkgroupStorageSize) {
      throw new GpuError(
        'DOES_NOT_FIT',
        `matmul '${variant}' needs ${words * 4} bytes of workgroup memory; ` +
          `this adapter allows ${gpu.adapter.maxComputeWorkgroupStorageSize}`,
      );
    }
  }
  return c;
}

function configKey(c: MatmulShaderConfig): string {
  const v = c.variant === 'registers' || c.variant === 'blocked8x8' ? `-v${+!!c.vecA}${+!!c.vecB}${+!!c.vecC}` : '';
  return `matmul-${c.variant}-${c.layout}-${c.wg[0]}x${c.wg[1]}${v}`;
}

function workgroups(c: MatmulShaderConfig, dims: MatmulDims): [number, number] {
  const [wx, wy] = c.wg;
  switch (c.variant) {
    case 'naive':
    case 'tiled':
      return [ceilDiv(dims.N, wx), ceilDiv(dims.M, wy)];
    case 'blocked':
      return [ceilDiv(dims.N, 4 * wx), ceilDiv(dims.M, 4 * wy)];
    case 'blocked8x8':
      return [ceilDiv(dims.N, 8 * wx), ceilDiv(dims.M, 8 * wy)];
    case 'registers':
      return [ceilDiv(ceilDiv(dims.N, 4), wx), ceilDiv(ceilDiv(dims.M, 4), wy)];
  }
}

// Bound at binding 4 when there is no bias (the flag keeps it unread): one per device.
const noBiasBuffers = new WeakMap<GpuContext, GPUBuffer>();
function noBias(gpu: GpuContext): GPUBuffer {
  let b = noBiasBuffers.get(gpu);
  if (!b) {
    b = gpu.storage(16, 'matmul-no-bias');
    noBiasBuffers.set(gpu, b);
  }
  return b;
}

function checkSize(buf: GPUBuffer, elems: number, what: string): void {
  if (buf.size < elems * 4)
    throw new Error(`matmul: ${what} needs ${elems} floats, its buffer holds ${Math.floor(buf.size / 4)}`);
}

function checkDims(d: MatmulDims): void {
  for (const k of ['M', 'K', 'N'] as const) {
    if (!Number.isInteger(d[k]) || d[k] < 0)
      throw new Error(`matmul: ${k} must be a non-negative integer, got ${d[k]}`);
  }
}

/** The variants that run split-K (MatmulOptions.splitK). */
export const SPLIT_K_VARIANTS: readonly MatmulVariant[] = ['blocked', 'blocked8x8'];

/** A split-K slice is a multiple of this many k's: whole K-slabs of both variants (16 and 8), whole vec4s. */
export const SPLIT_K_QUANTUM = 16;

/**
 * The K range per layer and the number of layers that `splitK` slices of K come to: slices are
 * rounded up to a multiple of SPLIT_K_QUANTUM, so a short K runs in fewer (at least 1).
 */
export function splitKSlices(K: number, splitK: number): { kSlice: number; slices: number } {
  if (!Number.isInteger(splitK) || splitK < 1)
    throw new Error(`matmul: splitK must be a positive integer, got ${splitK}`);
  if (splitK === 1 || K === 0) return { kSlice: K, slices: 1 };
  const kSlice = ceilDiv(ceilDiv(K, splitK), SPLIT_K_QUANTUM) * SPLIT_K_QUANTUM;
  return { kSlice, slices: ceilDiv(K, kSlice) };
}

const SPLIT_K_REDUCE_WG = 64;

/** C = alpha (sum over the slices' partial products, in slice order) (+ bias) (+ C). */
export const SPLIT_K_REDUCE_WGSL = /* wgsl */ `
// flags: bit 0 add bias, bit 1 accumulate into C (as the matmul kernels')
struct Reduce { count: u32, N: u32, slices: u32, alpha: f32, flags: u32 };
@group(0) @binding(0) var<storage, read> P: array<f32>;
@group(0) @binding(1) var<storage, read_write> C: array<f32>;
@group(0) @binding(2) var<uniform> u: Reduce;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@compute @workgroup_size(${SPLIT_K_REDUCE_WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  for (var i = gid.x; i < u.count; i += nwg.x * ${SPLIT_K_REDUCE_WG}u) {
    var s = 0.0;
    for (var z = 0u; z < u.slices; z++) { s += P[z * u.count + i]; }
    var o = u.alpha * s;
    if ((u.flags & 1u) != 0u) { o += bias[i % u.N]; }
    if ((u.flags & 2u) != 0u) { o += C[i]; }
    C[i] = o;
  }
}`;

/**
 * Builds the dispatch for C = alpha op(A) op(B) (+ bias) (+ C); the uniform buffer and bind group
 * are created here, once. Returns [] when C is empty. With splitK > 1: two dispatches, the sliced
 * product into `partials` and the reduce into C.
 */
export function matmul(
  gpu: GpuContext,
  buffers: MatmulBuffers,
  dims: MatmulDims,
  options: MatmulOptions = {},
): Dispatch[] {
  checkDims(dims);
  if (dims.M === 0 || dims.N === 0) return [];
  const layout = options.layout ?? 'nn';
  const variant = options.variant ?? DEFAULT_MATMUL_VARIANT;
  const { M, K, N } = dims;
  checkSize(buffers.a, M * K, 'A');
  checkSize(buffers.b, K * N, 'B');
  checkSize(buffers.c, M * N, 'C');
  if (buffers.bias) checkSize(buffers.bias, N, 'bias');
  const splitK = options.splitK ?? 1;
  const { kSlice, slices } = splitKSlices(K, splitK);
  if (splitK > 1) {
    if (!SPLIT_K_VARIANTS.includes(variant))
      throw new Error(`matmul: splitK runs on ${SPLIT_K_VARIANTS.join(' and ')}, not '${variant}'`);
    if (!buffers.partials) throw new Error('matmul: splitK needs a partials buffer');
    if (slices > 1) checkSize(buffers.partials, slices * M * N, 'partials');
  }
  const c = shaderConfig(gpu, dims, layout, variant);
  const pipeline = gpu.pipeline(configKey(c), matmulWgsl(c));
  const alpha = options.alpha ?? 1;
  const flags = (buffers.bias ? 1 : 0) | (options.accumulate ? 2 : 0);
  const bias = buffers.bias ?? noBias(gpu);
  const [wx, wy] = workgroups(c, dims);
  if (slices === 1) {
    const uniform = gpu.uniform([M, N, K, alpha, flags, kSlice], new Set([3]), 'matmul-dims');
    return [gpu.dispatchOf(pipeline, [buffers.a, buffers.b, buffers.c, uniform, bias], [wx, wy])];
  }
  const partials = buffers.partials as GPUBuffer; // slices > 1 only with splitK > 1, checked above
  const sliced = gpu.uniform([M, N, K, 1, 4, kSlice], new Set([3]), 'matmul-dims');
  const reduce = gpu.pipeline('matmul-splitk-reduce', SPLIT_K_REDUCE_WGSL);
  const reduceDims = gpu.uniform([M * N, N, slices, alpha, flags], new Set([3]), 'matmul-splitk-reduce');
  return [
    gpu.dispatchOf(pipeline, [buffers.a, buffers.b, partials, sliced, noBias(gpu)], [wx, wy, slices]),
    gpu.dispatchOf(reduce, [partials, buffers.c, reduceDims, bias], [gpu.gridStrideGroups(M * N, SPLIT_K_REDUCE_WG)]),
  ];
}

/** FLOPs of one matmul (2 per multiply-add). */
export function matmulFlops(d: MatmulDims): number {
  return 2 * d.M * d.K * d.N;
}

/** Median ms per run of a dispatch list: `warmup` untimed runs, then `runs` timed ones. */
export async function timeDispatches(gpu: GpuContext, dispatches: Dispatch[], runs = 3, warmup = 1): Promise<number> {
  for (let i = 0; i < warmup; i++) gpu.run(dispatches);
  await gpu.finish();
  const ms: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    gpu.run(dispatches);
    await gpu.finish();
    ms.push(performance.now() - t0);
  }
  ms.sort((a, b) => a - b);
  return ms[Math.floor(ms.length / 2)];
}

/** One product of a step, as timeMatmulVariants weighs it. */
export interface TimedMatmul extends MatmulDims {
  /** the layouts the step runs it in (default: PickMatmulOptions.layouts) */
  layouts?: readonly MatmulLayout[];
  /** how many times a step runs it in each of those layouts (default 1): its time is weighted by it */
  count?: number;
}

export interface PickMatmulOptions {
  /** candidates (default: every variant but 'naive', the baseline) */
  variants?: readonly MatmulVariant[];
  /** layouts timed per size where the size names none (default: all three; the backward uses each) */
  layouts?: readonly MatmulLayout[];
  /** timed runs per (variant, layout, size) after one warm-up (default 2) */
  runs?: number;
}

export interface MatmulTiming {
  variant: MatmulVariant;
  /** summed median ms over the sizes and layouts timed, each weighted by its count */
  ms: number;
}

/**
 * Times the variants on this device for the given problem sizes (the shapes the engine runs,
 * e.g. {M: batch*seq, K: 768, N: 2304}, in the layouts it runs them) and returns them fastest
 * first. Every dispatch runs once untimed first: that compiles the pipelines and lifts a GPU's
 * clocks from idle (345 MHz on the H200) before the first variant is timed, which would otherwise
 * pay for both. Inputs are zeros: speed does not depend on the values. A few runs each: keep
 * sizes modest on software adapters.
 */
export async function timeMatmulVariants(
  gpu: GpuContext,
  sizes: TimedMatmul | readonly TimedMatmul[],
  options: PickMatmulOptions = {},
): Promise<MatmulTiming[]> {
  const list = Array.isArray(sizes) ? (sizes as readonly TimedMatmul[]) : [sizes as TimedMatmul];
  const variants = options.variants ?? MATMUL_VARIANTS.filter((v) => v !== 'naive');
  const layouts = options.layouts ?? MATMUL_LAYOUTS;
  const runs = options.runs ?? 2;
  const results: MatmulTiming[] = [];
  const temps: GPUBuffer[] = [];
  try {
    const jobs = list.map((d) => {
      const a = gpu.storage(d.M * d.K * 4, 'pick-a');
      const b = gpu.storage(d.K * d.N * 4, 'pick-b');
      const c = gpu.storage(d.M * d.N * 4, 'pick-c');
      temps.push(a, b, c);
      return { d, a, b, c };
    });
    const runsOf = (variant: MatmulVariant) =>
      jobs.flatMap(({ d, a, b, c }) =>
        (d.layouts ?? layouts).map((layout) => ({
          dispatches: matmul(gpu, { a, b, c }, d, { layout, variant }),
          count: d.count ?? 1,
        })),
      );
    const planned = variants.map((variant) => ({ variant, runs: runsOf(variant) }));
    for (const p of planned) for (const r of p.runs) gpu.run(r.dispatches);
    await gpu.finish();
    for (const p of planned) {
      let ms = 0;
      for (const r of p.runs) ms += r.count * (await timeDispatches(gpu, r.dispatches, runs, 0));
      results.push({ variant: p.variant, ms });
    }
  } finally {
    for (const t of temps) t.destroy();
  }
  return results.sort((x, y) => x.ms - y.ms);
}

export interface SplitKTiming {
  splitK: number;
  /** median ms of the product (and its reduce) */
  ms: number;
}

/**
 * Times one product on this device at each split-K count (1: none) with `variant`, after one
 * untimed run of each, and returns them fastest first. Inputs are zeros, as timeMatmulVariants'.
 */
export async function timeSplitK(
  gpu: GpuContext,
  dims: MatmulDims,
  layout: MatmulLayout,
  variant: MatmulVariant,
  counts: readonly number[],
  runs = 3,
): Promise<SplitKTiming[]> {
  const { M, K, N } = dims;
  const most = Math.max(...counts.map((s) => splitKSlices(K, s).slices));
  const a = gpu.storage(M * K * 4, 'pick-a');
  const b = gpu.storage(K * N * 4, 'pick-b');
  const c = gpu.storage(M * N * 4, 'pick-c');
  const partials = most > 1 ? gpu.storage(most * M * N * 4, 'pick-partials') : undefined;
  try {
    const planned = counts.map((splitK) => ({
      splitK,
      dispatches: matmul(gpu, { a, b, c, partials }, dims, { layout, variant, splitK }),
    }));
    for (const p of planned) gpu.run(p.dispatches);
    await gpu.finish();
    const results: SplitKTiming[] = [];
    for (const p of planned) results.push({ splitK: p.splitK, ms: await timeDispatches(gpu, p.dispatches, runs, 0) });
    return results.sort((x, y) => x.ms - y.ms);
  } finally {
    for (const t of [a, b, c, partials]) t?.destroy();
  }
}

/** The fastest variant on this device for these sizes (see timeMatmulVariants). */
export async function pickFastestMatmul(
  gpu: GpuContext,
  sizes: TimedMatmul | readonly TimedMatmul[],
  options: PickMatmulOptions = {},
): Promise<MatmulVariant> {
  return (await timeMatmulVariants(gpu, sizes, options))[0].variant;
}
