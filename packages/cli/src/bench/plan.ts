/**
 * A benchmark sweep's settings and its grid of points, from `splitllm bench`'s options. Every
 * setting that cannot work (N or E below 1, a link rate of 0, an unknown scheme or model) is a
 * UsageError here, one line, before any process starts or any file is written.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { AGGREGATION_NAMES } from '@splitllm/federation';
import { EXECUTION_PROVIDERS, type ExecutionProvider } from '@splitllm/onnx-runner';
import { LinkError, parseLinkSpec } from '@splitllm/user-client/node';
import { TRAINING_SCHEMES, type TrainingScheme } from '@splitllm/wire';
import { type Args, UsageError } from '../args';
import { REPO_ROOT } from '../io';
import { type ModelSpec, parseModelSpec } from './model';

/** One value of the link axis: what every user of a point gets between itself and its edge. */
export interface LinkSetting {
  /** how tables and plots name it: "none", "10 Mbps", or the spec */
  label: string;
  /** `simulate --links` takes this; a rate's is a table under --out, written when the sweep starts */
  spec: string;
  /** a rate setting's Mbps each way (the round-time-vs-link-rate plot's x); null for the others */
  rateMbps: number | null;
}

/** A rate setting's link: the rate each way, this latency, no loss (so only the rate varies). */
export const RATE_LINK_LATENCY_MS = 10;

export interface BenchPlan {
  schemes: TrainingScheme[];
  /** N, ascending */
  usersPerEdge: number[];
  /** E, ascending */
  edges: number[];
  links: LinkSetting[];
  model: ModelSpec;
  rounds: number;
  stepsPerUser: number;
  /** passed to simulate only when given (simulate's defaults otherwise) */
  batchSize?: number;
  seqLen?: number;
  aggregation: string;
  /** the headless users' engine (simulate --engine) */
  engine: string;
  /** the edges' and the cloud's onnxruntime provider (simulate --provider); undefined: the parts' default, cpu */
  provider?: ExecutionProvider;
  seed: number;
  /** the held-out text scored after each round, when --eval */
  evalText?: string;
  /** seconds one point may take before it is stopped and recorded as failed */
  timeoutS: number;
  /** points with more users than this are recorded as skipped, not run */
  maxUsers: number;
  out: string;
}

export interface BenchPoint {
  /** 1-based, in run order */
  index: number;
  /** unique in the sweep, a file name: "sfl-N4-E2", with "-<link>" when the sweep has several links */
  id: string;
  scheme: TrainingScheme;
  usersPerEdge: number;
  edges: number;
  users: number;
  link: LinkSetting;
}

export const BENCH_DEFAULTS = {
  schemes: 'hierarchical,sfl,sequential',
  usersPerEdge: '1,2,4,8,16,32',
  edges: '1,2,4',
  links: 'none',
  rounds: 2,
  stepsPerUser: 2,
  seed: 1,
  timeoutS: 900,
  maxUsers: 32,
  // FedAvg: what split-federated learning and the papers aggregate with; the shipped default gate
  // scores every candidate with the TypeScript model, minutes a round at GPT-2 small (see docs/bench-sweep.md)
  aggregation: 'fedavg',
  engine: 'auto',
} as const;

/** What `simulate --engine` takes. */
export const USER_ENGINES = ['auto', 'wgsl', 'wasm', 'reference'];

export const SOTU_TRAIN = join(REPO_ROOT, 'packages/assets/data/sotu/train');
export const SOTU_HELDOUT = join(REPO_ROOT, 'packages/assets/data/sotu/heldout');

/** "1,2,4" -> [1, 2, 4]: integers >= 1, duplicates dropped, ascending. */
export function parseCounts(raw: string, flag: string): number[] {
  const items = raw.split(',').map((s) => s.trim());
  const out = items.map((s) => {
    const v = /^-?\d+$/.test(s) ? Number(s) : Number.NaN;
    if (!(Number.isSafeInteger(v) && v >= 1))
      throw new UsageError(`bench: --${flag} must be integers >= 1, got "${s}"`);
    return v;
  });
  return [...new Set(out)].sort((a, b) => a - b);
}

export function parseSchemes(raw: string): TrainingScheme[] {
  const out = raw.split(',').map((s) => {
    const v = s.trim();
    if (!(TRAINING_SCHEMES as readonly string[]).includes(v))
      throw new UsageError(`bench: unknown scheme "${v}" (--schemes takes ${TRAINING_SCHEMES.join(', ')})`);
    return v as TrainingScheme;
  });
  return [...new Set(out)];
}

/**
 * The link axis: comma-separated settings, each `none`, a rate in Mbps (every user gets that rate
 * up and down, RATE_LINK_LATENCY_MS of latency and no loss), or a `simulate --links` spec
 * (table:FILE.json, random:SEED[:LO-HI], shannon:SEED[:RADIUS]), checked now.
 */
export function parseLinks(raw: string, out: string): LinkSetting[] {
  const links: LinkSetting[] = [];
  for (const item of raw.split(',').map((s) => s.trim())) {
    if (/^[-+.\deE]+$/.test(item)) {
      const mbps = Number(item);
      if (!Number.isFinite(mbps)) throw new UsageError(`bench: --links rate "${item}" is not a number of Mbps`);
      if (mbps <= 0) throw new UsageError(`bench: --links rate ${item} Mbps: a link needs a rate > 0`);
      links.push({
        label: `${mbps} Mbps`,
        spec: `table:${join(out, 'points', 'links', `${rateSlug(mbps)}.json`)}`,
        rateMbps: mbps,
      });
      continue;
    }
    try {
      const parsed = parseLinkSpec(item);
      links.push({ label: parsed.kind === 'none' ? 'none' : item, spec: parsed.spec, rateMbps: null });
    } catch (e) {
      if (e instanceof LinkError) throw new UsageError(`bench: --links: ${e.message}`);
      throw e;
    }
  }
  const labels = links.map((l) => l.label);
  const twice = labels.find((l, i) => labels.indexOf(l) !== i);
  if (twice) throw new UsageError(`bench: --links names "${twice}" twice`);
  return links;
}

/** "2.5" Mbps -> "2p5mbps": a file name's part. */
const rateSlug = (mbps: number) => `${String(mbps).replace('.', 'p')}mbps`;

/** The default --out: bench-results/<local date and time> under the repository. */
function defaultOut(): string {
  const d = new Date();
  const p = (n: number) => String(n).padStart(2, '0');
  const stamp = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}${p(d.getMinutes())}`;
  return join(REPO_ROOT, 'bench-results', stamp);
}

export function parsePlan(args: Args): BenchPlan {
  const schemes = parseSchemes(args.optionalString('schemes') ?? BENCH_DEFAULTS.schemes);
  const usersPerEdge = parseCounts(
    args.optionalString('users-per-edge') ?? BENCH_DEFAULTS.usersPerEdge,
    'users-per-edge',
  );
  const edges = parseCounts(args.optionalString('edges') ?? BENCH_DEFAULTS.edges, 'edges');
  const seed = args.int('seed', BENCH_DEFAULTS.seed);
  const model = parseModelSpec(args.optionalString('model') ?? 'shipped', seed);
  const rounds = args.int('rounds', BENCH_DEFAULTS.rounds, 1);
  const stepsPerUser = args.int('steps-per-user', BENCH_DEFAULTS.stepsPerUser, 1);
  const batchSize = args.optionalString('batch-size') === undefined ? undefined : args.int('batch-size', undefined, 1);
  const seqLen = args.optionalString('seq-len') === undefined ? undefined : args.int('seq-len', undefined, 2);
  if (seqLen !== undefined && seqLen > model.nPositions)
    throw new UsageError(`bench: --seq-len ${seqLen} exceeds the model's n_positions ${model.nPositions}`);
  const aggregation = args.optionalString('aggregation') ?? BENCH_DEFAULTS.aggregation;
  if (!AGGREGATION_NAMES.includes(aggregation))
    throw new UsageError(`bench: --aggregation must be one of ${AGGREGATION_NAMES.join(', ')}, got "${aggregation}"`);
  const engine = args.optionalString('engine') ?? BENCH_DEFAULTS.engine;
  if (!USER_ENGINES.includes(engine))
    throw new UsageError(`bench: --engine must be one of ${USER_ENGINES.join(', ')}, got "${engine}"`);
  const providerArg = args.optionalString('provider');
  if (providerArg !== undefined && !(EXECUTION_PROVIDERS as readonly string[]).includes(providerArg))
    throw new UsageError(`bench: --provider must be one of ${EXECUTION_PROVIDERS.join(', ')}, got "${providerArg}"`);
  const provider = providerArg as ExecutionProvider | undefined;
  const timeoutS = args.float('timeout', BENCH_DEFAULTS.timeoutS, 1);
  const maxUsers = args.int('max-users', BENCH_DEFAULTS.maxUsers, 1);

  let evalText: string | undefined;
  const evalTextArg = args.optionalString('eval-text');
  if (args.flag('eval') || evalTextArg !== undefined) {
    if (model.kind === 'random') {
      throw new UsageError(
        `bench: --eval scores the held-out text with a trained model; ${model.label} has random weights ` +
          '(and its TypeScript evaluation at that size would take hours)',
      );
    }
    evalText = evalTextArg === undefined ? SOTU_HELDOUT : resolve(evalTextArg);
    if (!existsSync(evalText)) throw new UsageError(`bench: --eval-text "${evalTextArg}" does not exist`);
  }

  const out = resolve(args.optionalString('out') ?? defaultOut());
  // a sweep never mixes its results with an earlier one's
  if (existsSync(out) && readdirSync(out).length > 0)
    throw new UsageError(`bench: --out "${out}" is not empty; choose a new directory`);
  const links = parseLinks(args.optionalString('links') ?? BENCH_DEFAULTS.links, out);
  return {
    schemes,
    usersPerEdge,
    edges,
    links,
    model,
    rounds,
    stepsPerUser,
    batchSize,
    seqLen,
    aggregation,
    engine,
    provider,
    seed,
    evalText,
    timeoutS,
    maxUsers,
    out,
  };
}

/** A file name's part for a link setting. */
function linkSlug(l: LinkSetting, i: number): string {
  if (l.rateMbps !== null) return rateSlug(l.rateMbps);
  return l.label === 'none' ? 'none' : `link${i + 1}`;
}

/**
 * The points in run order: per link setting, per E, N ascending, the schemes side by side at each
 * N (so a scheme's points at one N run close together in time, under the same load of the machine).
 */
export function planPoints(plan: BenchPlan): BenchPoint[] {
  const points: BenchPoint[] = [];
  plan.links.forEach((link, li) => {
    for (const E of plan.edges) {
      for (const N of plan.usersPerEdge) {
        for (const scheme of plan.schemes) {
          const suffix = plan.links.length > 1 ? `-${linkSlug(link, li)}` : '';
          points.push({
            index: points.length + 1,
            id: `${scheme}-N${N}-E${E}${suffix}`,
            scheme,
            usersPerEdge: N,
            edges: E,
            users: N * E,
            link,
          });
        }
      }
    }
  });
  return points;
}
