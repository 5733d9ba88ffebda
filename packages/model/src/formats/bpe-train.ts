/**
 * Train a GPT-2 style byte-level BPE tokenizer on a text.
 *
 * Same scheme as GPT-2: split out special tokens, pre-tokenize with GPT-2's regex, count how
 * often each distinct piece occurs, then repeatedly merge the most frequent adjacent pair
 * (weighted by piece frequency). Pair counts are updated incrementally, touching only the
 * distinct pieces that contain the merged pair, and the best pair comes from a lazy max-heap,
 * so the cost scales with the number of distinct pieces, not the corpus size times merges.
 * Fully deterministic: count ties go to the lexicographically smaller (left, right) pair.
 * Browser-safe: no Node APIs.
 */
import { Heap } from '../heap';
import { Gpt2Tokenizer, PRETOKENIZE, TokenizerError } from './tokenizer';

export interface TrainBpeOptions {
  /** Final vocab size, counting the 256 byte tokens and the special tokens. */
  vocabSize: number;
  /** Appended after the learned tokens, in this order (default `['<|endoftext|>']`, like GPT-2's id 50256). */
  specialTokens?: string[];
}

interface HeapEntry {
  count: number;
  left: number;
  right: number;
}

export function trainByteLevelBpe(text: string, opts: TrainBpeOptions): Gpt2Tokenizer {
  const specials = opts.specialTokens ?? ['<|endoftext|>'];
  const { vocabSize } = opts;
  if (new Set(specials).size !== specials.length || specials.some((s) => s.length === 0)) {
    throw new TokenizerError('trainByteLevelBpe: special tokens must be distinct non-empty strings');
  }
  const minSize = 256 + specials.length;
  if (!Number.isSafeInteger(vocabSize) || vocabSize < minSize) {
    throw new TokenizerError(
      `trainByteLevelBpe: vocabSize must be an integer >= ${minSize} ` +
        `(256 bytes + ${specials.length} special tokens), got ${vocabSize}`,
    );
  }

  // Byte tokens take ids 0..255 in ascending order of their GPT-2 characters, which is exactly
  // GPT-2's order (printable '!'..'~', '¡'..'¬', '®'..'ÿ', then the remapped bytes).
  const byteChars = Gpt2Tokenizer.byteChars;
  const byteOrder = [...byteChars.keys()].sort((x, y) => byteChars[x].charCodeAt(0) - byteChars[y].charCodeAt(0));
  const tokens: string[] = byteOrder.map((b) => byteChars[b]);
  const byteId = new Array<number>(256);
  for (const [id, b] of byteOrder.entries()) byteId[b] = id;
  const idOf = new Map<string, number>(tokens.map((t, id) => [t, id]));
  for (const s of specials) {
    if (idOf.has(s))
      throw new TokenizerError(`trainByteLevelBpe: special token ${JSON.stringify(s)} collides with a byte token`);
  }

  // Special tokens are never learned from: cut them out of the text first.
  let segments = [text];
  for (const s of specials) segments = segments.flatMap((seg) => seg.split(s));
  const pieceFreq = new Map<string, number>();
  for (const seg of segments) {
    for (const m of seg.matchAll(PRETOKENIZE)) pieceFreq.set(m[0], (pieceFreq.get(m[0]) ?? 0) + 1);
  }

  // Distinct pieces as symbol sequences, with their frequencies.
  const utf8 = new TextEncoder();
  const words: number[][] = [];
  const freq: number[] = [];
  for (const [piece, f] of pieceFreq) {
    words.push(Array.from(utf8.encode(piece), (b) => byteId[b]));
    freq.push(f);
  }

  // Pair key = left * vocabSize + right (ids stay below vocabSize, so keys are unique).
  const pairCount = new Map<number, number>();
  /** Which distinct pieces contain each pair (may hold a few pieces that no longer do). */
  const pairWords = new Map<number, Set<number>>();
  const addPairs = (w: number, sign: 1 | -1): number[] => {
    const s = words[w];
    const keys: number[] = [];
    for (let i = 0; i + 1 < s.length; i++) {
      const k = s[i] * vocabSize + s[i + 1];
      pairCount.set(k, (pairCount.get(k) ?? 0) + sign * freq[w]);
      if (sign > 0) {
        let set = pairWords.get(k);
        if (set === undefined) {
          set = new Set();
          pairWords.set(k, set);
        }
        set.add(w);
      }
      keys.push(k);
    }
    return keys;
  };
  for (let w = 0; w < words.length; w++) addPairs(w, 1);

  const heap = new Heap<HeapEntry>((x, y) => {
    if (x.count !== y.count) return x.count > y.count;
    if (x.left !== y.left) return tokens[x.left] < tokens[y.left];
    return tokens[x.right] < tokens[y.right];
  });
  const pushPair = (k: number): void => {
    const count = pairCount.get(k) ?? 0;
    if (count > 0) heap.push({ count, left: Math.floor(k / vocabSize), right: k % vocabSize });
  };
  for (const k of pairCount.keys()) pushPair(k);

  const merges: [string, string][] = [];
  const target = vocabSize - specials.length;
  while (tokens.length < target) {
    // Lazy deletion: an entry is current only if its count still matches.
    let best = heap.pop();
    while (best !== undefined && pairCount.get(best.left * vocabSize + best.right) !== best.count) best = heap.pop();
    if (best === undefined) {
      throw new TokenizerError(
        `trainByteLevelBpe: the text only supports ${tokens.length + specials.length} tokens, ` +
          `fewer than vocabSize ${vocabSize}; use more text or a smaller vocab`,
      );
    }
    const { left, right } = best;
    const merged = tokens[left] + tokens[right];
    // Two merge paths can spell the same token ("a bc", "ab c"): reuse its id, like HF does.
    let id = idOf.get(merged);
    if (id === undefined) {
      id = tokens.length;
      tokens.push(merged);
      idOf.set(merged, id);
    }
    merges.push([tokens[left], tokens[right]]);

    const key = left * vocabSize + right;
    const touched = new Set<number>();
    // Copy: the loop below edits these sets.
    for (const w of [...(pairWords.get(key) ?? [])]) {
      for (const k of addPairs(w, -1)) {
        touched.add(k);
        pairWords.get(k)?.delete(w);
      }
      // Merge left to right, non-overlapping, as encoding will.
      const s = words[w];
      const out: number[] = [];
      for (let i = 0; i < s.length; i++) {
        if (i + 1 < s.length && s[i] === left && s[i + 1] === right) {
          out.push(id);
          i++;
        } else {
          out.push(s[i]);
        }
      }
      words[w] = out;
      for (const k of addPairs(w, 1)) touched.add(k);
    }
    for (const k of touched) {
      if ((pairCount.get(k) ?? 0) > 0) {
        pushPair(k);
      } else {
        pairCount.delete(k);
        pairWords.delete(k);
      }
    }
  }

  for (const s of specials) {
    if (idOf.has(s))
      throw new TokenizerError(`trainByteLevelBpe: special token ${JSON.stringify(s)} collides with a learned token`);
    idOf.set(s, tokens.length);
    tokens.push(s);
  }
  return new Gpt2Tokenizer(idOf, merges, { specialTokens: specials });
}
