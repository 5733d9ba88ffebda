/**
 * Mean softmax cross-entropy over counted targets as ONNX nodes, mirroring
 * ops/cross-entropy.ts. logits [N, V] float32, targets int32 (any shape with N elements);
 * a target equal to IGNORE_INDEX (-100) is not counted.
 *
 *   lse = max + log(sum(exp(logits - max)))         per row
 *   loss = sum over counted rows of (lse - logits[target]) / max(count, 1)
 *   dlogits = (softmax - onehot(target)) / max(count, 1) on counted rows, 0 elsewhere
 *
 * The backward takes the softmax from the Softmax op rather than exp(logits - lse): measured
 * against the float64 reference, 1.0e-7 instead of 4.2e-7 (relative to max |dlogits|).
 * With no counted target the loss is 0 and the gradient all zero, as in the reference.
 * Ignored rows go through Where, not a multiply by 0, so garbage there cannot leak in as NaN.
 */
import type { GraphBuilder } from '../graph-builder';
import { IGNORE_INDEX } from '@splitllm/model';

export interface CrossEntropyForward {
  /** float32 scalar [] */
  loss: string;
  /** float32 scalar []: counted targets */
  count: string;
  // what the backward needs
  /** bool [N, 1]: target counted */
  valid: string;
  /** int32 [N, 1]: the target, 0 where ignored */
  target: string;
  /** float32 []: max(count, 1) */
  denom: string;
}

export function crossEntropyForwardNodes(g: GraphBuilder, logits: string, targets: string): CrossEntropyForward {
  const axis = g.int64s([-1]);
  const target = g.op('Reshape', [targets, g.int64s([-1, 1])]); // [N, 1]
  const valid = g.op('Not', [g.op('Equal', [target, g.int32Scalar(IGNORE_INDEX)])], {}, 'ce_valid');
  const safeTarget = g.op('Where', [valid, target, g.int32Scalar(0)]);
  const max = g.op('ReduceMax', [logits, axis], { keepdims: 1 });
  const sumExp = g.op('ReduceSum', [g.op('Exp', [g.op('Sub', [logits, max])]), axis], { keepdims: 1 });
  const lse = g.op('Add', [g.op('Log', [sumExp]), max], {}, 'ce_lse'); // [N, 1]
  const picked = g.op('GatherElements', [logits, safeTarget], { axis: 1 });
  const rowLoss = g.op('Where', [valid, g.op('Sub', [lse, picked]), g.scalar(0)]);
  const count = g.op('ReduceSum', [g.op('Cast', [valid], { to: 1 /* FLOAT */ })], { keepdims: 0 }, 'ce_count');
  const denom = g.op('Max', [count, g.scalar(1)]);
  const loss = g.op('Div', [g.op('ReduceSum', [rowLoss], { keepdims: 0 }), denom], {}, 'ce_loss');
  return { loss, count, valid, target: safeTarget, denom };
}

/** dlogits [N, V] for dloss = 1. */
export function crossEntropyBackwardNodes(
  g: GraphBuilder,
  logits: string,
  f: CrossEntropyForward,
  vocabSize: number,
): string {
  const softmax = g.op('Softmax', [logits], { axis: -1 });
  const vocab = g.op('Range', [g.int32Scalar(0), g.int32Scalar(vocabSize), g.int32Scalar(1)]); // [V]
  const onehot = g.op('Cast', [g.op('Equal', [vocab, f.target])], { to: 1 /* FLOAT */ }); // [N, V]
  const grad = g.op('Div', [g.op('Sub', [softmax, onehot]), f.denom]);
  return g.op('Where', [f.valid, grad, g.scalar(0)], {}, 'ce_dlogits');
}
