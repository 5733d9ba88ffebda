/**
 * The LLaMA-family ONNX graphs (llama-graphs.ts) on onnxruntime-node's CPU provider, against the
 * TypeScript reference (llama.ts: llamaBlocksForward/Backward, llamaHeadForward/Backward,
 * llamaHeadLossStep, llamaHeadLogits), on tiny random models: D 32, 4 query heads sharing 2 kv
 * heads of width 8, SwiGLU width 48, 3 layers, vocabulary 64; tied head without biases, Qwen2's
 * q/k/v biases with an untied head, Llama 3 rope scaling with every bias, and plain multi-head
 * (Hkv = H). B = 2 with a right-padded row, T = 7; LoRA B random (nonzero), so every dA counts.
 * All seven LoRA targets and PEFT's default subset (q_proj, v_proj) are run; the blocks graphs in
 * both saveIntermediates modes, which must agree.
 *
 * Tolerances, relative to the max |value| of each reference tensor, those of the GPT-2 graphs
 * (segment-blocks, segment-tail, head-graphs tests) for the same reason: the graphs compute in
 * float32 (MLAS matmuls, float32 reductions for RMSNorm, softmax and log-sum-exp), the reference
 * accumulates in float64 and rounds once. Forward values (y, loss, logits) 1e-5: a few ulps of
 * float32 after chains of ~10 rounded ops per block; gradients (dx, dA, dB, dh) 1e-4: the
 * backward chains more of them, and the RMSNorm, softmax and SwiGLU backwards subtract nearly
 * equal terms, which turns ulps of the terms into larger relative errors of the difference.
 * Measured worst (this file's printed table, `pnpm --filter @splitllm/onnx exec vitest run
 * test/llama-graphs.test.ts`): y 4.4e-7, loss 1.1e-7, logits 1.0e-6, dx 1.3e-6, dA 1.4e-6,
 * dB 1.3e-6, dh 4.2e-7. Keep vs recompute, split vs whole and step graph vs two graphs run the
 * same nodes on the same numbers, so they must agree to 1e-6 (measured: 0, bit for bit).
 */
import { afterAll, describe, expect, it } from 'vitest';
import {
  IGNORE_INDEX,
  initLlamaLoraAdapter,
  LLAMA_LORA_TARGETS,
  type LlamaConfig,
  type LlamaLoraAdapter,
  type LlamaLoraConfig,
  type LlamaLoraTarget,
  llamaBlocksBackward,
  llamaBlocksForward,
  llamaEmbedForward,
  llamaHeadBackward,
  llamaHeadForward,
  llamaHeadLogits,
  llamaHeadLossStep,
  type LoraGrads,
  llama3ScaledConfig,
  perturbedLlamaModel,
  tinyLlamaConfig,
  withRandomLoraB,
  Rng,
  type TokenBatch,
} from '@splitllm/model';
import * as ort from 'onnxruntime-node';
import { headChunkRows } from '../src/head-graphs';
import {
  LlamaGraphError,
  llamaBlocksBackwardGraph,
  llamaBlocksForwardGraph,
  llamaBlocksStepGraph,
  llamaHeadLogitsGraph,
  llamaHeadStepGraph,
  llamaLoraGradsFromGraph,
  llamaLoraGraphFeeds,
  llamaTailGraph,
  llamaTailLogitsGraph,
  llamaTailLossGraph,
} from '../src/llama-graphs';
import type { SegmentGraph } from '../src/segment-graphs';
import { ErrorLog, createSession, maxAbs, randn, relErr, run, type Feed, type Outputs } from './helpers';

const FWD_TOL = 1e-5;
const GRAD_TOL = 1e-4;
const SAME_TOL = 1e-6;

const log = new ErrorLog('ONNX LLaMA graphs vs reference');
afterAll(() => log.print());

const tiny: LlamaConfig = tinyLlamaConfig({ maxPositionEmbeddings: 32 });

/**
 * Llama 3 scaling with theta 100 and head_dim 8: inv_freq 1, 0.32, 0.1, 0.032 are wavelengths 6.3,
 * 20, 63 and 200; with L = 128 and factors 1 / 4 the first two are kept (< 32), the third smoothed
 * (32..128), the last divided by the factor (> 128), so every band is in the table.
 */
const llama3Like: LlamaConfig = { ...llama3ScaledConfig(tiny, 128), qkvBias: true };

const CONFIGS: Array<[string, LlamaConfig]> = [
  ['tied, no biases', tiny],
  ['qwen2: q/k/v biases, untied', { ...tiny, family: 'qwen2', qkvBias: true, tieWordEmbeddings: false }],
  ['llama3 rope scaling, all biases, untied', llama3Like],
  ['multi-head (Hkv = H)', { ...tiny, nKvHead: 4 }],
];

const ALL: LlamaLoraTarget[] = [...LLAMA_LORA_TARGETS];
const QV: LlamaLoraTarget[] = ['q_proj', 'v_proj'];

/** LoRA B random (0.3 std), so every dA counts; the model: perturbedLlamaModel (every path carries a gradient). */
function randomAdapter(config: LlamaConfig, lora: LlamaLoraConfig, seed: number): LlamaLoraAdapter {
  return withRandomLoraB(initLlamaLoraAdapter(config, lora, seed), seed + 99, 0.3);
}

/** B rows of T tokens; every row but the first right-padded (ignored targets at its end). */
function paddedBatch(c: LlamaConfig, B: number, T: number, seed: number): TokenBatch {
  const rng = new Rng(seed);
  const inputIds = new Int32Array(B * T);
  const targets = new Int32Array(B * T);
  const eos = c.eosTokenIds[0];
  for (let b = 0; b < B; b++) {
    const len = b === 0 ? T : Math.max(1, T - 3 * b);
    for (let t = 0; t < T; t++) inputIds[b * T + t] = t < len ? rng.int(c.vocabSize) : eos;
    for (let t = 0; t < T; t++)
      targets[b * T + t] = t < len - 1 ? inputIds[b * T + t + 1] : t === len - 1 ? eos : IGNORE_INDEX;
  }
  return { B, T, inputIds, targets };
}

const [B, T] = [2, 7];

/** The dims of a graph output for this batch (symbolic ones filled in). */
function concrete(dims: (number | string)[], b = B, t = T): number[] {
  return dims.map((d) => (d === 'batch' || d === 'backward_batch' ? b : typeof d === 'string' ? t : d));
}

function savedFeeds(g: SegmentGraph, out: Outputs): Record<string, Feed> {
  const saved: Record<string, Feed> = {};
  for (const o of g.outputs.filter((o) => o.name.startsWith('saved.'))) {
    const dims = concrete(o.dims);
    expect(out[o.name].length, o.name).toBe(dims.reduce((a, b) => a * b, 1));
    saved[o.name] = { data: out[o.name], dims };
  }
  return saved;
}

function checkGrads(label: string, got: LoraGrads, want: LoraGrads, expectedCount: number): void {
  expect(new Set(got.keys())).toEqual(new Set(want.keys()));
  expect(got.size).toBe(expectedCount);
  for (const [path, g] of got) {
    const r = want.get(path)!;
    expect(maxAbs(r.A) > 0 && maxAbs(r.B) > 0, `${path}: a zero reference gradient would prove nothing`).toBe(true);
    expect(log.note(`${label} dA`, relErr(g.A, r.A)), `${path} dA`).toBeLessThan(GRAD_TOL);
    expect(log.note(`${label} dB`, relErr(g.B, r.B)), `${path} dB`).toBeLessThan(GRAD_TOL);
  }
}

/** Runs a forward and a backward graph pair on x and dy; returns both runs' outputs. */
async function runBlocks(
  fg: SegmentGraph,
  bg: SegmentGraph,
  x: Float32Array,
  dy: Float32Array,
  lora: Record<string, Feed>,
  D: number,
): Promise<{ fwd: Outputs; bwd: Outputs }> {
  const fs = await createSession(fg.model);
  const bs = await createSession(bg.model);
  try {
    expect(fs.inputNames).toEqual(fg.inputs.map((i) => i.name));
    expect(fs.outputNames).toEqual(fg.outputs.map((o) => o.name));
    expect(bs.inputNames).toEqual(bg.inputs.map((i) => i.name));
    expect(bs.outputNames).toEqual(bg.outputs.map((o) => o.name));
    const xFeed: Feed = { data: x, dims: [B, T, D] };
    const fwd = await run(fs, { x: xFeed, ...lora });
    const bwd = await run(bs, { x: xFeed, ...lora, dy: { data: dy, dims: [B, T, D] }, ...savedFeeds(fg, fwd) });
    return { fwd, bwd };
  } finally {
    await fs.release();
    await bs.release();
  }
}

describe.each(CONFIGS)('LLaMA blocks graphs, %s', (name, config) => {
  const model = perturbedLlamaModel(config, 3);
  const D = config.hiddenSize;

  it.each([
    ['[1, 3) all seven', 1, 3, ALL],
    ['[0, 1) q_proj, v_proj', 0, 1, QV],
  ] as const)('blocks %s: y 1e-5, dx and LoRA grads 1e-4, keep == recompute', async (_l, from, to, targets) => {
    const lora: LlamaLoraConfig = { r: 3, alpha: 6, targets: [...targets] };
    const adapter = randomAdapter(config, lora, 20 + from);
    const batch = paddedBatch(config, B, T, 7);
    const x = llamaBlocksForward(model, adapter, llamaEmbedForward(model, batch.inputIds, B, T), B, T, 0, from).y;
    const dy = randn(B * T * D, new Rng(from * 10 + to), 1);
    const ref = llamaBlocksForward(model, adapter, x, B, T, from, to);
    const refBack = llamaBlocksBackward(model, adapter, ref.cache, dy);
    const loraFeeds: Record<string, Feed> = Object.fromEntries(llamaLoraGraphFeeds(config, lora, adapter, from, to));
    expect(Object.keys(loraFeeds).length).toBe(2 * targets.length * (to - from));

    const results: Array<{ fwd: Outputs; bwd: Outputs }> = [];
    for (const saveIntermediates of [true, false]) {
      const fg = llamaBlocksForwardGraph(model, lora, from, to, { saveIntermediates });
      const bg = llamaBlocksBackwardGraph(model, lora, from, to, { saveIntermediates });
      expect(fg.outputs.some((o) => o.name.startsWith('saved.'))).toBe(saveIntermediates);
      const r = await runBlocks(fg, bg, x, dy, loraFeeds, D);
      const mode = saveIntermediates ? 'keep' : 'recompute';
      expect(log.note('blocks y', relErr(r.fwd.y, ref.y)), `${mode} y`).toBeLessThan(FWD_TOL);
      expect(log.note('blocks dx', relErr(r.bwd.dx, refBack.dx)), `${mode} dx`).toBeLessThan(GRAD_TOL);
      const grads = llamaLoraGradsFromGraph(config, lora, from, to, (n) => r.bwd[n]);
      checkGrads(`blocks (${name})`, grads, refBack.loraGrads, (to - from) * targets.length);
      results.push(r);
    }
    const [keep, recompute] = results;
    expect(log.note('keep vs recompute', relErr(keep.fwd.y, recompute.fwd.y))).toBeLessThanOrEqual(SAME_TOL);
    for (const n of Object.keys(recompute.bwd))
      expect(log.note('keep vs recompute', relErr(keep.bwd[n], recompute.bwd[n])), n).toBeLessThanOrEqual(SAME_TOL);
  });
});

describe('LLaMA blocks graphs: split and step', () => {
  const config = llama3Like;
  const model = perturbedLlamaModel(config, 5);
  const D = config.hiddenSize;
  const lora: LlamaLoraConfig = { r: 2, alpha: 4, targets: ALL };
  const adapter = randomAdapter(config, lora, 31);
  const batch = paddedBatch(config, B, T, 8);
  const x = llamaEmbedForward(model, batch.inputIds, B, T);
  const dy = randn(B * T * D, new Rng(12), 1);
  const feeds = (from: number, to: number): Record<string, Feed> =>
    Object.fromEntries(llamaLoraGraphFeeds(config, lora, adapter, from, to));
  const graphs = (from: number, to: number) =>
    [0, 1].map((i) =>
      (i === 0 ? llamaBlocksForwardGraph : llamaBlocksBackwardGraph)(model, lora, from, to, {
        saveIntermediates: true,
      }),
    );

  it('[0, 1) then [1, 2) equals [0, 2): y, dx and every LoRA gradient', async () => {
    const [f01, b01] = graphs(0, 1);
    const [f12, b12] = graphs(1, 2);
    const [f02, b02] = graphs(0, 2);
    const fs01 = await createSession(f01.model);
    const fs12 = await createSession(f12.model);
    const first = await run(fs01, { x: { data: x, dims: [B, T, D] }, ...feeds(0, 1) });
    const second = await runBlocks(f12, b12, first.y, dy, feeds(1, 2), D);
    const back01 = await createSession(b01.model);
    const firstBack = await run(back01, {
      x: { data: x, dims: [B, T, D] },
      ...feeds(0, 1),
      dy: { data: second.bwd.dx, dims: [B, T, D] },
      ...savedFeeds(f01, first),
    });
    const whole = await runBlocks(f02, b02, x, dy, feeds(0, 2), D);
    expect(log.note('split vs whole', relErr(second.fwd.y, whole.fwd.y))).toBeLessThanOrEqual(SAME_TOL);
    expect(log.note('split vs whole', relErr(firstBack.dx, whole.bwd.dx))).toBeLessThanOrEqual(SAME_TOL);
    const split = new Map([
      ...llamaLoraGradsFromGraph(config, lora, 0, 1, (n) => firstBack[n]),
      ...llamaLoraGradsFromGraph(config, lora, 1, 2, (n) => second.bwd[n]),
    ]);
    const all = llamaLoraGradsFromGraph(config, lora, 0, 2, (n) => whole.bwd[n]);
    expect(split.size).toBe(2 * ALL.length);
    for (const [path, g] of all) {
      expect(log.note('split vs whole', relErr(split.get(path)!.A, g.A)), path).toBeLessThanOrEqual(SAME_TOL);
      expect(log.note('split vs whole', relErr(split.get(path)!.B, g.B)), path).toBeLessThanOrEqual(SAME_TOL);
    }
    // and the whole against the reference, so the split is not merely self-consistent
    const ref = llamaBlocksForward(model, adapter, x, B, T, 0, 2);
    expect(relErr(whole.fwd.y, ref.y)).toBeLessThan(FWD_TOL);
    expect(relErr(whole.bwd.dx, llamaBlocksBackward(model, adapter, ref.cache, dy).dx)).toBeLessThan(GRAD_TOL);
    for (const s of [fs01, fs12, back01]) await s.release();
  });

  it('the step graph gives the two graphs’ numbers, each half fed 0 rows while the other runs', async () => {
    for (const saveIntermediates of [true, false]) {
      const opts = { saveIntermediates };
      const step = llamaBlocksStepGraph(model, lora, 1, 3, opts);
      const two = await runBlocks(
        llamaBlocksForwardGraph(model, lora, 1, 3, opts),
        llamaBlocksBackwardGraph(model, lora, 1, 3, opts),
        x,
        dy,
        feeds(1, 3),
        D,
      );
      const session = await createSession(step.model);
      const backIn = step.inputs.filter((i) => i.name === 'dy' || i.name.startsWith('backward.'));
      const empty = (dims: (number | string)[]): Feed => ({ data: new Float32Array(0), dims: concrete(dims, 0) });
      const fwd = await run(session, {
        x: { data: x, dims: [B, T, D] },
        ...feeds(1, 3),
        ...Object.fromEntries(backIn.map((i) => [i.name, empty(i.dims)])),
      });
      expect(fwd.dx.length).toBe(0);
      expect(relErr(fwd.y, two.fwd.y)).toBeLessThanOrEqual(SAME_TOL);
      const saved = Object.fromEntries(Object.entries(savedFeeds(step, fwd)).map(([k, v]) => [`backward.${k}`, v]));
      const bwd = await run(session, {
        x: { data: new Float32Array(0), dims: [0, T, D] },
        ...feeds(1, 3),
        'backward.x': { data: x, dims: [B, T, D] },
        dy: { data: dy, dims: [B, T, D] },
        ...saved,
      });
      expect(bwd.y.length).toBe(0);
      for (const n of Object.keys(two.bwd))
        expect(log.note('step vs two graphs', relErr(bwd[n], two.bwd[n])), n).toBeLessThanOrEqual(SAME_TOL);
      await session.release();
    }
  });
});

describe.each(CONFIGS.slice(0, 3))('LLaMA tail graphs, %s', (name, config) => {
  const model = perturbedLlamaModel(config, 4);
  const L = config.nLayer;
  const D = config.hiddenSize;

  it.each([
    ['from 1, all seven', 1, ALL],
    ['from 2, q_proj, v_proj', 2, QV],
    ['from L (head only)', L, ALL],
  ] as const)('tail %s: loss 1e-5, dx and grads 1e-4; loss graph; last-position logits 1e-5', async (_l, from, t) => {
    const lora: LlamaLoraConfig = { r: 3, alpha: 6, targets: [...t] };
    const adapter = randomAdapter(config, lora, 40 + from);
    const batch = paddedBatch(config, B, T, 9);
    expect(batch.targets.includes(IGNORE_INDEX)).toBe(true);
    const x = llamaBlocksForward(model, adapter, llamaEmbedForward(model, batch.inputIds, B, T), B, T, 0, from).y;
    const blocks = llamaBlocksForward(model, adapter, x, B, T, from, L);
    const head = llamaHeadForward(model, blocks.y, batch.targets, B, T);
    const refBack = llamaBlocksBackward(model, adapter, blocks.cache, llamaHeadBackward(model, head.cache));

    const lf = Object.fromEntries(llamaLoraGraphFeeds(config, lora, adapter, from, L));
    const feeds: Record<string, Feed> = {
      x: { data: x, dims: [B, T, D] },
      targets: { data: batch.targets, dims: [B, T] },
      ...lf,
    };
    const tg = llamaTailGraph(model, lora, from);
    const session = await createSession(tg.model);
    expect(session.inputNames).toEqual(tg.inputs.map((i) => i.name));
    expect(session.outputNames).toEqual(tg.outputs.map((o) => o.name));
    const out = await run(session, feeds);
    await session.release();
    expect(out.count[0]).toBe(head.count);
    expect(log.note('tail loss', relErr(out.loss, [head.loss]))).toBeLessThan(FWD_TOL);
    expect(log.note('tail dx', relErr(out.dx, refBack.dx))).toBeLessThan(GRAD_TOL);
    const grads = llamaLoraGradsFromGraph(config, lora, from, L, (n) => out[n]);
    checkGrads(`tail (${name})`, grads, refBack.loraGrads, (L - from) * t.length);

    const lg = llamaTailLossGraph(model, lora, from);
    expect(lg.inputs).toEqual(tg.inputs);
    expect(lg.outputs.map((o) => o.name)).toEqual(['loss', 'count']);
    const ls = await createSession(lg.model);
    const lo = await run(ls, feeds);
    await ls.release();
    expect(lo.count[0]).toBe(head.count);
    expect(log.note('tail loss (loss-only graph)', relErr(lo.loss, [head.loss]))).toBeLessThan(FWD_TOL);

    const gg = llamaTailLogitsGraph(model, lora, from);
    const gs = await createSession(gg.model);
    const go = await run(gs, { x: { data: x, dims: [B, T, D] }, ...lf });
    await gs.release();
    const V = config.vocabSize;
    expect(go.logits.length).toBe(B * V);
    for (let b = 0; b < B; b++) {
      const want = llamaHeadLogits(model, blocks.y.slice((b * T + T - 1) * D, (b * T + T) * D));
      expect(log.note('tail logits (last position)', relErr(go.logits.slice(b * V, (b + 1) * V), want))).toBeLessThan(
        FWD_TOL,
      );
    }
  });
});

/** The tab's loop over the head step graph's chunks (head-graphs.test.ts'): count fed in, losses summed in float64. */
async function chunkedHeadStep(
  session: ort.InferenceSession,
  hL: Float32Array,
  targets: Int32Array,
  D: number,
  chunk: number,
): Promise<{ loss: number; count: number; dh: Float32Array; rowLoss: Float32Array }> {
  const rows = targets.length;
  const count = targets.filter((t) => t !== IGNORE_INDEX).length;
  const dh = new Float32Array(rows * D);
  const rowLoss = new Float32Array(rows);
  let total = 0;
  for (let r0 = 0; r0 < rows; r0 += chunk) {
    const n = Math.min(chunk, rows - r0);
    const out = await run(session, {
      h: { data: hL.slice(r0 * D, (r0 + n) * D), dims: [n, D] },
      targets: { data: targets.slice(r0, r0 + n), dims: [n] },
      count: { data: Float32Array.of(count), dims: [] },
    });
    for (const v of out.row_loss) total += v;
    rowLoss.set(out.row_loss, r0);
    dh.set(out.dh, r0 * D);
  }
  return { loss: count > 0 ? total / count : 0, count, dh, rowLoss };
}

describe.each(CONFIGS.slice(0, 3))('LLaMA head graphs (labels on the device), %s', (_name, config) => {
  const model = perturbedLlamaModel(config, 6);
  const D = config.hiddenSize;
  const [b3, t13] = [3, 13];
  const rows = b3 * t13;
  const batch = paddedBatch(config, b3, t13, 17);
  const hL = llamaBlocksForward(
    model,
    undefined,
    llamaEmbedForward(model, batch.inputIds, b3, t13),
    b3,
    t13,
    0,
    config.nLayer,
  ).y;
  const targets = batch.targets;
  targets.fill(IGNORE_INDEX, 2 * t13); // a whole chunk of 13 rows with no counted target
  const ref = llamaHeadLossStep(model, hL, targets, b3, t13);

  it.each([rows, 13, 5, 1])('step graph in chunks of %i rows: loss 1e-5, dh 1e-4, ignored rows 0', async (chunk) => {
    expect(ref.count).toBeGreaterThan(0);
    expect(maxAbs(ref.dh)).toBeGreaterThan(0);
    const session = await createSession(llamaHeadStepGraph(model).model);
    const got = await chunkedHeadStep(session, hL, targets, D, chunk);
    await session.release();
    expect(got.count).toBe(ref.count);
    expect(log.note('head loss', relErr([got.loss], [ref.loss]))).toBeLessThan(FWD_TOL);
    expect(log.note('head dh', relErr(got.dh, ref.dh))).toBeLessThan(GRAD_TOL);
    for (let i = 0; i < rows; i++) {
      if (targets[i] !== IGNORE_INDEX) continue;
      expect(got.rowLoss[i], `row ${i} loss`).toBe(0);
      expect(maxAbs(got.dh.subarray(i * D, (i + 1) * D)), `row ${i} dh`).toBe(0);
    }
  });

  it('logits graph: every row (llamaHeadForward) and one row (llamaHeadLogits), 1e-5', async () => {
    const session = await createSession(llamaHeadLogitsGraph(model).model);
    const all = await run(session, { h: { data: hL, dims: [rows, D] } });
    expect(
      log.note('head logits', relErr(all.logits, llamaHeadForward(model, hL, targets, b3, t13).logits)),
    ).toBeLessThan(FWD_TOL);
    const h = hL.slice((rows - 1) * D);
    const one = await run(session, { h: { data: h, dims: [1, D] } });
    expect(log.note('head logits', relErr(one.logits, llamaHeadLogits(model, h)))).toBeLessThan(FWD_TOL);
    await session.release();
    expect(headChunkRows(config.vocabSize, rows)).toBe(rows); // the chunk rule applies unchanged (V 64)
  });
});

describe('LLaMA graphs: contract', () => {
  const config = { ...tiny, qkvBias: true, tieWordEmbeddings: false };
  const model = perturbedLlamaModel(config, 8);
  const lora: LlamaLoraConfig = { r: 2, alpha: 4, targets: ['v_proj', 'down_proj'] };

  it('declares inputs and outputs in the GPT-2 graphs’ order, with LLaMA module paths', () => {
    const f = llamaBlocksForwardGraph(model, lora, 1, 3, { saveIntermediates: true });
    expect(f.inputs).toEqual([
      { name: 'x', dtype: 'float32', dims: ['batch', 'seq', 32] },
      { name: 'layers.1.self_attn.v_proj.lora_A', dtype: 'float32', dims: [32, 2] },
      { name: 'layers.1.self_attn.v_proj.lora_B', dtype: 'float32', dims: [2, 16] },
      { name: 'layers.1.mlp.down_proj.lora_A', dtype: 'float32', dims: [48, 2] },
      { name: 'layers.1.mlp.down_proj.lora_B', dtype: 'float32', dims: [2, 32] },
      { name: 'layers.2.self_attn.v_proj.lora_A', dtype: 'float32', dims: [32, 2] },
      { name: 'layers.2.self_attn.v_proj.lora_B', dtype: 'float32', dims: [2, 16] },
      { name: 'layers.2.mlp.down_proj.lora_A', dtype: 'float32', dims: [48, 2] },
      { name: 'layers.2.mlp.down_proj.lora_B', dtype: 'float32', dims: [2, 32] },
    ]);
    // o_proj has no LoRA here, so its input is not saved; the first block's input is x
    expect(f.outputs.map((o) => `${o.name} [${o.dims.join(', ')}]`)).toEqual([
      'y [batch, seq, 32]',
      'saved.layers.1.attn.q [batch, seq, 32]',
      'saved.layers.1.attn.k [batch, seq, 16]',
      'saved.layers.1.attn.v [batch, seq, 16]',
      'saved.layers.1.attn.probs [batch, 4, seq, seq]',
      'saved.layers.1.a [batch, seq, 32]',
      'saved.layers.1.mlp.gate [batch, seq, 48]',
      'saved.layers.1.mlp.up [batch, seq, 48]',
      'saved.layers.2.in [batch, seq, 32]',
      'saved.layers.2.attn.q [batch, seq, 32]',
      'saved.layers.2.attn.k [batch, seq, 16]',
      'saved.layers.2.attn.v [batch, seq, 16]',
      'saved.layers.2.attn.probs [batch, 4, seq, seq]',
      'saved.layers.2.a [batch, seq, 32]',
      'saved.layers.2.mlp.gate [batch, seq, 48]',
      'saved.layers.2.mlp.up [batch, seq, 48]',
    ]);
    expect(f.weightInputs).toEqual([]);
    const b = llamaBlocksBackwardGraph(model, lora, 1, 3, { saveIntermediates: true });
    expect(b.inputs.map((i) => i.name)).toEqual([
      ...f.inputs.map((i) => i.name),
      'dy',
      ...f.outputs.slice(1).map((o) => o.name),
    ]);
    expect(b.outputs.map((o) => o.name)).toEqual([
      'dx',
      'grad.layers.1.self_attn.v_proj.lora_A',
      'grad.layers.1.self_attn.v_proj.lora_B',
      'grad.layers.1.mlp.down_proj.lora_A',
      'grad.layers.1.mlp.down_proj.lora_B',
      'grad.layers.2.self_attn.v_proj.lora_A',
      'grad.layers.2.self_attn.v_proj.lora_B',
      'grad.layers.2.mlp.down_proj.lora_A',
      'grad.layers.2.mlp.down_proj.lora_B',
    ]);
    const tail = llamaTailGraph(model, lora, 3);
    expect(tail.inputs.map((i) => i.name)).toEqual(['x', 'targets']);
    expect(tail.outputs.map((o) => o.name)).toEqual(['loss', 'count', 'dx']);
  });

  it("weights: 'inputs' takes the frozen weights by their Hugging Face names and gives the same numbers", async () => {
    const fi = llamaBlocksForwardGraph(model, lora, 0, 1, { saveIntermediates: false, weights: 'inputs' });
    const fw = llamaBlocksForwardGraph(model, lora, 0, 1, { saveIntermediates: false });
    expect(fi.weightInputs?.map((w) => w.name)).toEqual([
      'layers.0.input_layernorm.weight',
      'layers.0.self_attn.q_proj.weight',
      'layers.0.self_attn.q_proj.bias',
      'layers.0.self_attn.k_proj.weight',
      'layers.0.self_attn.k_proj.bias',
      'layers.0.self_attn.v_proj.weight',
      'layers.0.self_attn.v_proj.bias',
      'layers.0.self_attn.o_proj.weight',
      'layers.0.post_attention_layernorm.weight',
      'layers.0.mlp.gate_proj.weight',
      'layers.0.mlp.up_proj.weight',
      'layers.0.mlp.down_proj.weight',
    ]);
    // the weightless graph is the RoPE tables (2 x 32 x 4 floats) and the ops: far below the weights' bytes
    expect(fi.model.length).toBeLessThan(fw.model.length / 4);
    const tail = llamaTailGraph(model, lora, 2, { weights: 'inputs' });
    expect(tail.weightInputs?.map((w) => w.name).slice(-2)).toEqual(['norm.weight', 'lm_head.weight']);
    const D = config.hiddenSize;
    const adapter = randomAdapter(config, lora, 3);
    const x = randn(B * T * D, new Rng(5), 1);
    const common = {
      x: { data: x, dims: [B, T, D] },
      ...Object.fromEntries(llamaLoraGraphFeeds(config, lora, adapter, 0, 1)),
    };
    const weights: Record<string, Feed> = {};
    for (const w of fi.weightInputs ?? [])
      weights[w.name] = { data: model.weights.get(w.name)!.data, dims: concrete(w.dims) };
    const si = await createSession(fi.model);
    const sw = await createSession(fw.model);
    const a = await run(si, { ...common, ...weights });
    const b = await run(sw, common);
    expect(relErr(a.y, b.y)).toBeLessThanOrEqual(SAME_TOL);
    expect(relErr(a.y, llamaBlocksForward(model, adapter, x, B, T, 0, 1).y)).toBeLessThan(FWD_TOL);
    await si.release();
    await sw.release();
  });

  it('a sequence longer than ropePositions is refused by onnxruntime, a shorter one runs', async () => {
    const g = llamaBlocksForwardGraph(model, lora, 0, 1, { saveIntermediates: false, ropePositions: 6 });
    const adapter = randomAdapter(config, lora, 4);
    const lf = Object.fromEntries(llamaLoraGraphFeeds(config, lora, adapter, 0, 1));
    const D = config.hiddenSize;
    // fatal-only logging: the refusal below is expected, its error line would only be noise
    const session = await ort.InferenceSession.create(g.model, { logSeverityLevel: 4 });
    const x6 = randn(6 * D, new Rng(2), 1);
    const y = await run(session, { x: { data: x6, dims: [1, 6, D] }, ...lf });
    expect(relErr(y.y, llamaBlocksForward(model, adapter, x6, 1, 6, 0, 1).y)).toBeLessThan(FWD_TOL);
    await expect(run(session, { x: { data: randn(7 * D, new Rng(2), 1), dims: [1, 7, D] }, ...lf })).rejects.toThrow();
    await session.release();
  });

  it('refuses bad ranges, options, unknown targets, missing or mis-shaped weights and adapters lacking a pair', () => {
    const code = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        return e instanceof LlamaGraphError ? `${e.code}: ${e.message}` : `not a LlamaGraphError: ${String(e)}`;
      }
      return 'no error';
    };
    const opts = { saveIntermediates: false };
    expect(code(() => llamaBlocksForwardGraph(model, lora, 2, 2, opts))).toMatch(/^LLAMA_GRAPH_RANGE: .*empty/);
    expect(code(() => llamaBlocksBackwardGraph(model, lora, 1, 4, opts))).toMatch(/^LLAMA_GRAPH_RANGE: .*\[1, 4\)/);
    expect(code(() => llamaTailGraph(model, lora, 4))).toMatch(/^LLAMA_GRAPH_RANGE/);
    expect(code(() => llamaBlocksForwardGraph(model, lora, 0, 1, { ...opts, ropePositions: 33 }))).toMatch(
      /^LLAMA_GRAPH_OPTION: .*ropePositions 33/,
    );
    const bad = { ...lora, targets: ['c_attn' as LlamaLoraTarget] };
    expect(code(() => llamaBlocksForwardGraph(model, bad, 0, 1, opts))).toMatch(/^LLAMA_GRAPH_LORA: .*"c_attn"/);
    const missing = new Map(model.weights);
    missing.delete('layers.1.mlp.up_proj.weight');
    expect(code(() => llamaBlocksForwardGraph({ config, weights: missing }, lora, 0, 2, opts))).toMatch(
      /^LLAMA_GRAPH_WEIGHT: .*"layers\.1\.mlp\.up_proj\.weight"/,
    );
    const untied = new Map(model.weights);
    untied.delete('lm_head.weight');
    expect(code(() => llamaHeadStepGraph({ config, weights: untied }))).toMatch(/"lm_head\.weight"/);
    const wrong = new Map(model.weights);
    wrong.set('layers.0.self_attn.k_proj.weight', { shape: [32, 16], data: new Float32Array(512) }); // [in, out]
    expect(code(() => llamaBlocksForwardGraph({ config, weights: wrong }, lora, 0, 1, opts))).toMatch(
      /^LLAMA_GRAPH_WEIGHT: .*"layers\.0\.self_attn\.k_proj\.weight" is \[32,16\].*needs \[16,32\]/,
    );
    const adapter = randomAdapter(config, lora, 1);
    adapter.layers.delete('layers.2.mlp.down_proj');
    expect(code(() => llamaLoraGraphFeeds(config, lora, adapter, 1, 3))).toMatch(
      /^LLAMA_GRAPH_LORA: .*"layers\.2\.mlp\.down_proj"/,
    );
    expect(code(() => llamaLoraGraphFeeds(config, lora, adapter, 0, 2))).toBe('no error');
  });
});
