/**
 * gqaAttention: the grouped-query causal self-attention core of LLaMA / Qwen2, from the rotated
 * q, k and the v projection to the concatenated heads (o_proj is a separate linear); the
 * reference is packages/model/src/ops/gqa-attention.ts, the GPT-2 counterpart kernels/attention.ts.
 * Layout as the reference: q and the output are [B*T, H*hd] (= [B, T, H, hd]), k and v are
 * [B*T, Hkv*hd]; H % Hkv = 0 and query head h reads kv head g(h) = floor(h / G), G = H / Hkv
 * (transformers' `repeat_kv`). scale = 1 / sqrt(hd). For each (b, h):
 *   forward   s_ij = scale q_i . k_j (j <= i),  p_i = softmax(s_i) (max subtracted),
 *             o_i = sum_j p_ij v_j;  p is saved, [B, H, T, T] ("probs").
 *   backward  dp_ij = do_i . v_j,  ds_ij = scale p_ij (dp_ij - sum_j' p_ij' dp_ij'),
 *             dq_i = sum_{j<=i} ds_ij k_j,
 *             dk_j = sum_{h in group} sum_{i>=j} ds^h_ij q^h_i,
 *             dv_j = sum_{h in group} sum_{i>=j} p^h_ij do^h_i;
 *             ds goes through a scratch [B, H, T, T] ("dscores"; one can serve every layer).
 * The group sums need no atomics: every dk / dv output element belongs to one invocation, which
 * loops over the G query heads of its kv head and over the query positions (a contraction of
 * length G * T instead of T). Only entries with j <= i of probs and dscores are written or read:
 * the upper triangle keeps what the buffer held. Every entry of out, dq, dk and dv is written
 * (no zeroing needed). T and hd are arbitrary; nothing needs to be a multiple of a tile.
 *
 * As for GPT-2, probabilities are stored rather than recomputed from a log-sum-exp: the backward
 * is then plain batched products, at B*H*T^2 floats per layer (SmolLM2-135M, H = 9, at T = 256:
 * 2.25 MiB per sequence; gpu.storage throws DOES_NOT_FIT where the binding limit is passed).
 *
 * Four kernels, each in two versions (`GqaAttentionVariant`, the same two as GPT-2's attention,
 * so the engine's `attention` variant setting can choose for both):
 *   softmax   scores + softmax, writing probs                        (forward)
 *   dscores   dp, then ds in place of dp                             (backward)
 *   rows      C_i = sum_{j<=i} A_ij M_j per query head, M read at the head's kv head:
 *             out = probs v (forward) and dq = ds k (backward)
 *   cols      C_j = sum_{h in group} sum_{i>=j} A^h_ij M^h_i per kv head, M per query head:
 *             dk = ds^T q and dv = probs^T do (backward)
 *   'naive'   one invocation per softmax row (softmax, dscores) or per output element (rows,
 *             cols), everything straight from global memory: no workgroup memory, no barriers.
 *             Fast on CPU Vulkan drivers (barriers are very slow there), slow on a GPU.
 *   'tiled'   (default, tuned for GPUs) 128-invocation workgroups, at most 7.2 KiB of workgroup
 *             memory whatever hd and T (fits the spec's 16 KiB minimum and compat's 128 limit).
 *             softmax / dscores: one workgroup per 16 query rows of one (b, h); key tiles of
 *             32, head dim staged 32 at a time (row and key tiles, rows padded to 33 floats: no
 *             bank conflicts); each invocation owns 4 scores of one row (keys j = 8u + lane);
 *             pass 1 writes raw scores (resp. dp) and keeps an online max / sum-exp (resp. sum
 *             p dp), the 8 partials of a row are combined once through workgroup memory, pass 2
 *             rewrites the invocation's own entries normalized (no barrier needed). Causal: key
 *             tiles stop at the row tile's last row.
 *             rows / cols: one workgroup per 16 x 32 output tile of one (b, head), contraction
 *             staged 32 at a time, 4 outputs per invocation. rows runs the contraction only to
 *             the tile's last row; cols starts it at the tile's first row, once per query head
 *             of the group, and loads A transposed with the tile row index fastest (coalesced).
 *   Measured on SwiftShader (Node Dawn, 2 shared CPU cores; says nothing about a GPU), B=1
 *   T=64 H=9 Hkv=3 hd=64 (printed by test/gqa-attention.test.ts): 'naive' forward 49 ms,
 *   backward 97 ms; 'tiled' 163 ms and 186 ms (up to twice that while the machine is busy).
 *   No GPU figure yet (written on a machine without one).
 *
 * Bindings: softmax 0 q, 1 k, 2 probs, 3 uniform;  dscores 0 dout, 1 v, 2 probs, 3 dscores,
 *           4 uniform;  rows / cols 0 a (probs or dscores), 1 m (v, k / q, dout), 2 c (output),
 *           3 uniform. Uniform {B, T, H, Hkv, hd, scale, G, -}.
 */
import { GpuError, ceilDiv, type Dispatch, type GpuContext } from '../gpu';
import type { AttentionVariant } from './attention';
import { KernelDimsError, checkKernelDims } from './rmsnorm';

export type GqaAttentionVariant = AttentionVariant;
export const GQA_ATTENTION_VARIANTS: readonly GqaAttentionVariant[] = ['naive', 'tiled'];
export const DEFAULT_GQA_ATTENTION_VARIANT: GqaAttentionVariant = 'tiled';

export interface GqaAttentionDims {
  B: number;
  T: number;
  /** query heads (num_attention_heads) */
  H: number;
  /** key / value heads (num_key_value_heads); divides H */
  Hkv: number;
  /** head_dim */
  headDim: number;
}

export interface GqaAttentionForwardBuffers {
  /** [B*T, H*hd], rotated */
  q: GPUBuffer;
  /** [B*T, Hkv*hd], rotated */
  k: GPUBuffer;
  /** [B*T, Hkv*hd] */
  v: GPUBuffer;
  /** [B*T, H*hd] output: the heads side by side */
  out: GPUBuffer;
  /** [B, H, T, T] output, softmax probabilities saved for the backward (lower triangle) */
  probs: GPUBuffer;
}

export interface GqaAttentionBackwardBuffers {
  /** [B*T, H*hd], the forward's q */
  q: GPUBuffer;
  /** [B*T, Hkv*hd], the forward's k */
  k: GPUBuffer;
  /** [B*T, Hkv*hd], the forward's v */
  v: GPUBuffer;
  /** [B, H, T, T], from the forward */
  probs: GPUBuffer;
  /** [B*T, H*hd] gradient of out */
  dout: GPUBuffer;
  /** [B, H, T, T] scratch (may be shared by every layer) */
  dscores: GPUBuffer;
  /** [B*T, H*hd] output gradient of q (every entry written) */
  dq: GPUBuffer;
  /** [B*T, Hkv*hd] output gradient of k, summed over each group (every entry written) */
  dk: GPUBuffer;
  /** [B*T, Hkv*hd] output gradient of v, summed over each group (every entry written) */
  dv: GPUBuffer;
}

export interface GqaAttentionOptions {
  variant?: GqaAttentionVariant;
}

/** Floats in probs (and in the dscores scratch): B * H * T * T. */
export function gqaAttentionProbsLength(d: Pick<GqaAttentionDims, 'B' | 'H' | 'T'>): number {
  return d.B * d.H * d.T * d.T;
}

// ---------------------------------------------------------------------------------------------
// WGSL

const WG = 128;
const BR = 16; // query rows per tile
const BC = 32; // keys per tile (softmax, dscores) / output columns per tile (rows, cols)
const KC = 32; // head-dim chunk (softmax, dscores) / contraction chunk (rows, cols)
const PAD = KC + 1;

const UNIFORM = /* wgsl */ `
struct Dims { B: u32, T: u32, H: u32, Hkv: u32, hd: u32, scale: f32, G: u32, _pad: u32 };`;

const SOFTMAX_BINDINGS = /* wgsl */ `${UNIFORM}
@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read_write> probs: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;
`;

const DSCORES_BINDINGS = /* wgsl */ `${UNIFORM}
@group(0) @binding(0) var<storage, read> dout: array<f32>;
@group(0) @binding(1) var<storage, read> v: array<f32>;
@group(0) @binding(2) var<storage, read> probs: array<f32>;
@group(0) @binding(3) var<storage, read_write> dscores: array<f32>;
@group(0) @binding(4) var<uniform> dims: Dims;
`;

/** rows and cols: C = A M with A one of probs / dscores [B, H, T, T]. */
const PRODUCT_BINDINGS = /* wgsl */ `${UNIFORM}
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> m: array<f32>;
@group(0) @binding(2) var<storage, read_write> c_out: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;
`;

// ---- naive ----------------------------------------------------------------------------------

const GRID_STRIDE = `nwg.x * ${WG}u`;
const NAIVE_ENTRY = /* wgsl */ `@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>)`;

export const GQA_SOFTMAX_NAIVE_WGSL = /* wgsl */ `${SOFTMAX_BINDINGS}
${NAIVE_ENTRY} {
  let T = dims.T; let hd = dims.hd; let qW = dims.H * hd; let kvW = dims.Hkv * hd;
  for (var idx = gid.x; idx < dims.B * dims.H * T; idx += ${GRID_STRIDE}) {
    let bh = idx / T; let i = idx - bh * T; let b = bh / dims.H; let h = bh - b * dims.H;
    let qBase = (b * T + i) * qW + h * hd;
    let kOff = (h / dims.G) * hd;
    let pRow = (bh * T + i) * T;
    var mx = -3.0e38;
    var l = 0.0;
    for (var j = 0u; j <= i; j++) {
      let kBase = (b * T + j) * kvW + kOff;
      var s = 0.0;
      for (var c = 0u; c < hd; c++) { s += q[qBase + c] * k[kBase + c]; }
      s *= dims.scale;
      probs[pRow + j] = s;
      if (s > mx) { l = l * exp(mx - s) + 1.0; mx = s; } else { l += exp(s - mx); }
    }
    let inv = 1.0 / l;
    for (var j = 0u; j <= i; j++) { probs[pRow + j] = exp(probs[pRow + j] - mx) * inv; }
  }
}`;

export const GQA_DSCORES_NAIVE_WGSL = /* wgsl */ `${DSCORES_BINDINGS}
${NAIVE_ENTRY} {
  let T = dims.T; let hd = dims.hd; let qW = dims.H * hd; let kvW = dims.Hkv * hd;
  for (var idx = gid.x; idx < dims.B * dims.H * T; idx += ${GRID_STRIDE}) {
    let bh = idx / T; let i = idx - bh * T; let b = bh / dims.H; let h = bh - b * dims.H;
    let oBase = (b * T + i) * qW + h * hd;
    let vOff = (h / dims.G) * hd;
    let pRow = (bh * T + i) * T;
    var rd = 0.0;
    for (var j = 0u; j <= i; j++) {
      let vBase = (b * T + j) * kvW + vOff;
      var dp = 0.0;
      for (var c = 0u; c < hd; c++) { dp += dout[oBase + c] * v[vBase + c]; }
      dscores[pRow + j] = dp;
      rd += probs[pRow + j] * dp;
    }
    for (var j = 0u; j <= i; j++) { dscores[pRow + j] = probs[pRow + j] * (dscores[pRow + j] - rd) * dims.scale; }
  }
}`;

/** rows, naive: one invocation per element (b, i, h, c) of out / dq. */
export const GQA_ROWS_NAIVE_WGSL = /* wgsl */ `${PRODUCT_BINDINGS}
${NAIVE_ENTRY} {
  let T = dims.T; let hd = dims.hd; let qW = dims.H * hd; let kvW = dims.Hkv * hd;
  for (var idx = gid.x; idx < dims.B * T * qW; idx += ${GRID_STRIDE}) {
    let row = idx / qW; let col = idx - row * qW; let b = row / T; let i = row - b * T;
    let h = col / hd; let c = col - h * hd;
    let aRow = ((b * dims.H + h) * T + i) * T;
    let mCol = (h / dims.G) * hd + c;
    var acc = 0.0;
    for (var j = 0u; j <= i; j++) { acc += a[aRow + j] * m[(b * T + j) * kvW + mCol]; }
    c_out[idx] = acc;
  }
}`;

/** cols, naive: one invocation per element (b, j, g, c) of dk / dv, looping over its group's heads. */
export const GQA_COLS_NAIVE_WGSL = /* wgsl */ `${PRODUCT_BINDINGS}
${NAIVE_ENTRY} {
  let T = dims.T; let hd = dims.hd; let qW = dims.H * hd; let kvW = dims.Hkv * hd;
  for (var idx = gid.x; idx < dims.B * T * kvW; idx += ${GRID_STRIDE}) {
    let row = idx / kvW; let col = idx - row * kvW; let b = row / T; let j = row - b * T;
    let g = col / hd; let c = col - g * hd;
    var acc = 0.0;
    for (var h = g * dims.G; h < (g + 1u) * dims.G; h++) {
      let aBase = (b * dims.H + h) * T * T + j;
      for (var i = j; i < T; i++) { acc += a[aBase + i * T] * m[(b * T + i) * qW + h * hd + c]; }
    }
    c_out[idx] = acc;
  }
}`;

// ---- tiled ----------------------------------------------------------------------------------

/**
 * Row kernel skeleton (softmax, dscores): X_i . Y_j for 16 query rows i x all keys j <= i of one
 * (b, h); `x_at` reads the query-side operand at head h, `y_at` the key-side one at kv head
 * g(h). `pass1` runs per causal entry (a: the dot, j, pRow), `combine` once after every
 * invocation's `partial` is in `st`, `pass2` per own entry.
 */
function rowKernel(p: {
  bindings: string;
  x: string;
  y: string;
  init: string;
  pass1: string;
  partial: string;
  combine: string;
  pass2: string;
}): string {
  return /* wgsl */ `${p.bindings}
const BR = ${BR}u;
const BC = ${BC}u;
const KC = ${KC}u;
const PAD = ${PAD}u;
var<workgroup> xs: array<f32, ${BR * PAD}>; // [BR][PAD]: query-side tile, head-dim chunk
var<workgroup> ys: array<f32, ${BC * PAD}>; // [BC][PAD]: key-side tile, head-dim chunk
var<workgroup> st: array<vec2<f32>, ${WG}>; // per-invocation row partials

// x at (row b*T+i, query head h, dim c); y at (row b*T+j, kv head g, dim c)
fn x_at(row: u32, h: u32, c: u32) -> f32 { ${p.x} }
fn y_at(row: u32, g: u32, c: u32) -> f32 { ${p.y} }

@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let T = dims.T;
  let hd = dims.hd;
  let bh = wid.y;
  let b = bh / dims.H;
  let h = bh - b * dims.H;
  let g = h / dims.G;
  let i0 = wid.x * BR;
  let r = lid >> 3u;   // row of the tile
  let lane = lid & 7u; // keys j = j0 + lane + 8u
  let i = i0 + r;
  let pRow = (bh * T + i) * T;
  let jEnd = min(i0 + BR, T);
  ${p.init}
  for (var j0 = 0u; j0 < jEnd; j0 += BC) {
    var acc = vec4<f32>(0.0);
    for (var c0 = 0u; c0 < hd; c0 += KC) {
      for (var e = lid; e < BR * KC; e += ${WG}u) {
        let rr = e / KC; let cc = e % KC; let ii = i0 + rr; let c = c0 + cc;
        var val = 0.0;
        if (ii < T && c < hd) { val = x_at(b * T + ii, h, c); }
        xs[rr * PAD + cc] = val;
      }
      for (var e = lid; e < BC * KC; e += ${WG}u) {
        let jj = e / KC; let cc = e % KC; let j = j0 + jj; let c = c0 + cc;
        var val = 0.0;
        if (j < T && c < hd) { val = y_at(b * T + j, g, c); }
        ys[jj * PAD + cc] = val;
      }
      workgroupBarrier();
      for (var kk = 0u; kk < KC; kk++) {
        let xv = xs[r * PAD + kk];
        acc += xv * vec4<f32>(
          ys[lane * PAD + kk], ys[(lane + 8u) * PAD + kk], ys[(lane + 16u) * PAD + kk], ys[(lane + 24u) * PAD + kk]
        );
      }
      workgroupBarrier();
    }
    for (var u = 0u; u < 4u; u++) {
      let j = j0 + lane + 8u * u;
      if (i < T && j <= i) {
        let a = acc[u];
        ${p.pass1}
      }
    }
  }
  st[lid] = ${p.partial};
  workgroupBarrier();
  ${p.combine}
  if (i < T) {
    for (var j = lane; j <= i; j += 8u) {
      ${p.pass2}
    }
  }
}`;
}

export const GQA_SOFTMAX_TILED_WGSL = rowKernel({
  bindings: SOFTMAX_BINDINGS,
  x: 'return q[row * dims.H * dims.hd + h * dims.hd + c];',
  y: 'return k[row * dims.Hkv * dims.hd + g * dims.hd + c];',
  init: 'var mx = -3.0e38; var l = 0.0;',
  pass1: `let s = a * dims.scale;
        probs[pRow + j] = s;
        if (s > mx) { l = l * exp(mx - s) + 1.0; mx = s; } else { l += exp(s - mx); }`,
  partial: 'vec2<f32>(mx, l)',
  combine: `var M = -3.0e38;
  for (var kk = 0u; kk < 8u; kk++) { M = max(M, st[r * 8u + kk].x); }
  var L = 0.0;
  for (var kk = 0u; kk < 8u; kk++) { L += st[r * 8u + kk].y * exp(st[r * 8u + kk].x - M); }
  let inv = select(0.0, 1.0 / L, L > 0.0);`,
  pass2: 'probs[pRow + j] = exp(probs[pRow + j] - M) * inv;',
});

export const GQA_DSCORES_TILED_WGSL = rowKernel({
  bindings: DSCORES_BINDINGS,
  x: 'return dout[row * dims.H * dims.hd + h * dims.hd + c];',
  y: 'return v[row * dims.Hkv * dims.hd + g * dims.hd + c];',
  init: 'var rd = 0.0;',
  pass1: `dscores[pRow + j] = a;
        rd += probs[pRow + j] * a;`,
  partial: 'vec2<f32>(rd, 0.0)',
  combine: `var R = 0.0;
  for (var kk = 0u; kk < 8u; kk++) { R += st[r * 8u + kk].x; }`,
  pass2: 'dscores[pRow + j] = probs[pRow + j] * (dscores[pRow + j] - R) * dims.scale;',
});

/**
 * Product kernel skeleton (rows, cols): a 16 x 32 tile C[i0.., c0..] of one (b, head), summed
 * over heads hh in [hFirst, hFirst + hCount) and contraction index kIdx in [kBegin, kEnd).
 * `setup` defines b, the head range, the range and the output head; `aLoad` defines rr, kk
 * (which tile index runs fastest) and `aVal` the masked A; `mAt` reads M; `store` writes.
 */
function productKernel(p: { setup: string; aLoad: string; aVal: string; mAt: string; store: string }): string {
  return /* wgsl */ `${PRODUCT_BINDINGS}
const BR = ${BR}u;
const BN = ${BC}u;
const KK = ${KC}u;
const PAD = ${PAD}u;
var<workgroup> as_: array<f32, ${BR * PAD}>; // [BR][PAD]: A tile
var<workgroup> ms: array<f32, ${KC * BC}>;   // [KK][BN]:  M tile

@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let T = dims.T;
  let hd = dims.hd;
  let i0 = wid.x * BR;
  let c0 = wid.y * BN;
  let r = lid >> 3u;
  let lane = lid & 7u;
  ${p.setup}
  var acc = vec4<f32>(0.0);
  for (var hh = hFirst; hh < hFirst + hCount; hh++) {
    let aBase = (b * dims.H + hh) * T * T;
    for (var k0 = kBegin; k0 < kEnd; k0 += KK) {
      for (var e = lid; e < BR * KK; e += ${WG}u) {
        ${p.aLoad}
        let i = i0 + rr; let kIdx = k0 + kk;
        var val = 0.0;
        ${p.aVal}
        as_[rr * PAD + kk] = val;
      }
      for (var e = lid; e < KK * BN; e += ${WG}u) {
        let kk = e / BN; let cc = e % BN; let kIdx = k0 + kk; let c = c0 + cc;
        var val = 0.0;
        if (kIdx < T && c < hd) { val = ${p.mAt}; }
        ms[kk * BN + cc] = val;
      }
      workgroupBarrier();
      for (var kk = 0u; kk < KK; kk++) {
        let av = as_[r * PAD + kk];
        acc += av * vec4<f32>(
          ms[kk * BN + lane], ms[kk * BN + lane + 8u], ms[kk * BN + lane + 16u], ms[kk * BN + lane + 24u]
        );
      }
      workgroupBarrier();
    }
  }
  let i = i0 + r;
  for (var u = 0u; u < 4u; u++) {
    let c = c0 + lane + 8u * u;
    if (i < T && c < hd) { ${p.store} }
  }
}`;
}

/** rows, tiled: per (b, h), C_i = sum_{k<=i} A_ik M_k with M at kv head g(h). */
export const GQA_ROWS_TILED_WGSL = productKernel({
  setup: `let b = wid.z / dims.H;
  let h = wid.z - b * dims.H;
  let hFirst = h;
  let hCount = 1u;
  let kBegin = 0u;
  let kEnd = min(i0 + BR, T);
  let mOff = (h / dims.G) * hd;`,
  aLoad: 'let rr = e / KK; let kk = e % KK;',
  aVal: 'if (i < T && kIdx <= i) { val = a[aBase + i * T + kIdx]; }',
  mAt: 'm[(b * T + kIdx) * dims.Hkv * hd + mOff + c]',
  store: 'c_out[(b * T + i) * dims.H * hd + h * hd + c] = acc[u];',
});

/** cols, tiled: per (b, g), C_j = sum_{hh in group} sum_{k>=j} A^hh_kj M^hh_k with M at query head hh. */
export const GQA_COLS_TILED_WGSL = productKernel({
  setup: `let b = wid.z / dims.Hkv;
  let g = wid.z - b * dims.Hkv;
  let hFirst = g * dims.G;
  let hCount = dims.G;
  let kBegin = i0;
  let kEnd = T;`,
  // A is read transposed (A[kIdx][i]): the tile row index runs fastest so the loads coalesce
  aLoad: 'let rr = e % BR; let kk = e / BR;',
  aVal: 'if (i < T && kIdx < T && kIdx >= i) { val = a[aBase + kIdx * T + i]; }',
  mAt: 'm[(b * T + kIdx) * dims.H * hd + hh * hd + c]',
  store: 'c_out[(b * T + i) * dims.Hkv * hd + g * hd + c] = acc[u];',
});

// ---------------------------------------------------------------------------------------------
// Dispatch

/** Checks dims and limits; `storageBuffers` bound at most. */
function plan(
  gpu: GpuContext,
  d: GqaAttentionDims,
  variant: GqaAttentionVariant,
  storageBuffers: number,
): { uniform: GPUBuffer } {
  checkKernelDims('gqaAttention', { B: d.B, T: d.T, H: d.H, Hkv: d.Hkv, headDim: d.headDim }, 1);
  if (d.H % d.Hkv !== 0)
    throw new KernelDimsError(
      `gqaAttention: num_attention_heads = ${d.H} is not a multiple of num_key_value_heads = ${d.Hkv}`,
    );
  if (!GQA_ATTENTION_VARIANTS.includes(variant))
    throw new KernelDimsError(
      `gqaAttention: variant must be one of ${GQA_ATTENTION_VARIANTS.join(', ')}, got '${variant}'`,
    );
  const a = gpu.adapter;
  const need = (what: string, have: number, want: number) => {
    if (have < want)
      throw new GpuError(
        'DOES_NOT_FIT',
        `gqaAttention '${variant}' needs ${want} ${what}; this adapter allows ${have}`,
      );
  };
  gpu.requireInvocations(`gqaAttention '${variant}'`, WG);
  need('storage buffers per shader stage', a.maxStorageBuffersPerShaderStage, storageBuffers);
  if (variant === 'tiled') {
    need(
      'bytes of workgroup memory',
      a.maxComputeWorkgroupStorageSize,
      Math.max((BR * PAD + BC * PAD + 2 * WG) * 4, (BR * PAD + KC * BC) * 4),
    );
    // the tiled kernels put (b, head) on one dispatch axis
    need(`workgroups per dimension (B*H = ${d.B * d.H})`, a.maxComputeWorkgroupsPerDimension, d.B * d.H);
  }
  const uniform = gpu.uniform(
    [d.B, d.T, d.H, d.Hkv, d.headDim, 1 / Math.sqrt(d.headDim), d.H / d.Hkv, 0],
    new Set([5]),
    'gqa-attention-dims',
  );
  return { uniform };
}

function naiveGroups(gpu: GpuContext, n: number): [number] {
  return [gpu.gridStrideGroups(n, WG)];
}

/** out and probs from q, k, v: softmax, then out = probs v. */
export function gqaAttentionForward(
  gpu: GpuContext,
  buffers: GqaAttentionForwardBuffers,
  dims: GqaAttentionDims,
  options: GqaAttentionOptions = {},
): Dispatch[] {
  const variant = options.variant ?? DEFAULT_GQA_ATTENTION_VARIANT;
  const { uniform } = plan(gpu, dims, variant, 3);
  const { B, T, H, headDim: hd } = dims;
  const { q, k, v, out, probs } = buffers;
  if (variant === 'naive') {
    const softmax = gpu.pipeline('gqa-softmax-naive', GQA_SOFTMAX_NAIVE_WGSL);
    const rows = gpu.pipeline('gqa-rows-naive', GQA_ROWS_NAIVE_WGSL);
    return [
      gpu.dispatchOf(softmax, [q, k, probs, uniform], naiveGroups(gpu, B * H * T)),
      gpu.dispatchOf(rows, [probs, v, out, uniform], naiveGroups(gpu, B * T * H * hd)),
    ];
  }
  const softmax = gpu.pipeline('gqa-softmax-tiled', GQA_SOFTMAX_TILED_WGSL);
  const rows = gpu.pipeline('gqa-rows-tiled', GQA_ROWS_TILED_WGSL);
  return [
    gpu.dispatchOf(softmax, [q, k, probs, uniform], [ceilDiv(T, BR), B * H]),
    gpu.dispatchOf(rows, [probs, v, out, uniform], [ceilDiv(T, BR), ceilDiv(hd, BC), B * H]),
  ];
}

/** dq, dk, dv from dout, q, k, v and probs: dscores, then dq = ds k, dk = ds^T q, dv = probs^T dout. */
export function gqaAttentionBackward(
  gpu: GpuContext,
  buffers: GqaAttentionBackwardBuffers,
  dims: GqaAttentionDims,
  options: GqaAttentionOptions = {},
): Dispatch[] {
  const variant = options.variant ?? DEFAULT_GQA_ATTENTION_VARIANT;
  const { uniform } = plan(gpu, dims, variant, 4);
  const { B, T, H, Hkv, headDim: hd } = dims;
  const { q, k, v, probs, dout, dscores, dq, dk, dv } = buffers;
  if (variant === 'naive') {
    const ds = gpu.pipeline('gqa-dscores-naive', GQA_DSCORES_NAIVE_WGSL);
    const rows = gpu.pipeline('gqa-rows-naive', GQA_ROWS_NAIVE_WGSL);
    const cols = gpu.pipeline('gqa-cols-naive', GQA_COLS_NAIVE_WGSL);
    return [
      gpu.dispatchOf(ds, [dout, v, probs, dscores, uniform], naiveGroups(gpu, B * H * T)),
      gpu.dispatchOf(rows, [dscores, k, dq, uniform], naiveGroups(gpu, B * T * H * hd)),
      gpu.dispatchOf(cols, [dscores, q, dk, uniform], naiveGroups(gpu, B * T * Hkv * hd)),
      gpu.dispatchOf(cols, [probs, dout, dv, uniform], naiveGroups(gpu, B * T * Hkv * hd)),
    ];
  }
  const ds = gpu.pipeline('gqa-dscores-tiled', GQA_DSCORES_TILED_WGSL);
  const rows = gpu.pipeline('gqa-rows-tiled', GQA_ROWS_TILED_WGSL);
  const cols = gpu.pipeline('gqa-cols-tiled', GQA_COLS_TILED_WGSL);
  const rowTiles = ceilDiv(T, BR);
  const colTiles = ceilDiv(hd, BC);
  return [
    gpu.dispatchOf(ds, [dout, v, probs, dscores, uniform], [rowTiles, B * H]),
    gpu.dispatchOf(rows, [dscores, k, dq, uniform], [rowTiles, colTiles, B * H]),
    gpu.dispatchOf(cols, [dscores, q, dk, uniform], [rowTiles, colTiles, B * Hkv]),
    gpu.dispatchOf(cols, [probs, dout, dv, uniform], [rowTiles, colTiles, B * Hkv]),
  ];
}
