/**
 * Node-only file I/O: a Hugging Face GPT-2 model directory (config.json, model.safetensors,
 * vocab.json, merges.txt) and a PEFT adapter directory (adapter_config.json,
 * adapter_model.safetensors).
 *
 * The checkpoint is read once into a single buffer and every F32 tensor is a view into it, so
 * loading a model costs about one file size of memory, not two.
 */
import { CodedError } from '../coded-error';
import {
  closeSync,
  fstatSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { type Gpt2Config, gpt2ConfigToJson, parseGpt2Config } from '../config';
import type { LoraAdapter } from '../lora';
import {
  type AdapterToPeftOptions,
  PEFT_CONFIG_FILE,
  PEFT_WEIGHTS_FILE,
  adapterFromPeft,
  adapterToPeft,
} from '../formats/peft';
import { parseSafetensors, readSafetensors, writeSafetensors } from '../formats/safetensors';
import { type Tensor, sameShape } from '../tensor';
import { Gpt2Tokenizer } from '../formats/tokenizer';
import { type Gpt2Weights, checkGpt2Weights, gpt2ParameterShapes } from '../weights';

export const GPT2_DIR_FILES = {
  config: 'config.json',
  weights: 'model.safetensors',
  vocab: 'vocab.json',
  merges: 'merges.txt',
} as const;

export class ModelIoError extends CodedError<'MODEL_IO_MISSING_FILE' | 'MODEL_IO_BAD_FILE'> {}

export interface Gpt2Dir {
  config: Gpt2Config;
  weights: Gpt2Weights;
  tokenizer: Gpt2Tokenizer;
  dir: string;
}

/** The two tokenizer files, as text. */
export interface TokenizerFiles {
  vocabJson: string;
  mergesTxt: string;
}

/** What `writeGpt2Dir` accepts as a tokenizer: its files, or an object that can produce them. */
export type SerializableTokenizer = TokenizerFiles | { toFiles(): TokenizerFiles };

// ---------------------------------------------------------------- low-level file helpers

/** Prefixes an error's message with where it happened, keeping its class and code. */
function withContext(e: unknown, prefix: string): never {
  if (e instanceof Error) {
    if (!e.message.startsWith(prefix)) e.message = `${prefix}: ${e.message}`;
    throw e;
  }
  throw new Error(`${prefix}: ${String(e)}`);
}

function requireFile(dir: string, file: string, what: string): string {
  const path = join(dir, file);
  let isFile = false;
  try {
    isFile = statSync(path).isFile();
  } catch {
    isFile = false;
  }
  if (!isFile) {
    throw new ModelIoError('MODEL_IO_MISSING_FILE', `${what} directory ${dir} has no ${file}`);
  }
  return path;
}

function readJsonFile(path: string): unknown {
  const text = readFileSync(path, 'utf8');
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ModelIoError('MODEL_IO_BAD_FILE', `${path} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Reads a whole file into one freshly allocated Uint8Array (byteOffset 0, so tensor views are
 * aligned), in chunks so files over 2 GiB work too.
 */
export function readFileBytes(path: string): Uint8Array {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    const out = new Uint8Array(size);
    let pos = 0;
    const CHUNK = 1 << 30;
    while (pos < size) {
      const n = readSync(fd, out, pos, Math.min(CHUNK, size - pos), pos);
      if (n === 0)
        throw new ModelIoError('MODEL_IO_BAD_FILE', `${path}: file shrank while reading (${pos} of ${size} bytes)`);
      pos += n;
    }
    return out;
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes a file atomically: a temporary file in the same directory, fsync, rename over the
 * target, then fsync the directory (best effort), so readers see the old or the new file.
 */
export function writeFileAtomic(path: string, data: Uint8Array | string): void {
  const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
  const tmp = join(
    dirname(path),
    `.${Date.now().toString(36)}-${process.pid}-${Math.random().toString(36).slice(2)}.tmp`,
  );
  let fd: number | null = openSync(tmp, 'w');
  try {
    let pos = 0;
    while (pos < bytes.byteLength) pos += writeSync(fd, bytes, pos, Math.min(1 << 30, bytes.byteLength - pos));
    fsyncSync(fd);
    closeSync(fd);
    fd = null;
    renameSync(tmp, path);
  } catch (e) {
    if (fd !== null) closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  try {
    const dfd = openSync(dirname(path), 'r');
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  } catch {
    // directories cannot be fsynced on every platform; the rename is still atomic
  }
}

// ---------------------------------------------------------------- GPT-2 model directory

/** Non-parameter buffers some GPT-2 checkpoints carry (causal mask, masked-bias constant). */
const IGNORED_BUFFER_RE = /^h\.\d+\.attn\.(bias|masked_bias)$/;

/**
 * Maps checkpoint tensors (with or without the `transformer.` prefix) to our names, dropping
 * the tied `lm_head.weight` (after checking its shape) and the attention mask buffers.
 */
export function gpt2WeightsFromCheckpoint(c: Gpt2Config, bytes: Uint8Array, source = 'model.safetensors'): Gpt2Weights {
  const expected = new Map(gpt2ParameterShapes(c));
  const parsed = parseSafetensors(bytes);
  const rename = new Map<string, string>(); // checkpoint key -> our name
  const taken = new Map<string, string>(); // our name -> checkpoint key
  let lmHead: number[] | null = null;
  for (const [key, info] of parsed.tensors) {
    const name = key.startsWith('transformer.') ? key.slice('transformer.'.length) : key;
    if (name === 'lm_head.weight') {
      lmHead = info.shape;
      continue;
    }
    if (IGNORED_BUFFER_RE.test(name)) continue;
    if (!expected.has(name)) {
      throw new ModelIoError('MODEL_IO_BAD_FILE', `${source}: unexpected tensor "${key}" for a GPT-2 model`);
    }
    const prev = taken.get(name);
    if (prev !== undefined) {
      throw new ModelIoError('MODEL_IO_BAD_FILE', `${source}: tensors "${prev}" and "${key}" are both "${name}"`);
    }
    taken.set(name, key);
    rename.set(key, name);
  }
  if (lmHead !== null) {
    const wte = expected.get('wte.weight')!;
    if (!sameShape(lmHead, wte)) {
      throw new ModelIoError(
        'MODEL_IO_BAD_FILE',
        `${source}: lm_head.weight is [${lmHead.join(', ')}], but the head is tied to wte [${wte.join(', ')}]`,
      );
    }
  }
  const raw = readSafetensors(bytes, { filter: (key) => rename.has(key) });
  const weights: Gpt2Weights = new Map();
  // canonical order
  for (const [name] of expected) {
    const key = taken.get(name);
    if (key !== undefined) weights.set(name, raw.get(key) as Tensor);
  }
  try {
    checkGpt2Weights(c, weights);
  } catch (e) {
    throw new ModelIoError('MODEL_IO_BAD_FILE', `${source}: ${(e as Error).message}`, { cause: e });
  }
  return weights;
}

export function loadGpt2Dir(dir: string): Gpt2Dir {
  const configPath = requireFile(dir, GPT2_DIR_FILES.config, 'model');
  const weightsPath = requireFile(dir, GPT2_DIR_FILES.weights, 'model');
  const vocabPath = requireFile(dir, GPT2_DIR_FILES.vocab, 'model');
  const mergesPath = requireFile(dir, GPT2_DIR_FILES.merges, 'model');

  let config: Gpt2Config;
  try {
    config = parseGpt2Config(readJsonFile(configPath));
  } catch (e) {
    if (e instanceof ModelIoError) throw e;
    throw new ModelIoError('MODEL_IO_BAD_FILE', `${configPath}: ${(e as Error).message}`, { cause: e });
  }
  let tokenizer: Gpt2Tokenizer;
  try {
    tokenizer = Gpt2Tokenizer.fromFiles(readFileSync(vocabPath, 'utf8'), readFileSync(mergesPath, 'utf8'));
  } catch (e) {
    throw new ModelIoError(
      'MODEL_IO_BAD_FILE',
      `model directory ${dir}: bad tokenizer files: ${(e as Error).message}`,
      { cause: e },
    );
  }
  let weights: Gpt2Weights;
  try {
    weights = gpt2WeightsFromCheckpoint(config, readFileBytes(weightsPath), weightsPath);
  } catch (e) {
    withContext(e, weightsPath);
  }
  return { config, weights, tokenizer, dir };
}

function tokenizerFiles(t: SerializableTokenizer): TokenizerFiles {
  if ('toFiles' in t && typeof t.toFiles === 'function') return t.toFiles();
  const f = t as TokenizerFiles;
  if (typeof f.vocabJson !== 'string' || typeof f.mergesTxt !== 'string') {
    throw new Error('writeGpt2Dir: tokenizer must be {vocabJson, mergesTxt} or have toFiles()');
  }
  return f;
}

/**
 * Writes a Hugging Face GPT-2 directory: config.json, model.safetensors (keys without the
 * `transformer.` prefix, as HF GPT-2 checkpoints have them; metadata format "pt" so
 * transformers accepts it), vocab.json and merges.txt. Each file is written atomically.
 */
export function writeGpt2Dir(
  dir: string,
  config: Gpt2Config,
  weights: Gpt2Weights,
  tokenizer: SerializableTokenizer,
): void {
  checkGpt2Weights(config, weights);
  const files = tokenizerFiles(tokenizer);
  mkdirSync(dir, { recursive: true });
  const ordered: Array<[string, Tensor]> = gpt2ParameterShapes(config).map(([name]) => [name, weights.get(name)!]);
  writeFileAtomic(join(dir, GPT2_DIR_FILES.weights), writeSafetensors(ordered, { format: 'pt' }));
  writeFileAtomic(join(dir, GPT2_DIR_FILES.config), `${JSON.stringify(gpt2ConfigToJson(config), null, 2)}\n`);
  writeFileAtomic(join(dir, GPT2_DIR_FILES.vocab), files.vocabJson);
  writeFileAtomic(join(dir, GPT2_DIR_FILES.merges), files.mergesTxt);
}

// ---------------------------------------------------------------- PEFT adapter directory

/** Writes adapter_config.json and adapter_model.safetensors (PEFT layout), each atomically. */
export function saveAdapterDir(dir: string, adapter: LoraAdapter, opts: AdapterToPeftOptions = {}): void {
  const { config, safetensors } = adapterToPeft(adapter, opts);
  mkdirSync(dir, { recursive: true });
  // weights first: a reader that sees the new config also sees the matching weights
  writeFileAtomic(join(dir, PEFT_WEIGHTS_FILE), safetensors);
  writeFileAtomic(join(dir, PEFT_CONFIG_FILE), `${JSON.stringify(config, null, 2)}\n`);
}

export function loadAdapterDir(dir: string): LoraAdapter {
  const configPath = requireFile(dir, PEFT_CONFIG_FILE, 'adapter');
  const weightsPath = requireFile(dir, PEFT_WEIGHTS_FILE, 'adapter');
  const config = readJsonFile(configPath);
  try {
    return adapterFromPeft(config, readFileBytes(weightsPath));
  } catch (e) {
    withContext(e, `adapter directory ${dir}`);
  }
}
