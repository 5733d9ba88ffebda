/**
 * loraLinear as ONNX nodes, mirroring ops/lora-linear.ts: y = x W + b + s (x A) B, s = alpha / r.
 * x is [N, K] (rows flattened), W [K, N_out] and b are initializers, A [K, r] and B [r, N_out]
 * are graph inputs so that they change every step without a new session.
 *
 * Backward (no dW: the base is frozen):
 *   g  = s dy B^T      dx = dy W^T + g A^T      dA = x^T g      dB = s (x A)^T dy
 * Transposes are Gemm flags, so no transposed copy of a weight is ever made.
 */
import { floatAttr, type GraphBuilder } from '../graph-builder';

export interface LoraLinearNodes {
  /** base weight [K, N] */
  W: string;
  /** base bias [N] */
  b?: string;
  /** the adapter pair, absent for a plain linear */
  lora?: { A: string; B: string; scale: number };
}

export function loraLinearForwardNodes(g: GraphBuilder, x: string, p: LoraLinearNodes): { y: string; xa?: string } {
  const base = g.op('Gemm', p.b ? [x, p.W, p.b] : [x, p.W], {}, 'linear');
  if (!p.lora) return { y: base };
  const xa = g.op('MatMul', [x, p.lora.A], {}, 'lora_xa');
  // y = s (x A) B + base in one Gemm
  const y = g.op('Gemm', [xa, p.lora.B, base], { alpha: floatAttr(p.lora.scale) }, 'lora_y');
  return { y, xa };
}

/**
 * Gradients of a loraLinear. x (the layer input) is only read for the adapter's gradients and
 * may be left out for a plain linear; `xa` (x A) is recomputed when not given.
 */
export function loraLinearBackwardNodes(
  g: GraphBuilder,
  x: string | undefined,
  dy: string,
  p: LoraLinearNodes,
  xa?: string,
): { dx: string; dA?: string; dB?: string } {
  const dxBase = g.op('Gemm', [dy, p.W], { transB: 1 }, 'linear_dx');
  if (!p.lora) return { dx: dxBase };
  if (x === undefined) throw new Error('loraLinearBackwardNodes: the layer input is needed for LoRA gradients');
  const { A, B, scale } = p.lora;
  const gr = g.op('Gemm', [dy, B], { transB: 1, alpha: floatAttr(scale) }, 'lora_g');
  const dx = g.op('Gemm', [gr, A, dxBase], { transB: 1 }, 'lora_dx');
  const dA = g.op('Gemm', [x, gr], { transA: 1 }, 'lora_dA');
  const dB = g.op(
    'Gemm',
    [xa ?? g.op('MatMul', [x, A], {}, 'lora_xa'), dy],
    { transA: 1, alpha: floatAttr(scale) },
    'lora_dB',
  );
  return { dx, dA, dB };
}
