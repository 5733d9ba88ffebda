/**
 * Hugging Face `tokenizer.json` (+ `tokenizer_config.json`), the tokenizer format of the LLaMA
 * family (Llama 3's byte-level BPE, Llama 2 / TinyLlama's byte-fallback BPE, SmolLM2, Qwen2),
 * run by `@huggingface/tokenizers` (pure JS, browser-safe). It offers the surface of our GPT-2
 * tokenizer where that makes sense, so the data and CLI code can take either.
 *
 * Before the library sees a file we walk it and refuse, naming them, the parts the library does
 * not implement (it would throw a bare "Unknown ... type", or guess a model kind, or silently
 * ignore a setting and tokenize differently from `tokenizers`).
 *
 * Special tokens: `encode(text)` returns the text's ids only, as `Gpt2Tokenizer.encode` does (the
 * data code concatenates documents itself). `encode(text, { addSpecialTokens: true })` adds what
 * the model's own files say: `add_bos_token` / `add_eos_token` of tokenizer_config.json where
 * present (transformers' Llama tokenizer rebuilds its post-processor from them), otherwise what
 * the tokenizer.json post-processor adds (its TemplateProcessing, Bert/Roberta cls/sep, nothing
 * for ByteLevel), as `tokenizers` does. BOS/EOS ids: tokenizer_config.json's bos_token/eos_token,
 * else the model config's ids the caller passes. Decoding applies `clean_up_tokenization_spaces`
 * only when tokenizer_config.json sets it true (the library defaults it on), so byte-level
 * tokenizers decode back to the exact text.
 *
 * Also `gpt2TokenizerJson`: our GPT-2 vocab.json + merges.txt as an equivalent tokenizer.json.
 */
import { Tokenizer } from '@huggingface/tokenizers';
import { Gpt2Tokenizer, TokenizerError } from './tokenizer';

type Json = Record<string, unknown>;

/** Component types `@huggingface/tokenizers` 0.2.0 builds (its create_* switches), by part. */
const SUPPORTED = {
  normalizer: [
    'BertNormalizer',
    'Precompiled',
    'Sequence',
    'Replace',
    'NFC',
    'NFD',
    'NFKC',
    'NFKD',
    'Strip',
    'StripAccents',
    'Lowercase',
    'Prepend',
  ],
  pre_tokenizer: [
    'BertPreTokenizer',
    'Sequence',
    'Whitespace',
    'WhitespaceSplit',
    'Metaspace',
    'ByteLevel',
    'Split',
    'Punctuation',
    'Digits',
    'Replace',
    'FixedLength',
  ],
  model: ['BPE', 'WordPiece', 'Unigram'],
  post_processor: ['TemplateProcessing', 'ByteLevel', 'BertProcessing', 'RobertaProcessing', 'Sequence'],
  decoder: [
    'ByteLevel',
    'WordPiece',
    'Metaspace',
    'BPEDecoder',
    'CTC',
    'Sequence',
    'Replace',
    'Fuse',
    'Strip',
    'ByteFallback',
  ],
} as const;

type Part = keyof typeof SUPPORTED;

/** The key under which each part's `Sequence` lists its children. */
const SEQUENCE_CHILDREN: Record<Exclude<Part, 'model'>, string> = {
  normalizer: 'normalizers',
  pre_tokenizer: 'pretokenizers',
  post_processor: 'processors',
  decoder: 'decoders',
};

/** Split behaviours the library implements; it treats the others as "Isolated" (its README says so). */
const SPLIT_BEHAVIORS = new Set(['Isolated', 'Removed']);

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isId(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function parseJsonText(text: string, file: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new TokenizerError(`${file}: not valid JSON (${(e as Error).message})`);
  }
}

/** Refuses, by path and name, every part of a tokenizer.json the library would not run as `tokenizers` does. */
function checkSupported(json: Json, file: string): void {
  // an explicit type, so that control flow knows a call never returns
  const fail: (path: string, what: string) => never = (path, what) => {
    throw new TokenizerError(`${file}: ${path} ${what}`);
  };
  const walk = (part: Exclude<Part, 'model'>, node: unknown, path: string): void => {
    if (node === null || node === undefined) return;
    if (!isObject(node)) fail(path, 'must be an object or null');
    const type = node.type;
    if (!(SUPPORTED[part] as readonly unknown[]).includes(type)) {
      fail(`${path}.type`, `${JSON.stringify(type)} is not supported by @huggingface/tokenizers`);
    }
    if ((type === 'Split' || type === 'Replace') && part !== 'post_processor') {
      const pattern = node.pattern;
      if (!isObject(pattern) || (typeof pattern.String !== 'string' && typeof pattern.Regex !== 'string')) {
        fail(`${path}.pattern`, 'must be {"String": ...} or {"Regex": ...}');
      }
    }
    if ((type === 'Split' || type === 'Punctuation') && part === 'pre_tokenizer') {
      const behavior = node.behavior ?? 'Isolated';
      const ok = type === 'Split' ? SPLIT_BEHAVIORS.has(behavior as string) : behavior === 'Isolated';
      if (!ok) fail(`${path}.behavior`, `${JSON.stringify(behavior)} is not supported by @huggingface/tokenizers`);
    }
    if (type === 'Sequence') {
      const key = SEQUENCE_CHILDREN[part];
      const children = node[key];
      if (!Array.isArray(children)) fail(`${path}.${key}`, 'must be a list');
      for (const [i, child] of children.entries()) walk(part, child, `${path}.${key}[${i}]`);
    }
  };
  walk('normalizer', json.normalizer, 'normalizer');
  walk('pre_tokenizer', json.pre_tokenizer, 'pre_tokenizer');
  walk('post_processor', json.post_processor, 'post_processor');
  walk('decoder', json.decoder, 'decoder');

  const model = json.model;
  if (!isObject(model)) fail('model', 'is missing');
  // without a type the library guesses the kind (down to a "Legacy" word lookup); we do not
  if (!(SUPPORTED.model as readonly unknown[]).includes(model.type)) {
    fail(
      'model.type',
      `${JSON.stringify(model.type)} is not supported by @huggingface/tokenizers (BPE, Unigram, WordPiece)`,
    );
  }
  if (model.type === 'BPE') {
    if (model.dropout !== undefined && model.dropout !== null && model.dropout !== 0) {
      fail('model.dropout', `${JSON.stringify(model.dropout)}: BPE dropout is not supported`);
    }
    const prefix = model.continuing_subword_prefix;
    if (prefix !== undefined && prefix !== null && prefix !== '') {
      fail('model.continuing_subword_prefix', `${JSON.stringify(prefix)} is not supported by @huggingface/tokenizers`);
    }
    if (!isObject(model.vocab)) fail('model.vocab', 'must be an object of token: id');
    if (!Array.isArray(model.merges)) fail('model.merges', 'must be a list');
  } else if (model.type === 'Unigram') {
    if (!Array.isArray(model.vocab)) fail('model.vocab', 'must be a list of [piece, score]');
  } else if (!isObject(model.vocab)) {
    fail('model.vocab', 'must be an object of token: id');
  }

  const added = json.added_tokens ?? [];
  if (!Array.isArray(added)) fail('added_tokens', 'must be a list');
  added.forEach((t, i) => {
    if (!isObject(t) || !isId(t.id) || typeof t.content !== 'string') {
      fail(`added_tokens[${i}]`, 'must have an integer "id" and a string "content"');
    }
    if (t.single_word === true) {
      fail(
        `added_tokens[${i}].single_word`,
        `(token ${JSON.stringify(t.content)}) is not supported by @huggingface/tokenizers`,
      );
    }
  });
}

/** Max id + 1 over the model's vocab and the added tokens. */
function countVocab(json: Json): number {
  const model = json.model as Json;
  let max = -1;
  if (Array.isArray(model.vocab)) max = model.vocab.length - 1;
  else {
    for (const id of Object.values(model.vocab as Json)) {
      if (!isId(id))
        throw new TokenizerError(`model.vocab: ids must be non-negative integers, got ${JSON.stringify(id)}`);
      if (id > max) max = id;
    }
  }
  for (const t of (json.added_tokens ?? []) as Json[]) max = Math.max(max, t.id as number);
  return max + 1;
}

interface Wrap {
  prefix: number[];
  suffix: number[];
}

/** What a tokenizer.json post-processor wraps around one sequence (`tokenizers`' reading of it). */
function postProcessorWrap(pp: unknown, path: string, file: string): Wrap {
  const fail: (what: string) => never = (what) => {
    throw new TokenizerError(`${file}: ${path} ${what}`);
  };
  if (!isObject(pp) || pp.type === 'ByteLevel') return { prefix: [], suffix: [] };
  if (pp.type === 'Sequence') {
    // each processor wraps what the previous ones produced
    const out: Wrap = { prefix: [], suffix: [] };
    (pp.processors as unknown[]).forEach((child, i) => {
      const w = postProcessorWrap(child, `${path}.processors[${i}]`, file);
      out.prefix = [...w.prefix, ...out.prefix];
      out.suffix = [...out.suffix, ...w.suffix];
    });
    return out;
  }
  if (pp.type === 'BertProcessing' || pp.type === 'RobertaProcessing') {
    const id = (k: string): number => {
      const pair = pp[k];
      if (!Array.isArray(pair) || !isId(pair[1])) fail(`.${k} must be [token, id]`);
      return (pair as unknown[])[1] as number;
    };
    return { prefix: [id('cls')], suffix: [id('sep')] };
  }
  // TemplateProcessing
  const single = pp.single;
  const specials = isObject(pp.special_tokens) ? pp.special_tokens : {};
  if (!Array.isArray(single)) fail('.single must be a list');
  const out: Wrap = { prefix: [], suffix: [] };
  let seenA = false;
  for (const item of single as unknown[]) {
    if (isObject(item) && isObject(item.Sequence)) {
      if (item.Sequence.id !== 'A') fail(`.single uses sequence ${JSON.stringify(item.Sequence.id)}, expected "A"`);
      seenA = true;
    } else if (isObject(item) && isObject(item.SpecialToken)) {
      const name = item.SpecialToken.id as string;
      const entry = specials[name];
      const ids = isObject(entry) ? entry.ids : undefined;
      if (!Array.isArray(ids) || !ids.every(isId)) {
        fail(`.special_tokens has no ids for ${JSON.stringify(name)}`);
      }
      (seenA ? out.suffix : out.prefix).push(...(ids as number[]));
    } else {
      fail(`.single has an item that is neither a Sequence nor a SpecialToken: ${JSON.stringify(item)}`);
    }
  }
  if (!seenA) fail('.single never places the sequence "A"');
  return out;
}

/** A token named in tokenizer_config.json: a string, or an AddedToken object with `content`. */
function tokenContent(v: unknown): string | null | undefined {
  if (v === undefined) return undefined;
  if (v === null) return null;
  if (typeof v === 'string') return v;
  if (isObject(v) && typeof v.content === 'string') return v.content;
  return undefined;
}

export interface HfTokenizerOptions {
  /** How messages name the files (default "tokenizer.json" and "tokenizer_config.json"). */
  file?: string;
  configFile?: string;
  /**
   * The model config's `bos_token_id` / first `eos_token_id`: used when tokenizer_config.json
   * does not name its BOS / EOS token (a null there means "none" and wins).
   */
  bosTokenId?: number | null;
  eosTokenId?: number | null;
}

export interface HfEncodeOptions {
  /** Add the model's special tokens (BOS/EOS, as its files say). Default false: the text only. */
  addSpecialTokens?: boolean;
}

export interface HfDecodeOptions {
  /** Drop special tokens (BOS, EOS, ...) from the text. Default false. */
  skipSpecialTokens?: boolean;
}

export class HfTokenizer {
  /** Max id + 1 over the vocab and the added tokens (the embedding may be larger). */
  readonly vocabSize: number;
  readonly bosTokenId: number | undefined;
  readonly eosTokenId: number | undefined;
  /** Ids `encode(text, { addSpecialTokens: true })` puts before and after the text. */
  readonly prefixIds: readonly number[];
  readonly suffixIds: readonly number[];
  /** Where prefixIds/suffixIds come from, for people: "tokenizer_config.json add_bos_token", ... */
  readonly specialTokensFrom: string;

  private constructor(
    private readonly lib: Tokenizer,
    private readonly jsonText: string,
    fields: {
      vocabSize: number;
      bos: number | undefined;
      eos: number | undefined;
      wrap: Wrap;
      from: string;
    },
  ) {
    this.vocabSize = fields.vocabSize;
    this.bosTokenId = fields.bos;
    this.eosTokenId = fields.eos;
    this.prefixIds = Object.freeze([...fields.wrap.prefix]);
    this.suffixIds = Object.freeze([...fields.wrap.suffix]);
    this.specialTokensFrom = fields.from;
  }

  /** The end-of-text id under the name `Gpt2Tokenizer` uses, so callers can take either. */
  get eotId(): number | undefined {
    return this.eosTokenId;
  }

  /**
   * Builds a tokenizer from tokenizer.json (text or parsed) and, when the model has one,
   * tokenizer_config.json. Refuses, naming them, the parts the library does not support.
   */
  static fromJson(
    tokenizerJson: string | object,
    tokenizerConfig: string | object | null = null,
    opts: HfTokenizerOptions = {},
  ): HfTokenizer {
    const file = opts.file ?? 'tokenizer.json';
    const configFile = opts.configFile ?? 'tokenizer_config.json';
    const text = typeof tokenizerJson === 'string' ? tokenizerJson : JSON.stringify(tokenizerJson);
    const json = typeof tokenizerJson === 'string' ? parseJsonText(tokenizerJson, file) : tokenizerJson;
    if (!isObject(json)) throw new TokenizerError(`${file}: expected a JSON object`);
    const tc =
      typeof tokenizerConfig === 'string' ? parseJsonText(tokenizerConfig, configFile) : (tokenizerConfig ?? {});
    if (!isObject(tc)) throw new TokenizerError(`${configFile}: expected a JSON object`);
    checkSupported(json, file);
    let vocabSize: number;
    try {
      vocabSize = countVocab(json);
    } catch (e) {
      throw new TokenizerError(`${file}: ${(e as Error).message}`);
    }

    // transformers reconciles add_prefix_space with the pre-tokenizer; the library does not,
    // so a disagreement would tokenize differently: refuse it
    if (typeof tc.add_prefix_space === 'boolean') {
      const pre = json.pre_tokenizer;
      const byteLevels = [pre, ...(isObject(pre) && Array.isArray(pre.pretokenizers) ? pre.pretokenizers : [])].filter(
        (p) => isObject(p) && p.type === 'ByteLevel',
      ) as Json[];
      for (const b of byteLevels) {
        if ((b.add_prefix_space ?? false) !== tc.add_prefix_space) {
          throw new TokenizerError(
            `${configFile}: add_prefix_space ${tc.add_prefix_space} disagrees with the ByteLevel pre-tokenizer ` +
              `of ${file} (${b.add_prefix_space ?? false}); not supported`,
          );
        }
      }
    }

    // Normalize what the library requires to be present; Rust's files always have these keys.
    const libJson: Json = { ...json, added_tokens: json.added_tokens ?? [] };
    for (const k of ['normalizer', 'pre_tokenizer', 'post_processor', 'decoder']) libJson[k] = json[k] ?? null;
    // clean-up (" ." -> ".") changes decoded text; only when the model's config asks for it
    const libConfig: Json = { ...tc, clean_up_tokenization_spaces: tc.clean_up_tokenization_spaces === true };
    let lib: Tokenizer;
    try {
      lib = new Tokenizer(libJson, libConfig);
    } catch (e) {
      throw new TokenizerError(`${file}: @huggingface/tokenizers cannot load it: ${(e as Error).message}`);
    }

    const resolve = (key: 'bos_token' | 'eos_token', fallback: number | null | undefined): number | undefined => {
      const content = tokenContent(tc[key]);
      if (content === null) return undefined;
      if (content === undefined) return fallback ?? undefined;
      const id = lib.token_to_id(content);
      if (id === undefined) {
        throw new TokenizerError(`${configFile}: ${key} ${JSON.stringify(content)} is not in ${file}'s vocabulary`);
      }
      return id;
    };
    const bos = resolve('bos_token', opts.bosTokenId);
    const eos = resolve('eos_token', opts.eosTokenId);
    for (const [name, id] of [
      ['BOS', bos],
      ['EOS', eos],
    ] as const) {
      if (id !== undefined && (!isId(id) || id >= vocabSize)) {
        throw new TokenizerError(`${file}: the ${name} id ${id} is outside the vocabulary (${vocabSize} ids)`);
      }
    }

    const wrap = postProcessorWrap(json.post_processor, 'post_processor', file);
    const from: string[] = [];
    for (const [flag, id, side] of [
      ['add_bos_token', bos, 'prefix'],
      ['add_eos_token', eos, 'suffix'],
    ] as const) {
      const v = tc[flag];
      if (typeof v !== 'boolean') continue;
      if (v && id === undefined) {
        throw new TokenizerError(
          `${configFile}: ${flag} is true but the model has no ${flag === 'add_bos_token' ? 'BOS' : 'EOS'} token`,
        );
      }
      wrap[side] = v ? [id as number] : [];
      from.push(`${configFile} ${flag}`);
    }
    if (from.length < 2) from.push(`${file} post_processor`);
    return new HfTokenizer(lib, text, { vocabSize, bos, eos, wrap, from: from.join(', ') });
  }

  /** The tokenizer.json text, for writing a model directory. */
  toJson(): string {
    return this.jsonText;
  }

  tokenToId(token: string): number | undefined {
    return this.lib.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.lib.id_to_token(id);
  }

  encode(text: string, opts: HfEncodeOptions = {}): number[] {
    const ids = text.length === 0 ? [] : this.lib.encode(text, { add_special_tokens: false }).ids;
    return opts.addSpecialTokens ? [...this.prefixIds, ...ids, ...this.suffixIds] : ids;
  }

  /** Decode to text; invalid UTF-8 byte sequences become U+FFFD. Unknown ids throw a RangeError. */
  decode(ids: ArrayLike<number>, opts: HfDecodeOptions = {}): string {
    const list = Array.from(ids);
    for (const id of list) {
      if (!isId(id) || this.lib.id_to_token(id) === undefined) {
        throw new RangeError(`decode: unknown token id ${id} (vocab size ${this.vocabSize})`);
      }
    }
    // the library refuses an empty list
    if (list.length === 0) return '';
    return this.lib.decode(list, { skip_special_tokens: opts.skipSpecialTokens ?? false });
  }
}

export interface Gpt2TokenizerJsonOptions {
  /** Vocab entries to mark as special added tokens (default `['<|endoftext|>']`, where present). */
  specialTokens?: string[];
}

/**
 * Our GPT-2 tokenizer files (vocab.json + merges.txt) as the equivalent byte-level BPE
 * tokenizer.json (the layout `tokenizers` writes for GPT-2), so a shipped model can carry one.
 * The files are validated by parsing them with `Gpt2Tokenizer` first.
 */
export function gpt2TokenizerJson(vocabJson: string, mergesTxt: string, opts: Gpt2TokenizerJsonOptions = {}): Json {
  const ours = Gpt2Tokenizer.fromFiles(vocabJson, mergesTxt, opts);
  const vocab: Record<string, number> = {};
  for (let id = 0; id < ours.vocabSize; id++) {
    const tok = ours.idToToken(id);
    if (tok !== undefined) vocab[tok] = id;
  }
  // the same lines Gpt2Tokenizer.fromFiles accepted; "a b" strings, which every tokenizers version reads
  const merges = mergesTxt
    .split('\n')
    .map((raw) => (raw.endsWith('\r') ? raw.slice(0, -1) : raw))
    .filter((line, i) => line.trim() !== '' && !(i === 0 && line.startsWith('#version')));
  const specials = (opts.specialTokens ?? ['<|endoftext|>']).filter(
    (s) => s.length > 0 && ours.tokenToId(s) !== undefined,
  );
  const byteLevel = { add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: specials.map((content) => ({
      id: ours.tokenToId(content),
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', ...byteLevel },
    post_processor: { type: 'ByteLevel', ...byteLevel },
    decoder: { type: 'ByteLevel', ...byteLevel },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
}
