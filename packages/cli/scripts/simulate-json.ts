/**
 * What the benchmark scripts share: `splitllm simulate --json` as a child process on the demo
 * users' SOTU text with seed 1, its round lines parsed. Throws with simulate's stderr when it fails.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT } from '../src/io';

/** One round line of `simulate --json`. */
export interface SimulateRound {
  round: number;
  ms: number;
  loss: number;
  bytes: number;
}

/** Runs `simulate` with `args` (edges, users, rounds, ...), writing to `out`; returns its rounds. */
export function simulateJson(args: string[], out: string): SimulateRound[] {
  const r = spawnSync(
    process.execPath,
    [
      ...['--import', 'tsx', join(REPO_ROOT, 'packages/cli/src/main.ts'), 'simulate', ...args],
      ...['--data', join(REPO_ROOT, 'packages/assets/data/sotu/train'), '--seed', '1', '--out', out, '--json'],
    ],
    { cwd: REPO_ROOT, encoding: 'utf8' },
  );
  if (r.status !== 0) throw new Error(`simulate ${args.join(' ')} failed:\n${r.stderr}`);
  return r.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as SimulateRound);
}
