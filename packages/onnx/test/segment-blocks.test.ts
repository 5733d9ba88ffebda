/**
 * The blocks segment graphs (edge tier) against the TypeScript reference (blocksForward /
 * blocksBackward), on the shipped moby-tiny model and on a GPT-2-shaped random model, for
 * several block ranges and LoRA target sets, B = 2 with a right-padded row, an awkward T and
 * random (nonzero) LoRA B. Both saveIntermediates modes are run and must agree.
 *
 * Tolerances, relative to the max |value| of each reference tensor: forward (y) 1e-5,
 * gradients (dx, dA, dB) 1e-4; keep vs recompute must agree to 1e-6.
 */
import { afterAll, describe, expect, it } from 'vitest';
import {
  type LoraConfig,
  type LoraTarget,
  blocksBackward,
  blocksForward,
  embedForward,
  type Gpt2Model,
  Rng,
} from '@splitllm/model';
import {
  buildBlocksBackwardGraph,
  buildBlocksForwardGraph,
  loraGradsFromGraph,
  loraGraphFeeds,
  type SegmentGraph,
} from '../src/segment-graphs';
import {
  ErrorLog,
  SMALL_CONFIG,
  createSession,
  loadMobyTiny,
  maxAbs,
  paddedBatch,
  randn,
  randomAdapter,
  randomModel,
  relErr,
  run,
  type Feed,
  type Outputs,
} from './helpers';

const FWD_TOL = 1e-5;
const GRAD_TOL = 1e-4;
const MODE_TOL = 1e-6;

const log = new ErrorLog('ONNX blocks segment graphs vs reference');
afterAll(() => log.print());

const TARGET_SETS: Array<[string, LoraTarget[]]> = [
  ['attn pair', ['attn.c_attn', 'attn.c_proj']],
  ['all four', ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj']],
  ['mlp.c_fc', ['mlp.c_fc']],
];
const RANGES: Array<[number, number]> = [
  [1, 2],
  [1, 3],
  [2, 4],
];

const models: Array<[string, () => Gpt2Model, number]> = [
  ['moby-tiny', loadMobyTiny, 13],
  ['random', () => randomModel(SMALL_CONFIG, 3), 11],
];

function checkIO(g: SegmentGraph, names: { inputNames: readonly string[]; outputNames: readonly string[] }) {
  expect(names.inputNames).toEqual(g.inputs.map((i) => i.name));
  expect(names.outputNames).toEqual(g.outputs.map((o) => o.name));
}

describe.each(models)('blocks graphs on %s', (modelName, load, T) => {
  const model = load();
  const c = model.config;
  const B = 2;
  const D = c.nEmbd;

  it.each(
    TARGET_SETS.flatMap(([tl, targets]) =>
      RANGES.map(([from, to]) => [`[${from},${to}) ${tl}`, from, to, targets] as const),
    ),
  )('blocks %s: forward 1e-5, gradients 1e-4, keep == recompute', async (_label, from, to, targets) => {
    const lora: LoraConfig = { r: 4, alpha: 6, targets: [...targets] };
    const adapter = randomAdapter(c, lora, 20 + from + 3 * to);
    const batch = paddedBatch(c, B, T, 7);
    // a real activation at the split: the embedding and blocks [0, from) of the reference
    const x = blocksForward(model, adapter, embedForward(model, batch.inputIds, B, T), B, T, 0, from).y;
    const dy = randn(B * T * D, new Rng(from * 10 + to), 1);
    const ref = blocksForward(model, adapter, x, B, T, from, to);
    const refBack = blocksBackward(model, adapter, ref.cache, dy);

    const loraFeeds: Record<string, Feed> = Object.fromEntries(loraGraphFeeds(c, lora, adapter, from, to));
    const xFeed: Feed = { data: x, dims: [B, T, D] };
    const dyFeed: Feed = { data: dy, dims: [B, T, D] };
    const results: Array<{ fwd: Outputs; bwd: Outputs }> = [];
    for (const saveIntermediates of [true, false]) {
      const fg = buildBlocksForwardGraph(model, lora, from, to, { saveIntermediates });
      const bg = buildBlocksBackwardGraph(model, lora, from, to, { saveIntermediates });
      const fs = await createSession(fg.model);
      const bs = await createSession(bg.model);
      checkIO(fg, fs);
      checkIO(bg, bs);
      const fwd = await run(fs, { x: xFeed, ...loraFeeds });
      const saved: Record<string, Feed> = {};
      for (const o of fg.outputs.filter((o) => o.name.startsWith('saved.'))) {
        // dims of this run: symbolic ones from the batch
        const dims = o.dims.map((d) => (d === 'batch' ? B : d === 'seq' ? T : (d as number)));
        saved[o.name] = { data: fwd[o.name], dims };
        expect(fwd[o.name].length).toBe(dims.reduce((a, b) => a * b, 1));
      }
      expect(Object.keys(saved).length > 0).toBe(saveIntermediates);
      expect(bg.inputs.filter((i) => i.name.startsWith('saved.')).map((i) => i.name)).toEqual(Object.keys(saved));
      const bwd = await run(bs, { x: xFeed, ...loraFeeds, dy: dyFeed, ...saved });
      const mode = saveIntermediates ? 'keep' : 'recompute';
      expect(log.note(`${modelName} y`, relErr(fwd.y, ref.y)), `${mode} y`).toBeLessThan(FWD_TOL);
      expect(log.note(`${modelName} dx`, relErr(bwd.dx, refBack.dx)), `${mode} dx`).toBeLessThan(GRAD_TOL);
      const grads = loraGradsFromGraph(c, lora, from, to, (n) => bwd[n]);
      expect(new Set(grads.keys())).toEqual(new Set(refBack.loraGrads.keys()));
      expect(grads.size).toBe((to - from) * targets.length);
      for (const [path, g] of grads) {
        const r = refBack.loraGrads.get(path)!;
        expect(maxAbs(r.A) > 0 && maxAbs(r.B) > 0, `${path}: a zero reference gradient would prove nothing`).toBe(true);
        expect(log.note(`${modelName} dA`, relErr(g.A, r.A)), `${mode} ${path} dA`).toBeLessThan(GRAD_TOL);
        expect(log.note(`${modelName} dB`, relErr(g.B, r.B)), `${mode} ${path} dB`).toBeLessThan(GRAD_TOL);
      }
      results.push({ fwd, bwd });
      await fs.release();
      await bs.release();
    }
    const [keep, recompute] = results;
    expect(log.note(`${modelName} keep vs recompute y`, relErr(keep.fwd.y, recompute.fwd.y))).toBeLessThanOrEqual(
      MODE_TOL,
    );
    for (const name of Object.keys(recompute.bwd)) {
      expect(
        log.note(`${modelName} keep vs recompute grads`, relErr(keep.bwd[name], recompute.bwd[name])),
        name,
      ).toBeLessThanOrEqual(MODE_TOL);
    }
  });
});

describe('blocks graphs: contract', () => {
  const model = randomModel(SMALL_CONFIG, 4);
  const lora: LoraConfig = { r: 2, alpha: 4, targets: ['attn.c_attn', 'mlp.c_proj'] };

  it('declares inputs and outputs in the documented order with symbolic batch and seq', () => {
    const f = buildBlocksForwardGraph(model, lora, 1, 3, { saveIntermediates: false });
    expect(f.inputs).toEqual([
      { name: 'x', dtype: 'float32', dims: ['batch', 'seq', 64] },
      { name: 'h.1.attn.c_attn.lora_A', dtype: 'float32', dims: [64, 2] },
      { name: 'h.1.attn.c_attn.lora_B', dtype: 'float32', dims: [2, 192] },
      { name: 'h.1.mlp.c_proj.lora_A', dtype: 'float32', dims: [256, 2] },
      { name: 'h.1.mlp.c_proj.lora_B', dtype: 'float32', dims: [2, 64] },
      { name: 'h.2.attn.c_attn.lora_A', dtype: 'float32', dims: [64, 2] },
      { name: 'h.2.attn.c_attn.lora_B', dtype: 'float32', dims: [2, 192] },
      { name: 'h.2.mlp.c_proj.lora_A', dtype: 'float32', dims: [256, 2] },
      { name: 'h.2.mlp.c_proj.lora_B', dtype: 'float32', dims: [2, 64] },
    ]);
    expect(f.outputs).toEqual([{ name: 'y', dtype: 'float32', dims: ['batch', 'seq', 64] }]);
    const b = buildBlocksBackwardGraph(model, lora, 1, 3, { saveIntermediates: true });
    expect(b.inputs.map((i) => i.name).slice(0, 10)).toEqual([...f.inputs.map((i) => i.name), 'dy']);
    expect(b.inputs.slice(10).every((i) => i.name.startsWith('saved.'))).toBe(true);
    expect(b.outputs.map((o) => o.name)).toEqual([
      'dx',
      'grad.h.1.attn.c_attn.lora_A',
      'grad.h.1.attn.c_attn.lora_B',
      'grad.h.1.mlp.c_proj.lora_A',
      'grad.h.1.mlp.c_proj.lora_B',
      'grad.h.2.attn.c_attn.lora_A',
      'grad.h.2.attn.c_attn.lora_B',
      'grad.h.2.mlp.c_proj.lora_A',
      'grad.h.2.mlp.c_proj.lora_B',
    ]);
  });

  it('with no LoRA targets: no LoRA inputs, no gradient outputs', async () => {
    const none: LoraConfig = { r: 2, alpha: 4, targets: [] };
    const f = buildBlocksForwardGraph(model, none, 0, 2, { saveIntermediates: true });
    const b = buildBlocksBackwardGraph(model, none, 0, 2, { saveIntermediates: true });
    expect(f.inputs.map((i) => i.name)).toEqual(['x']);
    expect(b.inputs.filter((i) => !i.name.startsWith('saved.')).map((i) => i.name)).toEqual(['x', 'dy']);
    expect(b.outputs.map((o) => o.name)).toEqual(['dx']);
    const [B, T, D] = [1, 3, SMALL_CONFIG.nEmbd];
    const rng = new Rng(2);
    const x = randn(B * T * D, rng);
    const dy = randn(B * T * D, rng);
    const fo = await run(await createSession(f.model), { x: { data: x, dims: [B, T, D] } });
    const ref = blocksForward(model, undefined, x, B, T, 0, 2);
    expect(relErr(fo.y, ref.y)).toBeLessThan(FWD_TOL);
    const saved: Record<string, Feed> = {};
    for (const o of f.outputs.slice(1))
      saved[o.name] = {
        data: fo[o.name],
        dims: o.dims.map((d) => (d === 'batch' ? B : d === 'seq' ? T : (d as number))),
      };
    const bo = await run(await createSession(b.model), {
      x: { data: x, dims: [B, T, D] },
      dy: { data: dy, dims: [B, T, D] },
      ...saved,
    });
    expect(relErr(bo.dx, blocksBackward(model, undefined, ref.cache, dy).dx)).toBeLessThan(GRAD_TOL);
  });

  it('rejects bad ranges, unknown targets and adapters that lack a targeted pair', () => {
    expect(() => buildBlocksForwardGraph(model, lora, 2, 2, { saveIntermediates: false })).toThrow(/empty/);
    expect(() => buildBlocksForwardGraph(model, lora, 3, 6, { saveIntermediates: false })).toThrow(/invalid/);
    expect(() =>
      buildBlocksBackwardGraph(model, { ...lora, targets: ['attn.c_q' as LoraTarget] }, 0, 1, {
        saveIntermediates: false,
      }),
    ).toThrow(/unknown LoRA target/);
    const adapter = randomAdapter(SMALL_CONFIG, lora, 1);
    adapter.layers.delete('h.2.mlp.c_proj');
    expect(() => loraGraphFeeds(SMALL_CONFIG, lora, adapter, 1, 3)).toThrow(/no LoRA pair for "h.2.mlp.c_proj"/);
    expect(() => loraGraphFeeds(SMALL_CONFIG, lora, adapter, 0, 2)).not.toThrow();
  });
});
