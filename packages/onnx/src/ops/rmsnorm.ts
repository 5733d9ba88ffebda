/**
 * rmsNorm over the last axis as ONNX nodes, mirroring the reference's ops/rmsnorm.ts (LLaMA's
 * LlamaRMSNorm, Qwen2's Qwen2RMSNorm):
 *   r = 1 / sqrt(mean(x^2) + eps),  xhat = x r,  y = xhat * weight
 *   dx = r (g - xhat mean(g xhat)),  g = dy * weight
 *
 * Spelled out in standard ops: opset 18 has no RMSNormalization (it arrives in 23), and
 * onnxruntime's SimplifiedLayerNormalization is an onnxruntime-only op we do not want a graph
 * to depend on (the tab's onnxruntime-web build and any other runtime must run the same model).
 * r keeps the reduced axis ([..., 1]) so that the backward can reuse it. The weight is frozen
 * under LoRA, so the backward gives dx only.
 */
import type { GraphBuilder } from '../graph-builder';

export interface RmsNormForward {
  y: string;
  /** 1 / sqrt(mean(x^2) + eps), [..., 1] */
  rstd: string;
}

export function rmsNormForwardNodes(g: GraphBuilder, x: string, weight: string, eps: number): RmsNormForward {
  const meanSq = g.op('ReduceMean', [g.op('Mul', [x, x]), g.int64s([-1])], { keepdims: 1 });
  const rstd = g.op('Reciprocal', [g.op('Sqrt', [g.op('Add', [meanSq, g.scalar(eps)])])], {}, 'rms_rstd');
  const y = g.op('Mul', [g.op('Mul', [x, rstd]), weight], {}, 'rms');
  return { y, rstd };
}

/** dx from the forward's input x, its rstd, the weight and the output gradient dy. */
export function rmsNormBackwardNodes(g: GraphBuilder, x: string, rstd: string, weight: string, dy: string): string {
  const xhat = g.op('Mul', [x, rstd]);
  const gw = g.op('Mul', [dy, weight]);
  const meanGX = g.op('ReduceMean', [g.op('Mul', [gw, xhat]), g.int64s([-1])], { keepdims: 1 });
  return g.op('Mul', [g.op('Sub', [gw, g.op('Mul', [xhat, meanGX])]), rstd], {}, 'rms_dx');
}
