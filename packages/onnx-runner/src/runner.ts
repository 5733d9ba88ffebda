/**
 * SegmentRunner: onnxruntime-node sessions in a worker thread, for the edge and cloud servers.
 *
 * Why a worker: `InferenceSession.run()` blocks the thread it runs on for the whole forward or
 * backward (tens to hundreds of milliseconds), which would stall every WebSocket and HTTP
 * request of a server. Inputs and outputs cross the thread boundary by transfer (the
 * ArrayBuffers move, nothing is copied) unless the caller asks to keep an input.
 *
 * Provider: 'cpu', 'cuda' or 'webgpu'. onnxruntime-node throws when a provider cannot start
 * (CUDA needs its provider libraries and CUDA 12 + cuDNN 9 on the host); the runner then uses
 * 'cpu' for the rest of its life and says so once through `log` and in `provider`.
 *
 * Memory (figures: docs/benchmarks.md, "The edge's memory"). Each onnxruntime session holds its
 * own copy of its graph's weights, pre-packs the matmul weights once more, and keeps its own arena
 * of intermediates at the high-water mark of its runs.
 * - The memory pattern is off by default: with it, a session allocates from the second run of a
 *   shape on one block planned for the whole run on top of the arena chunks the first run left
 *   (+170 MiB at GPT-2 small shapes, no speed). Results are bitwise the same.
 * - blocksGraphs 'one' (the default on cpu): a BlocksSegment is one step graph, one session, so
 *   one arena and one copy of the weights serve forward and backward. Results are bitwise those
 *   of the two graphs, at the same speed. A GPU provider keeps 'two'.
 * - weights 'shared' (an option): segments hold their frozen weights once, here in the worker,
 *   and feed them to their graphs as inputs; onnxruntime-node wraps an input's typed array without
 *   copying it. The weights then cannot be pre-packed: the matmuls pack them on every run, which
 *   cost 10-20% of a step at 4 x 128 tokens, and the results move within the reference
 *   tolerances. Not for a GPU provider: inputs would cross to the device on every run.
 * - Weight pre-packing can be turned off alone (prepackWeights: false): lean and slow as above.
 * - The CPU arena can be turned off (cpuArena: false): glibc then keeps what the arena would
 *   have, and every run pays for fresh pages; measured no leaner and slower.
 */
import { CodedError } from '@splitllm/model';
import { Worker } from 'node:worker_threads';

export type ExecutionProvider = 'cpu' | 'cuda' | 'webgpu';
export const EXECUTION_PROVIDERS: readonly ExecutionProvider[] = ['cpu', 'cuda', 'webgpu'];

export type TensorData = Float32Array | Int32Array | BigInt64Array;

export interface RunnerTensor {
  data: TensorData;
  dims: readonly number[];
}

export interface RunnerOptions {
  provider: ExecutionProvider;
  /** intra-op threads of each session; 0 lets onnxruntime choose (one per core) */
  threads?: number;
  /** one line per notable event (start, provider fallback) */
  log?: (line: string) => void;
  /** onnxruntime's per-shape memory pattern (default false: it costs memory and buys no speed here) */
  memoryPattern?: boolean;
  /** onnxruntime's pre-packed copies of constant matmul weights (default true: off is leaner but slower) */
  prepackWeights?: boolean;
  /** onnxruntime's CPU memory arena for intermediates (default true, onnxruntime's own default) */
  cpuArena?: boolean;
  /**
   * Where segments keep their frozen weights: 'per-session' (default): initializers of each graph,
   * so each session holds (and pre-packs) its own copy; 'shared': one copy in the worker, fed to
   * every graph of the segment as inputs (leaner, slower: see the header).
   */
  weights?: WeightPlacement;
  /**
   * How a BlocksSegment's forward and backward are loaded: 'one' step graph (default on cpu), one
   * session whose arena serves both (buildBlocksStepGraph), or 'two' graphs (default on a GPU
   * provider), each a session with its own copy of the weights and its own arena.
   */
  blocksGraphs?: 'two' | 'one';
}

export type WeightPlacement = 'per-session' | 'shared';
export const WEIGHT_PLACEMENTS: readonly WeightPlacement[] = ['per-session', 'shared'];

/** A set of frozen weights held once in the worker (SegmentRunner.addWeights). */
export interface WeightSet {
  readonly id: string;
  /** the tensor names it holds */
  readonly names: ReadonlySet<string>;
}

export interface LoadedGraph {
  inputs: string[];
  outputs: string[];
}

export type RunnerErrorCode =
  | 'BAD_PROVIDER'
  | 'BAD_THREADS'
  | 'BAD_WEIGHTS'
  | 'BAD_BLOCKS_GRAPHS'
  | 'ONNX_UNKNOWN_WEIGHTS'
  | 'ONNX_WEIGHTS_IN_USE'
  | 'ONNX_MISSING_INPUT'
  | 'ONNX_UNKNOWN_GRAPH'
  | 'ONNX_UNKNOWN_OUTPUT'
  | 'RUNNER_CLOSED'
  | 'RUNNER_DIED'
  | 'ONNX_LOAD_FAILED'
  | 'ONNX_RUN_FAILED'
  | 'ONNX_RUNNER_ERROR'
  /** an activation that does not fit the segment: its length, or a sequence past the model's positions */
  | 'ONNX_BAD_SHAPE';

export class RunnerError extends CodedError<RunnerErrorCode> {}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

function typeOf(data: TensorData): 'float32' | 'int32' | 'int64' {
  if (data instanceof Float32Array) return 'float32';
  if (data instanceof Int32Array) return 'int32';
  return 'int64';
}

export class SegmentRunner {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private dead: RunnerError | undefined;
  private actualProvider: ExecutionProvider;
  private readonly graphs = new Map<string, LoadedGraph>();
  private weightSerial = 0;

  private constructor(
    private readonly worker: Worker,
    readonly requestedProvider: ExecutionProvider,
    readonly threads: number,
    /** where segments on this runner keep their frozen weights */
    readonly weights: WeightPlacement,
    /** how many graphs (sessions) a BlocksSegment on this runner loads */
    readonly blocksGraphs: 'two' | 'one',
    private readonly log: (line: string) => void,
  ) {
    this.actualProvider = requestedProvider;
    worker.on(
      'message',
      (msg: { id: number; ok: boolean; result?: unknown; error?: { code: string; message: string } }) => {
        const p = this.pending.get(msg.id);
        if (!p) return;
        this.pending.delete(msg.id);
        if (msg.ok) p.resolve(msg.result);
        else p.reject(new RunnerError(msg.error!.code as RunnerErrorCode, msg.error!.message));
      },
    );
    const die = (e: RunnerError) => {
      this.dead ??= e;
      for (const p of this.pending.values()) p.reject(this.dead);
      this.pending.clear();
    };
    worker.on('error', (e) => die(new RunnerError('RUNNER_DIED', `onnx worker thread failed: ${e.message}`)));
    worker.on('exit', (code) => die(new RunnerError('RUNNER_DIED', `onnx worker thread exited (code ${code})`)));
  }

  static async start(opts: RunnerOptions): Promise<SegmentRunner> {
    if (!EXECUTION_PROVIDERS.includes(opts.provider)) {
      throw new RunnerError(
        'BAD_PROVIDER',
        `unknown execution provider '${opts.provider}' (expected ${EXECUTION_PROVIDERS.join(', ')})`,
      );
    }
    const threads = opts.threads ?? 0;
    if (!Number.isInteger(threads) || threads < 0)
      throw new RunnerError('BAD_THREADS', `threads must be an integer >= 0, got ${threads}`);
    const weights = opts.weights ?? 'per-session';
    if (!WEIGHT_PLACEMENTS.includes(weights))
      throw new RunnerError(
        'BAD_WEIGHTS',
        `unknown weight placement '${weights}' (expected ${WEIGHT_PLACEMENTS.join(', ')})`,
      );
    if (opts.blocksGraphs !== undefined && opts.blocksGraphs !== 'one' && opts.blocksGraphs !== 'two')
      throw new RunnerError('BAD_BLOCKS_GRAPHS', `blocksGraphs must be 'one' or 'two', got '${opts.blocksGraphs}'`);
    const memoryPattern = opts.memoryPattern ?? false;
    const prepackWeights = opts.prepackWeights ?? true;
    const cpuArena = opts.cpuArena ?? true;
    const worker = new Worker(new URL('./worker.mjs', import.meta.url));
    // one step graph on cpu (one arena, one copy of the weights fewer); a GPU provider as it was
    const blocksGraphs = opts.blocksGraphs ?? (opts.provider === 'cpu' ? 'one' : 'two');
    const runner = new SegmentRunner(worker, opts.provider, threads, weights, blocksGraphs, opts.log ?? (() => {}));
    const init = { op: 'init', provider: opts.provider, threads, memoryPattern, prepackWeights, cpuArena };
    const info = (await runner.call(init)) as { backends: string[] };
    runner.log(
      `onnx runner: provider ${opts.provider} requested (onnxruntime-node backends: ${info.backends.join(', ')}), ` +
        `intra-op threads ${threads || 'auto'}, memory pattern ${memoryPattern ? 'on' : 'off'}, ` +
        `weight pre-packing ${prepackWeights ? 'on' : 'off'}, cpu arena ${cpuArena ? 'on' : 'off'}, ` +
        `weights ${weights}, blocks in ${blocksGraphs} graph${blocksGraphs === 'one' ? '' : 's'}`,
    );
    return runner;
  }

  /** The provider sessions actually run on (differs from the requested one after a fallback). */
  get provider(): ExecutionProvider {
    return this.actualProvider;
  }

  private call(msg: Record<string, unknown>, transfer: ArrayBuffer[] = []): Promise<unknown> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      try {
        this.worker.postMessage({ id, ...msg }, transfer);
      } catch (e) {
        // e.g. a buffer in `transfer` that an earlier call detached: the worker never hears of it
        this.pending.delete(id);
        reject(new RunnerError('ONNX_RUNNER_ERROR', `onnx worker: cannot send '${msg.op}': ${(e as Error).message}`));
      }
    });
  }

  /**
   * Copies frozen weights into the worker, once, as a set that graphs loaded with it take as
   * inputs (`load(name, model, { weights })`). The caller's arrays stay its own. Tensors travel
   * one at a time (a copy, transferred), so the copy in flight is at most one tensor.
   */
  async addWeights(
    tensors: Iterable<readonly [string, { data: Float32Array; dims: readonly number[] }]>,
  ): Promise<WeightSet> {
    const id = `weights#${++this.weightSerial}`;
    const names = new Set<string>();
    for (const [name, t] of tensors) {
      if (names.has(name)) throw new RunnerError('BAD_WEIGHTS', `weight '${name}' is given twice`);
      const n = t.dims.reduce((a, b) => a * b, 1);
      if (n !== t.data.length)
        throw new RunnerError(
          'BAD_WEIGHTS',
          `weight '${name}': dims [${t.dims.join(', ')}] need ${n} values, the array has ${t.data.length}`,
        );
      const data = t.data.slice();
      await this.call({ op: 'weights', set: id, tensors: [{ name, data, dims: [...t.dims] }] }, [data.buffer]);
      names.add(name);
    }
    return { id, names };
  }

  /** Frees a weight set; refused (ONNX_WEIGHTS_IN_USE) while a loaded graph still takes it. */
  async dropWeights(set: WeightSet): Promise<void> {
    await this.call({ op: 'dropWeights', set: set.id });
  }

  /**
   * Creates (or replaces) the session `name` from ONNX bytes; the bytes are transferred. With
   * `weights`, the graph's inputs of that set's names are fed from it and are not the caller's to
   * feed (they are left out of `inputs`).
   */
  async load(name: string, model: Uint8Array, opts: { weights?: WeightSet } = {}): Promise<LoadedGraph> {
    if (model.byteLength === 0)
      throw new RunnerError('ONNX_LOAD_FAILED', `graph '${name}': the model has no bytes (moved by an earlier load?)`);
    const owned =
      model.byteOffset === 0 && model.byteLength === model.buffer.byteLength && model.buffer instanceof ArrayBuffer;
    const bytes = owned ? model : model.slice();
    const msg = { op: 'load', name, model: bytes, weights: opts.weights?.id };
    const r = (await this.call(msg, [bytes.buffer as ArrayBuffer])) as LoadedGraph & {
      provider: ExecutionProvider;
      fellBack?: string;
    };
    if (r.fellBack) this.log(`onnx runner: ${r.fellBack}`);
    this.actualProvider = r.provider;
    const g = { inputs: r.inputs, outputs: r.outputs };
    this.graphs.set(name, g);
    return g;
  }

  graphNames(): string[] {
    return [...this.graphs.keys()];
  }

  graph(name: string): LoadedGraph | undefined {
    return this.graphs.get(name);
  }

  /**
   * Runs graph `name`. The ArrayBuffers behind the feeds are transferred to the worker and are
   * unusable afterwards, except for the feeds named in `keep` (copied instead).
   */
  async run(
    name: string,
    feeds: Record<string, RunnerTensor>,
    opts: { keep?: readonly string[]; fetch?: readonly string[] } = {},
  ): Promise<Record<string, RunnerTensor>> {
    const g = this.graphs.get(name);
    if (!g) throw new RunnerError('ONNX_UNKNOWN_GRAPH', `no graph named '${name}' is loaded`);
    const missing = g.inputs.filter((i) => !(i in feeds));
    if (missing.length)
      throw new RunnerError('ONNX_MISSING_INPUT', `graph '${name}' needs inputs ${missing.join(', ')}`);
    const keep = new Set(opts.keep ?? []);
    const msgFeeds: Record<string, { type: string; data: TensorData; dims: readonly number[] }> = {};
    const transfer = new Set<ArrayBuffer>();
    for (const [k, t] of Object.entries(feeds)) {
      if (!g.inputs.includes(k)) continue;
      let data = t.data;
      if (keep.has(k) || !(data.buffer instanceof ArrayBuffer)) data = data.slice() as TensorData;
      // a view into a larger buffer would drag (and detach) the whole buffer: send just the view
      else if (data.byteOffset !== 0 || data.byteLength !== data.buffer.byteLength) data = data.slice() as TensorData;
      transfer.add(data.buffer as ArrayBuffer);
      msgFeeds[k] = { type: typeOf(data), data, dims: t.dims };
    }
    const unknown = (opts.fetch ?? []).filter((o) => !g.outputs.includes(o));
    if (unknown.length)
      throw new RunnerError('ONNX_UNKNOWN_OUTPUT', `graph '${name}' has no outputs ${unknown.join(', ')}`);
    const msg = { op: 'run', name, feeds: msgFeeds, fetch: opts.fetch };
    return (await this.call(msg, [...transfer])) as Record<string, RunnerTensor>;
  }

  async unload(name: string): Promise<void> {
    this.graphs.delete(name);
    await this.call({ op: 'unload', name });
  }

  /** process.memoryUsage() as seen from the worker (the whole process). */
  async memory(): Promise<NodeJS.MemoryUsage> {
    return (await this.call({ op: 'memory' })) as NodeJS.MemoryUsage;
  }

  async close(): Promise<void> {
    this.dead ??= new RunnerError('RUNNER_CLOSED', 'the onnx runner was closed');
    await this.worker.terminate();
  }
}
