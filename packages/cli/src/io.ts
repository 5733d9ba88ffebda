/** File helpers that turn Node's errors into one readable line. */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { AnyModel, LoraAdapter } from '@splitllm/model';
import { loadModelAdapterDir, loadModelDir } from '@splitllm/model/node';

/** Root of the workspace (packages/cli/src -> ../../..). */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

/** The shipped pre-trained model, committed to the repository. */
export const SHIPPED_MODEL_DIR = join(REPO_ROOT, 'packages/assets/models/moby-tiny');
/** The models shipped in the repository, by the name their model card gives them: `--model NAME` takes these. */
export const SHIPPED_MODELS: Readonly<Record<string, string>> = {
  'moby-tiny': SHIPPED_MODEL_DIR,
  'moby-llama-tiny': join(REPO_ROOT, 'packages/assets/models/moby-llama-tiny'),
};

/** What `--model` says: a shipped model's name, or a directory; the shipped GPT-2 when it is left out. */
export function modelDirOf(arg: string | undefined): string {
  if (arg === undefined) return SHIPPED_MODEL_DIR;
  return SHIPPED_MODELS[arg] ?? arg;
}

/** Public held-out text (Moby-Dick chapters kept out of pre-training): what the validation gate scores on. */
export const SHIPPED_HELDOUT = join(REPO_ROOT, 'packages/assets/data/moby-dick/heldout.txt');

export function readText(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    throw new Error(`cannot read ${what} "${path}": ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** A model directory of either family (GPT-2, LLaMA), with its tokenizer. */
export function loadModel(dir: string) {
  const { model, tokenizer } = loadModelDir(dir);
  return { model, tokenizer };
}

/** An adapter directory (PEFT layout) for `model`: of its family, with shapes that fit it. */
export function loadAdapterFor(model: AnyModel, dir: string): LoraAdapter {
  return loadModelAdapterDir(dir, model.config);
}

/** Directory of an installed npm package (registry data sets). */
export function packageDir(name: string): string {
  const require = createRequire(import.meta.url);
  return dirname(require.resolve(`${name}/package.json`));
}
