/**
 * writeLlamaDir / loadLlamaDir: round trips (single file, shards, F16, BF16 with the conversion
 * checked against known values) and every bad directory refused with the file and the tensor
 * named. Small random models in temporary directories.
 */
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CodedError } from '../src/coded-error';
import { gpt2TokenizerJson } from '../src/formats/hf-tokenizer';
import { bf16ToF32, f16ToF32, parseSafetensors, writeSafetensors } from '../src/formats/safetensors';
import { type LlamaConfig, parseLlamaConfig } from '../src/llama-config';
import { type LlamaWeights, llamaParameterShapes } from '../src/llama-weights';
import { f32ToBf16Bits, f32ToF16Bits, loadLlamaDir, writeLlamaDir } from '../src/node/llama-io';
import { Rng } from '../src/rng';
import { type Tensor, numel } from '../src/tensor';

const assets = (p: string) => new URL(`../../assets/${p}`, import.meta.url);
const tokenizerJson = gpt2TokenizerJson(
  readFileSync(assets('models/moby-tiny/vocab.json'), 'utf8'),
  readFileSync(assets('models/moby-tiny/merges.txt'), 'utf8'),
);

/** Small shapes; vocab_size above the tokenizer's 1024 ids, as padded real vocabularies are. */
const base = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  vocab_size: 1032,
  hidden_size: 16,
  intermediate_size: 24,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  max_position_embeddings: 64,
  rms_norm_eps: 1e-5,
  bos_token_id: 1023,
  eos_token_id: 1023,
};
const untied: LlamaConfig = parseLlamaConfig({ ...base, tie_word_embeddings: false });
const tied: LlamaConfig = parseLlamaConfig({ ...base, tie_word_embeddings: true });
const llama3: LlamaConfig = parseLlamaConfig({
  ...base,
  attention_bias: true,
  mlp_bias: true,
  head_dim: 8,
  rope_theta: 500000,
  rope_scaling: {
    rope_type: 'llama3',
    factor: 32,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position_embeddings: 16,
  },
  eos_token_id: [1023, 1022],
});
const qwen2: LlamaConfig = parseLlamaConfig({
  ...base,
  architectures: ['Qwen2ForCausalLM'],
  model_type: 'qwen2',
  tie_word_embeddings: true,
});

function randomWeights(c: LlamaConfig, seed: number): LlamaWeights {
  const rng = new Rng(seed);
  const w: LlamaWeights = new Map();
  for (const [name, shape] of llamaParameterShapes(c)) {
    const data = new Float32Array(numel(shape));
    for (let i = 0; i < data.length; i++) data[i] = rng.normal() * 0.5;
    w.set(name, { shape, data });
  }
  return w;
}

const tmpDirs: string[] = [];
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'splitllm-llama-'));
  tmpDirs.push(d);
  return d;
}
afterAll(() => {
  for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
});

function bits(t: Tensor): Uint32Array {
  return new Uint32Array(t.data.buffer, t.data.byteOffset, t.data.length);
}

function expectSameWeights(got: LlamaWeights, want: LlamaWeights): void {
  expect([...got.keys()]).toEqual([...want.keys()]);
  for (const [name, t] of want) {
    const u = got.get(name)!;
    expect(u.shape, name).toEqual(t.shape);
    expect(bits(u), name).toEqual(bits(t));
  }
}

/** What the weights become when stored as F16/BF16: the library's own decoder of our encoder. */
function rounded(w: LlamaWeights, dtype: 'F16' | 'BF16'): LlamaWeights {
  const out: LlamaWeights = new Map();
  for (const [name, t] of w) {
    const h = Uint16Array.from(t.data, (x) => (dtype === 'F16' ? f32ToF16Bits(x) : f32ToBf16Bits(x)));
    out.set(name, { shape: t.shape, data: dtype === 'F16' ? f16ToF32(h) : bf16ToF32(h) });
  }
  return out;
}

/** The error `fn` throws (failing the test when it throws none). */
function thrown(fn: () => unknown): CodedError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(CodedError);
    return e as CodedError;
  }
  throw new Error('expected an error');
}

/** A safetensors file by hand, for dtypes writeSafetensors does not write. */
function rawSafetensors(
  entries: Array<{ key: string; dtype: string; shape: number[]; bytes: Uint8Array }>,
): Uint8Array {
  const header: Record<string, unknown> = {};
  let off = 0;
  for (const e of entries) {
    header[e.key] = { dtype: e.dtype, shape: e.shape, data_offsets: [off, off + e.bytes.length] };
    off += e.bytes.length;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + off);
  new DataView(out.buffer).setUint32(0, json.length, true);
  out.set(json, 8);
  let pos = 8 + json.length;
  for (const e of entries) {
    out.set(e.bytes, pos);
    pos += e.bytes.length;
  }
  return out;
}

/** The checkpoint entries of some weights (HF keys), to rewrite a model.safetensors by hand. */
function checkpointEntries(w: LlamaWeights): Array<[string, Tensor]> {
  return [...w].map(([name, t]) => [name === 'lm_head.weight' ? name : `model.${name}`, t]);
}

describe('f32ToF16Bits / f32ToBf16Bits', () => {
  it('give the known encodings (round to nearest, ties to even)', () => {
    // expected values from numpy's float32 -> float16 cast and the bf16 bit rounding rule
    const f16: Array<[number, number]> = [
      [1, 0x3c00],
      [-2, 0xc000],
      [1 / 3, 0x3555],
      [65504, 0x7bff],
      [65520, 0x7c00], // halfway to the next binade: rounds to infinity
      [70000, 0x7c00],
      [1e-7, 0x0002], // subnormal
      [3e-8, 0x0001],
      [2.9e-8, 0x0000], // below half the smallest subnormal
      [-0, 0x8000],
      [Number.POSITIVE_INFINITY, 0x7c00],
      [1.00390625, 0x3c04],
    ];
    for (const [x, h] of f16) expect(f32ToF16Bits(x), String(x)).toBe(h);
    const bf16: Array<[number, number]> = [
      [1, 0x3f80],
      [1 / 3, 0x3eab],
      [65504, 0x4780],
      [1e-7, 0x33d7],
      [70000, 0x4789],
      [1.00390625, 0x3f80], // a tie, to even
      [1.01171875, 0x3f82], // a tie, to even
      [-0, 0x8000],
      [Number.NEGATIVE_INFINITY, 0xff80],
    ];
    for (const [x, h] of bf16) expect(f32ToBf16Bits(x), String(x)).toBe(h);
    expect(Number.isNaN(f16ToF32(Uint16Array.of(f32ToF16Bits(Number.NaN)))[0])).toBe(true);
    expect(Number.isNaN(bf16ToF32(Uint16Array.of(f32ToBf16Bits(Number.NaN)))[0])).toBe(true);
  });

  it('round-trip every 16-bit pattern and pick the nearest neighbour for random floats', () => {
    // failures are collected and compared once: 200k expect() calls would dominate the run time
    const bad: string[] = [];
    const all = new Uint16Array(65536).map((_, i) => i);
    const asF16 = f16ToF32(all);
    const asBf16 = bf16ToF32(all);
    for (let h = 0; h < 65536; h++) {
      if (!Number.isNaN(asF16[h]) && f32ToF16Bits(asF16[h]) !== h) bad.push(`f16 ${h}`);
      if (!Number.isNaN(asBf16[h]) && f32ToBf16Bits(asBf16[h]) !== h) bad.push(`bf16 ${h}`);
    }
    const rng = new Rng(7);
    const x32 = new Float32Array(1);
    for (let i = 0; i < 20000; i++) {
      x32[0] = rng.normal() * 10 ** (rng.int(12) - 6);
      const x = x32[0];
      for (const [name, enc, dec] of [
        ['f16', f32ToF16Bits, f16ToF32],
        ['bf16', f32ToBf16Bits, bf16ToF32],
      ] as const) {
        const h = enc(x);
        const [here, ...neighbours] = dec(Uint16Array.of(h, h - 1, h + 1));
        if (name === 'f16' && Math.abs(x) >= 65520) {
          // past the largest half (65504) by at least half a step: infinity
          if (here !== (x > 0 ? Number.POSITIVE_INFINITY : Number.NEGATIVE_INFINITY)) bad.push(`${name} ${x}`);
          continue;
        }
        // neighbours across zero or past the finite range are NaN or infinite: not candidates
        const nearest = neighbours.filter(Number.isFinite).every((n) => Math.abs(x - here) <= Math.abs(x - n));
        if (!Number.isFinite(here) || !nearest) bad.push(`${name} ${x} -> ${here}`);
      }
    }
    expect(bad).toEqual([]);
  });
});

describe('writeLlamaDir / loadLlamaDir round trips', () => {
  it('single model.safetensors, F32: identical, one buffer, HF keys and files', () => {
    const dir = tmp();
    const weights = randomWeights(untied, 1);
    const generationConfig = { bos_token_id: 1023, eos_token_id: 1023, do_sample: true, temperature: 0.7 };
    writeLlamaDir(dir, untied, weights, tokenizerJson, { generationConfig });
    expect(readdirSync(dir).sort()).toEqual([
      'config.json',
      'generation_config.json',
      'model.safetensors',
      'tokenizer.json',
    ]);
    const parsed = parseSafetensors(readFileSync(join(dir, 'model.safetensors')));
    expect(parsed.metadata).toEqual({ format: 'pt' });
    expect([...parsed.tensors.keys()]).toContain('model.layers.1.mlp.down_proj.weight');
    expect([...parsed.tensors.keys()]).toContain('lm_head.weight');
    expect(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'))).toMatchObject({
      model_type: 'llama',
      torch_dtype: 'float32',
      tie_word_embeddings: false,
    });

    const loaded = loadLlamaDir(dir);
    expect(loaded.dir).toBe(dir);
    expect(loaded.config).toEqual(untied);
    expectSameWeights(loaded.weights, weights);
    expect(loaded.checkpointDtypes).toEqual(['F32']);
    expect(new Set([...loaded.weights.values()].map((t) => t.data.buffer)).size).toBe(1); // views, read once
    expect(loaded.generationConfig).toEqual(generationConfig);
    expect(loaded.tokenizerConfig).toBeNull();
    expect(JSON.parse(loaded.tokenizerJson)).toEqual(tokenizerJson);
    expect(loaded.tokenizer.vocabSize).toBe(1024);
    expect(loaded.tokenizer.eosTokenId).toBe(1023); // from config.json, as tokenizer_config.json is absent
    expect(loaded.tokenizer.decode(loaded.tokenizer.encode('Call me Ishmael.'))).toBe('Call me Ishmael.');
  });

  it('shards with an index: identical; rewriting switches layouts without stale files', () => {
    const dir = tmp();
    const weights = randomWeights(llama3, 2);
    writeLlamaDir(dir, llama3, weights, tokenizerJson, { maxShardBytes: 40_000 });
    const shards = readdirSync(dir).filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f));
    expect(shards.length).toBeGreaterThan(2);
    expect(existsSync(join(dir, 'model.safetensors'))).toBe(false);
    const index = JSON.parse(readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8'));
    expect(new Set(Object.values(index.weight_map))).toEqual(new Set(shards));
    const totalBytes = llamaParameterShapes(llama3).reduce((s, [, shape]) => s + 4 * numel(shape), 0);
    expect(index.metadata.total_size).toBe(totalBytes);

    const loaded = loadLlamaDir(dir);
    expect(loaded.config).toEqual(llama3);
    expectSameWeights(loaded.weights, weights);
    expect(new Set([...loaded.weights.values()].map((t) => t.data.buffer)).size).toBe(shards.length);

    writeLlamaDir(dir, llama3, weights, tokenizerJson);
    expect(readdirSync(dir).sort()).toEqual(['config.json', 'model.safetensors', 'tokenizer.json']);
    writeLlamaDir(dir, llama3, weights, tokenizerJson, { maxShardBytes: 100_000 });
    const fewer = readdirSync(dir).filter((f) => f.startsWith('model-'));
    expect(fewer.length).toBeLessThan(shards.length);
    expect(fewer.every((f) => f.endsWith(`-of-${String(fewer.length).padStart(5, '0')}.safetensors`))).toBe(true);
    expectSameWeights(loadLlamaDir(dir).weights, weights);
  });

  it.each(['F16', 'BF16'] as const)('%s: stored at half the size, read back as the rounded values', (dtype) => {
    const dir = tmp();
    const weights = randomWeights(qwen2, 3);
    // known values in the first entries of the final norm
    const probe = [1 / 3, 65504, 1e-7, 70000, -0, 1.01171875];
    weights.get('norm.weight')!.data.set(probe);
    writeLlamaDir(dir, qwen2, weights, tokenizerJson, { dtype, maxShardBytes: 30_000 });
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    expect(config.torch_dtype).toBe(dtype === 'F16' ? 'float16' : 'bfloat16');
    const loaded = loadLlamaDir(dir);
    expect(loaded.checkpointDtypes).toEqual([dtype]);
    expect(loaded.config).toEqual(qwen2);
    expectSameWeights(loaded.weights, rounded(weights, dtype));
    const want =
      dtype === 'F16'
        ? [0.333251953125, 65504, 1.1920928955078125e-7, Number.POSITIVE_INFINITY, -0, 1.01171875]
        : [0.333984375, 65536, 1.0011717677116394e-7, 70144, -0, 1.015625];
    expect(Array.from(loaded.weights.get('norm.weight')!.data.subarray(0, probe.length))).toEqual(want);
    // Qwen2's q/k/v biases made it through
    expect(loaded.weights.has('layers.1.self_attn.k_proj.bias')).toBe(true);
  });

  it('writes and applies tokenizer_config.json', () => {
    const dir = tmp();
    const tokenizerConfig = { bos_token: '<|endoftext|>', eos_token: '<|endoftext|>', add_bos_token: true };
    writeLlamaDir(dir, tied, randomWeights(tied, 4), tokenizerJson, { tokenizerConfig });
    const loaded = loadLlamaDir(dir);
    expect(loaded.tokenizerConfig).toEqual(tokenizerConfig);
    expect(loaded.tokenizer.encode('hi', { addSpecialTokens: true })[0]).toBe(1023);
    // rewritten without one: the old file would still add BOS, so it goes
    writeLlamaDir(dir, tied, randomWeights(tied, 4), tokenizerJson);
    expect(existsSync(join(dir, 'tokenizer_config.json'))).toBe(false);
    const plain = loadLlamaDir(dir).tokenizer;
    expect(plain.encode('hi', { addSpecialTokens: true })).toEqual(plain.encode('hi'));
    expect(plain.encode('hi')).not.toContain(1023);
  });

  it('a tied checkpoint that still carries lm_head equal to the embedding loads without it', () => {
    const dir = tmp();
    const weights = randomWeights(tied, 5);
    writeLlamaDir(dir, tied, weights, tokenizerJson);
    const entries = checkpointEntries(weights);
    const embed = weights.get('embed_tokens.weight')!;
    entries.push(['lm_head.weight', { shape: embed.shape, data: embed.data.slice() }]);
    // and the inverse-frequency buffers older transformers saved
    entries.push(['model.layers.0.self_attn.rotary_emb.inv_freq', { shape: [2], data: Float32Array.of(1, 0.01) }]);
    writeFileSync(join(dir, 'model.safetensors'), writeSafetensors(entries, { format: 'pt' }));
    const loaded = loadLlamaDir(dir);
    expectSameWeights(loaded.weights, weights);
    expect(loaded.weights.has('lm_head.weight')).toBe(false);
    // copied out, so the dropped tensors' bytes are not kept alive by views
    const fileSize = readFileSync(join(dir, 'model.safetensors')).byteLength;
    expect(embed.data.byteLength).toBeLessThan(fileSize);
    expect(loaded.weights.get('embed_tokens.weight')!.data.buffer.byteLength).toBe(embed.data.byteLength);
  });
});

describe('bad directories: one clear error naming the file and the tensor', () => {
  function goodDir(c: LlamaConfig = untied, opts: Parameters<typeof writeLlamaDir>[4] = {}) {
    const dir = tmp();
    const weights = randomWeights(c, 9);
    writeLlamaDir(dir, c, weights, tokenizerJson, opts);
    return { dir, weights };
  }
  function shardedDir() {
    const d = goodDir(untied, { maxShardBytes: 40_000 });
    const indexPath = join(d.dir, 'model.safetensors.index.json');
    const index = JSON.parse(readFileSync(indexPath, 'utf8')) as { weight_map: Record<string, string> };
    return { ...d, indexPath, index };
  }

  it('missing config.json, tokenizer.json or weights', () => {
    for (const file of ['config.json', 'tokenizer.json']) {
      const { dir } = goodDir();
      unlinkSync(join(dir, file));
      const e = thrown(() => loadLlamaDir(dir));
      expect(e.code).toBe('MODEL_IO_MISSING_FILE');
      expect(e.message).toBe(`model directory ${dir} has no ${file}`);
    }
    const { dir } = goodDir();
    unlinkSync(join(dir, 'model.safetensors'));
    const e = thrown(() => loadLlamaDir(dir));
    expect(e.code).toBe('MODEL_IO_MISSING_FILE');
    expect(e.message).toMatch(/has neither model\.safetensors nor model\.safetensors\.index\.json/);
  });

  it('a config.json with an unsupported setting', () => {
    const { dir } = goodDir();
    const path = join(dir, 'config.json');
    writeFileSync(path, JSON.stringify({ ...JSON.parse(readFileSync(path, 'utf8')), use_sliding_window: true }));
    const e = thrown(() => loadLlamaDir(dir));
    expect(e.code).toBe('MODEL_IO_BAD_FILE');
    expect(e.message).toMatch(`${path}: "use_sliding_window" is true`);
    writeFileSync(path, '{');
    expect(thrown(() => loadLlamaDir(dir)).message).toMatch(`${path} is not valid JSON`);
  });

  it('an unsupported tokenizer.json, or one with more ids than the embedding', () => {
    const { dir } = goodDir();
    const path = join(dir, 'tokenizer.json');
    const bad = { ...tokenizerJson, model: { ...(tokenizerJson.model as object), type: 'WordLevel' } };
    writeFileSync(path, JSON.stringify(bad));
    expect(thrown(() => loadLlamaDir(dir)).message).toMatch(`${path}: model.type "WordLevel" is not supported`);

    const small = parseLlamaConfig({ ...base, vocab_size: 1000, bos_token_id: 0, eos_token_id: 0 });
    expect(() => writeLlamaDir(tmp(), small, randomWeights(small, 1), tokenizerJson)).toThrow(/1024 ids/);
    writeFileSync(path, JSON.stringify(tokenizerJson));
    const configPath = join(dir, 'config.json');
    const smaller = {
      ...JSON.parse(readFileSync(configPath, 'utf8')),
      vocab_size: 1000,
      bos_token_id: 0,
      eos_token_id: 0,
    };
    writeFileSync(configPath, JSON.stringify(smaller));
    expect(thrown(() => loadLlamaDir(dir)).message).toMatch(
      `${path}: has 1024 token ids, more than the vocab_size 1000 of ${configPath}`,
    );
  });

  it('a missing shard', () => {
    const { dir, index, indexPath } = shardedDir();
    const [key, shard] = Object.entries(index.weight_map).at(-1)!;
    unlinkSync(join(dir, shard));
    const e = thrown(() => loadLlamaDir(dir));
    expect(e.code).toBe('MODEL_IO_MISSING_FILE');
    expect(e.message).toContain(`${indexPath}: shard "${shard}" (holding "`);
    expect(e.message).toContain(`is missing from ${dir}`);
    expect(Object.entries(index.weight_map).some(([k, s]) => s === shard && e.message.includes(k))).toBe(true);
    expect(key).toBe('lm_head.weight');
  });

  it('a shard whose tensors do not match the index', () => {
    // the index moves a tensor to another shard: the shard holding it holds one it should not
    const a = shardedDir();
    const entries = Object.entries(a.index.weight_map);
    const other = [...new Set(entries.map(([, s]) => s))].sort().at(-1)!; // read last
    // a tensor from an earlier shard that keeps others, so that this shard stays in the index
    const [key, shard] = entries.find(([k, s]) => s !== other && entries.some(([k2, s2]) => s2 === s && k2 !== k))!;
    writeFileSync(a.indexPath, JSON.stringify({ weight_map: { ...a.index.weight_map, [key]: other } }));
    const e = thrown(() => loadLlamaDir(a.dir));
    expect(e.code).toBe('MODEL_IO_BAD_FILE');
    expect(e.message).toBe(
      `${join(a.dir, shard)}: holds tensor "${key}", which model.safetensors.index.json does not put in this shard`,
    );

    // a shard rewritten without one of its tensors
    const b = shardedDir();
    const [lostKey, lostShard] = Object.entries(b.index.weight_map).find(([k]) => k.includes('layers.1.mlp'))!;
    const kept = checkpointEntries(b.weights).filter(([k]) => b.index.weight_map[k] === lostShard && k !== lostKey);
    writeFileSync(join(b.dir, lostShard), writeSafetensors(kept, { format: 'pt' }));
    expect(thrown(() => loadLlamaDir(b.dir)).message).toBe(
      `${join(b.dir, lostShard)}: lacks tensor "${lostKey}", which model.safetensors.index.json puts in this shard`,
    );
  });

  it('an index that misses a tensor, lists an unknown one, or points outside the directory', () => {
    const a = shardedDir();
    const { 'model.norm.weight': _, ...rest } = a.index.weight_map;
    writeFileSync(a.indexPath, JSON.stringify({ weight_map: rest }));
    expect(thrown(() => loadLlamaDir(a.dir)).message).toBe(
      `${a.indexPath}: tensor "model.norm.weight" is missing from weight_map`,
    );
    const first = Object.values(a.index.weight_map)[0];
    writeFileSync(
      a.indexPath,
      JSON.stringify({ weight_map: { ...a.index.weight_map, 'model.layers.2.x.weight': first } }),
    );
    expect(thrown(() => loadLlamaDir(a.dir)).message).toContain(
      `${a.indexPath}: unexpected tensor "model.layers.2.x.weight"`,
    );
    writeFileSync(a.indexPath, JSON.stringify({ weight_map: { ...a.index.weight_map, 'model.norm.weight': '../x' } }));
    expect(thrown(() => loadLlamaDir(a.dir)).message).toContain(`tensor "model.norm.weight" is mapped to "../x"`);
    writeFileSync(a.indexPath, JSON.stringify({ weights: {} }));
    expect(thrown(() => loadLlamaDir(a.dir)).message).toContain('"weight_map" must be an object');
  });

  it('a tensor of the wrong shape', () => {
    const { dir, weights } = goodDir();
    const entries = checkpointEntries(weights).map(([k, t]): [string, Tensor] =>
      k === 'model.layers.1.self_attn.k_proj.weight' ? [k, { shape: [16, 8], data: t.data }] : [k, t],
    );
    writeFileSync(join(dir, 'model.safetensors'), writeSafetensors(entries));
    const e = thrown(() => loadLlamaDir(dir));
    expect(e.message).toBe(
      `${join(dir, 'model.safetensors')}: tensor "model.layers.1.self_attn.k_proj.weight" is [16, 8], expected [8, 16]`,
    );
  });

  it('a tensor of an unsupported dtype', () => {
    const { dir, weights } = goodDir();
    const entries = checkpointEntries(weights).map(([key, t]) => {
      const bytes = new Uint8Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.byteLength));
      // the same bytes, declared as int32: a quantized or mislabelled tensor
      return { key, dtype: key === 'model.norm.weight' ? 'I32' : 'F32', shape: t.shape, bytes };
    });
    writeFileSync(join(dir, 'model.safetensors'), rawSafetensors(entries));
    expect(thrown(() => loadLlamaDir(dir)).message).toBe(
      `${join(dir, 'model.safetensors')}: tensor "model.norm.weight" has dtype I32; only F32, F16, BF16 are supported`,
    );
  });

  it('a missing tensor, an unexpected tensor, a corrupt file', () => {
    const { dir, weights } = goodDir();
    const path = join(dir, 'model.safetensors');
    const entries = checkpointEntries(weights);
    writeFileSync(path, writeSafetensors(entries.filter(([k]) => k !== 'model.layers.0.input_layernorm.weight')));
    expect(thrown(() => loadLlamaDir(dir)).message).toBe(
      `${path}: missing tensor "model.layers.0.input_layernorm.weight"`,
    );

    const extra: [string, Tensor] = ['model.layers.0.mlp.up_proj.bias', { shape: [24], data: new Float32Array(24) }];
    writeFileSync(path, writeSafetensors([...entries, extra]));
    expect(thrown(() => loadLlamaDir(dir)).message).toMatch(
      new RegExp(`^${path}: unexpected tensor "model\\.layers\\.0\\.mlp\\.up_proj\\.bias" for this llama config`),
    );

    const good = writeSafetensors(entries);
    writeFileSync(path, good.subarray(0, good.length - 10));
    const e = thrown(() => loadLlamaDir(dir));
    expect(e.code).toMatch(/^SAFETENSORS_/);
    expect(e.message.startsWith(`${path}: safetensors:`)).toBe(true);
  });

  it('an lm_head that differs from the embedding it is tied to', () => {
    const { dir, weights } = goodDir(tied);
    const embed = weights.get('embed_tokens.weight')!;
    const head = embed.data.slice();
    head[5] += 1;
    const entries = [
      ...checkpointEntries(weights),
      ['lm_head.weight', { shape: embed.shape, data: head }] as [string, Tensor],
    ];
    writeFileSync(join(dir, 'model.safetensors'), writeSafetensors(entries));
    expect(thrown(() => loadLlamaDir(dir)).message).toBe(
      `${join(dir, 'model.safetensors')}: tensor "lm_head.weight" differs from "model.embed_tokens.weight", ` +
        'but config.json ties them (tie_word_embeddings: true); set it to false to keep a separate head',
    );
  });

  it('writeLlamaDir refuses weights that do not fit the config, before writing anything', () => {
    const dir = join(tmp(), 'out');
    const w = randomWeights(untied, 1);
    w.delete('norm.weight');
    expect(() => writeLlamaDir(dir, untied, w, tokenizerJson)).toThrow(
      'writeLlamaDir: weight "norm.weight" is missing',
    );
    const w2 = randomWeights(untied, 1);
    w2.set('layers.0.mlp.up_proj.bias', { shape: [24], data: new Float32Array(24) });
    expect(() => writeLlamaDir(dir, untied, w2, tokenizerJson)).toThrow(
      /unexpected weight "layers\.0\.mlp\.up_proj\.bias"/,
    );
    const w3 = randomWeights(untied, 1);
    w3.get('norm.weight')!.shape = [8, 2];
    expect(() => writeLlamaDir(dir, untied, w3, tokenizerJson)).toThrow(/"norm\.weight" is \[8, 2\]/);
    expect(existsSync(dir)).toBe(false);
  });
});
