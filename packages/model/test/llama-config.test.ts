/**
 * parseLlamaConfig / llamaConfigToJson: real published configs read to the right fields, every
 * setting that would change the math refused by name (key and file), and the round trip.
 */
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../src/config';
import { type LlamaConfig, llamaConfigToJson, parseLlamaConfig } from '../src/llama-config';
import { llamaParameterShapes } from '../src/llama-weights';

/** SmolLM2-135M's config.json (transformers 4.40 wrote it: no head_dim, no mlp_bias). */
const smolLm2 = {
  architectures: ['LlamaForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 0,
  eos_token_id: 0,
  hidden_act: 'silu',
  hidden_size: 576,
  initializer_range: 0.041666666666666664,
  intermediate_size: 1536,
  is_llama_config: true,
  max_position_embeddings: 8192,
  model_type: 'llama',
  num_attention_heads: 9,
  num_hidden_layers: 30,
  num_key_value_heads: 3,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_interleaved: false,
  rope_scaling: null,
  rope_theta: 100000,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  transformers_version: '4.40.1',
  use_cache: true,
  vocab_size: 49152,
};

/** Llama-3.2-1B-Instruct's config.json: GQA, head_dim, Llama 3 rope scaling, several EOS ids. */
const llama32 = {
  architectures: ['LlamaForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 128000,
  eos_token_id: [128001, 128008, 128009],
  head_dim: 64,
  hidden_act: 'silu',
  hidden_size: 2048,
  initializer_range: 0.02,
  intermediate_size: 8192,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: 'llama',
  num_attention_heads: 32,
  num_hidden_layers: 16,
  num_key_value_heads: 8,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: {
    factor: 32.0,
    high_freq_factor: 4.0,
    low_freq_factor: 1.0,
    original_max_position_embeddings: 8192,
    rope_type: 'llama3',
  },
  rope_theta: 500000.0,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  transformers_version: '4.45.0.dev0',
  use_cache: true,
  vocab_size: 128256,
};

/** Qwen2.5-0.5B's config.json. */
const qwen25 = {
  architectures: ['Qwen2ForCausalLM'],
  attention_dropout: 0.0,
  bos_token_id: 151643,
  eos_token_id: 151643,
  hidden_act: 'silu',
  hidden_size: 896,
  initializer_range: 0.02,
  intermediate_size: 4864,
  max_position_embeddings: 32768,
  max_window_layers: 24,
  model_type: 'qwen2',
  num_attention_heads: 14,
  num_hidden_layers: 24,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  sliding_window: 32768,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  transformers_version: '4.40.1',
  use_cache: true,
  use_mrope: false,
  use_sliding_window: false,
  vocab_size: 151936,
};

/** A Qwen2 config as transformers 5 writes it: `rope_parameters`, `layer_types`, `dtype`. */
const qwen2v5 = {
  architectures: ['Qwen2ForCausalLM'],
  attention_dropout: 0.0,
  bos_token_id: 151643,
  dtype: 'bfloat16',
  eos_token_id: 151643,
  hidden_act: 'silu',
  hidden_size: 1536,
  intermediate_size: 8960,
  layer_types: ['full_attention', 'full_attention'],
  max_position_embeddings: 131072,
  max_window_layers: 2,
  model_type: 'qwen2',
  num_attention_heads: 12,
  num_hidden_layers: 2,
  num_key_value_heads: 2,
  pad_token_id: null,
  rms_norm_eps: 1e-6,
  rope_parameters: { rope_theta: 1000000.0, rope_type: 'default' },
  sliding_window: null,
  tie_word_embeddings: true,
  transformers_version: '5.0.0',
  use_cache: true,
  use_mrope: false,
  use_sliding_window: false,
  vocab_size: 151936,
};

/** Expects a ConfigError whose message names the file and the key. */
function refuses(json: unknown, key: string, file = 'config.json'): void {
  let err: unknown;
  try {
    parseLlamaConfig(json, file);
  } catch (e) {
    err = e;
  }
  expect(err, `${key} should be refused`).toBeInstanceOf(ConfigError);
  expect((err as ConfigError).code).toBe('BAD_CONFIG');
  expect((err as Error).message).toContain(file);
  expect((err as Error).message).toContain(key);
}

describe('parseLlamaConfig: published configs', () => {
  it('reads SmolLM2-135M: tied head, GQA 9/3, head_dim from hidden / heads', () => {
    expect(parseLlamaConfig(smolLm2)).toEqual({
      family: 'llama',
      vocabSize: 49152,
      hiddenSize: 576,
      intermediateSize: 1536,
      nLayer: 30,
      nHead: 9,
      nKvHead: 3,
      headDim: 64,
      rmsNormEps: 1e-5,
      ropeTheta: 100000,
      ropeScaling: null,
      maxPositionEmbeddings: 8192,
      tieWordEmbeddings: true,
      qkvBias: false,
      oBias: false,
      mlpBias: false,
      bosTokenId: 0,
      eosTokenIds: [0],
    } satisfies LlamaConfig);
  });

  it('reads Llama 3.2 1B: llama3 rope scaling and a list of EOS ids', () => {
    const c = parseLlamaConfig(llama32);
    expect(c.ropeScaling).toEqual({
      type: 'llama3',
      factor: 32,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
    });
    expect(c).toMatchObject({ nHead: 32, nKvHead: 8, headDim: 64, ropeTheta: 500000, bosTokenId: 128000 });
    expect(c.eosTokenIds).toEqual([128001, 128008, 128009]);
    // the older spelling `type` reads the same
    const { rope_type: _, ...rest } = llama32.rope_scaling;
    expect(parseLlamaConfig({ ...llama32, rope_scaling: { ...rest, type: 'llama3' } }).ropeScaling).toEqual(
      c.ropeScaling,
    );
  });

  it('reads Qwen2.5 0.5B: q/k/v biases, no o/mlp bias, sliding window off', () => {
    const c = parseLlamaConfig(qwen25);
    expect(c).toMatchObject({
      family: 'qwen2',
      hiddenSize: 896,
      nHead: 14,
      nKvHead: 2,
      headDim: 64,
      ropeTheta: 1e6,
      rmsNormEps: 1e-6,
      qkvBias: true,
      oBias: false,
      mlpBias: false,
      tieWordEmbeddings: true,
    });
    const names = llamaParameterShapes(c).map(([n]) => n);
    expect(names).toContain('layers.0.self_attn.q_proj.bias');
    expect(names).not.toContain('layers.0.self_attn.o_proj.bias');
  });

  it('reads transformers 5 rope_parameters and layer_types', () => {
    const c = parseLlamaConfig(qwen2v5);
    expect(c.ropeTheta).toBe(1e6);
    expect(c.ropeScaling).toBeNull();
    const withLlama3 = parseLlamaConfig({
      ...llama32,
      rope_scaling: undefined,
      rope_theta: undefined,
      rope_parameters: { ...llama32.rope_scaling, rope_theta: 500000 },
    });
    expect(withLlama3.ropeTheta).toBe(500000);
    expect(withLlama3.ropeScaling).toEqual(parseLlamaConfig(llama32).ropeScaling);
  });

  it("applies transformers' defaults", () => {
    const minimal = {
      model_type: 'llama',
      vocab_size: 100,
      hidden_size: 32,
      intermediate_size: 64,
      num_hidden_layers: 2,
      num_attention_heads: 4,
    };
    expect(parseLlamaConfig(minimal)).toEqual({
      family: 'llama',
      vocabSize: 100,
      hiddenSize: 32,
      intermediateSize: 64,
      nLayer: 2,
      nHead: 4,
      nKvHead: 4,
      headDim: 8,
      rmsNormEps: 1e-6,
      ropeTheta: 10000,
      ropeScaling: null,
      maxPositionEmbeddings: 2048,
      tieWordEmbeddings: false,
      qkvBias: false,
      oBias: false,
      mlpBias: false,
      bosTokenId: null,
      eosTokenIds: [],
    } satisfies LlamaConfig);
    expect(parseLlamaConfig({ ...minimal, attention_bias: true, mlp_bias: true })).toMatchObject({
      qkvBias: true,
      oBias: true,
      mlpBias: true,
    });
    // an explicit head_dim need not be hidden / heads
    expect(parseLlamaConfig({ ...minimal, hidden_size: 30, head_dim: 16 }).headDim).toBe(16);
  });
});

describe('parseLlamaConfig: refused settings name the key and the file', () => {
  const base = smolLm2;
  it.each([
    ['model_type', { ...base, model_type: 'mistral' }],
    ['model_type', { ...base, model_type: undefined }],
    ['architectures', { ...base, architectures: ['LlamaForSequenceClassification'] }],
    ['architectures', { ...qwen25, architectures: ['LlamaForCausalLM'] }],
    ['hidden_act', { ...base, hidden_act: 'gelu' }],
    ['num_key_value_heads', { ...base, num_key_value_heads: 2 }],
    ['hidden_size', { ...base, hidden_size: 577 }],
    ['hidden_size', { ...base, hidden_size: 0 }],
    ['vocab_size', { ...base, vocab_size: undefined }],
    ['intermediate_size', { ...base, intermediate_size: 1.5 }],
    ['rms_norm_eps', { ...base, rms_norm_eps: -1 }],
    ['rope_theta', { ...base, rope_theta: '1e4' }],
    ['rope_scaling', { ...base, rope_scaling: { type: 'linear', factor: 2 } }],
    ['rope_scaling', { ...base, rope_scaling: { rope_type: 'yarn', factor: 4 } }],
    ['rope_scaling', { ...base, rope_scaling: { rope_type: 'llama3', type: 'dynamic' } }],
    ['rope_scaling.factor', { ...llama32, rope_scaling: { ...llama32.rope_scaling, factor: undefined } }],
    ['rope_scaling.high_freq_factor', { ...llama32, rope_scaling: { ...llama32.rope_scaling, high_freq_factor: 0.5 } }],
    ['rope_scaling.beta_fast', { ...llama32, rope_scaling: { ...llama32.rope_scaling, beta_fast: 32 } }],
    [
      'rope_scaling.original_max_position_embeddings',
      { ...llama32, rope_scaling: { ...llama32.rope_scaling, original_max_position_embeddings: 81.5 } },
    ],
    ['rope_parameters', { ...qwen2v5, rope_parameters: { rope_type: 'longrope' } }],
    ['rope_scaling', { ...qwen2v5, rope_scaling: { rope_type: 'default' } }],
    ['rope_theta', { ...qwen2v5, rope_theta: 10000 }],
    ['tie_word_embeddings', { ...base, tie_word_embeddings: 'yes' }],
    ['attention_bias', { ...base, attention_bias: 1 }],
    ['use_sliding_window', { ...qwen25, use_sliding_window: true }],
    ['layer_types', { ...qwen2v5, layer_types: ['full_attention', 'sliding_attention'] }],
    ['layer_types', { ...qwen2v5, layer_types: ['full_attention'] }],
    ['use_mrope', { ...qwen25, use_mrope: true }],
    ['partial_rotary_factor', { ...base, partial_rotary_factor: 0.5 }],
    ['rope_interleaved', { ...base, rope_interleaved: true }],
    ['quantization_config', { ...base, quantization_config: { quant_method: 'gptq', bits: 4 } }],
    ['auto_map', { ...base, auto_map: { AutoModelForCausalLM: 'modeling.Model' } }],
    ['final_logit_softcapping', { ...base, final_logit_softcapping: 30 }],
    ['eos_token_id', { ...base, eos_token_id: 49152 }],
    ['eos_token_id', { ...llama32, eos_token_id: [128001, -1] }],
    ['bos_token_id', { ...base, bos_token_id: '0' }],
  ])('%s', (key, json) => {
    refuses(json, key, '/models/x/config.json');
  });

  it('refuses what is not an object', () => {
    expect(() => parseLlamaConfig([], 'c.json')).toThrow(/c\.json: expected a JSON object/);
  });
});

describe('llamaConfigToJson', () => {
  it.each([
    ['SmolLM2', smolLm2],
    ['Llama 3.2', llama32],
    ['Qwen2.5', qwen25],
    ['transformers 5 Qwen2', qwen2v5],
  ])('%s reads back to the same config', (_, json) => {
    const c = parseLlamaConfig(json);
    const out = llamaConfigToJson(c);
    expect(parseLlamaConfig(out)).toEqual(c);
    expect(Object.keys(out)).toEqual([...Object.keys(out)].sort());
    // after a JSON text round trip too
    expect(parseLlamaConfig(JSON.parse(JSON.stringify(out)))).toEqual(c);
  });

  it('writes the fields transformers reads', () => {
    const out = llamaConfigToJson(parseLlamaConfig(llama32));
    expect(out).toMatchObject({
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      hidden_act: 'silu',
      num_key_value_heads: 8,
      rope_scaling: { rope_type: 'llama3', factor: 32, original_max_position_embeddings: 8192 },
      eos_token_id: [128001, 128008, 128009],
      attention_bias: false,
      mlp_bias: false,
    });
    expect(out).not.toHaveProperty('head_dim'); // the default, 2048 / 32
    const odd = llamaConfigToJson(parseLlamaConfig({ ...llama32, head_dim: 128 }));
    expect(odd.head_dim).toBe(128);
    expect(llamaConfigToJson(parseLlamaConfig(qwen25))).toMatchObject({ use_sliding_window: false });
  });

  it('refuses configs config.json cannot express', () => {
    const c = parseLlamaConfig(smolLm2);
    expect(() => llamaConfigToJson({ ...c, qkvBias: true, oBias: false })).toThrow(ConfigError);
    const q = parseLlamaConfig(qwen25);
    expect(() => llamaConfigToJson({ ...q, mlpBias: true })).toThrow(/Qwen2/);
    expect(() => llamaConfigToJson({ ...c, nKvHead: 4 })).toThrow(/num_key_value_heads/);
  });
});
