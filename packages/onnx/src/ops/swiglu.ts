/**
 * SwiGLU, the activation core of LLaMA's MLP, as ONNX nodes, mirroring the reference's
 * ops/swiglu.ts (the gate_proj / up_proj / down_proj linears are around it, not in it):
 *   h = silu(gate) * up,  silu(g) = g sigmoid(g)
 *   dgate = dh up s (1 + g (1 - s)),  dup = dh silu(g),  s = sigmoid(g)
 * Spelled out with Sigmoid (opset 18 has no Silu/Swish op). For very negative g the Sigmoid is 0
 * and so are h and both gradients: no NaN.
 */
import type { GraphBuilder } from '../graph-builder';

export function swigluForwardNodes(g: GraphBuilder, gate: string, up: string): string {
  const silu = g.op('Mul', [gate, g.op('Sigmoid', [gate])]);
  return g.op('Mul', [silu, up], {}, 'swiglu');
}

/** Gradients of both inputs from the forward's inputs and the output gradient dh. */
export function swigluBackwardNodes(
  g: GraphBuilder,
  gate: string,
  up: string,
  dh: string,
): { dgate: string; dup: string } {
  const s = g.op('Sigmoid', [gate]);
  const silu = g.op('Mul', [gate, s]);
  const dup = g.op('Mul', [dh, silu], {}, 'swiglu_dup');
  // s (1 + g (1 - s)) = s + silu (1 - s)
  const dsilu = g.op('Add', [s, g.op('Mul', [silu, g.op('Sub', [g.scalar(1), s])])]);
  const dgate = g.op('Mul', [g.op('Mul', [dh, up]), dsilu], {}, 'swiglu_dgate');
  return { dgate, dup };
}
