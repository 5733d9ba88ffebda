/**
 * The edge's and the cloud's segments on a SegmentRunner: graph building, loading, and the
 * mapping between the graphs' named inputs/outputs and the reference's LoraAdapter/LoraGrads.
 *
 *   BlocksSegment  blocks [from, to): forward -> y (+ saved intermediates), backward -> dx, LoRA grads
 *   TailSegment    blocks [from, L) + final norm + head + cross-entropy: loss, count, dx, LoRA grads;
 *                  and, from graphs loaded on first use, the loss alone (evaluation) and the next-token
 *                  logits at the last position (generation)
 *
 * keep vs recompute (`saveIntermediates`): keeping makes the backward cheaper but holds every
 * block's intermediates between forward and backward; recomputing holds only the segment input.
 *
 * Either model family (GPT-2, LLaMA): the graphs come from @splitllm/onnx's family-graphs.ts, which
 * gives both families' graphs the same inputs and outputs.
 *
 * The runner's settings choose the graphs (runner.ts): with `blocksGraphs: 'one'` a BlocksSegment
 * is one step graph whose unwanted half is fed 0 rows; with `weights: 'shared'` the graphs take
 * the frozen weights as inputs, from one set the segment adds to the runner (dropped by close()).
 */
import {
  type AnyModel,
  getWeight,
  IGNORE_INDEX,
  type ModelConfig,
  modelDims,
  type LoraAdapter,
  type LoraConfig,
  type LoraGrads,
} from '@splitllm/model';
import {
  loraGradsFromGraph,
  loraGraphFeeds,
  BACKWARD_BATCH_DIM,
  BACKWARD_PREFIX,
  BATCH_DIM,
  blocksBackwardGraph,
  blocksForwardGraph,
  blocksStepGraph,
  GRAD_PREFIX,
  type GraphIO,
  SAVED_PREFIX,
  tailGraph,
  tailLogitsGraph,
  tailLossGraph,
  type SegmentGraph,
} from '@splitllm/onnx';
import { RunnerError, type RunnerTensor, type SegmentRunner, type WeightSet } from './runner';

let graphSerial = 0;

/**
 * Feeds for every LoRA pair of blocks [from, to) (shapes checked); copies, because the arrays stay the caller's
 * (its optimizer updates them in place).
 */
function loraFeeds(
  config: ModelConfig,
  lora: LoraConfig,
  adapter: LoraAdapter,
  from: number,
  to: number,
): Record<string, RunnerTensor> {
  const feeds: Record<string, RunnerTensor> = {};
  for (const [name, t] of loraGraphFeeds(config, lora, adapter, from, to))
    feeds[name] = { data: t.data.slice(), dims: t.dims };
  return feeds;
}

function loraGradsOf(
  out: Record<string, RunnerTensor>,
  config: ModelConfig,
  lora: LoraConfig,
  from: number,
  to: number,
): LoraGrads {
  return loraGradsFromGraph(config, lora, from, to, (name) => {
    const t = out[name];
    if (!t) throw new Error(`graph output lacks ${name}`);
    return t.data as Float32Array;
  });
}

/**
 * x [B, T, D] of the model's width, for a sequence the model takes: a LLaMA graph's rotary table
 * has max_position_embeddings rows, and GPT-2's positions end at n_positions, so a longer one is
 * refused here by name rather than by onnxruntime's broadcast error.
 */
function activation(data: Float32Array, B: number, T: number, config: ModelConfig): RunnerTensor {
  const { width: D, positions } = modelDims(config);
  if (T > positions)
    throw new RunnerError('ONNX_BAD_SHAPE', `a sequence of ${T} positions is past the model's ${positions}`);
  if (data.length !== B * T * D)
    throw new RunnerError('ONNX_BAD_SHAPE', `activation has ${data.length} values, expected B*T*D = ${B}*${T}*${D}`);
  return { data, dims: [B, T, D] };
}

async function load(runner: SegmentRunner, kind: string, g: SegmentGraph, weights?: WeightSet): Promise<string> {
  const name = `${kind}#${++graphSerial}`;
  await runner.load(name, g.model, { weights });
  return name;
}

/** How the runner wants the segment graphs' frozen weights stored. */
function weightsOption(runner: SegmentRunner): 'initializers' | 'inputs' {
  return runner.weights === 'shared' ? 'inputs' : 'initializers';
}

/** The weights `graphs` take as inputs, added to the runner once, as one set for all of them. */
async function shareWeights(runner: SegmentRunner, model: AnyModel, graphs: SegmentGraph[]): Promise<WeightSet> {
  const names = new Set(graphs.flatMap((g) => (g.weightInputs ?? []).map((w) => w.name)));
  const tensors = function* () {
    for (const name of names) {
      const t = getWeight(model.weights, name);
      yield [name, { data: t.data, dims: t.shape }] as const;
    }
  };
  return runner.addWeights(tensors());
}

export interface BlocksForwardResult {
  y: Float32Array;
  /** the graph's `saved.*` outputs (empty when recomputing) */
  saved: Record<string, RunnerTensor>;
}

/** The graphs of a BlocksSegment: a forward and a backward graph, or one step graph that is both. */
type BlocksGraphs =
  | { kind: 'two'; forward: string; backward: string }
  | {
      kind: 'one';
      step: string;
      /** the backward half's inputs, fed with 0 rows by a forward: name, dims with the batch and seq still symbolic */
      backwardInputs: GraphIO[];
      forwardOutputs: string[];
      backwardOutputs: string[];
    };

/** A tensor of no rows: dims with the batch set to 0 and the sequence length to T. */
function emptyFeed(io: GraphIO, T: number): RunnerTensor {
  const dims = io.dims.map((d) => (d === BACKWARD_BATCH_DIM || d === BATCH_DIM ? 0 : typeof d === 'string' ? T : d));
  return { data: new Float32Array(0), dims };
}

export class BlocksSegment {
  private constructor(
    private readonly runner: SegmentRunner,
    readonly config: ModelConfig,
    readonly lora: LoraConfig,
    readonly from: number,
    readonly to: number,
    readonly saveIntermediates: boolean,
    private readonly graphs: BlocksGraphs,
    private readonly weightSet: WeightSet | undefined,
  ) {}

  static async create(
    runner: SegmentRunner,
    model: AnyModel,
    lora: LoraConfig,
    from: number,
    to: number,
    opts: { saveIntermediates: boolean },
  ): Promise<BlocksSegment> {
    const graphOpts = { ...opts, weights: weightsOption(runner) };
    const make = (graphs: BlocksGraphs, set?: WeightSet) =>
      new BlocksSegment(runner, model.config, lora, from, to, opts.saveIntermediates, graphs, set);
    const kind = `blocks[${from},${to})`;
    if (runner.blocksGraphs === 'one') {
      const g = blocksStepGraph(model, lora, from, to, graphOpts);
      const set = graphOpts.weights === 'inputs' ? await shareWeights(runner, model, [g]) : undefined;
      const step = await load(runner, `${kind}.step`, g, set);
      const backwardInputs = g.inputs.filter((i) => i.name === 'dy' || i.name.startsWith(BACKWARD_PREFIX));
      const isBackward = (name: string) => name === 'dx' || name.startsWith(GRAD_PREFIX);
      const outputs = g.outputs.map((o) => o.name);
      return make(
        {
          kind: 'one',
          step,
          backwardInputs,
          forwardOutputs: outputs.filter((n) => !isBackward(n)),
          backwardOutputs: outputs.filter(isBackward),
        },
        set,
      );
    }
    if (graphOpts.weights === 'inputs') {
      // graphs without weight bytes: both built first, the weights they take shared once
      const f = blocksForwardGraph(model, lora, from, to, graphOpts);
      const b = blocksBackwardGraph(model, lora, from, to, graphOpts);
      const set = await shareWeights(runner, model, [f, b]);
      const forward = await load(runner, `${kind}.forward`, f, set);
      const backward = await load(runner, `${kind}.backward`, b, set);
      return make({ kind: 'two', forward, backward }, set);
    }
    // built and loaded one after the other: each graph carries a copy of the segment's weights
    const forward = await load(runner, `${kind}.forward`, blocksForwardGraph(model, lora, from, to, graphOpts));
    const backward = await load(runner, `${kind}.backward`, blocksBackwardGraph(model, lora, from, to, graphOpts));
    return make({ kind: 'two', forward, backward });
  }

  /** x is kept (copied to the worker) because the backward needs it again. */
  async forward(adapter: LoraAdapter, x: Float32Array, B: number, T: number): Promise<BlocksForwardResult> {
    const feeds = {
      x: activation(x, B, T, this.config),
      ...loraFeeds(this.config, this.lora, adapter, this.from, this.to),
    };
    const gr = this.graphs;
    const out =
      gr.kind === 'two'
        ? await this.runner.run(gr.forward, feeds, { keep: ['x'] })
        : await this.runner.run(
            gr.step,
            { ...feeds, ...Object.fromEntries(gr.backwardInputs.map((i) => [i.name, emptyFeed(i, T)])) },
            { keep: ['x'], fetch: gr.forwardOutputs },
          );
    const saved: Record<string, RunnerTensor> = {};
    for (const [k, v] of Object.entries(out)) if (k.startsWith(SAVED_PREFIX)) saved[k] = v;
    return { y: out.y.data as Float32Array, saved };
  }

  /** Consumes x, dy and saved (their buffers are transferred). */
  async backward(
    adapter: LoraAdapter,
    x: Float32Array,
    saved: Record<string, RunnerTensor>,
    dy: Float32Array,
    B: number,
    T: number,
  ): Promise<{ dx: Float32Array; loraGrads: LoraGrads }> {
    const D = modelDims(this.config).width;
    const lora = loraFeeds(this.config, this.lora, adapter, this.from, this.to);
    const gr = this.graphs;
    const out =
      gr.kind === 'two'
        ? await this.runner.run(gr.backward, {
            x: activation(x, B, T, this.config),
            dy: activation(dy, B, T, this.config),
            ...saved,
            ...lora,
          })
        : await this.runner.run(
            gr.step,
            {
              x: { data: new Float32Array(0), dims: [0, T, D] },
              [`${BACKWARD_PREFIX}x`]: activation(x, B, T, this.config),
              dy: activation(dy, B, T, this.config),
              ...Object.fromEntries(Object.entries(saved).map(([k, v]) => [BACKWARD_PREFIX + k, v])),
              ...lora,
            },
            { fetch: gr.backwardOutputs },
          );
    return { dx: out.dx.data as Float32Array, loraGrads: loraGradsOf(out, this.config, this.lora, this.from, this.to) };
  }

  async close(): Promise<void> {
    const gr = this.graphs;
    for (const g of gr.kind === 'two' ? [gr.forward, gr.backward] : [gr.step]) await this.runner.unload(g);
    if (this.weightSet) await this.runner.dropWeights(this.weightSet);
  }
}

/** A graph built and loaded by its first use; a failed load is retried by the next use rather than remembered. */
class LazyGraph {
  private loaded?: Promise<string>;

  constructor(
    private readonly runner: SegmentRunner,
    private readonly kind: string,
    private readonly build: () => SegmentGraph,
    private readonly weights: WeightSet | undefined,
  ) {}

  get(): Promise<string> {
    if (!this.loaded) {
      const loading = load(this.runner, this.kind, this.build(), this.weights);
      this.loaded = loading;
      loading.catch(() => {
        if (this.loaded === loading) this.loaded = undefined;
      });
    }
    return this.loaded;
  }

  async unload(): Promise<void> {
    const name = await this.loaded?.catch(() => undefined);
    this.loaded = undefined;
    if (name) await this.runner.unload(name);
  }
}

export class TailSegment {
  private closed = false;

  private constructor(
    private readonly runner: SegmentRunner,
    readonly config: ModelConfig,
    readonly lora: LoraConfig,
    readonly from: number,
    private readonly stepGraph: string,
    /**
     * the evaluation and the generation graphs, loaded by the first loss() and logits() call:
     * training never pays for them (with per-session weights, each is one more copy of the tail's)
     */
    private readonly lossGraph: LazyGraph,
    private readonly logitsGraph: LazyGraph,
    private readonly weightSet: WeightSet | undefined,
  ) {}

  static async create(runner: SegmentRunner, model: AnyModel, lora: LoraConfig, from: number): Promise<TailSegment> {
    const L = model.config.nLayer;
    const kind = `tail[${from},${L})`;
    const weights = weightsOption(runner);
    if (weights === 'inputs') {
      // without weight bytes the other graphs are small: built now, so that the segment keeps no
      // reference to the caller's weights (the worker holds the only copy it needs)
      const s = tailGraph(model, lora, from, { weights });
      const l = tailLossGraph(model, lora, from, { weights });
      const g = tailLogitsGraph(model, lora, from, { weights });
      const set = await shareWeights(runner, model, [s, l, g]);
      const step = await load(runner, `${kind}.step`, s, set);
      const loss = new LazyGraph(runner, `${kind}.loss`, () => l, set);
      const logits = new LazyGraph(runner, `${kind}.logits`, () => g, set);
      return new TailSegment(runner, model.config, lora, from, step, loss, logits, set);
    }
    const step = await load(runner, `${kind}.step`, tailGraph(model, lora, from));
    const loss = new LazyGraph(runner, `${kind}.loss`, () => tailLossGraph(model, lora, from), undefined);
    const logits = new LazyGraph(runner, `${kind}.logits`, () => tailLogitsGraph(model, lora, from), undefined);
    return new TailSegment(runner, model.config, lora, from, step, loss, logits, undefined);
  }

  private feeds(
    adapter: LoraAdapter,
    x: Float32Array,
    targets: Int32Array,
    B: number,
    T: number,
  ): Record<string, RunnerTensor> {
    if (targets.length !== B * T) throw new Error(`targets have ${targets.length} entries, expected B*T = ${B * T}`);
    // the graph's GatherElements would wrap a negative target and fail on one >= V: refuse here
    const V = this.config.vocabSize;
    for (let i = 0; i < targets.length; i++) {
      const t = targets[i];
      if (t !== IGNORE_INDEX && !(t >= 0 && t < V))
        throw new Error(`target ${t} at position ${i} is outside the vocabulary [0, ${V}) and is not ${IGNORE_INDEX}`);
    }
    return {
      x: activation(x, B, T, this.config),
      targets: { data: targets, dims: [B, T] },
      ...loraFeeds(this.config, this.lora, adapter, this.from, this.config.nLayer),
    };
  }

  /** Forward and backward: mean loss over counted targets, its gradient w.r.t. x, LoRA grads. */
  async step(adapter: LoraAdapter, x: Float32Array, targets: Int32Array, B: number, T: number) {
    const out = await this.runner.run(this.stepGraph, this.feeds(adapter, x, targets, B, T), { keep: ['targets'] });
    return {
      loss: (out.loss.data as Float32Array)[0],
      count: (out.count.data as Float32Array)[0],
      dx: out.dx.data as Float32Array,
      loraGrads: loraGradsOf(out, this.config, this.lora, this.from, this.config.nLayer),
    };
  }

  async loss(
    adapter: LoraAdapter,
    x: Float32Array,
    targets: Int32Array,
    B: number,
    T: number,
  ): Promise<{ loss: number; count: number }> {
    if (this.closed) throw new Error('tail segment: loss() after close()');
    const feeds = this.feeds(adapter, x, targets, B, T);
    const out = await this.runner.run(await this.lossGraph.get(), feeds, { keep: ['targets'] });
    return { loss: (out.loss.data as Float32Array)[0], count: (out.count.data as Float32Array)[0] };
  }

  /**
   * Generation: blocks [from, L), ln_f and the tied head on x [B, T, D]; returns the next-token
   * logits at the last position of each row, [B, V]. The graph is loaded on the first call.
   */
  async logits(adapter: LoraAdapter, x: Float32Array, B: number, T: number): Promise<Float32Array> {
    if (this.closed) throw new Error('tail segment: logits() after close()');
    const feeds = {
      x: activation(x, B, T, this.config),
      ...loraFeeds(this.config, this.lora, adapter, this.from, this.config.nLayer),
    };
    const out = await this.runner.run(await this.logitsGraph.get(), feeds, { keep: ['x'] });
    return out.logits.data as Float32Array;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.runner.unload(this.stepGraph);
    await this.lossGraph.unload();
    await this.logitsGraph.unload();
    if (this.weightSet) await this.runner.dropWeights(this.weightSet);
  }
}
