/**
 * The edge's and the cloud's segments (BlocksSegment, TailSegment) on a LLaMA-family model,
 * through family-graphs.ts on real onnxruntime-node sessions, against the TypeScript reference
 * (@splitllm/model's blocksForward/Backward, cloudSegmentStep, headLogits, modelLoss and
 * modelForwardBackward, which dispatch to llama.ts). runner.test.ts holds the same segments to the
 * reference for GPT-2; this file is its LLaMA counterpart.
 *
 * Models: two tiny random ones (hidden 32, 4 layers, 4 query heads sharing 2 kv heads of width 8,
 * SwiGLU 48, vocab 64, B 2 x T 8), a plain Llama with an untied head and a Qwen2 with q/k/v biases
 * and a tied head; and the shipped moby-llama-tiny (hidden 128, 4 layers, SwiGLU 344, vocab 1024,
 * untied head; B 2 x T 16). LoRA: all seven targets on the Llama, four on the Qwen2, three on the
 * shipped model; B random (nonzero) so that every dA counts. Every runner layout: blocks as one
 * step graph or two graphs, frozen weights per session or shared (fed as inputs); intermediates
 * kept and recomputed. The second row of each batch is right-padded (ignored targets).
 *
 * Tolerances, relative to the max |value| of each reference tensor (maxRelErr), those of
 * runner.test.ts and of @splitllm/onnx's llama-graphs.test.ts: the graphs compute in float32
 * (MLAS matmuls, float32 reductions in RMSNorm, softmax and log-sum-exp), the reference
 * accumulates in float64 and rounds once. Forward values (y, loss, logits) 1e-5: a few float32
 * ulps after ~10 rounded ops per block. Gradients (dx, dA, dB) 1e-4: the backward chains more
 * of them and the RMSNorm, softmax and SwiGLU backwards subtract nearly equal terms. The LLaMA
 * graphs alone were measured at worst 1.4e-6 on gradients at these limits; shared weights take
 * another matmul path (no pre-packing) and stay within the same limits. The worst errors met are
 * printed at the end (`pnpm --filter @splitllm/onnx-runner exec vitest run test/llama-segments.test.ts`);
 * measured: y 7.3e-7, loss 7.6e-8, logits 6.5e-7, dx 1.7e-6, dA 2.5e-6, dB 2.5e-6.
 * One step graph and two graphs run the same nodes on the same numbers: bitwise equal.
 */
import { fileURLToPath } from 'node:url';
import {
  type AnyModel,
  blocksBackward,
  blocksForward,
  cloudSegmentStep,
  embedForward,
  headLogits,
  initLoraAdapter,
  type LlamaConfig,
  type LoraAdapter,
  type LoraConfig,
  type LoraGrads,
  maxRelErr,
  modelDims,
  modelForwardBackward,
  modelLoss,
  randomGpt2Weights,
  paddedRandomBatch,
  perturbedLlamaModel,
  Rng,
  tinyLlamaConfig,
  type TokenBatch,
  withRandomLoraB,
} from '@splitllm/model';
import { loadLlamaDir } from '@splitllm/model/node';
import { afterAll, describe, expect, it } from 'vitest';
import { BlocksSegment, type RunnerOptions, TailSegment } from '../src/index';
import { runnersPerLayout } from './layouts';

const FWD_TOL = 1e-5;
const GRAD_TOL = 1e-4;

/** The worst relative error met per kind of tensor, printed once at the end. */
const worst = new Map<string, number>();
function track(kind: string, err: number): number {
  worst.set(kind, Math.max(worst.get(kind) ?? 0, err));
  return err;
}
afterAll(() => {
  const line = [...worst].map(([k, v]) => `${k} ${v.toExponential(1)}`).join(', ');
  console.log(`worst relative errors vs the reference: ${line}`);
});

const tiny: LlamaConfig = tinyLlamaConfig({ nLayer: 4, tieWordEmbeddings: false });
const qwen2: LlamaConfig = { ...tiny, family: 'qwen2', qkvBias: true, tieWordEmbeddings: true };

const shippedDir = loadLlamaDir(fileURLToPath(new URL('../../assets/models/moby-llama-tiny', import.meta.url)));
const shipped: AnyModel = { config: shippedDir.config, weights: shippedDir.weights };

interface Case {
  name: string;
  model: AnyModel;
  lora: LoraConfig;
  /** the edge's blocks [from, to) */
  blocks: [number, number];
  /** the cloud's first block */
  tailFrom: number;
  B: number;
  T: number;
}

const CASES: Case[] = [
  {
    name: 'llama, untied head, all seven targets',
    model: perturbedLlamaModel(tiny, 3),
    lora: {
      r: 4,
      alpha: 8,
      targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
    },
    blocks: [1, 3],
    tailFrom: 2,
    B: 2,
    T: 8,
  },
  {
    name: 'qwen2, q/k/v biases, tied head',
    model: perturbedLlamaModel(qwen2, 4),
    lora: { r: 4, alpha: 16, targets: ['q_proj', 'k_proj', 'o_proj', 'up_proj'] },
    // the whole stack: the first block's input is the segment's x
    blocks: [0, 4],
    tailFrom: 3,
    B: 2,
    T: 8,
  },
  {
    name: 'shipped moby-llama-tiny',
    model: shipped,
    lora: { r: 8, alpha: 16, targets: ['q_proj', 'v_proj', 'down_proj'] },
    blocks: [1, 3],
    tailFrom: 3,
    B: 2,
    T: 16,
  },
];

const widthOf = (m: AnyModel) => (m.config as LlamaConfig).hiddenSize;

/** An adapter of every block with B nonzero (a fresh one has B = 0, so dA would be 0). */
function adapterOf(cs: Case, seed: number): LoraAdapter {
  return withRandomLoraB(initLoraAdapter(cs.model.config, cs.lora, seed), seed + 1, 0.05);
}

/** B rows of T random tokens; row 1 is right-padded (eos ids, ignored targets) after 2T/3. */
const paddedBatch = (cs: Case, seed: number): TokenBatch => paddedRandomBatch(cs.model.config, seed, cs.B, cs.T);

/** The hidden state entering block `from` for `batch`: what the segment receives in a run. */
function hiddenAt(cs: Case, a: LoraAdapter, batch: TokenBatch, from: number): Float32Array {
  const h0 = embedForward(cs.model, batch.inputIds, cs.B, cs.T);
  return from === 0 ? h0 : blocksForward(cs.model, a, h0, cs.B, cs.T, 0, from).y;
}

function expectGrads(got: LoraGrads, want: LoraGrads, what: string): void {
  expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
  for (const [path, g] of want) {
    expect(track('dA', maxRelErr(got.get(path)!.A, g.A)), `${what} ${path} dA`).toBeLessThan(GRAD_TOL);
    expect(track('dB', maxRelErr(got.get(path)!.B, g.B)), `${what} ${path} dB`).toBeLessThan(GRAD_TOL);
  }
}

/** Every runner layout: blocks in one step graph or two, weights per session or shared. */
const LAYOUTS: Record<string, Partial<RunnerOptions>> = {
  'one graph, per-session weights': { blocksGraphs: 'one', weights: 'per-session' },
  'two graphs, per-session weights': { blocksGraphs: 'two', weights: 'per-session' },
  'one graph, shared weights': { blocksGraphs: 'one', weights: 'shared' },
  'two graphs, shared weights': { blocksGraphs: 'two', weights: 'shared' },
};
const runners = runnersPerLayout(LAYOUTS);
const runnerOf = (layout: string) => runners.get(layout)!;
const DEFAULT_LAYOUT = 'one graph, per-session weights';

describe('BlocksSegment (edge) on LLaMA-family models', () => {
  for (const cs of CASES)
    for (const layout of Object.keys(LAYOUTS))
      for (const saveIntermediates of [true, false])
        it(`${cs.name}: forward and backward equal the reference (${layout}, \
${saveIntermediates ? 'keep' : 'recompute'})`, async () => {
          const { B, T } = cs;
          const D = widthOf(cs.model);
          const [from, to] = cs.blocks;
          const a = adapterOf(cs, 7);
          const x = hiddenAt(cs, a, paddedBatch(cs, 21), from);
          const dy = new Rng(22).fillNormal(new Float32Array(B * T * D), 0.1);
          const ref = blocksForward(cs.model, a, x, B, T, from, to);
          const refBack = blocksBackward(cs.model, a, ref.cache, dy);

          const seg = await BlocksSegment.create(runnerOf(layout), cs.model, cs.lora, from, to, { saveIntermediates });
          try {
            const f = await seg.forward(a, x, B, T);
            expect(Object.keys(f.saved).length > 0).toBe(saveIntermediates);
            expect(track('y', maxRelErr(f.y, ref.y))).toBeLessThan(FWD_TOL);
            const b = await seg.backward(a, x, f.saved, dy.slice(), B, T);
            expect(track('dx', maxRelErr(b.dx, refBack.dx))).toBeLessThan(GRAD_TOL);
            expect(b.loraGrads.size).toBe((to - from) * cs.lora.targets.length);
            expectGrads(b.loraGrads, refBack.loraGrads, 'blocks');
          } finally {
            await seg.close();
          }
        });

  it('one step graph gives the two graphs’ results bitwise', async () => {
    const cs = CASES[0];
    const [from, to] = cs.blocks;
    const a = adapterOf(cs, 7);
    const x = hiddenAt(cs, a, paddedBatch(cs, 23), from);
    const dy = new Rng(24).fillNormal(new Float32Array(x.length), 0.1);
    const results: Float32Array[][] = [];
    for (const layout of ['one graph, per-session weights', 'two graphs, per-session weights']) {
      const seg = await BlocksSegment.create(runnerOf(layout), cs.model, cs.lora, from, to, {
        saveIntermediates: true,
      });
      // backward consumes (transfers) its x: each layout gets its own copy
      const xs = x.slice();
      const f = await seg.forward(a, xs, cs.B, cs.T);
      const b = await seg.backward(a, xs, f.saved, dy.slice(), cs.B, cs.T);
      await seg.close();
      const grads = [...b.loraGrads].sort(([p], [q]) => p.localeCompare(q)).flatMap(([, g]) => [g.A, g.B]);
      results.push([f.y, b.dx, ...grads]);
    }
    const bytes = (t: Float32Array) => Buffer.from(t.buffer, t.byteOffset, t.byteLength);
    const [one, two] = results;
    expect(one.length).toBe(two.length);
    for (const [i, t] of one.entries()) expect(bytes(t).equals(bytes(two[i])), `tensor ${i}`).toBe(true);
  });
});

describe('TailSegment (cloud) on LLaMA-family models', () => {
  for (const cs of CASES)
    for (const layout of ['one graph, per-session weights', 'one graph, shared weights'])
      it(`${cs.name}: step, loss and logits equal the reference (${layout})`, async () => {
        const { B, T } = cs;
        const D = widthOf(cs.model);
        const V = cs.model.config.vocabSize;
        const a = adapterOf(cs, 8);
        const batch = paddedBatch(cs, 31);
        const x = hiddenAt(cs, a, batch, cs.tailFrom);
        const ref = cloudSegmentStep(cs.model, a, x, batch.targets, B, T, { k: 1, m: cs.tailFrom });
        const tail = await TailSegment.create(runnerOf(layout), cs.model, cs.lora, cs.tailFrom);
        try {
          const s = await tail.step(a, x.slice(), batch.targets, B, T);
          expect(s.count).toBe(ref.count);
          expect(s.count).toBeLessThan(B * T); // the padded row's ignored targets are not counted
          expect(track('loss', Math.abs(s.loss - ref.loss) / ref.loss)).toBeLessThan(FWD_TOL);
          expect(track('dx', maxRelErr(s.dx, ref.dh2))).toBeLessThan(GRAD_TOL);
          expectGrads(s.loraGrads, ref.loraGrads, 'tail');

          const l = await tail.loss(a, x.slice(), batch.targets, B, T);
          expect(l.count).toBe(ref.count);
          expect(track('loss', Math.abs(l.loss - ref.loss) / ref.loss)).toBeLessThan(FWD_TOL);

          const logits = await tail.logits(a, x.slice(), B, T);
          expect(logits.length).toBe(B * V);
          const hL = blocksForward(cs.model, a, x, B, T, cs.tailFrom, cs.model.config.nLayer).y;
          for (let b = 0; b < B; b++) {
            const last = hL.subarray((b * T + T - 1) * D, (b * T + T) * D);
            const want = headLogits(cs.model, last);
            expect(track('logits', maxRelErr(logits.subarray(b * V, (b + 1) * V), want)), `row ${b}`).toBeLessThan(
              FWD_TOL,
            );
          }
        } finally {
          await tail.close();
        }
      });
});

describe('edge and cloud chained: the whole shipped model', () => {
  const cs = CASES[2];
  const m = cs.tailFrom;

  it('blocks [0, m) then the tail give modelLoss and modelForwardBackward', async () => {
    const { B, T } = cs;
    const a = adapterOf(cs, 9);
    const batch = paddedBatch(cs, 41);
    const r = runnerOf(DEFAULT_LAYOUT);
    const blocks = await BlocksSegment.create(r, cs.model, cs.lora, 0, m, { saveIntermediates: false });
    const tail = await TailSegment.create(r, cs.model, cs.lora, m);
    try {
      const h0 = embedForward(cs.model, batch.inputIds, B, T);
      const f = await blocks.forward(a, h0, B, T);

      const evalRef = modelLoss(cs.model, a, batch);
      const l = await tail.loss(a, f.y.slice(), batch.targets, B, T);
      expect(l.count).toBe(evalRef.count);
      expect(track('loss', Math.abs(l.loss - evalRef.loss) / evalRef.loss)).toBeLessThan(FWD_TOL);

      const ref = modelForwardBackward(cs.model, a, batch);
      const s = await tail.step(a, f.y, batch.targets, B, T);
      expect(track('loss', Math.abs(s.loss - ref.loss) / ref.loss)).toBeLessThan(FWD_TOL);
      const b = await blocks.backward(a, h0, f.saved, s.dx, B, T);
      const all: LoraGrads = new Map([...b.loraGrads, ...s.loraGrads]);
      expect(all.size).toBe(cs.model.config.nLayer * cs.lora.targets.length);
      expectGrads(all, ref.loraGrads, 'whole model');
    } finally {
      await blocks.close();
      await tail.close();
    }
  });
});

describe('bad input to LLaMA-family segments', () => {
  const cs = CASES[0];
  const { B, T } = cs;
  const gpt2Lora: LoraConfig = { r: 4, alpha: 8, targets: ['attn.c_attn', 'mlp.c_fc'] };
  const gpt2Config = {
    vocabSize: 64,
    nPositions: 16,
    nEmbd: 32,
    nLayer: 4,
    nHead: 4,
    nInner: 64,
    layerNormEpsilon: 1e-5,
    bosTokenId: 63,
    eosTokenId: 63,
  };
  /** A GPT-2 adapter of the same width and depth: only its module paths and targets say it is GPT-2's. */
  const gpt2Adapter = initLoraAdapter(gpt2Config, gpt2Lora, 5);

  it("refuses a GPT-2 LoRA config at create, naming the target and the model's family", async () => {
    const r = runnerOf(DEFAULT_LAYOUT);
    await expect(BlocksSegment.create(r, cs.model, gpt2Lora, 1, 3, { saveIntermediates: true })).rejects.toThrow(
      /LoRA target "attn\.c_attn" is not one a llama-family model has/,
    );
    await expect(TailSegment.create(r, cs.model, gpt2Lora, 2)).rejects.toThrow(
      /LoRA target "attn\.c_attn" is not one a llama-family model has/,
    );
    expect(r.graphNames()).toEqual([]);
  });

  it('refuses a GPT-2 adapter fed to a LLaMA segment, naming the missing LLaMA pair', async () => {
    for (const layout of [DEFAULT_LAYOUT, 'two graphs, shared weights']) {
      const r = runnerOf(layout);
      const seg = await BlocksSegment.create(r, cs.model, cs.lora, 1, 3, { saveIntermediates: true });
      const tail = await TailSegment.create(r, cs.model, cs.lora, 2);
      try {
        const D = widthOf(cs.model);
        const x = new Rng(51).fillNormal(new Float32Array(B * T * D), 1);
        const targets = new Int32Array(B * T).fill(5);
        const missing = /adapter has no LoRA pair for "layers\.1\.self_attn\.q_proj"/;
        await expect(seg.forward(gpt2Adapter, x, B, T)).rejects.toThrow(missing);
        await expect(seg.backward(gpt2Adapter, x, {}, x.slice(), B, T)).rejects.toThrow(missing);
        await expect(tail.step(gpt2Adapter, x.slice(), targets, B, T)).rejects.toThrow(
          /adapter has no LoRA pair for "layers\.2\.self_attn\.q_proj"/,
        );
        // an activation of another width is refused before it reaches onnxruntime
        await expect(seg.forward(adapterOf(cs, 7), new Float32Array(B * T * (D + 1)), B, T)).rejects.toThrow(
          /expected B\*T\*D = 2\*8\*32/,
        );
        // a sequence past the model's positions: the graph's rotary table ends there, so it is refused by name
        const P = modelDims(cs.model.config).positions;
        const long = new Float32Array(1 * (P + 1) * D);
        const past = /a sequence of \d+ positions is past the model's \d+/;
        await expect(seg.forward(adapterOf(cs, 7), long, 1, P + 1)).rejects.toMatchObject({ code: 'ONNX_BAD_SHAPE' });
        await expect(seg.forward(adapterOf(cs, 7), long, 1, P + 1)).rejects.toThrow(past);
        await expect(tail.logits(adapterOf(cs, 7), long, 1, P + 1)).rejects.toThrow(past);
        // the segment still works
        const ok = await seg.forward(adapterOf(cs, 7), x, B, T);
        expect(ok.y.length).toBe(B * T * D);
      } finally {
        await seg.close();
        await tail.close();
      }
    }
  });

  it('refuses targets outside the vocabulary in the tail, and keeps working', async () => {
    const r = runnerOf('one graph, shared weights');
    const tail = await TailSegment.create(r, cs.model, cs.lora, 2);
    try {
      const a = adapterOf(cs, 8);
      const batch = paddedBatch(cs, 61);
      const x = hiddenAt(cs, a, batch, 2);
      const V = cs.model.config.vocabSize;
      for (const [bad, at] of [
        [-1, 3],
        [V, 0],
        [1 << 20, 15],
      ] as const) {
        const targets = batch.targets.slice();
        targets[at] = bad;
        const why = new RegExp(`target ${bad} at position ${at} is outside the vocabulary \\[0, ${V}\\)`);
        await expect(tail.step(a, x.slice(), targets, B, T)).rejects.toThrow(why);
        await expect(tail.loss(a, x.slice(), targets, B, T)).rejects.toThrow(why);
      }
      await expect(tail.step(a, x.slice(), batch.targets.subarray(1), B, T)).rejects.toThrow(
        /targets have 15 entries, expected B\*T = 16/,
      );
      const ref = cloudSegmentStep(cs.model, a, x, batch.targets, B, T, { k: 1, m: 2 });
      const s = await tail.step(a, x.slice(), batch.targets, B, T);
      expect(Math.abs(s.loss - ref.loss) / ref.loss).toBeLessThan(FWD_TOL);
    } finally {
      await tail.close();
    }
  });

  it('a GPT-2 model and a LLaMA LoRA config are refused alike', async () => {
    const gpt2 = { config: gpt2Config, weights: randomGpt2Weights(gpt2Config, 1) };
    await expect(
      BlocksSegment.create(runnerOf(DEFAULT_LAYOUT), gpt2, cs.lora, 1, 3, { saveIntermediates: false }),
    ).rejects.toThrow(/LoRA target "q_proj" is not one a GPT-2 model has/);
  });
});
