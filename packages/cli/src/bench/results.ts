/**
 * What a benchmark sweep records: per point its rounds as the cloud reported them (through
 * `simulate --json`), a summary (each process's peak over the rounds, the median round time, the
 * bytes per hop), or why it failed; and results.json, the whole sweep, rewritten after every point
 * so a sweep that is stopped still leaves what it measured.
 *
 * The round lines are parsed strictly: a line without the scheme's figures (bytes per hop, each
 * process's memory) fails its point, since a figure that is silently missing would plot as nothing.
 * The process ids (`pids`) are optional, so that results written before simulate printed them
 * still parse; where present they are checked like the rest.
 */
import { writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import type { TrainingScheme } from '@splitllm/wire';
import { REPO_ROOT } from '../io';
import type { BenchPlan, BenchPoint } from './plan';

/** One process's memory over a round (or, in a summary, over all rounds). */
export interface ProcessPeak {
  /** the process's high-water RSS (VmHWM) during the round, in bytes; null where the platform does not say */
  peakRss: number | null;
  /** the high-water bytes of per-user training state it held: LoRA copies, AdamW moments, saved activations */
  heldPeak: number;
}

export interface RoundPids {
  cloud: number;
  edges: Record<string, number>;
}

export interface RoundFigures {
  round: number;
  version: number;
  /** the round's wall time as the cloud measured it */
  ms: number;
  /** the round's mean training loss */
  loss: number;
  users: number;
  edges: number;
  tokens: number;
  bytes: number;
  userEdgeBytes: number;
  edgeCloudBytes: number;
  memory: { cloud: ProcessPeak; edges: Record<string, ProcessPeak> };
  /**
   * the process ids of the cloud and of each edge (keyed like memory.edges) that ran the round, so that
   * figures sampled per process from outside (scripts/device/gpumem.py's device memory) join the point;
   * absent in results written before simulate printed them
   */
  pids?: RoundPids;
  /** the held-out loss of the global adapter after this round (--eval) */
  heldOutLoss?: number;
}

export interface PointSummary {
  cloud: ProcessPeak;
  /** each edge that trained in some round, its peak over the rounds */
  edges: Record<string, ProcessPeak>;
  /** the largest edge's figures (each field its own maximum) */
  edgeMax: ProcessPeak;
  /** all edges together plus the cloud: the servers' memory for the whole system */
  serversTotal: ProcessPeak;
  /** median over the rounds */
  roundMs: number;
  /** means over the rounds */
  userEdgeBytesPerRound: number;
  edgeCloudBytesPerRound: number;
  finalLoss: number;
  finalHeldOutLoss: number | null;
}

export type PointStatus = 'ok' | 'failed' | 'skipped';

export interface PointResult {
  id: string;
  scheme: TrainingScheme;
  usersPerEdge: number;
  edges: number;
  users: number;
  link: { label: string; spec: string; rateMbps: number | null };
  status: PointStatus;
  /** failed or skipped: why, one line */
  reason?: string;
  /** failed: the tail of simulate's stderr and of the cloud's log */
  logTail?: string;
  /** where the point's own logs are (simulate's --out/logs), relative to --out */
  logDir?: string;
  /** the point's timeout ran out (the sweep skips its larger N) */
  timedOut?: boolean;
  /**
   * the onnxruntime provider each server part ran on ("cloud", "edge-0", ...), from its log: after a
   * fallback it differs from settings.provider; absent in results written before it was recorded
   */
  providers?: Record<string, string>;
  /** when simulate was started (ISO 8601); absent in results written before it was recorded */
  startedAt?: string;
  /** the simulate process's wall time, start-up included */
  wallMs?: number;
  rounds: RoundFigures[];
  summary?: PointSummary;
}

export interface BenchResults {
  tool: 'splitllm bench';
  createdAt: string;
  /** the command's arguments, as given */
  argv: string[];
  machine: { cpus: number; cpuModel: string; totalMemBytes: number; node: string; platform: string };
  settings: {
    schemes: TrainingScheme[];
    usersPerEdge: number[];
    edges: number[];
    links: Array<{ label: string; spec: string; rateMbps: number | null }>;
    model: string;
    rounds: number;
    stepsPerUser: number;
    batchSize: number | null;
    seqLen: number | null;
    aggregation: string;
    engine: string;
    /** the edges' and the cloud's onnxruntime provider; null: the parts' default (cpu); absent in older results */
    provider?: string | null;
    seed: number;
    evalText: string | null;
    timeoutS: number;
    maxUsers: number;
  };
  /** the base model's held-out loss (round 0 of the loss plot), with --eval */
  baseHeldOutLoss: number | null;
  points: PointResult[];
}

// ---------------------------------------------------------------- strict parsing of a round line

function field(j: Record<string, unknown>, key: string, where: string): unknown {
  if (!(key in j) || j[key] === undefined) throw new Error(`${where}: no "${key}"`);
  return j[key];
}

function num(j: Record<string, unknown>, key: string, where: string): number {
  const v = field(j, key, where);
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`${where}: "${key}" is not a number: ${String(v)}`);
  return v;
}

function bytesField(j: Record<string, unknown>, key: string, where: string): number {
  const v = num(j, key, where);
  if (!Number.isSafeInteger(v) || v < 0) throw new Error(`${where}: "${key}" must be an integer >= 0, got ${v}`);
  return v;
}

function processPeak(v: unknown, where: string): ProcessPeak {
  if (typeof v !== 'object' || v === null) throw new Error(`${where}: not an object`);
  const j = v as Record<string, unknown>;
  const rss = field(j, 'peakRss', where);
  if (rss !== null && !(typeof rss === 'number' && Number.isSafeInteger(rss) && rss > 0))
    throw new Error(`${where}: "peakRss" must be a byte count or null, got ${String(rss)}`);
  return { peakRss: rss as number | null, heldPeak: bytesField(j, 'heldPeak', where) };
}

/** A process id: an integer > 0. */
function pidField(v: unknown, where: string): number {
  if (!(typeof v === 'number' && Number.isSafeInteger(v) && v > 0))
    throw new Error(`${where}: a process id must be an integer > 0, got ${String(v)}`);
  return v;
}

/** The round line's `pids`, when it has them (see the header). */
function roundPids(j: Record<string, unknown>, where: string): RoundPids | undefined {
  if (j.pids === undefined) return undefined;
  const p = j.pids as Record<string, unknown>;
  if (typeof p !== 'object' || p === null) throw new Error(`${where}: "pids" is not an object`);
  const edgesRaw = field(p, 'edges', `${where} pids`);
  if (typeof edgesRaw !== 'object' || edgesRaw === null) throw new Error(`${where}: "pids.edges" is not an object`);
  const edges: Record<string, number> = {};
  for (const [id, v] of Object.entries(edgesRaw)) edges[id] = pidField(v, `${where} pids.edges.${id}`);
  return { cloud: pidField(field(p, 'cloud', `${where} pids`), `${where} pids.cloud`), edges };
}

/**
 * One `simulate --json` line as RoundFigures; throws an Error naming the missing or malformed field
 * (a cloud without the scheme's figures, or with another scheme than the point asked for).
 */
export function parseRoundLine(j: Record<string, unknown>, scheme: TrainingScheme): RoundFigures {
  const where = `round line ${JSON.stringify(j).slice(0, 80)}...`;
  const got = field(j, 'scheme', where);
  if (got !== scheme) throw new Error(`${where}: scheme "${String(got)}", the point asked for "${scheme}"`);
  const memory = field(j, 'memory', where) as Record<string, unknown>;
  if (typeof memory !== 'object' || memory === null) throw new Error(`${where}: "memory" is not an object`);
  const edgesRaw = field(memory, 'edges', `${where} memory`);
  if (typeof edgesRaw !== 'object' || edgesRaw === null) throw new Error(`${where}: "memory.edges" is not an object`);
  const edges: Record<string, ProcessPeak> = {};
  for (const [id, e] of Object.entries(edgesRaw)) edges[id] = processPeak(e, `${where} memory.edges.${id}`);
  const pids = roundPids(j, where);
  return {
    round: num(j, 'round', where),
    version: num(j, 'version', where),
    ms: num(j, 'ms', where),
    loss: num(j, 'loss', where),
    users: num(j, 'users', where),
    edges: num(j, 'edges', where),
    tokens: num(j, 'tokens', where),
    bytes: bytesField(j, 'bytes', where),
    userEdgeBytes: bytesField(j, 'userEdgeBytes', where),
    edgeCloudBytes: bytesField(j, 'edgeCloudBytes', where),
    memory: { cloud: processPeak(field(memory, 'cloud', `${where} memory`), `${where} memory.cloud`), edges },
    ...(pids ? { pids } : {}),
  };
}

// ---------------------------------------------------------------- summaries

/** The larger of two peaks, field by field (an RSS the platform did not give stays null). */
function maxPeak(a: ProcessPeak, b: ProcessPeak): ProcessPeak {
  const rss = a.peakRss === null ? b.peakRss : b.peakRss === null ? a.peakRss : Math.max(a.peakRss, b.peakRss);
  return { peakRss: rss, heldPeak: Math.max(a.heldPeak, b.heldPeak) };
}

function sumPeaks(peaks: ProcessPeak[]): ProcessPeak {
  const rss = peaks.every((p) => p.peakRss !== null) ? peaks.reduce((s, p) => s + (p.peakRss as number), 0) : null;
  return { peakRss: rss, heldPeak: peaks.reduce((s, p) => s + p.heldPeak, 0) };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;

/** A point's summary over its rounds (at least one). */
export function summarize(rounds: RoundFigures[]): PointSummary {
  if (rounds.length === 0) throw new Error('summarize: a point with no rounds');
  let cloud = rounds[0].memory.cloud;
  const edges: Record<string, ProcessPeak> = {};
  for (const r of rounds) {
    cloud = maxPeak(cloud, r.memory.cloud);
    for (const [id, e] of Object.entries(r.memory.edges)) edges[id] = edges[id] ? maxPeak(edges[id], e) : e;
  }
  const edgeList = Object.values(edges);
  const edgeMax = edgeList.reduce(maxPeak, { peakRss: null, heldPeak: 0 });
  const last = rounds[rounds.length - 1];
  return {
    cloud,
    edges,
    edgeMax,
    serversTotal: sumPeaks([cloud, ...edgeList]),
    roundMs: median(rounds.map((r) => r.ms)),
    userEdgeBytesPerRound: mean(rounds.map((r) => r.userEdgeBytes)),
    edgeCloudBytesPerRound: mean(rounds.map((r) => r.edgeCloudBytes)),
    finalLoss: last.loss,
    finalHeldOutLoss: last.heldOutLoss ?? null,
  };
}

/** A point's result before it has run: what it is, no figures. */
export function pendingResult(p: BenchPoint): PointResult {
  return {
    id: p.id,
    scheme: p.scheme,
    usersPerEdge: p.usersPerEdge,
    edges: p.edges,
    users: p.users,
    link: { ...p.link },
    status: 'skipped',
    rounds: [],
  };
}

/**
 * A path as results.json shows it: relative to the repository when inside it, so committed
 * results do not carry one machine's checkout path.
 */
export function shownPath(path: string): string {
  const rel = relative(REPO_ROOT, path);
  return rel.startsWith('..') || rel === '' ? path : rel;
}

export function settingsOf(plan: BenchPlan): BenchResults['settings'] {
  return {
    schemes: plan.schemes,
    usersPerEdge: plan.usersPerEdge,
    edges: plan.edges,
    links: plan.links.map((l) => ({
      ...l,
      spec: l.spec.startsWith('table:') ? `table:${shownPath(l.spec.slice('table:'.length))}` : l.spec,
    })),
    model: plan.model.kind === 'dir' ? shownPath(plan.model.dir) : plan.model.label,
    rounds: plan.rounds,
    stepsPerUser: plan.stepsPerUser,
    batchSize: plan.batchSize ?? null,
    seqLen: plan.seqLen ?? null,
    aggregation: plan.aggregation,
    engine: plan.engine,
    provider: plan.provider ?? null,
    seed: plan.seed,
    evalText: plan.evalText === undefined ? null : shownPath(plan.evalText),
    timeoutS: plan.timeoutS,
    maxUsers: plan.maxUsers,
  };
}

export function writeResultsJson(out: string, results: BenchResults): string {
  const file = join(out, 'results.json');
  writeFileSync(file, `${JSON.stringify(results, null, 2)}\n`);
  return file;
}
