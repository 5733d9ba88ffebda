/**
 * GPT-2 byte-level BPE tokenizer, read from / written to Hugging Face `vocab.json` + `merges.txt`.
 *
 * Pipeline (same as GPT-2): split out special tokens, pre-tokenize with GPT-2's regex, map each
 * piece's UTF-8 bytes to GPT-2's printable "byte characters", then apply merges lowest rank first.
 * Browser-safe: only TextEncoder/TextDecoder, no Node APIs.
 */
import { CodedError } from '../coded-error';
import { Heap } from '../heap';

export class TokenizerError extends CodedError<'BAD_TOKENIZER'> {
  constructor(message: string) {
    super('BAD_TOKENIZER', message);
  }
}

export interface TokenizerOptions {
  /**
   * Vocab entries that are matched literally in the input before pre-tokenization and never
   * split (default `['<|endoftext|>']`). Entries missing from the vocab are ignored.
   */
  specialTokens?: string[];
}

/** GPT-2's pre-tokenizer: contractions, letter runs, digit runs, other symbols, whitespace. */
/** GPT-2's pre-tokenizer: encoding and BPE training must split text alike. */
export const PRETOKENIZE = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

const EOT = '<|endoftext|>';

/** Beyond this many cached words the cache is dropped, so a long-lived tokenizer stays bounded. */
const MAX_CACHE = 200_000;

/** Heap keys pack (rank, position) as rank * POS + position; words are far shorter than 2^32. */
const POS = 2 ** 32;

/**
 * GPT-2's bytes_to_unicode table: printable Latin-1 bytes stand for themselves, the other 68
 * bytes get the characters U+0100.. in byte order, so every token is a printable string without
 * spaces. GPT-2's byte tokens take ids in ascending order of these characters.
 */
function buildByteChars(): string[] {
  const chars = new Array<string>(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    chars[b] = String.fromCharCode(printable ? b : 256 + extra++);
  }
  return chars;
}

const BYTE_CHARS: readonly string[] = Object.freeze(buildByteChars());
const CHAR_TO_BYTE = new Map<string, number>(BYTE_CHARS.map((c, b) => [c, b]));

const utf8 = new TextEncoder();
// ignoreBOM keeps a leading U+FEFF in decoded text instead of silently eating it.
const utf8Lenient = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

export class Gpt2Tokenizer {
  /** GPT-2's byte -> character table (index = byte value); byte-level token strings use these. */
  static readonly byteChars: readonly string[] = BYTE_CHARS;

  /** Max id + 1 (the embedding table size a model needs). */
  readonly vocabSize: number;
  /** Id of `<|endoftext|>`, if the vocab has it. */
  readonly eotId: number | undefined;

  private readonly vocab: Map<string, number>;
  private readonly idToTok: (string | undefined)[];
  private readonly merges: [string, string][];
  /** Merge rank by pair key (left * vocabSize + right); the first occurrence of a pair wins. */
  private readonly rankOf = new Map<number, number>();
  /** Result id of the merge at each rank. */
  private readonly mergeResult: number[];
  /** Vocab id of each byte value. */
  private readonly byteId: number[];
  /** UTF-8 bytes each id decodes to. */
  private readonly idBytes: (Uint8Array | undefined)[];
  private readonly specialRe: RegExp | undefined;
  private readonly specialIds = new Map<string, number>();
  private readonly cache = new Map<string, number[]>();

  /**
   * Build from an already-parsed vocab and merge list (rank order). Validates that all 256 byte
   * tokens exist, ids are unique non-negative integers, and every merge's parts and result are
   * in the vocab.
   */
  constructor(
    vocab: ReadonlyMap<string, number>,
    merges: ReadonlyArray<readonly [string, string]>,
    opts: TokenizerOptions = {},
  ) {
    this.vocab = new Map(vocab);
    let maxId = -1;
    const idToTok: (string | undefined)[] = [];
    for (const [tok, id] of this.vocab) {
      if (!Number.isSafeInteger(id) || id < 0) {
        throw new TokenizerError(
          `vocab: id of ${JSON.stringify(tok)} must be a non-negative integer, got ${String(id)}`,
        );
      }
      if (idToTok[id] !== undefined) {
        throw new TokenizerError(
          `vocab: id ${id} is used by both ${JSON.stringify(idToTok[id])} and ${JSON.stringify(tok)}`,
        );
      }
      idToTok[id] = tok;
      if (id > maxId) maxId = id;
    }
    this.idToTok = idToTok;
    this.vocabSize = maxId + 1;

    this.byteId = BYTE_CHARS.map((c, b) => {
      const id = this.vocab.get(c);
      if (id === undefined) {
        throw new TokenizerError(
          `vocab: missing byte token ${JSON.stringify(c)} (byte 0x${b.toString(16).padStart(2, '0')}); ` +
            `not a GPT-2 byte-level vocab`,
        );
      }
      return id;
    });

    this.merges = merges.map(([a, b]) => [a, b]);
    this.mergeResult = new Array<number>(merges.length);
    merges.forEach(([a, b], rank) => {
      const where = `merge #${rank + 1} ${JSON.stringify(`${a} ${b}`)}`;
      const left = this.vocab.get(a);
      const right = this.vocab.get(b);
      if (left === undefined || right === undefined) {
        throw new TokenizerError(
          `merges: ${where} uses ${JSON.stringify(left === undefined ? a : b)}, which is not in the vocab`,
        );
      }
      const result = this.vocab.get(a + b);
      if (result === undefined) {
        throw new TokenizerError(`merges: result ${JSON.stringify(a + b)} of ${where} is not in the vocab`);
      }
      this.mergeResult[rank] = result;
      const key = left * this.vocabSize + right;
      if (!this.rankOf.has(key)) this.rankOf.set(key, rank);
    });

    const specials = (opts.specialTokens ?? [EOT]).filter((s) => s.length > 0 && this.vocab.has(s));
    for (const s of specials) this.specialIds.set(s, this.vocab.get(s)!);
    // Longest first, so a special that contains another one wins.
    const alternation = [...this.specialIds.keys()].sort((x, y) => y.length - x.length).map(escapeRegExp);
    this.specialRe = alternation.length > 0 ? new RegExp(alternation.join('|'), 'g') : undefined;
    this.eotId = this.vocab.get(EOT);

    this.idBytes = idToTok.map((tok) => (tok === undefined ? undefined : this.tokenBytes(tok)));
  }

  /**
   * Parse Hugging Face `vocab.json` (token -> id) and `merges.txt` (one "left right" pair per
   * line, optional leading `#version` line, blank lines ignored).
   */
  static fromFiles(vocabJson: string, mergesTxt: string, opts: TokenizerOptions = {}): Gpt2Tokenizer {
    let parsed: unknown;
    try {
      parsed = JSON.parse(vocabJson);
    } catch (e) {
      throw new TokenizerError(`vocab.json: not valid JSON (${(e as Error).message})`);
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      throw new TokenizerError('vocab.json: expected a JSON object mapping token strings to integer ids');
    }
    const vocab = new Map<string, number>();
    for (const [tok, id] of Object.entries(parsed)) {
      if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) {
        throw new TokenizerError(
          `vocab.json: id of ${JSON.stringify(tok)} must be a non-negative integer, got ${JSON.stringify(id)}`,
        );
      }
      vocab.set(tok, id);
    }

    const merges: [string, string][] = [];
    const lines = mergesTxt.split('\n');
    lines.forEach((raw, i) => {
      const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
      if (line.trim() === '' || (i === 0 && line.startsWith('#version'))) return;
      // Byte-level tokens never contain a space, so a valid line is exactly "left right".
      const parts = line.split(' ');
      if (parts.length !== 2 || parts[0] === '' || parts[1] === '') {
        throw new TokenizerError(
          `merges.txt line ${i + 1}: expected two tokens separated by one space, got ${JSON.stringify(line)}`,
        );
      }
      merges.push([parts[0], parts[1]]);
    });
    return new Gpt2Tokenizer(vocab, merges, opts);
  }

  /** Write Hugging Face `vocab.json` (in id order) and `merges.txt` (with `#version: 0.2`). */
  toFiles(): { vocabJson: string; mergesTxt: string } {
    // Built by hand: a JS object would move integer-like keys ("0", "1", ...) out of id order.
    const entries: string[] = [];
    this.idToTok.forEach((tok, id) => {
      if (tok !== undefined) entries.push(`${JSON.stringify(tok)}: ${id}`);
    });
    const vocabJson = `{${entries.join(', ')}}`;
    const mergesTxt = `${['#version: 0.2', ...this.merges.map(([a, b]) => `${a} ${b}`)].join('\n')}\n`;
    return { vocabJson, mergesTxt };
  }

  tokenToId(token: string): number | undefined {
    return this.vocab.get(token);
  }

  idToToken(id: number): string | undefined {
    return this.idToTok[id];
  }

  encode(text: string): number[] {
    const out: number[] = [];
    const re = this.specialRe;
    if (re === undefined) {
      this.encodeOrdinary(text, out);
      return out;
    }
    re.lastIndex = 0;
    let start = 0;
    for (let m = re.exec(text); m !== null; m = re.exec(text)) {
      this.encodeOrdinary(text.slice(start, m.index), out);
      out.push(this.specialIds.get(m[0])!);
      start = m.index + m[0].length;
    }
    this.encodeOrdinary(text.slice(start), out);
    return out;
  }

  /** Decode to text; byte sequences that are not valid UTF-8 become U+FFFD. */
  decode(ids: ArrayLike<number>): string {
    const parts: Uint8Array[] = [];
    let total = 0;
    for (let i = 0; i < ids.length; i++) {
      const bytes = this.idBytes[ids[i]];
      if (bytes === undefined)
        throw new RangeError(`decode: unknown token id ${ids[i]} (vocab size ${this.vocabSize})`);
      parts.push(bytes);
      total += bytes.length;
    }
    const buf = new Uint8Array(total);
    let off = 0;
    for (const p of parts) {
      buf.set(p, off);
      off += p.length;
    }
    return utf8Lenient.decode(buf);
  }

  /** Bytes a vocab entry stands for: byte characters map back to bytes; specials are literal text. */
  private tokenBytes(tok: string): Uint8Array {
    if (this.specialIds.has(tok)) return utf8.encode(tok);
    const out = new Uint8Array(tok.length);
    for (let i = 0; i < tok.length; i++) {
      const b = CHAR_TO_BYTE.get(tok[i]);
      // Not a byte-level token (e.g. an added token): fall back to its literal text.
      if (b === undefined) return utf8.encode(tok);
      out[i] = b;
    }
    return out;
  }

  private encodeOrdinary(text: string, out: number[]): void {
    if (text.length === 0) return;
    for (const m of text.matchAll(PRETOKENIZE)) {
      const ids = this.encodeWord(m[0]);
      for (let i = 0; i < ids.length; i++) out.push(ids[i]);
    }
  }

  /** BPE of one pre-tokenized piece; pieces repeat a lot in real text, hence the cache. */
  private encodeWord(word: string): number[] {
    const hit = this.cache.get(word);
    if (hit !== undefined) return hit;
    const bytes = utf8.encode(word);
    const sym = new Array<number>(bytes.length);
    for (let i = 0; i < bytes.length; i++) sym[i] = this.byteId[bytes[i]];
    const ids = this.bpe(sym);
    if (this.cache.size >= MAX_CACHE) this.cache.clear();
    this.cache.set(word, ids);
    return ids;
  }

  /**
   * Apply merges to a symbol sequence. Equivalent to GPT-2's loop ("merge every occurrence of
   * the lowest-ranked pair, repeat") but driven by a (rank, position) min-heap over a linked
   * list, so a pathological very long piece costs O(n log n) rather than O(n^2).
   */
  private bpe(sym: number[]): number[] {
    const n = sym.length;
    if (n < 2) return sym;
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    const heap = new Heap<number>((x, y) => x < y);
    const pushPair = (i: number): void => {
      const j = next[i];
      if (j < 0) return;
      const rank = this.rankOf.get(sym[i] * this.vocabSize + sym[j]);
      if (rank !== undefined) heap.push(rank * POS + i);
    };
    for (let i = 0; i < n - 1; i++) pushPair(i);

    while (heap.size > 0) {
      const key = heap.pop()!; // size > 0
      const rank = Math.floor(key / POS);
      const i = key - rank * POS;
      const j = next[i];
      // Entries go stale when a neighbour merges; ranks are unique per pair, so re-checking the
      // rank of the pair now at i tells whether this entry still describes a real pair.
      if (sym[i] < 0 || j < 0 || this.rankOf.get(sym[i] * this.vocabSize + sym[j]) !== rank) continue;
      sym[i] = this.mergeResult[rank];
      sym[j] = -1;
      next[i] = next[j];
      if (next[j] >= 0) prev[next[j]] = i;
      if (prev[i] >= 0) pushPair(prev[i]);
      pushPair(i);
    }

    const out: number[] = [];
    for (let i = 0; i >= 0; i = next[i]) out.push(sym[i]);
    return out;
  }
}
