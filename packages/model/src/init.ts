/**
 * GPT-2's own initialization (as in Hugging Face `GPT2PreTrainedModel._init_weights`):
 * embeddings and linear weights ~ N(0, 0.02), the residual-output projections (`attn.c_proj`,
 * `mlp.c_proj`) ~ N(0, 0.02 / sqrt(2 n_layer)), LayerNorm weight 1 and bias 0, biases 0.
 *
 * Each tensor draws from its own stream seeded by (seed, name), so a tensor's values do not
 * depend on which other tensors are generated. Browser-safe.
 */
import type { Gpt2Config } from './config';
import { Rng } from './rng';
import { numel } from './tensor';
import { type Gpt2Weights, gpt2ParameterShapes } from './weights';

export const GPT2_INITIALIZER_RANGE = 0.02;

/** FNV-1a of a string, 32-bit: the per-name seed of a tensor's random init (GPT-2 here, llama.ts too). */
export function hashName(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

export function randomGpt2Weights(config: Gpt2Config, seed: number): Gpt2Weights {
  const weights: Gpt2Weights = new Map();
  const projStd = GPT2_INITIALIZER_RANGE / Math.sqrt(2 * config.nLayer);
  for (const [name, shape] of gpt2ParameterShapes(config)) {
    const data = new Float32Array(numel(shape));
    if (/\.(ln_\d|ln_f)\.weight$|^ln_f\.weight$/.test(name)) {
      data.fill(1);
    } else if (name.endsWith('.weight')) {
      const std = /\.c_proj\.weight$/.test(name) ? projStd : GPT2_INITIALIZER_RANGE;
      new Rng((Math.imul(seed >>> 0, 0x9e3779b1) ^ hashName(name)) >>> 0).fillNormal(data, std);
    } // biases (and LayerNorm biases) stay 0
    weights.set(name, { shape: [...shape], data });
  }
  return weights;
}
