/**
 * `splitllm serve` as a child process on a pipe, the way an operator's terminal-less run sees it:
 * a temporary state directory, a stub page, free ports, the reference engine and short turns.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort } from './net';
import { REPO } from './run-cli';

const MAIN = join(REPO, 'packages/cli/src/main.ts');

export interface ServeProcess {
  child: ChildProcess;
  state: string;
  port: number;
  edgePort: number;
  /** everything serve printed on stdout so far */
  stdout(): string;
  stderr(): string;
  exited: Promise<number | null>;
}

/** Starts serve in `tmp` for `rounds` rounds of 2-step turns; `extra` adds flags (e.g. --demo-pause-s). */
export async function startServe(tmp: string, rounds: number, extra: string[] = []): Promise<ServeProcess> {
  const web = join(tmp, 'web');
  mkdirSync(web, { recursive: true });
  writeFileSync(join(web, 'index.html'), '<!doctype html><title>test</title>');
  const state = join(tmp, 'state');
  const [port, edgePort] = [await freePort(), await freePort()];
  const args = ['serve', '--state', state, '--web', web, '--port', String(port), '--edge-port', String(edgePort)];
  args.push('--rounds', String(rounds), '--steps-per-user', '2', '--engine', 'reference', ...extra);
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, ...args], {
    cwd: REPO,
    env: { ...process.env, SPLITLLM_DEBUG: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    err += d;
  });
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  return { child, state, port, edgePort, stdout: () => out, stderr: () => err, exited };
}
