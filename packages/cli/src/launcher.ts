/**
 * Starts the system's parts as separate Node processes on loopback (`simulate`, `serve`): each
 * runs `splitllm <part>`, prints one JSON line `{"event":"ready",...}` on stdout when it serves,
 * and writes its structured log to a file. A part that exits early fails the launch with the
 * tail of its log. `superviseParts` (`serve`) restarts a part that exits without being asked to.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, chmodSync, closeSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { REPO_ROOT } from './io';

const MAIN = join(REPO_ROOT, 'packages/cli/src/main.ts');

export interface Part {
  name: string;
  child: ChildProcess;
  logFile: string;
  /** resolves with the ready line's object */
  ready: Promise<Record<string, unknown>>;
  /** every JSON line the part prints after ready */
  onLine(fn: (j: Record<string, unknown>) => void): void;
  /** resolves when the process has exited */
  exited: Promise<number | null>;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

export function logTail(file: string, lines = 15): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

export function startPart(
  name: string,
  args: string[],
  o: { logDir: string; env?: Record<string, string>; readyTimeoutMs?: number },
): Part {
  // logs may hold user ids and operator links: readable by their owner only
  mkdirSync(o.logDir, { recursive: true, mode: 0o700 });
  const logFile = join(o.logDir, `${name}.log`);
  const fd = openSync(logFile, 'a', 0o600);
  // a log left by an older run may have been created 0644
  chmodSync(logFile, 0o600);
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, ...args], {
    cwd: REPO_ROOT,
    // stdin is a pipe only so that the part notices when this process dies (untilSignal)
    env: { ...process.env, ...o.env, SPLITLLM_EXIT_WITH_PARENT: '1' },
    stdio: ['pipe', 'pipe', fd],
  });
  closeSync(fd);
  const listeners: Array<(j: Record<string, unknown>) => void> = [];
  let readyResolve!: (j: Record<string, unknown>) => void;
  let readyReject!: (e: Error) => void;
  let isReady = false;
  const ready = new Promise<Record<string, unknown>>((res, rej) => {
    readyResolve = res;
    readyReject = rej;
  });
  const timer = setTimeout(
    () =>
      readyReject(
        new Error(
          `${name} did not become ready within ${(o.readyTimeoutMs ?? 180_000) / 1000} s; ` +
            `log ${logFile}:\n${logTail(logFile)}`,
        ),
      ),
    o.readyTimeoutMs ?? 180_000,
  );
  createInterface({ input: child.stdout! }).on('line', (line) => {
    let j: Record<string, unknown>;
    try {
      j = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return; // not a protocol line
    }
    if (!isReady && j.event === 'ready') {
      isReady = true;
      clearTimeout(timer);
      readyResolve(j);
      return;
    }
    for (const fn of listeners) fn(j);
  });
  const exited = new Promise<number | null>((res) => {
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (!isReady)
        readyReject(
          new Error(`${name} exited (code ${code}) before it was ready; log ${logFile}:\n${logTail(logFile)}`),
        );
      res(code);
    });
  });
  ready.catch(() => undefined);
  return {
    name,
    child,
    logFile,
    ready,
    exited,
    onLine: (fn) => void listeners.push(fn),
    async stop(signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill(signal);
      const t = setTimeout(() => {
        process.stderr.write(`splitllm: ${name} did not stop within 10 s of ${signal}; killing it (log ${logFile})\n`);
        child.kill('SIGKILL');
      }, 10_000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** When a supervised part that exited is started again. */
export interface RestartPolicy {
  /** the delay before the first restart of a run of quick exits; each next one doubles it ... */
  firstDelayMs: number;
  /** ... up to this */
  maxDelayMs: number;
  /** a part that stayed up this long before it exited starts again at firstDelayMs */
  resetAfterMs: number;
}

export const DEFAULT_RESTART_POLICY: RestartPolicy = { firstDelayMs: 1000, maxDelayMs: 30_000, resetAfterMs: 60_000 };

/** The delay before the n-th (1-based) restart in a run of quick exits: 1 s, 2 s, 4 s ... capped. */
export function restartDelayMs(n: number, p: RestartPolicy = DEFAULT_RESTART_POLICY): number {
  return Math.min(p.maxDelayMs, p.firstDelayMs * 2 ** Math.max(0, n - 1));
}

/** How a process ended, as the restarted part and the operator read it: "code 1", "signal SIGKILL". */
export function describeExit(child: ChildProcess): string {
  return child.signalCode ? `signal ${child.signalCode}` : `code ${child.exitCode}`;
}

export interface RestartEvent {
  name: string;
  /** restarts of this part so far, this one included */
  restart: number;
  /** how the previous process ended, e.g. "code 1 at 2025-01-01T00:00:00.000Z" */
  lastExit: string;
  /** the new process (not yet ready) */
  part: Part;
}

export interface SupervisedPart {
  readonly name: string;
  readonly logFile: string;
  /** the live process: a new one after each restart */
  readonly current: Part;
  /** restarts so far */
  readonly restarts: number;
  /** the first start's ready line; a first start that fails is an error, not restarted */
  readonly ready: Promise<Record<string, unknown>>;
  /** every JSON line after ready, from every process this part runs */
  onLine(fn: (j: Record<string, unknown>) => void): void;
  /** called when a restarted process has been spawned */
  onRestart(fn: (e: RestartEvent) => void): void;
  /** stops the live process and any pending restart */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * startPart, and once the part has been ready, start it again whenever it exits without being
 * asked to (crash, OOM kill, an operator's kill -9), after restartDelayMs; one line through `log`
 * per restart. The restarted process appends to the same log file and gets
 * SPLITLLM_PART_RESTARTS=<n> and SPLITLLM_PART_LAST_EXIT=<how and when> in its environment (the
 * edge shows them on its dashboard). `env` may be a function, called before every start: a demo
 * user needs a fresh single-use join token each time. A first start that fails stays an error
 * (a wrong flag or a busy port would only fail again); a restart that fails is retried with the
 * next, longer delay.
 */
export function supervisePart(
  name: string,
  args: string[],
  o: {
    logDir: string;
    env?: Record<string, string> | (() => Promise<Record<string, string>>);
    readyTimeoutMs?: number;
    policy?: RestartPolicy;
    log?: (line: string) => void;
  },
): SupervisedPart {
  const policy = o.policy ?? DEFAULT_RESTART_POLICY;
  const log = o.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const envFn = typeof o.env === 'function' ? o.env : async () => (o.env as Record<string, string> | undefined) ?? {};
  const lineFns: Array<(j: Record<string, unknown>) => void> = [];
  const restartFns: Array<(e: RestartEvent) => void> = [];
  let restarts = 0;
  /** restarts since the part last stayed up policy.resetAfterMs */
  let quickExits = 0;
  let stopping = false;
  let timer: NodeJS.Timeout | undefined;
  let startedAt = Date.now();
  let current: Part | undefined;
  /** the first process has been ready: from then on an exit restarts the part */
  let wasReady = false;

  const launch = (extraEnv: Record<string, string>): Part => {
    const p = startPart(name, args, { logDir: o.logDir, env: extraEnv, readyTimeoutMs: o.readyTimeoutMs });
    startedAt = Date.now();
    current = p;
    p.onLine((j) => {
      for (const fn of lineFns) fn(j);
    });
    // a restarted process that never gets ready is stopped, and its exit restarts it again
    p.ready.catch(() => {
      if (!stopping && current === p) void p.stop();
    });
    void p.exited.then(() => onExit(p));
    return p;
  };

  const onExit = (p: Part): void => {
    if (stopping || current !== p) return;
    // a part that never got ready the first time fails the launch instead (ready rejects)
    if (!wasReady) return;
    const how = describeExit(p.child);
    const lastExit = `${how} at ${new Date().toISOString()}`;
    if (Date.now() - startedAt >= policy.resetAfterMs) quickExits = 0;
    scheduleRestart(`${name} exited (${how})`, lastExit);
  };

  const scheduleRestart = (what: string, lastExit: string): void => {
    quickExits++;
    restarts++;
    const n = restarts;
    const delay = restartDelayMs(quickExits, policy);
    log(`${what}; restarting in ${delay / 1000} s (restart ${n})`);
    timer = setTimeout(() => {
      timer = undefined;
      void (async () => {
        let extra: Record<string, string>;
        try {
          extra = await envFn();
        } catch (e) {
          if (!stopping) scheduleRestart(`${name} could not be started (${(e as Error).message})`, lastExit);
          return;
        }
        if (stopping) return;
        const env = { ...extra, SPLITLLM_PART_RESTARTS: String(n), SPLITLLM_PART_LAST_EXIT: lastExit };
        // the launcher's own line in the part's log (pino's shape: level 40 is warn)
        try {
          const line = { level: 40, time: Date.now(), msg: 'restarted by the launcher', restart: n, lastExit };
          appendFileSync(join(o.logDir, `${name}.log`), `${JSON.stringify(line)}\n`, { mode: 0o600 });
        } catch {
          // the log is a convenience; the restart matters more
        }
        const p = launch(env);
        for (const fn of restartFns) fn({ name, restart: n, lastExit, part: p });
      })();
    }, delay);
  };

  const firstReady = (async () => {
    const env = await envFn();
    if (stopping) throw new Error(`${name} was stopped before it started`);
    const j = await launch(env).ready;
    wasReady = true;
    return j;
  })();
  // the caller awaits it; this keeps a failure before that from counting as unhandled
  firstReady.catch(() => undefined);

  return {
    name,
    logFile: join(o.logDir, `${name}.log`),
    get current() {
      if (!current) throw new Error(`${name} has not started yet`);
      return current;
    },
    get restarts() {
      return restarts;
    },
    ready: firstReady,
    onLine: (fn) => void lineFns.push(fn),
    onRestart: (fn) => void restartFns.push(fn),
    async stop(signal = 'SIGTERM') {
      stopping = true;
      clearTimeout(timer);
      if (current) await current.stop(signal);
    },
  };
}

/**
 * Resolves on SIGINT/SIGTERM, and, in a part started by startPart, when its launcher dies (its
 * stdin pipe closes), so that a killed `simulate` or test run leaves no servers behind.
 */
export function untilSignal(): Promise<NodeJS.Signals | 'parent-exit'> {
  const watchParent = process.env.SPLITLLM_EXIT_WITH_PARENT === '1';
  return new Promise<NodeJS.Signals | 'parent-exit'>((res) => {
    process.once('SIGINT', () => res('SIGINT'));
    process.once('SIGTERM', () => res('SIGTERM'));
    if (watchParent) {
      process.stdin.on('end', () => res('parent-exit'));
      process.stdin.on('error', () => res('parent-exit'));
      process.stdin.resume();
    }
  }).finally(() => {
    // a stdin being read keeps the process alive after its servers close
    if (watchParent) process.stdin.destroy();
  });
}

/** A single-use join token from the cloud (the operator's endpoint). */
export async function issueJoinToken(cloudUrl: string, operatorToken: string): Promise<string> {
  const res = await fetch(`${cloudUrl}/api/join-tokens`, {
    method: 'POST',
    headers: { authorization: `Bearer ${operatorToken}` },
  });
  if (!res.ok) throw new Error(`issuing a join token failed: ${res.status} ${await res.text()}`);
  return ((await res.json()) as { token: string }).token;
}
