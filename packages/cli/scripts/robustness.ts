/**
 * The poisoning measurement (prints figures, asserts nothing): an in-process model of the system's
 * rounds with the real aggregation strategies (@splitllm/federation), the TypeScript reference
 * model and the cloud's own held-out scorer for the validation gate.
 *
 * The model of a round: the shipped model, the default split plan, 2 edges, 1 user per edge per
 * round (the system's default). Edge 0 serves demo users 1 and 3, edge 1 users 2 and 4, in turn.
 * A turn is N steps of AdamW (the run's defaults: batch, sequence, lr) from the global adapter
 * over the whole model: the split training is the central training's math (the equivalence tests
 * establish it), so one turn yields the user's part (blocks [0,k)), the edge's part ([k,m)) and
 * the cloud's per-edge copy ([m,L)). The round hands the six updates, weighted by their tokens,
 * to the strategy, as the cloud does.
 *
 * The attacker takes edge 1's turn in one round and uploads as its user part
 *  - noise: the global plus Gaussian noise scaled to 0.99x the AdamW update-norm bound;
 *  - targeted: the negative of an honest update (N honest steps on the user's text it replaced),
 *    scaled to 0.99x the bound.
 * Its edge and cloud parts are what an honest edge and cloud train on its activations: random
 * activations (at the RMS of an honest user's) with constant targets.
 *
 * Per strategy: R honest rounds from the initial adapter (the honest run: its held-out loss and
 * time per round), then from that state each attack: the attacked round and 10 honest rounds.
 * Held-out loss: demo user-4's held-out text, the first E batches of B x T.
 *
 *   pnpm exec tsx packages/cli/scripts/robustness.ts [--steps N] [--rounds R] [--after A]
 *     [--eval-batches E] [--jobs J] [--strategies a,b,...] [--margin M] [--out FILE]
 *
 * Writes out/robustness.json (or FILE) and prints a markdown table. Defaults: N 20 (the cloud's
 * --steps-per-user), R 2, A 10, E 6, 2 jobs (one per attack): about 16 minutes on 2 shared cores.
 */
import { fork } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import {
  AdamW,
  adapterElementCount,
  adapterSubset,
  blocksBackward,
  blocksForward,
  cloneAdapter,
  DEFAULT_LORA_CONFIG,
  DEFAULT_LORA_TRAIN,
  defaultSplitPlan,
  embedForward,
  evalBatches,
  gpt2ForwardBackward,
  headBackward,
  headForward,
  initLoraAdapter,
  type LoraAdapter,
  loraGradArrays,
  loraParameters,
  meanLoss,
  parseLoraModulePath,
  Rng,
  sampleBatch,
} from '@splitllm/model';
import { loadGpt2Dir } from '@splitllm/model/node';
import { type AdapterUpdate, adamUpdateNormBound, createStrategy, DEFAULT_GATE_MARGIN } from '@splitllm/federation';
// the cloud's own scorer, so the gate here sees what the cloud's does
import { GATE_BATCHES, heldoutScorer } from '@splitllm/cloud-server';

const REPO = join(dirname(fileURLToPath(import.meta.url)), '../../..');
const STRATEGIES = ['fedavg', 'clip-median', 'trimmed-mean', 'coordinate-median', 'gate-fedavg', 'gate-clip-median'];
const ATTACKS = ['noise', 'targeted'] as const;
type Attack = (typeof ATTACKS)[number];

const { values: opt } = parseArgs({
  options: {
    steps: { type: 'string', default: '20' },
    rounds: { type: 'string', default: '2' },
    after: { type: 'string', default: '10' },
    'eval-batches': { type: 'string', default: '6' },
    jobs: { type: 'string', default: '2' },
    strategies: { type: 'string', default: STRATEGIES.join(',') },
    margin: { type: 'string', default: String(DEFAULT_GATE_MARGIN) },
    out: { type: 'string', default: join(REPO, 'out/robustness.json') },
    worker: { type: 'boolean', default: false },
    attack: { type: 'string', default: 'noise' },
  },
});
const N = Number(opt.steps);
const R = Number(opt.rounds);
const AFTER = Number(opt.after);
const EVAL_BATCHES = Number(opt['eval-batches']);
const MARGIN = Number(opt.margin);
const strategies = opt.strategies.split(',').filter(Boolean);
for (const s of strategies) if (!STRATEGIES.includes(s)) throw new Error(`unknown strategy "${s}"`);

// ------------------------------------------------------------------------------ the system's setup

const loaded = loadGpt2Dir(join(REPO, 'packages/assets/models/moby-tiny'));
const model = { config: loaded.config, weights: loaded.weights };
const c = model.config;
const plan = defaultSplitPlan(c);
const { batchSize: B, seqLen: T, adamw } = DEFAULT_LORA_TRAIN;
const SEED = 0;
const encode = (file: string) => loaded.tokenizer.encode(readFileSync(join(REPO, file), 'utf8'));
const users = [1, 2, 3, 4].map((i) => encode(`packages/assets/data/sotu/train/user-${i}.txt`));
const evalSet = evalBatches(encode('packages/assets/data/sotu/heldout/user-4.txt'), B, T, c.eosTokenId).slice(
  0,
  EVAL_BATCHES,
);
const evalTokens = evalSet.reduce((n, b) => n + b.B * b.T, 0);
// the cloud's gate: the Moby-Dick held-out chapters (public text the cloud ships), its default slice
const GATE_FILE = 'packages/assets/data/moby-dick/heldout.txt';
const scorer = heldoutScorer(model, loaded.tokenizer, join(REPO, GATE_FILE), B, T);
const initial = initLoraAdapter(c, DEFAULT_LORA_CONFIG, SEED);
const userElements = adapterElementCount(adapterSubset(initial, 0, plan.k));
const bound = adamUpdateNormBound(adamw.lr, N, userElements);

const heldout = (a: LoraAdapter | undefined) => meanLoss(model, a, evalSet).loss;
/** the user edge e trains in round r (1-based): edge 0 serves users 1 and 3, edge 1 users 2 and 4 */
const userOf = (edge: number, round: number) => edge + 2 * ((round - 1) % 2);
/** batches depend on (user, round) only, so every strategy's run sees the same data */
const batchRng = (user: number, round: number) => new Rng(1_000_003 * (user + 1) + round);

function tier(path: string): 'user' | 'edge' | 'cloud' {
  const layer = parseLoraModulePath(path)!.layer;
  return layer < plan.k ? 'user' : layer < plan.m ? 'edge' : 'cloud';
}

/** The modules of `a` in one tier, arrays shared. */
function part(a: LoraAdapter, t: 'user' | 'edge' | 'cloud'): LoraAdapter {
  return { config: a.config, layers: new Map([...a.layers].filter(([path]) => tier(path) === t)) };
}

interface Turn {
  adapter: LoraAdapter;
  tokens: number;
}

/** An honest turn: N AdamW steps of the whole model from the global adapter on the user's text. */
function honestTurn(global: LoraAdapter, user: number, round: number): Turn {
  const a = cloneAdapter(global);
  const opt = new AdamW(loraParameters(a), adamw);
  const rng = batchRng(user, round);
  let tokens = 0;
  for (let s = 0; s < N; s++) {
    const r = gpt2ForwardBackward(model, a, sampleBatch(users[user], B, T, rng, c.eosTokenId));
    opt.step(loraGradArrays(r.loraGrads));
    tokens += r.count;
  }
  return { adapter: a, tokens };
}

/** RMS of an honest user's activations at the cut (what the attacker's random ones imitate). */
const h1Rms = (() => {
  const b = sampleBatch(users[0], B, T, new Rng(7), c.eosTokenId);
  const h0 = embedForward(model, b.inputIds, B, T);
  const h1 = blocksForward(model, initial, h0, B, T, 0, plan.k).y;
  let sq = 0;
  for (const v of h1) sq += v * v;
  return Math.sqrt(sq / h1.length);
})();

/** The attacker's turn: its user part, and what the edge and cloud train on its random activations. */
function attackerTurn(global: LoraAdapter, attack: Attack, round: number): Turn {
  const rng = new Rng(4242 + round);
  // edge and cloud: honest AdamW on random activations and constant targets
  const a = cloneAdapter(global);
  const served = { config: a.config, layers: new Map([...a.layers].filter(([p]) => tier(p) !== 'user')) };
  const opt = new AdamW(loraParameters(served), adamw);
  const targets = new Int32Array(B * T).fill(0);
  let tokens = 0;
  for (let s = 0; s < N; s++) {
    const h1 = rng.fillNormal(new Float32Array(B * T * c.nEmbd), h1Rms);
    const fwd = blocksForward(model, a, h1, B, T, plan.k, c.nLayer);
    const head = headForward(model, fwd.y, targets, B, T);
    const back = blocksBackward(model, a, fwd.cache, headBackward(model, head.cache));
    opt.step(loraGradArrays(back.loraGrads));
    tokens += head.count;
  }
  // user part: global + direction scaled to 0.99x the bound
  const g = part(global, 'user');
  const dir = cloneAdapter(g);
  if (attack === 'noise') {
    for (const p of dir.layers.values()) for (const t of [p.A, p.B]) rng.fillNormal(t.data, 1);
  } else {
    // the negative of the honest update the replaced user would have sent
    const honest = part(honestTurn(global, userOf(1, round), round).adapter, 'user');
    for (const [path, p] of dir.layers) {
      const h = honest.layers.get(path)!;
      const gp = g.layers.get(path)!;
      for (const half of ['A', 'B'] as const)
        for (let i = 0; i < p[half].data.length; i++) p[half].data[i] = gp[half].data[i] - h[half].data[i];
    }
  }
  let sq = 0;
  for (const p of dir.layers.values()) for (const t of [p.A, p.B]) for (const v of t.data) sq += v * v;
  const scale = (0.99 * bound) / Math.sqrt(sq);
  for (const [path, p] of dir.layers) {
    const gp = g.layers.get(path)!;
    for (const half of ['A', 'B'] as const)
      for (let i = 0; i < p[half].data.length; i++) p[half].data[i] = gp[half].data[i] + scale * p[half].data[i];
  }
  for (const [path, pair] of dir.layers) a.layers.set(path, pair);
  return { adapter: a, tokens };
}

interface RoundFigures {
  round: number;
  phase: string;
  /** the two turns' training, shared by every strategy whose global adapter is the same */
  trainMs: number;
  /** this strategy's aggregate (the gate's scoring included) */
  aggregationMs: number;
  refused: string[];
}

/**
 * Strategies whose global adapters are bitwise equal share one run: the same updates go to each
 * one's aggregate, and the run splits where their results differ. Exact (the turns depend only on
 * the global adapter, the user and the round), and it spares training the same turns twice, e.g.
 * trimmed-mean and coordinate-median fall back to the token-weighted mean with 2 updates a module.
 */
interface Run {
  members: string[];
  global: LoraAdapter;
}

const sameAdapter = (a: LoraAdapter, b: LoraAdapter) =>
  [...a.layers].every(([path, p]) => {
    const q = b.layers.get(path)!;
    return (['A', 'B'] as const).every((h) => p[h].data.every((v, i) => Object.is(v, q[h].data[i])));
  });

const strategyObjects = new Map(
  STRATEGIES.map((name) => [name, createStrategy(name, { score: scorer.score, margin: MARGIN })]),
);
const figures = new Map<string, RoundFigures[]>();
const resetFigures = () => {
  for (const n of STRATEGIES) figures.set(n, []);
};
resetFigures();

/** One round for every run: two turns (edge 1's by the attacker when given), then each member's aggregate. */
function runRound(runs: Run[], round: number, phase: string, attack?: Attack): Run[] {
  const out: Run[] = [];
  for (const run of runs) {
    const t0 = performance.now();
    const updates: AdapterUpdate[] = [];
    for (const edge of [0, 1]) {
      const user = userOf(edge, round);
      const attacked = attack !== undefined && edge === 1;
      const t = attacked ? attackerTurn(run.global, attack, round) : honestTurn(run.global, user, round);
      const who = attacked ? 'attacker' : `u${user + 1}`;
      const parts: Array<[string, number, number]> = [
        [`user:${who}`, 0, plan.k],
        [`edge:e${edge}`, plan.k, plan.m],
        [`cloud:e${edge}`, plan.m, c.nLayer],
      ];
      for (const [from, a, b] of parts)
        updates.push({ from, adapter: adapterSubset(t.adapter, a, b), tokens: t.tokens });
    }
    const trainMs = performance.now() - t0;
    const results: Run[] = [];
    for (const name of run.members) {
      const strategy = strategyObjects.get(name)!;
      const t1 = performance.now();
      const next = strategy.aggregate(run.global, updates);
      const aggregationMs = performance.now() - t1;
      const refused = strategy.lastReport?.refused.map((r) => r.from) ?? [];
      figures.get(name)!.push({ round, phase, trainMs, aggregationMs, refused });
      const same = results.find((r) => sameAdapter(r.global, next));
      if (same) same.members.push(name);
      else results.push({ members: [name], global: next });
    }
    out.push(...results);
  }
  return out;
}

interface JobResult {
  attack: Attack;
  /** held-out loss per strategy: after the honest rounds, after the attacked round, AFTER rounds later */
  losses: Record<string, { before: number; after: number; later: number }>;
  figures: Record<string, RoundFigures[]>;
}

/** Loss of each member of each run (one evaluation per run). */
function lossesOf(runs: Run[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const r of runs) {
    const loss = heldout(r.global);
    for (const name of r.members) m.set(name, loss);
  }
  return m;
}

/** The honest rounds, then one attack and AFTER honest rounds, for the strategies named. */
function job(attack: Attack): JobResult {
  let runs: Run[] = [{ members: strategies, global: cloneAdapter(initial) }];
  for (let r = 1; r <= R; r++) runs = runRound(runs, r, 'honest');
  const before = lossesOf(runs);
  runs = runRound(runs, R + 1, 'attacked', attack);
  const after = lossesOf(runs);
  log(`${attack}: attacked round done; ${runs.length} distinct global adapter(s)`);
  for (let r = R + 2; r <= R + 1 + AFTER; r++) runs = runRound(runs, r, 'after');
  const later = lossesOf(runs);
  const losses: JobResult['losses'] = {};
  for (const s of strategies) {
    losses[s] = { before: before.get(s)!, after: after.get(s)!, later: later.get(s)! };
    log(
      `${s} ${attack}: before ${f4(losses[s].before)}, after ${f4(losses[s].after)}, +${AFTER} ${f4(losses[s].later)}`,
    );
  }
  return { attack, losses, figures: Object.fromEntries(strategies.map((s) => [s, figures.get(s)!])) };
}

const f4 = (x: number) => x.toFixed(4);

function log(line: string): void {
  process.stderr.write(`${line}\n`);
}

// ------------------------------------------------------------------------------ jobs and report

if (opt.worker) {
  // a child job: one attack, sent back to the parent
  process.send!(job(opt.attack as Attack), () => process.exit(0));
} else {
  await main();
}

async function main(): Promise<void> {
  const t0 = performance.now();
  const jobs = Math.max(1, Math.min(Number(opt.jobs), ATTACKS.length));
  log(
    `robustness: ${strategies.length} strategies, ${jobs} job(s); ${N} steps per turn, ${R} honest rounds, ` +
      `${AFTER} rounds after the attack; eval ${evalSet.length} x ${B} x ${T} tokens`,
  );
  const script = fileURLToPath(import.meta.url);
  const passOn = ['--steps', String(N), '--rounds', String(R), '--after', String(AFTER)];
  passOn.push('--eval-batches', String(EVAL_BATCHES), '--margin', String(MARGIN));
  passOn.push('--strategies', strategies.join(','), '--worker');
  const inChild = (attack: Attack) =>
    new Promise<JobResult>((res, rej) => {
      const child = fork(script, [...passOn, '--attack', attack], { execArgv: process.execArgv });
      let got: JobResult | undefined;
      child.on('message', (m) => {
        got = m as JobResult;
      });
      child.on('exit', (code) => (got ? res(got) : rej(new Error(`the ${attack} job exited (${code})`))));
    });
  // one job per attack, each with its own honest rounds (the same ones: the run is deterministic)
  const done: JobResult[] =
    jobs > 1
      ? await Promise.all(ATTACKS.map(inChild))
      : ATTACKS.map((a) => {
          resetFigures();
          return job(a);
        });
  const by = Object.fromEntries(done.map((d) => [d.attack, d])) as Record<Attack, JobResult>;
  const base = heldout(undefined);
  const init = heldout(initial);
  const totalS = (performance.now() - t0) / 1000;
  const mean = (xs: number[]) => xs.reduce((s, v) => s + v, 0) / Math.max(1, xs.length);
  const results = strategies.map((s) => {
    // the honest run's figures from the first job (the second's honest rounds are the same rounds)
    const honest = by.noise.figures[s].filter((x) => x.phase === 'honest');
    const refusedHonest = ATTACKS.flatMap((a) => by[a].figures[s].filter((x) => x.phase !== 'attacked')).flatMap(
      (x) => x.refused,
    );
    return {
      strategy: s,
      honest: {
        lossAfter: by.noise.losses[s].before,
        msPerRound: mean(honest.map((x) => x.trainMs + x.aggregationMs)),
        aggregationMsPerRound: mean(honest.map((x) => x.aggregationMs)),
        /** honest updates a gate refused, in every honest round of both jobs */
        refusedHonest,
      },
      attacks: Object.fromEntries(
        ATTACKS.map((a) => [
          a,
          {
            ...by[a].losses[s],
            refusedInAttack: by[a].figures[s].filter((x) => x.phase === 'attacked').flatMap((x) => x.refused),
          },
        ]),
      ) as Record<Attack, { before: number; after: number; later: number; refusedInAttack: string[] }>,
      rounds: Object.fromEntries(ATTACKS.map((a) => [a, by[a].figures[s]])),
    };
  });

  const f = (x: number) => x.toFixed(3);
  const refusedCell = (xs: string[]) => (xs.length ? xs.join(', ') : 'none');
  const lines = [
    `| strategy | honest run: loss after ${R} rounds | s per round | of which aggregation, ms | ` +
      `noise: after the attacked round | noise: ${AFTER} rounds later | targeted: after the attacked round | ` +
      `targeted: ${AFTER} rounds later | refused in the attacked round (noise; targeted) |`,
    '|---|---|---|---|---|---|---|---|---|',
    ...results.map(
      (r) =>
        `| ${r.strategy} | ${f(r.honest.lossAfter)} | ${(r.honest.msPerRound / 1000).toFixed(1)} | ` +
        `${r.honest.aggregationMsPerRound.toFixed(0)} | ${f(r.attacks.noise.after)} | ${f(r.attacks.noise.later)} | ` +
        `${f(r.attacks.targeted.after)} | ${f(r.attacks.targeted.later)} | ` +
        `${refusedCell(r.attacks.noise.refusedInAttack)}; ${refusedCell(r.attacks.targeted.refusedInAttack)} |`,
    ),
  ];
  console.log(lines.join('\n'));
  console.log(
    `\nheld-out loss (demo user-4 held-out text, ${evalTokens} tokens): base model ${f(base)}, ` +
      `initial adapter ${f(init)}; the attacked round starts from the honest run's state. ` +
      `User-part update-norm bound ${bound.toFixed(3)} (lr ${adamw.lr}, ${N} steps, ${userElements} values). ` +
      `Honest updates refused: ${results.map((r) => `${r.strategy} ${r.honest.refusedHonest.length}`).join(', ')}. ` +
      `Total ${totalS.toFixed(0)} s.`,
  );
  const report = {
    command: `pnpm exec tsx packages/cli/scripts/robustness.ts ${process.argv.slice(2).join(' ')}`.trim(),
    settings: {
      model: 'packages/assets/models/moby-tiny',
      plan,
      edges: 2,
      usersPerEdgePerRound: 1,
      stepsPerTurn: N,
      batch: B,
      seq: T,
      adamw,
      honestRounds: R,
      roundsAfterAttack: AFTER,
      evalText: 'packages/assets/data/sotu/heldout/user-4.txt',
      evalTokens,
      gate: { text: GATE_FILE, batches: GATE_BATCHES, margin: MARGIN },
      userPartBound: bound,
      attackerActivationRms: h1Rms,
      jobs,
    },
    baseModelLoss: base,
    initialAdapterLoss: init,
    results,
    totalSeconds: totalS,
    markdown: lines.join('\n'),
  };
  mkdirSync(dirname(opt.out), { recursive: true });
  writeFileSync(opt.out, `${JSON.stringify(report, null, 2)}\n`);
  log(`written to ${opt.out}`);
}
