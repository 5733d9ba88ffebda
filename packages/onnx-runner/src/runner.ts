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
 * Memory: onnxruntime's memory pattern is off by default. With it on, a session allocates, from
 * the second run of a shape on, one block planned for the whole run on top of the arena chunks
 * the first run left: at GPT-2 small shapes the edge then peaked ~170 MiB higher, for no
 * measurable speed (docs/benchmarks.md, "The edge's memory"). The results are bitwise the same
 * either way (only where tensors live changes). Weight pre-packing stays on by default: turning
 * it off drops each session's packed copy of the matmul weights, but the matmuls then take
 * another kernel path (results differ in the last bits) and ran 10-20% slower.
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
}

export interface LoadedGraph {
  inputs: string[];
  outputs: string[];
}

export type RunnerErrorCode =
  | 'BAD_PROVIDER'
  | 'BAD_THREADS'
  | 'ONNX_MISSING_INPUT'
  | 'ONNX_UNKNOWN_GRAPH'
  | 'RUNNER_CLOSED'
  | 'RUNNER_DIED'
  | 'ONNX_LOAD_FAILED'
  | 'ONNX_RUN_FAILED'
  | 'ONNX_RUNNER_ERROR';

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

  private constructor(
    private readonly worker: Worker,
    readonly requestedProvider: ExecutionProvider,
    readonly threads: number,
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
    const memoryPattern = opts.memoryPattern ?? false;
    const prepackWeights = opts.prepackWeights ?? true;
    const worker = new Worker(new URL('./worker.mjs', import.meta.url));
    const runner = new SegmentRunner(worker, opts.provider, threads, opts.log ?? (() => {}));
    const init = { op: 'init', provider: opts.provider, threads, memoryPattern, prepackWeights };
    const info = (await runner.call(init)) as { backends: string[] };
    runner.log(
      `onnx runner: provider ${opts.provider} requested (onnxruntime-node backends: ${info.backends.join(', ')}), ` +
        `intra-op threads ${threads || 'auto'}, memory pattern ${memoryPattern ? 'on' : 'off'}, ` +
        `weight pre-packing ${prepackWeights ? 'on' : 'off'}`,
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
      this.worker.postMessage({ id, ...msg }, transfer);
    });
  }

  /** Creates (or replaces) the session `name` from ONNX bytes; the bytes are transferred. */
  async load(name: string, model: Uint8Array): Promise<LoadedGraph> {
    const owned =
      model.byteOffset === 0 && model.byteLength === model.buffer.byteLength && model.buffer instanceof ArrayBuffer;
    const bytes = owned ? model : model.slice();
    const r = (await this.call({ op: 'load', name, model: bytes }, [bytes.buffer as ArrayBuffer])) as LoadedGraph & {
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
    opts: { keep?: readonly string[] } = {},
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
    return (await this.call({ op: 'run', name, feeds: msgFeeds }, [...transfer])) as Record<string, RunnerTensor>;
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
