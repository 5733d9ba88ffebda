/**
 * UserEngineBase: what the user-segment engines of both model families (engine.ts's GPT-2
 * UserSegmentEngine, llama-engine.ts's LlamaUserSegmentEngine) do the same way, so that one piece
 * of code serves both. A subclass builds its model's frozen weights, activations and dispatch
 * lists, asking this class for each block's linears with their LoRA pairs (blockLinears) and for
 * the linears' dispatches (linearOps, kernels/lora-linear.ts in the subclass's weight layout),
 * then hands the result over with ready(). Everything after that is here: the token ids and dL/dh1 checked and
 * uploaded, forward / backward / AdamW step in call order, the head, reading the gradients and the
 * adapter, replacing the adapter (the optimizer reset with it), and freeing every buffer. Also the
 * options both engines take, the shape checks of create() and its error scopes.
 *
 * A subclass supplies its error (inputError: GPT-2 a plain Error, LLaMA a coded LlamaEngineError,
 * so the messages and classes callers see are the ones they saw before the two shared this code)
 * and its adapter check (checkAdapter).
 *
 * Browser-safe (no Node API).
 */
import {
  loraModulePath,
  loraScale,
  loraTargetDims,
  type AdamWOptions,
  type LoraAdapter,
  type LoraConfig,
  type LoraGrads,
  type LoraTarget,
  type ModelConfig,
  type Tensor,
} from '@splitllm/model';
import { GpuError, type Dispatch, type GpuContext } from './gpu';
import { adamw, createAdamwHyper, setAdamwStep, type AdamwHyper } from './kernels/adamw';
import type { AttentionVariant } from './kernels/attention';
import type { ChunkedHead, HeadStepResult, LmHeadOptions } from './kernels/head';
import type { LayerNormVariant } from './kernels/layernorm';
import {
  loraLinearBackward,
  loraLinearForward,
  type LinearWeightLayout,
  type LoraLinearOptions,
} from './kernels/lora-linear';
import { DEFAULT_MATMUL_VARIANT, type MatmulVariant } from './kernels/matmul';

/**
 * LoRA's rank-r products are skinny (one side r = 8 or so): a 64x64 block wastes most of its
 * tile there, and the 16x16 tile was about twice as fast on an H200 (0.14-0.16 ms against
 * 0.31-0.41 ms at M = 512, K or N = 768..2304, r = 8).
 */
export const DEFAULT_LOW_RANK_VARIANT: MatmulVariant = 'tiled';

/** Kernel variants: a per-device setting (defaults tuned for real GPUs). */
export interface KernelVariants {
  /** the full-size products (x W, dy W^T) */
  matmul?: MatmulVariant;
  /** LoRA's rank-r products (x A, xa B, dy B^T, g A^T, dA, dB) */
  lowRank?: MatmulVariant;
  layernorm?: LayerNormVariant;
  attention?: AttentionVariant;
  /** the LM head's dy = dlogits W in this many slices of V (1: none; > 1 runs on 'blocked' and 'blocked8x8') */
  headSplitK?: number;
}

/** Variants that are fastest on CPU (software Vulkan) adapters, measured on SwiftShader. */
export const SOFTWARE_ADAPTER_VARIANTS: Required<KernelVariants> = {
  matmul: 'registers',
  lowRank: 'registers',
  layernorm: 'thread',
  attention: 'naive',
  headSplitK: 1,
};

export interface UserEngineOptions {
  /** the user segment: embedding + blocks [0, k) */
  k: number;
  lora: LoraConfig;
  /** rows per step and tokens per row: every batch has exactly this shape (pad on the right) */
  batch: number;
  seq: number;
  adamw: AdamWOptions;
  variants?: KernelVariants;
  /** at most this many rows per head chunk (default: the rule in kernels/head.ts, headChunkRows) */
  headChunkRows?: number;
}

/** A LoRA pair on the device: the parameters, their gradients and AdamW moments, and x A for the backward. */
export interface LoraPairBuffers {
  A: GPUBuffer;
  B: GPUBuffer;
  dA: GPUBuffer;
  dB: GPUBuffer;
  mA: GPUBuffer;
  vA: GPUBuffer;
  mB: GPUBuffer;
  vB: GPUBuffer;
  xa: GPUBuffer;
}

/** One linear of a block: in K, out N, the frozen W (in the engine's layout) and b, and its pair when targeted. */
export interface LinearSlot {
  K: number;
  N: number;
  W: GPUBuffer;
  b?: GPUBuffer;
  lora?: LoraPairBuffers;
}

/** The linears' dispatches, on the engine's rows, rank, scale and variants (see linearOps). */
export interface LinearOps {
  forward(s: LinearSlot, x: GPUBuffer, y: GPUBuffer): Dispatch[];
  /** dx absent: not computed; accumulateDx: dx += ... (a sum of branches) */
  backward(s: LinearSlot, x: GPUBuffer, dy: GPUBuffer, dx: GPUBuffer | undefined, accumulateDx?: boolean): Dispatch[];
}

/** What a subclass has built, handed to ready(). */
export interface BuiltSegment {
  /** h1 = x_k [M, D] */
  out: GPUBuffer;
  forward: Dispatch[];
  /** from dL/dh1 in `dRes` to the LoRA gradients */
  backward: Dispatch[];
  head: ChunkedHead;
}

interface TrainedPair {
  /** the module path (loraModulePath): the adapter's key */
  name: string;
  K: number;
  N: number;
  buffers: LoraPairBuffers;
}

/**
 * The checks create() makes of the options before anything is uploaded: 1 <= k <= layers,
 * positive batch and seq, seq within the model's positions (`positions` names the setting).
 */
export function checkSegmentShape(
  o: Pick<UserEngineOptions, 'k' | 'batch' | 'seq'>,
  layers: number,
  positions: { max: number; setting: string },
  fail: (message: string) => Error,
): void {
  const { k, batch, seq } = o;
  if (!(Number.isInteger(k) && k >= 1 && k <= layers)) throw fail(`user segment k = ${k} must be in [1, ${layers}]`);
  if (!(Number.isInteger(batch) && batch >= 1 && Number.isInteger(seq) && seq >= 1))
    throw fail(`batch ${batch} x seq ${seq} must be positive integers`);
  if (seq > positions.max)
    throw fail(`sequence length ${seq} exceeds the model's ${positions.setting} ${positions.max}`);
}

/**
 * Runs an engine's constructor inside out-of-memory and validation error scopes. Throws
 * GpuError('DOES_NOT_FIT') with the engine's size (`bytes`) when a buffer exceeds the adapter's
 * limits or the device runs out of memory, GpuError('GPU_VALIDATION') when building failed
 * validation; anything else the constructor throws, as it is.
 */
export async function constructInErrorScopes<E extends { destroy(): void }>(
  gpu: GpuContext,
  construct: () => E,
  bytes: () => number,
): Promise<E> {
  gpu.device.pushErrorScope('out-of-memory');
  gpu.device.pushErrorScope('validation');
  let engine: E | undefined;
  let thrown: unknown;
  try {
    engine = construct();
  } catch (e) {
    thrown = e;
  }
  const validation = await gpu.device.popErrorScope();
  const oom = await gpu.device.popErrorScope();
  const need = `${(bytes() / 2 ** 20).toFixed(1)} MiB`;
  if (thrown) {
    if (thrown instanceof GpuError && thrown.code === 'DOES_NOT_FIT') {
      throw new GpuError(
        'DOES_NOT_FIT',
        `the user segment (${need} on the GPU) does not fit this adapter: ${thrown.message}`,
      );
    }
    throw thrown;
  }
  if (oom) {
    engine?.destroy();
    throw new GpuError(
      'DOES_NOT_FIT',
      `the user segment needs ${need} of GPU memory and the device ran out: ${oom.message}`,
    );
  }
  if (validation) {
    engine?.destroy();
    throw new GpuError('GPU_VALIDATION', `building the user segment failed validation: ${validation.message}`);
  }
  return engine!;
}

export abstract class UserEngineBase {
  readonly options: UserEngineOptions;
  protected readonly gpu: GpuContext;
  /** token ids [M] (i32) */
  protected readonly ids: GPUBuffer;
  /** the residual stream's gradient [M, D]: dL/dh1 goes up into it, the backward runs down it */
  protected readonly dRes: GPUBuffer;
  /** the variants of the full-size and the rank-r products */
  protected readonly mm: { variant: MatmulVariant; lowRankVariant: MatmulVariant };
  /** the variant of the row reductions: the norms and the head's cross-entropy */
  protected readonly row: { variant?: LayerNormVariant };
  protected readonly attention: { variant?: AttentionVariant };
  /** D: the hidden width */
  private readonly width: number;
  private readonly vocabSize: number;
  private readonly all: GPUBuffer[] = [];
  private readonly pairs: TrainedPair[] = [];
  // set by ready(), at the end of the subclass's constructor
  private out!: GPUBuffer;
  private forwardDispatches!: Dispatch[];
  private backwardDispatches!: Dispatch[];
  private optimizerDispatches!: Dispatch[];
  private hyper!: AdamwHyper;
  private head!: ChunkedHead;
  private stepCount = 0;
  private haveForward = false;
  private haveGrads = false;

  protected constructor(gpu: GpuContext, o: UserEngineOptions, model: { width: number; vocabSize: number }) {
    this.gpu = gpu;
    this.options = o;
    this.width = model.width;
    this.vocabSize = model.vocabSize;
    const v = o.variants ?? {};
    this.mm = { variant: v.matmul ?? DEFAULT_MATMUL_VARIANT, lowRankVariant: v.lowRank ?? DEFAULT_LOW_RANK_VARIANT };
    this.row = { variant: v.layernorm };
    this.attention = { variant: v.attention };
    const M = o.batch * o.seq;
    this.ids = this.keep(gpu.storage(M * 4, 'ids'));
    this.dRes = this.act(M * model.width, 'dRes');
  }

  /** The error for a caller's input the engine refuses (shapes, ids, call order, the model's tensors). */
  protected abstract inputError(message: string): Error;

  /** Throws unless the adapter belongs to this engine (its LoRA config, shapes, every pair of blocks [0, k)). */
  protected abstract checkAdapter(adapter: LoraAdapter): void;

  /** A buffer the engine owns (destroyed with it). */
  protected keep(b: GPUBuffer): GPUBuffer {
    this.all.push(b);
    return b;
  }

  /** A zeroed buffer of `floats` floats that the engine owns. */
  protected act(floats: number, label: string): GPUBuffer {
    return this.keep(this.gpu.storage(floats * 4, label));
  }

  /**
   * Uploads a frozen tensor of the model. `what` names the engine in the error; `floats`, when
   * given, is the length the config needs.
   */
  protected weight(weights: Map<string, Tensor>, name: string, what: string, floats?: number): GPUBuffer {
    const t = weights.get(name);
    if (!t) throw this.inputError(`${what}: the model has no tensor ${name}`);
    if (floats !== undefined && t.data.length !== floats)
      throw this.inputError(`${what}: tensor ${name} holds ${t.data.length} values, the config needs ${floats}`);
    return this.keep(this.gpu.storage(t.data, name));
  }

  /**
   * The linears of block `layer`, one per target in that order: each module's frozen weight and
   * bias (`frozen`, given the module path, in K and out N) and, where the LoRA config targets the
   * module, its pair, uploaded from the adapter (checkAdapter has passed) with zeroed gradients
   * and moments. Pairs are read, written and stepped in the order they are made here.
   */
  protected blockLinears<T extends LoraTarget>(
    c: ModelConfig,
    layer: number,
    targets: readonly T[],
    adapter: LoraAdapter,
    frozen: (name: string, target: T, K: number, N: number) => { W: GPUBuffer; b?: GPUBuffer },
  ): Record<T, LinearSlot> {
    const linears = {} as Record<T, LinearSlot>;
    for (const target of targets) {
      const [K, N] = loraTargetDims(c, target);
      const name = loraModulePath(layer, target);
      const slot: LinearSlot = { K, N, ...frozen(name, target, K, N) };
      if (this.options.lora.targets.includes(target)) slot.lora = this.loraPair(name, K, N, adapter);
      linears[target] = slot;
    }
    return linears;
  }

  private loraPair(name: string, K: number, N: number, adapter: LoraAdapter): LoraPairBuffers {
    const r = this.options.lora.r;
    const M = this.options.batch * this.options.seq;
    const pair = adapter.layers.get(name)!;
    const buffers: LoraPairBuffers = {
      A: this.keep(this.gpu.storage(pair.A.data, `${name}.A`)),
      B: this.keep(this.gpu.storage(pair.B.data, `${name}.B`)),
      dA: this.act(K * r, `${name}.dA`),
      dB: this.act(r * N, `${name}.dB`),
      mA: this.act(K * r, `${name}.mA`),
      vA: this.act(K * r, `${name}.vA`),
      mB: this.act(r * N, `${name}.mB`),
      vB: this.act(r * N, `${name}.vB`),
      xa: this.act(M * r, `${name}.xa`),
    };
    this.pairs.push({ name, K, N, buffers });
    return buffers;
  }

  /** The linears' dispatches with W in `weightLayout`, sharing one [M, r] scratch for the backward's s dy B^T. */
  protected linearOps(weightLayout: LinearWeightLayout): LinearOps {
    const { gpu, mm } = this;
    const M = this.options.batch * this.options.seq;
    const r = this.options.lora.r;
    const scale = loraScale(this.options.lora);
    const g = this.act(M * r, 'lora-g');
    const dims = (s: LinearSlot) => ({ M, K: s.K, N: s.N, r: s.lora ? r : 0, scale });
    const options: LoraLinearOptions = { ...mm, weightLayout };
    return {
      forward: (s, x, y) =>
        loraLinearForward(gpu, { x, W: s.W, b: s.b, y, A: s.lora?.A, B: s.lora?.B, xa: s.lora?.xa }, dims(s), options),
      backward: (s, x, dy, dx, accumulateDx) =>
        loraLinearBackward(
          gpu,
          { dy, x, W: s.W, dx, A: s.lora?.A, B: s.lora?.B, xa: s.lora?.xa, g, dA: s.lora?.dA, dB: s.lora?.dB },
          dims(s),
          { ...options, accumulateDx },
        ),
    };
  }

  /** The head's options: a chunk per step's rows at most, the engine's matmul and row (norm) variants, its split-K. */
  protected headOptions(): LmHeadOptions {
    const o = this.options;
    return {
      rows: o.batch * o.seq,
      chunkRows: o.headChunkRows,
      matmul: this.mm.variant,
      rowVariant: this.row.variant,
      splitK: o.variants?.headSplitK,
    };
  }

  /** Takes over what the subclass built and records the AdamW step of every pair. */
  protected ready(built: BuiltSegment): void {
    this.out = built.out;
    this.forwardDispatches = built.forward;
    this.backwardDispatches = built.backward;
    this.head = built.head;
    this.hyper = createAdamwHyper(this.gpu, this.options.adamw);
    const r = this.options.lora.r;
    const opt: Dispatch[] = [];
    for (const { K, N, buffers: q } of this.pairs) {
      opt.push(...adamw(this.gpu, { p: q.A, g: q.dA, m: q.mA, v: q.vA, hyper: this.hyper }, { n: K * r }));
      opt.push(...adamw(this.gpu, { p: q.B, g: q.dB, m: q.mB, v: q.vB, hyper: this.hyper }, { n: r * N }));
    }
    this.optimizerDispatches = opt;
  }

  /** Token ids of one batch, [batch * seq], each in [0, vocab). */
  private uploadIds(inputIds: Int32Array): void {
    const { batch, seq } = this.options;
    if (inputIds.length !== batch * seq)
      throw this.inputError(`the engine takes batches of ${batch} x ${seq} tokens, got ${inputIds.length}`);
    const V = this.vocabSize;
    for (let i = 0; i < inputIds.length; i++) {
      const t = inputIds[i];
      if (!(t >= 0 && t < V))
        throw this.inputError(`token id ${t} at position ${i} is outside the vocabulary [0, ${V})`);
    }
    this.gpu.write(this.ids, inputIds);
  }

  /** The step's dispatch lists, in order (for a benchmark's per-kernel profile; not for running). */
  stepDispatches(): { forward: readonly Dispatch[]; backward: readonly Dispatch[]; optimizer: readonly Dispatch[] } {
    return { forward: this.forwardDispatches, backward: this.backwardDispatches, optimizer: this.optimizerDispatches };
  }

  /** The head's dispatches for one full chunk of rows, in order (for a benchmark's profile and tests). */
  headChunkDispatches(): readonly Dispatch[] {
    return this.head.chunkDispatches();
  }

  /** Forward: returns h1 = x_k [batch*seq, D]; keeps what the backward needs on the GPU. */
  async forward(inputIds: Int32Array): Promise<Float32Array> {
    this.uploadIds(inputIds);
    this.gpu.run(this.forwardDispatches);
    this.haveForward = true;
    this.haveGrads = false;
    return this.gpu.readF32(this.out, this.options.batch * this.options.seq * this.width);
  }

  /** Backward of the last forward from dL/dh1; the LoRA gradients stay on the GPU. */
  backward(dh1: Float32Array): void {
    if (!this.haveForward) throw this.inputError('backward needs a forward first');
    const n = this.options.batch * this.options.seq * this.width;
    if (dh1.length !== n) throw this.inputError(`dL/dh1 has ${dh1.length} values, expected ${n}`);
    for (let i = 0; i < n; i++)
      if (!Number.isFinite(dh1[i])) throw this.inputError(`dL/dh1 holds a non-finite value at ${i}`);
    this.gpu.write(this.dRes, dh1);
    this.gpu.run(this.backwardDispatches);
    this.haveGrads = true;
  }

  /** One AdamW update of every LoRA matrix from the last backward's gradients. */
  step(lr = this.options.adamw.lr): void {
    if (!this.haveGrads) throw this.inputError('step needs a backward first');
    this.stepCount++;
    setAdamwStep(this.gpu, this.hyper, this.stepCount, lr);
    this.gpu.run(this.optimizerDispatches);
    this.haveGrads = false;
  }

  /**
   * Labels on the device: loss (mean over counted targets), count and dL/dhL [batch*seq, D] from
   * the last hidden state hL [batch*seq, D] and the targets [batch*seq] (IGNORE_INDEX not counted).
   * Frozen weights only: the adapter, the optimizer and the last forward's activations are untouched.
   */
  headStep(hL: Float32Array, targets: Int32Array): Promise<HeadStepResult> {
    return this.head.step(hL, targets);
  }

  /** Next-token logits [V] from one position's last hidden state [D] (generation). */
  headLogits(h: Float32Array): Promise<Float32Array> {
    return this.head.logitsOf(h);
  }

  /** Rows per head chunk on this adapter (see headChunkRows). */
  get headChunkRows(): number {
    return this.head.chunkRows;
  }

  /** Steps taken so far. */
  get steps(): number {
    return this.stepCount;
  }

  /** Waits for all submitted GPU work (for timing). */
  finish(): Promise<void> {
    return this.gpu.finish();
  }

  async readGrads(): Promise<LoraGrads> {
    const out: LoraGrads = new Map();
    const r = this.options.lora.r;
    for (const { name, K, N, buffers: q } of this.pairs) {
      out.set(name, { A: await this.gpu.readF32(q.dA, K * r), B: await this.gpu.readF32(q.dB, r * N) });
    }
    return out;
  }

  /** The current adapter (for upload at the end of a round). */
  async readAdapter(): Promise<LoraAdapter> {
    const layers: LoraAdapter['layers'] = new Map();
    const r = this.options.lora.r;
    for (const { name, K, N, buffers: q } of this.pairs) {
      layers.set(name, {
        A: { shape: [K, r], data: await this.gpu.readF32(q.A, K * r) },
        B: { shape: [r, N], data: await this.gpu.readF32(q.B, r * N) },
      });
    }
    return { config: { ...this.options.lora, targets: [...this.options.lora.targets] }, layers };
  }

  /** Replaces the adapter (a new round's global version) and resets the optimizer. */
  setAdapter(adapter: LoraAdapter): void {
    this.checkAdapter(adapter); // before any write: all or nothing
    const r = this.options.lora.r;
    for (const { name, K, N, buffers: q } of this.pairs) {
      const pair = adapter.layers.get(name)!;
      this.gpu.write(q.A, pair.A.data);
      this.gpu.write(q.B, pair.B.data);
      for (const [b, n] of [
        [q.mA, K * r],
        [q.vA, K * r],
        [q.mB, r * N],
        [q.vB, r * N],
      ] as const)
        this.gpu.write(b, new Float32Array(n));
    }
    this.stepCount = 0;
    this.haveForward = false;
    this.haveGrads = false;
  }

  destroy(): void {
    this.head?.destroy();
    for (const b of this.all) b.destroy();
    this.all.length = 0;
  }
}
