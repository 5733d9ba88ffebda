/**
 * Figures for the validation gate, on the shipped model with the cloud's default settings:
 * the cost of scoring one candidate (the held-out slice the cloud uses), and how much the
 * held-out loss moves with an honest user's update (20 reference AdamW steps on a user's text)
 * against the noise attack at 0.99x the update-norm bound and the negative of the honest update.
 *
 *   pnpm exec tsx apps/cloud-server/scripts/gate-figures.ts
 */
import { adamUpdateNormBound, changeNorm, substitute } from '@splitllm/federation';
import {
  adapterElementCount,
  adapterSubset,
  cloneAdapter,
  DEFAULT_LORA_CONFIG,
  DEFAULT_LORA_TRAIN,
  defaultSplitPlan,
  initLoraAdapter,
  type LoraAdapter,
  Rng,
  trainLoraCentral,
} from '@splitllm/model';
import { loadGpt2Dir } from '@splitllm/model/node';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GATE_BATCHES, heldoutScorer } from '../src/gate';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const loaded = loadGpt2Dir(join(REPO, 'packages/assets/models/moby-tiny'));
const model = { config: loaded.config, weights: loaded.weights };
const { batchSize: B, seqLen: T, adamw } = DEFAULT_LORA_TRAIN;
const STEPS = 20;
const plan = defaultSplitPlan(model.config);
const scorer = heldoutScorer(
  model,
  loaded.tokenizer,
  join(REPO, 'packages/assets/data/moby-dick/heldout.txt'),
  B,
  T,
  Number(process.env.GATE_BATCHES ?? GATE_BATCHES),
);

const global = initLoraAdapter(model.config, DEFAULT_LORA_CONFIG, 0);
const userGlobal = adapterSubset(global, 0, plan.k);
const bound = adamUpdateNormBound(adamw.lr, STEPS, adapterElementCount(userGlobal));

// cost per candidate
for (let i = 0; i < 2; i++) scorer.score(global); // warm-up
const N = 10;
const t0 = performance.now();
let g0 = 0;
for (let i = 0; i < N; i++) g0 = scorer.score(global);
const ms = (performance.now() - t0) / N;
console.log(
  `score: ${scorer.batches} batches x ${B} x ${T} = ${scorer.tokens} tokens, ${ms.toFixed(1)} ms per candidate ` +
    `(mean of ${N}); global loss ${g0.toFixed(4)}; ` +
    `user-part bound ${bound.toFixed(3)} (lr ${adamw.lr}, ${STEPS} steps)`,
);

/** global's user part moved by `change` scaled to `norm` (or as is). */
function along(change: LoraAdapter, scale: number): LoraAdapter {
  const out = cloneAdapter(userGlobal);
  for (const [path, p] of out.layers) {
    const c = change.layers.get(path)!;
    for (const half of ['A', 'B'] as const)
      for (let i = 0; i < p[half].data.length; i++) p[half].data[i] += scale * c[half].data[i];
  }
  return out;
}
function difference(a: LoraAdapter, b: LoraAdapter): LoraAdapter {
  const out = cloneAdapter(a);
  for (const [path, p] of out.layers) {
    const q = b.layers.get(path)!;
    for (const half of ['A', 'B'] as const)
      for (let i = 0; i < p[half].data.length; i++) p[half].data[i] -= q[half].data[i];
  }
  return out;
}

const trainDir = join(REPO, 'packages/assets/data/sotu/train');
const deltas: number[] = [];
let honestChange: LoraAdapter | undefined;
for (const f of readdirSync(trainDir).sort()) {
  const tokens = loaded.tokenizer.encode(readFileSync(join(trainDir, f), 'utf8'));
  const trained = trainLoraCentral(model, tokens, {
    lora: DEFAULT_LORA_CONFIG,
    steps: STEPS,
    seed: 0,
    batchSize: B,
    seqLen: T,
    adamw,
  });
  const user = adapterSubset(trained, 0, plan.k);
  const d = scorer.score(substitute(global, user)) - g0;
  const whole = scorer.score(trained) - g0;
  const edge = scorer.score(substitute(global, adapterSubset(trained, plan.k, plan.m))) - g0;
  const cloud = scorer.score(substitute(global, adapterSubset(trained, plan.m, model.config.nLayer))) - g0;
  deltas.push(edge, cloud);
  deltas.push(d);
  honestChange ??= difference(user, userGlobal);
  console.log(
    `honest ${f}: user-part norm ${changeNorm(userGlobal, user).toFixed(3)}, delta ${d.toFixed(4)} nats; ` +
      `edge part ${edge.toFixed(4)}, cloud part ${cloud.toFixed(4)}, whole adapter ${whole.toFixed(4)}`,
  );
}
const rng = new Rng(1);
const noiseDir = cloneAdapter(userGlobal);
for (const p of noiseDir.layers.values())
  for (const t of [p.A, p.B]) for (let i = 0; i < t.data.length; i++) t.data[i] = rng.normal();
const noise = along(
  noiseDir,
  (0.99 * bound) /
    changeNorm(
      adapterSubset(initLoraAdapter(model.config, { ...DEFAULT_LORA_CONFIG }, 0), 0, plan.k),
      along(noiseDir, 1),
    ),
);
console.log(
  `noise at 0.99x bound (norm ${changeNorm(userGlobal, noise).toFixed(3)}): ` +
    `delta ${(scorer.score(substitute(global, noise)) - g0).toFixed(4)} nats`,
);
const hn = changeNorm(userGlobal, along(honestChange!, 1));
const neg = along(honestChange!, (-0.99 * bound) / hn);
console.log(
  `negative of the honest update at 0.99x bound: delta ${(scorer.score(substitute(global, neg)) - g0).toFixed(4)} nats`,
);
const neg1 = along(honestChange!, -1);
console.log(
  `negative of the honest update at its own norm ${hn.toFixed(3)}: ` +
    `delta ${(scorer.score(substitute(global, neg1)) - g0).toFixed(4)} nats`,
);
console.log(`honest deltas: max ${Math.max(...deltas).toFixed(4)}, min ${Math.min(...deltas).toFixed(4)}`);
