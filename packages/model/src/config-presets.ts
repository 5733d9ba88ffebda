import type { Gpt2Config } from './config';

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
