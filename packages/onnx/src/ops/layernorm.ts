/**
 * layerNorm over the last axis as ONNX nodes, mirroring ops/layernorm.ts:
 *   y = (x - mean) * rstd * gamma + beta,  rstd = 1 / sqrt(var + eps)  (biased variance)
 *   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),  xhat = (x - mean) * rstd, dxhat = dy * gamma
 *
 * The forward is the LayerNormalization op (opset 17+), whose optional outputs are the Mean
 * and InvStdDev the backward needs. It is more exact than the same formula spelled out in
 * float32 nodes: onnxruntime's CPU kernel returned the reference's float32 mean exactly in our
 * measurements, and on rows offset by 100x their spread its y was within 1.1e-6 (relative to
 * max |y|) of the float64 reference where the two-pass float32 graph reached 6.4e-6.
 * Standard ONNX has no LayerNorm gradient op, so the backward is written out.
 * mean and rstd keep the reduced axis ([..., 1]).
 */
import { floatAttr, type GraphBuilder } from '../graph-builder';

export interface LayerNormForward {
  y: string;
  mean: string;
  rstd: string;
}

export function layerNormForwardNodes(
  g: GraphBuilder,
  x: string,
  gamma: string,
  beta: string,
  eps: number,
): LayerNormForward {
  const [y, mean, rstd] = g.node(
    'LayerNormalization',
    [x, gamma, beta],
    3,
    { axis: -1, epsilon: floatAttr(eps) },
    'ln',
  );
  return { y, mean, rstd };
}

/** Input gradient (gamma and beta are frozen under LoRA, so no parameter gradients). */
export function layerNormBackwardNodes(
  g: GraphBuilder,
  x: string,
  mean: string,
  rstd: string,
  gamma: string,
  dy: string,
): string {
  const axis = g.int64s([-1]);
  const xhat = g.op('Mul', [g.op('Sub', [x, mean]), rstd]);
  const dxhat = g.op('Mul', [dy, gamma]);
  const meanD = g.op('ReduceMean', [dxhat, axis], { keepdims: 1 });
  const meanDX = g.op('ReduceMean', [g.op('Mul', [dxhat, xhat]), axis], { keepdims: 1 });
  const inner = g.op('Sub', [g.op('Sub', [dxhat, meanD]), g.op('Mul', [xhat, meanDX])]);
  return g.op('Mul', [inner, rstd], {}, 'ln_dx');
}
