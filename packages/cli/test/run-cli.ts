/** Runs the real `splitllm` command in a child process, as a user would. */
import { spawnSync } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const SHIPPED_MODEL = join(REPO, 'packages/assets/models/moby-tiny');
export const DATA = join(REPO, 'packages/assets/data');
/** The public held-out text the cloud's validation gate scores on (the `cloud` command's default). */
export const HELDOUT = join(DATA, 'moby-dick/heldout.txt');
const MAIN = join(REPO, 'packages/cli/src/main.ts');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function cli(args: string[], timeoutMs = 300_000): CliResult {
  const r = spawnSync(process.execPath, ['--import', 'tsx', MAIN, ...args], {
    cwd: REPO,
    encoding: 'utf8',
    timeout: timeoutMs,
    env: { ...process.env, SPLITLLM_DEBUG: '' },
  });
  if (r.error) throw r.error;
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Parses every stdout line as JSON. */
export function jsonLines(stdout: string): Array<Record<string, unknown>> {
  return stdout
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}
