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
  type LlamaLoraConfig,
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

type BlocksBuilder<M, L> = (model: M, lora: L, from: number, to: number, o: FamilyBlocksGraphOptions) => SegmentGraph;
type TailBuilder<M, L> = (model: M, lora: L, from: number, o: FamilyGraphOptions) => SegmentGraph;

/** A blocks graph of either family from its two builders (same contract, see the header). */
function blocksGraphOf(gpt2: BlocksBuilder<Gpt2Model, LoraConfig>, llama: BlocksBuilder<LlamaModel, LlamaLoraConfig>) {
  return (model: AnyModel, lora: LoraConfig, from: number, to: number, opts: FamilyBlocksGraphOptions) =>
    isLlamaConfig(model.config)
      ? llama(model as LlamaModel, asLlamaLoraConfig(model.config, lora), from, to, opts)
      : gpt2(model as Gpt2Model, lora, from, to, opts);
}

/** A tail graph (blocks [from, L) and the head) of either family from its two builders. */
function tailGraphOf(gpt2: TailBuilder<Gpt2Model, LoraConfig>, llama: TailBuilder<LlamaModel, LlamaLoraConfig>) {
  return (model: AnyModel, lora: LoraConfig, from: number, opts: FamilyGraphOptions = {}) =>
    isLlamaConfig(model.config)
      ? llama(model as LlamaModel, asLlamaLoraConfig(model.config, lora), from, opts)
      : gpt2(model as Gpt2Model, lora, from, opts);
}

/** Forward of blocks [from, to): see buildBlocksForwardGraph / llamaBlocksForwardGraph. */
export const blocksForwardGraph = blocksGraphOf(buildBlocksForwardGraph, llamaBlocksForwardGraph);

/** Backward of blocks [from, to): see buildBlocksBackwardGraph / llamaBlocksBackwardGraph. */
export const blocksBackwardGraph = blocksGraphOf(buildBlocksBackwardGraph, llamaBlocksBackwardGraph);

/** Forward and backward of blocks [from, to) in one graph: see buildBlocksStepGraph / llamaBlocksStepGraph. */
export const blocksStepGraph = blocksGraphOf(buildBlocksStepGraph, llamaBlocksStepGraph);

/** The cloud tail, forward and backward: blocks [from, L), final norm, head, mean cross-entropy. */
export const tailGraph = tailGraphOf(buildTailGraph, llamaTailGraph);

/** The tail's loss only (evaluation). */
export const tailLossGraph = tailGraphOf(buildTailLossGraph, llamaTailLossGraph);

/** The tail's next-token logits at the last position (generation). */
export const tailLogitsGraph = tailGraphOf(buildTailLogitsGraph, llamaTailLogitsGraph);

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
