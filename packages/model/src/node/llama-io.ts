/**
 * Node-only file I/O for a Hugging Face LLaMA-family model directory (`LlamaForCausalLM`,
 * `Qwen2ForCausalLM`): config.json, the weights in model.safetensors or in shards listed by
 * model.safetensors.index.json, tokenizer.json (+ tokenizer_config.json) and, when present,
 * generation_config.json.
 *
 * Loading returns everything or throws: cheap checks first (config, tokenizer, the index against
 * the expected tensors, every shard present), then one shard at a time is read, checked against
 * the index, the expected shapes and the dtypes, and converted to float32; a shard's buffer is
 * dropped before the next is read. F32 tensors stay views into their shard's buffer (as in
 * `loadGpt2Dir`: the file is held once), unless the shard also holds tensors we drop, whose bytes
 * the views would keep alive; F16/BF16 tensors become fresh Float32Arrays. Every error names the
 * file and, where there is one, the tensor.
 *
 * A tied checkpoint (`tie_word_embeddings: true`) that still carries `lm_head.weight` is accepted
 * when that tensor equals the embedding bit for bit (transformers re-ties it on load, so the copy
 * is redundant) and dropped; when it differs the directory is refused, because the file
 * contradicts its config and transformers would silently use the embedding instead.
 * `model.layers.*.self_attn.rotary_emb.inv_freq` buffers (saved by older transformers) are
 * ignored as transformers ignores them: the frequencies come from the config.
 *
 * Also a LLaMA-family LoRA adapter directory in PEFT layout (saveLlamaAdapterDir /
 * loadLlamaAdapterDir; the format is formats/peft-llama.ts).
 */
import { readFileSync, readdirSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { CodedError } from '../coded-error';
import { HfTokenizer } from '../formats/hf-tokenizer';
import { PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, PeftError } from '../formats/peft';
import { type LlamaAdapterToPeftOptions, llamaAdapterFromPeft, llamaAdapterToPeft } from '../formats/peft-llama';
import { type SafetensorInfo, parseSafetensors, readSafetensors } from '../formats/safetensors';
import { type LlamaConfig, llamaConfigToJson, parseLlamaConfig } from '../llama-config';
import type { LlamaLoraAdapter } from '../llama-lora';
import { type LlamaWeights, llamaParameterShapes } from '../llama-weights';
import { type Tensor, numel, sameShape } from '../tensor';
import { ModelIoError, readFileBytes, writeFileAtomic } from './model-io';

export const LLAMA_DIR_FILES = {
  config: 'config.json',
  weights: 'model.safetensors',
  index: 'model.safetensors.index.json',
  tokenizer: 'tokenizer.json',
  tokenizerConfig: 'tokenizer_config.json',
  generationConfig: 'generation_config.json',
} as const;

/** The dtypes a LLaMA checkpoint may store its weights in; all are read as float32. */
export type LlamaCheckpointDtype = 'F32' | 'F16' | 'BF16';
const DTYPES: readonly string[] = ['F32', 'F16', 'BF16'];
const DTYPE_BYTES: Record<LlamaCheckpointDtype, number> = { F32: 4, F16: 2, BF16: 2 };
const TORCH_DTYPE: Record<LlamaCheckpointDtype, string> = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' };

const LM_HEAD = 'lm_head.weight';
const EMBED = 'model.embed_tokens.weight';
const IGNORED_BUFFER_RE = /^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/;
/** Shard names as transformers writes them; stale ones are removed when a directory is rewritten. */
const SHARD_NAME_RE = /^model-\d{5}-of-\d{5}\.safetensors$/;

export interface LlamaDir {
  dir: string;
  config: LlamaConfig;
  /** float32, keyed without the `model.` prefix (see llama-weights.ts), in Hugging Face order */
  weights: LlamaWeights;
  tokenizer: HfTokenizer;
  /** tokenizer.json as read, for writing the directory back */
  tokenizerJson: string;
  tokenizerConfig: Record<string, unknown> | null;
  generationConfig: Record<string, unknown> | null;
  /** The dtypes the checkpoint stored its weights in (the weights above are float32 regardless). */
  checkpointDtypes: LlamaCheckpointDtype[];
}

export interface WriteLlamaDirOptions {
  /** Storage dtype of the weights (default F32); F16/BF16 round to nearest, ties to even. */
  dtype?: LlamaCheckpointDtype;
  /**
   * Split the weights into shards of at most this many tensor bytes (a larger tensor gets a
   * shard of its own), listed by model.safetensors.index.json. Default: one model.safetensors.
   */
  maxShardBytes?: number;
  /** Written as tokenizer_config.json (its BOS/EOS settings then apply on load). */
  tokenizerConfig?: Record<string, unknown>;
  /** Written as generation_config.json. */
  generationConfig?: Record<string, unknown>;
}

/** The checkpoint key of a parameter named as in llama-weights.ts. */
export function llamaCheckpointKey(name: string): string {
  return name === LM_HEAD ? name : `model.${name}`;
}

// ---------------------------------------------------------------- small helpers

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

function bad(message: string, cause?: unknown): ModelIoError {
  return new ModelIoError('MODEL_IO_BAD_FILE', message, cause === undefined ? undefined : { cause });
}

function readJson(path: string): unknown {
  const text = readFileSync(path, 'utf8');
  try {
    return JSON.parse(text);
  } catch (e) {
    throw bad(`${path} is not valid JSON: ${(e as Error).message}`, e);
  }
}

function readJsonObject(path: string): Record<string, unknown> {
  const v = readJson(path);
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad(`${path}: expected a JSON object`);
  return v as Record<string, unknown>;
}

/** Prefixes an error's message with the file, keeping its class and code (a SafetensorsError stays one). */
function inFile(e: unknown, path: string): never {
  if (e instanceof CodedError) {
    if (!e.message.startsWith(path)) e.message = `${path}: ${e.message}`;
    throw e;
  }
  throw bad(`${path}: ${(e as Error).message}`, e);
}

function shapeText(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

// ---------------------------------------------------------------- loading

type Role = 'param' | 'tiedHead' | 'ignored';

interface Expected {
  /** checkpoint key -> [our name, shape] */
  params: Map<string, [string, number[]]>;
  config: LlamaConfig;
}

function roleOf(exp: Expected, key: string): Role | undefined {
  if (exp.params.has(key)) return 'param';
  if (key === LM_HEAD && exp.config.tieWordEmbeddings) return 'tiedHead';
  if (IGNORED_BUFFER_RE.test(key)) return 'ignored';
  return undefined;
}

function unexpected(where: string, key: string, c: LlamaConfig): ModelIoError {
  return bad(
    `${where}: unexpected tensor "${key}" for this ${c.family} config ` +
      `(${c.nLayer} layers, qkv bias ${c.qkvBias}, o bias ${c.oBias}, mlp bias ${c.mlpBias}, ` +
      `tied head ${c.tieWordEmbeddings})`,
  );
}

interface ShardPlan {
  file: string;
  /** The keys the index puts in this shard; null for a single model.safetensors (whatever it holds). */
  keys: Set<string> | null;
}

/** Reads the index: every key known, every expected key present, every shard a plain file name that exists. */
function planFromIndex(dir: string, indexPath: string, exp: Expected): ShardPlan[] {
  const index = readJsonObject(indexPath);
  const map = index.weight_map;
  if (typeof map !== 'object' || map === null || Array.isArray(map)) {
    throw bad(`${indexPath}: "weight_map" must be an object of tensor name: shard file`);
  }
  const byShard = new Map<string, Set<string>>();
  for (const [key, file] of Object.entries(map as Record<string, unknown>)) {
    if (typeof file !== 'string' || !/^[^/\\]+$/.test(file) || file === '.' || file === '..') {
      throw bad(`${indexPath}: tensor "${key}" is mapped to ${JSON.stringify(file)}, not a file name in ${dir}`);
    }
    if (roleOf(exp, key) === undefined) throw unexpected(indexPath, key, exp.config);
    const keys = byShard.get(file) ?? new Set<string>();
    keys.add(key);
    byShard.set(file, keys);
  }
  for (const key of exp.params.keys()) {
    if (!(key in map)) throw bad(`${indexPath}: tensor "${key}" is missing from weight_map`);
  }
  // every shard before reading any: a missing one fails fast, not after gigabytes
  for (const [file, keys] of byShard) {
    if (!isFile(join(dir, file))) {
      const first = keys.values().next().value;
      const more = keys.size > 1 ? ` and ${keys.size - 1} more` : '';
      throw new ModelIoError(
        'MODEL_IO_MISSING_FILE',
        `${indexPath}: shard "${file}" (holding "${first}"${more}) is missing from ${dir}`,
      );
    }
  }
  // in file order (model-00001 first), as they were written
  return [...byShard].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([file, keys]) => ({ file, keys }));
}

/** Same bits (so NaNs and signed zeros compare as stored). */
function sameBits(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

function loadCheckpoint(dir: string, config: LlamaConfig): { weights: LlamaWeights; dtypes: LlamaCheckpointDtype[] } {
  const exp: Expected = {
    params: new Map(llamaParameterShapes(config).map(([name, shape]) => [llamaCheckpointKey(name), [name, shape]])),
    config,
  };
  const singlePath = join(dir, LLAMA_DIR_FILES.weights);
  const indexPath = join(dir, LLAMA_DIR_FILES.index);
  let plan: ShardPlan[];
  // transformers' order: a single file wins over an index
  if (isFile(singlePath)) plan = [{ file: LLAMA_DIR_FILES.weights, keys: null }];
  else if (isFile(indexPath)) plan = planFromIndex(dir, indexPath, exp);
  else {
    throw new ModelIoError(
      'MODEL_IO_MISSING_FILE',
      `model directory ${dir} has neither ${LLAMA_DIR_FILES.weights} nor ${LLAMA_DIR_FILES.index}`,
    );
  }

  const found = new Map<string, Tensor>(); // checkpoint key -> tensor
  const dtypes = new Set<LlamaCheckpointDtype>();
  let tiedHead: { tensor: Tensor; path: string } | null = null;
  for (const shard of plan) {
    const path = join(dir, shard.file);
    const bytes = readFileBytes(path);
    let tensors: Map<string, SafetensorInfo>;
    try {
      tensors = parseSafetensors(bytes).tensors;
    } catch (e) {
      inFile(e, path);
    }
    if (shard.keys !== null) {
      for (const key of tensors.keys()) {
        if (!shard.keys.has(key)) {
          throw bad(`${path}: holds tensor "${key}", which ${LLAMA_DIR_FILES.index} does not put in this shard`);
        }
      }
      for (const key of shard.keys) {
        if (!tensors.has(key)) {
          throw bad(`${path}: lacks tensor "${key}", which ${LLAMA_DIR_FILES.index} puts in this shard`);
        }
      }
    }
    const keep = new Set<string>();
    let dropsBytes = false;
    for (const [key, info] of tensors) {
      const role = roleOf(exp, key);
      if (role === undefined) throw unexpected(path, key, config);
      if (role === 'ignored') {
        dropsBytes ||= info.dataOffsets[1] > info.dataOffsets[0];
        continue;
      }
      if (!DTYPES.includes(info.dtype)) {
        throw bad(`${path}: tensor "${key}" has dtype ${info.dtype}; only ${DTYPES.join(', ')} are supported`);
      }
      const want = role === 'param' ? exp.params.get(key)![1] : exp.params.get(EMBED)![1];
      if (!sameShape(info.shape, want)) {
        throw bad(`${path}: tensor "${key}" is ${shapeText(info.shape)}, expected ${shapeText(want)}`);
      }
      if (role === 'tiedHead') dropsBytes = true;
      dtypes.add(info.dtype as LlamaCheckpointDtype);
      keep.add(key);
    }
    let read: Map<string, Tensor>;
    try {
      read = readSafetensors(bytes, { filter: (key) => keep.has(key) });
    } catch (e) {
      inFile(e, path);
    }
    for (const [key, t] of read) {
      if (key === LM_HEAD && config.tieWordEmbeddings) {
        tiedHead = { tensor: t, path }; // compared below, then dropped: no copy
        continue;
      }
      // a view would keep the dropped tensors' bytes alive: copy out instead
      found.set(key, dropsBytes && t.data.buffer === bytes.buffer ? { shape: t.shape, data: t.data.slice() } : t);
    }
  }

  const weights: LlamaWeights = new Map();
  for (const [key, [name]] of exp.params) {
    const t = found.get(key);
    if (t === undefined) throw bad(`${join(dir, plan[0].file)}: missing tensor "${key}"`);
    weights.set(name, t);
  }
  if (tiedHead !== null && !sameBits(tiedHead.tensor.data, weights.get('embed_tokens.weight')!.data)) {
    throw bad(
      `${tiedHead.path}: tensor "${LM_HEAD}" differs from "${EMBED}", but config.json ties them ` +
        '(tie_word_embeddings: true); set it to false to keep a separate head',
    );
  }
  return { weights, dtypes: DTYPES.filter((d) => dtypes.has(d as LlamaCheckpointDtype)) as LlamaCheckpointDtype[] };
}

/**
 * Loads a LLaMA-family model directory: config, tokenizer, weights (as float32). Throws a
 * ModelIoError (or the SafetensorsError of a corrupt file, its message prefixed with the file)
 * naming the file and the tensor at fault; returns nothing partial.
 */
export function loadLlamaDir(dir: string): LlamaDir {
  const configPath = join(dir, LLAMA_DIR_FILES.config);
  const tokenizerPath = join(dir, LLAMA_DIR_FILES.tokenizer);
  for (const file of [LLAMA_DIR_FILES.config, LLAMA_DIR_FILES.tokenizer]) {
    if (!isFile(join(dir, file))) {
      throw new ModelIoError('MODEL_IO_MISSING_FILE', `model directory ${dir} has no ${file}`);
    }
  }
  let config: LlamaConfig;
  try {
    config = parseLlamaConfig(readJson(configPath), configPath);
  } catch (e) {
    if (e instanceof ModelIoError) throw e;
    throw bad((e as Error).message, e);
  }

  const tcPath = join(dir, LLAMA_DIR_FILES.tokenizerConfig);
  const tokenizerConfig = isFile(tcPath) ? readJsonObject(tcPath) : null;
  const tokenizerJson = readFileSync(tokenizerPath, 'utf8');
  let tokenizer: HfTokenizer;
  try {
    tokenizer = HfTokenizer.fromJson(tokenizerJson, tokenizerConfig, {
      file: tokenizerPath,
      configFile: tcPath,
      bosTokenId: config.bosTokenId,
      eosTokenId: config.eosTokenIds[0] ?? null,
    });
  } catch (e) {
    throw bad((e as Error).message, e);
  }
  if (tokenizer.vocabSize > config.vocabSize) {
    throw bad(
      `${tokenizerPath}: has ${tokenizer.vocabSize} token ids, ` +
        `more than the vocab_size ${config.vocabSize} of ${configPath}`,
    );
  }
  const genPath = join(dir, LLAMA_DIR_FILES.generationConfig);
  const generationConfig = isFile(genPath) ? readJsonObject(genPath) : null;

  const { weights, dtypes } = loadCheckpoint(dir, config);
  return {
    dir,
    config,
    weights,
    tokenizer,
    tokenizerJson,
    tokenizerConfig,
    generationConfig,
    checkpointDtypes: dtypes,
  };
}

// ---------------------------------------------------------------- writing

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** float32 -> IEEE half bits, round to nearest, ties to even; overflow gives infinity, NaN stays NaN. */
export function f32ToF16Bits(x: number): number {
  f32Scratch[0] = x;
  const b = u32Scratch[0];
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  const mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 112; // rebias 127 -> 15
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // subnormal half: m * 2^-24 with m = (1.mant * 2^23) >> (14 - e), rounded
    const shift = 14 - e;
    if (shift > 24) return sign; // below half the smallest subnormal
    const full = mant | 0x800000;
    let m = full >>> shift;
    const rem = full & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (m & 1) === 1)) m++;
    return sign | m; // m may carry into the smallest normal, which is the right encoding
  }
  let h = sign | (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h++; // a carry rolls into the exponent, up to infinity
  return h;
}

/** float32 -> bfloat16 bits (the top half), round to nearest, ties to even; NaN stays NaN. */
export function f32ToBf16Bits(x: number): number {
  f32Scratch[0] = x;
  const b = u32Scratch[0];
  if ((b & 0x7f800000) === 0x7f800000 && (b & 0x7fffff) !== 0) return (b >>> 16) | 0x40;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

interface OutTensor {
  key: string;
  tensor: Tensor;
}

/** One safetensors file, every tensor in `dtype`; header padded to 8 bytes as writeSafetensors pads it. */
function encodeShard(entries: OutTensor[], dtype: LlamaCheckpointDtype): Uint8Array {
  const size = DTYPE_BYTES[dtype];
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let offset = 0;
  for (const { key, tensor } of entries) {
    const n = tensor.data.length * size;
    header[key] = { dtype, shape: [...tensor.shape], data_offsets: [offset, offset + n] };
    offset += n;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const headerLen = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + headerLen + offset);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, headerLen, true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + headerLen);
  let pos = 8 + headerLen;
  for (const { tensor } of entries) {
    const d = tensor.data;
    if (dtype === 'F32' && LITTLE_ENDIAN_HOST) out.set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength), pos);
    else if (dtype === 'F32') for (let i = 0; i < d.length; i++) dv.setFloat32(pos + 4 * i, d[i], true);
    else {
      const conv = dtype === 'F16' ? f32ToF16Bits : f32ToBf16Bits;
      // pos is even (8-byte header, 2-byte elements), so a Uint16Array view is aligned
      if (LITTLE_ENDIAN_HOST) {
        const u16 = new Uint16Array(out.buffer, pos, d.length);
        for (let i = 0; i < d.length; i++) u16[i] = conv(d[i]);
      } else for (let i = 0; i < d.length; i++) dv.setUint16(pos + 2 * i, conv(d[i]), true);
    }
    pos += d.length * size;
  }
  return out;
}

/** Every expected parameter present with its shape and a matching data length, and nothing else. */
function checkWeights(config: LlamaConfig, weights: LlamaWeights): void {
  const shapes = llamaParameterShapes(config);
  const names = new Set(shapes.map(([n]) => n));
  for (const name of weights.keys()) {
    if (!names.has(name)) throw new Error(`writeLlamaDir: unexpected weight "${name}" for this config`);
  }
  for (const [name, shape] of shapes) {
    const t = weights.get(name);
    if (t === undefined) throw new Error(`writeLlamaDir: weight "${name}" is missing`);
    if (!sameShape(t.shape, shape) || t.data.length !== numel(shape)) {
      throw new Error(
        `writeLlamaDir: weight "${name}" is ${shapeText(t.shape)} with ${t.data.length} values, ` +
          `expected ${shapeText(shape)}`,
      );
    }
  }
}

/**
 * Writes a Hugging Face LLaMA-family directory: config.json, model.safetensors (or shards and
 * model.safetensors.index.json when `maxShardBytes` asks for them), tokenizer.json and the
 * optional tokenizer_config.json / generation_config.json. Everything is checked before the
 * first file is written (the weights against the config, the tokenizer by loading it); each file
 * is written atomically, weights first. Files of an earlier write that would change how the
 * directory loads are removed: the other weights layout (a single file wins over an index),
 * stale shards, and a tokenizer_config.json / generation_config.json not given this time.
 */
export function writeLlamaDir(
  dir: string,
  config: LlamaConfig,
  weights: LlamaWeights,
  tokenizerJson: string | object,
  opts: WriteLlamaDirOptions = {},
): void {
  const dtype = opts.dtype ?? 'F32';
  if (!DTYPES.includes(dtype)) throw new Error(`writeLlamaDir: dtype ${dtype} is not one of ${DTYPES.join(', ')}`);
  const configJson = { ...llamaConfigToJson(config), torch_dtype: TORCH_DTYPE[dtype] };
  checkWeights(config, weights);
  const tokenizerText = typeof tokenizerJson === 'string' ? tokenizerJson : JSON.stringify(tokenizerJson);
  const tokenizer = HfTokenizer.fromJson(tokenizerText, opts.tokenizerConfig ?? null, {
    bosTokenId: config.bosTokenId,
    eosTokenId: config.eosTokenIds[0] ?? null,
  });
  if (tokenizer.vocabSize > config.vocabSize) {
    throw new Error(
      `writeLlamaDir: the tokenizer has ${tokenizer.vocabSize} ids, the config's vocab_size is ${config.vocabSize}`,
    );
  }

  // shards in Hugging Face order, greedily filled up to maxShardBytes
  const entries: OutTensor[] = llamaParameterShapes(config).map(([name]) => ({
    key: llamaCheckpointKey(name),
    tensor: weights.get(name)!,
  }));
  const bytesOf = (e: OutTensor) => e.tensor.data.length * DTYPE_BYTES[dtype];
  const totalBytes = entries.reduce((s, e) => s + bytesOf(e), 0);
  const groups: OutTensor[][] = [];
  if (opts.maxShardBytes === undefined || totalBytes <= opts.maxShardBytes) groups.push(entries);
  else {
    if (!(opts.maxShardBytes > 0))
      throw new Error(`writeLlamaDir: maxShardBytes must be positive, got ${opts.maxShardBytes}`);
    let cur: OutTensor[] = [];
    let curBytes = 0;
    for (const e of entries) {
      if (cur.length > 0 && curBytes + bytesOf(e) > opts.maxShardBytes) {
        groups.push(cur);
        cur = [];
        curBytes = 0;
      }
      cur.push(e);
      curBytes += bytesOf(e);
    }
    groups.push(cur);
  }

  mkdirSync(dir, { recursive: true });
  const sharded = groups.length > 1;
  const pad = (i: number) => String(i).padStart(5, '0');
  const files = sharded
    ? groups.map((_, i) => `model-${pad(i + 1)}-of-${pad(groups.length)}.safetensors`)
    : [LLAMA_DIR_FILES.weights];
  // one shard encoded at a time
  for (const [i, g] of groups.entries()) writeFileAtomic(join(dir, files[i]), encodeShard(g, dtype));
  if (sharded) {
    const weightMap: Record<string, string> = {};
    groups.forEach((g, i) => {
      for (const e of g) weightMap[e.key] = files[i];
    });
    const index = { metadata: { total_size: totalBytes }, weight_map: weightMap };
    writeFileAtomic(join(dir, LLAMA_DIR_FILES.index), `${JSON.stringify(index, null, 2)}\n`);
    rmSync(join(dir, LLAMA_DIR_FILES.weights), { force: true });
  } else {
    rmSync(join(dir, LLAMA_DIR_FILES.index), { force: true });
  }
  const written = new Set(files);
  for (const f of readdirSync(dir)) {
    if (SHARD_NAME_RE.test(f) && !written.has(f)) rmSync(join(dir, f), { force: true });
  }
  writeFileAtomic(join(dir, LLAMA_DIR_FILES.config), `${JSON.stringify(configJson, null, 2)}\n`);
  writeFileAtomic(join(dir, LLAMA_DIR_FILES.tokenizer), tokenizerText);
  for (const [file, obj] of [
    [LLAMA_DIR_FILES.tokenizerConfig, opts.tokenizerConfig],
    [LLAMA_DIR_FILES.generationConfig, opts.generationConfig],
  ] as const) {
    if (obj !== undefined) writeFileAtomic(join(dir, file), `${JSON.stringify(obj, null, 2)}\n`);
    else rmSync(join(dir, file), { force: true });
  }
}

// ---------------------------------------------------------------- PEFT adapter directory

/**
 * Writes a LLaMA-family adapter as adapter_config.json + adapter_model.safetensors (PEFT
 * layout), each atomically, weights first: a reader that sees the new config also sees the
 * matching weights.
 */
export function saveLlamaAdapterDir(
  dir: string,
  adapter: LlamaLoraAdapter,
  opts: LlamaAdapterToPeftOptions = {},
): void {
  const { config, safetensors } = llamaAdapterToPeft(adapter, opts);
  mkdirSync(dir, { recursive: true });
  writeFileAtomic(join(dir, PEFT_WEIGHTS_FILE), safetensors);
  writeFileAtomic(join(dir, PEFT_CONFIG_FILE), `${JSON.stringify(config, null, 2)}\n`);
}

/**
 * Reads a LLaMA-family adapter directory in PEFT layout. With the base model's config, every
 * tensor is checked against its dimensions and layers; errors name the file and the tensor.
 */
export function loadLlamaAdapterDir(dir: string, model?: LlamaConfig): LlamaLoraAdapter {
  const configPath = join(dir, PEFT_CONFIG_FILE);
  const weightsPath = join(dir, PEFT_WEIGHTS_FILE);
  for (const file of [PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE]) {
    if (!isFile(join(dir, file))) {
      throw new ModelIoError('MODEL_IO_MISSING_FILE', `adapter directory ${dir} has no ${file}`);
    }
  }
  const config = readJson(configPath);
  const bytes = readFileBytes(weightsPath);
  try {
    return llamaAdapterFromPeft(config, bytes, { model, configFile: configPath, weightsFile: weightsPath });
  } catch (e) {
    if (e instanceof PeftError) throw e; // its message names the file already
    inFile(e, weightsPath); // a corrupt safetensors file
  }
}
