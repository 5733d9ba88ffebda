import type { Gpt2Config } from './config';
import { type Tensor, assertShape } from './tensor';

/**
 * Base weights of a GPT-2 model, keyed by Hugging Face names without the `transformer.`
 * prefix: `wte.weight`, `wpe.weight`, `h.{i}.ln_1.weight`, `h.{i}.attn.c_attn.weight`, ...,
 * `ln_f.bias`. Linear weights keep GPT-2's Conv1D layout `[in, out]` (y = x W + b), which is
 * exactly the layout the math wants, so nothing is transposed on load.
 */
export type Gpt2Weights = Map<string, Tensor>;

/** Every parameter name of a GPT-2 model with its shape, in Hugging Face order. */
export function gpt2ParameterShapes(c: Gpt2Config): Array<[string, number[]]> {
  const d = c.nEmbd;
  const out: Array<[string, number[]]> = [
    ['wte.weight', [c.vocabSize, d]],
    ['wpe.weight', [c.nPositions, d]],
  ];
  for (let i = 0; i < c.nLayer; i++) {
    const p = `h.${i}.`;
    out.push(
      [`${p}ln_1.weight`, [d]],
      [`${p}ln_1.bias`, [d]],
      [`${p}attn.c_attn.weight`, [d, 3 * d]],
      [`${p}attn.c_attn.bias`, [3 * d]],
      [`${p}attn.c_proj.weight`, [d, d]],
      [`${p}attn.c_proj.bias`, [d]],
      [`${p}ln_2.weight`, [d]],
      [`${p}ln_2.bias`, [d]],
      [`${p}mlp.c_fc.weight`, [d, c.nInner]],
      [`${p}mlp.c_fc.bias`, [c.nInner]],
      [`${p}mlp.c_proj.weight`, [c.nInner, d]],
      [`${p}mlp.c_proj.bias`, [d]],
    );
  }
  out.push(['ln_f.weight', [d]], ['ln_f.bias', [d]]);
  return out;
}

/** Throws a clear error naming the first missing or mis-shaped parameter. */
export function checkGpt2Weights(c: Gpt2Config, w: Gpt2Weights): void {
  for (const [name, shape] of gpt2ParameterShapes(c)) {
    const t = w.get(name);
    if (!t) throw new Error(`model weights: missing tensor "${name}"`);
    assertShape(t, shape, `model weights: "${name}"`);
  }
}

export function getWeight(w: Gpt2Weights, name: string): Tensor {
  const t = w.get(name);
  if (!t) throw new Error(`model weights: missing tensor "${name}"`);
  return t;
}
