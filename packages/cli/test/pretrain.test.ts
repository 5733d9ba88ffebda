/**
 * `splitllm pretrain` reproduces what the repository ships: the demo data byte for byte, the
 * shipped tokenizer byte for byte, and a model that is a pure function of the seed. (The full
 * 1200-step run takes a quarter of an hour and is not repeated here; two steps prove the
 * pipeline and its determinism.)
 */
import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { DATA, SHIPPED_MODEL, cli, jsonLines, type CliResult } from './run-cli';

const tmp = mkdtempSync(join(tmpdir(), 'splitllm-pretrain-'));

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name).slice(dir.length + 1))
    .sort();
}

describe('pretrain', () => {
  const run = (n: number) =>
    cli([
      'pretrain',
      '--steps',
      '2',
      '--seed',
      '1234',
      '--out',
      join(tmp, `model-${n}`),
      '--data-out',
      join(tmp, `data-${n}`),
      '--json',
    ]);
  let first: CliResult;
  beforeAll(() => {
    first = run(1);
  }, 300_000);

  it('writes the committed demo data and tokenizer again, byte for byte', () => {
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    const written = join(tmp, 'data-1');
    expect(filesUnder(written)).toEqual(filesUnder(DATA));
    for (const f of filesUnder(DATA)) expect(readFileSync(join(written, f)), f).toEqual(readFileSync(join(DATA, f)));
    for (const f of ['vocab.json', 'merges.txt']) {
      expect(readFileSync(join(tmp, 'model-1', f)), f).toEqual(readFileSync(join(SHIPPED_MODEL, f)));
    }
    const shippedConfig = JSON.parse(readFileSync(join(SHIPPED_MODEL, 'config.json'), 'utf8'));
    expect(JSON.parse(readFileSync(join(tmp, 'model-1/config.json'), 'utf8'))).toEqual(shippedConfig);
    const steps = jsonLines(first.stdout).filter((o) => 'step' in o);
    expect(steps.map((s) => s.step)).toEqual([1, 2]);
  });

  it('is deterministic from its seed', () => {
    const second = run(2);
    expect(second.code).toBe(0);
    expect(readFileSync(join(tmp, 'model-2/model.safetensors'))).toEqual(
      readFileSync(join(tmp, 'model-1/model.safetensors')),
    );
  });

  it('the shipped model was made by the recipe it records', () => {
    const recorded = JSON.parse(readFileSync(join(SHIPPED_MODEL, 'training.json'), 'utf8'));
    const fresh = JSON.parse(readFileSync(join(tmp, 'model-1/training.json'), 'utf8'));
    // everything but the step count (2 here) is the default recipe
    expect({ ...recorded.recipe, steps: 2 }).toEqual(fresh.recipe);
    expect(recorded.heldoutLoss).toBeLessThan(recorded.heldoutUnigramLoss - 1);
  });
});
