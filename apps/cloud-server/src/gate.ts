/**
 * The validation gate's measure: the whole model's held-out loss (nats/token) on a fixed slice of
 * public text the cloud ships, with a candidate adapter. The cloud is the one tier holding every
 * block, so it scores with the TypeScript reference model (@splitllm/model's gpt2Loss) in its
 * own process, not through the tail segment: a candidate is a whole adapter, the tail holds only
 * blocks [m, L).
 */
import { type AnyModel, type AnyTokenizer, evalBatches, type LoraAdapter, meanLoss, modelDims } from '@splitllm/model';
import { readFileSync } from 'node:fs';
import { CloudConfigError } from './errors';

/**
 * Batches of the run's batch x seq the gate scores each candidate on (512 tokens at the default
 * 4 x 64): about 440 ms per candidate on the shipped model on one loaded CPU core, so a round
 * with one edge and one user (global + user + edge + cloud copy) gates in under 2 s. The
 * attacks move this loss by 2.5 nats or more, honest updates by under 0.04: more text would
 * not change a decision.
 */
export const GATE_BATCHES = 2;

export interface HeldoutScorer {
  score(candidate: LoraAdapter): number;
  /** the tokens scored per candidate */
  tokens: number;
  batches: number;
}

export function heldoutScorer(
  model: AnyModel,
  tokenizer: AnyTokenizer,
  file: string,
  batch: number,
  seq: number,
  nBatches = GATE_BATCHES,
): HeldoutScorer {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new CloudConfigError(
      'BAD_SETTINGS',
      `held-out text ${file} for the validation gate: ${(e as Error).message}`,
    );
  }
  const batches = evalBatches(tokenizer.encode(text), batch, seq, modelDims(model.config).padId).slice(0, nBatches);
  const tokens = batches.reduce((n, b) => n + b.B * b.T, 0);
  if (batches.length === 0 || tokens < 2) {
    throw new CloudConfigError('BAD_SETTINGS', `held-out text ${file} is too short to score the gate on`);
  }
  return { score: (candidate) => meanLoss(model, candidate, batches).loss, tokens, batches: batches.length };
}
