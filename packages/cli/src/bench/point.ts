/**
 * One point of a benchmark sweep: `splitllm simulate --json` as a child process (a cloud, E edges
 * and N x E headless users, each its own process), its round lines parsed as they come, stopped
 * when the point's timeout runs out, and with --eval the held-out loss of every round's global
 * adapter from `splitllm eval`. A point that fails says why and keeps the tail of its logs; it
 * never throws, so the sweep goes on.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { REPO_ROOT } from '../io';
import { logTail } from '../launcher';
import type { BenchPlan, BenchPoint } from './plan';
import { SOTU_TRAIN } from './plan';
import { type PointResult, parseRoundLine, pendingResult, type RoundFigures, summarize } from './results';

const MAIN = join(REPO_ROOT, 'packages/cli/src/main.ts');

/** How long a stopped simulate gets to stop its parts (each gets 10 s from it) before it is killed. */
const STOP_GRACE_MS = 30_000;

/** What the sweep's runner can ask of a running point. */
export interface RunningChild {
  /** stops the child now (the sweep is interrupted) */
  stop(why: string): void;
}

export interface PointContext {
  modelDir: string;
  /** the concatenated held-out text, when --eval */
  heldoutFile?: string;
  /** where the point's directory goes: <pointsDir>/<id> */
  pointsDir: string;
  /** one progress line on stderr */
  log: (line: string) => void;
  /** told of each child while it runs, so an interrupt can stop it */
  onChild: (c: RunningChild | undefined) => void;
}

interface ChildOutcome {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  /** why it was stopped: the timeout, or an interrupt */
  stopped?: string;
  timedOut: boolean;
}

/**
 * Runs `splitllm ARGS` with a time limit: SIGTERM when it runs out (simulate then stops its parts),
 * SIGKILL STOP_GRACE_MS later. `onLine` gets each stdout line that parses as JSON.
 */
function runCli(
  args: string[],
  timeoutMs: number,
  onLine: (j: Record<string, unknown>) => void,
  onChild: (c: RunningChild | undefined) => void,
): Promise<ChildOutcome> {
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', MAIN, ...args], {
    cwd: REPO_ROOT,
    // SPLITLLM_DEBUG: the error's stack, which carries the failing part's log tail simulate attaches
    env: { ...process.env, SPLITLLM_DEBUG: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (s: string) => {
    // the tail is what matters; a long run's warnings should not grow without bound
    stderr = (stderr + s).slice(-64_000);
  });
  createInterface({ input: child.stdout! }).on('line', (line) => {
    let j: unknown;
    try {
      j = JSON.parse(line);
    } catch {
      return;
    }
    if (typeof j === 'object' && j !== null) onLine(j as Record<string, unknown>);
  });
  let stopped: string | undefined;
  let killTimer: NodeJS.Timeout | undefined;
  const stop = (why: string) => {
    if (stopped !== undefined || child.exitCode !== null || child.signalCode !== null) return;
    stopped = why;
    child.kill('SIGTERM');
    killTimer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
  };
  const timer = setTimeout(() => stop(`timed out after ${timeoutMs / 1000} s`), timeoutMs);
  onChild({ stop });
  return new Promise((res) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      clearTimeout(killTimer);
      onChild(undefined);
      res({ code, signal, stderr, stopped, timedOut: stopped?.startsWith('timed out') === true });
    });
  });
}

/** The last `n` lines of `text`. */
function lastLines(text: string, n: number): string {
  return text.trimEnd().split('\n').slice(-n).join('\n');
}

/** One line saying why a child failed. */
function failureLine(o: ChildOutcome): string {
  if (o.stopped) return o.stopped;
  const lines = o.stderr.split('\n');
  // the command's own one-line error, else what Node said when it could not even start it
  const said =
    lines.find((l) => l.startsWith('splitllm: '))?.slice('splitllm: '.length) ??
    lines.find((l) => /^[A-Z]\w*Error\b/.test(l));
  const how = o.signal ? `signal ${o.signal}` : `code ${o.code}`;
  return `simulate exited (${how})${said ? `: ${said}` : ''}`;
}

/** `splitllm eval --json` of one adapter (or the base model): the held-out loss. */
export async function heldOutLoss(
  modelDir: string,
  textFile: string,
  adapterDir: string | undefined,
  timeoutMs: number,
  onChild: (c: RunningChild | undefined) => void,
): Promise<number> {
  let loss: number | undefined;
  const args = ['eval', '--model', modelDir, '--text', textFile, '--json'];
  const o = await runCli(
    adapterDir === undefined ? args : [...args, '--adapter', adapterDir],
    timeoutMs,
    (j) => {
      if (typeof j.loss === 'number') loss = j.loss;
    },
    onChild,
  );
  if (o.code !== 0 || loss === undefined) {
    throw new Error(`eval of ${adapterDir ?? 'the base model'} failed: ${failureLine(o)}\n${lastLines(o.stderr, 20)}`);
  }
  return loss;
}

function simulateArgs(point: BenchPoint, plan: BenchPlan, modelDir: string, dir: string, keepState: boolean): string[] {
  const args = [
    'simulate',
    ...['--edges', String(point.edges), '--users', String(point.users)],
    ...['--users-per-edge', String(point.usersPerEdge), '--scheme', point.scheme],
    ...['--rounds', String(plan.rounds), '--steps-per-user', String(plan.stepsPerUser)],
    ...['--model', modelDir, '--data', SOTU_TRAIN, '--seed', String(plan.seed)],
    ...['--aggregation', plan.aggregation, '--engine', plan.engine, '--links', point.link.spec],
    ...['--out', dir, '--json'],
  ];
  if (plan.batchSize !== undefined) args.push('--batch-size', String(plan.batchSize));
  if (plan.seqLen !== undefined) args.push('--seq-len', String(plan.seqLen));
  if (plan.provider !== undefined) args.push('--provider', plan.provider);
  // --eval reads every round's adapter after the run: the cloud keeps them all, in a state that stays
  if (keepState) args.push('--state', join(dir, 'state'), '--keep-versions', '0');
  return args;
}

/**
 * The onnxruntime provider each server part ran on, from its structured log: the cloud's "cloud server
 * listening" line and each edge's "edge server ready" line name the provider after any fallback (a
 * GPU provider that could not start leaves the runner on cpu), which --provider alone does not say.
 * A part whose log has no such line is left out.
 */
export function partProviders(logDir: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (!existsSync(logDir)) return out;
  const parts = readdirSync(logDir)
    .filter((f) => f === 'cloud.log' || /^edge-\d+\.log$/.test(f))
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  for (const file of parts) {
    for (const line of readFileSync(join(logDir, file), 'utf8').split('\n')) {
      if (!line.startsWith('{')) continue;
      let j: { msg?: unknown; provider?: unknown };
      try {
        j = JSON.parse(line) as typeof j;
      } catch {
        continue; // a line onnxruntime wrote into the log, not the part's
      }
      if ((j.msg === 'cloud server listening' || j.msg === 'edge server ready') && typeof j.provider === 'string') {
        out[file.slice(0, -'.log'.length)] = j.provider;
        break;
      }
    }
  }
  return out;
}

/** Runs one point (see the header); resolves with its result, never rejects. */
export async function runPoint(point: BenchPoint, plan: BenchPlan, ctx: PointContext): Promise<PointResult> {
  const result = pendingResult(point);
  const dir = join(ctx.pointsDir, point.id);
  result.logDir = join('points', point.id, 'logs');
  const rounds: RoundFigures[] = [];
  let lineError: Error | undefined;
  // when the point's processes ran: samples taken from outside (device memory) are joined by pid within it
  result.startedAt = new Date().toISOString();
  const t0 = performance.now();
  const o = await runCli(
    simulateArgs(point, plan, ctx.modelDir, dir, ctx.heldoutFile !== undefined),
    plan.timeoutS * 1000,
    (j) => {
      if (lineError) return;
      try {
        const r = parseRoundLine(j, point.scheme);
        rounds.push(r);
        ctx.log(`  round ${r.round}/${plan.rounds}: ${(r.ms / 1000).toFixed(1)} s, training loss ${r.loss.toFixed(4)}`);
      } catch (e) {
        lineError = e as Error;
      }
    },
    ctx.onChild,
  );
  result.wallMs = Math.round(performance.now() - t0);
  result.rounds = rounds;
  result.providers = partProviders(join(dir, 'logs'));
  const fail = (reason: string, tail: string) => {
    result.status = 'failed';
    result.reason = reason;
    result.logTail = tail;
    return result;
  };
  const tails = () =>
    `simulate's stderr (last 30 lines):\n${lastLines(o.stderr, 30)}\n\n` +
    `${join(result.logDir!, 'cloud.log')} (last 10 lines):\n${logTail(join(dir, 'logs', 'cloud.log'), 10)}`;
  if (o.code !== 0 || o.stopped) {
    result.timedOut = o.timedOut;
    return fail(failureLine(o), tails());
  }
  if (lineError) return fail(lineError.message, tails());
  if (rounds.length !== plan.rounds) return fail(`simulate printed ${rounds.length} of ${plan.rounds} rounds`, tails());

  if (ctx.heldoutFile !== undefined) {
    try {
      // rounds.json carries each round's adapter directory (the --json lines do not)
      const recorded = JSON.parse(readFileSync(join(dir, 'rounds.json'), 'utf8')) as Array<{ adapterDir: string }>;
      for (const [i, r] of rounds.entries()) {
        const adapterDir = recorded[i]?.adapterDir;
        if (typeof adapterDir !== 'string') throw new Error(`rounds.json has no adapterDir for round ${r.round}`);
        r.heldOutLoss = await heldOutLoss(ctx.modelDir, ctx.heldoutFile, adapterDir, plan.timeoutS * 1000, ctx.onChild);
        ctx.log(`  held-out loss after round ${r.round}: ${r.heldOutLoss.toFixed(4)}`);
      }
    } catch (e) {
      return fail(`held-out evaluation: ${(e as Error).message.split('\n')[0]}`, (e as Error).message);
    } finally {
      // every round's adapter (and the cloud's database): what a GPT-2-small sweep should not keep
      rmSync(join(dir, 'state'), { recursive: true, force: true });
    }
  }
  result.status = 'ok';
  result.summary = summarize(rounds);
  return result;
}
