/**
 * The tab's step on the LLaMA family, per user engine (issue 17, part 7: ms per step per tier):
 * reference (TypeScript), wasm (onnxruntime-web's wasm EP, the project's ONNX graphs) and wgsl
 * (the WGSL engine, here on the software Vulkan adapter: no GPU on this machine), on
 *  - the shipped moby-llama-tiny, k = 1, 4 x 64 tokens (the run's default batch);
 *  - SmolLM2-135M's shape (random weights, tied head), k = 1 and 2, 1 x 64 tokens.
 * Each cell: the median of --iters timed steps after one warm-up, of (a) the user segment's
 * forward + backward + AdamW (forward, then backwardAndStep on a fixed dL/dh1) and (b) the head
 * with labels on the device (headStep: norm, LM head, loss and dL/dhL). A wgsl step is timed
 * until its queue has drained. An engine that cannot run a shape says why in its cell.
 *
 *   pnpm exec tsx packages/cli/scripts/llama-tab-engines.ts [--iters 3] [--engines reference,wasm,wgsl]
 */
import { parseArgs } from 'node:util';
import {
  type AnyModel,
  defaultLoraConfig,
  DEFAULT_LORA_TRAIN,
  initLoraAdapter,
  modelDims,
  SMOLLM2_135M_CONFIG,
  randomLlamaWeights,
  Rng,
} from '@splitllm/model';
import { loadModelDir } from '@splitllm/model/node';
import { createUserTrainer, type UserEngineKind, type UserTrainer, WgslUserTrainer } from '@splitllm/user-client';
import { nodeGpu } from '@splitllm/user-client/node';
import { SHIPPED_MODELS } from '../src/io';

const { values: opt } = parseArgs({
  options: { iters: { type: 'string', default: '3' }, engines: { type: 'string', default: 'reference,wasm,wgsl' } },
});
const ITERS = Number(opt.iters);
if (!(Number.isInteger(ITERS) && ITERS >= 1)) throw new Error(`--iters must be a positive integer, got ${opt.iters}`);
const ENGINES = opt.engines.split(',').map((s) => s.trim()) as UserEngineKind[];
for (const e of ENGINES) {
  if (!['reference', 'wasm', 'wgsl'].includes(e)) throw new Error(`unknown engine "${e}" (reference, wasm, wgsl)`);
}

interface Case {
  name: string;
  model: AnyModel;
  k: number;
  batch: number;
  seq: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

const ms = (x: number) => (x >= 100 ? x.toFixed(0) : x.toFixed(1));

async function drained(t: UserTrainer): Promise<void> {
  if (t instanceof WgslUserTrainer) await t.engine.finish();
}

async function timeEngine(kind: UserEngineKind, c: Case): Promise<{ step: number; head: number } | string> {
  const lora = defaultLoraConfig(c.model.config);
  const adapter = initLoraAdapter(c.model.config, lora, 1, 0, c.k);
  const options = {
    plan: { k: c.k, m: c.model.config.nLayer },
    lora,
    batch: c.batch,
    seq: c.seq,
    adamw: DEFAULT_LORA_TRAIN.adamw,
  };
  let trainer: UserTrainer | undefined;
  try {
    trainer = (await createUserTrainer(kind, c.model, adapter, options, nodeGpu)).trainer;
    const n = c.batch * c.seq;
    const V = c.model.config.vocabSize;
    const rng = new Rng(7);
    const ids = Int32Array.from({ length: n }, () => rng.int(V));
    const batch = { B: c.batch, T: c.seq, inputIds: ids, targets: ids.slice() };
    const D = modelDims(c.model.config).width;
    const dh1 = new Rng(8).fillNormal(new Float32Array(n * D), 1e-3);
    const hL = new Rng(9).fillNormal(new Float32Array(n * D), 1);
    const steps: number[] = [];
    const heads: number[] = [];
    for (let i = 0; i <= ITERS; i++) {
      let t0 = performance.now();
      await trainer.forward(batch);
      await trainer.backwardAndStep(dh1);
      await drained(trainer);
      const step = performance.now() - t0;
      t0 = performance.now();
      await trainer.headStep(hL, batch.targets);
      const head = performance.now() - t0;
      if (i > 0) {
        steps.push(step);
        heads.push(head);
      }
    }
    return { step: median(steps), head: median(heads) };
  } catch (e) {
    return `failed: ${(e as Error).message.split('\n')[0].slice(0, 80)}`;
  } finally {
    trainer?.destroy();
  }
}

const shipped = loadModelDir(SHIPPED_MODELS['moby-llama-tiny']).model;
const smol: AnyModel = { config: SMOLLM2_135M_CONFIG, weights: randomLlamaWeights(SMOLLM2_135M_CONFIG, 1) };
const CASES: Case[] = [
  { name: 'moby-llama-tiny', model: shipped, k: 1, batch: 4, seq: 64 },
  { name: 'SmolLM2-135M shape', model: smol, k: 1, batch: 1, seq: 64 },
  { name: 'SmolLM2-135M shape', model: smol, k: 2, batch: 1, seq: 64 },
];

console.log(`median of ${ITERS} steps after a warm-up; LoRA r 8 on q_proj, v_proj; ms\n`);
console.log('| model | k | tokens | engine | segment fwd + bwd + AdamW | head (labels on the device) | step |');
console.log('| --- | --- | --- | --- | --- | --- | --- |');
for (const c of CASES) {
  for (const kind of ENGINES) {
    const r = await timeEngine(kind, c);
    const tokens = `${c.batch} x ${c.seq}`;
    if (typeof r === 'string') console.log(`| ${c.name} | ${c.k} | ${tokens} | ${kind} | ${r} | | |`);
    else {
      const total = ms(r.step + r.head);
      console.log(`| ${c.name} | ${c.k} | ${tokens} | ${kind} | ${ms(r.step)} | ${ms(r.head)} | ${total} |`);
    }
  }
}
process.exit(0);
