/**
 * What labels on the device cost against labels in the cloud, on this machine (prints figures,
 * asserts nothing):
 *  1. wire bytes per training step, per hop (user <-> edge, edge <-> cloud), both modes, f32, from
 *     the real frames (encodeMessage): device mode sends h up and hL back down, then dL/dhL up and
 *     dL/dh back down (four frames a hop); cloud mode sends h with the int32 labels up and dL/dh
 *     down (two frames a hop). The shipped model at its default batch and GPT-2 small at 4 x 128;
 *  2. ms per step end to end on the shipped model: `simulate --edges 1 --users 1 --rounds 2
 *     --steps-per-user 20 --engine wasm --labels device|cloud --json`, each mode --runs times,
 *     alternated; per run the median of the user's own step times (its log; a step is forward,
 *     the round trip(s) through edge and cloud, the head when on the device, backward and AdamW),
 *     without each round's first step, and each round's wall time / steps;
 *  3. at GPT-2 small shapes (random weights, default split, batch 4 x 128, default LoRA), where
 *     the two modes differ, the median of --iters runs after one warm-up:
 *     (a) the cloud on onnxruntime-node (cpu, --threads): TailSegment.step (blocks [m, L), the
 *         head and the loss, forward and backward) against BlocksSegment forward + backward of
 *         [m, L), as the cloud runs them in each mode;
 *     (b) the tab's added work: headStep on the wasm engine (onnxruntime-web, 1 thread), with the
 *         same engine's forward + backwardAndStep of blocks [0, k) for scale, and headStep on the
 *         reference engine in a child process that is given 60 s (--reference-head runs that
 *         child's part).
 *
 *   pnpm exec tsx packages/cli/scripts/bench-labels.ts [--runs 2] [--iters 5] [--threads 1]
 *       [--skip-simulate] [--skip-gpt2]
 */
import {
  DEFAULT_LORA_CONFIG,
  DEFAULT_LORA_TRAIN,
  defaultSplitPlan,
  GPT2_SMALL_CONFIG,
  type Gpt2Model,
  initLoraAdapter,
  randomGpt2Weights,
  Rng,
} from '@splitllm/model';
import { loadGpt2Dir } from '@splitllm/model/node';
import { BlocksSegment, SegmentRunner, TailSegment } from '@splitllm/onnx-runner';
import { createUserTrainer, ReferenceUserTrainer, type UserTrainerOptions } from '@splitllm/user-client';
import { encodeMessage } from '@splitllm/wire';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { REPO_ROOT, SHIPPED_MODEL_DIR } from '../src/io';
import { type SimulateRound, simulateJson } from './simulate-json';

const { values: opt } = parseArgs({
  options: {
    runs: { type: 'string', default: '2' },
    iters: { type: 'string', default: '5' },
    threads: { type: 'string', default: '1' },
    'skip-simulate': { type: 'boolean', default: false },
    'skip-gpt2': { type: 'boolean', default: false },
    'reference-head': { type: 'boolean', default: false },
  },
});
const RUNS = Number(opt.runs);
const ITERS = Number(opt.iters);
const THREADS = Number(opt.threads);
/** the reference engine's headStep at GPT-2 shapes gets this long before it is reported as too slow */
const REFERENCE_BUDGET_MS = 60_000;
const GPT2_B = 4;
const GPT2_T = 128;

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
};
const kib = (b: number) => `${(b / 1024).toFixed(1)} KiB`;
const msText = (ms: number) => (ms >= 100 ? ms.toFixed(0) : ms.toFixed(1));

// ---------------------------------------------------------------- 1. bytes

interface HopBytes {
  /** toward the cloud */
  up: number;
  /** toward the user */
  down: number;
}

/** The frames of one step on each hop, encoded as the parts encode them (f32 codec). */
function stepBytes(
  labels: 'device' | 'cloud',
  B: number,
  T: number,
  D: number,
): { userEdge: HopBytes; edgeCloud: HopBytes } {
  const h = { data: new Float32Array(B * T * D).fill(0.5), shape: [B, T, D], codec: 'f32' as const };
  const targets = { data: new Int32Array(B * T), shape: [B, T] };
  const step = { round: 1, step: 1 };
  // a real user id is `u-` and 12 hex digits (cloud-server routes/join.ts); the edge adds it
  const userId = 'u-0123456789ab';
  const grad = { ...step, loss: 4.5, count: B * T, dh: h };
  const len = (frame: Uint8Array) => frame.byteLength;
  if (labels === 'cloud') {
    return {
      userEdge: {
        up: len(encodeMessage('userToEdge', 'forward', { ...step, h, targets })),
        down: len(encodeMessage('edgeToUser', 'backward', grad)),
      },
      edgeCloud: {
        up: len(encodeMessage('edgeToCloud', 'forward', { ...step, userId, h, targets })),
        down: len(encodeMessage('cloudToEdge', 'backward', { ...grad, userId })),
      },
    };
  }
  return {
    userEdge: {
      up:
        len(encodeMessage('userToEdge', 'activations', { ...step, h })) +
        len(encodeMessage('userToEdge', 'head-grad', grad)),
      down:
        len(encodeMessage('edgeToUser', 'hidden', { ...step, h })) + len(encodeMessage('edgeToUser', 'backward', grad)),
    },
    edgeCloud: {
      up:
        len(encodeMessage('edgeToCloud', 'activations', { ...step, userId, h })) +
        len(encodeMessage('edgeToCloud', 'head-grad', { ...grad, userId })),
      down:
        len(encodeMessage('cloudToEdge', 'hidden', { ...step, userId, h })) +
        len(encodeMessage('cloudToEdge', 'backward', { ...grad, userId })),
    },
  };
}

function bytesTable(): void {
  const shipped = loadGpt2Dir(SHIPPED_MODEL_DIR).config;
  const { batchSize: B0, seqLen: T0 } = DEFAULT_LORA_TRAIN;
  console.log('\n1. wire bytes per training step, f32 codec (up = toward the cloud, down = toward the user)');
  for (const [name, B, T, D] of [
    [`shipped moby-tiny (D ${shipped.nEmbd}), ${B0} x ${T0}`, B0, T0, shipped.nEmbd],
    [`GPT-2 small (D ${GPT2_SMALL_CONFIG.nEmbd}), ${GPT2_B} x ${GPT2_T}`, GPT2_B, GPT2_T, GPT2_SMALL_CONFIG.nEmbd],
  ] as const) {
    const cloud = stepBytes('cloud', B, T, D);
    for (const labels of ['cloud', 'device'] as const) {
      const b = stepBytes(labels, B, T, D);
      const hops = (['userEdge', 'edgeCloud'] as const).map((hop) => {
        const total = b[hop].up + b[hop].down;
        const ratio = total / (cloud[hop].up + cloud[hop].down);
        const name = hop === 'userEdge' ? 'user<->edge' : 'edge<->cloud';
        return `${name} up ${kib(b[hop].up)} down ${kib(b[hop].down)} total ${kib(total)} (x${ratio.toFixed(2)})`;
      });
      console.log(`  ${name}, labels ${labels.padEnd(6)}: ${hops.join('; ')}`);
    }
    console.log(`    (the labels alone: ${kib(B * T * 4)} of int32; one [B, T, D] f32 tensor: ${kib(B * T * D * 4)})`);
  }
}

// ---------------------------------------------------------------- 2. simulate

interface SimRun {
  labels: 'device' | 'cloud';
  /** the user's step times, each round without its first step */
  stepMs: number[];
  rounds: SimulateRound[];
}

const STEPS_PER_USER = 20;

function simulate(labels: 'device' | 'cloud'): SimRun {
  const out = mkdtempSync(join(tmpdir(), `splitllm-bench-labels-${labels}-`));
  try {
    const rounds = simulateJson(
      [
        ...['--edges', '1', '--users', '1', '--rounds', '2', '--steps-per-user', String(STEPS_PER_USER)],
        ...['--engine', 'wasm', '--labels', labels],
      ],
      out,
    );
    // the user's own log (stderr of `splitllm user`): "round R step S/N loss L X ms"
    const stepMs: number[] = [];
    for (const line of readFileSync(join(out, 'logs/user-0.log'), 'utf8').split('\n')) {
      const m = /^round \d+ step (\d+)\/\d+ loss \S+ (\d+) ms$/.exec(line);
      // the first step of a round also waits for the adapter download and the first runs of the graphs
      if (m && Number(m[1]) > 1) stepMs.push(Number(m[2]));
    }
    return { labels, stepMs, rounds };
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}

function simulateTimes(): void {
  console.log(
    `\n2. ms per step, shipped model: simulate --edges 1 --users 1 --rounds 2 --steps-per-user ${STEPS_PER_USER} ` +
      `--engine wasm --labels device|cloud, ${RUNS} runs per mode, alternated`,
  );
  for (let i = 0; i < RUNS; i++) {
    for (const labels of ['device', 'cloud'] as const) {
      const run = simulate(labels);
      const perRound = run.rounds
        .map(
          (r) =>
            `round ${r.round} ${msText(r.ms / STEPS_PER_USER)} ms/step (${(r.ms / 1000).toFixed(2)} s, ` +
            `loss ${r.loss.toFixed(4)}, ${(r.bytes / 2 ** 20).toFixed(2)} MiB)`,
        )
        .join('; ');
      console.log(
        `  run ${i + 1}, labels ${labels.padEnd(6)}: user's step median ${msText(median(run.stepMs))} ms ` +
          `(${run.stepMs.length} steps, ${msText(Math.min(...run.stepMs))}-${msText(Math.max(...run.stepMs))}); ` +
          `wall / steps: ${perRound}`,
      );
    }
  }
}

// ---------------------------------------------------------------- 3. GPT-2 small shapes

async function timed(iters: number, f: () => Promise<unknown>): Promise<{ first: number; median: number }> {
  const times: number[] = [];
  for (let i = 0; i < iters + 1; i++) {
    const t0 = performance.now();
    await f();
    times.push(performance.now() - t0);
  }
  return { first: times[0], median: median(times.slice(1)) };
}

function randomInputs(seed: number, B: number, T: number) {
  const c = GPT2_SMALL_CONFIG;
  const rng = new Rng(seed);
  const hL = rng.fillNormal(new Float32Array(B * T * c.nEmbd), 1);
  const targets = new Int32Array(B * T);
  for (let i = 0; i < targets.length; i++) targets[i] = rng.int(c.vocabSize);
  return { hL, targets };
}

const gpt2Options = (): UserTrainerOptions => ({
  plan: defaultSplitPlan(GPT2_SMALL_CONFIG),
  lora: DEFAULT_LORA_CONFIG,
  batch: GPT2_B,
  seq: GPT2_T,
  adamw: DEFAULT_LORA_TRAIN.adamw,
});

async function cloudTier(model: Gpt2Model): Promise<void> {
  const c = model.config;
  const { m } = defaultSplitPlan(c);
  const L = c.nLayer;
  const B = GPT2_B;
  const T = GPT2_T;
  const adapter = initLoraAdapter(c, DEFAULT_LORA_CONFIG, 1, m, L);
  const runner = await SegmentRunner.start({ provider: 'cpu', threads: THREADS, log: () => undefined });
  try {
    const rng = new Rng(3);
    const fresh = () => rng.fillNormal(new Float32Array(B * T * c.nEmbd), 1);
    const tail = await TailSegment.create(runner, model, DEFAULT_LORA_CONFIG, m);
    const { targets } = randomInputs(4, B, T);
    const tailT = await timed(ITERS, () => tail.step(adapter, fresh(), targets, B, T));
    await tail.close();
    // as the cloud builds it on the cpu provider (apps/cloud-server/src/app.ts): intermediates kept
    const blocks = await BlocksSegment.create(runner, model, DEFAULT_LORA_CONFIG, m, L, { saveIntermediates: true });
    const fwd: number[] = [];
    const bwd: number[] = [];
    for (let i = 0; i < ITERS + 1; i++) {
      const x = fresh();
      const dy = rng.fillNormal(new Float32Array(B * T * c.nEmbd), 1e-3);
      let t0 = performance.now();
      const f = await blocks.forward(adapter, x, B, T);
      const tf = performance.now() - t0;
      t0 = performance.now();
      await blocks.backward(adapter, x, f.saved, dy, B, T);
      const tb = performance.now() - t0;
      if (i > 0) {
        fwd.push(tf);
        bwd.push(tb);
      }
    }
    await blocks.close();
    const sum = fwd.map((f, i) => f + bwd[i]);
    console.log(
      `  (a) cloud, onnxruntime-node cpu, ${THREADS} thread(s), blocks [${m},${L}), ${B} x ${T}, ` +
        `median of ${ITERS}:\n` +
        `      labels cloud:  TailSegment.step (blocks + head + loss, fwd + bwd) ${msText(tailT.median)} ms\n` +
        `      labels device: BlocksSegment forward ${msText(median(fwd))} ms + backward ${msText(median(bwd))} ms ` +
        `= ${msText(median(sum))} ms (median of the sums)`,
    );
  } finally {
    await runner.close();
  }
}

async function tabWasm(model: Gpt2Model): Promise<void> {
  const o = gpt2Options();
  const adapter = initLoraAdapter(model.config, o.lora, 1, 0, o.plan.k);
  const { trainer, reason } = await createUserTrainer('wasm', model, adapter, o, undefined, { numThreads: 1 });
  try {
    // createUserTrainer falls back to another engine when wasm cannot start: that would time the wrong engine
    if (trainer.kind !== 'wasm') throw new Error(`the wasm engine did not start: ${reason}`);
    const { hL, targets } = randomInputs(5, GPT2_B, GPT2_T);
    const head = await timed(ITERS, () => trainer.headStep(hL, targets));
    // for scale: the tab's work in either mode, blocks [0, k) forward + backward + AdamW
    const ids = new Int32Array(GPT2_B * GPT2_T).map((_, i) => (i * 7919 + 13) % model.config.vocabSize);
    const batch = { B: GPT2_B, T: GPT2_T, inputIds: ids, targets: ids.slice() };
    const dh1 = new Rng(6).fillNormal(new Float32Array(GPT2_B * GPT2_T * model.config.nEmbd), 1e-3);
    const blocks = await timed(ITERS, async () => {
      await trainer.forward(batch);
      await trainer.backwardAndStep(dh1);
    });
    console.log(
      `  (b) tab, ${trainer.description}, ${GPT2_B} x ${GPT2_T}, V ${model.config.vocabSize}, median of ${ITERS}:\n` +
        `      headStep (added with labels on the device) ${msText(head.median)} ms ` +
        `(first call, which builds and loads the head graph: ${msText(head.first)} ms)\n` +
        `      for scale, both modes: blocks [0,${o.plan.k}) forward + backwardAndStep ${msText(blocks.median)} ms`,
    );
  } finally {
    trainer.destroy();
  }
}

/** The child's part: the reference engine's headStep at GPT-2 shapes, one JSON line per call. */
async function referenceHeadChild(): Promise<void> {
  const model = { config: GPT2_SMALL_CONFIG, weights: randomGpt2Weights(GPT2_SMALL_CONFIG, 1) };
  const o = gpt2Options();
  const trainer = ReferenceUserTrainer.create(model, initLoraAdapter(model.config, o.lora, 1, 0, o.plan.k), o);
  const { hL, targets } = randomInputs(5, GPT2_B, GPT2_T);
  console.log(JSON.stringify({ ready: true }));
  // a call of more than 20 s: one is enough (the parent's budget would not fit three)
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    await trainer.headStep(hL, targets);
    const ms = performance.now() - t0;
    console.log(JSON.stringify({ ms }));
    if (ms > 20_000) break;
  }
}

/** Runs referenceHeadChild in a child process; the budget starts once its model is built. */
async function tabReference(): Promise<void> {
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--reference-head'], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const times: number[] = [];
  let timer: NodeJS.Timeout | undefined;
  let killed = false;
  let buf = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    buf += chunk;
    let nl = buf.indexOf('\n');
    while (nl >= 0) {
      const j = JSON.parse(buf.slice(0, nl)) as { ready?: boolean; ms?: number };
      buf = buf.slice(nl + 1);
      nl = buf.indexOf('\n');
      if (j.ready) {
        timer = setTimeout(() => {
          if (times.length > 0) return;
          killed = true;
          child.kill('SIGKILL');
        }, REFERENCE_BUDGET_MS);
      } else if (j.ms !== undefined) times.push(j.ms);
    }
  });
  const code = await new Promise<number | null>((res) => child.on('exit', res));
  clearTimeout(timer);
  if (killed) {
    console.log(`      reference engine headStep: did not finish within ${REFERENCE_BUDGET_MS / 1000} s (stopped)`);
  } else if (code !== 0 || times.length === 0) {
    throw new Error(`the reference head child exited with code ${code}`);
  } else {
    console.log(
      `      reference engine (TypeScript) headStep: ${times.map(msText).join(', ')} ms ` +
        `(${times.length} call(s), ${times.length > 1 ? `median ${msText(median(times))} ms` : 'one call'})`,
    );
  }
}

async function gpt2Small(): Promise<void> {
  const { k, m } = defaultSplitPlan(GPT2_SMALL_CONFIG);
  console.log(
    `\n3. GPT-2 small shapes (random weights, ${GPT2_SMALL_CONFIG.nLayer} layers, D ${GPT2_SMALL_CONFIG.nEmbd}, ` +
      `V ${GPT2_SMALL_CONFIG.vocabSize}), split k=${k} m=${m}, ${GPT2_B} x ${GPT2_T}, default LoRA`,
  );
  const model = { config: GPT2_SMALL_CONFIG, weights: randomGpt2Weights(GPT2_SMALL_CONFIG, 1) };
  await cloudTier(model);
  await tabWasm(model);
  await tabReference();
}

if (opt['reference-head']) {
  await referenceHeadChild();
} else {
  bytesTable();
  if (!opt['skip-simulate']) simulateTimes();
  if (!opt['skip-gpt2']) await gpt2Small();
}
