/**
 * One tier's trainable LoRA segment and its AdamW state, with snapshots: the edge and the
 * cloud take a snapshot when a user's turn begins and restore it when that user drops out,
 * so a dropped user leaves no trace in the round's aggregate. AdamW is elementwise, so three
 * tiers each stepping their own part with the same t is exactly one AdamW over the whole
 * adapter (what the centralized baseline does).
 */
import type { LoraAdapter } from './lora';
import type { LoraGrads } from './model';
import { adamwInit, adamwStep, type AdamWOptions, type AdamWState } from './ops/adamw';

interface Slot {
  param: Float32Array;
  state: AdamWState;
}

export interface LoraTrainSnapshot {
  t: number;
  arrays: Map<string, { param: Float32Array; m: Float32Array; v: Float32Array }>;
}

export class LoraTrainState {
  private readonly slots = new Map<string, Slot>();
  /** AdamW steps taken since the adapter was set */
  t = 0;

  /** The adapter is copied: the caller's stays untouched. */
  constructor(
    adapter: LoraAdapter,
    readonly adamw: AdamWOptions,
  ) {
    const layers: LoraAdapter['layers'] = new Map();
    for (const [path, pair] of adapter.layers) {
      const A = { shape: [...pair.A.shape], data: new Float32Array(pair.A.data) };
      const B = { shape: [...pair.B.shape], data: new Float32Array(pair.B.data) };
      layers.set(path, { A, B });
      this.slots.set(`${path}.A`, { param: A.data, state: adamwInit(A.data.length) });
      this.slots.set(`${path}.B`, { param: B.data, state: adamwInit(B.data.length) });
    }
    this.adapter = { config: { ...adapter.config, targets: [...adapter.config.targets] }, layers };
  }

  /** The live adapter (its arrays change with every step). */
  readonly adapter: LoraAdapter;

  /** One AdamW step; every module of the adapter needs its gradient (a missing one is a wiring bug). */
  step(grads: LoraGrads, lr = this.adamw.lr): void {
    for (const path of this.adapter.layers.keys()) {
      const g = grads.get(path);
      if (!g) throw new Error(`LoRA step: no gradient for module "${path}"`);
      for (const [which, arr] of [['A', g.A], ['B', g.B]] as const) {
        const slot = this.slots.get(`${path}.${which}`)!;
        if (arr.length !== slot.param.length) {
          throw new Error(`LoRA step: gradient of "${path}.${which}" has ${arr.length} elements, parameter ${slot.param.length}`);
        }
      }
    }
    this.t++;
    const o = { ...this.adamw, lr };
    for (const [path, g] of grads) {
      if (!this.adapter.layers.has(path)) continue;
      const a = this.slots.get(`${path}.A`)!;
      const b = this.slots.get(`${path}.B`)!;
      adamwStep(a.param, g.A, a.state, this.t, o);
      adamwStep(b.param, g.B, b.state, this.t, o);
    }
  }

  snapshot(): LoraTrainSnapshot {
    const arrays: LoraTrainSnapshot['arrays'] = new Map();
    for (const [name, s] of this.slots) {
      arrays.set(name, { param: new Float32Array(s.param), m: new Float32Array(s.state.m), v: new Float32Array(s.state.v) });
    }
    return { t: this.t, arrays };
  }

  restore(snap: LoraTrainSnapshot): void {
    for (const [name, s] of this.slots) {
      const saved = snap.arrays.get(name);
      if (!saved) throw new Error(`LoRA restore: snapshot has no "${name}"`);
      s.param.set(saved.param);
      s.state.m.set(saved.m);
      s.state.v.set(saved.v);
    }
    this.t = snap.t;
  }

  /** A copy of the current adapter (for upload). */
  copyAdapter(): LoraAdapter {
    const layers: LoraAdapter['layers'] = new Map();
    for (const [path, pair] of this.adapter.layers) {
      layers.set(path, { A: { shape: [...pair.A.shape], data: new Float32Array(pair.A.data) }, B: { shape: [...pair.B.shape], data: new Float32Array(pair.B.data) } });
    }
    return { config: { ...this.adapter.config, targets: [...this.adapter.config.targets] }, layers };
  }
}
