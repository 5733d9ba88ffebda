/**
 * Model and adapter directories of either family, for the callers that should not care which
 * (the CLI, the cloud's store): GPT-2's (model-io.ts: config.json, model.safetensors, vocab.json,
 * merges.txt) or the LLaMA family's (llama-io.ts: config.json, one or several safetensors,
 * tokenizer.json). config.json's model_type says which; a LoRA adapter's targets (or, in a PEFT
 * directory, its tensor names) say which family it belongs to.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AnyTokenizer } from '../formats/any-tokenizer';
import { PEFT_WEIGHTS_FILE } from '../formats/peft';
import { parseSafetensors } from '../formats/safetensors';
import { type AnyModel, FamilyError, isLlamaConfig, type ModelConfig } from '../family';
import { isLlamaLoraTarget } from '../llama-lora';
import { checkAdapterFits, type LoraAdapter } from '../lora';
import { loadLlamaAdapterDir, loadLlamaDir, saveLlamaAdapterDir } from './llama-io';
import { loadAdapterDir, loadGpt2Dir, readFileBytes, saveAdapterDir } from './model-io';

export interface ModelDir {
  dir: string;
  model: AnyModel;
  tokenizer: AnyTokenizer;
}

/** true when `dir`'s config.json names a LLaMA-family model_type (llama, qwen2). */
export function isLlamaModelDir(dir: string): boolean {
  const path = join(dir, 'config.json');
  if (!existsSync(path)) return false;
  try {
    const type = (JSON.parse(readFileSync(path, 'utf8')) as { model_type?: unknown } | null)?.model_type;
    return type === 'llama' || type === 'qwen2';
  } catch {
    return false; // the GPT-2 loader reports the broken file
  }
}

/** A model directory of either family, with its tokenizer. */
export function loadModelDir(dir: string): ModelDir {
  if (isLlamaModelDir(dir)) {
    const d = loadLlamaDir(dir);
    return { dir, model: { config: d.config, weights: d.weights }, tokenizer: d.tokenizer };
  }
  const d = loadGpt2Dir(dir);
  return { dir, model: { config: d.config, weights: d.weights }, tokenizer: d.tokenizer };
}

export interface SaveAdapterOptions {
  /** written as the adapter's base_model_name_or_path */
  baseModel?: string;
  /** the base model's layers: an adapter covering all of them leaves layers_to_transform out */
  nLayer?: number;
}

/** Writes an adapter of either family in PEFT layout (the family from its targets). */
export function saveModelAdapterDir(dir: string, adapter: LoraAdapter, opts: SaveAdapterOptions = {}): void {
  if (adapter.config.targets.some(isLlamaLoraTarget)) {
    const llama = adapter as Parameters<typeof saveLlamaAdapterDir>[1];
    saveLlamaAdapterDir(dir, llama, opts);
  } else {
    saveAdapterDir(dir, adapter, opts);
  }
}

/**
 * The first tensor of a PEFT directory that is a LLaMA-family module's (`...model.layers.{i}...`),
 * or undefined: which family the adapter is for.
 */
function llamaTensorOf(dir: string): string | undefined {
  const path = join(dir, PEFT_WEIGHTS_FILE);
  if (!existsSync(path)) return undefined; // the loader says what is missing
  try {
    return [...parseSafetensors(readFileBytes(path)).tensors.keys()].find((k) => /\.layers\.\d+\./.test(k));
  } catch {
    return undefined; // the loader reports the broken file
  }
}

/**
 * Reads an adapter directory (PEFT layout) of either family. With the model's config, the
 * adapter must be of that model's family and fit its shapes (checkAdapterFits).
 */
export function loadModelAdapterDir(dir: string, config?: ModelConfig): LoraAdapter {
  // the file's own family is read only where the config does not settle it (a LLaMA model's reader
  // checks every tensor itself)
  const llamaTensor = config && isLlamaConfig(config) ? undefined : llamaTensorOf(dir);
  const llama = config ? isLlamaConfig(config) : llamaTensor !== undefined;
  // a LLaMA-family adapter for a GPT-2 model: said by file and tensor (GPT-2's reader would complain
  // about its PEFT settings instead); the LLaMA reader names the first GPT-2 tensor itself
  if (config && !llama && llamaTensor !== undefined) {
    throw new FamilyError(
      `${join(dir, PEFT_WEIGHTS_FILE)}: tensor "${llamaTensor}" is a LLaMA-family LoRA weight; the model is GPT-2`,
    );
  }
  // the LLaMA reader checks every tensor against the config itself when it has one
  const adapter = llama
    ? loadLlamaAdapterDir(dir, config && isLlamaConfig(config) ? config : undefined)
    : loadAdapterDir(dir);
  if (config) checkAdapterFits(config, adapter);
  return adapter;
}
