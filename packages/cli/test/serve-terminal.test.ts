/**
 * A quiet terminal: `splitllm serve --rounds 3` as a real process whose stdout is a pipe (not a
 * terminal) prints the links (again on SIGUSR2) and a status line, not one line per round; the
 * rounds' lines are in --state/rounds.log.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startServe } from './serve-process';

describe('serve on a pipe', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'splitllm-serve-terminal-'));
  let serve: ChildProcess | undefined;
  afterAll(() => {
    if (serve && serve.exitCode === null && serve.signalCode === null) serve.kill('SIGTERM');
    rmSync(tmp, { recursive: true, force: true });
  });

  it('prints the links (again on SIGUSR2) and a status, and logs each round to rounds.log', async () => {
    // long enough that serve is still running when it gets SIGUSR2 (the test does not time it)
    const sp = await startServe(tmp, 3, ['--demo-pause-s', '5']);
    serve = sp.child;
    const { state, exited, port, edgePort } = sp;
    const deadline = Date.now() + 180_000;
    while (!sp.stdout().includes('running 3 round(s)')) {
      if (Date.now() > deadline || serve.exitCode !== null) throw new Error(`no start\n${sp.stdout()}\n${sp.stderr()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    serve.kill('SIGUSR2');
    expect(await exited, `${sp.stdout()}\n${sp.stderr()}`).toBe(0);

    const cloud = `http://127.0.0.1:${port}`;
    expect(sp.stdout()).toContain(`cloud  ${cloud}`);
    expect(sp.stdout()).toMatch(new RegExp(`^edge {3}http://127\\.0\\.0\\.1:${edgePort} `, 'm'));
    // the links, twice (the second time on SIGUSR2), each time with a fresh single-use join link
    const dashboards = sp.stdout().match(/^operator dashboard: http\S+\/admin#token=\w+$/gm) ?? [];
    expect(dashboards, sp.stdout()).toHaveLength(2);
    const joins = [...sp.stdout().matchAll(new RegExp(`^ {2}${cloud}/\\?join=(\\w+)$`, 'gm'))].map((m) => m[1]);
    expect(joins).toHaveLength(2);
    expect(joins[0]).not.toBe(joins[1]);
    expect(sp.stdout()).toMatch(
      /^ {2}SPLITLLM_JOIN_TOKEN=\w+ pnpm splitllm user --cloud http\S+ --data YOUR_TEXT\.txt$/m,
    );
    expect(sp.stdout()).toContain(`-H "authorization: Bearer `);
    expect(sp.stdout()).toContain(`${cloud}/api/join-tokens`);
    expect(sp.stdout()).toContain(`kill -USR2 ${serve.pid}`);
    // no line per round on the terminal: a status line instead, which counts the round's users
    expect(sp.stdout()).not.toMatch(/round \d+ recorded/);
    expect(sp.stdout()).toMatch(
      /round \d+ \(version \d+\) \| users 1 this round, 1 in all, \d+ connected \| \d+ tokens/,
    );

    const log = join(state, 'rounds.log');
    expect(statSync(log).mode & 0o777).toBe(0o600);
    const rounds = readFileSync(log, 'utf8')
      .split('\n')
      .filter((l) => / round \d+ recorded: /.test(l));
    expect(rounds, readFileSync(log, 'utf8')).toHaveLength(3);
    for (const l of rounds) {
      expect(l).toMatch(
        /^\d{4}-\d\d-\d\dT[\d:.]+Z round \d+ recorded: version \d+, loss [\d.]+, 1 user\(s\), .*; users /,
      );
    }
  }, 300_000);
});
