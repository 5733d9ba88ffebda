/** LoraTrainState: one tier's LoRA and its AdamW, with the snapshots the edge and cloud roll back to. */
import { describe, expect, it } from 'vitest';
import { LoraTrainState } from '../src/train-state';
import { adamwInit, adamwStep, DEFAULT_LORA_TRAIN, initLoraAdapter, Rng, type LoraGrads } from '@splitllm/model';
import { GPT2_SMALL_CONFIG } from '@splitllm/model';

const c = { ...GPT2_SMALL_CONFIG, nEmbd: 16, nInner: 64, nHead: 2, nLayer: 2 };
const lora = { r: 2, alpha: 4, targets: ['attn.c_attn', 'mlp.c_fc'] as const };

function grads(
  seed: number,
  adapter: { layers: Map<string, { A: { data: Float32Array }; B: { data: Float32Array } }> },
): LoraGrads {
  const rng = new Rng(seed);
  const out: LoraGrads = new Map();
  for (const [path, p] of adapter.layers)
    out.set(path, {
      A: rng.fillNormal(new Float32Array(p.A.data.length), 1),
      B: rng.fillNormal(new Float32Array(p.B.data.length), 1),
    });
  return out;
}

describe('LoraTrainState', () => {
  const init = initLoraAdapter(c, { ...lora, targets: [...lora.targets] }, 3);
  const adamw = DEFAULT_LORA_TRAIN.adamw;

  it('steps exactly as AdamW over each array, without touching the adapter it was given', () => {
    const state = new LoraTrainState(init, adamw);
    const ref = new Map(
      [...init.layers].flatMap(
        ([p, pair]) =>
          [
            [`${p}.A`, new Float32Array(pair.A.data)],
            [`${p}.B`, new Float32Array(pair.B.data)],
          ] as const,
      ),
    );
    const moments = new Map([...ref].map(([n, a]) => [n, adamwInit(a.length)]));
    const before = new Float32Array(init.layers.get('h.0.attn.c_attn')!.A.data);
    for (let t = 1; t <= 3; t++) {
      const g = grads(t, init);
      state.step(g);
      for (const [path, pair] of g) {
        adamwStep(ref.get(`${path}.A`)!, pair.A, moments.get(`${path}.A`)!, t, adamw);
        adamwStep(ref.get(`${path}.B`)!, pair.B, moments.get(`${path}.B`)!, t, adamw);
      }
    }
    expect(state.t).toBe(3);
    for (const [path, pair] of state.adapter.layers) {
      expect(pair.A.data).toEqual(ref.get(`${path}.A`));
      expect(pair.B.data).toEqual(ref.get(`${path}.B`));
    }
    expect(init.layers.get('h.0.attn.c_attn')!.A.data).toEqual(before);
  });

  it('restores a snapshot exactly: parameters, moments and step count', () => {
    const state = new LoraTrainState(init, adamw);
    state.step(grads(1, init));
    const snap = state.snapshot();
    const at = state.copyAdapter();
    state.step(grads(2, init));
    state.step(grads(3, init));
    state.restore(snap);
    expect(state.t).toBe(1);
    for (const [path, pair] of state.adapter.layers) expect(pair.B.data).toEqual(at.layers.get(path)!.B.data);
    // the moments came back too: the same next step from here gives the same parameters
    const again = new LoraTrainState(init, adamw);
    again.step(grads(1, init));
    again.step(grads(2, init));
    state.step(grads(2, init));
    for (const [path, pair] of state.adapter.layers)
      expect(pair.A.data).toEqual(again.adapter.layers.get(path)!.A.data);
  });

  it("refuses a step that lacks a module's gradient and changes nothing", () => {
    const state = new LoraTrainState(init, adamw);
    const g = grads(1, init);
    g.delete('h.1.mlp.c_fc');
    const before = state.copyAdapter();
    expect(() => state.step(g)).toThrow(/no gradient for parameter "h\.1\.mlp\.c_fc\.A"/);
    expect(state.t).toBe(0);
    for (const [path, pair] of state.adapter.layers) expect(pair.A.data).toEqual(before.layers.get(path)!.A.data);
  });
});
