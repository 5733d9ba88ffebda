/**
 * Base weights of a LLaMA-family model, keyed by Hugging Face names without the `model.` prefix
 * (`embed_tokens.weight`, `layers.{i}.self_attn.q_proj.weight`, ..., `norm.weight`) plus
 * `lm_head.weight` when the head is untied. Linear weights keep PyTorch's `nn.Linear` layout
 * `[out, in]` (y = x W^T + b), as the checkpoint stores them.
 */
import type { LlamaConfig } from './llama-config';
import type { Tensor } from './tensor';

export type LlamaWeights = Map<string, Tensor>;

/** Every parameter name of a LLaMA-family model with its shape, in Hugging Face order. */
export function llamaParameterShapes(c: LlamaConfig): Array<[string, number[]]> {
  const D = c.hiddenSize;
  const F = c.intermediateSize;
  const q = c.nHead * c.headDim;
  const kv = c.nKvHead * c.headDim;
  const out: Array<[string, number[]]> = [['embed_tokens.weight', [c.vocabSize, D]]];
  for (let i = 0; i < c.nLayer; i++) {
    const p = `layers.${i}.`;
    out.push([`${p}input_layernorm.weight`, [D]]);
    for (const [name, rows] of [
      ['q_proj', q],
      ['k_proj', kv],
      ['v_proj', kv],
    ] as const) {
      out.push([`${p}self_attn.${name}.weight`, [rows, D]]);
      if (c.qkvBias) out.push([`${p}self_attn.${name}.bias`, [rows]]);
    }
    out.push([`${p}self_attn.o_proj.weight`, [D, q]]);
    if (c.oBias) out.push([`${p}self_attn.o_proj.bias`, [D]]);
    out.push([`${p}post_attention_layernorm.weight`, [D]]);
    for (const [name, shape] of [
      ['gate_proj', [F, D]],
      ['up_proj', [F, D]],
      ['down_proj', [D, F]],
    ] as const) {
      out.push([`${p}mlp.${name}.weight`, [...shape]]);
      if (c.mlpBias) out.push([`${p}mlp.${name}.bias`, [shape[0]]]);
    }
  }
  out.push(['norm.weight', [D]]);
  if (!c.tieWordEmbeddings) out.push(['lm_head.weight', [c.vocabSize, D]]);
  return out;
}
