/**
 * ONNX graphs of the LLaMA family (LlamaForCausalLM, Qwen2ForCausalLM) for the segments the
 * edge and the cloud run with onnxruntime-node and the tab's wasm engine runs with
 * onnxruntime-web; the LLaMA counterparts of segment-graphs.ts and head-graphs.ts:
 *
 *   llamaBlocksForwardGraph   blocks [from, to) forward                     (edge; tab, wasm engine)
 *   llamaBlocksBackwardGraph  blocks [from, to) backward                    (edge; tab, wasm engine)
 *   llamaBlocksStepGraph      both in one graph (one onnxruntime arena)     (edge)
 *   llamaTailGraph            blocks [from, L) + norm + head + loss, forward and backward (cloud)
 *   llamaTailLossGraph        the same, loss only                           (cloud, evaluation)
 *   llamaTailLogitsGraph      blocks [from, L) + norm + head at the last position (cloud, generation)
 *   llamaHeadStepGraph        norm + head + cross-entropy on a chunk of rows, forward and backward
 *                             (tab, labels on the device)
 *   llamaHeadLogitsGraph      norm + head: logits of some rows (tab, generation)
 *
 * They mirror the reference llama.ts (llamaBlocksForward/Backward, llamaHeadForward/Backward,
 * llamaHeadLossStep, llamaHeadLogits) op for op, through the fragments in ./ops (rmsnorm, rope,
 * swiglu, gqa-attention; cross-entropy shared with GPT-2). The head is `lm_head.weight`, or
 * `embed_tokens.weight` when the config ties them.
 *
 * Names and conventions are the GPT-2 graphs', so one runner can feed either family:
 *  - inputs 'x' [batch, seq, D] (D = hidden_size), 'dy', 'targets' int32 [batch, seq] (-100 =
 *    ignored); outputs 'y', 'dx', 'loss', 'count', 'logits'; symbolic 'batch' and 'seq';
 *  - LoRA matrices are graph inputs named `${modulePath}.lora_A` [in, r] / `.lora_B` [r, out]
 *    with the LLaMA module paths (`layers.1.self_attn.q_proj.lora_A`), in layer order, then in
 *    lora.targets order; their gradients are outputs `grad.${input name}` in the same order;
 *  - frozen weights are initializers with their Hugging Face names without `model.`
 *    (`layers.1.self_attn.q_proj.weight`, `norm.weight`), or with `weights: 'inputs'` graph
 *    inputs of those names, listed in `weightInputs`;
 *  - the forward's `saved.*` outputs are the backward's inputs of the same names
 *    (`saved.layers.{i}.{suffix}`); a step graph's backward half takes `backward.x`,
 *    `backward.saved.*` with dims 'backward_batch' / 'backward_seq', as buildBlocksStepGraph.
 * The differences a runner must know: the width of x is config.hiddenSize (GPT-2: nEmbd); the
 * LoRA feeds and gradients go through llamaLoraGraphFeeds / llamaLoraGradsFromGraph (LLaMA
 * module paths and dims); the graphs also hold the RoPE tables `rope.cos` / `rope.sin`
 * ([P, hd/2] each, P = `ropePositions`, default max_position_embeddings), which stay
 * initializers with `weights: 'inputs'` (they are not model weights) and bound the sequence
 * length a graph accepts.
 *
 * Every nn.Linear ([out, in]) is a Gemm with transB = 1 on the stored weight (forward) and a
 * plain Gemm on it (dx = dy W, backward): no transposed copy of any weight is made.
 *
 * The blocks backward either recomputes the forward from x (saveIntermediates: false) or takes the
 * `saved.*` tensors the forward output (true). Per block it saves the block input (except the
 * first block's, which is x), the rotated q and k and v (the attention's inputs), the attention
 * probabilities [batch, H, seq, seq], the attention output (only when o_proj has LoRA), the
 * residual after attention and the SwiGLU's gate and up. The rest (the RMSNorms and their rstd,
 * the SwiGLU output, x A) is recomputed with the forward's own nodes, so both modes agree.
 */
import {
  CodedError,
  IGNORE_INDEX,
  isLlamaLoraTarget,
  type LlamaConfig,
  type LlamaLoraAdapter,
  type LlamaLoraConfig,
  type LlamaLoraTarget,
  type LlamaModel,
  llamaHeadWeightName,
  llamaLoraModulePath,
  llamaLoraScale,
  llamaLoraTargetDims,
  llamaParameterShapes,
  llamaRopeTable,
  type LoraGrads,
} from '@splitllm/model';
import { floatAttr, GraphBuilder, type Dims } from './graph-builder';
import { HEAD_ROWS_DIM } from './head-graphs';
import { crossEntropyBackwardNodes, crossEntropyForwardNodes, type CrossEntropyForward } from './ops/cross-entropy';
import {
  gqaAttentionBackwardNodes,
  gqaAttentionForwardNodes,
  gqaLayoutNodes,
  type GqaLayout,
} from './ops/gqa-attention';
import { rmsNormBackwardNodes, rmsNormForwardNodes, type RmsNormForward } from './ops/rmsnorm';
import { ropeBackwardNodes, ropeForwardNodes, ropeTableNodes, type RopeNodes } from './ops/rope';
import { swigluBackwardNodes, swigluForwardNodes } from './ops/swiglu';
import {
  BACKWARD_BATCH_DIM,
  BACKWARD_PREFIX,
  BACKWARD_SEQ_DIM,
  BATCH_DIM,
  type GraphIO,
  loraGradOutputName,
  loraInputName,
  SAVED_PREFIX,
  SEQ_DIM,
  type SegmentGraph,
} from './segment-graphs';

export type LlamaGraphErrorCode =
  | 'LLAMA_GRAPH_RANGE'
  | 'LLAMA_GRAPH_LORA'
  | 'LLAMA_GRAPH_WEIGHT'
  | 'LLAMA_GRAPH_OPTION';

export class LlamaGraphError extends CodedError<LlamaGraphErrorCode> {}

export interface LlamaGraphOptions {
  /** 'initializers' (default): frozen weights stored in the model; 'inputs': graph inputs (see the header) */
  weights?: 'initializers' | 'inputs';
  /** positions the RoPE table covers, i.e. the longest sequence the graph runs; default max_position_embeddings */
  ropePositions?: number;
}

export interface LlamaBlocksGraphOptions extends LlamaGraphOptions {
  /** true: forward outputs the intermediates the backward needs; false: backward recomputes them from x */
  saveIntermediates: boolean;
}

// ---------------------------------------------------------------------------------------------
// nn.Linear ([out, in]) with an optional LoRA pair

export interface LlamaLinearNodes {
  /** base weight [out, in] (nn.Linear) */
  W: string;
  /** base bias [out] */
  b?: string;
  /** the adapter pair, A [in, r] and B [r, out]; absent for a plain linear */
  lora?: { A: string; B: string; scale: number };
}

/** y = x W^T + b + s (x A) B for x [N, in]; xa = x A is returned for the backward when adapted. */
export function llamaLinearForwardNodes(g: GraphBuilder, x: string, p: LlamaLinearNodes): { y: string; xa?: string } {
  const base = g.op('Gemm', p.b ? [x, p.W, p.b] : [x, p.W], { transB: 1 }, 'linear');
  if (!p.lora) return { y: base };
  const xa = g.op('MatMul', [x, p.lora.A], {}, 'lora_xa');
  const y = g.op('Gemm', [xa, p.lora.B, base], { alpha: floatAttr(p.lora.scale) }, 'lora_y');
  return { y, xa };
}

/**
 * g = s dy B^T,  dx = dy W + g A^T,  dA = x^T g,  dB = s (x A)^T dy (no dW: the base is frozen).
 * x (the layer input) is only read for the adapter's gradients; `xa` is recomputed when not given.
 */
export function llamaLinearBackwardNodes(
  g: GraphBuilder,
  x: string | undefined,
  dy: string,
  p: LlamaLinearNodes,
  xa?: string,
): { dx: string; dA?: string; dB?: string } {
  const dxBase = g.op('Gemm', [dy, p.W], {}, 'linear_dx');
  if (!p.lora) return { dx: dxBase };
  if (x === undefined) throw new Error('llamaLinearBackwardNodes: the layer input is needed for LoRA gradients');
  const { A, B, scale } = p.lora;
  const gr = g.op('Gemm', [dy, B], { transB: 1, alpha: floatAttr(scale) }, 'lora_g');
  const dx = g.op('Gemm', [gr, A, dxBase], { transB: 1 }, 'lora_dx');
  const dA = g.op('Gemm', [x, gr], { transA: 1 }, 'lora_dA');
  const xA = xa ?? g.op('MatMul', [x, A], {}, 'lora_xa');
  const dB = g.op('Gemm', [xA, dy], { transA: 1, alpha: floatAttr(scale) }, 'lora_dB');
  return { dx, dA, dB };
}

// ---------------------------------------------------------------------------------------------
// LoRA inputs and gradient outputs

/** One LoRA pair of a segment, in graph order (layer ascending, then lora.targets order). */
export interface LlamaLoraSlot {
  layer: number;
  target: LlamaLoraTarget;
  /** e.g. 'layers.1.self_attn.q_proj' */
  path: string;
  /** [in, r] */
  aDims: [number, number];
  /** [r, out] */
  bDims: [number, number];
}

function checkLlamaLora(lora: LlamaLoraConfig): LlamaLoraTarget[] {
  if (!(Number.isInteger(lora.r) && lora.r > 0))
    throw new LlamaGraphError('LLAMA_GRAPH_LORA', `LoRA rank r must be a positive integer, got ${lora.r}`);
  if (!Number.isFinite(lora.alpha))
    throw new LlamaGraphError('LLAMA_GRAPH_LORA', `LoRA alpha must be finite, got ${lora.alpha}`);
  const targets: LlamaLoraTarget[] = [];
  for (const t of lora.targets) {
    if (!isLlamaLoraTarget(t))
      throw new LlamaGraphError('LLAMA_GRAPH_LORA', `unknown LoRA target "${String(t)}" for a LLaMA-family graph`);
    if (!targets.includes(t)) targets.push(t);
  }
  return targets;
}

/** The LoRA pairs of blocks [from, to), in the order their inputs (and gradient outputs) appear. */
export function llamaLoraSlots(config: LlamaConfig, lora: LlamaLoraConfig, from: number, to: number): LlamaLoraSlot[] {
  const targets = checkLlamaLora(lora);
  const out: LlamaLoraSlot[] = [];
  for (let layer = from; layer < to; layer++) {
    for (const target of targets) {
      const [din, dout] = llamaLoraTargetDims(config, target);
      out.push({
        layer,
        target,
        path: llamaLoraModulePath(layer, target),
        aDims: [din, lora.r],
        bDims: [lora.r, dout],
      });
    }
  }
  return out;
}

/**
 * The LoRA feeds of a LLaMA segment graph, taken from an adapter, keyed by graph input name.
 * Throws when the adapter lacks a pair for one of lora.targets in [from, to), or a pair is mis-shaped.
 */
export function llamaLoraGraphFeeds(
  config: LlamaConfig,
  lora: LlamaLoraConfig,
  adapter: LlamaLoraAdapter,
  from: number,
  to: number,
): Map<string, { data: Float32Array; dims: number[] }> {
  const feeds = new Map<string, { data: Float32Array; dims: number[] }>();
  for (const s of llamaLoraSlots(config, lora, from, to)) {
    const pair = adapter.layers.get(s.path);
    if (!pair) {
      throw new LlamaGraphError(
        'LLAMA_GRAPH_LORA',
        `adapter has no LoRA pair for "${s.path}" (LoRA targets: ${lora.targets.join(', ')})`,
      );
    }
    for (const [which, t, dims] of [
      ['A', pair.A, s.aDims],
      ['B', pair.B, s.bDims],
    ] as const) {
      const fits =
        t.shape.length === 2 && t.shape[0] === dims[0] && t.shape[1] === dims[1] && t.data.length === dims[0] * dims[1];
      if (!fits) {
        throw new LlamaGraphError(
          'LLAMA_GRAPH_LORA',
          `adapter: "${s.path}" lora_${which} is [${t.shape.join(', ')}], the graph needs [${dims.join(', ')}]`,
        );
      }
      feeds.set(loraInputName(s.path, which), { data: t.data, dims: [...dims] });
    }
  }
  return feeds;
}

/** LoRA gradients keyed by module path (as llamaBlocksBackward returns them) from a graph's grad.* outputs. */
export function llamaLoraGradsFromGraph(
  config: LlamaConfig,
  lora: LlamaLoraConfig,
  from: number,
  to: number,
  output: (name: string) => Float32Array,
): LoraGrads {
  const grads: LoraGrads = new Map();
  for (const s of llamaLoraSlots(config, lora, from, to)) {
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
  inputNorm: RmsNormForward;
  /** rotated q [N, H*hd], rotated k and v [N, Hkv*hd]: the attention's inputs */
  q: string;
  k: string;
  v: string;
  /** [B, H, T, T] */
  probs: string;
  /** attention output (o_proj's input); needed only when o_proj has LoRA */
  ctx?: string;
  /** residual after attention */
  a: string;
  postNorm: RmsNormForward;
  /** gate_proj and up_proj outputs [N, F] */
  gate: string;
  up: string;
  /** SwiGLU output; recomputed from gate and up when absent */
  act?: string;
  /** x A of each adapted linear; recomputed when absent */
  xa: Partial<Record<LlamaLoraTarget, string>>;
}

/** The part of a tape a forward outputs as `saved.*` tensors; the rest is recomputed from it. */
type SavedKey = 'in' | 'q' | 'k' | 'v' | 'probs' | 'ctx' | 'a' | 'gate' | 'up';

interface SavedSpec {
  key: SavedKey;
  /** suffix of the graph name `saved.layers.{layer}.{suffix}` */
  suffix: string;
  /** trailing width of [batch, seq, width]; 'probs' is [batch, nHead, seq, seq] */
  width: number | 'probs';
}

function hasBias(c: LlamaConfig, target: LlamaLoraTarget): boolean {
  if (target === 'q_proj' || target === 'k_proj' || target === 'v_proj') return c.qkvBias;
  if (target === 'o_proj') return c.oBias;
  return c.mlpBias;
}

class LlamaSegment {
  readonly g: GraphBuilder;
  readonly config: LlamaConfig;
  readonly inputs: GraphIO[] = [];
  readonly outputs: GraphIO[] = [];
  readonly weightInputs: GraphIO[] = [];
  private readonly weightsAsInputs: boolean;
  private readonly targets: LlamaLoraTarget[];
  private readonly scale: number;
  private readonly shapes: Map<string, number[]>;
  private readonly ropePositions: number;
  private readonly grads = new Map<string, string>();
  /** the graph input whose [batch, seq] the shapes, the mask and the RoPE rows are taken from */
  source = 'x';

  constructor(
    readonly model: LlamaModel,
    readonly lora: LlamaLoraConfig,
    name: string,
    opts: LlamaGraphOptions,
  ) {
    const c = model.config;
    if (opts.weights !== undefined && opts.weights !== 'initializers' && opts.weights !== 'inputs') {
      throw new LlamaGraphError(
        'LLAMA_GRAPH_OPTION',
        `LLaMA graph: weights must be 'initializers' or 'inputs', got '${String(opts.weights)}'`,
      );
    }
    const P = opts.ropePositions ?? c.maxPositionEmbeddings;
    if (!(Number.isInteger(P) && P >= 1 && P <= c.maxPositionEmbeddings)) {
      throw new LlamaGraphError(
        'LLAMA_GRAPH_OPTION',
        `LLaMA graph: ropePositions ${P} must be an integer in [1, max_position_embeddings ${c.maxPositionEmbeddings}]`,
      );
    }
    this.weightsAsInputs = opts.weights === 'inputs';
    this.ropePositions = P;
    this.g = new GraphBuilder(name);
    this.config = c;
    this.targets = checkLlamaLora(lora);
    this.scale = llamaLoraScale(lora);
    this.shapes = new Map(llamaParameterShapes(c));
  }

  input(name: string, dtype: GraphIO['dtype'], dims: Dims): string {
    this.inputs.push({ name, dtype, dims: [...dims] });
    return this.g.input(name, dtype, dims);
  }

  output(name: string, value: string, dtype: GraphIO['dtype'], dims: Dims): void {
    this.outputs.push({ name, dtype, dims: [...dims] });
    this.g.output(name, value, dtype, dims);
  }

  /** A base weight, checked against the config's shape, as an initializer or a graph input of the same name. */
  weight(name: string): string {
    return this.g.cached(`weight:${name}`, () => {
      const t = checkedWeight(this.model, this.shapes, name);
      if (!this.weightsAsInputs) return this.g.initializer(name, 'float32', t.shape, t.data);
      this.weightInputs.push({ name, dtype: 'float32', dims: [...t.shape] });
      return this.g.input(name, 'float32', t.shape);
    });
  }

  adapted(target: LlamaLoraTarget): boolean {
    return this.targets.includes(target);
  }

  loraInputs(from: number, to: number): void {
    for (const s of llamaLoraSlots(this.config, this.lora, from, to)) {
      this.input(loraInputName(s.path, 'A'), 'float32', s.aDims);
      this.input(loraInputName(s.path, 'B'), 'float32', s.bDims);
    }
  }

  gradOutputs(from: number, to: number): void {
    for (const s of llamaLoraSlots(this.config, this.lora, from, to)) {
      for (const which of ['A', 'B'] as const) {
        const name = loraGradOutputName(s.path, which);
        const v = this.grads.get(name);
        if (!v) throw new Error(`internal: no gradient computed for ${name}`);
        this.output(name, v, 'float32', which === 'A' ? s.aDims : s.bDims);
      }
    }
  }

  /** A linear's weights (the bias only for a forward: a backward does not read it). */
  linear(layer: number, target: LlamaLoraTarget, forward: boolean): LlamaLinearNodes {
    const path = llamaLoraModulePath(layer, target);
    const p: LlamaLinearNodes = { W: this.weight(`${path}.weight`) };
    if (forward && hasBias(this.config, target)) p.b = this.weight(`${path}.bias`);
    if (this.adapted(target)) p.lora = { A: loraInputName(path, 'A'), B: loraInputName(path, 'B'), scale: this.scale };
    return p;
  }

  norm(layer: number, which: 'input_layernorm' | 'post_attention_layernorm', x: string): RmsNormForward {
    return rmsNormForwardNodes(this.g, x, this.weight(`layers.${layer}.${which}.weight`), this.config.rmsNormEps);
  }

  get layout(): GqaLayout {
    const c = this.config;
    return gqaLayoutNodes(this.g, this.source, c.nHead, c.nKvHead, c.headDim); // cached per source
  }

  get rope(): RopeNodes {
    const table = this.g.cached('rope-reference-table', () => llamaRopeTable(this.config, this.ropePositions));
    return ropeTableNodes(this.g, table, this.source); // cached per source
  }

  /** int64 [2]: batch, seq of the graph input `source` */
  get bt(): string {
    return this.g.cached(`bt:${this.source}`, () => this.g.op('Shape', [this.source], { start: 0, end: 2 }, 'bt'));
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

  get qWidth(): number {
    return this.config.nHead * this.config.headDim;
  }

  get kvWidth(): number {
    return this.config.nKvHead * this.config.headDim;
  }

  // ---- blocks

  /** withOutput false skips what only the block output needs (the last block of a recompute). */
  blockForward(layer: number, x: string, withOutput = true): { y: string | undefined; tape: BlockTape } {
    const { g } = this;
    const L = this.layout;
    const xa: BlockTape['xa'] = {};
    const lin = (target: LlamaLoraTarget, input: string) => {
      const r = llamaLinearForwardNodes(g, input, this.linear(layer, target, true));
      xa[target] = r.xa;
      return r.y;
    };
    // attention branch: a = x + o_proj(gqa(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))), n = rmsnorm(x)
    const inputNorm = this.norm(layer, 'input_layernorm', x);
    const q = ropeForwardNodes(g, lin('q_proj', inputNorm.y), this.rope, L.qHeadsShape, this.qWidth);
    const k = ropeForwardNodes(g, lin('k_proj', inputNorm.y), this.rope, L.kvHeadsShape, this.kvWidth);
    const v = lin('v_proj', inputNorm.y);
    const attn = gqaAttentionForwardNodes(g, q, k, v, L);
    const a = g.op('Add', [x, lin('o_proj', attn.y)], {}, `l${layer}_a`);
    // MLP branch: y = a + down_proj(swiglu(gate_proj(m), up_proj(m))), m = rmsnorm(a)
    const postNorm = this.norm(layer, 'post_attention_layernorm', a);
    const gate = lin('gate_proj', postNorm.y);
    const up = lin('up_proj', postNorm.y);
    const act = swigluForwardNodes(g, gate, up);
    const y = withOutput ? g.op('Add', [a, lin('down_proj', act)], {}, `l${layer}_y`) : undefined;
    const tape: BlockTape = {
      in: x,
      inputNorm,
      q,
      k,
      v,
      probs: attn.probs,
      ctx: attn.y,
      a,
      postNorm,
      gate,
      up,
      act,
      xa,
    };
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

  /** A tape from saved tensors: the RMSNorms are recomputed with the forward's own nodes. */
  tapeFromSaved(layer: number, saved: Pick<BlockTape, SavedKey>): BlockTape {
    return {
      ...saved,
      inputNorm: this.norm(layer, 'input_layernorm', saved.in),
      postNorm: this.norm(layer, 'post_attention_layernorm', saved.a),
      xa: {},
    };
  }

  private linearBackward(
    layer: number,
    target: LlamaLoraTarget,
    x: () => string,
    dy: string,
    xa: string | undefined,
  ): string {
    const p = this.linear(layer, target, false);
    const r = llamaLinearBackwardNodes(this.g, p.lora ? x() : undefined, dy, p, xa);
    if (r.dA && r.dB) {
      const path = llamaLoraModulePath(layer, target);
      this.grads.set(loraGradOutputName(path, 'A'), r.dA);
      this.grads.set(loraGradOutputName(path, 'B'), r.dB);
    }
    return r.dx;
  }

  blockBackward(layer: number, t: BlockTape, dy: string): string {
    const { g } = this;
    const L = this.layout;
    const w = (n: string) => this.weight(`layers.${layer}.${n}.weight`);
    // MLP branch
    const act = () => t.act ?? swigluForwardNodes(g, t.gate, t.up);
    const dAct = this.linearBackward(layer, 'down_proj', act, dy, t.xa.down_proj);
    const { dgate, dup } = swigluBackwardNodes(g, t.gate, t.up, dAct);
    const m = () => t.postNorm.y;
    const dm = g.op('Add', [
      this.linearBackward(layer, 'gate_proj', m, dgate, t.xa.gate_proj),
      this.linearBackward(layer, 'up_proj', m, dup, t.xa.up_proj),
    ]);
    const dPost = rmsNormBackwardNodes(g, t.a, t.postNorm.rstd, w('post_attention_layernorm'), dm);
    const da = g.op('Add', [dy, dPost], {}, `l${layer}_da`);
    // attention branch
    const ctx = () => {
      if (!t.ctx) throw new Error(`internal: attention output of block ${layer} was not kept`);
      return t.ctx;
    };
    const dCtx = this.linearBackward(layer, 'o_proj', ctx, da, t.xa.o_proj);
    const d = gqaAttentionBackwardNodes(g, t.q, t.k, t.v, t.probs, dCtx, L);
    const dq = ropeBackwardNodes(g, d.dq, this.rope, L.qHeadsShape, this.qWidth);
    const dk = ropeBackwardNodes(g, d.dk, this.rope, L.kvHeadsShape, this.kvWidth);
    const n = () => t.inputNorm.y;
    const dnQ = this.linearBackward(layer, 'q_proj', n, dq, t.xa.q_proj);
    const dnK = this.linearBackward(layer, 'k_proj', n, dk, t.xa.k_proj);
    const dnV = this.linearBackward(layer, 'v_proj', n, d.dv, t.xa.v_proj);
    const dn = g.op('Add', [dnQ, g.op('Add', [dnK, dnV])]);
    const dInput = rmsNormBackwardNodes(g, t.in, t.inputNorm.rstd, w('input_layernorm'), dn);
    return g.op('Add', [da, dInput], {}, `l${layer}_dx`);
  }

  /** What a block's forward saves for its backward; the first block's input is the graph input x. */
  savedSpecs(first: boolean): SavedSpec[] {
    const c = this.config;
    const specs: SavedSpec[] = [];
    if (!first) specs.push({ key: 'in', suffix: 'in', width: c.hiddenSize });
    specs.push(
      { key: 'q', suffix: 'attn.q', width: this.qWidth },
      { key: 'k', suffix: 'attn.k', width: this.kvWidth },
      { key: 'v', suffix: 'attn.v', width: this.kvWidth },
      { key: 'probs', suffix: 'attn.probs', width: 'probs' },
    );
    if (this.adapted('o_proj')) specs.push({ key: 'ctx', suffix: 'attn.out', width: this.qWidth });
    specs.push(
      { key: 'a', suffix: 'a', width: c.hiddenSize },
      { key: 'gate', suffix: 'mlp.gate', width: c.intermediateSize },
      { key: 'up', suffix: 'mlp.up', width: c.intermediateSize },
    );
    return specs;
  }

  savedDims(spec: SavedSpec, [batch, seq]: readonly [string, string] = [BATCH_DIM, SEQ_DIM]): Dims {
    return spec.width === 'probs' ? [batch, this.config.nHead, seq, seq] : [batch, seq, spec.width];
  }

  finish(): SegmentGraph {
    return { model: this.g.toModel(), inputs: this.inputs, outputs: this.outputs, weightInputs: this.weightInputs };
  }
}

/** A weight of the model, checked to exist with the shape the config gives it. */
function checkedWeight(model: LlamaModel, shapes: Map<string, number[]>, name: string) {
  const want = shapes.get(name);
  if (!want) throw new Error(`internal: "${name}" is not a parameter of this LLaMA config`);
  const t = model.weights.get(name);
  if (!t) throw new LlamaGraphError('LLAMA_GRAPH_WEIGHT', `LLaMA graph: missing tensor "${name}" [${want}]`);
  const n = want.reduce((a, b) => a * b, 1);
  if (t.shape.length !== want.length || t.shape.some((d, i) => d !== want[i]) || t.data.length !== n) {
    throw new LlamaGraphError(
      'LLAMA_GRAPH_WEIGHT',
      `LLaMA graph: tensor "${name}" is [${t.shape}] with ${t.data.length} values, the config needs [${want}]`,
    );
  }
  return t;
}

function checkRange(model: LlamaModel, from: number, to: number, what: string, allowEmpty: boolean): void {
  const L = model.config.nLayer;
  if (!Number.isInteger(from) || !Number.isInteger(to) || from < 0 || to > L || from > to)
    throw new LlamaGraphError('LLAMA_GRAPH_RANGE', `${what}: block range [${from}, ${to}) is invalid for ${L} layers`);
  if (!allowEmpty && from === to)
    throw new LlamaGraphError('LLAMA_GRAPH_RANGE', `${what}: the block range [${from}, ${to}) is empty`);
}

const savedName = (layer: number, suffix: string) => `${SAVED_PREFIX}layers.${layer}.${suffix}`;

/** The forward half: input 'x' (declared by the caller with the LoRA inputs), outputs 'y' and the saved tensors. */
function blocksForwardPart(s: LlamaSegment, from: number, to: number, saveIntermediates: boolean): void {
  const D = s.config.hiddenSize;
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
 * The backward half, from input `x` (declared by the caller), 'dy' and the saved tensors as inputs
 * named `savedPrefix` + their forward output name; outputs 'dx' and the LoRA gradients.
 */
function blocksBackwardPart(
  s: LlamaSegment,
  from: number,
  to: number,
  saveIntermediates: boolean,
  x: string,
  savedPrefix: string,
  dims: readonly [string, string],
): void {
  const D = s.config.hiddenSize;
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
 * Forward of blocks [from, to). Inputs: 'x' [batch, seq, D] float32, then for every LoRA pair in
 * blocks [from, to) and lora.targets `${modulePath}.lora_A` [in, r] and `.lora_B` [r, out].
 * Outputs: 'y' [batch, seq, D], then (when saveIntermediates) the `saved.*` tensors.
 */
export function llamaBlocksForwardGraph(
  model: LlamaModel,
  lora: LlamaLoraConfig,
  from: number,
  to: number,
  opts: LlamaBlocksGraphOptions,
): SegmentGraph {
  checkRange(model, from, to, 'LLaMA blocks forward graph', false);
  const s = new LlamaSegment(model, lora, `llama_blocks_${from}_${to}_forward`, opts);
  s.input('x', 'float32', [BATCH_DIM, SEQ_DIM, model.config.hiddenSize]);
  s.loraInputs(from, to);
  blocksForwardPart(s, from, to, opts.saveIntermediates);
  return s.finish();
}

/**
 * Backward of blocks [from, to). Inputs: 'x', the LoRA inputs as above, 'dy' [batch, seq, D], then
 * (when saveIntermediates) the `saved.*` tensors the forward output, same names. Outputs: 'dx',
 * then `grad.${modulePath}.lora_A` and `.lora_B` for each pair.
 */
export function llamaBlocksBackwardGraph(
  model: LlamaModel,
  lora: LlamaLoraConfig,
  from: number,
  to: number,
  opts: LlamaBlocksGraphOptions,
): SegmentGraph {
  checkRange(model, from, to, 'LLaMA blocks backward graph', false);
  const s = new LlamaSegment(model, lora, `llama_blocks_${from}_${to}_backward`, opts);
  s.input('x', 'float32', [BATCH_DIM, SEQ_DIM, model.config.hiddenSize]);
  s.loraInputs(from, to);
  blocksBackwardPart(s, from, to, opts.saveIntermediates, 'x', '', [BATCH_DIM, SEQ_DIM]);
  return s.finish();
}

/**
 * Forward and backward of blocks [from, to) in one graph, as buildBlocksStepGraph: inputs 'x'
 * and the LoRA inputs, then 'backward.x', 'dy' [backward_batch, backward_seq, D] and (when
 * saveIntermediates) 'backward.saved.*'; outputs 'y', 'saved.*', then 'dx', 'grad.*'. The caller
 * feeds the half it does not want a batch of 0 rows.
 */
export function llamaBlocksStepGraph(
  model: LlamaModel,
  lora: LlamaLoraConfig,
  from: number,
  to: number,
  opts: LlamaBlocksGraphOptions,
): SegmentGraph {
  checkRange(model, from, to, 'LLaMA blocks step graph', false);
  const s = new LlamaSegment(model, lora, `llama_blocks_${from}_${to}_step`, opts);
  const D = model.config.hiddenSize;
  s.input('x', 'float32', [BATCH_DIM, SEQ_DIM, D]);
  s.loraInputs(from, to);
  blocksForwardPart(s, from, to, opts.saveIntermediates);
  const dims = [BACKWARD_BATCH_DIM, BACKWARD_SEQ_DIM] as const;
  const bx = s.input(`${BACKWARD_PREFIX}x`, 'float32', [dims[0], dims[1], D]);
  blocksBackwardPart(s, from, to, opts.saveIntermediates, bx, BACKWARD_PREFIX, dims);
  return s.finish();
}

// ---------------------------------------------------------------------------------------------
// tail (cloud)

function tail(
  model: LlamaModel,
  lora: LlamaLoraConfig,
  from: number,
  withBackward: boolean,
  opts: LlamaGraphOptions,
): SegmentGraph {
  const c = model.config;
  const L = c.nLayer;
  checkRange(model, from, L, withBackward ? 'LLaMA tail graph' : 'LLaMA tail loss graph', true);
  const s = new LlamaSegment(model, lora, withBackward ? `llama_tail_${from}` : `llama_tail_${from}_loss`, opts);
  const { g } = s;
  const D = c.hiddenSize;
  const x = s.input('x', 'float32', [BATCH_DIM, SEQ_DIM, D]);
  const targets = s.input('targets', 'int32', [BATCH_DIM, SEQ_DIM]);
  s.loraInputs(from, L);
  const blocks = s.blocksForward(s.rows(x, D), from, L, true);
  const h = blocks.y as string;
  // head: final RMSNorm, LM head (logits = normed W_head^T), mean cross-entropy
  const normWeight = s.weight('norm.weight');
  const norm = rmsNormForwardNodes(g, h, normWeight, c.rmsNormEps);
  const head = s.weight(llamaHeadWeightName(c));
  const logits = g.op('Gemm', [norm.y, head], { transB: 1 }, 'logits');
  const ce = crossEntropyForwardNodes(g, logits, targets);
  s.output('loss', ce.loss, 'float32', []);
  s.output('count', ce.count, 'float32', []);
  if (!withBackward) return s.finish();

  const dNormed = g.op('MatMul', [crossEntropyBackwardNodes(g, logits, ce, c.vocabSize), head]);
  let d = rmsNormBackwardNodes(g, h, norm.rstd, normWeight, dNormed);
  for (let layer = L - 1; layer >= from; layer--) d = s.blockBackward(layer, blocks.tapes[layer - from], d);
  s.output('dx', s.unrows(d, D), 'float32', [BATCH_DIM, SEQ_DIM, D]);
  s.gradOutputs(from, L);
  return s.finish();
}

/**
 * The cloud tail, forward and backward in one graph: blocks [from, L), the final RMSNorm, the LM
 * head, mean cross-entropy. Inputs: 'x' [batch, seq, D], 'targets' int32 [batch, seq] (-100 =
 * ignored), the LoRA inputs of blocks [from, L). Outputs: 'loss' (float32 []), 'count' (float32
 * []: counted targets), 'dx' [batch, seq, D], then the grad.* LoRA outputs. from may equal L.
 */
export function llamaTailGraph(
  model: LlamaModel,
  lora: LlamaLoraConfig,
  from: number,
  opts: LlamaGraphOptions = {},
): SegmentGraph {
  return tail(model, lora, from, true, opts);
}

/** Loss only (evaluation): the tail's inputs, outputs 'loss' and 'count'. */
export function llamaTailLossGraph(
  model: LlamaModel,
  lora: LlamaLoraConfig,
  from: number,
  opts: LlamaGraphOptions = {},
): SegmentGraph {
  return tail(model, lora, from, false, opts);
}

/**
 * Generation: blocks [from, L), then the final RMSNorm and the LM head at the LAST position only
 * (causal attention makes every other position irrelevant to the next token). Inputs: 'x' [batch,
 * seq, D], the LoRA inputs of blocks [from, L). Output: 'logits' [batch, V]. from may equal L.
 */
export function llamaTailLogitsGraph(
  model: LlamaModel,
  lora: LlamaLoraConfig,
  from: number,
  opts: LlamaGraphOptions = {},
): SegmentGraph {
  const c = model.config;
  const L = c.nLayer;
  checkRange(model, from, L, 'LLaMA tail logits graph', true);
  const s = new LlamaSegment(model, lora, `llama_tail_${from}_logits`, opts);
  const { g } = s;
  const D = c.hiddenSize;
  const x = s.input('x', 'float32', [BATCH_DIM, SEQ_DIM, D]);
  s.loraInputs(from, L);
  const h = s.blocksForward(s.rows(x, D), from, L, true).y as string;
  const last = g.op('Gather', [s.unrows(h, D), g.int32Scalar(-1)], { axis: 1 }, 'last'); // [batch, D]
  const norm = rmsNormForwardNodes(g, last, s.weight('norm.weight'), c.rmsNormEps);
  const logits = g.op('Gemm', [norm.y, s.weight(llamaHeadWeightName(c))], { transB: 1 }, 'logits');
  s.output('logits', logits, 'float32', [BATCH_DIM, c.vocabSize]);
  return s.finish();
}

// ---------------------------------------------------------------------------------------------
// head (tab, labels on the device), as head-graphs.ts

interface Head {
  g: GraphBuilder;
  inputs: GraphIO[];
  outputs: GraphIO[];
  /** [rows, D] */
  h: string;
  norm: RmsNormForward;
  normWeight: string;
  head: string;
  /** [rows, V] */
  logits: string;
}

/** The common part: input 'h', the frozen weights as initializers, the final RMSNorm and the LM head. */
function headForward(model: LlamaModel, name: string): Head {
  const c = model.config;
  const shapes = new Map(llamaParameterShapes(c));
  const g = new GraphBuilder(name);
  const weight = (n: string) => {
    const t = checkedWeight(model, shapes, n);
    return g.initializer(n, 'float32', t.shape, t.data);
  };
  const inputs: GraphIO[] = [{ name: 'h', dtype: 'float32', dims: [HEAD_ROWS_DIM, c.hiddenSize] }];
  const h = g.input('h', 'float32', inputs[0].dims);
  const normWeight = weight('norm.weight');
  const norm = rmsNormForwardNodes(g, h, normWeight, c.rmsNormEps);
  const head = weight(llamaHeadWeightName(c));
  const logits = g.op('Gemm', [norm.y, head], { transB: 1 }, 'logits');
  return { g, inputs, outputs: [], h, norm, normWeight, head, logits };
}

function headOutput(head: Head, name: string, value: string, dims: GraphIO['dims']): void {
  head.outputs.push({ name, dtype: 'float32', dims: [...dims] });
  head.g.output(name, value, 'float32', dims);
}

/**
 * One chunk of the head step (buildHeadStepGraph's contract, run chunk by chunk with
 * headChunkRows). Inputs: 'h' float32 [rows, D], 'targets' int32 [rows] (-100: not counted),
 * 'count' float32 [] (the counted targets of the WHOLE batch). Outputs: 'row_loss' float32 [rows]
 * (0 where ignored; the caller sums them in float64 and divides by the count) and 'dh' [rows, D],
 * the chunk's part of d(mean loss)/dh (the gradient is divided by max(count, 1)).
 */
export function llamaHeadStepGraph(model: LlamaModel): SegmentGraph {
  const head = headForward(model, 'llama_head_step');
  const { g, logits } = head;
  head.inputs.push(
    { name: 'targets', dtype: 'int32', dims: [HEAD_ROWS_DIM] },
    { name: 'count', dtype: 'float32', dims: [] },
  );
  const targets = g.input('targets', 'int32', [HEAD_ROWS_DIM]);
  const count = g.input('count', 'float32', []);
  // forward: lse - logits[target] per row, left unsummed
  const axis = g.int64s([-1]);
  const target = g.op('Reshape', [targets, g.int64s([-1, 1])]); // [rows, 1]
  const valid = g.op('Not', [g.op('Equal', [target, g.int32Scalar(IGNORE_INDEX)])], {}, 'ce_valid');
  const safeTarget = g.op('Where', [valid, target, g.int32Scalar(0)]);
  const max = g.op('ReduceMax', [logits, axis], { keepdims: 1 });
  const sumExp = g.op('ReduceSum', [g.op('Exp', [g.op('Sub', [logits, max])]), axis], { keepdims: 1 });
  const lse = g.op('Add', [g.op('Log', [sumExp]), max], {}, 'ce_lse');
  const picked = g.op('GatherElements', [logits, safeTarget], { axis: 1 });
  const rowLoss = g.op('Where', [valid, g.op('Sub', [lse, picked]), g.scalar(0)]);
  headOutput(head, 'row_loss', g.op('Reshape', [rowLoss, g.int64s([-1])]), [HEAD_ROWS_DIM]);
  // backward: the shared cross-entropy backward, divided by the batch's count rather than the chunk's
  const ce: CrossEntropyForward = {
    loss: rowLoss,
    count,
    valid,
    target: safeTarget,
    denom: g.op('Max', [count, g.scalar(1)]),
  };
  const dNormed = g.op('MatMul', [crossEntropyBackwardNodes(g, logits, ce, model.config.vocabSize), head.head]);
  const dh = rmsNormBackwardNodes(g, head.h, head.norm.rstd, head.normWeight, dNormed);
  headOutput(head, 'dh', dh, [HEAD_ROWS_DIM, model.config.hiddenSize]);
  return { model: g.toModel(), inputs: head.inputs, outputs: head.outputs };
}

/** Logits of some rows (generation with labels on the device). Input 'h' [rows, D]; output 'logits' [rows, V]. */
export function llamaHeadLogitsGraph(model: LlamaModel): SegmentGraph {
  const head = headForward(model, 'llama_head_logits');
  headOutput(head, 'logits', head.logits, [HEAD_ROWS_DIM, model.config.vocabSize]);
  return { model: head.g.toModel(), inputs: head.inputs, outputs: head.outputs };
}
