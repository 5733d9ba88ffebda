/**
 * `splitllm pretrain --arch llama` reproduces the shipped LLaMA-architecture model's files (its
 * config, tokenizer.json, tokenizer_config.json and model card byte for byte, and the recipe its
 * training.json records) from a model that is a pure function of the seed; and `splitllm eval`
 * reads a LLaMA directory and a PEFT adapter for it. (The full pre-training run takes about an
 * hour and is not repeated here; two steps prove the pipeline and its determinism.)
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  DEFAULT_LORA_CONFIG,
  Gpt2Tokenizer,
  Rng,
  evalBatches,
  initLlamaLoraAdapter,
  initLoraAdapter,
  llamaLoss,
} from '@splitllm/model';
import { loadGpt2Dir, loadLlamaDir, saveAdapterDir, saveLlamaAdapterDir } from '@splitllm/model/node';
import { beforeAll, describe, expect, it } from 'vitest';
import { HELDOUT, REPO, SHIPPED_MODEL, cli, jsonLines, type CliResult } from './run-cli';

const SHIPPED_LLAMA = join(REPO, 'packages/assets/models/moby-llama-tiny');
const tmp = mkdtempSync(join(tmpdir(), 'splitllm-pretrain-llama-'));
const read = (dir: string, file: string) => readFileSync(join(dir, file));
const readJson = (dir: string, file: string) => JSON.parse(readFileSync(join(dir, file), 'utf8'));

describe('pretrain --arch llama', () => {
  const run = (n: number) =>
    cli([
      'pretrain',
      '--arch',
      'llama',
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

  it("writes the shipped model's config, tokenizer and card again, and the recipe it records", () => {
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    const out = join(tmp, 'model-1');
    for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'model-card.json']) {
      expect(read(out, f), f).toEqual(read(SHIPPED_LLAMA, f));
    }
    // everything but the step count (2 here) is the default recipe
    expect({ ...readJson(SHIPPED_LLAMA, 'training.json').recipe, steps: 2 }).toEqual(
      readJson(out, 'training.json').recipe,
    );
    const lines = jsonLines(first.stdout);
    expect(lines.filter((o) => 'step' in o).map((s) => s.step)).toEqual([1, 2]);
    // the same token stream as moby-tiny's run (its training.json records the count)
    const tok = lines.find((o) => o.event === 'tokenizer')!;
    expect(tok.trainTokens).toBe(readJson(SHIPPED_MODEL, 'training.json').trainTokens);
  });

  it('is deterministic from its seed', () => {
    const second = run(2);
    expect(second.code).toBe(0);
    expect(read(join(tmp, 'model-2'), 'model.safetensors')).toEqual(read(join(tmp, 'model-1'), 'model.safetensors'));
  }, 300_000);

  it('refuses an unknown --arch', () => {
    const r = cli(['pretrain', '--arch', 'gpt3', '--steps', '1']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--arch must be gpt2 or llama, got "gpt3"');
  });
});

describe('the shipped moby-llama-tiny', () => {
  it("is a LLaMA with GQA and an untied head, learned far past a unigram model, on moby-tiny's tokens", () => {
    const dir = loadLlamaDir(SHIPPED_LLAMA);
    expect(dir.config).toMatchObject({ family: 'llama', nHead: 4, nKvHead: 2, tieWordEmbeddings: false });
    expect(dir.weights.has('lm_head.weight')).toBe(true);
    const training = readJson(SHIPPED_LLAMA, 'training.json');
    expect(training.heldoutLoss).toBeLessThan(training.heldoutUnigramLoss - 1);
    // the held-out loss the curve ends on is below where it started
    expect(training.curve.at(-1).heldoutLoss).toBeLessThan(training.curve[0].heldoutLoss);
    // tokenizer.json is moby-tiny's BPE: the same ids, so the two models' losses compare
    const heldout = readFileSync(HELDOUT, 'utf8');
    const bpe = Gpt2Tokenizer.fromFiles(
      readFileSync(join(SHIPPED_MODEL, 'vocab.json'), 'utf8'),
      readFileSync(join(SHIPPED_MODEL, 'merges.txt'), 'utf8'),
    );
    expect(dir.tokenizer.encode(heldout)).toEqual(bpe.encode(heldout));
    expect(readJson(SHIPPED_LLAMA, 'model-card.json')).toMatchObject({ name: 'moby-llama-tiny', demo: true });
  });
});

describe('eval --model on a LLaMA directory', () => {
  const training = readJson(SHIPPED_LLAMA, 'training.json');
  const shortText = join(tmp, 'short.txt');
  writeFileSync(shortText, readFileSync(HELDOUT, 'utf8').slice(0, 3000));

  it('scores the shipped model on held-out Moby-Dick as pre-training did', () => {
    const r = cli(['eval', '--model', SHIPPED_LLAMA, '--text', HELDOUT, '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const [o] = jsonLines(r.stdout);
    // the same windows (128 tokens, 8 a batch) through the same reference math as pretrain's
    // final score; the weights went through a float32 file and back unchanged, so only the
    // last digits of a float64 mean could differ
    expect(o.loss as number).toBeCloseTo(training.heldoutLoss, 9);
    expect(o.unigramLoss as number).toBeCloseTo(training.heldoutUnigramLoss, 9);
  }, 300_000);

  it('with a PEFT adapter for it: the loss the reference gives with that adapter', () => {
    const dir = loadLlamaDir(SHIPPED_LLAMA);
    const adapter = initLlamaLoraAdapter(dir.config, { r: 4, alpha: 8, targets: ['q_proj', 'v_proj', 'down_proj'] }, 3);
    const rng = new Rng(4);
    for (const { B } of adapter.layers.values()) rng.fillNormal(B.data, 0.05);
    const adapterDir = join(tmp, 'llama-adapter');
    saveLlamaAdapterDir(adapterDir, adapter, { baseModel: 'moby-llama-tiny', nLayer: dir.config.nLayer });

    const withAdapter = cli(['eval', '--model', SHIPPED_LLAMA, '--adapter', adapterDir, '--text', shortText, '--json']);
    expect(withAdapter.stderr).toBe('');
    const base = cli(['eval', '--model', SHIPPED_LLAMA, '--text', shortText, '--json']);
    const [a] = jsonLines(withAdapter.stdout);
    const [b] = jsonLines(base.stdout);
    // computed here on the same windows, with the adapter in memory
    const tokens = dir.tokenizer.encode(readFileSync(shortText, 'utf8'));
    let nll = 0;
    let count = 0;
    for (const batch of evalBatches(tokens, 8, 128, dir.config.eosTokenIds[0])) {
      const l = llamaLoss({ config: dir.config, weights: dir.weights }, adapter, batch);
      nll += l.loss * l.count;
      count += l.count;
    }
    expect(a.tokens).toBe(count);
    // the same float32 math in the same order: equal but for float64 summation noise
    expect(a.loss as number).toBeCloseTo(nll / count, 9);
    expect(Math.abs((a.loss as number) - (b.loss as number))).toBeGreaterThan(1e-3);
  }, 300_000);

  it('refuses a GPT-2 adapter, naming its file and a tensor the model has no place for', () => {
    const gpt2 = loadGpt2Dir(SHIPPED_MODEL);
    const adapterDir = join(tmp, 'gpt2-adapter');
    saveAdapterDir(adapterDir, initLoraAdapter(gpt2.config, DEFAULT_LORA_CONFIG, 1), { nLayer: gpt2.config.nLayer });
    const r = cli(['eval', '--model', SHIPPED_LLAMA, '--adapter', adapterDir, '--text', shortText]);
    expect(r.code).toBe(1);
    // the first tensor is the first thing that does not fit: its file and name are given
    expect(r.stderr).toContain(
      `${join(adapterDir, 'adapter_model.safetensors')}: ` +
        'tensor "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"',
    );
    expect(r.stderr).toContain('is not the LoRA weight of a LLaMA-family linear');
  });
});
