/** What the GPT-2 trainer tests share: the shipped model, each tier's segment of it, and padded random batches. */
import { decodeSegment, encodeSegment, type Gpt2Model, type SplitPlan, gpt2ModelOf } from '@splitllm/model';
import { loadGpt2Dir } from '@splitllm/model/node';
import { fileURLToPath } from 'node:url';

export const shipped: Gpt2Model = loadGpt2Dir(fileURLToPath(new URL('../../assets/models/moby-tiny', import.meta.url)));

/** a tier's model as it would receive its segment (the user trainer sees only wte, wpe and h.[0,k)) */
export const tierModel = (plan: SplitPlan, tier: 'user' | 'edge' | 'cloud'): Gpt2Model =>
  gpt2ModelOf(decodeSegment(encodeSegment(shipped, plan, tier), tier).model, 'a test');

/** B rows of T random tokens; row 1 is right-padded (eos ids, ignored targets) after 2T/3. */
export { paddedRandomBatch } from '@splitllm/model';
