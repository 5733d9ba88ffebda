/**
 * What the LLaMA family costs each tier, at SmolLM2-135M and Llama-3.2-1B shapes (issue 17, part 7),
 * printed as markdown (asserts nothing; the figures go to docs/benchmarks.md, "LLaMA family: size
 * and speed per tier"):
 *  1. what a tab downloads and holds for k = 1, 2, 4 (m from defaultSplitPlan): the user segment's
 *     frozen weights (segmentParameterShapes: embedding, blocks [0, k), final norm, head) in f32 and
 *     f16, the LoRA adapter (DEFAULT_LLAMA_LORA_CONFIG: q_proj, v_proj, r 8) and its AdamW state;
 *  2. the edge's and the cloud's weight bytes for the default plan, with peak RSS and ms per step
 *     MEASURED on onnxruntime-node (cpu, as the servers run it: SegmentRunner, one step graph,
 *     intermediates kept) for ONE block (forward + backward) and for the head (final norm + head +
 *     loss: the cloud's with labels in the cloud, the chunked one the tab runs with labels on the
 *     device), each in its own child process, then SCALED to a tier by its number of blocks (from
 *     one and two blocks: the second's increase is the per-block cost). Blocks and the cloud's head are
 *     also measured "lean" (--lean-memory: frozen weights held once, fed as graph inputs). At the
 *     135M shape the edge and the cloud (its tail graph) are also built and run whole, which is cheap
 *     there and checks the scaling (--skip-whole leaves them out);
 *  3. the tab's step on the TypeScript reference engine at the 135M shape, 1 x 64: one block, and the
 *     head with labels on the device (llamaHeadLossStep); the WGSL and wasm engines do not run LLaMA yet.
 *
 * Weights are a deterministic filler (a table of N(0, 0.02) values tiled over each tensor, norms 1):
 * sizes and times do not depend on the values, and the 1B model (5 GB of f32) is never built whole,
 * only the tensors a measurement needs.
 *
 * Peak RSS is /proc/self/status VmHWM of the child (peakRssBytes), which includes node, tsx and
 * onnxruntime (the "runtime" child: the runner started, nothing loaded) and the build of the graph.
 * A tier's estimate is one block's figure + (blocks - 1) x (two blocks' - one block's) [+ the head's
 * figure - the runtime's].
 *
 *   pnpm exec tsx packages/cli/scripts/llama-sizes.ts [--iters 5] [--threads N] [--skip-whole]
 *
 * (defaults: --iters 5 steps after one warm-up, --threads os.availableParallelism()).
 */
import {
  CodedError,
  DEFAULT_LLAMA_LORA_CONFIG,
  defaultSplitPlan,
  initLlamaLoraAdapter,
  type LlamaConfig,
  type LlamaLoraAdapter,
  type LlamaModel,
  llamaBlocksBackward,
  llamaBlocksForward,
  llamaHeadLossStep,
  llamaHeadWeightName,
  llamaLoraParameterCount,
  llamaParameterShapes,
  numel,
  LLAMA_32_1B_CONFIG,
  SMOLLM2_135M_CONFIG,
  Rng,
  segmentParameterShapes,
  type Tensor,
  type Tier,
} from '@splitllm/model';
import { peakRssBytes, type RunnerTensor, SegmentRunner } from '@splitllm/onnx-runner';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { availableParallelism, cpus, totalmem } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import {
  headChunkRows,
  llamaBlocksStepGraph,
  llamaHeadStepGraph,
  llamaLoraGraphFeeds,
  llamaTailGraph,
  type SegmentGraph,
} from '@splitllm/onnx';
import { REPO_ROOT } from '../src/io';

const { values: opt } = parseArgs({
  options: {
    iters: { type: 'string', default: '5' },
    threads: { type: 'string', default: String(availableParallelism()) },
    'skip-whole': { type: 'boolean', default: false },
    child: { type: 'string' },
  },
});

class SizesError extends CodedError<'BAD_OPTION' | 'CHILD_FAILED'> {}

function positiveInt(name: 'iters' | 'threads'): number {
  const v = Number(opt[name]);
  if (!Number.isInteger(v) || v < 1)
    throw new SizesError('BAD_OPTION', `llama-sizes: --${name} must be a positive integer, got "${opt[name]}"`);
  return v;
}
const ITERS = positiveInt('iters');
const THREADS = positiveInt('threads');

// ---------------------------------------------------------------------------------------------
// the shapes: published config.json files (as in packages/model/test/llama-config.test.ts)

const SHAPES: Record<string, LlamaConfig> = {
  'SmolLM2-135M': SMOLLM2_135M_CONFIG,
  'Llama-3.2-1B': LLAMA_32_1B_CONFIG,
};
type ShapeName = keyof typeof SHAPES;

const LORA = DEFAULT_LLAMA_LORA_CONFIG;
/** the servers' batch (B x T) for the onnxruntime measurements, and the tab's for the reference engine */
const SERVER_BATCH = { B: 1, T: 128 };
const TAB_BATCH = { B: 1, T: 64 };
const K_VALUES = [1, 2, 4];

const MiB = 1024 * 1024;
const mib = (bytes: number) => (bytes < MiB ? `${(bytes / 1024).toFixed(0)} KiB` : `${(bytes / MiB).toFixed(1)} MiB`);
const millions = (n: number) => `${(n / 1e6).toFixed(2)} M`;

// ---------------------------------------------------------------------------------------------
// weights: a deterministic filler, only the tensors asked for

const FILL = new Rng(17).fillNormal(new Float32Array(65521), 0.02); // a prime length: rows do not repeat alike

function fillerModel(config: LlamaConfig, wanted: (name: string) => boolean): LlamaModel {
  const weights = new Map<string, Tensor>();
  for (const [name, shape] of llamaParameterShapes(config)) {
    if (!wanted(name)) continue;
    const data = new Float32Array(numel(shape));
    if (name.endsWith('norm.weight')) data.fill(1);
    else for (let i = 0; i < data.length; i += FILL.length) data.set(FILL.subarray(0, data.length - i), i);
    weights.set(name, { shape: [...shape], data });
  }
  return { config, weights };
}

const inBlocks = (from: number, to: number) => (name: string) => {
  const m = /^layers\.(\d+)\./.exec(name);
  return m !== null && Number(m[1]) >= from && Number(m[1]) < to;
};

/** An adapter with B nonzero (as after some training), so no product is skipped as zero. */
function adapterFor(config: LlamaConfig, from: number, to: number): LlamaLoraAdapter {
  const a = initLlamaLoraAdapter(config, LORA, 1, from, to);
  const rng = new Rng(5);
  for (const pair of a.layers.values()) rng.fillNormal(pair.B.data, 0.01);
  return a;
}

// ---------------------------------------------------------------------------------------------
// part 1: bytes (computed from the shapes)

const sumParams = (shapes: Array<[string, number[]]>) => shapes.reduce((s, [, shape]) => s + numel(shape), 0);

function tierParams(config: LlamaConfig, k: number, m: number, tier: Tier): number {
  return sumParams(segmentParameterShapes(config, { k, m }, tier));
}

function blockParams(config: LlamaConfig): number {
  return sumParams(llamaParameterShapes(config).filter(([n]) => inBlocks(0, 1)(n)));
}

function tabTable(): string[] {
  const out = [
    '| model | k | m | user weights | f32 (today) | f16 | of which embedding (= tied head) | LoRA adapter |' +
      ' AdamW m, v | held, f32 | edge [k, m), f32 |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ];
  for (const [name, c] of Object.entries(SHAPES)) {
    const { m } = defaultSplitPlan(c);
    const embed = c.vocabSize * c.hiddenSize;
    for (const k of K_VALUES) {
      const w = tierParams(c, k, m, 'user');
      const lora = llamaLoraParameterCount(c, LORA, 0, k);
      out.push(
        `| ${name} | ${k} | ${m} | ${millions(w)} | ${mib(4 * w)} | ${mib(2 * w)} | ${mib(4 * embed)} | ` +
          `${mib(4 * lora)} | ${mib(8 * lora)} | ${mib(4 * w + 12 * lora)} | ${mib(4 * tierParams(c, k, m, 'edge'))} |`,
      );
    }
  }
  return out;
}

/** Both shapes tie the head to the embedding; what an untied head (tie_word_embeddings false) would add. */
function untiedNote(): string[] {
  return Object.entries(SHAPES).map(([name, c]) => {
    const untied = { ...c, tieWordEmbeddings: false };
    const plan = defaultSplitPlan(c);
    const extra = tierParams(untied, plan.k, plan.m, 'user') - tierParams(c, plan.k, plan.m, 'user');
    return (
      `- ${name} ties its head (tie_word_embeddings ${c.tieWordEmbeddings}): the tab's embedding is its head. ` +
      `Untied, lm_head [${c.vocabSize}, ${c.hiddenSize}] would add ${mib(4 * extra)} f32 (${mib(2 * extra)} f16) ` +
      'to the user segment at every k, and the cloud would hold lm_head instead of embed_tokens (the same size).'
    );
  });
}

// ---------------------------------------------------------------------------------------------
// part 2 and 3: measurements, each in a child process

type ChildJob =
  | { kind: 'runtime' }
  | { kind: 'blocks'; shape: ShapeName; from: number; to: number; lean?: boolean }
  | { kind: 'tail'; shape: ShapeName; from: number; lean?: boolean }
  | { kind: 'head-device'; shape: ShapeName }
  | { kind: 'reference-block'; shape: ShapeName }
  | { kind: 'reference-head'; shape: ShapeName };

interface ChildResult {
  /** median ms per step (forward + backward, or the whole head step) */
  ms?: number;
  forwardMs?: number;
  backwardMs?: number;
  /** every step's ms, warm-up excluded */
  steps?: number[];
  /** VmHWM and VmRSS (after the steps) in bytes */
  peak: number;
  settled: number;
  /** the ONNX graph's bytes (weights included) */
  graphBytes?: number;
}

function currentRss(): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

/** Drops the JS copy of the weights before a session loads them, as a server that has cut its segment does. */
function collect(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

async function timed<T>(f: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const r = await f();
  return [r, performance.now() - t0];
}

const activation = (data: Float32Array, B: number, T: number, D: number): RunnerTensor => ({ data, dims: [B, T, D] });

function randomTargets(V: number, n: number, seed: number): Int32Array {
  const rng = new Rng(seed);
  return Int32Array.from({ length: n }, () => rng.int(V));
}

/**
 * Builds a graph from `model` and loads it as `name`: the frozen weights as initializers (the servers'
 * default: each session holds and pre-packs its own copy), or with `lean` as graph inputs fed from one
 * copy in the runner's worker (--lean-memory). The JS copy of the weights is dropped before the session
 * loads, as a server that has cut its segment can.
 */
async function loadGraph(
  runner: SegmentRunner,
  name: string,
  model: LlamaModel,
  lean: boolean,
  build: (weights: 'initializers' | 'inputs') => SegmentGraph,
): Promise<{ graph: SegmentGraph; graphBytes: number }> {
  const graph = build(lean ? 'inputs' : 'initializers');
  const tensors = (graph.weightInputs ?? []).map((io) => {
    const t = model.weights.get(io.name)!;
    return [io.name, { data: t.data, dims: t.shape }] as const;
  });
  const set = lean ? await runner.addWeights(tensors) : undefined;
  tensors.length = 0;
  model.weights.clear();
  collect();
  const graphBytes = graph.model.byteLength;
  await runner.load(name, graph.model, { weights: set });
  return { graph, graphBytes };
}

/** One step graph of blocks [from, to) on a SegmentRunner, as the edge runs it on cpu (runner.ts, segments.ts). */
async function blocksChild(shape: ShapeName, from: number, to: number, lean: boolean): Promise<ChildResult> {
  const c = SHAPES[shape];
  const { B, T } = SERVER_BATCH;
  const D = c.hiddenSize;
  const runner = await SegmentRunner.start({ provider: 'cpu', threads: THREADS });
  const model = fillerModel(c, inBlocks(from, to));
  const adapter = adapterFor(c, from, to);
  const { graph, graphBytes } = await loadGraph(runner, 'step', model, lean, (weights) =>
    llamaBlocksStepGraph(model, LORA, from, to, { saveIntermediates: true, ropePositions: T, weights }),
  );
  const backwardIn = graph.inputs.filter((i) => i.name === 'dy' || i.name.startsWith('backward.'));
  const isBackward = (n: string) => n === 'dx' || n.startsWith('grad.');
  const forwardOut = graph.outputs.map((o) => o.name).filter((n) => !isBackward(n));
  const backwardOut = graph.outputs.map((o) => o.name).filter(isBackward);
  const lora = () =>
    Object.fromEntries(
      [...llamaLoraGraphFeeds(c, LORA, adapter, from, to)].map(([k, v]) => [k, { data: v.data.slice(), dims: v.dims }]),
    );
  const empty = (dims: (number | string)[]): RunnerTensor => ({
    data: new Float32Array(0),
    dims: dims.map((d) => (typeof d === 'string' ? (d.includes('batch') ? 0 : T) : d)),
  });
  const rng = new Rng(3);
  const fwd: number[] = [];
  const bwd: number[] = [];
  for (let i = 0; i <= ITERS; i++) {
    const x = rng.fillNormal(new Float32Array(B * T * D), 1);
    const [out, fMs] = await timed(() =>
      runner.run(
        'step',
        {
          x: activation(x, B, T, D),
          ...lora(),
          ...Object.fromEntries(backwardIn.map((io) => [io.name, empty(io.dims)])),
        },
        { keep: ['x'], fetch: forwardOut },
      ),
    );
    const saved = Object.entries(out).filter(([k]) => k.startsWith('saved.'));
    const dy = rng.fillNormal(new Float32Array(B * T * D), 1);
    const [, bMs] = await timed(() =>
      runner.run(
        'step',
        {
          x: { data: new Float32Array(0), dims: [0, T, D] },
          'backward.x': activation(x, B, T, D),
          dy: activation(dy, B, T, D),
          ...Object.fromEntries(saved.map(([k, v]) => [`backward.${k}`, v])),
          ...lora(),
        },
        { fetch: backwardOut },
      ),
    );
    if (i === 0) continue; // warm-up: the first run of a shape plans and allocates
    fwd.push(fMs);
    bwd.push(bMs);
  }
  const steps = fwd.map((f, i) => f + bwd[i]);
  const r = {
    ms: median(steps),
    forwardMs: median(fwd),
    backwardMs: median(bwd),
    steps,
    peak: peakRssBytes() ?? 0,
    settled: currentRss(),
    graphBytes,
  };
  await runner.close();
  return r;
}

/**
 * The cloud's tail with labels in the cloud, as one graph (llamaTailGraph: blocks [from, L), final
 * norm, head, loss; forward and backward); from = L is the head step alone.
 */
async function tailChild(shape: ShapeName, from: number, lean: boolean): Promise<ChildResult> {
  const c = SHAPES[shape];
  const L = c.nLayer;
  const { B, T } = SERVER_BATCH;
  const D = c.hiddenSize;
  const runner = await SegmentRunner.start({ provider: 'cpu', threads: THREADS });
  const head = llamaHeadWeightName(c);
  const model = fillerModel(c, (n) => n === 'norm.weight' || n === head || inBlocks(from, L)(n));
  const adapter = adapterFor(c, from, L);
  const { graphBytes } = await loadGraph(runner, 'tail', model, lean, (weights) =>
    llamaTailGraph(model, LORA, from, { ropePositions: T, weights }),
  );
  const lora = () =>
    Object.fromEntries(
      [...llamaLoraGraphFeeds(c, LORA, adapter, from, L)].map(([k, v]) => [k, { data: v.data.slice(), dims: v.dims }]),
    );
  const rng = new Rng(4);
  const steps: number[] = [];
  for (let i = 0; i <= ITERS; i++) {
    const x = rng.fillNormal(new Float32Array(B * T * D), 1);
    const targets = randomTargets(c.vocabSize, B * T, i);
    const [, ms] = await timed(() =>
      runner.run('tail', { x: activation(x, B, T, D), targets: { data: targets, dims: [B, T] }, ...lora() }),
    );
    if (i > 0) steps.push(ms);
  }
  const r = { ms: median(steps), steps, peak: peakRssBytes() ?? 0, settled: currentRss(), graphBytes };
  await runner.close();
  return r;
}

/** The head the tab runs with labels on the device (llamaHeadStepGraph, in chunks of headChunkRows rows). */
async function headDeviceChild(shape: ShapeName): Promise<ChildResult> {
  const c = SHAPES[shape];
  const rows = SERVER_BATCH.B * SERVER_BATCH.T;
  const D = c.hiddenSize;
  const runner = await SegmentRunner.start({ provider: 'cpu', threads: THREADS });
  const head = llamaHeadWeightName(c);
  const model = fillerModel(c, (n) => n === 'norm.weight' || n === head);
  // the tab's head graph has no weights-as-inputs form: the tab holds its one copy in the graph
  const { graphBytes } = await loadGraph(runner, 'head', model, false, () => llamaHeadStepGraph(model));
  const chunk = headChunkRows(c.vocabSize, rows);
  const rng = new Rng(6);
  const steps: number[] = [];
  for (let i = 0; i <= ITERS; i++) {
    const h = rng.fillNormal(new Float32Array(rows * D), 1);
    const targets = randomTargets(c.vocabSize, rows, i);
    const t0 = performance.now();
    for (let r0 = 0; r0 < rows; r0 += chunk) {
      const n = Math.min(chunk, rows - r0);
      await runner.run('head', {
        h: { data: h.slice(r0 * D, (r0 + n) * D), dims: [n, D] },
        targets: { data: targets.slice(r0, r0 + n), dims: [n] },
        count: { data: Float32Array.of(rows), dims: [] },
      });
    }
    if (i > 0) steps.push(performance.now() - t0);
  }
  const r = { ms: median(steps), steps, peak: peakRssBytes() ?? 0, settled: currentRss(), graphBytes };
  await runner.close();
  return r;
}

/** The tab's block on the TypeScript reference engine (llamaBlocksForward + llamaBlocksBackward), 1 block. */
async function referenceBlockChild(shape: ShapeName): Promise<ChildResult> {
  const c = SHAPES[shape];
  const { B, T } = TAB_BATCH;
  const D = c.hiddenSize;
  const model = fillerModel(c, inBlocks(0, 1));
  const adapter = adapterFor(c, 0, 1);
  const rng = new Rng(8);
  const fwd: number[] = [];
  const bwd: number[] = [];
  // fewer steps: a reference step takes seconds here
  const iters = Math.min(ITERS, 3);
  for (let i = 0; i <= iters; i++) {
    const x = rng.fillNormal(new Float32Array(B * T * D), 1);
    const dy = rng.fillNormal(new Float32Array(B * T * D), 1);
    const t0 = performance.now();
    const f = llamaBlocksForward(model, adapter, x, B, T, 0, 1);
    const t1 = performance.now();
    llamaBlocksBackward(model, adapter, f.cache, dy);
    const t2 = performance.now();
    if (i === 0) continue;
    fwd.push(t1 - t0);
    bwd.push(t2 - t1);
  }
  const steps = fwd.map((f, i) => f + bwd[i]);
  return {
    ms: median(steps),
    forwardMs: median(fwd),
    backwardMs: median(bwd),
    steps,
    peak: peakRssBytes() ?? 0,
    settled: currentRss(),
  };
}

/** The tab's head with labels on the device on the reference engine (llamaHeadLossStep: loss and dL/dh). */
async function referenceHeadChild(shape: ShapeName): Promise<ChildResult> {
  const c = SHAPES[shape];
  const { B, T } = TAB_BATCH;
  const head = llamaHeadWeightName(c);
  const model = fillerModel(c, (n) => n === 'norm.weight' || n === head);
  const rng = new Rng(9);
  const steps: number[] = [];
  // a reference head step takes seconds here: one warm-up and two
  for (let i = 0; i <= Math.min(ITERS, 2); i++) {
    const h = rng.fillNormal(new Float32Array(B * T * c.hiddenSize), 1);
    const t0 = performance.now();
    llamaHeadLossStep(model, h, randomTargets(c.vocabSize, B * T, i), B, T);
    if (i > 0) steps.push(performance.now() - t0);
  }
  return { ms: median(steps), steps, peak: peakRssBytes() ?? 0, settled: currentRss() };
}

async function runChild(job: ChildJob): Promise<ChildResult> {
  switch (job.kind) {
    case 'runtime': {
      const runner = await SegmentRunner.start({ provider: 'cpu', threads: THREADS });
      const r = { peak: peakRssBytes() ?? 0, settled: currentRss() };
      await runner.close();
      return r;
    }
    case 'blocks':
      return blocksChild(job.shape, job.from, job.to, job.lean === true);
    case 'tail':
      return tailChild(job.shape, job.from, job.lean === true);
    case 'head-device':
      return headDeviceChild(job.shape);
    case 'reference-block':
      return referenceBlockChild(job.shape);
    case 'reference-head':
      return referenceHeadChild(job.shape);
  }
}

const CHILD_TIMEOUT_MS = 240_000;

/** Runs one job in a fresh node process (its own VmHWM); its last stdout line is the result as JSON. */
function inChild(job: ChildJob): Promise<ChildResult> {
  const t0 = performance.now();
  const args = ['--expose-gc', '--import', 'tsx', fileURLToPath(import.meta.url), '--child', JSON.stringify(job)];
  args.push('--iters', String(ITERS), '--threads', String(THREADS));
  const child = spawn(process.execPath, args, { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  let stdout = '';
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), CHILD_TIMEOUT_MS);
  return new Promise((resolve, reject) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const line = stdout.trim().split('\n').pop() ?? '';
      if (code !== 0 || !line.startsWith('{')) {
        const why = signal === 'SIGKILL' ? `killed after ${CHILD_TIMEOUT_MS / 1000} s or for memory` : `code ${code}`;
        reject(
          new SizesError(
            'CHILD_FAILED',
            `llama-sizes: child ${JSON.stringify(job)} failed (${why}): ${stdout.slice(-500)}`,
          ),
        );
        return;
      }
      console.error(`  ${JSON.stringify(job)}: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      resolve(JSON.parse(line) as ChildResult);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// the report

const ms = (x: number) => (x >= 100 ? x.toFixed(0) : x.toFixed(1));
const stepList = (r: ChildResult) => (r.steps ?? []).map(ms).join(', ');

interface Measured {
  /** blocks [0, 1) and [0, 2), frozen weights as initializers (the default) and held once (lean) */
  one: ChildResult;
  two: ChildResult;
  oneLean: ChildResult;
  twoLean: ChildResult;
  /** the tail from L: the head step alone */
  cloudHead: ChildResult;
  cloudHeadLean: ChildResult;
  deviceHead: ChildResult;
  /** the default plan's edge and cloud built and run whole (only where that is cheap) */
  whole?: Record<'edge' | 'cloud', { initializers: ChildResult; lean: ChildResult }>;
}

/** Shapes whose edge and cloud are cheap enough to build and run whole here (~200 MiB each); not the 1B's. */
const WHOLE_TIERS = new Set<ShapeName>(['SmolLM2-135M']);

/**
 * n blocks from the one- and two-block measurements: the first block's figure plus (n - 1) times
 * what the second added (the part of one block's figure that does not grow with the blocks: node,
 * onnxruntime, the session's fixed overhead, is counted once). When noise makes the second
 * block look free or cheaper than nothing, n times the first instead.
 */
function scaled(one: number, two: number, n: number): number {
  const marginal = two - one;
  return marginal > 0 ? one + (n - 1) * marginal : n * one;
}

function tierBlocks(c: LlamaConfig, tier: 'edge' | 'cloud'): number {
  const plan = defaultSplitPlan(c);
  return tier === 'edge' ? plan.m - plan.k : c.nLayer - plan.m;
}

function tierEstimate(c: LlamaConfig, m: Measured, runtime: ChildResult, tier: 'edge' | 'cloud', lean: boolean) {
  const blocks = tierBlocks(c, tier);
  const [one, two] = lean ? [m.oneLean, m.twoLean] : [m.one, m.two];
  const head = tier === 'cloud' ? (lean ? m.cloudHeadLean : m.cloudHead) : undefined;
  return {
    // the head's own share: its child's figure less the runtime every child has
    peak: scaled(one.peak, two.peak, blocks) + (head ? head.peak - runtime.peak : 0),
    settled: scaled(one.settled, two.settled, blocks) + (head ? head.settled - runtime.settled : 0),
    ms: scaled(one.ms ?? 0, two.ms ?? 0, blocks) + (head?.ms ?? 0),
  };
}

async function measure(shape: ShapeName): Promise<Measured> {
  const c = SHAPES[shape];
  const L = c.nLayer;
  const m: Measured = {
    one: await inChild({ kind: 'blocks', shape, from: 0, to: 1 }),
    two: await inChild({ kind: 'blocks', shape, from: 0, to: 2 }),
    oneLean: await inChild({ kind: 'blocks', shape, from: 0, to: 1, lean: true }),
    twoLean: await inChild({ kind: 'blocks', shape, from: 0, to: 2, lean: true }),
    cloudHead: await inChild({ kind: 'tail', shape, from: L }),
    cloudHeadLean: await inChild({ kind: 'tail', shape, from: L, lean: true }),
    deviceHead: await inChild({ kind: 'head-device', shape }),
  };
  if (WHOLE_TIERS.has(shape) && !opt['skip-whole']) {
    const plan = defaultSplitPlan(c);
    m.whole = {
      edge: {
        initializers: await inChild({ kind: 'blocks', shape, from: plan.k, to: plan.m }),
        lean: await inChild({ kind: 'blocks', shape, from: plan.k, to: plan.m, lean: true }),
      },
      cloud: {
        initializers: await inChild({ kind: 'tail', shape, from: plan.m }),
        lean: await inChild({ kind: 'tail', shape, from: plan.m, lean: true }),
      },
    };
  }
  return m;
}

async function main(): Promise<void> {
  const t0 = performance.now();
  const cpu = cpus()[0]?.model ?? 'unknown cpu';
  const lines: string[] = [];
  const say = (...ls: string[]) => lines.push(...ls);
  say(
    `Machine: ${cpu}, ${availableParallelism()} cores, ${mib(totalmem())} memory, node ${process.version}, ` +
      `onnxruntime-node cpu, intra-op threads ${THREADS}; medians of ${ITERS} steps after one warm-up ` +
      '(the reference engine: 3 steps, its head 2).',
    '',
    '### 1. What a tab downloads and holds (k = 1, 2, 4; m from defaultSplitPlan)',
    '',
    ...tabTable(),
    '',
    ...untiedNote(),
    '',
  );

  console.error('measuring (each line one child process):');
  const runtime = await inChild({ kind: 'runtime' });
  const measured: Record<string, Measured> = {};
  for (const shape of Object.keys(SHAPES)) measured[shape] = await measure(shape);
  const tabShape = 'SmolLM2-135M';
  const referenceBlock = await inChild({ kind: 'reference-block', shape: tabShape });
  const referenceHead = await inChild({ kind: 'reference-head', shape: tabShape });

  say(
    `### 2. The edge and the cloud (onnxruntime-node, cpu, ${SERVER_BATCH.B} x ${SERVER_BATCH.T} tokens)`,
    '',
    'Measured, one child process each. The runtime alone (node, tsx, onnxruntime, the runner started, nothing ' +
      `loaded): peak RSS ${mib(runtime.peak)}. "lean": the frozen weights held once in the runner and fed as ` +
      'graph inputs (--lean-memory); otherwise initializers of the graph (the default).',
    '',
    '| model | measured | weights f32 | ONNX graph | peak RSS | RSS after | ms/step | fwd + bwd | steps (ms) |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  );
  for (const [shape, m] of Object.entries(measured)) {
    const c = SHAPES[shape];
    const headW = c.hiddenSize * (c.vocabSize + 1);
    const rows: Array<[string, number, ChildResult]> = [
      ['block 0, step (fwd + bwd)', blockParams(c), m.one],
      ['blocks 0-1, step (fwd + bwd)', 2 * blockParams(c), m.two],
      ['block 0, step, lean', blockParams(c), m.oneLean],
      ['blocks 0-1, step, lean', 2 * blockParams(c), m.twoLean],
      ['cloud head step (labels in the cloud)', headW, m.cloudHead],
      ['cloud head step, lean', headW, m.cloudHeadLean],
      ['tab head step (labels on the device)', headW, m.deviceHead],
    ];
    for (const [what, params, r] of rows) {
      const split = r.forwardMs === undefined ? '' : `${ms(r.forwardMs)} + ${ms(r.backwardMs ?? 0)}`;
      say(
        `| ${shape} | ${what} | ${mib(4 * params)} | ${mib(r.graphBytes ?? 0)} | ` +
          `${mib(r.peak)} | ${mib(r.settled)} | ` +
          `${ms(r.ms ?? 0)} | ${split} | ${stepList(r)} |`,
      );
    }
  }
  say(
    '',
    'Per tier, default plan. "scaled": from the block measurements above (first block + (n - 1) x what the',
    'second added; the cloud adds its head step with labels in the cloud, less the runtime counted once).',
    '"whole": the edge\'s step graph of all its blocks, the cloud\'s tail graph (its blocks, norm, head, loss)',
    'built and run as the servers run them, where that is cheap here.',
    '',
    '| model | tier | blocks | weights f32 | f16 | figures | peak RSS | RSS after | ms/step | lean: peak RSS |' +
      ' lean: RSS after | lean: ms/step |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  );
  for (const [shape, m] of Object.entries(measured)) {
    const c = SHAPES[shape];
    const plan = defaultSplitPlan(c);
    for (const tier of ['edge', 'cloud'] as const) {
      const w = tierParams(c, plan.k, plan.m, tier);
      const lead =
        `| ${shape} | ${tier} (k=${plan.k}, m=${plan.m}) | ${tierBlocks(c, tier)} | ` + `${mib(4 * w)} | ${mib(2 * w)}`;
      const e = tierEstimate(c, m, runtime, tier, false);
      const l = tierEstimate(c, m, runtime, tier, true);
      say(
        `${lead} | scaled | ${mib(e.peak)} | ${mib(e.settled)} | ${ms(e.ms)} | ${mib(l.peak)} | ${mib(l.settled)} | ` +
          `${ms(l.ms)} |`,
      );
      const whole = m.whole?.[tier];
      if (!whole) continue;
      const [d, n] = [whole.initializers, whole.lean];
      say(
        `${lead} | whole | ${mib(d.peak)} | ${mib(d.settled)} | ${ms(d.ms ?? 0)} (${stepList(d)}) | ` +
          `${mib(n.peak)} | ${mib(n.settled)} | ${ms(n.ms ?? 0)} (${stepList(n)}) |`,
      );
    }
  }

  const tc = SHAPES[tabShape];
  const tabMs = (k: number) => k * (referenceBlock.ms ?? 0) + (referenceHead.ms ?? 0);
  say(
    '',
    `### 3. The tab on the reference (TypeScript) engine, ${tabShape}, ${TAB_BATCH.B} x ${TAB_BATCH.T} tokens`,
    '',
    `- one block, forward + backward: ${ms(referenceBlock.ms ?? 0)} ms (${ms(referenceBlock.forwardMs ?? 0)} + ` +
      `${ms(referenceBlock.backwardMs ?? 0)}; steps ${stepList(referenceBlock)}), ` +
      `peak RSS ${mib(referenceBlock.peak)};`,
    `- the head with labels on the device (norm + head [${tc.vocabSize}, ${tc.hiddenSize}] + loss, dL/dh): ` +
      `${ms(referenceHead.ms ?? 0)} ms (steps ${stepList(referenceHead)}), peak RSS ${mib(referenceHead.peak)};`,
    `- so a tab's step is about k x block + head: ${K_VALUES.map((k) => `k=${k} ${ms(tabMs(k))} ms`).join(', ')} ` +
      '(the embedding lookup and AdamW on the adapter are negligible beside them).',
    '',
    `(whole run: ${((performance.now() - t0) / 1000).toFixed(0)} s)`,
  );
  console.log(lines.join('\n'));
}

if (opt.child !== undefined) {
  const r = await runChild(JSON.parse(opt.child) as ChildJob);
  console.log(JSON.stringify(r));
} else {
  await main();
}
