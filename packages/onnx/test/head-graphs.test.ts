/**
 * The head graphs of labels on the device (buildHeadStepGraph run chunk by chunk, as the tab
 * does, and buildHeadLogitsGraph) on onnxruntime-node's CPU provider, against the TypeScript
 * reference (headLossStep, headForward's logits, headLogits), on the shipped moby-tiny model (its
 * real last hidden states) and on a GPT-2-shaped random model, with right-padded rows and a
 * whole chunk of ignored targets, for several chunk sizes (1 row, a size that does not divide
 * the rows, the whole batch at once).
 *
 * Tolerances, relative to the max |value| of each reference tensor, those of the tail graphs
 * (segment-tail.test.ts), for the same ops: loss and logits 1e-5 (one float32 matmul of K = D
 * accumulated by MLAS against the reference's float64 accumulation, then a float32 log-sum-exp),
 * dh 1e-4 (the backward chains softmax - onehot, a matmul of K = V and the layer-norm backward's
 * cancellations). Measured: loss 8e-9, logits 8e-7, dh 8.7e-7. The count is exact, and ignored
 * rows give exactly 0.
 */
import { afterAll, describe, expect, it } from 'vitest';
import {
  blocksForward,
  embedForward,
  type Gpt2Model,
  headForward,
  headLogits,
  headLossStep,
  IGNORE_INDEX,
  Rng,
} from '@splitllm/model';
import type * as ort from 'onnxruntime-node';
import {
  buildHeadLogitsGraph,
  buildHeadStepGraph,
  HEAD_CHUNK_LOGITS,
  HEAD_CHUNK_MIN_ROWS,
  headChunkRows,
} from '../src/head-graphs';
import {
  ErrorLog,
  SMALL_CONFIG,
  createSession,
  loadMobyTiny,
  maxAbs,
  paddedBatch,
  randomModel,
  relErr,
  run,
} from './helpers';

const FWD_TOL = 1e-5;
const GRAD_TOL = 1e-4;

const log = new ErrorLog('ONNX head graphs vs reference');
afterAll(() => log.print());

/**
 * The tab's loop: the step graph on each chunk of `chunk` rows, the batch's count fed in, the
 * rows' losses summed in float64. Every chunk is run here, all-ignored ones included, so that
 * their zeros are checked too.
 */
async function chunkedHeadStep(
  session: ort.InferenceSession,
  hL: Float32Array,
  targets: Int32Array,
  D: number,
  chunk: number,
): Promise<{ loss: number; count: number; dh: Float32Array; rowLoss: Float32Array; runs: number }> {
  const rows = targets.length;
  let count = 0;
  for (const t of targets) if (t !== IGNORE_INDEX) count++;
  const dh = new Float32Array(rows * D);
  const rowLoss = new Float32Array(rows);
  let total = 0;
  let runs = 0;
  for (let r0 = 0; r0 < rows; r0 += chunk) {
    const n = Math.min(chunk, rows - r0);
    const out = await run(session, {
      h: { data: hL.slice(r0 * D, (r0 + n) * D), dims: [n, D] },
      targets: { data: targets.slice(r0, r0 + n), dims: [n] },
      count: { data: Float32Array.of(count), dims: [] },
    });
    expect(out.row_loss.length).toBe(n);
    expect(out.dh.length).toBe(n * D);
    for (const v of out.row_loss) total += v;
    rowLoss.set(out.row_loss, r0);
    dh.set(out.dh, r0 * D);
    runs++;
  }
  return { loss: count > 0 ? total / count : 0, count, dh, rowLoss, runs };
}

/** The model's last hidden state on a padded batch (moby-tiny: real activations, peaked logits). */
function lastHidden(model: Gpt2Model, B: number, T: number, seed: number) {
  const batch = paddedBatch(model.config, B, T, seed);
  const x = embedForward(model, batch.inputIds, B, T);
  return { hL: blocksForward(model, undefined, x, B, T, 0, model.config.nLayer).y, targets: batch.targets };
}

const models: Array<[string, () => Gpt2Model]> = [
  ['moby-tiny', loadMobyTiny],
  ['random', () => randomModel(SMALL_CONFIG, 21)],
];

describe.each(models)('head graphs on %s', (modelName, load) => {
  const model = load();
  const c = model.config;
  const D = c.nEmbd;
  const [B, T] = [3, 13];
  const rows = B * T;
  const { hL, targets } = lastHidden(model, B, T, 17);
  // rows 26..38 (the last batch row) all ignored: a whole chunk of 13 has no counted target
  targets.fill(IGNORE_INDEX, 2 * T);
  const ref = headLossStep(model, hL, targets, B, T);

  it('the reference case is a real one: ignored targets, counted ones, a nonzero gradient', () => {
    expect(ref.count).toBeGreaterThan(0);
    expect(ref.count).toBeLessThan(2 * T);
    expect(maxAbs(ref.dh)).toBeGreaterThan(0);
  });

  it.each([rows, 13, 7, 1])(
    'step graph in chunks of %i rows: loss 1e-5, dh 1e-4, ignored rows exactly 0',
    async (chunk) => {
      const session = await createSession(buildHeadStepGraph(model).model);
      try {
        const got = await chunkedHeadStep(session, hL, targets, D, chunk);
        expect(got.runs).toBe(Math.ceil(rows / chunk));
        expect(got.count).toBe(ref.count);
        expect(log.note(`${modelName} loss`, relErr([got.loss], [ref.loss]))).toBeLessThan(FWD_TOL);
        expect(log.note(`${modelName} dh`, relErr(got.dh, ref.dh))).toBeLessThan(GRAD_TOL);
        for (let i = 0; i < rows; i++) {
          if (targets[i] !== IGNORE_INDEX) continue;
          expect(got.rowLoss[i], `row ${i} loss`).toBe(0);
          expect(maxAbs(got.dh.subarray(i * D, (i + 1) * D)), `row ${i} dh`).toBe(0);
        }
      } finally {
        await session.release();
      }
    },
  );

  it('logits graph: the head logits of every row (headForward) and of one row (headLogits), 1e-5', async () => {
    const session = await createSession(buildHeadLogitsGraph(model).model);
    try {
      const all = await run(session, { h: { data: hL, dims: [rows, D] } });
      const want = headForward(model, hL, targets, B, T).logits;
      expect(all.logits.length).toBe(rows * c.vocabSize);
      expect(log.note(`${modelName} logits`, relErr(all.logits, want))).toBeLessThan(FWD_TOL);
      for (const r of [0, rows - 1]) {
        const h = hL.slice(r * D, (r + 1) * D);
        const one = await run(session, { h: { data: h, dims: [1, D] } });
        expect(log.note(`${modelName} logits (one row)`, relErr(one.logits, headLogits(model, h)))).toBeLessThan(
          FWD_TOL,
        );
      }
    } finally {
      await session.release();
    }
  });
});

describe('head graphs: contract', () => {
  const model = randomModel(SMALL_CONFIG, 22);
  const D = SMALL_CONFIG.nEmbd;
  const V = SMALL_CONFIG.vocabSize;

  it('declares the documented inputs and outputs', () => {
    const step = buildHeadStepGraph(model);
    expect(step.inputs).toEqual([
      { name: 'h', dtype: 'float32', dims: ['rows', D] },
      { name: 'targets', dtype: 'int32', dims: ['rows'] },
      { name: 'count', dtype: 'float32', dims: [] },
    ]);
    expect(step.outputs).toEqual([
      { name: 'row_loss', dtype: 'float32', dims: ['rows'] },
      { name: 'dh', dtype: 'float32', dims: ['rows', D] },
    ]);
    const logits = buildHeadLogitsGraph(model);
    expect(logits.inputs).toEqual([{ name: 'h', dtype: 'float32', dims: ['rows', D] }]);
    expect(logits.outputs).toEqual([{ name: 'logits', dtype: 'float32', dims: ['rows', V] }]);
  });

  it('a model without ln_f cannot be built into a head graph', () => {
    const weights = new Map(model.weights);
    weights.delete('ln_f.bias');
    expect(() => buildHeadStepGraph({ config: model.config, weights })).toThrow(/ln_f\.bias/);
  });

  it('the chunk rule: floor(2^20 / V) rows, at least 64, at most the batch', () => {
    expect(HEAD_CHUNK_LOGITS).toBe(1 << 20);
    expect(HEAD_CHUNK_MIN_ROWS).toBe(64);
    expect(headChunkRows(1024, 512)).toBe(512); // the shipped model, a 4 x 128 batch: one chunk
    expect(headChunkRows(1024, 1152)).toBe(1024); // 9 x 128: two chunks
    expect(headChunkRows(50257, 512)).toBe(64); // GPT-2: the floor of 64 rows (20 by the budget alone)
    expect(headChunkRows(50257, 10)).toBe(10);
    expect(headChunkRows(301, 1e6)).toBe(3483);
    expect(() => headChunkRows(0, 10)).toThrow(/vocabulary/);
    expect(() => headChunkRows(1024, 0)).toThrow(/rows/);
    expect(() => headChunkRows(1024, 2.5)).toThrow(/rows/);
  });

  it('with every target ignored (count 0): row losses and dh all exactly 0, no NaN', async () => {
    const rng = new Rng(4);
    const rows = 6;
    const hL = rng.fillNormal(new Float32Array(rows * D), 2);
    const targets = new Int32Array(rows).fill(IGNORE_INDEX);
    const session = await createSession(buildHeadStepGraph(model).model);
    try {
      const got = await chunkedHeadStep(session, hL, targets, D, 4);
      expect(got.count).toBe(0);
      expect(got.loss).toBe(0);
      expect(got.rowLoss.every((v) => v === 0)).toBe(true);
      expect(got.dh.every((v) => v === 0)).toBe(true);
      const ref = headLossStep(model, hL, targets, 1, rows);
      expect(ref.loss).toBe(0);
      expect(ref.dh.every((v) => v === 0)).toBe(true);
    } finally {
      await session.release();
    }
  });
});
