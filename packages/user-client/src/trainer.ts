/**
 * The user tier's training step behind one interface, whatever engine runs it (./engines: one
 * file each; ./create-trainer picks one). One step is forward(batch) -> h1 to the edge, then
 * backwardAndStep(dL/dh1 from the edge): each forward is followed by at most one backward.
 *
 * The engines take the decoded user segment (config + wte, wpe, h.[0,k) only: see decodeSegment)
 * and touch nothing else. The checks below are shared so that every engine fails alike, and
 * before any work is done.
 *
 * This module imports no engine: the engines import it, and only ./create-trainer imports the
 * engines, so the modules form no cycle.
 */
import {
  checkAdapterCovers,
  cloneTensor,
  IGNORE_INDEX,
  loraModulePath,
  modelDims,
  numel,
  sameShape,
  segmentParameterShapes,
  validateSplitPlan,
  type AdamWOptions,
  type AnyModel,
  type ModelConfig,
  type LoraAdapter,
  type LoraConfig,
  type SplitPlan,
  type TokenBatch,
} from '@splitllm/model';

export type UserEngineKind = 'wgsl' | 'wasm' | 'reference';

export interface UserTrainerOptions {
  plan: SplitPlan;
  lora: LoraConfig;
  /** rows per step and tokens per row: every batch has exactly this shape (pad on the right) */
  batch: number;
  seq: number;
  adamw: AdamWOptions;
}

/** The head step's result (labels on the device): the batch's mean loss, the targets it counted, dL/dhL. */
export interface HeadStepResult {
  loss: number;
  count: number;
  /** dL/dhL [batch*seq*D], sent back to the cloud */
  dh: Float32Array;
}

export interface UserTrainer {
  readonly kind: UserEngineKind;
  /** one line for logs and the UI: the engine, and for wgsl the adapter and kernel variants */
  readonly description: string;
  /** h1 [batch*seq*D] for this batch (batch.B === batch, batch.T === seq, ids in vocab, else a clear Error) */
  forward(batch: TokenBatch): Promise<Float32Array>;
  /** backward from dL/dh1 of the last forward, then one AdamW step on the user adapter */
  backwardAndStep(dh1: Float32Array, lr?: number): Promise<void>;
  /**
   * Labels on the device: ln_f, the tied LM head and the mean cross-entropy on the last hidden
   * state hL [batch*seq*D] the cloud sent back, with this step's targets [batch*seq], and the
   * gradient dL/dhL. Frozen weights only: the adapter and the optimizer are untouched.
   */
  headStep(hL: Float32Array, targets: Int32Array): Promise<HeadStepResult>;
  /** Generation with labels on the device: next-token logits [V] from one last hidden state [D]. */
  headLogits(h: Float32Array): Promise<Float32Array>;
  /** a copy of the adapter of blocks [0, k) */
  readAdapter(): Promise<LoraAdapter>;
  /** replace the adapter (the global version at a new turn) and reset the optimizer state */
  setAdapter(adapter: LoraAdapter): Promise<void>;
  destroy(): void;
}

// ---------------------------------------------------------------------------------------------
// checks shared by the engines (exported for ./engines and ./create-trainer; not meant for other
// callers)

/** @internal */
export function checkOptions(c: ModelConfig, o: UserTrainerOptions): void {
  validateSplitPlan(c, o.plan);
  if (!(Number.isInteger(o.batch) && o.batch >= 1 && Number.isInteger(o.seq) && o.seq >= 1)) {
    throw new Error(`user trainer: batch ${o.batch} x seq ${o.seq} must be positive integers`);
  }
  const { positions } = modelDims(c);
  if (o.seq > positions) {
    throw new Error(`user trainer: sequence length ${o.seq} exceeds the model's ${positions} positions`);
  }
}

/**
 * The user segment's weights are there with the config's shapes (a decoded user segment has
 * exactly these). @internal
 */
export function checkUserWeights(model: AnyModel, k: number): void {
  // the user segment of a plan with this k (m does not change what the user holds)
  const plan = { k, m: model.config.nLayer };
  for (const [name, shape] of segmentParameterShapes(model.config, plan, 'user')) {
    const t = model.weights.get(name);
    if (!t) throw new Error(`user trainer: the user segment has no tensor "${name}"`);
    if (!sameShape(t.shape, shape) || t.data.length !== numel(shape)) {
      throw new Error(`user trainer: "${name}" is [${t.shape.join(', ')}], the config needs [${shape.join(', ')}]`);
    }
  }
}

/**
 * Same rules as the WGSL engine's: the trainer's LoRA config, shapes that fit, a pair for every
 * target of [0, k). @internal
 */
export function checkUserAdapter(c: ModelConfig, o: UserTrainerOptions, adapter: LoraAdapter): void {
  checkAdapterCovers(c, o.lora, adapter, 0, o.plan.k, 'user trainer');
}

/** The segment, options and adapter an engine is built with; throws on the caller's bug. @internal */
export function checkTrainerInputs(model: AnyModel, adapter: LoraAdapter, o: UserTrainerOptions): void {
  checkOptions(model.config, o);
  checkUserWeights(model, o.plan.k);
  checkUserAdapter(model.config, o, adapter);
}

/** @internal */
export function checkBatch(c: ModelConfig, o: UserTrainerOptions, b: TokenBatch): void {
  if (b.B !== o.batch || b.T !== o.seq) {
    throw new Error(`user trainer: this trainer takes batches of ${o.batch} x ${o.seq} tokens, got ${b.B} x ${b.T}`);
  }
  const n = o.batch * o.seq;
  if (b.inputIds.length !== n || b.targets.length !== n) {
    throw new Error(
      `user trainer: a ${o.batch} x ${o.seq} batch needs ${n} input ids and targets, ` +
        `got ${b.inputIds.length} and ${b.targets.length}`,
    );
  }
  for (let i = 0; i < n; i++) {
    const t = b.inputIds[i];
    if (!(t >= 0 && t < c.vocabSize)) {
      throw new Error(`user trainer: token id ${t} at position ${i} is outside the vocabulary [0, ${c.vocabSize})`);
    }
  }
}

/** @internal */
export function checkDh1(c: ModelConfig, o: UserTrainerOptions, dh1: Float32Array): void {
  const D = modelDims(c).width;
  const n = o.batch * o.seq * D;
  if (dh1.length !== n) {
    const shape = `${o.batch} x ${o.seq} x ${D}`;
    throw new Error(`user trainer: dL/dh1 has ${dh1.length} values, expected ${n} (${shape})`);
  }
  for (let i = 0; i < n; i++) {
    if (!Number.isFinite(dh1[i])) throw new Error(`user trainer: dL/dh1 holds a non-finite value at ${i}`);
  }
}

/**
 * The last hidden state the cloud sent back, and this step's targets, before the head runs on
 * them: the shapes of the trainer's batch, finite values, and targets in the vocabulary or the
 * ignore index. @internal
 */
export function checkHeadInputs(c: ModelConfig, o: UserTrainerOptions, hL: Float32Array, targets: Int32Array): void {
  const n = o.batch * o.seq;
  const D = modelDims(c).width;
  if (hL.length !== n * D) {
    const shape = `${o.batch} x ${o.seq} x ${D}`;
    throw new Error(`user trainer: the last hidden state has ${hL.length} values, expected ${n * D} (${shape})`);
  }
  for (let i = 0; i < hL.length; i++) {
    if (!Number.isFinite(hL[i]))
      throw new Error(`user trainer: the last hidden state holds a non-finite value at ${i}`);
  }
  if (targets.length !== n) throw new Error(`user trainer: ${targets.length} targets, expected ${n}`);
  for (let i = 0; i < n; i++) {
    const t = targets[i];
    if (t !== IGNORE_INDEX && !(t >= 0 && t < c.vocabSize)) {
      throw new Error(
        `user trainer: target ${t} at position ${i} is outside [0, ${c.vocabSize}) and is not ${IGNORE_INDEX}`,
      );
    }
  }
}

/** One position's last hidden state for generation: D finite values. @internal */
export function checkLastHidden(c: ModelConfig, h: Float32Array): void {
  const D = modelDims(c).width;
  if (h.length !== D) throw new Error(`user trainer: a last hidden state has ${h.length} values, expected ${D}`);
  for (let i = 0; i < h.length; i++) {
    if (!Number.isFinite(h[i])) throw new Error(`user trainer: the last hidden state holds a non-finite value at ${i}`);
  }
}

/** The pairs of blocks [0, k), copied: the caller's adapter is never aliased or mutated. @internal */
export function copyUserAdapter(adapter: LoraAdapter, o: UserTrainerOptions): LoraAdapter {
  const layers: LoraAdapter['layers'] = new Map();
  for (let layer = 0; layer < o.plan.k; layer++) {
    for (const target of o.lora.targets) {
      const path = loraModulePath(layer, target);
      const p = adapter.layers.get(path)!;
      layers.set(path, { A: cloneTensor(p.A), B: cloneTensor(p.B) });
    }
  }
  return { config: { ...o.lora, targets: [...o.lora.targets] }, layers };
}

/** The error thrown by a trainer used after destroy(), the same for every engine. @internal */
export function destroyedError(): Error {
  return new Error('user trainer: used after destroy()');
}
