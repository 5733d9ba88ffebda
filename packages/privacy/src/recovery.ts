/**
 * Recovery rates and the figures file. Browser-safe (no Node imports): the cloud puts the
 * figures into the manifest and the page reads them ("about X% of your words").
 *
 *  - token rate: fraction of scored positions whose token is recovered exactly;
 *  - word rate: fraction of whitespace-separated words of the text whose every token (every
 *    token overlapping the word's characters) is recovered exactly.
 *
 * privacy.json (next to the shipped model, written by `splitllm attack --write`):
 *   { measuredOn, command, tokens, figures: [{ k, sigma, attack, who, tokenRate, wordRate }] }
 */
import { IGNORE_INDEX } from '@splitllm/model';

export const ATTACKS = ['decoder', 'search', 'gradient-labels'] as const;
export type AttackName = (typeof ATTACKS)[number];
export type Observer = 'edge' | 'cloud';

export interface RecoveryFigure {
  /** split point: the tab runs blocks [0, k) */
  k: number;
  /** standard deviation of the Gaussian noise the tab adds to h1 */
  sigma: number;
  attack: AttackName;
  /** who runs the attack: the edge sees h1, the cloud sees h2 (and dL/dhL with labels on the device) */
  who: Observer;
  tokenRate: number;
  wordRate: number;
}

export interface RecoveryFigures {
  /** what text and model the figures were measured on, in words */
  measuredOn: string;
  /** the command that produced them */
  command: string;
  /** token positions measured per figure */
  tokens: number;
  figures: RecoveryFigure[];
}

/** Fraction of positions with truth[i] === guess[i], over positions whose truth is not IGNORE_INDEX. */
export function tokenRate(truth: ArrayLike<number>, guess: ArrayLike<number>): number {
  if (truth.length !== guess.length) throw new RangeError(`tokenRate: ${truth.length} truths, ${guess.length} guesses`);
  let n = 0;
  let ok = 0;
  for (let i = 0; i < truth.length; i++) {
    if (truth[i] === IGNORE_INDEX) continue;
    n++;
    if (truth[i] === guess[i]) ok++;
  }
  return n === 0 ? 0 : ok / n;
}

/** Words of a tokenized text: for each whitespace-separated word, the indices of the tokens overlapping it. */
export function wordSpans(pieces: readonly string[]): number[][] {
  const words: number[][] = [];
  let current: number[] | null = null;
  pieces.forEach((piece, i) => {
    for (const ch of piece) {
      if (/\s/.test(ch)) {
        current = null;
        continue;
      }
      if (current === null) {
        current = [];
        words.push(current);
      }
      if (current[current.length - 1] !== i) current.push(i);
    }
  });
  return words;
}

/**
 * Words fully recovered: `pieces[i]` is the text of the true token i (the tokenizer's decode of
 * that one id), `correct[i]` whether position i was recovered. Returns { words, recovered }.
 */
export function wordCounts(
  pieces: readonly string[],
  correct: ArrayLike<boolean>,
): { words: number; recovered: number } {
  if (pieces.length !== correct.length)
    throw new RangeError(`wordCounts: ${pieces.length} pieces, ${correct.length} flags`);
  const spans = wordSpans(pieces);
  let recovered = 0;
  for (const w of spans) if (w.every((i) => correct[i])) recovered++;
  return { words: spans.length, recovered };
}

function isRate(x: unknown): x is number {
  return typeof x === 'number' && x >= 0 && x <= 1;
}

/** Validates a parsed privacy.json (or the manifest's copy); throws a one-line Error naming the bad field. */
export function parseRecoveryFigures(json: unknown): RecoveryFigures {
  const bad = (what: string): never => {
    throw new Error(`privacy figures: ${what}`);
  };
  if (typeof json !== 'object' || json === null || Array.isArray(json)) bad('expected a JSON object');
  const o = json as Record<string, unknown>;
  if (typeof o.measuredOn !== 'string') bad('"measuredOn" must be a string');
  if (typeof o.command !== 'string') bad('"command" must be a string');
  if (!(typeof o.tokens === 'number' && Number.isInteger(o.tokens) && o.tokens > 0))
    bad('"tokens" must be a positive integer');
  if (!Array.isArray(o.figures)) bad('"figures" must be an array');
  const figures = (o.figures as unknown[]).map((f, i): RecoveryFigure => {
    if (typeof f !== 'object' || f === null) bad(`figures[${i}] must be an object`);
    const r = f as Record<string, unknown>;
    if (!(typeof r.k === 'number' && Number.isInteger(r.k) && r.k >= 1)) bad(`figures[${i}].k must be an integer >= 1`);
    if (!(typeof r.sigma === 'number' && r.sigma >= 0)) bad(`figures[${i}].sigma must be a number >= 0`);
    if (!(ATTACKS as readonly unknown[]).includes(r.attack))
      bad(`figures[${i}].attack must be one of ${ATTACKS.join(', ')}`);
    if (r.who !== 'edge' && r.who !== 'cloud') bad(`figures[${i}].who must be "edge" or "cloud"`);
    if (!isRate(r.tokenRate)) bad(`figures[${i}].tokenRate must be in [0, 1]`);
    if (!isRate(r.wordRate)) bad(`figures[${i}].wordRate must be in [0, 1]`);
    return {
      k: r.k as number,
      sigma: r.sigma as number,
      attack: r.attack as AttackName,
      who: r.who as Observer,
      tokenRate: r.tokenRate as number,
      wordRate: r.wordRate as number,
    };
  });
  return { measuredOn: o.measuredOn as string, command: o.command as string, tokens: o.tokens as number, figures };
}

/**
 * The worst case for a setting: the highest word rate any attack by `who` reached at (k, sigma)
 * (what the page should quote), or undefined when it was not measured.
 */
export function worstCase(f: RecoveryFigures, k: number, sigma: number, who: Observer): RecoveryFigure | undefined {
  let best: RecoveryFigure | undefined;
  for (const r of f.figures) {
    if (r.k !== k || r.sigma !== sigma || r.who !== who) continue;
    if (!best || r.wordRate > best.wordRate) best = r;
  }
  return best;
}
