/** One config type for every family: dispatch on model_type, and the dimensions every tier reads. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../src/config';
import { isLlamaConfig, modelConfigToJson, modelDims, modelFamily, parseModelConfig } from '../src/family';

const SHIPPED = join(import.meta.dirname, '../../assets/models/moby-tiny/config.json');

const llamaJson = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  hidden_act: 'silu',
  hidden_size: 64,
  intermediate_size: 160,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  num_hidden_layers: 3,
  max_position_embeddings: 256,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  tie_word_embeddings: false,
  vocab_size: 300,
  bos_token_id: 1,
  eos_token_id: 2,
};

describe('model families', () => {
  it('reads the shipped GPT-2 config as gpt2, with its dimensions', () => {
    const c = parseModelConfig(JSON.parse(readFileSync(SHIPPED, 'utf8')));
    expect(isLlamaConfig(c)).toBe(false);
    expect(modelFamily(c)).toBe('gpt2');
    expect(modelDims(c)).toEqual({ width: 128, vocab: 1024, layers: 4, positions: 128, padId: 1023, eosIds: [1023] });
    expect(parseModelConfig(modelConfigToJson(c))).toEqual(c);
  });

  it('reads llama and qwen2 configs as the LLaMA family, with their dimensions', () => {
    const c = parseModelConfig(llamaJson);
    expect(modelFamily(c)).toBe('llama');
    expect(modelDims(c)).toEqual({ width: 64, vocab: 300, layers: 3, positions: 256, padId: 2, eosIds: [2] });
    expect(parseModelConfig(modelConfigToJson(c))).toEqual(c);
    const q = parseModelConfig({ ...llamaJson, model_type: 'qwen2', architectures: ['Qwen2ForCausalLM'] });
    expect(modelFamily(q)).toBe('qwen2');
  });

  it('refuses another model_type by name, listing the supported ones', () => {
    const read = () => parseModelConfig({ ...llamaJson, model_type: 'mistral' }, 'x/config.json');
    expect(read).toThrow(ConfigError);
    expect(read).toThrow(/x\/config.json: model_type "mistral" is not supported \(one of gpt2, llama, qwen2\)/);
  });
});
