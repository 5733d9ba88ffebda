/**
 * Training loops on the reference model: LoRA fine-tuning of the whole model in one process
 * (the centralized baseline every split run is compared with) and full pre-training.
 * Parameters are handled as named flat arrays so one AdamW serves both.
 */
import { sampleBatch } from './data';
import { type AnyModel, modelDims } from './family';
import { type LoraAdapter, type LoraConfig, initLoraAdapter } from './lora';
import { type LoraGrads, type TokenBatch, modelForwardBackward, modelLoss } from './model';
import { adamwInit, adamwStep, type AdamWOptions, type AdamWState } from './ops/adamw';
import { Rng } from './rng';

export type NamedArrays = Map<string, Float32Array>;

/** `h.{i}.{target}.A` / `.B`: the adapter's trainable arrays, shared (not copied). */
export function loraParameters(adapter: LoraAdapter): NamedArrays {
  const out: NamedArrays = new Map();
  for (const [path, pair] of adapter.layers) {
    out.set(`${path}.A`, pair.A.data);
    out.set(`${path}.B`, pair.B.data);
  }
  return out;
}

export function loraGradArrays(grads: LoraGrads): NamedArrays {
  const out: NamedArrays = new Map();
  for (const [path, g] of grads) {
    out.set(`${path}.A`, g.A);
    out.set(`${path}.B`, g.B);
  }
  return out;
}

export interface AdamWSnapshot {
  t: number;
  arrays: Map<string, { param: Float32Array; m: Float32Array; v: Float32Array }>;
}

/** AdamW over named arrays, updated in place. */
export class AdamW {
  private readonly state = new Map<string, AdamWState>();
  t = 0;

  constructor(
    private readonly params: NamedArrays,
    readonly options: AdamWOptions,
  ) {
    for (const [name, p] of params) this.state.set(name, adamwInit(p.length));
  }

  /**
   * One update; every parameter must have a gradient (a missing one is a wiring bug). All
   * gradients are checked before any parameter moves, so a refused step changes nothing.
   */
  step(grads: NamedArrays, lr = this.options.lr): void {
    for (const [name, p] of this.params) {
      const g = grads.get(name);
      if (!g) throw new Error(`AdamW: no gradient for parameter "${name}"`);
      if (g.length !== p.length)
        throw new Error(`AdamW: gradient of "${name}" has ${g.length} elements, parameter ${p.length}`);
    }
    this.t++;
    const o = { ...this.options, lr };
    for (const [name, p] of this.params) adamwStep(p, grads.get(name)!, this.state.get(name)!, this.t, o);
  }

  /** Parameters and optimizer state, copied (to roll back to). */
  snapshot(): AdamWSnapshot {
    const arrays: AdamWSnapshot['arrays'] = new Map();
    for (const [name, p] of this.params) {
      const s = this.state.get(name)!;
      arrays.set(name, { param: new Float32Array(p), m: new Float32Array(s.m), v: new Float32Array(s.v) });
    }
    return { t: this.t, arrays };
  }

  restore(snap: AdamWSnapshot): void {
    for (const name of this.params.keys())
      if (!snap.arrays.has(name)) throw new Error(`AdamW: the snapshot has no "${name}"`);
    for (const [name, p] of this.params) {
      const saved = snap.arrays.get(name)!;
      const s = this.state.get(name)!;
      p.set(saved.param);
      s.m.set(saved.m);
      s.v.set(saved.v);
    }
    this.t = snap.t;
  }
}

/** Scales gradients in place so their global L2 norm is at most maxNorm; returns the norm before. */
export function clipGradNorm(grads: NamedArrays, maxNorm: number): number {
  let sq = 0;
  for (const g of grads.values()) for (let i = 0; i < g.length; i++) sq += g[i] * g[i];
  const norm = Math.sqrt(sq);
  if (maxNorm > 0 && norm > maxNorm) {
    const k = maxNorm / (norm + 1e-6);
    for (const g of grads.values()) for (let i = 0; i < g.length; i++) g[i] *= k;
  }
  return norm;
}

export interface LrSchedule {
  lr: number;
  warmupSteps: number;
  /** cosine decay to lr * minRatio over totalSteps; 0 keeps lr constant after warm-up */
  totalSteps: number;
  minRatio: number;
}

/** Learning rate for 0-based step. */
export function learningRateAt(step: number, s: LrSchedule): number {
  if (step < s.warmupSteps) return (s.lr * (step + 1)) / s.warmupSteps;
  if (s.totalSteps <= 0) return s.lr;
  const progress = Math.min(1, (step - s.warmupSteps) / Math.max(1, s.totalSteps - s.warmupSteps));
  return s.lr * (s.minRatio + (1 - s.minRatio) * 0.5 * (1 + Math.cos(Math.PI * progress)));
}

export interface LoraTrainOptions {
  lora: LoraConfig;
  steps: number;
  seed: number;
  batchSize: number;
  seqLen: number;
  adamw: AdamWOptions;
}

export const DEFAULT_LORA_TRAIN: Omit<LoraTrainOptions, 'lora' | 'steps' | 'seed'> = {
  batchSize: 4,
  seqLen: 64,
  adamw: { lr: 5e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 },
};

export interface StepReport {
  step: number;
  loss: number;
  tokens: number;
  ms: number;
}

/**
 * Centralized LoRA fine-tuning: the adapter starts from initLoraAdapter(seed) and batches are
 * drawn from Rng(seed + 1), so a split run with the same seed sees the same adapters and data.
 */
export function trainLoraCentral(
  model: AnyModel,
  tokens: ArrayLike<number>,
  o: LoraTrainOptions,
  onStep?: (r: StepReport) => void,
): LoraAdapter {
  const c = model.config;
  const { positions, padId } = modelDims(c);
  if (o.seqLen > positions) throw new Error(`sequence length ${o.seqLen} exceeds the model's ${positions} positions`);
  const adapter = initLoraAdapter(c, o.lora, o.seed);
  const opt = new AdamW(loraParameters(adapter), o.adamw);
  const rng = new Rng(o.seed + 1);
  for (let step = 1; step <= o.steps; step++) {
    const t0 = performance.now();
    const batch = sampleBatch(tokens, o.batchSize, o.seqLen, rng, padId);
    const r = modelForwardBackward(model, adapter, batch);
    opt.step(loraGradArrays(r.loraGrads));
    onStep?.({ step, loss: r.loss, tokens: r.count, ms: performance.now() - t0 });
  }
  return adapter;
}

/** Token-weighted mean loss over batches (evaluation); onBatch reports progress. */
export function meanLoss(
  model: AnyModel,
  adapter: LoraAdapter | undefined,
  batches: TokenBatch[],
  onBatch?: () => void,
): { loss: number; tokens: number } {
  let nll = 0;
  let tokens = 0;
  for (const b of batches) {
    const r = modelLoss(model, adapter, b);
    nll += r.loss * r.count;
    tokens += r.count;
    onBatch?.();
  }
  if (tokens === 0) throw new Error('no targets to evaluate');
  return { loss: nll / tokens, tokens };
}
