/**
 * For tests and benchmarks only: the tiny random LLaMA-family models, adapters and batches that the
 * tests of model, onnx, onnx-runner, lora-kernels and user-client each built by hand. They live here,
 * exported from the package index, because that is the one place all of those packages already import
 * from; nothing in a run uses them. Everything is seeded, so a test that builds the same thing twice
 * gets the same numbers.
 */
import { type ModelConfig, modelDims } from './family';
import type { LlamaConfig } from './llama-config';
import { type LlamaModel, randomLlamaWeights } from './llama';
import { IGNORE_INDEX } from './ops/cross-entropy';
import { Rng } from './rng';
import type { LoraPair, TokenBatch } from './step-types';

/**
 * A tiny LLaMA config: hidden 32, 3 layers, 4 query heads sharing 2 kv heads of width 8, SwiGLU width
 * 48, vocabulary 64, 16 positions, a tied head and no biases; `overrides` changes any of it.
 */
export function tinyLlamaConfig(overrides: Partial<LlamaConfig> = {}): LlamaConfig {
  return {
    family: 'llama',
    vocabSize: 64,
    hiddenSize: 32,
    intermediateSize: 48,
    nLayer: 3,
    nHead: 4,
    nKvHead: 2,
    headDim: 8,
    rmsNormEps: 1e-6,
    ropeTheta: 10000,
    ropeScaling: null,
    maxPositionEmbeddings: 16,
    tieWordEmbeddings: true,
    qkvBias: false,
    oBias: false,
    mlpBias: false,
    bosTokenId: 1,
    eosTokenIds: [2],
    ...overrides,
  };
}

/**
 * `base` with Llama 3 rope scaling (theta 100, factor 8, low/high frequency factors 1 and 4, the given
 * original context), o and MLP biases and an untied head: with theta 100 the rotary wavelengths are
 * short enough that the scaling's bands fall inside a tiny model's positions.
 */
export function llama3ScaledConfig(base: LlamaConfig, originalMaxPositionEmbeddings: number): LlamaConfig {
  return {
    ...base,
    ropeTheta: 100,
    ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings },
    oBias: true,
    mlpBias: true,
    tieWordEmbeddings: false,
  };
}

/**
 * A random model with weights at std 0.2 instead of Hugging Face's 0.02 (which would leave the blocks
 * near the identity and attention near uniform), norms and biases moved off 1 and 0 by 0.1-std noise
 * (seed + 7), so every path carries a gradient and a dropped bias shows.
 */
export function perturbedLlamaModel(config: LlamaConfig, seed: number): LlamaModel {
  const weights = randomLlamaWeights(config, seed, 0.2);
  const rng = new Rng(seed + 7);
  for (const [name, t] of weights) {
    if (name.endsWith('norm.weight') || name.endsWith('.bias'))
      for (let i = 0; i < t.data.length; i++) t.data[i] += 0.1 * rng.normal();
  }
  return { config, weights };
}

/**
 * Fills every pair's B with normal noise of `std` from `new Rng(seed)`, in place, and returns the
 * adapter: a fresh B = 0 would make every dA vanish (and hide a transposed B).
 */
export function withRandomLoraB<A extends { layers: Map<string, LoraPair> }>(adapter: A, seed: number, std: number): A {
  const rng = new Rng(seed);
  for (const p of adapter.layers.values()) rng.fillNormal(p.B.data, std);
  return adapter;
}

/**
 * B rows of T random tokens of either family; row 1 is right-padded (the pad id, ignored targets) from
 * position floor(2T/3) on. Row b draws T + 1 tokens: the first T are its ids, the last T its targets.
 */
export function paddedRandomBatch(config: ModelConfig, seed: number, B: number, T: number): TokenBatch {
  const { vocab, padId } = modelDims(config);
  const rng = new Rng(seed);
  const inputIds = new Int32Array(B * T);
  const targets = new Int32Array(B * T);
  const real = Math.floor((2 * T) / 3);
  for (let b = 0; b < B; b++) {
    const row = Array.from({ length: T + 1 }, () => rng.int(vocab));
    for (let t = 0; t < T; t++) {
      const pad = b === 1 && t >= real;
      inputIds[b * T + t] = pad ? padId : row[t];
      targets[b * T + t] = pad ? IGNORE_INDEX : row[t + 1];
    }
  }
  return { B, T, inputIds, targets };
}
