/**
 * Starts the system's parts as separate Node processes on loopback (`simulate`, `serve`): each
 * runs `splitllm <part>`, prints one JSON line `{"event":"ready",...}` on stdout when it serves,
 * and writes its structured log to a file. A part that exits early fails the launch with the
 * tail of its log.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync } from 'node:fs';
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
  mkdirSync(o.logDir, { recursive: true });
  const logFile = join(o.logDir, `${name}.log`);
  const fd = openSync(logFile, 'a');
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
          `${name} did not become ready within ${(o.readyTimeoutMs ?? 180_000) / 1000} s; log ${logFile}:\n${logTail(logFile)}`,
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
