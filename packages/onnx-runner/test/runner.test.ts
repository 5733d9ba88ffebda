/**
 * SegmentRunner and the edge/cloud segments on real onnxruntime-node sessions in a worker
 * thread: results equal the TypeScript reference, buffers move by transfer, the event loop
 * stays free during a run, errors carry codes, a provider that cannot start falls back to cpu,
 * and the memory settings keep the results: the memory pattern and one step graph per blocks
 * segment bitwise, weight pre-packing off and weights shared between graphs (fed as inputs,
 * held once) within the reference tolerances.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import {
  cloudSegmentStep,
  edgeSegmentBackward,
  edgeSegmentForward,
  IGNORE_INDEX,
  initLoraAdapter,
  maxRelErr,
  randomGpt2Weights,
  Rng,
  type Gpt2Config,
  type Gpt2Model,
  type LoraAdapter,
  type LoraConfig,
} from '@splitllm/model';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBlocksBackwardGraph, buildBlocksForwardGraph, buildTailGraph } from '@splitllm/onnx';
import { BlocksSegment, RunnerError, type RunnerOptions, SegmentRunner, TailSegment } from '../src/index';
import { runnersPerLayout } from './layouts';

const config: Gpt2Config = {
  vocabSize: 97,
  nPositions: 16,
  nEmbd: 32,
  nLayer: 4,
  nHead: 4,
  nInner: 64,
  layerNormEpsilon: 1e-5,
  bosTokenId: 96,
  eosTokenId: 96,
};
const lora: LoraConfig = { r: 4, alpha: 8, targets: ['attn.c_attn', 'mlp.c_fc'] };
const model: Gpt2Model = { config, weights: randomGpt2Weights(config, 5) };
const plan = { k: 1, m: 3 };
const [B, T, D] = [2, 11, config.nEmbd];

function adapter(): LoraAdapter {
  const a = initLoraAdapter(config, lora, 7);
  const rng = new Rng(8);
  for (const p of a.layers.values()) rng.fillNormal(p.B.data, 0.05); // nonzero B, so dA is not trivially zero
  return a;
}

let runner: SegmentRunner;
const logs: string[] = [];
beforeAll(async () => {
  runner = await SegmentRunner.start({ provider: 'cpu', threads: 1, log: (l) => logs.push(l) });
});
afterAll(async () => {
  await runner.close();
});

/** Runners with the other layouts than the default (one step graph, per-session weights on cpu). */
const layouts: Record<string, Partial<RunnerOptions>> = {
  'two graphs': { blocksGraphs: 'two' },
  'shared weights, one graph': { weights: 'shared' },
  'shared weights, two graphs': { weights: 'shared', blocksGraphs: 'two' },
};
const layoutRunners = runnersPerLayout(layouts);

describe('BlocksSegment (edge)', () => {
  // Tolerances: the graphs compute in float32 like the reference's activations; the reference
  // accumulates dot products in float64, onnxruntime in float32 (error ~ sqrt(K) 2^-24 of the
  // scale per matmul, K <= 64 here): 1e-5 forward, 1e-4 gradients, as the ONNX issue states.
  const cases = [true, false].flatMap((keep) =>
    ['default', ...Object.keys(layouts)].map((l) => [keep, l, keep ? 'keep' : 'recompute'] as const),
  );
  for (const [saveIntermediates, layout, mode] of cases)
    it(`forward and backward equal the reference (${mode}, ${layout})`, async () => {
      const r = layout === 'default' ? runner : layoutRunners.get(layout)!;
      const a = adapter();
      const rng = new Rng(11);
      const x = rng.fillNormal(new Float32Array(B * T * D), 1);
      const dy = rng.fillNormal(new Float32Array(B * T * D), 0.1);
      const ref = edgeSegmentForward(model, a, x, B, T, plan);
      const refBack = edgeSegmentBackward(model, a, ref.state, dy);

      const seg = await BlocksSegment.create(r, model, lora, plan.k, plan.m, { saveIntermediates });
      const f = await seg.forward(a, x, B, T);
      expect(x.length).toBe(B * T * D); // forward keeps x usable for the backward
      expect(Object.keys(f.saved).length > 0).toBe(saveIntermediates);
      expect(maxRelErr(f.y, ref.h2)).toBeLessThan(1e-5);
      const dyCopy = dy.slice();
      const b = await seg.backward(a, x, f.saved, dyCopy, B, T);
      expect(dyCopy.byteLength).toBe(0); // transferred to the worker, not copied
      expect(maxRelErr(b.dx, refBack.dh1)).toBeLessThan(1e-4);
      expect([...b.loraGrads.keys()].sort()).toEqual([...refBack.loraGrads.keys()].sort());
      for (const [path, g] of refBack.loraGrads) {
        expect(maxRelErr(b.loraGrads.get(path)!.A, g.A), `${path} dA`).toBeLessThan(1e-4);
        expect(maxRelErr(b.loraGrads.get(path)!.B, g.B), `${path} dB`).toBeLessThan(1e-4);
      }
      await seg.close();
    });
});

describe('session memory settings', () => {
  /** One forward and backward of the edge segment on `r`, from fixed inputs. */
  async function edgeStep(r: SegmentRunner, saveIntermediates = false): Promise<Float32Array[]> {
    const a = adapter();
    const rng = new Rng(21);
    const x = rng.fillNormal(new Float32Array(B * T * D), 1);
    const dy = rng.fillNormal(new Float32Array(B * T * D), 0.1);
    const seg = await BlocksSegment.create(r, model, lora, plan.k, plan.m, { saveIntermediates });
    // twice, so a memory pattern recorded by the first run is also used
    await seg.forward(a, x, B, T);
    const f = await seg.forward(a, x, B, T);
    const saved = Object.entries(f.saved)
      .sort(([p], [q]) => p.localeCompare(q))
      .map(([, t]) => (t.data as Float32Array).slice());
    const b = await seg.backward(a, x, f.saved, dy, B, T);
    await seg.close();
    const grads = [...b.loraGrads.entries()].sort(([p], [q]) => p.localeCompare(q)).flatMap(([, g]) => [g.A, g.B]);
    return [f.y, ...saved, b.dx, ...grads];
  }

  const bytesOf = (t: Float32Array) => Buffer.from(t.buffer, t.byteOffset, t.byteLength);

  for (const saveIntermediates of [true, false]) {
    const mode = saveIntermediates ? 'keep' : 'recompute';
    it(`one step graph gives the two graphs' results bitwise (${mode})`, async () => {
      // the same nodes in one session: only which arena the tensors live in differs
      const one = await edgeStep(runner, saveIntermediates);
      const two = await edgeStep(layoutRunners.get('two graphs')!, saveIntermediates);
      expect(one.length).toBe(two.length);
      for (const [i, t] of one.entries()) expect(bytesOf(t).equals(bytesOf(two[i])), `tensor ${i}`).toBe(true);
    });

    it(`shared weights stay within the reference tolerances of per-session ones (${mode})`, async () => {
      // weights fed as inputs are not pre-packed: another matmul kernel path, as with pre-packing off
      const ours = await edgeStep(runner, saveIntermediates);
      for (const name of ['shared weights, one graph', 'shared weights, two graphs']) {
        const theirs = await edgeStep(layoutRunners.get(name)!, saveIntermediates);
        expect(theirs.length).toBe(ours.length);
        for (const [i, t] of ours.entries()) expect(maxRelErr(theirs[i], t), `${name}: tensor ${i}`).toBeLessThan(1e-5);
      }
    });
  }

  it('with shared weights the graphs carry no weight bytes and the caller feeds none', async () => {
    for (const build of [buildBlocksForwardGraph, buildBlocksBackwardGraph]) {
      const own = build(model, lora, plan.k, plan.m, { saveIntermediates: true });
      const shared = build(model, lora, plan.k, plan.m, { saveIntermediates: true, weights: 'inputs' });
      expect(own.weightInputs).toEqual([]);
      const names = shared.weightInputs!.map((w) => w.name);
      expect(names.length).toBeGreaterThan(0);
      expect(names.every((n) => model.weights.has(n))).toBe(true);
      // the weights' bytes leave the model (their names and shapes stay, as input declarations,
      // which take a few bytes more than the initializers' headers: 1% is ample)
      const weightBytes = names.reduce((n, w) => n + model.weights.get(w)!.data.byteLength, 0);
      expect(own.model.byteLength - shared.model.byteLength).toBeGreaterThan(0.99 * weightBytes);
    }
    const r = layoutRunners.get('shared weights, one graph')!;
    const seg = await BlocksSegment.create(r, model, lora, plan.k, plan.m, { saveIntermediates: true });
    const [step] = r.graphNames();
    expect(r.graphNames()).toHaveLength(1);
    expect(r.graph(step)!.inputs.some((n) => model.weights.has(n))).toBe(false);
    await seg.close();
    expect(r.graphNames()).toHaveLength(0);
  });

  it('a weight set is refused while a graph takes it, and is gone once dropped', async () => {
    const r = layoutRunners.get('shared weights, two graphs')!;
    const g = buildBlocksForwardGraph(model, lora, plan.k, plan.m, { saveIntermediates: false, weights: 'inputs' });
    const set = await r.addWeights(
      g.weightInputs!.map(
        (w) => [w.name, { data: model.weights.get(w.name)!.data, dims: w.dims as number[] }] as const,
      ),
    );
    // the caller's arrays stay its own (copied, not transferred)
    expect([...model.weights.values()].every((t) => t.data.byteLength > 0)).toBe(true);
    // load() takes the bytes it is given (transferred): each load gets its own copy
    await r.load('with-set', g.model.slice(), { weights: set });
    expect(r.graph('with-set')!.inputs).toEqual(g.inputs.map((i) => i.name));
    await expect(r.dropWeights(set)).rejects.toMatchObject({ code: 'ONNX_WEIGHTS_IN_USE' });
    await r.unload('with-set');
    await r.dropWeights(set);
    await expect(r.dropWeights(set)).rejects.toMatchObject({ code: 'ONNX_UNKNOWN_WEIGHTS' });
    await expect(r.load('no-set', g.model.slice(), { weights: set })).rejects.toMatchObject({
      code: 'ONNX_UNKNOWN_WEIGHTS',
    });
    // without its weights the graph lists them as inputs the caller must feed
    await r.load('no-set', g.model);
    await expect(r.load('again', g.model)).rejects.toMatchObject({ code: 'ONNX_LOAD_FAILED' });
    expect(r.graph('no-set')!.inputs).toContain(g.weightInputs![0].name);
    await expect(r.run('no-set', { x: { data: new Float32Array(B * T * D), dims: [B, T, D] } })).rejects.toMatchObject({
      code: 'ONNX_MISSING_INPUT',
    });
    await r.unload('no-set');
    const w = g.weightInputs![0];
    await expect(
      r.addWeights([[w.name, { data: new Float32Array(3), dims: w.dims as number[] }]]),
    ).rejects.toMatchObject({ code: 'BAD_WEIGHTS' });
    const t = { data: model.weights.get(w.name)!.data, dims: w.dims as number[] };
    await expect(
      r.addWeights([
        [w.name, t],
        [w.name, t],
      ]),
    ).rejects.toMatchObject({ code: 'BAD_WEIGHTS' });
  });

  it('the memory pattern is off by default and turning it off leaves the results bitwise the same', async () => {
    expect(logs.some((l) => /memory pattern off, weight pre-packing on/.test(l))).toBe(true);
    const lines: string[] = [];
    const withPattern = await SegmentRunner.start({
      provider: 'cpu',
      threads: 1,
      memoryPattern: true,
      log: (l) => lines.push(l),
    });
    try {
      expect(lines.some((l) => /memory pattern on/.test(l))).toBe(true);
      const ours = await edgeStep(runner);
      const theirs = await edgeStep(withPattern);
      expect(ours.length).toBe(theirs.length);
      for (const [i, t] of ours.entries())
        expect(
          Buffer.from(t.buffer, t.byteOffset, t.byteLength).equals(
            Buffer.from(theirs[i].buffer, theirs[i].byteOffset, theirs[i].byteLength),
          ),
          `tensor ${i}`,
        ).toBe(true);
    } finally {
      await withPattern.close();
    }
  });

  it('without weight pre-packing the results stay within the reference tolerances', async () => {
    const lines: string[] = [];
    const lean = await SegmentRunner.start({
      provider: 'cpu',
      threads: 1,
      prepackWeights: false,
      log: (l) => lines.push(l),
    });
    try {
      expect(lines.some((l) => /weight pre-packing off/.test(l))).toBe(true);
      const ours = await edgeStep(runner);
      const theirs = await edgeStep(lean);
      for (const [i, t] of ours.entries()) expect(maxRelErr(theirs[i], t), `tensor ${i}`).toBeLessThan(1e-5);
    } finally {
      await lean.close();
    }
  });
});

describe('TailSegment (cloud)', () => {
  it('loss, count, input gradient and LoRA gradients equal the reference, with ignored targets', async () => {
    const a = adapter();
    const rng = new Rng(12);
    const x = rng.fillNormal(new Float32Array(B * T * D), 1);
    const targets = Int32Array.from({ length: B * T }, (_, i) =>
      i % T > T - 4 && i >= T ? IGNORE_INDEX : rng.int(config.vocabSize),
    );
    const ref = cloudSegmentStep(model, a, x, targets, B, T, plan);
    const tail = await TailSegment.create(runner, model, lora, plan.m);
    // training loads the step graph alone; the loss graph (another copy of the weights) on first use
    const tailGraphs = () => runner.graphNames().filter((n) => n.startsWith('tail['));
    expect(tailGraphs().map((n) => n.split('#')[0])).toEqual([`tail[${plan.m},${config.nLayer}).step`]);
    const r = await tail.step(a, x.slice(), targets, B, T);
    expect(r.count).toBe(ref.count);
    expect(Math.abs(r.loss - ref.loss) / ref.loss).toBeLessThan(1e-5);
    expect(maxRelErr(r.dx, ref.dh2)).toBeLessThan(1e-4);
    for (const [path, g] of ref.loraGrads) {
      expect(maxRelErr(r.loraGrads.get(path)!.A, g.A), `${path} dA`).toBeLessThan(1e-4);
      expect(maxRelErr(r.loraGrads.get(path)!.B, g.B), `${path} dB`).toBeLessThan(1e-4);
    }
    const l = await tail.loss(a, x.slice(), targets, B, T);
    expect(l.loss).toBeCloseTo(r.loss, 6);
    expect(tailGraphs()).toHaveLength(2);
    // the graph itself would wrap -1 to the last class: the segment refuses such targets
    const bad = targets.slice();
    bad[3] = -1;
    await expect(tail.step(a, x.slice(), bad, B, T)).rejects.toThrow(
      /target -1 at position 3 is outside the vocabulary/,
    );
    bad[3] = config.vocabSize;
    await expect(tail.loss(a, x.slice(), bad, B, T)).rejects.toThrow(/outside the vocabulary/);
    await tail.close();
    expect(tailGraphs()).toEqual([]);
  });

  it('with shared weights, step, loss and logits stay within the tolerances of per-session weights', async () => {
    const a = adapter();
    const rng = new Rng(13);
    const x = rng.fillNormal(new Float32Array(B * T * D), 1);
    const targets = Int32Array.from({ length: B * T }, () => rng.int(config.vocabSize));
    const r = layoutRunners.get('shared weights, one graph')!;
    const [ours, theirs] = [
      await TailSegment.create(runner, model, lora, plan.m),
      await TailSegment.create(r, model, lora, plan.m),
    ];
    const [s1, s2] = [await ours.step(a, x.slice(), targets, B, T), await theirs.step(a, x.slice(), targets, B, T)];
    expect(Math.abs(s2.loss - s1.loss) / s1.loss).toBeLessThan(1e-5);
    expect(maxRelErr(s2.dx, s1.dx)).toBeLessThan(1e-5);
    for (const [path, g] of s1.loraGrads) {
      expect(maxRelErr(s2.loraGrads.get(path)!.A, g.A), `${path} dA`).toBeLessThan(1e-5);
      expect(maxRelErr(s2.loraGrads.get(path)!.B, g.B), `${path} dB`).toBeLessThan(1e-5);
    }
    const [l1, l2] = [await ours.loss(a, x.slice(), targets, B, T), await theirs.loss(a, x.slice(), targets, B, T)];
    expect(Math.abs(l2.loss - l1.loss) / l1.loss).toBeLessThan(1e-5);
    // the generation graph of the shared tail was built at create, from the weights' shapes only
    const [g1, g2] = [await ours.logits(a, x.slice(), B, T), await theirs.logits(a, x.slice(), B, T)];
    expect(g2.length).toBe(B * config.vocabSize);
    expect(maxRelErr(g2, g1)).toBeLessThan(1e-5);
    // the shared tail's graphs take the tail's weights from one set: none is the caller's to feed
    const tailWeights = buildTailGraph(model, lora, plan.m, { weights: 'inputs' }).weightInputs!.map((w) => w.name);
    expect(tailWeights).toContain('wte.weight');
    for (const name of r.graphNames()) expect(r.graph(name)!.inputs.some((n) => tailWeights.includes(n))).toBe(false);
    await ours.close();
    await theirs.close();
  });
});

describe('SegmentRunner', () => {
  it('keeps the event loop free while a graph runs', async () => {
    // a wide segment: one run takes far longer than a 1 ms timer (~50 ms on 2 cores)
    const wide: Gpt2Config = { ...config, nEmbd: 256, nInner: 1024, nHead: 4, nPositions: 128 };
    const wideModel: Gpt2Model = { config: wide, weights: randomGpt2Weights(wide, 1) };
    const wideLora: LoraConfig = { r: 4, alpha: 8, targets: ['attn.c_attn'] };
    const seg = await BlocksSegment.create(runner, wideModel, wideLora, 0, 4, { saveIntermediates: false });
    const a = initLoraAdapter(wide, wideLora, 1);
    const x = new Rng(1).fillNormal(new Float32Array(8 * 128 * 256), 1);
    let done = false;
    const run = seg.forward(a, x, 8, 128).then(() => (done = true));
    // on a blocked loop this timer could only fire after the run had finished
    await new Promise((r) => setTimeout(r, 1));
    expect(done).toBe(false);
    await run;
    expect(done).toBe(true);
    await seg.close();
  });

  it('answers bad calls with codes and stays usable', async () => {
    await expect(runner.run('nope', {})).rejects.toMatchObject({ code: 'ONNX_UNKNOWN_GRAPH' });
    const seg = await BlocksSegment.create(runner, model, lora, plan.k, plan.m, { saveIntermediates: false });
    const a = adapter();
    // a wrong width reaches onnxruntime, which refuses it
    // the default runner loads the blocks as one step graph
    const graphName = runner.graphNames().find((n) => n.includes('.step'))!;
    const feeds = Object.fromEntries(
      runner.graph(graphName)!.inputs.map((n) => [n, { data: new Float32Array(6), dims: [1, 2, 3] }]),
    );
    await expect(runner.run(graphName, feeds)).rejects.toMatchObject({ code: 'ONNX_RUN_FAILED' });
    await expect(runner.run(graphName, { x: { data: new Float32Array(D), dims: [1, 1, D] } })).rejects.toMatchObject({
      code: 'ONNX_MISSING_INPUT',
    });
    await expect(runner.run(graphName, feeds, { fetch: ['nope'] })).rejects.toMatchObject({
      code: 'ONNX_UNKNOWN_OUTPUT',
    });
    await expect(seg.forward(a, new Float32Array(5), B, T)).rejects.toThrow(/expected B\*T\*D/);
    // still works
    const ok = await seg.forward(a, new Float32Array(B * T * D), B, T);
    expect(ok.y.length).toBe(B * T * D);
    await seg.close();
  });

  it('refuses an unknown provider, thread count, weight placement or graph layout', async () => {
    await expect(SegmentRunner.start({ provider: 'tpu' as never })).rejects.toMatchObject({ code: 'BAD_PROVIDER' });
    await expect(SegmentRunner.start({ provider: 'cpu', threads: -1 })).rejects.toBeInstanceOf(RunnerError);
    await expect(SegmentRunner.start({ provider: 'cpu', weights: 'once' as never })).rejects.toMatchObject({
      code: 'BAD_WEIGHTS',
    });
    await expect(SegmentRunner.start({ provider: 'cpu', blocksGraphs: 'three' as never })).rejects.toMatchObject({
      code: 'BAD_BLOCKS_GRAPHS',
    });
  });

  it('falls back to cpu, and says so, when CUDA cannot start', async () => {
    const require = createRequire(import.meta.url);
    const binDir = join(dirname(require.resolve('onnxruntime-node/package.json')), 'bin/napi-v6/linux/x64');
    // onnxruntime-node's npm package does not ship the CUDA provider library (its install
    // script downloads it, which is skipped offline), so 'cuda' cannot start here.
    expect(existsSync(join(binDir, 'libonnxruntime_providers_cuda.so'))).toBe(false);
    const lines: string[] = [];
    const r = await SegmentRunner.start({ provider: 'cuda', threads: 1, log: (l) => lines.push(l) });
    try {
      expect(r.requestedProvider).toBe('cuda');
      await BlocksSegment.create(r, model, lora, plan.k, plan.m, { saveIntermediates: false });
      expect(r.provider).toBe('cpu');
      expect(lines.some((l) => /provider 'cuda' could not start .*using 'cpu'/.test(l))).toBe(true);
    } finally {
      await r.close();
    }
  });
});
