/**
 * The segment graphs of any model family, by the model's config: GPT-2's (segment-graphs.ts,
 * head-graphs.ts) or the LLaMA family's (llama-graphs.ts). Both families' graphs have the same
 * contract, input and output names included ('x', 'y', 'dy', 'dx', 'targets', 'loss', 'count',
 * 'logits', the `saved.*`, `backward.*` and `grad.*` tensors, the LoRA inputs by module path), so
 * whoever runs them (the edge, the cloud, the tab's wasm engine) is written once; only which
 * builder makes the graph differs.
 *
 * A LLaMA graph's RoPE table covers max_position_embeddings positions unless `ropePositions` says
 * fewer (the longest sequence the caller will run); GPT-2 graphs ignore it.
 */
import {
  type AnyModel,
  asLlamaLoraConfig,
  type Gpt2Model,
  isLlamaConfig,
  type LlamaModel,
  type LoraConfig,
} from '@splitllm/model';
import { buildHeadLogitsGraph, buildHeadStepGraph } from './head-graphs';
import {
  llamaBlocksBackwardGraph,
  llamaBlocksForwardGraph,
  llamaBlocksStepGraph,
  llamaHeadLogitsGraph,
  llamaHeadStepGraph,
  llamaTailGraph,
  llamaTailLogitsGraph,
  llamaTailLossGraph,
} from './llama-graphs';
import {
  type BlocksGraphOptions,
  buildBlocksBackwardGraph,
  buildBlocksForwardGraph,
  buildBlocksStepGraph,
  buildTailGraph,
  buildTailLogitsGraph,
  buildTailLossGraph,
  type SegmentGraph,
  type SegmentWeightsOptions,
} from './segment-graphs';

export interface FamilyGraphOptions extends SegmentWeightsOptions {
  /** LLaMA family: the positions the RoPE table covers (default max_position_embeddings) */
  ropePositions?: number;
}

export interface FamilyBlocksGraphOptions extends FamilyGraphOptions, BlocksGraphOptions {}

type Build<O> = {
  gpt2: (m: Gpt2Model, lora: LoraConfig, o: O) => SegmentGraph;
  llama: (m: LlamaModel, lora: ReturnType<typeof asLlamaLoraConfig>, o: O) => SegmentGraph;
};

function byFamily<O>(model: AnyModel, lora: LoraConfig, o: O, build: Build<O>): SegmentGraph {
  if (!isLlamaConfig(model.config)) return build.gpt2(model as Gpt2Model, lora, o);
  return build.llama(model as LlamaModel, asLlamaLoraConfig(model.config, lora), o);
}

/** Forward of blocks [from, to): see buildBlocksForwardGraph / llamaBlocksForwardGraph. */
export function blocksForwardGraph(
  model: AnyModel,
  lora: LoraConfig,
  from: number,
  to: number,
  opts: FamilyBlocksGraphOptions,
): SegmentGraph {
  return byFamily(model, lora, opts, {
    gpt2: (m, l, o) => buildBlocksForwardGraph(m, l, from, to, o),
    llama: (m, l, o) => llamaBlocksForwardGraph(m, l, from, to, o),
  });
}

/** Backward of blocks [from, to): see buildBlocksBackwardGraph / llamaBlocksBackwardGraph. */
export function blocksBackwardGraph(
  model: AnyModel,
  lora: LoraConfig,
  from: number,
  to: number,
  opts: FamilyBlocksGraphOptions,
): SegmentGraph {
  return byFamily(model, lora, opts, {
    gpt2: (m, l, o) => buildBlocksBackwardGraph(m, l, from, to, o),
    llama: (m, l, o) => llamaBlocksBackwardGraph(m, l, from, to, o),
  });
}

/** Forward and backward of blocks [from, to) in one graph: see buildBlocksStepGraph / llamaBlocksStepGraph. */
export function blocksStepGraph(
  model: AnyModel,
  lora: LoraConfig,
  from: number,
  to: number,
  opts: FamilyBlocksGraphOptions,
): SegmentGraph {
  return byFamily(model, lora, opts, {
    gpt2: (m, l, o) => buildBlocksStepGraph(m, l, from, to, o),
    llama: (m, l, o) => llamaBlocksStepGraph(m, l, from, to, o),
  });
}

/** The cloud tail, forward and backward: blocks [from, L), final norm, head, mean cross-entropy. */
export function tailGraph(
  model: AnyModel,
  lora: LoraConfig,
  from: number,
  opts: FamilyGraphOptions = {},
): SegmentGraph {
  return byFamily(model, lora, opts, {
    gpt2: (m, l, o) => buildTailGraph(m, l, from, o),
    llama: (m, l, o) => llamaTailGraph(m, l, from, o),
  });
}

/** The tail's loss only (evaluation). */
export function tailLossGraph(
  model: AnyModel,
  lora: LoraConfig,
  from: number,
  opts: FamilyGraphOptions = {},
): SegmentGraph {
  return byFamily(model, lora, opts, {
    gpt2: (m, l, o) => buildTailLossGraph(m, l, from, o),
    llama: (m, l, o) => llamaTailLossGraph(m, l, from, o),
  });
}

/** The tail's next-token logits at the last position (generation). */
export function tailLogitsGraph(
  model: AnyModel,
  lora: LoraConfig,
  from: number,
  opts: FamilyGraphOptions = {},
): SegmentGraph {
  return byFamily(model, lora, opts, {
    gpt2: (m, l, o) => buildTailLogitsGraph(m, l, from, o),
    llama: (m, l, o) => llamaTailLogitsGraph(m, l, from, o),
  });
}

/** One chunk of the head step with labels on the device (the tab's wasm engine). */
export function headStepGraph(model: AnyModel): SegmentGraph {
  return isLlamaConfig(model.config) ? llamaHeadStepGraph(model as LlamaModel) : buildHeadStepGraph(model as Gpt2Model);
}

/** The head's logits of some rows (generation with labels on the device). */
export function headLogitsGraph(model: AnyModel): SegmentGraph {
  return isLlamaConfig(model.config)
    ? llamaHeadLogitsGraph(model as LlamaModel)
    : buildHeadLogitsGraph(model as Gpt2Model);
}
