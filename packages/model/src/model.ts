/**
 * GPT-2 with LoRA, the whole model in one file: the reference every engine is checked against.
 *
 *   h0   = wte[ids] + wpe[pos]                                  (embedding)
 *   for each block i:                                           (pre-LayerNorm block)
 *     a  = x + c_proj(attn(c_attn(ln_1(x))))
 *     x' = a + mlp.c_proj(gelu(mlp.c_fc(ln_2(a))))
 *   logits = ln_f(h_L) wte^T                                    (tied LM head)
 *   loss   = mean cross-entropy over non-ignored targets
 *
 * Every linear is a loraLinear; a LoRA pair is applied where the adapter has one. The model
 * is cut into segments that the three tiers run: embed + blocks [0,k) (user), blocks [k,m)
 * (edge), blocks [m,L) + head + loss (cloud). With labels on the device the cloud runs blocks
 * [m,L) only and the tab runs the head and the loss as well (headLossStep, headLogits): the
 * labels never leave it. Each segment's forward returns what its backward needs; the chained
 * segments are the whole model (tested).
 */
import type { Gpt2Config } from './config';
import type { BaseGrads, LoraGrads, StepResult, TokenBatch } from './step-types';
import { type AnyModel, isLlamaConfig, type ModelConfig, modelDims } from './family';
import {
  type LlamaBlocksCache,
  type LlamaModel,
  llamaBlocksBackward,
  llamaBlocksForward,
  llamaEmbedForward,
  llamaForwardBackward,
  llamaHeadLogits,
  llamaHeadLossStep,
  llamaLoss,
} from './llama';
import {
  asLlamaLoraAdapter,
  type LoraAdapter,
  type LoraTarget,
  loraModulePath,
  loraScale,
  loraTargetDims,
} from './lora';
import { causalAttentionBackward, causalAttentionForward, type AttentionCache } from './ops/attention';
import { softmaxCrossEntropyBackward, softmaxCrossEntropyForward, type CrossEntropyCache } from './ops/cross-entropy';
import { embeddingBackward, embeddingForward } from './ops/embedding';
import { geluBackward, geluForward } from './ops/gelu';
import { layerNormBackward, layerNormForward, type LayerNormCache } from './ops/layernorm';
import { loraLinearBackward, loraLinearForward, type LoraLinearCache, type LoraLinearParams } from './ops/lora-linear';
import { matmul, matmulAT, matmulBT } from './ops/matmul';
import { type Gpt2Weights, getWeight } from './weights';

export interface Gpt2Model {
  config: Gpt2Config;
  weights: Gpt2Weights;
}

export type { BaseGrads, LoraGrads, StepResult, TokenBatch } from './step-types';

export interface SplitPlan {
  /** user runs the embedding and blocks [0, k) */
  k: number;
  /** edge runs blocks [k, m); cloud runs blocks [m, L), the final norm, the head and the loss */
  m: number;
}

/** A quarter of the blocks on the user, the middle half on the edge, the last quarter on the cloud. */
export function defaultSplitPlan(c: { nLayer: number }): SplitPlan {
  const k = Math.max(1, Math.floor(c.nLayer / 4));
  const m = Math.max(k + 1, Math.min(c.nLayer, Math.floor((3 * c.nLayer) / 4)));
  return { k, m };
}

/**
 * The user keeps at least one block (raw embeddings are trivially invertible to tokens), the
 * edge at least one block; the cloud may hold only the head.
 */
export function validateSplitPlan(c: { nLayer: number }, p: SplitPlan): void {
  if (!Number.isInteger(p.k) || !Number.isInteger(p.m) || !(p.k >= 1 && p.k < p.m && p.m <= c.nLayer)) {
    throw new Error(`split plan k=${p.k}, m=${p.m} is invalid for ${c.nLayer} layers: need 1 <= k < m <= ${c.nLayer}`);
  }
}

function checkBatch(c: ModelConfig, b: TokenBatch): void {
  const { positions } = modelDims(c);
  if (b.T > positions) throw new Error(`sequence length ${b.T} exceeds the model's ${positions} positions`);
  if (b.inputIds.length !== b.B * b.T || b.targets.length !== b.B * b.T) {
    throw new Error(`batch arrays must hold B*T = ${b.B * b.T} entries`);
  }
}

// ---------------------------------------------------------------------------------------------
// blocks

function linearParams(
  model: Gpt2Model,
  adapter: LoraAdapter | undefined,
  layer: number,
  target: LoraTarget,
): LoraLinearParams {
  const [K, N] = loraTargetDims(model.config, target);
  const prefix = `h.${layer}.${target}`;
  const p: LoraLinearParams = {
    W: getWeight(model.weights, `${prefix}.weight`).data,
    b: getWeight(model.weights, `${prefix}.bias`).data,
    K,
    N,
  };
  const pair = adapter?.layers.get(loraModulePath(layer, target));
  if (pair && adapter)
    p.lora = { A: pair.A.data, B: pair.B.data, r: adapter.config.r, scale: loraScale(adapter.config) };
  return p;
}

interface BlockCache {
  layer: number;
  ln1: LayerNormCache;
  cAttn: LoraLinearCache;
  attn: AttentionCache;
  cProj: LoraLinearCache;
  ln2: LayerNormCache;
  cFc: LoraLinearCache;
  /** pre-activation of the GELU, kept for its backward */
  fcOut: Float32Array;
  mlpProj: LoraLinearCache;
}

export interface Gpt2BlocksCache {
  B: number;
  T: number;
  from: number;
  to: number;
  blocks: BlockCache[];
}

function blockForward(
  model: Gpt2Model,
  adapter: LoraAdapter | undefined,
  layer: number,
  x: Float32Array,
  B: number,
  T: number,
) {
  const c = model.config;
  const M = B * T;
  const D = c.nEmbd;
  const w = (n: string) => getWeight(model.weights, `h.${layer}.${n}`).data;
  const ln1 = layerNormForward(x, w('ln_1.weight'), w('ln_1.bias'), M, D, c.layerNormEpsilon);
  const cAttn = loraLinearForward(linearParams(model, adapter, layer, 'attn.c_attn'), ln1.y, M);
  const attn = causalAttentionForward(cAttn.y, B, T, D, c.nHead);
  const cProj = loraLinearForward(linearParams(model, adapter, layer, 'attn.c_proj'), attn.y, M);
  const a = new Float32Array(M * D);
  for (let i = 0; i < a.length; i++) a[i] = x[i] + cProj.y[i];
  const ln2 = layerNormForward(a, w('ln_2.weight'), w('ln_2.bias'), M, D, c.layerNormEpsilon);
  const cFc = loraLinearForward(linearParams(model, adapter, layer, 'mlp.c_fc'), ln2.y, M);
  const act = geluForward(cFc.y);
  const mlpProj = loraLinearForward(linearParams(model, adapter, layer, 'mlp.c_proj'), act, M);
  const y = new Float32Array(M * D);
  for (let i = 0; i < y.length; i++) y[i] = a[i] + mlpProj.y[i];
  const cache: BlockCache = {
    layer,
    ln1: ln1.cache,
    cAttn: cAttn.cache,
    attn: attn.cache,
    cProj: cProj.cache,
    ln2: ln2.cache,
    cFc: cFc.cache,
    fcOut: cFc.y,
    mlpProj: mlpProj.cache,
  };
  return { y, cache };
}

function blockBackward(
  model: Gpt2Model,
  adapter: LoraAdapter | undefined,
  cache: BlockCache,
  dy: Float32Array,
  B: number,
  T: number,
  loraGrads: LoraGrads,
  baseGrads: BaseGrads | undefined,
): Float32Array {
  const c = model.config;
  const M = B * T;
  const D = c.nEmbd;
  const layer = cache.layer;
  const wg = baseGrads !== undefined;
  const w = (n: string) => getWeight(model.weights, `h.${layer}.${n}`).data;
  const keep = (target: LoraTarget, g: ReturnType<typeof loraLinearBackward>) => {
    if (g.dA && g.dB) loraGrads.set(loraModulePath(layer, target), { A: g.dA, B: g.dB });
    if (baseGrads && g.dW && g.db) {
      baseGrads.set(`h.${layer}.${target}.weight`, g.dW);
      baseGrads.set(`h.${layer}.${target}.bias`, g.db);
    }
  };
  // MLP branch: y = a + mlp_proj(gelu(c_fc(ln_2(a))))
  const gProj = loraLinearBackward(linearParams(model, adapter, layer, 'mlp.c_proj'), cache.mlpProj, dy, M, wg);
  keep('mlp.c_proj', gProj);
  const dFc = geluBackward(cache.fcOut, gProj.dx);
  const gFc = loraLinearBackward(linearParams(model, adapter, layer, 'mlp.c_fc'), cache.cFc, dFc, M, wg);
  keep('mlp.c_fc', gFc);
  const gLn2 = layerNormBackward(cache.ln2, w('ln_2.weight'), gFc.dx, M, D, wg);
  const da = new Float32Array(M * D);
  for (let i = 0; i < da.length; i++) da[i] = dy[i] + gLn2.dx[i];
  // attention branch: a = x + c_proj(attn(c_attn(ln_1(x))))
  const gCProj = loraLinearBackward(linearParams(model, adapter, layer, 'attn.c_proj'), cache.cProj, da, M, wg);
  keep('attn.c_proj', gCProj);
  const dqkv = causalAttentionBackward(cache.attn, gCProj.dx, B, T, D, c.nHead);
  const gCAttn = loraLinearBackward(linearParams(model, adapter, layer, 'attn.c_attn'), cache.cAttn, dqkv, M, wg);
  keep('attn.c_attn', gCAttn);
  const gLn1 = layerNormBackward(cache.ln1, w('ln_1.weight'), gCAttn.dx, M, D, wg);
  const dx = new Float32Array(M * D);
  for (let i = 0; i < dx.length; i++) dx[i] = da[i] + gLn1.dx[i];
  if (baseGrads && gLn1.dgamma && gLn1.dbeta && gLn2.dgamma && gLn2.dbeta) {
    baseGrads.set(`h.${layer}.ln_1.weight`, gLn1.dgamma);
    baseGrads.set(`h.${layer}.ln_1.bias`, gLn1.dbeta);
    baseGrads.set(`h.${layer}.ln_2.weight`, gLn2.dgamma);
    baseGrads.set(`h.${layer}.ln_2.bias`, gLn2.dbeta);
  }
  return dx;
}

/** Blocks [from, to) forward; x is [B*T, D]. */
function gpt2BlocksForward(
  model: Gpt2Model,
  adapter: LoraAdapter | undefined,
  x: Float32Array,
  B: number,
  T: number,
  from: number,
  to: number,
): { y: Float32Array; cache: Gpt2BlocksCache } {
  const blocks: BlockCache[] = [];
  let h = x;
  for (let i = from; i < to; i++) {
    const r = blockForward(model, adapter, i, h, B, T);
    blocks.push(r.cache);
    h = r.y;
  }
  return { y: h, cache: { B, T, from, to, blocks } };
}

/** Blocks backward: gradient of the segment input, LoRA gradients (and base gradients when asked). */
function gpt2BlocksBackward(
  model: Gpt2Model,
  adapter: LoraAdapter | undefined,
  cache: Gpt2BlocksCache,
  dy: Float32Array,
  baseGrads?: BaseGrads,
): { dx: Float32Array; loraGrads: LoraGrads } {
  const loraGrads: LoraGrads = new Map();
  let d = dy;
  for (let i = cache.blocks.length - 1; i >= 0; i--) {
    d = blockBackward(model, adapter, cache.blocks[i], d, cache.B, cache.T, loraGrads, baseGrads);
  }
  return { dx: d, loraGrads };
}

// ---------------------------------------------------------------------------------------------
// any family: what the segments, the engines' oracles and the trainers call. A LLaMA-family model
// goes to llama.ts (its adapter's targets checked to be that family's), GPT-2 to the code above.

/** What a blocks forward keeps for its backward, of either family. */
export type BlocksCache = Gpt2BlocksCache | LlamaBlocksCache;

function asLlama(model: AnyModel, adapter: LoraAdapter | undefined) {
  const m = model as LlamaModel;
  return { model: m, adapter: adapter && asLlamaLoraAdapter(m.config, adapter) };
}

/** Blocks [from, to) forward; x is [B*T, D]. */
export function blocksForward(
  model: AnyModel,
  adapter: LoraAdapter | undefined,
  x: Float32Array,
  B: number,
  T: number,
  from: number,
  to: number,
): { y: Float32Array; cache: BlocksCache } {
  if (!isLlamaConfig(model.config)) return gpt2BlocksForward(model as Gpt2Model, adapter, x, B, T, from, to);
  const l = asLlama(model, adapter);
  return llamaBlocksForward(l.model, l.adapter, x, B, T, from, to);
}

/** Blocks backward: gradient of the segment input, LoRA gradients (and base gradients when asked). */
export function blocksBackward(
  model: AnyModel,
  adapter: LoraAdapter | undefined,
  cache: BlocksCache,
  dy: Float32Array,
  baseGrads?: BaseGrads,
): { dx: Float32Array; loraGrads: LoraGrads } {
  if (!isLlamaConfig(model.config)) {
    return gpt2BlocksBackward(model as Gpt2Model, adapter, cache as Gpt2BlocksCache, dy, baseGrads);
  }
  const l = asLlama(model, adapter);
  return llamaBlocksBackward(l.model, l.adapter, cache as LlamaBlocksCache, dy, baseGrads);
}

/** h0 [B*T, D]: the token (and, for GPT-2, position) embedding. */
export function embedForward(model: AnyModel, inputIds: Int32Array, B: number, T: number): Float32Array {
  return isLlamaConfig(model.config)
    ? llamaEmbedForward(model as LlamaModel, inputIds, B, T)
    : gpt2EmbedForward(model as Gpt2Model, inputIds, B, T);
}

/**
 * Labels on the device: the step the tab runs on the last hidden state hL [B*T, D] the cloud
 * sends back: the final norm, the head, the mean cross-entropy over counted targets, and its
 * gradient dL/dhL, which goes back to the cloud. The oracle of the engines' head kernels.
 */
export function headLossStep(
  model: AnyModel,
  hL: Float32Array,
  targets: Int32Array,
  B: number,
  T: number,
): { loss: number; count: number; dh: Float32Array } {
  return isLlamaConfig(model.config)
    ? llamaHeadLossStep(model as LlamaModel, hL, targets, B, T)
    : gpt2HeadLossStep(model as Gpt2Model, hL, targets, B, T);
}

/** Generation with labels on the device: the next-token logits [V] from one position's last hidden state [D]. */
export function headLogits(model: AnyModel, h: Float32Array): Float32Array {
  return isLlamaConfig(model.config) ? llamaHeadLogits(model as LlamaModel, h) : gpt2HeadLogits(model as Gpt2Model, h);
}

/** Loss only (evaluation), of either family. */
export function modelLoss(
  model: AnyModel,
  adapter: LoraAdapter | undefined,
  batch: TokenBatch,
): { loss: number; count: number } {
  if (!isLlamaConfig(model.config)) return gpt2Loss(model as Gpt2Model, adapter, batch);
  const l = asLlama(model, adapter);
  return llamaLoss(l.model, l.adapter, batch);
}

/** One centralized forward + backward of the whole model, of either family (see gpt2ForwardBackward). */
export function modelForwardBackward(
  model: AnyModel,
  adapter: LoraAdapter | undefined,
  batch: TokenBatch,
  opts: { weightGrads?: boolean } = {},
): StepResult {
  if (!isLlamaConfig(model.config)) return gpt2ForwardBackward(model as Gpt2Model, adapter, batch, opts);
  const l = asLlama(model, adapter);
  return llamaForwardBackward(l.model, l.adapter, batch, opts);
}

// ---------------------------------------------------------------------------------------------
// GPT-2's embedding and head

function gpt2EmbedForward(model: Gpt2Model, inputIds: Int32Array, B: number, T: number): Float32Array {
  const c = model.config;
  return embeddingForward(
    inputIds,
    getWeight(model.weights, 'wte.weight').data,
    getWeight(model.weights, 'wpe.weight').data,
    B,
    T,
    c.nEmbd,
    c.vocabSize,
  );
}

export interface HeadCache {
  B: number;
  T: number;
  lnf: LayerNormCache;
  normed: Float32Array;
  ce: CrossEntropyCache;
}

/** Final layer norm, tied LM head and mean cross-entropy over counted targets. */
export function headForward(model: Gpt2Model, h: Float32Array, targets: Int32Array, B: number, T: number) {
  const c = model.config;
  const M = B * T;
  const lnf = layerNormForward(
    h,
    getWeight(model.weights, 'ln_f.weight').data,
    getWeight(model.weights, 'ln_f.bias').data,
    M,
    c.nEmbd,
    c.layerNormEpsilon,
  );
  const logits = matmulBT(lnf.y, getWeight(model.weights, 'wte.weight').data, M, c.nEmbd, c.vocabSize);
  const ce = softmaxCrossEntropyForward(logits, targets, M, c.vocabSize);
  const cache: HeadCache = { B, T, lnf: lnf.cache, normed: lnf.y, ce: ce.cache };
  return { loss: ce.loss, count: ce.count, logits, cache };
}

export function headBackward(model: Gpt2Model, cache: HeadCache, baseGrads?: BaseGrads): Float32Array {
  const c = model.config;
  const M = cache.B * cache.T;
  const dlogits = softmaxCrossEntropyBackward(cache.ce, M, c.vocabSize);
  const wte = getWeight(model.weights, 'wte.weight').data;
  const dnormed = matmul(dlogits, wte, M, c.vocabSize, c.nEmbd);
  const g = layerNormBackward(
    cache.lnf,
    getWeight(model.weights, 'ln_f.weight').data,
    dnormed,
    M,
    c.nEmbd,
    baseGrads !== undefined,
  );
  if (baseGrads && g.dgamma && g.dbeta) {
    baseGrads.set('ln_f.weight', g.dgamma);
    baseGrads.set('ln_f.bias', g.dbeta);
    addInto(baseGrads, 'wte.weight', matmulAT(dlogits, cache.normed, M, c.vocabSize, c.nEmbd));
  }
  return g.dx;
}

/** GPT-2's headLossStep: ln_f, the tied head, the mean cross-entropy and dL/dhL. */
function gpt2HeadLossStep(
  model: Gpt2Model,
  hL: Float32Array,
  targets: Int32Array,
  B: number,
  T: number,
): { loss: number; count: number; dh: Float32Array } {
  const head = headForward(model, hL, targets, B, T);
  return { loss: head.loss, count: head.count, dh: headBackward(model, head.cache) };
}

/** Generation with labels on the device: the next-token logits [V] from one position's last hidden state [D]. */
function gpt2HeadLogits(model: Gpt2Model, h: Float32Array): Float32Array {
  const c = model.config;
  if (h.length !== c.nEmbd) throw new Error(`headLogits: h has ${h.length} values, expected n_embd ${c.nEmbd}`);
  const lnf = layerNormForward(
    h,
    getWeight(model.weights, 'ln_f.weight').data,
    getWeight(model.weights, 'ln_f.bias').data,
    1,
    c.nEmbd,
    c.layerNormEpsilon,
  );
  return matmulBT(lnf.y, getWeight(model.weights, 'wte.weight').data, 1, c.nEmbd, c.vocabSize);
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
// the three segments of the split

export interface UserSegmentState {
  batch: TokenBatch;
  blocks: BlocksCache;
}

/** User tier: embedding + blocks [0, k). Returns the activation h1 [B*T, D] sent to the edge. */
export function userSegmentForward(
  model: AnyModel,
  adapter: LoraAdapter | undefined,
  batch: TokenBatch,
  plan: SplitPlan,
) {
  checkBatch(model.config, batch);
  const h0 = embedForward(model, batch.inputIds, batch.B, batch.T);
  const r = blocksForward(model, adapter, h0, batch.B, batch.T, 0, plan.k);
  return { h1: r.y, state: { batch, blocks: r.cache } as UserSegmentState };
}

export function userSegmentBackward(
  model: AnyModel,
  adapter: LoraAdapter | undefined,
  state: UserSegmentState,
  dh1: Float32Array,
): LoraGrads {
  return blocksBackward(model, adapter, state.blocks, dh1).loraGrads;
}

/** Edge tier: blocks [k, m). */
export function edgeSegmentForward(
  model: AnyModel,
  adapter: LoraAdapter | undefined,
  h1: Float32Array,
  B: number,
  T: number,
  plan: SplitPlan,
) {
  const r = blocksForward(model, adapter, h1, B, T, plan.k, plan.m);
  return { h2: r.y, state: r.cache };
}

export function edgeSegmentBackward(
  model: AnyModel,
  adapter: LoraAdapter | undefined,
  state: BlocksCache,
  dh2: Float32Array,
) {
  const r = blocksBackward(model, adapter, state, dh2);
  return { dh1: r.dx, loraGrads: r.loraGrads };
}

/** Cloud tier: blocks [m, L), head and loss, forward and backward in one call. */
export function cloudSegmentStep(
  model: AnyModel,
  adapter: LoraAdapter | undefined,
  h2: Float32Array,
  targets: Int32Array,
  B: number,
  T: number,
  plan: SplitPlan,
) {
  const blocks = blocksForward(model, adapter, h2, B, T, plan.m, model.config.nLayer);
  const head = headLossStep(model, blocks.y, targets, B, T);
  const back = blocksBackward(model, adapter, blocks.cache, head.dh);
  return { loss: head.loss, count: head.count, dh2: back.dx, loraGrads: back.loraGrads };
}

// ---------------------------------------------------------------------------------------------
// the whole model

/** Loss only (evaluation). */
export function gpt2Loss(
  model: Gpt2Model,
  adapter: LoraAdapter | undefined,
  batch: TokenBatch,
): { loss: number; count: number } {
  checkBatch(model.config, batch);
  const h0 = gpt2EmbedForward(model, batch.inputIds, batch.B, batch.T);
  const blocks = gpt2BlocksForward(model, adapter, h0, batch.B, batch.T, 0, model.config.nLayer);
  const head = headForward(model, blocks.y, batch.targets, batch.B, batch.T);
  return { loss: head.loss, count: head.count };
}

/**
 * One centralized forward + backward of the whole model. LoRA gradients always; base-weight
 * gradients (every tensor of the model) when `weightGrads` is set, for pre-training.
 */
export function gpt2ForwardBackward(
  model: Gpt2Model,
  adapter: LoraAdapter | undefined,
  batch: TokenBatch,
  opts: { weightGrads?: boolean } = {},
): StepResult {
  checkBatch(model.config, batch);
  const { B, T } = batch;
  const c = model.config;
  const baseGrads: BaseGrads | undefined = opts.weightGrads ? new Map() : undefined;
  const h0 = gpt2EmbedForward(model, batch.inputIds, B, T);
  const blocks = gpt2BlocksForward(model, adapter, h0, B, T, 0, c.nLayer);
  const head = headForward(model, blocks.y, batch.targets, B, T);
  const dh = headBackward(model, head.cache, baseGrads);
  const back = gpt2BlocksBackward(model, adapter, blocks.cache, dh, baseGrads);
  if (baseGrads) {
    const e = embeddingBackward(batch.inputIds, back.dx, B, T, c.nEmbd, c.vocabSize, c.nPositions);
    addInto(baseGrads, 'wte.weight', e.dwte);
    baseGrads.set('wpe.weight', e.dwpe);
  }
  return { loss: head.loss, count: head.count, loraGrads: back.loraGrads, baseGrads };
}
