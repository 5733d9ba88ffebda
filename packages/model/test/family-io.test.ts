/**
 * Directories of either family (node/family-io.ts), on the two shipped models: the family from
 * config.json, adapters written and read back in each family's PEFT layout (with and without the
 * model's config), an adapter of the other family refused, and the tokenizer's wire form.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  defaultLoraConfig,
  initLoraAdapter,
  isLlamaConfig,
  type LoraAdapter,
  tokenizerFromWireFiles,
  tokenizerWireFiles,
} from '../src';
import { isLlamaModelDir, loadModelAdapterDir, loadModelDir, saveModelAdapterDir } from '../src/node';

const MODELS = join(import.meta.dirname, '../../assets/models');
const GPT2_DIR = join(MODELS, 'moby-tiny');
const LLAMA_DIR = join(MODELS, 'moby-llama-tiny');
const tmp = mkdtempSync(join(tmpdir(), 'splitllm-family-io-'));

/** An adapter with every value set, so that a round trip that lost or moved one would show. */
function filledAdapter(dir: string, seed: number): LoraAdapter {
  const { model } = loadModelDir(dir);
  const a = initLoraAdapter(model.config, defaultLoraConfig(model.config), seed);
  for (const { B } of a.layers.values()) {
    for (let i = 0; i < B.data.length; i++) B.data[i] = ((i % 7) - 3) * 1e-3;
  }
  return a;
}

function expectSameAdapter(got: LoraAdapter, want: LoraAdapter): void {
  expect([...got.layers.keys()].sort()).toEqual([...want.layers.keys()].sort());
  expect(new Set(got.config.targets)).toEqual(new Set(want.config.targets));
  for (const [path, w] of want.layers) {
    const g = got.layers.get(path)!;
    expect(g.A.data).toEqual(w.A.data);
    expect(g.B.data).toEqual(w.B.data);
  }
}

describe('model directories of either family', () => {
  it('reads each shipped model as its family, with its tokenizer', () => {
    expect(isLlamaModelDir(GPT2_DIR)).toBe(false);
    expect(isLlamaModelDir(LLAMA_DIR)).toBe(true);
    const gpt2 = loadModelDir(GPT2_DIR);
    const llama = loadModelDir(LLAMA_DIR);
    expect(isLlamaConfig(gpt2.model.config)).toBe(false);
    expect(isLlamaConfig(llama.model.config)).toBe(true);
    expect(llama.model.weights.has('lm_head.weight')).toBe(true);
    // the two share a vocabulary: the same text gives the same ids through either tokenizer
    const text = 'Call me Ishmael. Some years ago';
    expect(llama.tokenizer.encode(text)).toEqual(gpt2.tokenizer.encode(text));
  });

  it('serves each tokenizer in its wire form, which reads back to the same ids and end-of-text id', () => {
    const text = 'It was the best of times, it was the worst of times.';
    for (const dir of [GPT2_DIR, LLAMA_DIR]) {
      const { tokenizer } = loadModelDir(dir);
      const files = JSON.parse(JSON.stringify(tokenizerWireFiles(tokenizer)));
      const back = tokenizerFromWireFiles(files);
      expect(back.encode(text)).toEqual(tokenizer.encode(text));
      expect(back.eotId).toBe(tokenizer.eotId);
      expect(back.eotId).toBe(1023);
    }
    expect(() => tokenizerFromWireFiles({ vocab: '{}' })).toThrow(/expected \{vocabJson, mergesTxt\}/);
    expect(() => tokenizerFromWireFiles({ tokenizerJson: '{}', eosTokenId: -1 })).toThrow(/eosTokenId/);
  });

  it("writes and reads adapters in each family's PEFT layout, with or without the model's config", () => {
    for (const [name, dir] of [
      ['gpt2', GPT2_DIR],
      ['llama', LLAMA_DIR],
    ] as const) {
      const { model } = loadModelDir(dir);
      const adapter = filledAdapter(dir, 3);
      const out = join(tmp, name);
      saveModelAdapterDir(out, adapter, { baseModel: dir, nLayer: model.config.nLayer });
      expectSameAdapter(loadModelAdapterDir(out), adapter);
      expectSameAdapter(loadModelAdapterDir(out, model.config), adapter);
    }
  });

  it("refuses an adapter of the other family against a model's config", () => {
    const llama = loadModelDir(LLAMA_DIR).model;
    const gpt2 = loadModelDir(GPT2_DIR).model;
    // each refusal names the file and the first tensor of the other family
    expect(() => loadModelAdapterDir(join(tmp, 'gpt2'), llama.config)).toThrow(
      /adapter_model\.safetensors: tensor "base_model\.model\.transformer\.h\.0\.attn\.c_attn\.lora_A\.weight" is not/,
    );
    expect(() => loadModelAdapterDir(join(tmp, 'llama'), gpt2.config)).toThrow(
      /adapter_model\.safetensors: tensor "base_model\.model\.model\.layers\.0\..*" is a LLaMA-family LoRA weight/,
    );
    expect(() => loadModelAdapterDir(join(tmp, 'missing'))).toThrow(/has no adapter_config\.json/);
  });
});
