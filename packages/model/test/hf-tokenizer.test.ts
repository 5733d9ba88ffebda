/**
 * HfTokenizer (tokenizer.json through @huggingface/tokenizers) and gpt2TokenizerJson: the
 * shipped GPT-2 tokenizer converted to tokenizer.json encodes text to exactly our ids, the
 * model's BOS/EOS are added as its files say, and unsupported tokenizer.json parts are refused
 * by name.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Tokenizer } from '@huggingface/tokenizers';
import { describe, expect, it } from 'vitest';
import { HfTokenizer, gpt2TokenizerJson } from '../src/formats/hf-tokenizer';
import { Gpt2Tokenizer, TokenizerError } from '../src/formats/tokenizer';

const assets = (p: string) => fileURLToPath(new URL(`../../assets/${p}`, import.meta.url));
const vocabJson = readFileSync(assets('models/moby-tiny/vocab.json'), 'utf8');
const mergesTxt = readFileSync(assets('models/moby-tiny/merges.txt'), 'utf8');
const ours = Gpt2Tokenizer.fromFiles(vocabJson, mergesTxt);
const shippedJson = gpt2TokenizerJson(vocabJson, mergesTxt);

/** The parts of a tokenizer.json the refusal cases edit. */
interface TokJson {
  model: Record<string, unknown>;
  added_tokens: Array<Record<string, unknown>>;
  [part: string]: unknown;
}

/** A deep copy to edit. */
function copy<T>(v: T): T {
  return JSON.parse(JSON.stringify(v)) as T;
}

const TRICKY = [
  '',
  ' ',
  '   ',
  'Call me Ishmael.',
  '  two leading spaces, two trailing  ',
  'line one\nline two\n\n\nafter blank lines\n',
  'windows\r\nline ends\r\n',
  'tabs\tand\t\ttabs',
  "contractions: don't, I'm, we've, they'll, she'd, it's, you're",
  'CAPS and 1234567890 digits and 3.14159',
  'punctuation!!! ??? ... --- (brackets) [and] {braces}',
  'unicode: café naïve Ærøskøbing Ελληνικά Русский 中文 日本語 한국어',
  'emoji 🐳🐋 and a ZWJ family 👨‍👩‍👧 and flags 🇫🇷',
  'combining e\u0301 and a BOM \ufeff inside',
  '<|endoftext|>',
  'before<|endoftext|>after',
  ' <|endoftext|> spaced <|endoftext|><|endoftext|>',
  '<|endoftext',
  'endoftext|> <|endof text|>',
];

describe('gpt2TokenizerJson: the shipped GPT-2 tokenizer as tokenizer.json', () => {
  const paragraphs = [
    readFileSync(assets('data/moby-dick/heldout.txt'), 'utf8'),
    ...[1, 2, 3, 4].map((u) => readFileSync(assets(`data/sotu/train/user-${u}.txt`), 'utf8').slice(0, 20000)),
  ];

  it('has the tokenizers layout: ByteLevel BPE, <|endoftext|> a special added token', () => {
    const model = shippedJson.model as Record<string, unknown>;
    expect(model.type).toBe('BPE');
    expect(Object.keys(model.vocab as object).length).toBe(ours.vocabSize);
    expect((model.merges as string[]).length).toBe(mergesTxt.trim().split('\n').length - 1); // less #version
    expect(shippedJson.pre_tokenizer).toMatchObject({ type: 'ByteLevel', add_prefix_space: false });
    expect(shippedJson.added_tokens).toEqual([
      expect.objectContaining({ id: ours.eotId, content: '<|endoftext|>', special: true }),
    ]);
  });

  it('@huggingface/tokenizers itself gives exactly our ids on the data and on tricky strings', () => {
    const lib = new Tokenizer(copy(shippedJson), {});
    let tokens = 0;
    for (const text of [...paragraphs, ...TRICKY]) {
      const want = ours.encode(text);
      const got = text === '' ? [] : lib.encode(text, { add_special_tokens: false }).ids;
      expect(got, JSON.stringify(text.slice(0, 60))).toEqual(want);
      tokens += want.length;
    }
    expect(tokens).toBeGreaterThan(40000); // the comparison covered real text, not a handful of ids
  });

  it('HfTokenizer encodes and decodes like Gpt2Tokenizer', () => {
    const hf = HfTokenizer.fromJson(shippedJson, null, { bosTokenId: ours.eotId, eosTokenId: ours.eotId });
    expect(hf.vocabSize).toBe(ours.vocabSize);
    expect(hf.eotId).toBe(ours.eotId);
    expect(hf.specialTokensFrom).toBe('tokenizer.json post_processor');
    for (const text of [...paragraphs, ...TRICKY]) {
      const ids = hf.encode(text);
      expect(ids).toEqual(ours.encode(text));
      // byte-level BPE is lossless: both decode back to the text
      expect(hf.decode(ids)).toBe(text);
      expect(hf.decode(ids)).toBe(ours.decode(ids));
      // the ByteLevel post-processor adds nothing
      expect(hf.encode(text, { addSpecialTokens: true })).toEqual(ids);
    }
    expect(hf.decode(hf.encode('a<|endoftext|>b'), { skipSpecialTokens: true })).toBe('ab');
    expect(hf.tokenToId('<|endoftext|>')).toBe(ours.eotId);
    expect(hf.idToToken(ours.tokenToId('Ġthe')!)).toBe('Ġthe');
    expect(JSON.parse(hf.toJson())).toEqual(shippedJson);
  });

  it('refuses GPT-2 files our tokenizer refuses', () => {
    expect(() => gpt2TokenizerJson('{"a": 0}', '')).toThrow(TokenizerError);
  });
});

/** The shipped tokenizer plus Llama 3's two specials and its post-processor (BOS before the text). */
function llama3Style(): Record<string, unknown> {
  const json = copy(shippedJson);
  const added = json.added_tokens as Array<Record<string, unknown>>;
  const special = (id: number, content: string) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  added.push(special(1024, '<|begin_of_text|>'), special(1025, '<|end_of_text|>'));
  json.post_processor = {
    type: 'Sequence',
    processors: [
      { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
      {
        type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
        pair: [
          { SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } },
          { Sequence: { id: 'A', type_id: 0 } },
          { SpecialToken: { id: '<|begin_of_text|>', type_id: 1 } },
          { Sequence: { id: 'B', type_id: 1 } },
        ],
        special_tokens: {
          '<|begin_of_text|>': { id: '<|begin_of_text|>', ids: [1024], tokens: ['<|begin_of_text|>'] },
        },
      },
    ],
  };
  return json;
}

/**
 * A Llama 2 / TinyLlama-style tokenizer.json, small: sentencepiece BPE with byte fallback, "▁"
 * for spaces via the normalizer, <s> added by the post-processor, the decoder chain undoing it.
 */
function llama2Style(): Record<string, unknown> {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  for (const piece of ['▁', 'h', 'e', 'l', 'o', '▁h', 'll', '▁he', '▁hell', '▁hello', 'w', 'r', 'd']) {
    vocab[piece] = Object.keys(vocab).length;
  }
  const added = ['<unk>', '<s>', '</s>'].map((content, id) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: '▁' },
        { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: '<s>', type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '<s>', type_id: 1 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: ['▁ h', 'l l', '▁h e', '▁he ll', '▁hell o'],
    },
  };
}

describe('BOS/EOS as the model says', () => {
  it('takes the post-processor template (Llama 3) and agrees with the library', () => {
    const json = llama3Style();
    const hf = HfTokenizer.fromJson(json, null, { bosTokenId: 1024, eosTokenId: 1025 });
    expect(hf.vocabSize).toBe(1026);
    expect(hf.prefixIds).toEqual([1024]);
    expect(hf.suffixIds).toEqual([]);
    const text = 'Call me Ishmael.';
    expect(hf.encode(text, { addSpecialTokens: true })).toEqual([1024, ...ours.encode(text)]);
    expect(hf.encode(text)).toEqual(ours.encode(text));
    const lib = new Tokenizer(copy(json), {});
    expect(hf.encode(text, { addSpecialTokens: true })).toEqual(lib.encode(text).ids);
    // specials written in the text are single tokens
    expect(hf.encode('<|begin_of_text|>hi<|end_of_text|>')).toEqual([1024, ...ours.encode('hi'), 1025]);
  });

  it('lets tokenizer_config add_bos_token / add_eos_token override the template', () => {
    const tc = {
      bos_token: '<|begin_of_text|>',
      eos_token: '<|end_of_text|>',
      add_bos_token: false,
      add_eos_token: true,
    };
    const hf = HfTokenizer.fromJson(llama3Style(), tc);
    expect(hf.bosTokenId).toBe(1024);
    expect(hf.eosTokenId).toBe(1025);
    expect(hf.encode('hi', { addSpecialTokens: true })).toEqual([...ours.encode('hi'), 1025]);
    expect(hf.specialTokensFrom).toBe('tokenizer_config.json add_bos_token, tokenizer_config.json add_eos_token');
    // only one flag: the other side keeps the template's
    const bosOnly = HfTokenizer.fromJson(llama3Style(), { ...tc, add_bos_token: undefined });
    expect(bosOnly.encode('hi', { addSpecialTokens: true })).toEqual([1024, ...ours.encode('hi'), 1025]);
  });

  it('runs a Llama 2 style tokenizer: byte fallback, "▁" spaces, <s> from add_bos_token', () => {
    const tc = { bos_token: '<s>', eos_token: '</s>', add_bos_token: true, add_eos_token: false, legacy: false };
    const hf = HfTokenizer.fromJson(llama2Style(), tc);
    const byte = (b: number) => 3 + b;
    // "▁hello" merges whole; "é" is not in the vocab: its two UTF-8 bytes
    expect(hf.encode('hello world hé')).toEqual([268, 259, 269, 263, 270, 262, 271, 264, byte(0xc3), byte(0xa9)]);
    expect(hf.encode('hello', { addSpecialTokens: true })).toEqual([1, 268]);
    expect(hf.decode(hf.encode('hello world hé'))).toBe('hello world hé');
    expect(hf.decode([1, 268, 2], { skipSpecialTokens: true })).toBe('hello');
    expect(hf.bosTokenId).toBe(1);
    expect(hf.eosTokenId).toBe(2);
    const both = HfTokenizer.fromJson(llama2Style(), { ...tc, add_eos_token: true });
    expect(both.encode('hello', { addSpecialTokens: true })).toEqual([1, 268, 2]);
  });

  it('reads Bert/Roberta cls and sep', () => {
    const json = copy(shippedJson);
    json.post_processor = {
      type: 'RobertaProcessing',
      cls: ['<|endoftext|>', ours.eotId],
      sep: ['<|endoftext|>', ours.eotId],
    };
    const hf = HfTokenizer.fromJson(json);
    expect(hf.encode('hi', { addSpecialTokens: true })).toEqual([ours.eotId, ...ours.encode('hi'), ours.eotId]);
  });

  it("takes BOS/EOS from tokenizer_config, else from the model's config; null means none", () => {
    const json = llama3Style();
    expect(HfTokenizer.fromJson(json).bosTokenId).toBeUndefined();
    expect(HfTokenizer.fromJson(json, null, { bosTokenId: 1024 }).bosTokenId).toBe(1024);
    const tc = { bos_token: null, eos_token: { content: '<|end_of_text|>', special: true } };
    const hf = HfTokenizer.fromJson(json, JSON.stringify(tc), { bosTokenId: 1024, eosTokenId: 0 });
    expect(hf.bosTokenId).toBeUndefined();
    expect(hf.eosTokenId).toBe(1025);
  });

  it('refuses BOS/EOS settings it cannot honour, naming tokenizer_config.json', () => {
    expect(() => HfTokenizer.fromJson(llama3Style(), { bos_token: null, add_bos_token: true })).toThrow(
      /tokenizer_config\.json: add_bos_token is true but the model has no BOS token/,
    );
    expect(() => HfTokenizer.fromJson(llama3Style(), { eos_token: '<|nope|>' })).toThrow(
      /tokenizer_config\.json: eos_token "<\|nope\|>" is not in tokenizer\.json's vocabulary/,
    );
    expect(() => HfTokenizer.fromJson(llama3Style(), null, { eosTokenId: 5000 })).toThrow(/EOS id 5000/);
  });
});

describe('decode', () => {
  const hf = HfTokenizer.fromJson(shippedJson);
  it('decodes nothing to nothing and refuses unknown ids', () => {
    expect(hf.decode([])).toBe('');
    expect(() => hf.decode([ours.vocabSize])).toThrow(RangeError);
    expect(() => hf.decode([-1])).toThrow(RangeError);
    expect(() => hf.decode([1.5])).toThrow(RangeError);
  });
  it('follows clean_up_tokenization_spaces only when tokenizer_config asks', () => {
    const ids = ours.encode('a , b .');
    expect(hf.decode(ids)).toBe('a , b .');
    expect(HfTokenizer.fromJson(shippedJson, { clean_up_tokenization_spaces: true }).decode(ids)).toBe('a, b.');
  });
});

describe('unsupported tokenizer.json parts are refused by name', () => {
  const cases: Array<[string, (j: TokJson) => void, RegExp]> = [
    ['a WordLevel model', (j) => (j.model.type = 'WordLevel'), /model\.type "WordLevel" is not supported/],
    ['a model without a type', (j) => delete j.model.type, /model\.type undefined is not supported/],
    ['a ByteLevel normalizer', (j) => (j.normalizer = { type: 'ByteLevel' }), /normalizer\.type "ByteLevel"/],
    [
      'an unknown pre-tokenizer inside a Sequence',
      (j) => (j.pre_tokenizer = { type: 'Sequence', pretokenizers: [j.pre_tokenizer, { type: 'UnicodeScripts' }] }),
      /pre_tokenizer\.pretokenizers\[1\]\.type "UnicodeScripts"/,
    ],
    [
      'a Split behaviour the library ignores',
      (j) =>
        (j.pre_tokenizer = {
          type: 'Split',
          pattern: { Regex: '\\s+' },
          behavior: 'MergedWithPrevious',
          invert: false,
        }),
      /pre_tokenizer\.behavior "MergedWithPrevious"/,
    ],
    [
      'a Split without a pattern',
      (j) => (j.pre_tokenizer = { type: 'Split', pattern: {}, behavior: 'Isolated' }),
      /pre_tokenizer\.pattern/,
    ],
    ['BPE dropout', (j) => (j.model.dropout = 0.1), /model\.dropout 0\.1/],
    [
      'a continuing-subword prefix',
      (j) => (j.model.continuing_subword_prefix = '##'),
      /continuing_subword_prefix "##"/,
    ],
    [
      'a single_word added token',
      (j) => (j.added_tokens[0].single_word = true),
      /added_tokens\[0\]\.single_word \(token "<\|endoftext\|>"\)/,
    ],
    ['an unknown post-processor', (j) => (j.post_processor = { type: 'Magic' }), /post_processor\.type "Magic"/],
    [
      'an unknown decoder in a Sequence',
      (j) => (j.decoder = { type: 'Sequence', decoders: [{ type: 'Fancy' }] }),
      /decoder\.decoders\[0\]\.type "Fancy"/,
    ],
    ['a vocab that is not an object', (j) => (j.model.vocab = []), /model\.vocab/],
    ['a broken added token', (j) => (j.added_tokens[0].id = 'x'), /added_tokens\[0\]/],
  ];
  it.each(cases)('%s', (_, edit, message) => {
    const json = copy(shippedJson) as TokJson;
    edit(json);
    let err: unknown;
    try {
      HfTokenizer.fromJson(json, null, { file: '/m/tokenizer.json' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(TokenizerError);
    expect((err as Error).message).toMatch(/^\/m\/tokenizer\.json: /);
    expect((err as Error).message).toMatch(message);
  });

  it('refuses add_prefix_space that disagrees with the pre-tokenizer', () => {
    expect(() => HfTokenizer.fromJson(shippedJson, { add_prefix_space: true })).toThrow(
      /tokenizer_config\.json: add_prefix_space true disagrees with the ByteLevel pre-tokenizer/,
    );
    expect(HfTokenizer.fromJson(shippedJson, { add_prefix_space: false }).encode('hi')).toEqual(ours.encode('hi'));
  });

  it('refuses files that are not JSON objects, and reports what the library refuses', () => {
    expect(() => HfTokenizer.fromJson('{', null)).toThrow(/tokenizer\.json: not valid JSON/);
    expect(() => HfTokenizer.fromJson('[]', null)).toThrow(/tokenizer\.json: expected a JSON object/);
    expect(() => HfTokenizer.fromJson(shippedJson, '7')).toThrow(/tokenizer_config\.json: expected a JSON object/);
    const json = copy(shippedJson) as TokJson;
    json.pre_tokenizer = { type: 'Split', pattern: { Regex: '[z-a]' }, behavior: 'Isolated' };
    expect(() => HfTokenizer.fromJson(json)).toThrow(/tokenizer\.json: @huggingface\/tokenizers cannot load it/);
  });
});
