/**
 * The cloud tail graphs (blocks [from, L) + ln_f + tied head + mean cross-entropy, forward and
 * backward; and loss only) against the TypeScript reference (cloudSegmentStep), on the shipped
 * moby-tiny model and on a GPT-2-shaped random model, for tails from 2, 3 and L (head only) and
 * several LoRA target sets, B = 2 with a right-padded row (targets -100 at its end), an awkward T
 * and random (nonzero) LoRA B.
 *
 * Tolerances, relative to the max |value| of each reference tensor: forward (loss) 1e-5,
 * gradients (dx, dA, dB) 1e-4; count exact.
 */
import { afterAll, describe, expect, it } from 'vitest';
import {
  type LoraConfig,
  type LoraTarget,
  blocksForward,
  cloudSegmentStep,
  embedForward,
  type Gpt2Model,
  IGNORE_INDEX,
} from '@splitllm/model';
import { buildTailGraph, buildTailLossGraph, loraGradsFromGraph, loraGraphFeeds } from '../src/segment-graphs';
import {
  ErrorLog,
  SMALL_CONFIG,
  createSession,
  loadMobyTiny,
  maxAbs,
  paddedBatch,
  randomAdapter,
  randomModel,
  relErr,
  run,
  type Feed,
} from './helpers';

const FWD_TOL = 1e-5;
const GRAD_TOL = 1e-4;

const log = new ErrorLog('ONNX tail graphs vs reference');
afterAll(() => log.print());

const TARGET_SETS: Array<[string, LoraTarget[]]> = [
  ['attn pair', ['attn.c_attn', 'attn.c_proj']],
  ['all four', ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj']],
  ['mlp.c_fc', ['mlp.c_fc']],
];

const models: Array<[string, () => Gpt2Model, number]> = [
  ['moby-tiny', loadMobyTiny, 13],
  ['random', () => randomModel(SMALL_CONFIG, 5), 11],
];

describe.each(models)('tail graphs on %s', (modelName, load, T) => {
  const model = load();
  const c = model.config;
  const L = c.nLayer;
  const B = 2;
  const D = c.nEmbd;
  const froms = [2, 3, L];

  it.each(TARGET_SETS.flatMap(([tl, targets]) => froms.map((from) => [`from ${from} ${tl}`, from, targets] as const)))(
    'tail %s: loss 1e-5, gradients 1e-4',
    async (_label, from, targets) => {
      const lora: LoraConfig = { r: 4, alpha: 6, targets: [...targets] };
      const adapter = randomAdapter(c, lora, 40 + from);
      const batch = paddedBatch(c, B, T, 9);
      expect(batch.targets.includes(IGNORE_INDEX)).toBe(true);
      const x = blocksForward(model, adapter, embedForward(model, batch.inputIds, B, T), B, T, 0, from).y;
      const ref = cloudSegmentStep(model, adapter, x, batch.targets, B, T, { k: 1, m: from });

      const feeds: Record<string, Feed> = {
        x: { data: x, dims: [B, T, D] },
        targets: { data: batch.targets, dims: [B, T] },
        ...Object.fromEntries(loraGraphFeeds(c, lora, adapter, from, L)),
      };
      const tg = buildTailGraph(model, lora, from);
      const session = await createSession(tg.model);
      expect(session.inputNames).toEqual(tg.inputs.map((i) => i.name));
      expect(session.outputNames).toEqual(tg.outputs.map((o) => o.name));
      const out = await run(session, feeds);
      expect(out.count[0]).toBe(ref.count);
      expect(log.note(`${modelName} loss`, relErr(out.loss, [ref.loss]))).toBeLessThan(FWD_TOL);
      expect(log.note(`${modelName} dx (tail from ${from})`, relErr(out.dx, ref.dh2))).toBeLessThan(GRAD_TOL);
      const grads = loraGradsFromGraph(c, lora, from, L, (n) => out[n]);
      expect(grads.size).toBe((L - from) * targets.length);
      expect(ref.loraGrads.size).toBe(grads.size);
      for (const [path, g] of grads) {
        const r = ref.loraGrads.get(path)!;
        expect(maxAbs(r.A) > 0 && maxAbs(r.B) > 0, `${path}: a zero reference gradient would prove nothing`).toBe(true);
        expect(log.note(`${modelName} dA`, relErr(g.A, r.A)), `${path} dA`).toBeLessThan(GRAD_TOL);
        expect(log.note(`${modelName} dB`, relErr(g.B, r.B)), `${path} dB`).toBeLessThan(GRAD_TOL);
      }
      await session.release();

      const lg = buildTailLossGraph(model, lora, from);
      expect(lg.inputs).toEqual(tg.inputs);
      expect(lg.outputs.map((o) => o.name)).toEqual(['loss', 'count']);
      const ls = await createSession(lg.model);
      const lo = await run(ls, feeds);
      expect(lo.count[0]).toBe(ref.count);
      expect(log.note(`${modelName} loss (loss-only graph)`, relErr(lo.loss, [ref.loss]))).toBeLessThan(FWD_TOL);
      await ls.release();
    },
  );
});

describe('tail graphs: contract', () => {
  const model = randomModel(SMALL_CONFIG, 6);
  const lora: LoraConfig = { r: 3, alpha: 3, targets: ['attn.c_proj'] };

  it('declares the documented inputs and outputs', () => {
    const g = buildTailGraph(model, lora, 4);
    expect(g.inputs).toEqual([
      { name: 'x', dtype: 'float32', dims: ['batch', 'seq', 64] },
      { name: 'targets', dtype: 'int32', dims: ['batch', 'seq'] },
      { name: 'h.4.attn.c_proj.lora_A', dtype: 'float32', dims: [64, 3] },
      { name: 'h.4.attn.c_proj.lora_B', dtype: 'float32', dims: [3, 64] },
    ]);
    expect(g.outputs).toEqual([
      { name: 'loss', dtype: 'float32', dims: [] },
      { name: 'count', dtype: 'float32', dims: [] },
      { name: 'dx', dtype: 'float32', dims: ['batch', 'seq', 64] },
      { name: 'grad.h.4.attn.c_proj.lora_A', dtype: 'float32', dims: [64, 3] },
      { name: 'grad.h.4.attn.c_proj.lora_B', dtype: 'float32', dims: [3, 64] },
    ]);
    expect(() => buildTailGraph(model, lora, 6)).toThrow(/invalid/);
  });

  it('with every target ignored: loss 0, count 0, all gradients 0 (no NaN)', async () => {
    const c = model.config;
    const [B, T] = [2, 5];
    const adapter = randomAdapter(c, lora, 8);
    const batch = paddedBatch(c, B, T, 3);
    batch.targets.fill(IGNORE_INDEX);
    const x = embedForward(model, batch.inputIds, B, T);
    const ref = cloudSegmentStep(model, adapter, x, batch.targets, B, T, { k: 1, m: 3 });
    expect(ref.count).toBe(0);
    const session = await createSession(buildTailGraph(model, lora, 3).model);
    const out = await run(session, {
      x: { data: x, dims: [B, T, c.nEmbd] },
      targets: { data: batch.targets, dims: [B, T] },
      ...Object.fromEntries(loraGraphFeeds(c, lora, adapter, 3, c.nLayer)),
    });
    expect(out.loss[0]).toBe(0);
    expect(out.count[0]).toBe(0);
    for (const [name, v] of Object.entries(out))
      expect(
        v.every((e) => e === 0),
        name,
      ).toBe(true);
  });
});
