import { describe, expect, it } from 'vitest';
import { ConfigError, gpt2ConfigToJson, parseGpt2Config } from '../src/config';
import { GPT2_SMALL_CONFIG } from '../src/config-presets';

/** The fields of Hugging Face's config.json for GPT-2 small (124M), as published. */
const gpt2Small = {
  activation_function: 'gelu_new',
  architectures: ['GPT2LMHeadModel'],
  attn_pdrop: 0.1,
  bos_token_id: 50256,
  embd_pdrop: 0.1,
  eos_token_id: 50256,
  initializer_range: 0.02,
  layer_norm_epsilon: 1e-5,
  model_type: 'gpt2',
  n_ctx: 1024,
  n_embd: 768,
  n_head: 12,
  n_layer: 12,
  n_positions: 1024,
  resid_pdrop: 0.1,
  summary_activation: null,
  task_specific_params: { 'text-generation': { do_sample: true, max_length: 50 } },
  vocab_size: 50257,
};

describe('GPT-2 config.json', () => {
  it('reads GPT-2 small', () => {
    expect(parseGpt2Config(gpt2Small)).toEqual({
      vocabSize: 50257,
      nPositions: 1024,
      nEmbd: 768,
      nLayer: 12,
      nHead: 12,
      nInner: 3072,
      layerNormEpsilon: 1e-5,
      bosTokenId: 50256,
      eosTokenId: 50256,
    });
    // the preset the benchmarks use is that very config
    expect(GPT2_SMALL_CONFIG).toEqual(parseGpt2Config(gpt2Small));
  });

  it('round-trips through the config.json it writes', () => {
    const c = parseGpt2Config({ ...gpt2Small, n_inner: 1000 });
    expect(c.nInner).toBe(1000);
    expect(parseGpt2Config(gpt2ConfigToJson(c))).toEqual(c);
    expect(parseGpt2Config({ ...gpt2Small, n_positions: undefined }).nPositions).toBe(1024); // n_ctx
  });

  it.each([
    ['not an object', [], /expected a JSON object/],
    ['another architecture', { ...gpt2Small, model_type: 'llama' }, /model_type "llama" is not supported/],
    ['another activation', { ...gpt2Small, activation_function: 'relu' }, /activation_function "relu"/],
    ['an untied head', { ...gpt2Small, tie_word_embeddings: false }, /untied LM head/],
    ['heads that do not divide the width', { ...gpt2Small, n_head: 7 }, /not divisible by n_head 7/],
    ['a missing size', { ...gpt2Small, n_layer: undefined }, /"n_layer" must be a positive integer/],
    ['a fractional size', { ...gpt2Small, n_embd: 76.8 }, /"n_embd" must be a positive integer/],
    ['a bad epsilon', { ...gpt2Small, layer_norm_epsilon: -1 }, /layer_norm_epsilon/],
  ])('rejects %s with a clear error', (_what, json, message) => {
    expect(() => parseGpt2Config(json)).toThrow(ConfigError);
    expect(() => parseGpt2Config(json)).toThrow(message);
  });
});
