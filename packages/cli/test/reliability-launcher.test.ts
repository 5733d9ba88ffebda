/**
 * Reliability: `splitllm serve` as a user runs it (a real process starting the cloud, an edge and
 * a demo user as processes on loopback), its edge killed with SIGKILL mid-run: the launcher
 * starts it again (one line on the terminal, a new pid, the restart count and the last exit in its
 * environment, its log appended), the edge serves again, and training goes on to --rounds.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { restartDelayMs } from '../src/launcher';
import { startServe } from './serve-process';

const ROUNDS = 4;

/** The environment a process was started with (Linux /proc). */
function environOf(pid: number): Map<string, string> {
  const entries = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').filter(Boolean);
  return new Map(entries.map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]));
}

const modeOf = (path: string) => statSync(path).mode & 0o777;

describe('restart policy', () => {
  it('doubles the delay from 1 s and caps it at 30 s', () => {
    expect([1, 2, 3, 4, 5, 6, 7, 20].map((n) => restartDelayMs(n))).toEqual([
      1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000,
    ]);
  });
});

describe('serve with an edge killed mid-run', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'splitllm-reliability-'));
  let serve: ChildProcess | undefined;
  afterAll(() => {
    // serve stops its parts on SIGTERM; if it is gone already its parts follow it (their stdin closes)
    if (serve && serve.exitCode === null && serve.signalCode === null) serve.kill('SIGTERM');
    rmSync(tmp, { recursive: true, force: true });
  });

  it('restarts the edge with backoff and a log line; training goes on to the requested rounds', async () => {
    const sp = await startServe(tmp, ROUNDS, ['--demo-pause-s', '0']);
    serve = sp.child;
    const { state, edgePort, exited } = sp;
    const lines: string[] = [];
    let pending = '';
    serve.stdout!.on('data', (d: string) => {
      pending += d;
      const parts = pending.split('\n');
      pending = parts.pop()!;
      lines.push(...parts);
    });
    const find = (re: RegExp) => lines.map((l) => re.exec(l)).find((m) => m !== null) ?? undefined;
    // what a failure shows: serve's terminal and the tail of each part's log
    const logTail = (name: string) => {
      try {
        return readFileSync(join(state, 'logs', `${name}.log`), 'utf8')
          .split('\n')
          .slice(-8)
          .join('\n');
      } catch {
        return '(none)';
      }
    };
    const dump = () =>
      `stdout:\n${lines.join('\n')}\nstderr:\n${sp.stderr()}\n` +
      ['cloud', 'edge-0', 'demo-user-0'].map((n) => `${n}.log:\n${logTail(n)}`).join('\n');
    /** the first value of fn that is not undefined, polled for up to 120 s */
    const waitFor = async <T>(what: string, fn: () => T | undefined): Promise<T> => {
      const deadline = Date.now() + 120_000;
      for (;;) {
        const v = fn();
        if (v !== undefined) return v;
        if (Date.now() > deadline) throw new Error(`waited 120 s for ${what}\n${dump()}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    };

    // each round's line (and each restart, in order with them) is in rounds.log, not on the terminal
    const logged = () => {
      try {
        return readFileSync(join(state, 'rounds.log'), 'utf8').split('\n');
      } catch {
        return [];
      }
    };
    const firstPid = Number((await waitFor('the edge', () => find(/^edge {3}http\S+ .*\(pid (\d+);/)))[1]);
    await waitFor('a round', () => logged().find((l) => / round \d+ recorded/.test(l)));

    process.kill(firstPid, 'SIGKILL');
    const exitLine = await waitFor('the restart line', () => lines.find((l) => l.startsWith('edge-0 exited')));
    expect(exitLine).toBe('edge-0 exited (signal SIGKILL); restarting in 1 s (restart 1)');
    const back = await waitFor('the edge back', () => find(/^edge-0 is serving again \(pid (\d+), restart 1\)$/));
    const secondPid = Number(back[1]);
    expect(secondPid).not.toBe(firstPid);

    // the restarted edge knows it was restarted, and why (its dashboard shows it)
    const env = environOf(secondPid);
    expect(env.get('SPLITLLM_PART_RESTARTS')).toBe('1');
    expect(env.get('SPLITLLM_PART_LAST_EXIT')).toMatch(/^signal SIGKILL at \d{4}-\d\d-\d\dT[\d:.]+Z$/);
    const status = await fetch(`http://127.0.0.1:${edgePort}/api/status`);
    expect(status.status).toBe(200);

    // training goes on through the restarted edge until --rounds, and serve ends cleanly
    expect(await exited, dump()).toBe(0);
    const rounds = logged().filter((l) => / round \d+ recorded/.test(l));
    expect(rounds).toHaveLength(ROUNDS);
    const backAt = logged().findIndex((l) => / edge-0 is serving again/.test(l));
    expect(backAt).toBeGreaterThanOrEqual(0);
    expect(
      logged()
        .slice(backAt)
        .some((l) => / round \d+ recorded: .* [1-9]\d* user\(s\)/.test(l)),
    ).toBe(true);
    // one restart only: nothing else died
    expect(lines.filter((l) => / restarting in /.test(l))).toHaveLength(1);

    // one log, kept across the restart: both processes' lines and the launcher's own
    const edgeLog = readFileSync(join(state, 'logs/edge-0.log'), 'utf8');
    expect(edgeLog).toContain('restarted by the launcher');
    const launcherLine = edgeLog.split('\n').findIndex((l) => l.includes('restarted by the launcher'));
    expect(launcherLine).toBeGreaterThan(0);
    // state readable by its owner only
    expect(modeOf(state)).toBe(0o700);
    expect(modeOf(join(state, 'logs'))).toBe(0o700);
    expect(modeOf(join(state, 'logs/edge-0.log'))).toBe(0o600);
    expect(modeOf(join(state, 'logs/cloud.log'))).toBe(0o600);
    expect(modeOf(join(state, 'secrets.json'))).toBe(0o600);
  }, 240_000);
});
