/**
 * The 'wasm' engine, for either model family: the embedding (frozen) in
 * TypeScript, blocks [0, k) forward and backward as the project's own ONNX graphs
 * (blocksForwardGraph / blocksBackwardGraph of family-graphs.ts, the ones the edge runs with
 * onnxruntime-node) run by onnxruntime-web's wasm execution provider, and AdamW on the LoRA
 * pairs in TypeScript (LoraTrainState, the same optimizer as the other tiers). For browsers
 * without WebGPU, and for software WebGPU adapters, where it beats WGSL by a wide margin.
 * With the labels on the device it runs the head too (the final norm, the LM head, the cross-entropy
 * and its backward to dL/dhL; next-token logits for generation) as @splitllm/onnx's head graphs
 * (headStepGraph, one run per chunk of rows; headLogitsGraph).
 *
 * Browser-safe: no Node API. The import is 'onnxruntime-web/wasm' (wasm EP only, no WebGPU/
 * WebGL code): in Node and in a bundler both it resolves to dist/ort.wasm.bundle.min.mjs, whose
 * glue module is embedded. Where the .wasm binary is fetched from is `wasmPaths` (see
 * OnnxWasmOptions); onnxruntime's runtime is one per JavaScript realm, so its settings are fixed
 * by the first trainer created in that realm.
 */
import * as ort from 'onnxruntime-web/wasm';
import {
  blocksBackwardGraph,
  blocksForwardGraph,
  headLogitsGraph,
  headStepGraph,
  headChunkRows,
  loraGradsFromGraph,
  loraGraphFeeds,
  SAVED_PREFIX,
} from '@splitllm/onnx';
import {
  type AnyModel,
  embedForward,
  IGNORE_INDEX,
  type ModelConfig,
  modelDims,
  type LoraAdapter,
  type TokenBatch,
} from '@splitllm/model';
import { LoraTrainState } from '@splitllm/federation';
import {
  checkBatch,
  checkDh1,
  checkHeadInputs,
  checkLastHidden,
  checkTrainerInputs,
  checkUserAdapter,
  copyUserAdapter,
  destroyedError,
  type HeadStepResult,
  type UserTrainer,
  type UserTrainerOptions,
} from '../trainer';

export interface OnnxWasmOptions {
  /**
   * Sets ort.env.wasm.wasmPaths: a URL prefix ending in '/' under which the page serves
   * onnxruntime-web's dist files `ort-wasm-simd-threaded.mjs` AND `ort-wasm-simd-threaded.wasm`
   * (with a prefix, onnxruntime imports the glue .mjs from there instead of its embedded copy).
   * Left out, onnxruntime finds the binary itself with `new URL('ort-wasm-simd-threaded.wasm',
   * import.meta.url)`: in Node that is its own dist folder; in a Vite build that expression
   * becomes an emitted asset on the page's origin (only the .wasm is needed then; the Vite dev
   * server's dependency pre-bundling breaks it, so set a prefix there or exclude
   * onnxruntime-web from optimizeDeps).
   */
  wasmPaths?: string;
  /**
   * wasm threads (ort.env.wasm.numThreads); default 1. More than 1 needs SharedArrayBuffer (a
   * cross-origin-isolated page: COOP/COEP headers) and fails in Node ("no available backend
   * found ... fetch failed" with onnxruntime-web 1.30): Node has onnxruntime-node for that.
   */
  numThreads?: number;
}

/**
 * Keep the intermediates (true) rather than recompute them in the backward (false): faster, for
 * memory the user tier can spare. Measured in Node on the shipped model (D 128, 4 heads), batch
 * 4 x 128, one thread, best of 8 steps (forward + backward + AdamW): 37 ms kept vs 47 ms
 * recomputed at k=2, 57 vs 73 ms at k=3; a tie at small shapes (2 x 32). Keeping skips the
 * backward's recompute of the forward's matmuls and attention; what it costs is copying the
 * saved tensors out of the wasm heap and back in (memcpy, cheap next to the matmuls) and
 * holding them from forward to backward: per block ~(10 D + nHead T) floats per token, e.g.
 * GPT-2 124M, k=3, batch 4 x 128: ~57 MB (twice that for a moment, while the backward's inputs
 * are copied in). The user holds one step's activations at a time, so a browser can afford it.
 */
const SAVE_INTERMEDIATES = true;

/** onnxruntime-web's runtime is initialized once per realm: what it was started with. */
let runtime: { wasmPaths: string | undefined; numThreads: number } | undefined;

function configureRuntime(w: OnnxWasmOptions): { wasmPaths: string | undefined; numThreads: number } {
  if (w.numThreads !== undefined && !(Number.isInteger(w.numThreads) && w.numThreads >= 1)) {
    throw new Error(`wasm engine: numThreads must be a positive integer, got ${w.numThreads}`);
  }
  if (runtime) {
    // settings only take effect when the runtime starts; refuse to ignore one silently
    if (w.numThreads !== undefined && w.numThreads !== runtime.numThreads) {
      throw new Error(
        `wasm engine: onnxruntime-web already runs with ${runtime.numThreads} thread(s) in this page/worker; ` +
          `it cannot switch to ${w.numThreads}`,
      );
    }
    if (w.wasmPaths !== undefined && w.wasmPaths !== runtime.wasmPaths) {
      throw new Error(
        `wasm engine: onnxruntime-web was already started with wasmPaths ${JSON.stringify(runtime.wasmPaths)}; ` +
          `it cannot switch to ${JSON.stringify(w.wasmPaths)}`,
      );
    }
    return runtime;
  }
  if (w.wasmPaths !== undefined) ort.env.wasm.wasmPaths = w.wasmPaths;
  ort.env.wasm.numThreads = w.numThreads ?? 1;
  // the model is run in this thread (a user trainer lives in a Web Worker already)
  ort.env.wasm.proxy = false;
  return { wasmPaths: w.wasmPaths, numThreads: ort.env.wasm.numThreads };
}

const SESSION_OPTIONS: ort.InferenceSession.SessionOptions = {
  executionProviders: ['wasm'],
  graphOptimizationLevel: 'all',
  // warnings (e.g. about initializers a graph does not read) are not the user's business
  logSeverityLevel: 3,
};

async function createSession(what: string, bytes: Uint8Array): Promise<ort.InferenceSession> {
  try {
    return await ort.InferenceSession.create(bytes, SESSION_OPTIONS);
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    throw new Error(`wasm engine: onnxruntime-web could not load the ${what} graph: ${why}`, { cause: e });
  }
}

function f32(out: ort.InferenceSession.OnnxValueMapType, name: string): Float32Array {
  const t = out[name];
  if (!t) throw new Error(`wasm engine: the graph output lacks ${name}`);
  const data = t.data;
  if (!(data instanceof Float32Array)) {
    throw new Error(`wasm engine: graph output ${name} is ${t.type}, expected float32`);
  }
  return data;
}

interface Pending {
  /** the embedding output, the graphs' x */
  x: ort.Tensor;
  /** the forward's saved.* outputs, fed back to the backward */
  saved: Record<string, ort.Tensor>;
}

export class OnnxWasmUserTrainer implements UserTrainer {
  readonly kind = 'wasm' as const;
  private train: LoraTrainState;
  private pending: Pending | undefined;
  private destroyed = false;
  /** the head graphs' sessions (labels on the device), loaded on first use */
  private readonly head: { step?: Promise<ort.InferenceSession>; logits?: Promise<ort.InferenceSession> } = {};

  private constructor(
    private readonly model: AnyModel,
    adapter: LoraAdapter,
    private readonly options: UserTrainerOptions,
    private readonly forwardSession: ort.InferenceSession,
    private readonly backwardSession: ort.InferenceSession,
    readonly description: string,
  ) {
    this.train = new LoraTrainState(copyUserAdapter(adapter, options), options.adamw);
  }

  /**
   * Builds the two graphs of blocks [0, k) (each carries a copy of the blocks' frozen weights as
   * initializers) and loads them into onnxruntime-web's wasm EP. The first trainer of a page or
   * worker starts the runtime with `wasm` (see OnnxWasmOptions); a later one asking for other
   * settings gets an Error. Throws what onnxruntime throws when the runtime cannot start (e.g.
   * the .wasm file is not served where wasmPaths says).
   */
  static async create(
    model: AnyModel,
    adapter: LoraAdapter,
    o: UserTrainerOptions,
    wasm: OnnxWasmOptions = {},
  ): Promise<OnnxWasmUserTrainer> {
    checkTrainerInputs(model, adapter, o);
    const settings = configureRuntime(wasm);
    const opts = { saveIntermediates: SAVE_INTERMEDIATES };
    const lora = { ...o.lora, targets: [...o.lora.targets] };
    // built and loaded one after the other, so only one serialized graph is alive at a time
    const forward = await createSession('forward', blocksForwardGraph(model, lora, 0, o.plan.k, opts).model);
    let backward: ort.InferenceSession;
    try {
      backward = await createSession('backward', blocksBackwardGraph(model, lora, 0, o.plan.k, opts).model);
    } catch (e) {
      void forward.release().catch(() => undefined);
      throw e;
    }
    runtime = settings;
    const threads = ort.env.wasm.numThreads ?? settings.numThreads;
    const description =
      `wasm (onnxruntime-web ${ort.env.versions.web ?? ''} wasm EP, ${threads} thread${threads === 1 ? '' : 's'}, ` +
      `intermediates ${SAVE_INTERMEDIATES ? 'kept' : 'recomputed'})`;
    return new OnnxWasmUserTrainer(model, adapter, o, forward, backward, description);
  }

  private get config(): ModelConfig {
    return this.model.config;
  }

  private alive(): void {
    if (this.destroyed) throw destroyedError();
  }

  /** The LoRA inputs of blocks [0, k): the live adapter's arrays (onnxruntime-web copies them into its heap at run). */
  private loraFeeds(): Record<string, ort.Tensor> {
    const feeds: Record<string, ort.Tensor> = {};
    const { lora, plan } = this.options;
    for (const [name, t] of loraGraphFeeds(this.config, lora, this.train.adapter, 0, plan.k)) {
      feeds[name] = new ort.Tensor('float32', t.data, t.dims);
    }
    return feeds;
  }

  async forward(batch: TokenBatch): Promise<Float32Array> {
    this.alive();
    checkBatch(this.config, this.options, batch);
    this.pending = undefined;
    const { batch: B, seq: T } = this.options;
    const h0 = embedForward(this.model, batch.inputIds, B, T);
    const x = new ort.Tensor('float32', h0, [B, T, modelDims(this.config).width]);
    const out = await this.forwardSession.run({ x, ...this.loraFeeds() });
    this.alive();
    const saved: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries(out)) if (name.startsWith(SAVED_PREFIX)) saved[name] = t;
    this.pending = { x, saved };
    return f32(out, 'y');
  }

  async backwardAndStep(dh1: Float32Array, lr?: number): Promise<void> {
    this.alive();
    const p = this.pending;
    if (!p) throw new Error('user trainer: backwardAndStep needs a forward first (one backward per forward)');
    checkDh1(this.config, this.options, dh1);
    const { batch: B, seq: T, plan, lora } = this.options;
    const dy = new ort.Tensor('float32', dh1, [B, T, modelDims(this.config).width]);
    // dx is computed by the graph but not read: the embedding is frozen
    const out = await this.backwardSession.run({ x: p.x, dy, ...p.saved, ...this.loraFeeds() });
    this.alive();
    // a setAdapter or a new forward while this ran: its activations are stale, drop the step
    if (this.pending !== p) throw new Error('user trainer: the adapter or the batch changed while the backward ran');
    this.pending = undefined;
    const grads = loraGradsFromGraph(this.config, lora, 0, plan.k, (name) => f32(out, name));
    this.train.step(grads, lr);
  }

  /**
   * The head step on the last hidden state hL the cloud sent back (labels on the device): the
   * step graph (buildHeadStepGraph) on each chunk of headChunkRows(V, rows) rows, so that no more
   * than one chunk's logits exist; the count of counted targets is taken from the targets here
   * and fed to every chunk, and the chunks' per-row losses are summed in float64, as the reference
   * sums its rows. A chunk without a counted target is not run: its rows' loss and dh are exactly
   * 0 in the graph as in the reference, which is what the zero-filled dh already holds.
   */
  async headStep(hL: Float32Array, targets: Int32Array): Promise<HeadStepResult> {
    this.alive();
    checkHeadInputs(this.config, this.options, hL, targets);
    const D = modelDims(this.config).width;
    const rows = this.options.batch * this.options.seq;
    let count = 0;
    for (let i = 0; i < rows; i++) if (targets[i] !== IGNORE_INDEX) count++;
    const dh = new Float32Array(rows * D);
    if (count === 0) return { loss: 0, count, dh };
    const session = await this.headSession('step');
    this.alive();
    const countT = new ort.Tensor('float32', Float32Array.of(count), []);
    const chunk = headChunkRows(this.config.vocabSize, rows);
    let total = 0;
    for (let r0 = 0; r0 < rows; r0 += chunk) {
      const r1 = Math.min(rows, r0 + chunk);
      let counted = false;
      for (let i = r0; i < r1 && !counted; i++) counted = targets[i] !== IGNORE_INDEX;
      if (!counted) continue;
      // views, not copies: onnxruntime-web copies each input into its heap at run
      const out = await session.run({
        h: new ort.Tensor('float32', hL.subarray(r0 * D, r1 * D), [r1 - r0, D]),
        targets: new ort.Tensor('int32', targets.subarray(r0, r1), [r1 - r0]),
        count: countT,
      });
      this.alive();
      const rowLoss = f32(out, 'row_loss');
      for (let i = 0; i < rowLoss.length; i++) total += rowLoss[i];
      dh.set(f32(out, 'dh'), r0 * D);
    }
    return { loss: total / count, count, dh };
  }

  /** Next-token logits [V] from one last hidden state [D]: the logits graph on one row. */
  async headLogits(h: Float32Array): Promise<Float32Array> {
    this.alive();
    checkLastHidden(this.config, h);
    const session = await this.headSession('logits');
    this.alive();
    const out = await session.run({ h: new ort.Tensor('float32', h, [1, modelDims(this.config).width]) });
    this.alive();
    return f32(out, 'logits');
  }

  /**
   * The head graphs' sessions, loaded on first use: a run with the labels in the cloud never
   * needs them, and each holds its own copy of wte (V x D floats) in the wasm heap. A failed load
   * is not kept, so a later call tries again.
   */
  private headSession(which: 'step' | 'logits'): Promise<ort.InferenceSession> {
    let p = this.head[which];
    if (!p) {
      const build = which === 'step' ? headStepGraph : headLogitsGraph;
      // one that is still loading at destroy() is released by destroy() once it has loaded
      p = createSession(`head ${which}`, build(this.model).model).catch((e: unknown) => {
        if (this.head[which] === p) this.head[which] = undefined;
        throw e;
      });
      this.head[which] = p;
    }
    return p;
  }

  async readAdapter(): Promise<LoraAdapter> {
    this.alive();
    return copyUserAdapter(this.train.adapter, this.options);
  }

  async setAdapter(adapter: LoraAdapter): Promise<void> {
    this.alive();
    checkUserAdapter(this.config, this.options, adapter);
    this.train = new LoraTrainState(copyUserAdapter(adapter, this.options), this.options.adamw);
    this.pending = undefined;
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.pending = undefined;
    // release() is async; nothing waits for it (a run still in flight finishes first)
    void this.forwardSession.release().catch(() => undefined);
    void this.backwardSession.release().catch(() => undefined);
    for (const p of [this.head.step, this.head.logits]) {
      void p?.then((s) => s.release()).catch(() => undefined);
    }
  }
}
