/**
 * GELU, tanh approximation, as ONNX nodes, mirroring ops/gelu.ts:
 *   y = 0.5 x (1 + tanh u),  u = sqrt(2/pi) (x + 0.044715 x^3)
 *   dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
 * Spelled out with Tanh (opset 18 has no Gelu op; it arrives in 20).
 */
import type { GraphBuilder } from '../graph-builder';

const C = Math.sqrt(2 / Math.PI);
const K3 = 0.044715;

function tanhU(g: GraphBuilder, x: string): string {
  const x3 = g.op('Mul', [g.op('Mul', [x, x]), x]);
  const u = g.op('Mul', [g.op('Add', [x, g.op('Mul', [x3, g.scalar(K3)])]), g.scalar(C)]);
  return g.op('Tanh', [u]);
}

export function geluForwardNodes(g: GraphBuilder, x: string): string {
  const t = tanhU(g, x);
  return g.op('Mul', [g.op('Mul', [x, g.scalar(0.5)]), g.op('Add', [t, g.scalar(1)])], {}, 'gelu');
}

/** dx = dy * gelu'(x); x is the GELU's input (the pre-activation). */
export function geluBackwardNodes(g: GraphBuilder, x: string, dy: string): string {
  const t = tanhU(g, x);
  const half = g.scalar(0.5);
  const one = g.scalar(1);
  const sech2 = g.op('Sub', [one, g.op('Mul', [t, t])]);
  const poly = g.op('Add', [one, g.op('Mul', [g.op('Mul', [x, x]), g.scalar(3 * K3)])]);
  const left = g.op('Mul', [half, g.op('Add', [one, t])]);
  const right = g.op('Mul', [g.op('Mul', [g.op('Mul', [x, g.scalar(0.5 * C)]), sech2]), poly]);
  return g.op('Mul', [dy, g.op('Add', [left, right])], {}, 'gelu_dx');
}
