import type { Gpt2Config } from './config';
import { type LlamaConfig, parseLlamaConfig } from './llama-config';

/** GPT-2 small (124M), as Hugging Face's `gpt2` config.json describes it: benchmark and size-check shapes. */
export const GPT2_SMALL_CONFIG: Gpt2Config = {
  vocabSize: 50257,
  nPositions: 1024,
  nEmbd: 768,
  nLayer: 12,
  nHead: 12,
  nInner: 3072,
  layerNormEpsilon: 1e-5,
  bosTokenId: 50256,
  eosTokenId: 50256,
};

/** SmolLM2-135M's published config.json (HuggingFaceTB/SmolLM2-135M): size and speed figures at its shape. */
export const SMOLLM2_135M_CONFIG: LlamaConfig = parseLlamaConfig(
  {
    architectures: ['LlamaForCausalLM'],
    attention_bias: false,
    bos_token_id: 0,
    eos_token_id: 0,
    hidden_act: 'silu',
    hidden_size: 576,
    intermediate_size: 1536,
    max_position_embeddings: 8192,
    model_type: 'llama',
    num_attention_heads: 9,
    num_hidden_layers: 30,
    num_key_value_heads: 3,
    rms_norm_eps: 1e-5,
    rope_scaling: null,
    rope_theta: 100000,
    tie_word_embeddings: true,
    vocab_size: 49152,
  },
  'SmolLM2-135M config.json',
);

/** Llama-3.2-1B's published config.json (Llama 3 rope scaling, tied head): size and speed figures at its shape. */
export const LLAMA_32_1B_CONFIG: LlamaConfig = parseLlamaConfig(
  {
    architectures: ['LlamaForCausalLM'],
    attention_bias: false,
    bos_token_id: 128000,
    eos_token_id: 128001,
    head_dim: 64,
    hidden_act: 'silu',
    hidden_size: 2048,
    intermediate_size: 8192,
    max_position_embeddings: 131072,
    mlp_bias: false,
    model_type: 'llama',
    num_attention_heads: 32,
    num_hidden_layers: 16,
    num_key_value_heads: 8,
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
    vocab_size: 128256,
  },
  'Llama-3.2-1B config.json',
);
