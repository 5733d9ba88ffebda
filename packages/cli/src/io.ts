/** File helpers that turn Node's errors into one readable line. */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Gpt2Model, type LoraAdapter, checkAdapterFits } from '@splitllm/model';
import { loadAdapterDir, loadGpt2Dir } from '@splitllm/model/node';

/** Root of the workspace (packages/cli/src -> ../../..). */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

/** The shipped pre-trained model, committed to the repository. */
export const SHIPPED_MODEL_DIR = join(REPO_ROOT, 'packages/assets/models/moby-tiny');
/** Public held-out text (Moby-Dick chapters kept out of pre-training): what the validation gate scores on. */
export const SHIPPED_HELDOUT = join(REPO_ROOT, 'packages/assets/data/moby-dick/heldout.txt');

export function readText(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    throw new Error(`cannot read ${what} "${path}": ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

export function loadModel(dir: string) {
  const loaded = loadGpt2Dir(dir);
  const model: Gpt2Model = { config: loaded.config, weights: loaded.weights };
  return { model, tokenizer: loaded.tokenizer };
}

export function loadAdapterFor(model: Gpt2Model, dir: string): LoraAdapter {
  const adapter = loadAdapterDir(dir);
  checkAdapterFits(model.config, adapter);
  return adapter;
}

/** Directory of an installed npm package (registry data sets). */
export function packageDir(name: string): string {
  const require = createRequire(import.meta.url);
  return dirname(require.resolve(`${name}/package.json`));
}
