/**
 * The edge's and the cloud's segments on a SegmentRunner: graph building, loading, and the
 * mapping between the graphs' named inputs/outputs and the reference's LoraAdapter/LoraGrads.
 *
 *   BlocksSegment  blocks [from, to): forward -> y (+ saved intermediates), backward -> dx, LoRA grads
 *   TailSegment    blocks [from, L) + ln_f + tied head + cross-entropy: loss, count, dx, LoRA grads;
 *                  and (generation) the next-token logits at the last position, from a graph loaded on first use
 *
 * keep vs recompute (`saveIntermediates`): keeping makes the backward cheaper but holds every
 * block's intermediates between forward and backward; recomputing holds only the segment input.
 */
import {
  IGNORE_INDEX,
  type Gpt2Config,
  type Gpt2Model,
  type LoraAdapter,
  type LoraConfig,
  type LoraGrads,
} from '@splitllm/model';
import {
  loraGradsFromGraph,
  loraGraphFeeds,
  buildBlocksBackwardGraph,
  buildBlocksForwardGraph,
  buildTailGraph,
  buildTailLogitsGraph,
  buildTailLossGraph,
  type SegmentGraph,
} from '@splitllm/onnx';
import type { RunnerTensor, SegmentRunner } from './runner';

let graphSerial = 0;

/**
 * Feeds for every LoRA pair of blocks [from, to) (shapes checked); copies, because the arrays stay the caller's
 * (its optimizer updates them in place).
 */
function loraFeeds(
  config: Gpt2Config,
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
  config: Gpt2Config,
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

function activation(data: Float32Array, B: number, T: number, D: number): RunnerTensor {
  if (data.length !== B * T * D)
    throw new Error(`activation has ${data.length} values, expected B*T*D = ${B}*${T}*${D}`);
  return { data, dims: [B, T, D] };
}

async function load(runner: SegmentRunner, kind: string, g: SegmentGraph): Promise<string> {
  const name = `${kind}#${++graphSerial}`;
  await runner.load(name, g.model);
  return name;
}

export interface BlocksForwardResult {
  y: Float32Array;
  /** the graph's `saved.*` outputs (empty when recomputing) */
  saved: Record<string, RunnerTensor>;
}

export class BlocksSegment {
  private constructor(
    private readonly runner: SegmentRunner,
    readonly config: Gpt2Config,
    readonly lora: LoraConfig,
    readonly from: number,
    readonly to: number,
    readonly saveIntermediates: boolean,
    private readonly forwardGraph: string,
    private readonly backwardGraph: string,
  ) {}

  static async create(
    runner: SegmentRunner,
    model: Gpt2Model,
    lora: LoraConfig,
    from: number,
    to: number,
    opts: { saveIntermediates: boolean },
  ): Promise<BlocksSegment> {
    // built and loaded one after the other: each graph carries a copy of the segment's weights
    const fwd = await load(
      runner,
      `blocks[${from},${to}).forward`,
      buildBlocksForwardGraph(model, lora, from, to, opts),
    );
    const bwd = await load(
      runner,
      `blocks[${from},${to}).backward`,
      buildBlocksBackwardGraph(model, lora, from, to, opts),
    );
    return new BlocksSegment(runner, model.config, lora, from, to, opts.saveIntermediates, fwd, bwd);
  }

  /** x is kept (copied to the worker) because the backward needs it again. */
  async forward(adapter: LoraAdapter, x: Float32Array, B: number, T: number): Promise<BlocksForwardResult> {
    const out = await this.runner.run(
      this.forwardGraph,
      { x: activation(x, B, T, this.config.nEmbd), ...loraFeeds(this.config, this.lora, adapter, this.from, this.to) },
      { keep: ['x'] },
    );
    const saved: Record<string, RunnerTensor> = {};
    for (const [k, v] of Object.entries(out)) if (k.startsWith('saved.')) saved[k] = v;
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
    const out = await this.runner.run(this.backwardGraph, {
      x: activation(x, B, T, this.config.nEmbd),
      dy: activation(dy, B, T, this.config.nEmbd),
      ...saved,
      ...loraFeeds(this.config, this.lora, adapter, this.from, this.to),
    });
    return { dx: out.dx.data as Float32Array, loraGrads: loraGradsOf(out, this.config, this.lora, this.from, this.to) };
  }

  async close(): Promise<void> {
    await this.runner.unload(this.forwardGraph);
    await this.runner.unload(this.backwardGraph);
  }
}

export class TailSegment {
  /**
   * the generation graph, built and loaded by the first logits() call (a session that never generates never pays
   * for it)
   */
  private logitsGraph?: Promise<string>;
  private closed = false;

  private constructor(
    private readonly runner: SegmentRunner,
    private readonly model: Gpt2Model,
    readonly lora: LoraConfig,
    readonly from: number,
    private readonly stepGraph: string,
    private readonly lossGraph: string,
  ) {}

  get config(): Gpt2Config {
    return this.model.config;
  }

  static async create(runner: SegmentRunner, model: Gpt2Model, lora: LoraConfig, from: number): Promise<TailSegment> {
    const L = model.config.nLayer;
    const step = await load(runner, `tail[${from},${L}).step`, buildTailGraph(model, lora, from));
    const loss = await load(runner, `tail[${from},${L}).loss`, buildTailLossGraph(model, lora, from));
    return new TailSegment(runner, model, lora, from, step, loss);
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
      x: activation(x, B, T, this.config.nEmbd),
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
    const out = await this.runner.run(this.lossGraph, this.feeds(adapter, x, targets, B, T), { keep: ['targets'] });
    return { loss: (out.loss.data as Float32Array)[0], count: (out.count.data as Float32Array)[0] };
  }

  /**
   * Generation: blocks [from, L), ln_f and the tied head on x [B, T, D]; returns the next-token
   * logits at the last position of each row, [B, V]. The graph is loaded on the first call.
   */
  async logits(adapter: LoraAdapter, x: Float32Array, B: number, T: number): Promise<Float32Array> {
    if (this.closed) throw new Error('tail segment: logits() after close()');
    const feeds = {
      x: activation(x, B, T, this.config.nEmbd),
      ...loraFeeds(this.config, this.lora, adapter, this.from, this.config.nLayer),
    };
    if (!this.logitsGraph) {
      const L = this.config.nLayer;
      this.logitsGraph = load(
        this.runner,
        `tail[${this.from},${L}).logits`,
        buildTailLogitsGraph(this.model, this.lora, this.from),
      );
      // a failed load is retried by the next call rather than remembered
      this.logitsGraph.catch(() => (this.logitsGraph = undefined));
    }
    const graph = await this.logitsGraph;
    const out = await this.runner.run(graph, feeds, { keep: ['x'] });
    return out.logits.data as Float32Array;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.runner.unload(this.stepGraph);
    await this.runner.unload(this.lossGraph);
    const logits = await this.logitsGraph?.catch(() => undefined);
    if (logits) await this.runner.unload(logits);
  }
}
