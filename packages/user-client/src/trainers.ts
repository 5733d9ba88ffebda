/**
 * The user tier's training step behind one interface, on one of three engines:
 *  - 'wgsl': UserSegmentEngine (hand-written WGSL on WebGPU; weights, activations, LoRA and the
 *    AdamW moments stay on the GPU);
 *  - 'wasm': the blocks as ONNX graphs on onnxruntime-web's wasm EP (./onnx-wasm-trainer, loaded
 *    on first use), for browsers without WebGPU or with only a software adapter;
 *  - 'reference': the TypeScript reference (userSegmentForward/Backward + AdamW). Slow, but it is
 *    the oracle the other engines are tested against.
 *
 * All take the decoded user segment (config + wte, wpe, h.[0,k) only: see decodeSegment) and
 * touch nothing else. One step is forward(batch) -> h1 to the edge, then
 * backwardAndStep(dL/dh1 from the edge): each forward is followed by at most one backward.
 *
 * Browser-safe (no Node API): the default device comes from navigator.gpu; Node passes
 * `nodeGpu` from ./node/gpu.
 */
import { AdamW, checkAdapterCovers, cloneTensor, gpt2ParameterShapes, loraGradArrays, loraModulePath, loraParameters, numel, sameShape, userSegmentBackward, userSegmentForward, validateSplitPlan, type AdamWOptions, type Gpt2Config, type Gpt2Model, type LoraAdapter, type LoraConfig, type SplitPlan, type TokenBatch, type UserSegmentState } from '@splitllm/model';
import type { OnnxWasmOptions, OnnxWasmUserTrainer } from './onnx-wasm-trainer';
import {
  chooseKernelVariants,
  engineMatmulShapes,
  GpuError,
  isSoftwareAdapter,
  requestKernelDevice,
  UserSegmentEngine,
  type GpuContext,
  type KernelVariants,
} from '@splitllm/lora-kernels';

export type UserEngineKind = 'wgsl' | 'wasm' | 'reference';
export type { OnnxWasmOptions } from './onnx-wasm-trainer';

export interface UserTrainerOptions {
  plan: SplitPlan;
  lora: LoraConfig;
  /** rows per step and tokens per row: every batch has exactly this shape (pad on the right) */
  batch: number;
  seq: number;
  adamw: AdamWOptions;
}

export interface UserTrainer {
  readonly kind: UserEngineKind;
  /** one line for logs and the UI: the engine, and for wgsl the adapter and kernel variants */
  readonly description: string;
  /** h1 [batch*seq*D] for this batch (batch.B === batch, batch.T === seq, ids in vocab, else a clear Error) */
  forward(batch: TokenBatch): Promise<Float32Array>;
  /** backward from dL/dh1 of the last forward, then one AdamW step on the user adapter */
  backwardAndStep(dh1: Float32Array, lr?: number): Promise<void>;
  /** a copy of the adapter of blocks [0, k) */
  readAdapter(): Promise<LoraAdapter>;
  /** replace the adapter (the global version at a new turn) and reset the optimizer state */
  setAdapter(adapter: LoraAdapter): Promise<void>;
  destroy(): void;
}

// ---------------------------------------------------------------------------------------------
// checks shared by the engines, so they fail alike and before any work is done (exported for
// ./onnx-wasm-trainer; not meant for other callers)

/** @internal */
export function checkOptions(c: Gpt2Config, o: UserTrainerOptions): void {
  validateSplitPlan(c, o.plan);
  if (!(Number.isInteger(o.batch) && o.batch >= 1 && Number.isInteger(o.seq) && o.seq >= 1)) {
    throw new Error(`user trainer: batch ${o.batch} x seq ${o.seq} must be positive integers`);
  }
  if (o.seq > c.nPositions) throw new Error(`user trainer: sequence length ${o.seq} exceeds the model's n_positions ${c.nPositions}`);
}

/** The user segment's weights are there with the config's shapes (a decoded user segment has exactly these). @internal */
export function checkUserWeights(model: Gpt2Model, k: number): void {
  for (const [name, shape] of gpt2ParameterShapes(model.config)) {
    const layer = /^h\.(\d+)\./.exec(name);
    const needed = name === 'wte.weight' || name === 'wpe.weight' || (layer !== null && Number(layer[1]) < k);
    if (!needed) continue;
    const t = model.weights.get(name);
    if (!t) throw new Error(`user trainer: the user segment has no tensor "${name}"`);
    if (!sameShape(t.shape, shape) || t.data.length !== numel(shape)) {
      throw new Error(`user trainer: "${name}" is [${t.shape.join(', ')}], the config needs [${shape.join(', ')}]`);
    }
  }
}

/** Same rules as the engine's: the trainer's LoRA config, shapes that fit, a pair for every target of [0, k). @internal */
export function checkUserAdapter(c: Gpt2Config, o: UserTrainerOptions, adapter: LoraAdapter): void {
  checkAdapterCovers(c, o.lora, adapter, 0, o.plan.k, 'user trainer');
}

/** @internal */
export function checkBatch(c: Gpt2Config, o: UserTrainerOptions, b: TokenBatch): void {
  if (b.B !== o.batch || b.T !== o.seq) {
    throw new Error(`user trainer: this trainer takes batches of ${o.batch} x ${o.seq} tokens, got ${b.B} x ${b.T}`);
  }
  const n = o.batch * o.seq;
  if (b.inputIds.length !== n || b.targets.length !== n) {
    throw new Error(`user trainer: a ${o.batch} x ${o.seq} batch needs ${n} input ids and targets, got ${b.inputIds.length} and ${b.targets.length}`);
  }
  for (let i = 0; i < n; i++) {
    const t = b.inputIds[i];
    if (!(t >= 0 && t < c.vocabSize)) throw new Error(`user trainer: token id ${t} at position ${i} is outside the vocabulary [0, ${c.vocabSize})`);
  }
}

/** @internal */
export function checkDh1(c: Gpt2Config, o: UserTrainerOptions, dh1: Float32Array): void {
  const n = o.batch * o.seq * c.nEmbd;
  if (dh1.length !== n) throw new Error(`user trainer: dL/dh1 has ${dh1.length} values, expected ${n} (${o.batch} x ${o.seq} x ${c.nEmbd})`);
  for (let i = 0; i < n; i++) if (!Number.isFinite(dh1[i])) throw new Error(`user trainer: dL/dh1 holds a non-finite value at ${i}`);
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

// ---------------------------------------------------------------------------------------------
// reference (TypeScript)

export class ReferenceUserTrainer implements UserTrainer {
  readonly kind = 'reference' as const;
  readonly description = 'reference (TypeScript)';
  private adapter: LoraAdapter;
  private optimizer: AdamW;
  private state: UserSegmentState | undefined;
  private destroyed = false;

  private constructor(
    private readonly model: Gpt2Model,
    adapter: LoraAdapter,
    private readonly options: UserTrainerOptions,
  ) {
    this.adapter = copyUserAdapter(adapter, options);
    this.optimizer = new AdamW(loraParameters(this.adapter), options.adamw);
  }

  static create(model: Gpt2Model, adapter: LoraAdapter, o: UserTrainerOptions): ReferenceUserTrainer {
    checkOptions(model.config, o);
    checkUserWeights(model, o.plan.k);
    checkUserAdapter(model.config, o, adapter);
    return new ReferenceUserTrainer(model, adapter, o);
  }

  private alive(): void {
    if (this.destroyed) throw new Error('user trainer: used after destroy()');
  }

  async forward(batch: TokenBatch): Promise<Float32Array> {
    this.alive();
    checkBatch(this.model.config, this.options, batch);
    const r = userSegmentForward(this.model, this.adapter, batch, this.options.plan);
    this.state = r.state;
    return r.h1;
  }

  async backwardAndStep(dh1: Float32Array, lr?: number): Promise<void> {
    this.alive();
    if (!this.state) throw new Error('user trainer: backwardAndStep needs a forward first (one backward per forward)');
    checkDh1(this.model.config, this.options, dh1);
    const grads = userSegmentBackward(this.model, this.adapter, this.state, dh1);
    this.state = undefined;
    this.optimizer.step(loraGradArrays(grads), lr);
  }

  async readAdapter(): Promise<LoraAdapter> {
    this.alive();
    return copyUserAdapter(this.adapter, this.options);
  }

  async setAdapter(adapter: LoraAdapter): Promise<void> {
    this.alive();
    checkUserAdapter(this.model.config, this.options, adapter);
    this.adapter = copyUserAdapter(adapter, this.options);
    this.optimizer = new AdamW(loraParameters(this.adapter), this.options.adamw);
    this.state = undefined;
  }

  destroy(): void {
    this.destroyed = true;
    this.state = undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// WGSL on WebGPU

export class WgslUserTrainer implements UserTrainer {
  readonly kind = 'wgsl' as const;
  private pending = false;
  private destroyed = false;

  private constructor(
    /** the device: it belongs to whoever created it (destroy() leaves it alone) */
    readonly gpu: GpuContext,
    /** the engine itself, for tests and benchmarks (readGrads, finish) */
    readonly engine: UserSegmentEngine,
    readonly variants: Required<KernelVariants>,
    readonly description: string,
    private readonly config: Gpt2Config,
    private readonly options: UserTrainerOptions,
  ) {}

  /**
   * Uploads the user segment and the adapter; kernel variants suit the adapter (the
   * barrier-free set on software adapters, matmul variants timed at this step's shapes on a
   * GPU). Throws GpuError('DOES_NOT_FIT') when the segment does not fit the device.
   */
  static async create(gpu: GpuContext, model: Gpt2Model, adapter: LoraAdapter, o: UserTrainerOptions): Promise<WgslUserTrainer> {
    const c = model.config;
    checkOptions(c, o);
    checkUserWeights(model, o.plan.k);
    checkUserAdapter(c, o, adapter);
    const choice = await chooseKernelVariants(gpu, engineMatmulShapes(c, o.batch, o.seq, o.lora.r));
    const engine = await UserSegmentEngine.create(gpu, model, adapter, {
      k: o.plan.k,
      lora: { ...o.lora, targets: [...o.lora.targets] },
      batch: o.batch,
      seq: o.seq,
      adamw: { ...o.adamw },
      variants: choice.variants,
    });
    const v = choice.variants;
    const kind = isSoftwareAdapter(gpu.adapter) ? 'software adapter' : 'GPU';
    const description = `wgsl on ${gpu.adapter.name} (${kind}): kernels matmul ${v.matmul}, low-rank ${v.lowRank}, layernorm ${v.layernorm}, attention ${v.attention}`;
    return new WgslUserTrainer(gpu, engine, choice.variants, description, c, o);
  }

  private alive(): void {
    if (this.destroyed) throw new Error('user trainer: used after destroy()');
  }

  async forward(batch: TokenBatch): Promise<Float32Array> {
    this.alive();
    checkBatch(this.config, this.options, batch);
    this.pending = false;
    const h1 = await this.engine.forward(batch.inputIds);
    this.pending = true;
    return h1;
  }

  async backwardAndStep(dh1: Float32Array, lr?: number): Promise<void> {
    this.alive();
    // the engine would let a second backward reuse the activations of a forward made with the
    // adapter before the step; refuse it so both engines behave alike
    if (!this.pending) throw new Error('user trainer: backwardAndStep needs a forward first (one backward per forward)');
    checkDh1(this.config, this.options, dh1);
    this.engine.backward(dh1);
    this.engine.step(lr);
    this.pending = false;
  }

  async readAdapter(): Promise<LoraAdapter> {
    this.alive();
    return this.engine.readAdapter();
  }

  async setAdapter(adapter: LoraAdapter): Promise<void> {
    this.alive();
    checkUserAdapter(this.config, this.options, adapter);
    this.engine.setAdapter(adapter);
    this.pending = false;
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.engine.destroy();
  }
}

// ---------------------------------------------------------------------------------------------
// choosing the engine

/** The browser's (or Web Worker's) WebGPU device; throws GpuError('NO_WEBGPU') without navigator.gpu. */
export async function browserGpu(): Promise<GpuContext> {
  const gpu = (globalThis as { navigator?: { gpu?: Parameters<typeof requestKernelDevice>[0] } }).navigator?.gpu;
  if (!gpu) throw new GpuError('NO_WEBGPU', 'this browser has no WebGPU (navigator.gpu is missing)');
  return requestKernelDevice(gpu);
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** The wasm engine, loaded on first use: onnxruntime-web is a large module that only it needs. */
async function startWasm(model: Gpt2Model, adapter: LoraAdapter, o: UserTrainerOptions, wasm: OnnxWasmOptions | undefined): Promise<OnnxWasmUserTrainer> {
  const { OnnxWasmUserTrainer } = await import('./onnx-wasm-trainer');
  return OnnxWasmUserTrainer.create(model, adapter, o, wasm);
}

function msText(ms: number): string {
  return ms >= 10 ? ms.toFixed(0) : ms.toFixed(1);
}

/**
 * One training step's wall time at the run's shapes, on a throwaway batch: one warm-up step,
 * then the median of two timed steps (forward + backwardAndStep, and for wgsl until the queue
 * is drained). The trainer's adapter and optimizer are then reset to `adapter`, so nothing of
 * the trial leaks into training.
 */
async function timeOneStep(trainer: UserTrainer, c: Gpt2Config, o: UserTrainerOptions, adapter: LoraAdapter): Promise<number> {
  const n = o.batch * o.seq;
  const inputIds = new Int32Array(n);
  for (let i = 0; i < n; i++) inputIds[i] = (i * 7919 + 13) % c.vocabSize;
  const batch: TokenBatch = { B: o.batch, T: o.seq, inputIds, targets: inputIds.slice() };
  const dh1 = new Float32Array(n * c.nEmbd);
  for (let i = 0; i < dh1.length; i++) dh1[i] = ((i % 13) - 6) * 1e-4;
  const step = async (): Promise<number> => {
    const t0 = performance.now();
    await trainer.forward(batch);
    await trainer.backwardAndStep(dh1);
    if (trainer instanceof WgslUserTrainer) await trainer.engine.finish();
    return performance.now() - t0;
  };
  await step();
  const times = [await step(), await step()];
  await trainer.setAdapter(adapter);
  return (times[0] + times[1]) / 2; // the median of two
}

/** Builds an engine and, when asked, times it; a failure (to build or to step) is a message, not a throw. */
async function tryEngine<T extends UserTrainer>(
  make: () => Promise<T>,
  time?: (t: T) => Promise<number>,
): Promise<{ trainer: T; ms: number } | { error: string }> {
  let trainer: T | undefined;
  try {
    trainer = await make();
    return { trainer, ms: time ? await time(trainer) : NaN };
  } catch (e) {
    trainer?.destroy();
    return { error: messageOf(e) };
  }
}

/**
 * kind 'wgsl', 'wasm' or 'reference': that engine, or an Error saying why it cannot start ('wgsl'
 * without a device throws GpuError, with its code, when getGpu threw one; 'reference' and
 * 'wasm' never call getGpu). 'auto', by the WebGPU adapter getGpu() gives:
 *  - none: wasm;
 *  - a hardware adapter: wgsl;
 *  - only a software/fallback adapter (isSoftwareAdapter): both are built and one training step
 *    of each is timed at the run's shapes (timeOneStep); the faster is kept, the other destroyed.
 * When a chosen engine fails to start, the next one is taken (wgsl -> wasm, wasm -> wgsl when
 * there is an adapter, else the reference) and the reason says what failed. Bad options,
 * weights or adapters throw whatever the kind: they are the caller's bug. The reason always
 * names the adapter (or its absence) and, for a software adapter, both timings.
 *
 * getGpu defaults to the browser's navigator.gpu; in Node pass nodeGpu. `wasm` sets up the wasm
 * engine (where the page serves onnxruntime-web's files, threads): see OnnxWasmOptions.
 */
export async function createUserTrainer(
  kind: UserEngineKind | 'auto',
  model: Gpt2Model,
  adapter: LoraAdapter,
  o: UserTrainerOptions,
  getGpu: () => Promise<GpuContext> = browserGpu,
  wasm?: OnnxWasmOptions,
): Promise<{ trainer: UserTrainer; reason: string }> {
  if (kind === 'reference') {
    const trainer = ReferenceUserTrainer.create(model, adapter, o);
    return { trainer, reason: 'the reference engine was asked for' };
  }
  if (kind !== 'wgsl' && kind !== 'wasm' && kind !== 'auto') throw new Error(`unknown user engine "${String(kind)}" (wgsl, wasm, reference or auto)`);
  // bad options, weights or adapter are the caller's bug, not a reason to change engines
  checkOptions(model.config, o);
  checkUserWeights(model, o.plan.k);
  checkUserAdapter(model.config, o, adapter);

  if (kind === 'wasm') {
    let trainer: OnnxWasmUserTrainer;
    try {
      trainer = await startWasm(model, adapter, o, wasm);
    } catch (e) {
      throw new Error(`the wasm engine was asked for but could not start: ${messageOf(e)}`, { cause: e });
    }
    return { trainer, reason: `the wasm engine was asked for: ${trainer.description}` };
  }

  let gpu: GpuContext;
  try {
    gpu = await getGpu();
  } catch (e) {
    if (kind === 'wgsl') {
      const message = `the wgsl engine was asked for but there is no WebGPU device: ${messageOf(e)}`;
      if (e instanceof GpuError) throw new GpuError(e.code, message);
      throw new Error(message, { cause: e });
    }
    const noGpu = `no WebGPU device (${messageOf(e)})`;
    const w = await tryEngine(() => startWasm(model, adapter, o, wasm));
    if ('trainer' in w) return { trainer: w.trainer, reason: `${noGpu}: ${w.trainer.description}` };
    const trainer = ReferenceUserTrainer.create(model, adapter, o);
    return { trainer, reason: `${noGpu} and the wasm engine could not start (${w.error}): reference (TypeScript) engine` };
  }
  if (kind === 'wgsl') {
    const trainer = await WgslUserTrainer.create(gpu, model, adapter, o);
    return { trainer, reason: `the wgsl engine was asked for: ${trainer.description}` };
  }

  if (!isSoftwareAdapter(gpu.adapter)) {
    const g = await tryEngine(() => WgslUserTrainer.create(gpu, model, adapter, o));
    if ('trainer' in g) return { trainer: g.trainer, reason: `WebGPU device available: ${g.trainer.description}` };
    // e.g. the segment exceeds this adapter's buffer limits: training still works, only slower
    const failed = `WebGPU device found but the wgsl engine failed (${g.error})`;
    const w = await tryEngine(() => startWasm(model, adapter, o, wasm));
    if ('trainer' in w) return { trainer: w.trainer, reason: `${failed}: ${w.trainer.description}` };
    const trainer = ReferenceUserTrainer.create(model, adapter, o);
    return { trainer, reason: `${failed} and the wasm engine could not start (${w.error}): reference (TypeScript) engine` };
  }

  // only a software adapter (SwiftShader, lavapipe, WARP...): time both engines on this run's shapes
  const soft = `software WebGPU adapter (${gpu.adapter.name || 'unnamed'})`;
  const time = (t: UserTrainer) => timeOneStep(t, model.config, o, adapter);
  const w = await tryEngine(() => startWasm(model, adapter, o, wasm), time);
  const g = await tryEngine(() => WgslUserTrainer.create(gpu, model, adapter, o), time);
  if ('trainer' in w && 'trainer' in g) {
    const useWasm = w.ms <= g.ms;
    const [keep, drop] = useWasm ? [w.trainer, g.trainer] : [g.trainer, w.trainer];
    drop.destroy();
    return { trainer: keep, reason: `${soft}: wgsl ${msText(g.ms)} ms/step vs wasm ${msText(w.ms)} ms/step, using ${keep.kind}` };
  }
  if ('trainer' in w) {
    return { trainer: w.trainer, reason: `${soft}: the wgsl engine failed (${(g as { error: string }).error}): using wasm, ${msText(w.ms)} ms/step` };
  }
  if ('trainer' in g) {
    return { trainer: g.trainer, reason: `${soft}: the wasm engine could not start (${w.error}): using wgsl, ${msText(g.ms)} ms/step` };
  }
  const trainer = ReferenceUserTrainer.create(model, adapter, o);
  return { trainer, reason: `${soft}: the wgsl engine failed (${g.error}) and the wasm engine could not start (${w.error}): reference (TypeScript) engine` };
}
