/** What the trainer tests share: the shipped model, each tier's segment of it, and padded random batches. */
import {
  decodeSegment,
  encodeSegment,
  IGNORE_INDEX,
  Rng,
  type Gpt2Config,
  type Gpt2Model,
  type SplitPlan,
  type TokenBatch,
  gpt2ModelOf,
} from '@splitllm/model';
import { loadGpt2Dir } from '@splitllm/model/node';
import { fileURLToPath } from 'node:url';

export const shipped: Gpt2Model = loadGpt2Dir(fileURLToPath(new URL('../../assets/models/moby-tiny', import.meta.url)));

/** a tier's model as it would receive its segment (the user trainer sees only wte, wpe and h.[0,k)) */
export const tierModel = (plan: SplitPlan, tier: 'user' | 'edge' | 'cloud'): Gpt2Model =>
  gpt2ModelOf(decodeSegment(encodeSegment(shipped, plan, tier), tier).model, 'a test');

/** B rows of T random tokens; row 1 is right-padded (eos ids, ignored targets) after 2T/3. */
export function paddedRandomBatch(cfg: Gpt2Config, seed: number, B: number, T: number): TokenBatch {
  const rng = new Rng(seed);
  const ids = new Int32Array(B * T);
  const targets = new Int32Array(B * T);
  const real = Math.floor((2 * T) / 3);
  for (let b = 0; b < B; b++) {
    const row = Array.from({ length: T + 1 }, () => rng.int(cfg.vocabSize));
    for (let t = 0; t < T; t++) {
      const pad = b === 1 && t >= real;
      ids[b * T + t] = pad ? cfg.eosTokenId : row[t];
      targets[b * T + t] = pad ? IGNORE_INDEX : row[t + 1];
    }
  }
  return { B, T, inputIds: ids, targets };
}
