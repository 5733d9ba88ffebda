/**
 * ONNX graphs for the segments that the edge and the cloud run with onnxruntime, and that the
 * tab's wasm engine runs with onnxruntime-web (inference only, so every backward is an
 * explicit graph of its own):
 *
 *   buildBlocksForwardGraph   blocks [from, to) forward                   (edge; tab, wasm engine)
 *   buildBlocksBackwardGraph  blocks [from, to) backward                  (edge; tab, wasm engine)
 *   buildBlocksStepGraph      both in one graph, the unwanted half fed 0 rows (edge and cloud on cpu:
 *                             one onnxruntime session, so one arena and one copy of the weights)
 *   buildTailGraph            blocks [from, L) + ln_f + tied head + loss, forward and backward (cloud)
 *   buildTailLossGraph        the same, loss only                         (cloud, evaluation)
 *   buildTailLogitsGraph      blocks [from, L) + ln_f + tied head: next-token logits at the last
 *                             position (cloud, generation)
 *
 * They mirror model.ts (blocksForward/blocksBackward, headForward/headBackward) op for op,
 * through the fragments in ./ops. Frozen base weights are initializers (named as in
 * Gpt2Weights, e.g. `h.1.attn.c_attn.weight`), or, with `weights: 'inputs'`, graph inputs of the
 * same names, listed in `weightInputs`: a runtime then holds one copy of them that several graphs
 * share (each onnxruntime session copies its initializers, and pre-packs the matmul weights once
 * more). LoRA matrices are graph inputs (`h.1.attn.c_attn.lora_A` [in, r], `...lora_B` [r, out])
 * so one session serves every step.
 * Batch and sequence length are symbolic ('batch', 'seq'); the causal mask is built from the
 * sequence length at run time.
 *
 * Inside a graph, activations are kept as [batch*seq, width] rows; only attention and the
 * graph's inputs and outputs see [batch, seq, ...].
 *
 * The blocks backward either recomputes the forward from x (saveIntermediates: false: less to
 * keep between the two calls) or takes the 'saved.*' tensors the forward output
 * (saveIntermediates: true: no recompute of matmuls or attention). Per block it saves: the
 * block input (except for the first block, whose input is x), qkv, the attention probabilities,
 * the attention output (only when attn.c_proj has LoRA), the residual after attention and the
 * MLP pre-activation. The rest (layer norms and their statistics, the GELU output, x A) is
 * recomputed cheaply with the same nodes as the forward, so both modes give the same numbers
 * (bit for bit on onnxruntime's CPU provider).
 */
import {
  type Gpt2Config,
  type LoraAdapter,
  type LoraConfig,
  type LoraTarget,
  isLoraTarget,
  checkLoraTargetsFit,
  type ModelConfig,
  loraModulePath,
  loraScale,
  loraTargetDims,
  type Gpt2Model,
  type LoraGrads,
  getWeight,
} from '@splitllm/model';
import { GraphBuilder, type Dims } from './graph-builder';
import {
  attentionBackwardNodes,
  attentionForwardNodes,
  attentionLayoutNodes,
  type AttentionLayout,
} from './ops/attention';
import { crossEntropyBackwardNodes, crossEntropyForwardNodes } from './ops/cross-entropy';
import { geluBackwardNodes, geluForwardNodes } from './ops/gelu';
import { layerNormBackwardNodes, layerNormForwardNodes, type LayerNormForward } from './ops/layernorm';
import { loraLinearBackwardNodes, loraLinearForwardNodes, type LoraLinearNodes } from './ops/lora-linear';

export interface GraphIO {
  name: string;
  dtype: 'float32' | 'int32';
  dims: (number | string)[];
}

export interface SegmentGraph {
  model: Uint8Array;
  /** the inputs a caller feeds every run (activations, targets, LoRA matrices) */
  inputs: GraphIO[];
  outputs: GraphIO[];
  /** the frozen weights, when they are graph inputs too (`weights: 'inputs'`); absent or empty otherwise */
  weightInputs?: GraphIO[];
}

export interface SegmentWeightsOptions {
  /**
   * 'initializers' (default): the frozen weights are stored in the model; 'inputs': they are graph
   * inputs (see the header), and the model holds no weight bytes.
   */
  weights?: 'initializers' | 'inputs';
}

export interface BlocksGraphOptions extends SegmentWeightsOptions {
  /** true: forward outputs the intermediates the backward needs; false: backward recomputes them from x */
  saveIntermediates: boolean;
}

export const BATCH_DIM = 'batch';
export const SEQ_DIM = 'seq';
export const SAVED_PREFIX = 'saved.';
export const GRAD_PREFIX = 'grad.';

/** Graph input name of a LoRA matrix, e.g. `h.1.attn.c_attn.lora_A`. */
export function loraInputName(modulePath: string, which: 'A' | 'B'): string {
  return `${modulePath}.lora_${which}`;
}

/** Graph output name of a LoRA matrix's gradient, e.g. `grad.h.1.attn.c_attn.lora_A`. */
export function loraGradOutputName(modulePath: string, which: 'A' | 'B'): string {
  return GRAD_PREFIX + loraInputName(modulePath, which);
}

/** One LoRA pair of a segment, in graph order (layer ascending, then lora.targets order). */
export interface LoraSlot {
  layer: number;
  target: LoraTarget;
  /** e.g. 'h.1.attn.c_attn' */
  path: string;
  /** [in, r] */
  aDims: [number, number];
  /** [r, out] */
  bDims: [number, number];
}

function checkLora(lora: LoraConfig): LoraTarget[] {
  if (!Number.isInteger(lora.r) || lora.r <= 0)
    throw new Error(`LoRA rank r must be a positive integer, got ${lora.r}`);
  if (!Number.isFinite(lora.alpha)) throw new Error(`LoRA alpha must be finite, got ${lora.alpha}`);
  const targets: LoraTarget[] = [];
  for (const t of lora.targets) {
    if (!isLoraTarget(t)) throw new Error(`unknown LoRA target "${String(t)}"`);
    if (!targets.includes(t)) targets.push(t);
  }
  return targets;
}

/** The LoRA pairs of blocks [from, to), in the order their inputs (and gradient outputs) appear. */
export function loraSlots(config: ModelConfig, lora: LoraConfig, from: number, to: number): LoraSlot[] {
  const targets = checkLora(lora);
  checkLoraTargetsFit(config, lora);
  const out: LoraSlot[] = [];
  for (let layer = from; layer < to; layer++) {
    for (const target of targets) {
      const [din, dout] = loraTargetDims(config, target);
      out.push({ layer, target, path: loraModulePath(layer, target), aDims: [din, lora.r], bDims: [lora.r, dout] });
    }
  }
  return out;
}

/**
 * The LoRA feeds of a segment graph, taken from an adapter, keyed by graph input name. Throws
 * when the adapter lacks a pair for one of lora.targets in [from, to), or a pair is mis-shaped.
 */
export function loraGraphFeeds(
  config: ModelConfig,
  lora: LoraConfig,
  adapter: LoraAdapter,
  from: number,
  to: number,
): Map<string, { data: Float32Array; dims: number[] }> {
  const feeds = new Map<string, { data: Float32Array; dims: number[] }>();
  for (const s of loraSlots(config, lora, from, to)) {
    const pair = adapter.layers.get(s.path);
    if (!pair) throw new Error(`adapter has no LoRA pair for "${s.path}" (LoRA targets: ${lora.targets.join(', ')})`);
    for (const [which, t, dims] of [
      ['A', pair.A, s.aDims],
      ['B', pair.B, s.bDims],
    ] as const) {
      if (
        t.data.length !== dims[0] * dims[1] ||
        t.shape.length !== 2 ||
        t.shape[0] !== dims[0] ||
        t.shape[1] !== dims[1]
      ) {
        throw new Error(
          `adapter: "${s.path}" lora_${which} is [${t.shape.join(', ')}], the graph needs [${dims.join(', ')}]`,
        );
      }
      feeds.set(loraInputName(s.path, which), { data: t.data, dims: [...dims] });
    }
  }
  return feeds;
}

/** LoRA gradients (keyed like LoraAdapter.layers, as the reference returns them) from a graph's grad.* outputs. */
export function loraGradsFromGraph(
  config: ModelConfig,
  lora: LoraConfig,
  from: number,
  to: number,
  output: (name: string) => Float32Array,
): LoraGrads {
  const grads: LoraGrads = new Map();
  for (const s of loraSlots(config, lora, from, to)) {
    grads.set(s.path, { A: output(loraGradOutputName(s.path, 'A')), B: output(loraGradOutputName(s.path, 'B')) });
  }
  return grads;
}

// ---------------------------------------------------------------------------------------------
// a segment under construction

/** What a block's backward needs from its forward (value names, [N, width] rows unless noted). */
interface BlockTape {
  /** block input */
  in: string;
  ln1: LayerNormForward;
  qkv: string;
  /** [B, H, T, T] */
  probs: string;
  /** attention output (input of attn.c_proj); needed only when attn.c_proj has LoRA */
  ctx?: string;
  /** residual after attention */
  a: string;
  ln2: LayerNormForward;
  /** MLP pre-activation */
  fc: string;
  /** GELU output; recomputed from fc when absent */
  act?: string;
  /** x A of each adapted linear; recomputed when absent */
  xa: Partial<Record<LoraTarget, string>>;
}

/** The part of a tape that a forward outputs as 'saved.*' tensors; the rest is recomputed from it. */
type SavedKey = 'in' | 'qkv' | 'probs' | 'ctx' | 'a' | 'fc';

interface SavedSpec {
  key: SavedKey;
  /** suffix of the graph name `saved.h.{layer}.{suffix}` */
  suffix: string;
  /** trailing width of [batch, seq, width]; 'probs' is [batch, nHead, seq, seq] */
  width: number | 'probs';
}

class Segment {
  readonly g: GraphBuilder;
  readonly config: Gpt2Config;
  readonly inputs: GraphIO[] = [];
  readonly outputs: GraphIO[] = [];
  readonly weightInputs: GraphIO[] = [];
  private readonly weightsAsInputs: boolean;
  private readonly targets: LoraTarget[];
  private readonly scale: number;
  private readonly grads = new Map<string, string>();
  /**
   * The graph input whose [batch, seq] the shapes and the causal mask are taken from: 'x', or
   * another one for the backward half of a step graph (buildBlocksStepGraph)
   */
  source = 'x';

  constructor(
    readonly model: Gpt2Model,
    readonly lora: LoraConfig,
    name: string,
    opts: SegmentWeightsOptions,
  ) {
    if (opts.weights !== undefined && opts.weights !== 'initializers' && opts.weights !== 'inputs')
      throw new Error(`segment graph: weights must be 'initializers' or 'inputs', got '${String(opts.weights)}'`);
    this.weightsAsInputs = opts.weights === 'inputs';
    this.g = new GraphBuilder(name);
    this.config = model.config;
    this.targets = checkLora(lora);
    this.scale = loraScale(lora);
  }

  input(name: string, dtype: GraphIO['dtype'], dims: Dims): string {
    this.inputs.push({ name, dtype, dims: [...dims] });
    return this.g.input(name, dtype, dims);
  }

  output(name: string, value: string, dtype: GraphIO['dtype'], dims: Dims): void {
    this.outputs.push({ name, dtype, dims: [...dims] });
    this.g.output(name, value, dtype, dims);
  }

  /** A base weight as an initializer (added once, data by reference) or as a graph input of the same name. */
  weight(name: string): string {
    return this.g.cached(`weight:${name}`, () => {
      const t = getWeight(this.model.weights, name);
      if (!this.weightsAsInputs) return this.g.initializer(name, 'float32', t.shape, t.data);
      this.weightInputs.push({ name, dtype: 'float32', dims: [...t.shape] });
      return this.g.input(name, 'float32', t.shape);
    });
  }

  adapted(target: LoraTarget): boolean {
    return this.targets.includes(target);
  }

  loraInputs(from: number, to: number): void {
    for (const s of loraSlots(this.config, this.lora, from, to)) {
      this.input(loraInputName(s.path, 'A'), 'float32', s.aDims);
      this.input(loraInputName(s.path, 'B'), 'float32', s.bDims);
    }
  }

  gradOutputs(from: number, to: number): void {
    for (const s of loraSlots(this.config, this.lora, from, to)) {
      for (const which of ['A', 'B'] as const) {
        const name = loraGradOutputName(s.path, which);
        const v = this.grads.get(name);
        if (!v) throw new Error(`internal: no gradient computed for ${name}`);
        this.output(name, v, 'float32', which === 'A' ? s.aDims : s.bDims);
      }
    }
  }

  /** A linear's weights (the bias only for a forward: a backward does not read it). */
  linear(layer: number, target: LoraTarget, forward: boolean): LoraLinearNodes {
    const prefix = `h.${layer}.${target}`;
    const p: LoraLinearNodes = { W: this.weight(`${prefix}.weight`) };
    if (forward) p.b = this.weight(`${prefix}.bias`);
    if (this.adapted(target)) {
      p.lora = { A: loraInputName(prefix, 'A'), B: loraInputName(prefix, 'B'), scale: this.scale };
    }
    return p;
  }

  layerNorm(layer: number, which: 'ln_1' | 'ln_2', x: string): LayerNormForward {
    const w = (n: string) => this.weight(`h.${layer}.${which}.${n}`);
    return layerNormForwardNodes(this.g, x, w('weight'), w('bias'), this.config.layerNormEpsilon);
  }

  /** int64 [2]: batch, seq of the graph input `source` */
  get bt(): string {
    return this.g.cached(`bt:${this.source}`, () => this.g.op('Shape', [this.source], { start: 0, end: 2 }, 'bt'));
  }

  get layout(): AttentionLayout {
    // cached by the builder per source
    return attentionLayoutNodes(this.g, this.source, this.config.nEmbd, this.config.nHead);
  }

  /** [batch, seq, ...] -> [batch*seq, width] */
  rows(v: string, width: number): string {
    return this.g.op('Reshape', [v, this.g.int64s([-1, width])]);
  }

  /** [batch*seq, width] -> [batch, seq, width] */
  unrows(v: string, width: number): string {
    const shape = this.g.cached(`bt-shape:${this.source}:${width}`, () =>
      this.g.op('Concat', [this.bt, this.g.int64s([width])], { axis: 0 }),
    );
    return this.g.op('Reshape', [v, shape]);
  }

  // ---- blocks

  /** withOutput false skips what only the block output needs (the last block of a recompute). */
  blockForward(layer: number, x: string, withOutput = true): { y: string | undefined; tape: BlockTape } {
    const { g } = this;
    const xa: BlockTape['xa'] = {};
    const ln1 = this.layerNorm(layer, 'ln_1', x);
    const qkv = loraLinearForwardNodes(g, ln1.y, this.linear(layer, 'attn.c_attn', true));
    xa['attn.c_attn'] = qkv.xa;
    const attn = attentionForwardNodes(g, qkv.y, this.layout);
    const proj = loraLinearForwardNodes(g, attn.y, this.linear(layer, 'attn.c_proj', true));
    xa['attn.c_proj'] = proj.xa;
    const a = g.op('Add', [x, proj.y], {}, `h${layer}_a`);
    const ln2 = this.layerNorm(layer, 'ln_2', a);
    const fc = loraLinearForwardNodes(g, ln2.y, this.linear(layer, 'mlp.c_fc', true));
    xa['mlp.c_fc'] = fc.xa;
    const act = geluForwardNodes(g, fc.y);
    let y: string | undefined;
    if (withOutput) {
      const mlp = loraLinearForwardNodes(g, act, this.linear(layer, 'mlp.c_proj', true));
      xa['mlp.c_proj'] = mlp.xa;
      y = g.op('Add', [a, mlp.y], {}, `h${layer}_y`);
    }
    const tape: BlockTape = { in: x, ln1, qkv: qkv.y, probs: attn.probs, ctx: attn.y, a, ln2, fc: fc.y, act, xa };
    return { y, tape };
  }

  /** Blocks [from, to) forward; y is undefined when withOutput is false. */
  blocksForward(
    x: string,
    from: number,
    to: number,
    withOutput: boolean,
  ): { y: string | undefined; tapes: BlockTape[] } {
    const tapes: BlockTape[] = [];
    let h: string | undefined = x;
    for (let layer = from; layer < to; layer++) {
      const r = this.blockForward(layer, h as string, withOutput || layer < to - 1);
      tapes.push(r.tape);
      h = r.y;
    }
    return { y: h, tapes };
  }

  /**
   * A tape from saved tensors: the layer norms are recomputed with the forward's own op, so
   * their values are the same.
   */
  tapeFromSaved(layer: number, saved: Pick<BlockTape, SavedKey>): BlockTape {
    return {
      ...saved,
      ln1: this.layerNorm(layer, 'ln_1', saved.in),
      ln2: this.layerNorm(layer, 'ln_2', saved.a),
      xa: {},
    };
  }

  private linearBackward(
    layer: number,
    target: LoraTarget,
    x: () => string,
    dy: string,
    xa: string | undefined,
  ): string {
    const p = this.linear(layer, target, false);
    // the layer input is only read for the adapter's gradients
    const r = loraLinearBackwardNodes(this.g, p.lora ? x() : undefined, dy, p, xa);
    if (r.dA && r.dB) {
      const path = loraModulePath(layer, target);
      this.grads.set(loraGradOutputName(path, 'A'), r.dA);
      this.grads.set(loraGradOutputName(path, 'B'), r.dB);
    }
    return r.dx;
  }

  blockBackward(layer: number, t: BlockTape, dy: string): string {
    const { g } = this;
    const w = (n: string) => this.weight(`h.${layer}.${n}`);
    // MLP branch: y = a + mlp.c_proj(gelu(c_fc(ln_2(a))))
    const act = () => t.act ?? geluForwardNodes(g, t.fc);
    const dAct = this.linearBackward(layer, 'mlp.c_proj', act, dy, t.xa['mlp.c_proj']);
    const dFc = geluBackwardNodes(g, t.fc, dAct);
    const dLn2 = this.linearBackward(layer, 'mlp.c_fc', () => t.ln2.y, dFc, t.xa['mlp.c_fc']);
    const da = g.op(
      'Add',
      [dy, layerNormBackwardNodes(g, t.a, t.ln2.mean, t.ln2.rstd, w('ln_2.weight'), dLn2)],
      {},
      `h${layer}_da`,
    );
    // attention branch: a = x + c_proj(attn(c_attn(ln_1(x))))
    const ctx = () => {
      if (!t.ctx) throw new Error(`internal: attention output of block ${layer} was not kept`);
      return t.ctx;
    };
    const dCtx = this.linearBackward(layer, 'attn.c_proj', ctx, da, t.xa['attn.c_proj']);
    const dQkv = attentionBackwardNodes(g, t.qkv, t.probs, dCtx, this.layout);
    const dLn1 = this.linearBackward(layer, 'attn.c_attn', () => t.ln1.y, dQkv, t.xa['attn.c_attn']);
    return g.op(
      'Add',
      [da, layerNormBackwardNodes(g, t.in, t.ln1.mean, t.ln1.rstd, w('ln_1.weight'), dLn1)],
      {},
      `h${layer}_dx`,
    );
  }

  /** What a block's forward saves for its backward; the first block's input is the graph input x. */
  savedSpecs(first: boolean): SavedSpec[] {
    const D = this.config.nEmbd;
    const specs: SavedSpec[] = [];
    if (!first) specs.push({ key: 'in', suffix: 'in', width: D });
    specs.push(
      { key: 'qkv', suffix: 'attn.qkv', width: 3 * D },
      { key: 'probs', suffix: 'attn.probs', width: 'probs' },
    );
    if (this.adapted('attn.c_proj')) specs.push({ key: 'ctx', suffix: 'attn.out', width: D });
    specs.push({ key: 'a', suffix: 'a', width: D }, { key: 'fc', suffix: 'mlp.fc', width: this.config.nInner });
    return specs;
  }

  savedDims(spec: SavedSpec, [batch, seq]: readonly [string, string] = [BATCH_DIM, SEQ_DIM]): Dims {
    return spec.width === 'probs' ? [batch, this.config.nHead, seq, seq] : [batch, seq, spec.width];
  }

  finish(): SegmentGraph {
    return { model: this.g.toModel(), inputs: this.inputs, outputs: this.outputs, weightInputs: this.weightInputs };
  }
}

function checkRange(model: Gpt2Model, from: number, to: number, what: string): void {
  const L = model.config.nLayer;
  if (!Number.isInteger(from) || !Number.isInteger(to) || from < 0 || to > L || from > to) {
    throw new Error(`${what}: block range [${from}, ${to}) is invalid for a model of ${L} layers`);
  }
}

const savedName = (layer: number, suffix: string) => `${SAVED_PREFIX}h.${layer}.${suffix}`;

/** The forward half: input 'x' (the LoRA inputs are the caller's to declare), outputs 'y' and the saved tensors. */
function blocksForwardPart(s: Segment, from: number, to: number, saveIntermediates: boolean): void {
  const D = s.config.nEmbd;
  const { y, tapes } = s.blocksForward(s.rows('x', D), from, to, true);
  s.output('y', s.unrows(y as string, D), 'float32', [BATCH_DIM, SEQ_DIM, D]);
  if (!saveIntermediates) return;
  tapes.forEach((tape, i) => {
    const layer = from + i;
    for (const spec of s.savedSpecs(i === 0)) {
      const v = tape[spec.key];
      if (v === undefined) throw new Error(`internal: ${spec.key} of block ${layer} missing`);
      const shaped = spec.width === 'probs' ? v : s.unrows(v, spec.width);
      s.output(savedName(layer, spec.suffix), shaped, 'float32', s.savedDims(spec));
    }
  });
}

/**
 * The backward half, from input `x` (declared by the caller), 'dy' and the saved tensors as
 * inputs named `savedPrefix` + their forward output name; outputs 'dx' and the LoRA gradients.
 */
function blocksBackwardPart(
  s: Segment,
  from: number,
  to: number,
  saveIntermediates: boolean,
  x: string,
  savedPrefix: string,
  dims: readonly [string, string],
): void {
  const D = s.config.nEmbd;
  s.source = x;
  const dy = s.input('dy', 'float32', [dims[0], dims[1], D]);
  const x2 = s.rows(x, D);
  let tapes: BlockTape[] = [];
  if (saveIntermediates) {
    for (let layer = from; layer < to; layer++) {
      const saved: Partial<Pick<BlockTape, SavedKey>> = { in: x2 };
      for (const spec of s.savedSpecs(layer === from)) {
        const v = s.input(savedPrefix + savedName(layer, spec.suffix), 'float32', s.savedDims(spec, dims));
        saved[spec.key] = spec.width === 'probs' ? v : s.rows(v, spec.width);
      }
      tapes.push(s.tapeFromSaved(layer, saved as Pick<BlockTape, SavedKey>));
    }
  } else {
    tapes = s.blocksForward(x2, from, to, false).tapes;
  }
  let d = s.rows(dy, D);
  for (let layer = to - 1; layer >= from; layer--) d = s.blockBackward(layer, tapes[layer - from], d);
  s.output('dx', s.unrows(d, D), 'float32', [dims[0], dims[1], D]);
  s.gradOutputs(from, to);
}

/**
 * Forward of blocks [from,to). Inputs: 'x' [batch, seq, D] float32, then for every LoRA pair in
 * blocks [from,to) and lora.targets: `${modulePath}.lora_A` [in,r] and `${modulePath}.lora_B`
 * [r,out]. Outputs: 'y' [batch,seq,D], then (when saveIntermediates) the saved tensors, names
 * starting with 'saved.'.
 */
export function buildBlocksForwardGraph(
  model: Gpt2Model,
  lora: LoraConfig,
  from: number,
  to: number,
  opts: BlocksGraphOptions,
): SegmentGraph {
  checkRange(model, from, to, 'blocks forward graph');
  if (from === to) throw new Error('blocks forward graph: the block range is empty');
  const s = new Segment(model, lora, `blocks_${from}_${to}_forward`, opts);
  s.input('x', 'float32', [BATCH_DIM, SEQ_DIM, model.config.nEmbd]);
  s.loraInputs(from, to);
  blocksForwardPart(s, from, to, opts.saveIntermediates);
  return s.finish();
}

/**
 * Backward of blocks [from,to). Inputs: 'x', the LoRA inputs as above, 'dy' [batch,seq,D], then
 * (when saveIntermediates) the 'saved.*' tensors the forward output, same names. Outputs: 'dx',
 * then `grad.${modulePath}.lora_A` and `grad.${modulePath}.lora_B` for each pair.
 */
export function buildBlocksBackwardGraph(
  model: Gpt2Model,
  lora: LoraConfig,
  from: number,
  to: number,
  opts: BlocksGraphOptions,
): SegmentGraph {
  checkRange(model, from, to, 'blocks backward graph');
  if (from === to) throw new Error('blocks backward graph: the block range is empty');
  const s = new Segment(model, lora, `blocks_${from}_${to}_backward`, opts);
  s.input('x', 'float32', [BATCH_DIM, SEQ_DIM, model.config.nEmbd]);
  s.loraInputs(from, to);
  blocksBackwardPart(s, from, to, opts.saveIntermediates, 'x', '', [BATCH_DIM, SEQ_DIM]);
  return s.finish();
}

/** Name prefix of the backward half's inputs in a step graph (buildBlocksStepGraph). */
export const BACKWARD_PREFIX = 'backward.';
export const BACKWARD_BATCH_DIM = 'backward_batch';
export const BACKWARD_SEQ_DIM = 'backward_seq';

/**
 * Forward and backward of blocks [from,to) in ONE graph, so that a runtime that keeps one memory
 * arena per session (onnxruntime) keeps one for both (two sessions keep the high-water mark of
 * each). Every run computes both halves: the caller feeds the half it does not want a batch of 0
 * rows, which costs next to nothing, and fetches the outputs of the other.
 *
 * Inputs: 'x' [batch, seq, D] and the LoRA inputs, as buildBlocksForwardGraph; then the backward
 * half's: 'backward.x' and 'dy' [backward_batch, backward_seq, D] and (when saveIntermediates)
 * 'backward.saved.*' (the forward's 'saved.*' outputs). Outputs: the forward graph's ('y',
 * 'saved.*'), then the backward graph's ('dx', 'grad.*'). Each half's nodes are those of the
 * two-graph version, so the numbers are the same.
 */
export function buildBlocksStepGraph(
  model: Gpt2Model,
  lora: LoraConfig,
  from: number,
  to: number,
  opts: BlocksGraphOptions,
): SegmentGraph {
  checkRange(model, from, to, 'blocks step graph');
  if (from === to) throw new Error('blocks step graph: the block range is empty');
  const s = new Segment(model, lora, `blocks_${from}_${to}_step`, opts);
  const D = model.config.nEmbd;
  s.input('x', 'float32', [BATCH_DIM, SEQ_DIM, D]);
  s.loraInputs(from, to);
  blocksForwardPart(s, from, to, opts.saveIntermediates);
  const dims = [BACKWARD_BATCH_DIM, BACKWARD_SEQ_DIM] as const;
  const bx = s.input(`${BACKWARD_PREFIX}x`, 'float32', [dims[0], dims[1], D]);
  blocksBackwardPart(s, from, to, opts.saveIntermediates, bx, BACKWARD_PREFIX, dims);
  return s.finish();
}

function tail(
  model: Gpt2Model,
  lora: LoraConfig,
  from: number,
  withBackward: boolean,
  opts: SegmentWeightsOptions,
): SegmentGraph {
  const c = model.config;
  const L = c.nLayer;
  checkRange(model, from, L, withBackward ? 'tail graph' : 'tail loss graph');
  const s = new Segment(model, lora, withBackward ? `tail_${from}` : `tail_${from}_loss`, opts);
  const { g } = s;
  const D = c.nEmbd;
  const x = s.input('x', 'float32', [BATCH_DIM, SEQ_DIM, D]);
  const targets = s.input('targets', 'int32', [BATCH_DIM, SEQ_DIM]);
  s.loraInputs(from, L);
  const blocks = s.blocksForward(s.rows(x, D), from, L, true);
  const h = blocks.y as string;
  const tapes = blocks.tapes;
  // head: ln_f, tied LM head (logits = normed wte^T), mean cross-entropy
  const lnfGamma = s.weight('ln_f.weight');
  const lnf = layerNormForwardNodes(g, h, lnfGamma, s.weight('ln_f.bias'), c.layerNormEpsilon);
  const wte = s.weight('wte.weight');
  const logits = g.op('Gemm', [lnf.y, wte], { transB: 1 }, 'logits');
  const ce = crossEntropyForwardNodes(g, logits, targets);
  s.output('loss', ce.loss, 'float32', []);
  s.output('count', ce.count, 'float32', []);
  if (!withBackward) return s.finish();

  const dLogits = crossEntropyBackwardNodes(g, logits, ce, c.vocabSize);
  const dNormed = g.op('MatMul', [dLogits, wte]);
  let d = layerNormBackwardNodes(g, h, lnf.mean, lnf.rstd, lnfGamma, dNormed);
  for (let layer = L - 1; layer >= from; layer--) d = s.blockBackward(layer, tapes[layer - from], d);
  s.output('dx', s.unrows(d, D), 'float32', [BATCH_DIM, SEQ_DIM, D]);
  s.gradOutputs(from, L);
  return s.finish();
}

/**
 * The cloud tail, forward and backward in one graph: blocks [from, L), ln_f, tied LM head
 * (wte^T), mean cross-entropy. Inputs: 'x' [batch,seq,D], 'targets' int32 [batch,seq] (-100 =
 * ignored), LoRA inputs for blocks [from,L). Outputs: 'loss' (float32 scalar, shape []),
 * 'count' (float32 scalar: number of counted targets), 'dx' [batch,seq,D], then the grad.* LoRA
 * outputs. from may equal L (head only).
 */
export function buildTailGraph(
  model: Gpt2Model,
  lora: LoraConfig,
  from: number,
  opts: SegmentWeightsOptions = {},
): SegmentGraph {
  return tail(model, lora, from, true, opts);
}

/** Loss only (eval): the tail's inputs, outputs 'loss' and 'count'. */
export function buildTailLossGraph(
  model: Gpt2Model,
  lora: LoraConfig,
  from: number,
  opts: SegmentWeightsOptions = {},
): SegmentGraph {
  return tail(model, lora, from, false, opts);
}

/**
 * Generation: blocks [from, L), then ln_f and the tied LM head at the LAST position only (the
 * next-token logits; causal attention makes every other position irrelevant to it, so the head
 * costs one [D] x [D, V] product per row instead of T). Inputs: 'x' [batch,seq,D], LoRA inputs
 * for blocks [from,L). Output: 'logits' [batch, V]. from may equal L (head only). Mirrors
 * model.ts (blocksForward, then headForward's ln_f and matmulBT with wte) row for row.
 */
export function buildTailLogitsGraph(
  model: Gpt2Model,
  lora: LoraConfig,
  from: number,
  opts: SegmentWeightsOptions = {},
): SegmentGraph {
  const c = model.config;
  const L = c.nLayer;
  checkRange(model, from, L, 'tail logits graph');
  const s = new Segment(model, lora, `tail_${from}_logits`, opts);
  const { g } = s;
  const D = c.nEmbd;
  const x = s.input('x', 'float32', [BATCH_DIM, SEQ_DIM, D]);
  s.loraInputs(from, L);
  const h = s.blocksForward(s.rows(x, D), from, L, true).y as string;
  // [batch*seq, D] -> [batch, seq, D] -> the last position: [batch, D]
  const last = g.op('Gather', [s.unrows(h, D), g.int32Scalar(-1)], { axis: 1 }, 'last');
  const lnf = layerNormForwardNodes(g, last, s.weight('ln_f.weight'), s.weight('ln_f.bias'), c.layerNormEpsilon);
  const logits = g.op('Gemm', [lnf.y, s.weight('wte.weight')], { transB: 1 }, 'logits');
  s.output('logits', logits, 'float32', [BATCH_DIM, c.vocabSize]);
  return s.finish();
}
