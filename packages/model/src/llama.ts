/**
 * The LLaMA family (LlamaForCausalLM, Qwen2ForCausalLM) with LoRA, the whole model in one file:
 * the reference the WGSL and ONNX engines will be checked against, as model.ts is for GPT-2.
 *
 *   h0   = embed_tokens[ids]                                   (no position table: RoPE)
 *   for each block i:                                          (pre-norm block)
 *     q, k, v = q_proj(n), k_proj(n), v_proj(n),  n = rmsnorm(x; input_layernorm)
 *     a  = x + o_proj(gqa(rope(q), rope(k), v))
 *     x' = a + down_proj(silu(gate_proj(m)) * up_proj(m)),  m = rmsnorm(a; post_attention_layernorm)
 *   logits = rmsnorm(h_L; norm) W_head^T                       (W_head = lm_head.weight, or
 *                                                               embed_tokens.weight when tied)
 *   loss   = mean cross-entropy over targets that are not IGNORE_INDEX (-100)
 *
 * Every linear is nn.Linear (W [out, in], y = x W^T + b) with an optional LoRA pair; biases on
 * q/k/v when config.qkvBias (Qwen2), on o_proj when oBias, on the MLP when mlpBias. The pieces
 * are cut like model.ts's so that the user / edge / cloud segments can be chained the same way:
 * llamaEmbedForward, llamaBlocksForward/Backward over [from, to), llamaHeadForward/Backward and
 * llamaHeadLossStep (the head the tab runs when labels stay on the device).
 */
import { CodedError } from './coded-error';
import type { LlamaConfig } from './llama-config';
import {
  type LlamaLoraAdapter,
  type LlamaLoraTarget,
  llamaLoraModulePath,
  llamaLoraScale,
  llamaLoraTargetDims,
  llamaLoraTargetModule,
} from './llama-lora';
import { type LlamaWeights, llamaParameterShapes } from './llama-weights';
import type { BaseGrads, LoraGrads, StepResult, TokenBatch } from './step-types';
import { softmaxCrossEntropyBackward, softmaxCrossEntropyForward, type CrossEntropyCache } from './ops/cross-entropy';
import { gqaAttentionBackward, gqaAttentionForward, type GqaAttentionCache, type GqaShape } from './ops/gqa-attention';
import { matmul, matmulAT, matmulBT, sumRows } from './ops/matmul';
import { rmsNormBackward, rmsNormForward, type RmsNormCache } from './ops/rmsnorm';
import { ropeBackward, ropeForward, ropeInverseFrequencies, ropeTable, type RopeTable } from './ops/rope';
import { swigluBackward, swigluForward } from './ops/swiglu';
import { hashName } from './init';
import { Rng } from './rng';
import { numel } from './tensor';

export interface LlamaModel {
  config: LlamaConfig;
  weights: LlamaWeights;
}

export type LlamaModelErrorCode = 'LLAMA_MISSING_WEIGHT' | 'LLAMA_BAD_WEIGHT' | 'LLAMA_BAD_BATCH';

export class LlamaModelError extends CodedError<LlamaModelErrorCode> {}

/** A base tensor's data, checked to exist and to hold as many values as `shape` says. */
function weight(model: LlamaModel, name: string, shape: readonly number[]): Float32Array {
  const t = model.weights.get(name);
  if (!t) throw new LlamaModelError('LLAMA_MISSING_WEIGHT', `LLaMA weights: missing tensor "${name}" [${shape}]`);
  if (t.data.length !== numel(shape)) {
    throw new LlamaModelError(
      'LLAMA_BAD_WEIGHT',
      `LLaMA weights: tensor "${name}" holds ${t.data.length} values, the config needs [${shape}]`,
    );
  }
  return t.data;
}

function checkBatch(c: LlamaConfig, b: TokenBatch): void {
  // RoPE has no table to run off, but the model was never trained past this length
  if (b.T > c.maxPositionEmbeddings) {
    throw new LlamaModelError(
      'LLAMA_BAD_BATCH',
      `sequence length ${b.T} exceeds the model's max_position_embeddings ${c.maxPositionEmbeddings}`,
    );
  }
  if (b.inputIds.length !== b.B * b.T || b.targets.length !== b.B * b.T)
    throw new LlamaModelError('LLAMA_BAD_BATCH', `batch arrays must hold B*T = ${b.B * b.T} entries`);
}

// ---------------------------------------------------------------------------------------------
// nn.Linear with an optional LoRA pair

/**
 * y = x W^T + b + s (x A) B with W [N, K] (nn.Linear), A [K, r], B [r, N]. The backward never
 * forms dW unless asked (pre-training):
 *   g = s dy B^T,  dx = dy W + g A^T,  dA = x^T g,  dB = s (x A)^T dy,  dW = dy^T x,  db = sum dy
 */
export interface LlamaLinearParams {
  /** [N, K] */
  W: Float32Array;
  b?: Float32Array;
  /** in */
  K: number;
  /** out */
  N: number;
  lora?: { A: Float32Array; B: Float32Array; r: number; scale: number };
}

export interface LlamaLinearCache {
  x: Float32Array;
  /** x A, kept because dB needs it */
  xa?: Float32Array;
}

export interface LlamaLinearGrads {
  dx: Float32Array;
  dA?: Float32Array;
  dB?: Float32Array;
  dW?: Float32Array;
  db?: Float32Array;
}

export function llamaLinearForward(
  p: LlamaLinearParams,
  x: Float32Array,
  M: number,
): { y: Float32Array; cache: LlamaLinearCache } {
  const y = matmulBT(x, p.W, M, p.K, p.N);
  if (p.b) for (let i = 0; i < y.length; i++) y[i] += p.b[i % p.N];
  if (!p.lora) return { y, cache: { x } };
  const { A, B, r, scale } = p.lora;
  const xa = matmul(x, A, M, p.K, r);
  const low = matmul(xa, B, M, r, p.N);
  for (let i = 0; i < y.length; i++) y[i] += scale * low[i];
  return { y, cache: { x, xa } };
}

export function llamaLinearBackward(
  p: LlamaLinearParams,
  cache: LlamaLinearCache,
  dy: Float32Array,
  M: number,
  weightGrads = false,
): LlamaLinearGrads {
  const grads: LlamaLinearGrads = { dx: matmul(dy, p.W, M, p.N, p.K) };
  if (weightGrads) {
    grads.dW = matmulAT(dy, cache.x, M, p.N, p.K);
    if (p.b) grads.db = sumRows(dy, M, p.N);
  }
  if (!p.lora || !cache.xa) return grads;
  const { A, B, r, scale } = p.lora;
  const g = matmulBT(dy, B, M, p.N, r);
  for (let i = 0; i < g.length; i++) g[i] *= scale;
  const gAt = matmulBT(g, A, M, r, p.K);
  for (let i = 0; i < grads.dx.length; i++) grads.dx[i] += gAt[i];
  grads.dA = matmulAT(cache.x, g, M, p.K, r);
  const dB = matmulAT(cache.xa, dy, M, r, p.N);
  for (let i = 0; i < dB.length; i++) dB[i] *= scale;
  grads.dB = dB;
  return grads;
}

// ---------------------------------------------------------------------------------------------
// blocks

function hasBias(c: LlamaConfig, target: LlamaLoraTarget): boolean {
  if (target === 'q_proj' || target === 'k_proj' || target === 'v_proj') return c.qkvBias;
  if (target === 'o_proj') return c.oBias;
  return c.mlpBias;
}

/** Hugging Face name of a target's linear in block `layer`, without `.weight` / `.bias`. */
function linearName(layer: number, target: LlamaLoraTarget): string {
  return `layers.${layer}.${llamaLoraTargetModule(target)}.${target}`;
}

function linearParams(
  model: LlamaModel,
  adapter: LlamaLoraAdapter | undefined,
  layer: number,
  target: LlamaLoraTarget,
): LlamaLinearParams {
  const c = model.config;
  const [K, N] = llamaLoraTargetDims(c, target);
  const name = linearName(layer, target);
  const p: LlamaLinearParams = { W: weight(model, `${name}.weight`, [N, K]), K, N };
  if (hasBias(c, target)) p.b = weight(model, `${name}.bias`, [N]);
  const pair = adapter?.layers.get(llamaLoraModulePath(layer, target));
  if (pair && adapter)
    p.lora = { A: pair.A.data, B: pair.B.data, r: adapter.config.r, scale: llamaLoraScale(adapter.config) };
  return p;
}

interface LlamaBlockCache {
  layer: number;
  inputNorm: RmsNormCache;
  qProj: LlamaLinearCache;
  kProj: LlamaLinearCache;
  vProj: LlamaLinearCache;
  attn: GqaAttentionCache;
  oProj: LlamaLinearCache;
  postNorm: RmsNormCache;
  gateProj: LlamaLinearCache;
  upProj: LlamaLinearCache;
  /** gate_proj and up_proj outputs, kept for the SwiGLU backward */
  gate: Float32Array;
  up: Float32Array;
  downProj: LlamaLinearCache;
}

export interface LlamaBlocksCache {
  B: number;
  T: number;
  from: number;
  to: number;
  rope: RopeTable;
  blocks: LlamaBlockCache[];
}

function gqaShape(c: LlamaConfig, B: number, T: number): GqaShape {
  return { B, T, H: c.nHead, Hkv: c.nKvHead, headDim: c.headDim };
}

/** The cos/sin table of positions 0..T-1 for this config's rope_theta and rope_scaling. */
export function llamaRopeTable(c: LlamaConfig, T: number): RopeTable {
  return ropeTable(ropeInverseFrequencies(c.headDim, c.ropeTheta, c.ropeScaling), T);
}

function blockForward(
  model: LlamaModel,
  adapter: LlamaLoraAdapter | undefined,
  layer: number,
  x: Float32Array,
  B: number,
  T: number,
  rope: RopeTable,
): { y: Float32Array; cache: LlamaBlockCache } {
  const c = model.config;
  const M = B * T;
  const D = c.hiddenSize;
  const lin = (t: LlamaLoraTarget) => linearParams(model, adapter, layer, t);
  // attention branch
  const inputNorm = rmsNormForward(x, weight(model, `layers.${layer}.input_layernorm.weight`, [D]), M, D, c.rmsNormEps);
  const qProj = llamaLinearForward(lin('q_proj'), inputNorm.y, M);
  const kProj = llamaLinearForward(lin('k_proj'), inputNorm.y, M);
  const vProj = llamaLinearForward(lin('v_proj'), inputNorm.y, M);
  const q = ropeForward(qProj.y, rope, B, T, c.nHead, c.headDim);
  const k = ropeForward(kProj.y, rope, B, T, c.nKvHead, c.headDim);
  const attn = gqaAttentionForward(q, k, vProj.y, gqaShape(c, B, T));
  const oProj = llamaLinearForward(lin('o_proj'), attn.y, M);
  const a = new Float32Array(M * D);
  for (let i = 0; i < a.length; i++) a[i] = x[i] + oProj.y[i];
  // MLP branch
  const postNorm = rmsNormForward(
    a,
    weight(model, `layers.${layer}.post_attention_layernorm.weight`, [D]),
    M,
    D,
    c.rmsNormEps,
  );
  const gateProj = llamaLinearForward(lin('gate_proj'), postNorm.y, M);
  const upProj = llamaLinearForward(lin('up_proj'), postNorm.y, M);
  const act = swigluForward(gateProj.y, upProj.y);
  const downProj = llamaLinearForward(lin('down_proj'), act, M);
  const y = new Float32Array(M * D);
  for (let i = 0; i < y.length; i++) y[i] = a[i] + downProj.y[i];
  const cache: LlamaBlockCache = {
    layer,
    inputNorm: inputNorm.cache,
    qProj: qProj.cache,
    kProj: kProj.cache,
    vProj: vProj.cache,
    attn: attn.cache,
    oProj: oProj.cache,
    postNorm: postNorm.cache,
    gateProj: gateProj.cache,
    upProj: upProj.cache,
    gate: gateProj.y,
    up: upProj.y,
    downProj: downProj.cache,
  };
  return { y, cache };
}

function blockBackward(
  model: LlamaModel,
  adapter: LlamaLoraAdapter | undefined,
  cache: LlamaBlockCache,
  dy: Float32Array,
  B: number,
  T: number,
  rope: RopeTable,
  loraGrads: LoraGrads,
  baseGrads: BaseGrads | undefined,
): Float32Array {
  const c = model.config;
  const M = B * T;
  const D = c.hiddenSize;
  const layer = cache.layer;
  const wg = baseGrads !== undefined;
  const back = (target: LlamaLoraTarget, lc: LlamaLinearCache, d: Float32Array) => {
    const g = llamaLinearBackward(linearParams(model, adapter, layer, target), lc, d, M, wg);
    if (g.dA && g.dB) loraGrads.set(llamaLoraModulePath(layer, target), { A: g.dA, B: g.dB });
    if (baseGrads && g.dW) baseGrads.set(`${linearName(layer, target)}.weight`, g.dW);
    if (baseGrads && g.db) baseGrads.set(`${linearName(layer, target)}.bias`, g.db);
    return g.dx;
  };
  // MLP branch: y = a + down(swiglu(gate(m), up(m))), m = rmsnorm(a)
  const dAct = back('down_proj', cache.downProj, dy);
  const { dgate, dup } = swigluBackward(cache.gate, cache.up, dAct);
  const dm = back('gate_proj', cache.gateProj, dgate);
  const dmUp = back('up_proj', cache.upProj, dup);
  for (let i = 0; i < dm.length; i++) dm[i] += dmUp[i];
  const postName = `layers.${layer}.post_attention_layernorm.weight`;
  const gPost = rmsNormBackward(cache.postNorm, weight(model, postName, [D]), dm, M, D, wg);
  const da = new Float32Array(M * D);
  for (let i = 0; i < da.length; i++) da[i] = dy[i] + gPost.dx[i];
  // attention branch: a = x + o(gqa(rope(q(n)), rope(k(n)), v(n))), n = rmsnorm(x)
  const dAttn = back('o_proj', cache.oProj, da);
  const g = gqaAttentionBackward(cache.attn, dAttn, gqaShape(c, B, T));
  const dq = ropeBackward(g.dq, rope, B, T, c.nHead, c.headDim);
  const dk = ropeBackward(g.dk, rope, B, T, c.nKvHead, c.headDim);
  const dn = back('q_proj', cache.qProj, dq);
  const dnK = back('k_proj', cache.kProj, dk);
  const dnV = back('v_proj', cache.vProj, g.dv);
  for (let i = 0; i < dn.length; i++) dn[i] += dnK[i] + dnV[i];
  const inputName = `layers.${layer}.input_layernorm.weight`;
  const gInput = rmsNormBackward(cache.inputNorm, weight(model, inputName, [D]), dn, M, D, wg);
  const dx = new Float32Array(M * D);
  for (let i = 0; i < dx.length; i++) dx[i] = da[i] + gInput.dx[i];
  if (baseGrads && gInput.dweight && gPost.dweight) {
    baseGrads.set(inputName, gInput.dweight);
    baseGrads.set(postName, gPost.dweight);
  }
  return dx;
}

/** Blocks [from, to) forward; x is [B*T, D]. */
export function llamaBlocksForward(
  model: LlamaModel,
  adapter: LlamaLoraAdapter | undefined,
  x: Float32Array,
  B: number,
  T: number,
  from: number,
  to: number,
): { y: Float32Array; cache: LlamaBlocksCache } {
  const rope = llamaRopeTable(model.config, T);
  const blocks: LlamaBlockCache[] = [];
  let h = x;
  for (let i = from; i < to; i++) {
    const r = blockForward(model, adapter, i, h, B, T, rope);
    blocks.push(r.cache);
    h = r.y;
  }
  return { y: h, cache: { B, T, from, to, rope, blocks } };
}

/** Blocks backward: gradient of the segment input, LoRA gradients (and base gradients when asked). */
export function llamaBlocksBackward(
  model: LlamaModel,
  adapter: LlamaLoraAdapter | undefined,
  cache: LlamaBlocksCache,
  dy: Float32Array,
  baseGrads?: BaseGrads,
): { dx: Float32Array; loraGrads: LoraGrads } {
  const loraGrads: LoraGrads = new Map();
  let d = dy;
  for (let i = cache.blocks.length - 1; i >= 0; i--) {
    d = blockBackward(model, adapter, cache.blocks[i], d, cache.B, cache.T, cache.rope, loraGrads, baseGrads);
  }
  return { dx: d, loraGrads };
}

// ---------------------------------------------------------------------------------------------
// embedding and head

/** h0 [B*T, D] = embed_tokens[ids]. */
export function llamaEmbedForward(model: LlamaModel, inputIds: Int32Array, B: number, T: number): Float32Array {
  const c = model.config;
  const D = c.hiddenSize;
  const table = weight(model, 'embed_tokens.weight', [c.vocabSize, D]);
  const h = new Float32Array(B * T * D);
  for (let i = 0; i < B * T; i++) {
    const id = inputIds[i];
    if (!(Number.isInteger(id) && id >= 0 && id < c.vocabSize)) {
      throw new LlamaModelError(
        'LLAMA_BAD_BATCH',
        `token id ${id} at [${Math.floor(i / T)}, ${i % T}] is outside the vocabulary (${c.vocabSize})`,
      );
    }
    h.set(table.subarray(id * D, (id + 1) * D), i * D);
  }
  return h;
}

/** Scatter-add of dh into the rows of embed_tokens (pre-training only; LoRA leaves it frozen). */
function embedBackward(c: LlamaConfig, inputIds: Int32Array, dh: Float32Array): Float32Array {
  const D = c.hiddenSize;
  const d = new Float64Array(c.vocabSize * D);
  for (let i = 0; i < inputIds.length; i++) {
    const e = inputIds[i] * D;
    for (let j = 0; j < D; j++) d[e + j] += dh[i * D + j];
  }
  return Float32Array.from(d);
}

/** `lm_head.weight`, or `embed_tokens.weight` when the head is tied to the embedding. */
export function llamaHeadWeightName(c: LlamaConfig): string {
  return c.tieWordEmbeddings ? 'embed_tokens.weight' : 'lm_head.weight';
}

export interface LlamaHeadCache {
  B: number;
  T: number;
  norm: RmsNormCache;
  normed: Float32Array;
  ce: CrossEntropyCache;
}

/** Final RMSNorm, LM head and mean cross-entropy over counted targets. */
export function llamaHeadForward(model: LlamaModel, h: Float32Array, targets: Int32Array, B: number, T: number) {
  const c = model.config;
  const M = B * T;
  const D = c.hiddenSize;
  const norm = rmsNormForward(h, weight(model, 'norm.weight', [D]), M, D, c.rmsNormEps);
  const logits = matmulBT(norm.y, weight(model, llamaHeadWeightName(c), [c.vocabSize, D]), M, D, c.vocabSize);
  const ce = softmaxCrossEntropyForward(logits, targets, M, c.vocabSize);
  const cache: LlamaHeadCache = { B, T, norm: norm.cache, normed: norm.y, ce: ce.cache };
  return { loss: ce.loss, count: ce.count, logits, cache };
}

export function llamaHeadBackward(model: LlamaModel, cache: LlamaHeadCache, baseGrads?: BaseGrads): Float32Array {
  const c = model.config;
  const M = cache.B * cache.T;
  const D = c.hiddenSize;
  const dlogits = softmaxCrossEntropyBackward(cache.ce, M, c.vocabSize);
  const headName = llamaHeadWeightName(c);
  const dnormed = matmul(dlogits, weight(model, headName, [c.vocabSize, D]), M, c.vocabSize, D);
  const g = rmsNormBackward(cache.norm, weight(model, 'norm.weight', [D]), dnormed, M, D, baseGrads !== undefined);
  if (baseGrads && g.dweight) {
    baseGrads.set('norm.weight', g.dweight);
    addInto(baseGrads, headName, matmulAT(dlogits, cache.normed, M, c.vocabSize, D));
  }
  return g.dx;
}

/**
 * Labels on the device: final norm, head, mean cross-entropy and dL/dhL on the last hidden state
 * hL [B*T, D] the cloud sends back, for whoever holds the head (the tab, or the cloud).
 */
export function llamaHeadLossStep(
  model: LlamaModel,
  hL: Float32Array,
  targets: Int32Array,
  B: number,
  T: number,
): { loss: number; count: number; dh: Float32Array } {
  const head = llamaHeadForward(model, hL, targets, B, T);
  return { loss: head.loss, count: head.count, dh: llamaHeadBackward(model, head.cache) };
}

/** Generation with labels on the device: the next-token logits [V] from one position's last hidden state [D]. */
export function llamaHeadLogits(model: LlamaModel, h: Float32Array): Float32Array {
  const c = model.config;
  const D = c.hiddenSize;
  if (h.length !== D)
    throw new LlamaModelError(
      'LLAMA_BAD_BATCH',
      `llamaHeadLogits: h has ${h.length} values, expected hidden_size ${D}`,
    );
  const norm = rmsNormForward(h, weight(model, 'norm.weight', [D]), 1, D, c.rmsNormEps);
  return matmulBT(norm.y, weight(model, llamaHeadWeightName(c), [c.vocabSize, D]), 1, D, c.vocabSize);
}

function addInto(grads: BaseGrads, name: string, g: Float32Array): void {
  const prev = grads.get(name);
  if (!prev) {
    grads.set(name, g);
    return;
  }
  for (let i = 0; i < prev.length; i++) prev[i] += g[i];
}

// ---------------------------------------------------------------------------------------------
// the whole model

/** Loss only (evaluation). */
export function llamaLoss(
  model: LlamaModel,
  adapter: LlamaLoraAdapter | undefined,
  batch: TokenBatch,
): { loss: number; count: number } {
  checkBatch(model.config, batch);
  const h0 = llamaEmbedForward(model, batch.inputIds, batch.B, batch.T);
  const blocks = llamaBlocksForward(model, adapter, h0, batch.B, batch.T, 0, model.config.nLayer);
  const head = llamaHeadForward(model, blocks.y, batch.targets, batch.B, batch.T);
  return { loss: head.loss, count: head.count };
}

/**
 * One centralized forward + backward of the whole model. LoRA gradients always; base-weight
 * gradients (every tensor of the model, keyed by its Hugging Face name) when `weightGrads` is
 * set, for pre-training.
 */
export function llamaForwardBackward(
  model: LlamaModel,
  adapter: LlamaLoraAdapter | undefined,
  batch: TokenBatch,
  opts: { weightGrads?: boolean } = {},
): StepResult {
  const c = model.config;
  checkBatch(c, batch);
  const { B, T } = batch;
  const baseGrads: BaseGrads | undefined = opts.weightGrads ? new Map() : undefined;
  const h0 = llamaEmbedForward(model, batch.inputIds, B, T);
  const blocks = llamaBlocksForward(model, adapter, h0, B, T, 0, c.nLayer);
  const head = llamaHeadForward(model, blocks.y, batch.targets, B, T);
  const dh = llamaHeadBackward(model, head.cache, baseGrads);
  const back = llamaBlocksBackward(model, adapter, blocks.cache, dh, baseGrads);
  if (baseGrads) addInto(baseGrads, 'embed_tokens.weight', embedBackward(c, batch.inputIds, back.dx));
  return { loss: head.loss, count: head.count, loraGrads: back.loraGrads, baseGrads };
}

// ---------------------------------------------------------------------------------------------
// random weights

export const LLAMA_INITIALIZER_RANGE = 0.02;

/**
 * Hugging Face's LlamaPreTrainedModel init: linear and embedding weights ~ N(0, 0.02), biases 0,
 * RMSNorm weights 1. Each tensor draws from its own stream seeded by (seed, name), so a tensor's
 * values do not depend on which others exist (a tied and an untied model share embed_tokens).
 */
export function randomLlamaWeights(config: LlamaConfig, seed: number, std = LLAMA_INITIALIZER_RANGE): LlamaWeights {
  const weights: LlamaWeights = new Map();
  for (const [name, shape] of llamaParameterShapes(config)) {
    const data = new Float32Array(numel(shape));
    if (name.endsWith('norm.weight')) data.fill(1);
    else if (name.endsWith('.weight'))
      new Rng((Math.imul(seed >>> 0, 0x9e3779b1) ^ hashName(name)) >>> 0).fillNormal(data, std);
    weights.set(name, { shape: [...shape], data });
  }
  return weights;
}
