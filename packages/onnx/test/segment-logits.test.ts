/**
 * The cloud's generation graph (blocks [from, L) + ln_f + tied head, logits at the last
 * position) against the TypeScript reference (blocksForward, then headForward's logits), on the
 * shipped moby-tiny model and on a GPT-2-shaped random model, for tails from 2, 3 and L (head
 * only), two LoRA target sets with random (nonzero) LoRA B, B = 2 and an awkward T.
 *
 * Tolerance: 1e-5 relative to the max |logit| of the reference, as for the tail's loss (a
 * forward of the same ops in float32; the reference accumulates in float64).
 */
import { afterAll, describe, expect, it } from 'vitest';
import {
  type LoraConfig,
  type LoraTarget,
  blocksForward,
  embedForward,
  headForward,
  type Gpt2Model,
} from '@splitllm/model';
import { buildTailLogitsGraph, loraGraphFeeds } from '../src/segment-graphs';
import {
  ErrorLog,
  SMALL_CONFIG,
  createSession,
  loadMobyTiny,
  paddedBatch,
  randomAdapter,
  randomModel,
  relErr,
  run,
} from './helpers';

const FWD_TOL = 1e-5;

const log = new ErrorLog('ONNX tail logits graph vs reference');
afterAll(() => log.print());

const TARGET_SETS: Array<[string, LoraTarget[]]> = [
  ['attn pair', ['attn.c_attn', 'attn.c_proj']],
  ['all four', ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj']],
];

const models: Array<[string, () => Gpt2Model, number]> = [
  ['moby-tiny', loadMobyTiny, 13],
  ['random', () => randomModel(SMALL_CONFIG, 5), 11],
];

/** The reference's logits [B, V] at the last position of every row. */
function lastLogits(model: Gpt2Model, h: Float32Array, B: number, T: number): Float32Array {
  const V = model.config.vocabSize;
  const { logits } = headForward(model, h, new Int32Array(B * T), B, T);
  const out = new Float32Array(B * V);
  for (let b = 0; b < B; b++) out.set(logits.subarray((b * T + T - 1) * V, (b * T + T) * V), b * V);
  return out;
}

describe.each(models)('tail logits graph on %s', (modelName, load, T) => {
  const model = load();
  const c = model.config;
  const L = c.nLayer;
  const B = 2;
  const D = c.nEmbd;

  it.each(
    TARGET_SETS.flatMap(([tl, targets]) => [2, 3, L].map((from) => [`from ${from} ${tl}`, from, targets] as const)),
  )('tail %s: last-position logits within 1e-5', async (_label, from, targets) => {
    const lora: LoraConfig = { r: 4, alpha: 6, targets: [...targets] };
    const adapter = randomAdapter(c, lora, 60 + from);
    const batch = paddedBatch(c, B, T, 19);
    const x = blocksForward(model, adapter, embedForward(model, batch.inputIds, B, T), B, T, 0, from).y;
    const ref = lastLogits(model, blocksForward(model, adapter, x, B, T, from, L).y, B, T);

    const g = buildTailLogitsGraph(model, lora, from);
    const session = await createSession(g.model);
    expect(session.inputNames).toEqual(g.inputs.map((i) => i.name));
    expect(session.outputNames).toEqual(['logits']);
    const out = await run(session, {
      x: { data: x, dims: [B, T, D] },
      ...Object.fromEntries(loraGraphFeeds(c, lora, adapter, from, L)),
    });
    expect(out.logits).toHaveLength(B * c.vocabSize);
    expect(log.note(`${modelName} logits`, relErr(out.logits, ref))).toBeLessThan(FWD_TOL);
    // T = 1 (a one-token context) takes the same path
    const one = await run(session, {
      x: { data: x.slice(0, D), dims: [1, 1, D] },
      ...Object.fromEntries(loraGraphFeeds(c, lora, adapter, from, L)),
    });
    const refOne = lastLogits(model, blocksForward(model, adapter, x.slice(0, D), 1, 1, from, L).y, 1, 1);
    expect(log.note(`${modelName} logits (T = 1)`, relErr(one.logits, refOne))).toBeLessThan(FWD_TOL);
    await session.release();
  });
});

describe('tail logits graph: contract', () => {
  const model = randomModel(SMALL_CONFIG, 6);
  const lora: LoraConfig = { r: 3, alpha: 3, targets: ['attn.c_proj'] };

  it('declares the documented inputs and outputs', () => {
    const g = buildTailLogitsGraph(model, lora, 4);
    expect(g.inputs).toEqual([
      { name: 'x', dtype: 'float32', dims: ['batch', 'seq', 64] },
      { name: 'h.4.attn.c_proj.lora_A', dtype: 'float32', dims: [64, 3] },
      { name: 'h.4.attn.c_proj.lora_B', dtype: 'float32', dims: [3, 64] },
    ]);
    expect(g.outputs).toEqual([{ name: 'logits', dtype: 'float32', dims: ['batch', 301] }]);
    expect(buildTailLogitsGraph(model, lora, 5).inputs.map((i) => i.name)).toEqual(['x']);
    expect(() => buildTailLogitsGraph(model, lora, 6)).toThrow(/invalid/);
  });
});
