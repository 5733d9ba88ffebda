/**
 * The model a benchmark sweep runs, from its `--model` spec: `shipped` (the committed moby-tiny),
 * `random:gpt2-small` (GPT-2 small's shape with random weights, written once to a directory so
 * the cloud can load it like any other) or a model directory. The spec is checked before any
 * process starts; the random model is written only when the sweep begins.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import {
  GPT2_SMALL_CONFIG,
  type Gpt2Config,
  type Gpt2Tokenizer,
  parseGpt2Config,
  randomGpt2Weights,
} from '@splitllm/model';
import { loadGpt2Dir, writeGpt2Dir } from '@splitllm/model/node';
import { UsageError } from '../args';
import { SHIPPED_MODEL_DIR } from '../io';

/** GPT-2 small's shape with random weights instead of a directory (as `splitllm attack --model` takes it). */
export const RANDOM_GPT2_SMALL = 'random:gpt2-small';

export type ModelSpec =
  | { kind: 'shipped'; label: string; dir: string; nPositions: number }
  | { kind: 'random'; label: string; seed: number; nPositions: number }
  | { kind: 'dir'; label: string; dir: string; nPositions: number };

/**
 * GPT-2 small's shape (768 wide, 12 layers, 12 heads, 1024 positions) with `tokenizer`'s
 * vocabulary: no 50257-token tokenizer ships with the project, so the shipped one's 1024 tokens
 * stand in (the blocks, what the edges run, are GPT-2 small's exactly; the embedding is 1024 rows).
 * `splitllm attack --model random:gpt2-small` builds the same config inline.
 */
export function randomGpt2SmallConfig(tokenizer: Gpt2Tokenizer): Gpt2Config {
  const eos = tokenizer.eotId ?? tokenizer.vocabSize - 1;
  return { ...GPT2_SMALL_CONFIG, vocabSize: tokenizer.vocabSize, bosTokenId: eos, eosTokenId: eos };
}

/** The n_positions of a model directory's config.json; a UsageError when it is not a model directory. */
function dirPositions(raw: string, dir: string): number {
  const configPath = join(dir, 'config.json');
  if (!existsSync(configPath) || !existsSync(join(dir, 'model.safetensors'))) {
    throw new UsageError(
      `bench: --model "${raw}" is not shipped, ${RANDOM_GPT2_SMALL} or a model directory ` +
        `(no config.json and model.safetensors in ${dir})`,
    );
  }
  try {
    return parseGpt2Config(JSON.parse(readFileSync(configPath, 'utf8'))).nPositions;
  } catch (e) {
    throw new UsageError(`bench: --model "${raw}": ${configPath}: ${(e as Error).message.split('\n')[0]}`);
  }
}

/** Parses `--model` (see the header); throws a UsageError for an unknown spec. */
export function parseModelSpec(raw: string, seed: number): ModelSpec {
  if (raw === 'shipped') {
    return {
      kind: 'shipped',
      label: 'shipped',
      dir: SHIPPED_MODEL_DIR,
      nPositions: dirPositions(raw, SHIPPED_MODEL_DIR),
    };
  }
  if (raw === RANDOM_GPT2_SMALL) {
    return { kind: 'random', label: RANDOM_GPT2_SMALL, seed, nPositions: GPT2_SMALL_CONFIG.nPositions };
  }
  // a "kind:..." that is not a known kind is a typo of one, not a directory's name
  if (/^[a-z]+:/.test(raw) && !existsSync(raw)) {
    throw new UsageError(`bench: unknown --model "${raw}" (shipped, ${RANDOM_GPT2_SMALL} or a model directory)`);
  }
  const dir = resolve(raw);
  return { kind: 'dir', label: dir, dir, nPositions: dirPositions(raw, dir) };
}

/**
 * The directory the cloud loads: the spec's own, or for the random model one written under
 * `workDir` now (seeded, so every point of a sweep and every sweep with the seed runs the same
 * weights). `log` says what is being written; the random checkpoint is about 340 MB.
 */
export function modelDirFor(spec: ModelSpec, workDir: string, log: (line: string) => void): string {
  if (spec.kind !== 'random') return spec.dir;
  const dir = join(workDir, 'random-gpt2-small');
  const { tokenizer } = loadGpt2Dir(SHIPPED_MODEL_DIR);
  const config = randomGpt2SmallConfig(tokenizer);
  log(`writing ${RANDOM_GPT2_SMALL} (random weights, seed ${spec.seed}, vocabulary ${config.vocabSize}) to ${dir}`);
  writeGpt2Dir(dir, config, randomGpt2Weights(config, spec.seed), tokenizer);
  return dir;
}
