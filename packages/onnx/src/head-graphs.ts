/**
 * ONNX graphs of the head that the tab runs when the labels stay on the device (the 'wasm' user
 * engine runs them with onnxruntime-web): the cloud sends back the last hidden state hL, the
 * tab computes ln_f, the tied LM head and the cross-entropy on its own targets, and returns
 * dL/dhL.
 *
 *   buildHeadStepGraph    ln_f + tied head + cross-entropy, forward and backward, on a chunk of rows
 *   buildHeadLogitsGraph  ln_f + tied head: logits of some rows (generation: one row)
 *
 * They mirror model.ts (headForward / headBackward, headLogits) op for op, through the same
 * fragments as buildTailGraph (./ops/layernorm, Gemm with wte transposed, MatMul with wte for
 * the backward). The frozen weights (ln_f.weight, ln_f.bias, wte.weight) are initializers.
 *
 * Chunks: the logits of a batch are [rows, V] (GPT-2: 50257 floats per row), and the step graph
 * holds a few tensors of that size at once (logits, exp, softmax, one-hot, their difference).
 * So the caller runs the step graph once per chunk of at most headChunkRows(V, rows) rows (the
 * rows dimension is symbolic) and no more than one chunk's logits ever exist. A chunk cannot know
 * the batch's count of counted targets, which the mean divides by, so:
 *  - 'count' (the whole batch's count, computed by the caller from the targets) is an input, and
 *    the backward divides by max(count, 1) exactly as the reference's mean does;
 *  - the loss comes out per row ('row_loss', 0 on ignored rows): the caller sums all chunks' rows
 *    in float64 and divides by the count, as the reference sums its rows in float64.
 * Rows whose target is IGNORE_INDEX give row_loss 0 and dh 0 (the gradient goes through Where,
 * so nothing of such a row leaks in), so a chunk with no counted target need not be run at all.
 */
import { IGNORE_INDEX, getWeight, type Gpt2Model } from '@splitllm/model';
import { GraphBuilder } from './graph-builder';
import { layerNormBackwardNodes, layerNormForwardNodes } from './ops/layernorm';
import type { GraphIO, SegmentGraph } from './segment-graphs';

/** The symbolic rows dimension (batch * seq positions, or one chunk of them) of the head graphs. */
export const HEAD_ROWS_DIM = 'rows';

/**
 * The chunk rule's budget: floats in one [rows, V] tensor of the step graph, 2^20 (4 MiB). The
 * graph holds ~5 such tensors at its peak (logits, exp(logits - max) in the forward; softmax,
 * one-hot, their difference and the masked gradient in the backward, some of them reused by
 * onnxruntime's allocation plan), so one chunk costs ~20 MiB of the wasm heap whatever the batch.
 */
export const HEAD_CHUNK_LOGITS = 1 << 20;

/**
 * The fewest rows a chunk has, whatever V: each chunk reads all of wte twice (the head's matmul
 * and its backward), so a chunk of a handful of rows is bound by that read (GPT-2: 154 MB per
 * pass) rather than by arithmetic. Measured with onnxruntime-web 1.30 (wasm EP, one thread, Node,
 * a shared 2-core machine, best of 3) on the step graph at GPT-2's head shape (V 50257, D 768):
 * 19-32 ms per row for chunks of 8-32 rows (20 is what the budget alone gives), 8-12 ms per row
 * for 48-256 rows. 64 rows of 50257 logits are 12.9 MB per tensor, still affordable in a tab.
 */
export const HEAD_CHUNK_MIN_ROWS = 64;

/**
 * Rows per run of the step graph for a batch of `rows` rows and a vocabulary of `vocabSize`:
 * max(HEAD_CHUNK_MIN_ROWS, floor(HEAD_CHUNK_LOGITS / V)), and never more than the batch. The
 * shipped model (V 1024) gets 1024 rows (8 x 128 positions) per chunk; GPT-2 (V 50257) gets 64.
 */
export function headChunkRows(vocabSize: number, rows: number): number {
  if (!(Number.isInteger(vocabSize) && vocabSize >= 1)) {
    throw new Error(`head chunk: vocabulary size ${vocabSize} must be a positive integer`);
  }
  if (!(Number.isInteger(rows) && rows >= 1)) throw new Error(`head chunk: ${rows} rows must be a positive integer`);
  return Math.min(rows, Math.max(HEAD_CHUNK_MIN_ROWS, Math.floor(HEAD_CHUNK_LOGITS / vocabSize)));
}

interface Head {
  g: GraphBuilder;
  inputs: GraphIO[];
  outputs: GraphIO[];
  /** [rows, D] float32 */
  h: string;
  normed: ReturnType<typeof layerNormForwardNodes>;
  gamma: string;
  wte: string;
  /** [rows, V] */
  logits: string;
}

/** The common part: input 'h', the frozen weights as initializers, ln_f and the tied head. */
function headForward(model: Gpt2Model, name: string): Head {
  const c = model.config;
  const g = new GraphBuilder(name);
  const weight = (n: string) => {
    const t = getWeight(model.weights, n);
    return g.initializer(n, 'float32', t.shape, t.data);
  };
  const inputs: GraphIO[] = [{ name: 'h', dtype: 'float32', dims: [HEAD_ROWS_DIM, c.nEmbd] }];
  const h = g.input('h', 'float32', inputs[0].dims);
  const gamma = weight('ln_f.weight');
  const normed = layerNormForwardNodes(g, h, gamma, weight('ln_f.bias'), c.layerNormEpsilon);
  const wte = weight('wte.weight');
  const logits = g.op('Gemm', [normed.y, wte], { transB: 1 }, 'logits');
  return { g, inputs, outputs: [], h, normed, gamma, wte, logits };
}

function output(head: Head, name: string, value: string, dims: GraphIO['dims']): void {
  head.outputs.push({ name, dtype: 'float32', dims: [...dims] });
  head.g.output(name, value, 'float32', dims);
}

/**
 * One chunk of the head step. Inputs: 'h' float32 [rows, D] (the last hidden state of the
 * chunk's positions), 'targets' int32 [rows] (IGNORE_INDEX = -100: not counted), 'count' float32
 * [] (the counted targets of the WHOLE batch the chunk belongs to). Outputs: 'row_loss' float32
 * [rows] (the cross-entropy of each row, 0 where ignored) and 'dh' float32 [rows, D], the chunk's
 * part of d(mean loss)/dh.
 *
 * The cross-entropy is the one of ./ops/cross-entropy.ts, with two changes the chunking needs:
 * the loss is left per row (not summed and divided by the chunk's own count), and the gradient
 * is divided by the input count rather than by the chunk's. As there, the backward takes the
 * softmax from the Softmax op (closer to the float64 reference than exp(logits - lse)).
 */
export function buildHeadStepGraph(model: Gpt2Model): SegmentGraph {
  const c = model.config;
  const head = headForward(model, 'head_step');
  const { g, logits } = head;
  head.inputs.push(
    { name: 'targets', dtype: 'int32', dims: [HEAD_ROWS_DIM] },
    { name: 'count', dtype: 'float32', dims: [] },
  );
  const targets = g.input('targets', 'int32', [HEAD_ROWS_DIM]);
  const count = g.input('count', 'float32', []);

  // forward: lse - logits[target] per row
  const axis = g.int64s([-1]);
  const target = g.op('Reshape', [targets, g.int64s([-1, 1])]); // [rows, 1]
  const valid = g.op('Not', [g.op('Equal', [target, g.int32Scalar(IGNORE_INDEX)])], {}, 'ce_valid');
  const safeTarget = g.op('Where', [valid, target, g.int32Scalar(0)]);
  const max = g.op('ReduceMax', [logits, axis], { keepdims: 1 });
  const sumExp = g.op('ReduceSum', [g.op('Exp', [g.op('Sub', [logits, max])]), axis], { keepdims: 1 });
  const lse = g.op('Add', [g.op('Log', [sumExp]), max], {}, 'ce_lse'); // [rows, 1]
  const picked = g.op('GatherElements', [logits, safeTarget], { axis: 1 });
  const rowLoss = g.op('Where', [valid, g.op('Sub', [lse, picked]), g.scalar(0)]);
  output(head, 'row_loss', g.op('Reshape', [rowLoss, g.int64s([-1])]), [HEAD_ROWS_DIM]);

  // backward: dlogits = (softmax - onehot) / max(count, 1) on counted rows, 0 elsewhere
  const denom = g.op('Max', [count, g.scalar(1)]);
  const softmax = g.op('Softmax', [logits], { axis: -1 });
  const vocab = g.op('Range', [g.int32Scalar(0), g.int32Scalar(c.vocabSize), g.int32Scalar(1)]); // [V]
  const onehot = g.op('Cast', [g.op('Equal', [vocab, safeTarget])], { to: 1 /* FLOAT */ }); // [rows, V]
  const grad = g.op('Div', [g.op('Sub', [softmax, onehot]), denom]);
  const dLogits = g.op('Where', [valid, grad, g.scalar(0)], {}, 'ce_dlogits');
  const dNormed = g.op('MatMul', [dLogits, head.wte]);
  const dh = layerNormBackwardNodes(g, head.h, head.normed.mean, head.normed.rstd, head.gamma, dNormed);
  output(head, 'dh', dh, [HEAD_ROWS_DIM, c.nEmbd]);
  return { model: g.toModel(), inputs: head.inputs, outputs: head.outputs };
}

/**
 * Logits of some rows (generation with labels on the device: one row, the last position's
 * hidden state). Input: 'h' float32 [rows, D]. Output: 'logits' float32 [rows, V].
 */
export function buildHeadLogitsGraph(model: Gpt2Model): SegmentGraph {
  const head = headForward(model, 'head_logits');
  output(head, 'logits', head.logits, [HEAD_ROWS_DIM, model.config.vocabSize]);
  return { model: head.g.toModel(), inputs: head.inputs, outputs: head.outputs };
}
