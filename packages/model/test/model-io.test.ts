import {
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, describe, expect, it } from 'vitest';
import { type Gpt2Config, parseGpt2Config } from '../src/config';
import { randomGpt2Weights } from '../src/init';
import { loadGpt2Dir, writeGpt2Dir } from '../src/node/model-io';
import { parseSafetensors, writeSafetensors } from '../src/formats/safetensors';
import type { Tensor } from '../src/tensor';
import { Gpt2Tokenizer } from '../src/formats/tokenizer';
import { gpt2ParameterShapes } from '../src/weights';

/** A minimal valid GPT-2 tokenizer: 256 byte tokens in GPT-2 order, a few merges, <|endoftext|>. */
function tinyTokenizerFiles(): { vocabJson: string; mergesTxt: string } {
  const byteTokens = [...Gpt2Tokenizer.byteChars].sort((a, b) => a.charCodeAt(0) - b.charCodeAt(0));
  const vocab: Record<string, number> = {};
  for (const [i, t] of byteTokens.entries()) vocab[t] = i;
  const merges: Array<[string, string]> = [
    ['Ġ', 't'],
    ['h', 'e'],
    ['Ġt', 'he'],
  ];
  for (const [a, b] of merges) vocab[a + b] = Object.keys(vocab).length;
  vocab['<|endoftext|>'] = Object.keys(vocab).length;
  return {
    vocabJson: JSON.stringify(vocab),
    mergesTxt: `#version: 0.2\n${merges.map(([a, b]) => `${a} ${b}`).join('\n')}\n`,
  };
}

const tokFiles = tinyTokenizerFiles();
const tokenizer = Gpt2Tokenizer.fromFiles(tokFiles.vocabJson, tokFiles.mergesTxt);

const small: Gpt2Config = parseGpt2Config({
  model_type: 'gpt2',
  vocab_size: tokenizer.vocabSize,
  n_positions: 32,
  n_embd: 16,
  n_layer: 2,
  n_head: 2,
});

const tmpDirs: string[] = [];
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'splitllm-model-'));
  tmpDirs.push(d);
  return d;
}
afterAll(() => {
  for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
});

function expectWeightsEqual(a: Map<string, Tensor>, b: Map<string, Tensor>): void {
  expect([...b.keys()]).toEqual([...a.keys()]);
  for (const [k, t] of a) {
    const u = b.get(k)!;
    expect(u.shape, k).toEqual(t.shape);
    expect(
      Buffer.from(u.data.buffer, u.data.byteOffset, u.data.byteLength).equals(
        Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength),
      ),
      k,
    ).toBe(true);
  }
}

describe('writeGpt2Dir / loadGpt2Dir', () => {
  it('writes the four HF files and loads them back identical', () => {
    const dir = tmp();
    const weights = randomGpt2Weights(small, 1);
    writeGpt2Dir(dir, small, weights, tokenizer);
    expect(readdirSync(dir).sort()).toEqual(['config.json', 'merges.txt', 'model.safetensors', 'vocab.json']);
    const cfgJson = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    expect(cfgJson).toMatchObject({ model_type: 'gpt2', n_embd: 16, n_layer: 2, vocab_size: tokenizer.vocabSize });
    const parsed = parseSafetensors(readFileSync(join(dir, 'model.safetensors')));
    expect(parsed.metadata).toEqual({ format: 'pt' });
    expect([...parsed.tensors.keys()]).toEqual(gpt2ParameterShapes(small).map(([n]) => n)); // no prefix, HF order

    const loaded = loadGpt2Dir(dir);
    expect(loaded.dir).toBe(dir);
    expect(loaded.config).toEqual(small);
    expectWeightsEqual(weights, loaded.weights);
    // all tensors share one buffer: the file read once
    const buffers = new Set([...loaded.weights.values()].map((t) => t.data.buffer));
    expect(buffers.size).toBe(1);
    expect(loaded.tokenizer).toBeInstanceOf(Gpt2Tokenizer);
    expect(loaded.tokenizer.toFiles()).toEqual(tokenizer.toFiles());
    expect(loaded.tokenizer.encode(' the<|endoftext|>')).toEqual(tokenizer.encode(' the<|endoftext|>'));
  });

  it('accepts plain {vocabJson, mergesTxt} tokenizer files', () => {
    const dir = tmp();
    writeGpt2Dir(dir, small, randomGpt2Weights(small, 2), tokFiles);
    expect(readFileSync(join(dir, 'vocab.json'), 'utf8')).toBe(tokFiles.vocabJson);
    expect(loadGpt2Dir(dir).tokenizer.vocabSize).toBe(tokenizer.vocabSize);
  });

  it('loads transformer.-prefixed keys, ignoring lm_head and attention buffers', () => {
    const dir = tmp();
    const weights = randomGpt2Weights(small, 3);
    writeGpt2Dir(dir, small, weights, tokenizer);
    const entries: Array<[string, Tensor]> = [...weights].map(([k, t]) => [`transformer.${k}`, t]);
    const n = small.nPositions;
    entries.push(['lm_head.weight', weights.get('wte.weight')!]);
    for (let i = 0; i < small.nLayer; i++) {
      entries.push([`transformer.h.${i}.attn.bias`, { shape: [1, 1, n, n], data: new Float32Array(n * n).fill(1) }]);
      entries.push([`transformer.h.${i}.attn.masked_bias`, { shape: [], data: Float32Array.from([-1e4]) }]);
    }
    entries.reverse(); // order does not matter
    writeFileSync(join(dir, 'model.safetensors'), writeSafetensors(entries, { format: 'pt' }));
    const loaded = loadGpt2Dir(dir);
    expectWeightsEqual(weights, loaded.weights);
  });

  it('mixed prefixes load too, but a duplicate name is an error', () => {
    const dir = tmp();
    const weights = randomGpt2Weights(small, 4);
    writeGpt2Dir(dir, small, weights, tokenizer);
    const mixed: Array<[string, Tensor]> = [...weights].map(([k, t], i) => [i % 2 ? `transformer.${k}` : k, t]);
    writeFileSync(join(dir, 'model.safetensors'), writeSafetensors(mixed));
    expectWeightsEqual(weights, loadGpt2Dir(dir).weights);
    mixed.push(['transformer.wte.weight', weights.get('wte.weight')!]);
    writeFileSync(join(dir, 'model.safetensors'), writeSafetensors(mixed));
    expect(() => loadGpt2Dir(dir)).toThrow(/"wte.weight" and "transformer.wte.weight" are both "wte.weight"/);
  });

  it('missing files name the directory and the file', () => {
    for (const file of ['config.json', 'model.safetensors', 'vocab.json', 'merges.txt']) {
      const dir = tmp();
      writeGpt2Dir(dir, small, randomGpt2Weights(small, 5), tokenizer);
      unlinkSync(join(dir, file));
      expect(() => loadGpt2Dir(dir)).toThrow(`model directory ${dir} has no ${file}`);
    }
    const nowhere = join(tmp(), 'does-not-exist');
    expect(() => loadGpt2Dir(nowhere)).toThrow(`model directory ${nowhere} has no config.json`);
  });

  it('mis-shaped, missing, unexpected and mis-tied tensors are errors naming the tensor', () => {
    const dir = tmp();
    const weights = randomGpt2Weights(small, 6);
    writeGpt2Dir(dir, small, weights, tokenizer);
    const file = join(dir, 'model.safetensors');

    const misShaped = new Map(weights);
    misShaped.set('h.1.mlp.c_fc.weight', { shape: [64, 16], data: new Float32Array(64 * 16) });
    writeFileSync(file, writeSafetensors(misShaped));
    expect(() => loadGpt2Dir(dir)).toThrow(/h\.1\.mlp\.c_fc\.weight.*expected shape \[16, 64\], got \[64, 16\]/);

    const missing = new Map(weights);
    missing.delete('ln_f.bias');
    writeFileSync(file, writeSafetensors(missing));
    expect(() => loadGpt2Dir(dir)).toThrow(/model\.safetensors.*missing tensor "ln_f\.bias"/);

    const extra = new Map(weights);
    extra.set('h.7.attn.c_attn.weight', weights.get('h.0.attn.c_attn.weight')!);
    writeFileSync(file, writeSafetensors(extra));
    expect(() => loadGpt2Dir(dir)).toThrow('unexpected tensor "h.7.attn.c_attn.weight"');

    const badHead = new Map(weights);
    badHead.set('lm_head.weight', { shape: [3, 16], data: new Float32Array(48) });
    writeFileSync(file, writeSafetensors(badHead));
    expect(() => loadGpt2Dir(dir)).toThrow('lm_head.weight is [3, 16]');

    // a corrupt file keeps its safetensors error code and names the file
    writeFileSync(file, new Uint8Array(4));
    let err: unknown;
    try {
      loadGpt2Dir(dir);
    } catch (e) {
      err = e;
    }
    expect((err as { code?: string }).code).toBe('SAFETENSORS_TRUNCATED');
    expect((err as Error).message).toContain(file);
  });

  it('a bad config.json is an error naming the file', () => {
    const dir = tmp();
    writeGpt2Dir(dir, small, randomGpt2Weights(small, 7), tokenizer);
    writeFileSync(join(dir, 'config.json'), '{"n_embd": ');
    expect(() => loadGpt2Dir(dir)).toThrow(/config\.json is not valid JSON/);
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ n_embd: 16 }));
    expect(() => loadGpt2Dir(dir)).toThrow(/config\.json.*n_head/);
  });
});

describe('randomGpt2Weights', () => {
  it('follows GPT-2 init and is deterministic per seed', () => {
    const c = parseGpt2Config({ vocab_size: 500, n_positions: 64, n_embd: 64, n_layer: 4, n_head: 4 });
    const w = randomGpt2Weights(c, 11);
    const std = (t: Tensor) => Math.sqrt(t.data.reduce((s, v) => s + v * v, 0) / t.data.length);
    expect(std(w.get('wte.weight')!)).toBeCloseTo(0.02, 3);
    expect(std(w.get('h.1.attn.c_attn.weight')!)).toBeCloseTo(0.02, 3);
    expect(std(w.get('h.1.mlp.c_fc.weight')!)).toBeCloseTo(0.02, 3);
    const projStd = 0.02 / Math.sqrt(8);
    expect(std(w.get('h.2.attn.c_proj.weight')!) / projStd).toBeCloseTo(1, 1);
    expect(std(w.get('h.2.mlp.c_proj.weight')!) / projStd).toBeCloseTo(1, 1);
    expect(w.get('h.0.ln_1.weight')!.data.every((v) => v === 1)).toBe(true);
    expect(w.get('ln_f.weight')!.data.every((v) => v === 1)).toBe(true);
    for (const name of ['h.0.ln_1.bias', 'h.3.attn.c_attn.bias', 'h.3.mlp.c_proj.bias', 'ln_f.bias']) {
      expect(
        w.get(name)!.data.every((v) => v === 0),
        name,
      ).toBe(true);
    }
    const again = randomGpt2Weights(c, 11);
    expectWeightsEqual(w, again);
    const other = randomGpt2Weights(c, 12);
    expect(other.get('wte.weight')!.data[0]).not.toBe(w.get('wte.weight')!.data[0]);
    // distinct tensors draw distinct streams
    expect(w.get('h.0.attn.c_attn.weight')!.data[0]).not.toBe(w.get('h.1.attn.c_attn.weight')!.data[0]);
  });
});

describe('memory', () => {
  it('loading a ~100 MB checkpoint costs about 1x the file in arrayBuffers, not 2x', () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const big = parseGpt2Config({ vocab_size: 8192, n_positions: 256, n_embd: 512, n_layer: 8, n_head: 8 });
    const dir = tmp();
    {
      // fill cheaply: the values do not matter here
      const weights = new Map<string, Tensor>();
      for (const [name, shape] of gpt2ParameterShapes(big)) {
        const n = shape.reduce((a, b) => a * b, 1);
        const data = new Float32Array(n);
        for (let i = 0; i < n; i += 97) data[i] = i % 13;
        weights.set(name, { shape, data });
      }
      writeGpt2Dir(dir, big, weights, tokenizer);
    }
    const fileSize = statSync(join(dir, 'model.safetensors')).size;
    expect(fileSize).toBeGreaterThan(100e6);

    gc();
    gc();
    const before = process.memoryUsage();
    const loaded = loadGpt2Dir(dir);
    // before any collection: a loader that copied tensors out of the file buffer would show ~2x here
    const peakDelta = process.memoryUsage().arrayBuffers - before.arrayBuffers;
    gc();
    gc();
    const after = process.memoryUsage();
    const abDelta = after.arrayBuffers - before.arrayBuffers;
    const rssDelta = after.rss - before.rss;
    const ratio = abDelta / fileSize;
    console.log(
      `memory: right after load arrayBuffers +${(peakDelta / 1e6).toFixed(1)} MB ` +
        `(${(peakDelta / fileSize).toFixed(3)}x); ` +
        `after gc: file ${(fileSize / 1e6).toFixed(1)} MB, ` +
        `arrayBuffers +${(abDelta / 1e6).toFixed(1)} MB (${ratio.toFixed(3)}x), ` +
        `rss +${(rssDelta / 1e6).toFixed(1)} MB (${(rssDelta / fileSize).toFixed(3)}x)`,
    );
    expect(peakDelta / fileSize).toBeLessThan(1.2);
    expect(ratio).toBeGreaterThan(0.9);
    expect(ratio).toBeLessThan(1.2);
    expect(rssDelta / fileSize).toBeLessThan(1.5);
    // every tensor is a view into that one buffer
    const buffers = new Set([...loaded.weights.values()].map((t) => t.data.buffer));
    expect(buffers.size).toBe(1);
    expect([...buffers][0].byteLength).toBe(fileSize);
    expect(loaded.weights.get('h.7.mlp.c_proj.weight')!.data[97]).toBe(97 % 13);
    expect(existsSync(join(dir, 'vocab.json'))).toBe(true);
  });
});
