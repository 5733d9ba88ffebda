/**
 * `splitllm simulate --links`: a modelled wireless link on the headless user's edge socket shows
 * in the round's time. The bound is behavioural, not a speed: with labels on the device every
 * step carries four [B, T, D] f32 tensors over the user's link (h1 and dL/dhL up, hL and dh1 down),
 * one after another since each waits for the answer to the one before, so a round cannot be
 * shorter than those bytes at the link's highest possible rate (0.5 Mbps for random:1:0.25-0.5):
 * about 17 s, several times what the same round takes here without a link (3.6 s), so the bound
 * cannot pass by slowness alone, and no run is compared with another's wall time. The
 * reported `bytes` count the edge <-> cloud hop too, so they bound the user's share from above
 * only; the user's share is taken from the frames' shapes. Impossible specs are refused in one
 * line before any part starts.
 */
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli, DATA, jsonLines, SHIPPED_MODEL } from './run-cli';

const tmp = mkdtempSync(join(tmpdir(), 'splitllm-links-test-'));
const B = 4;
const T = 64;
const STEPS = 2;

function simulate(out: string, links: string): { ms: number; bytes: number } {
  const r = cli(
    [
      ...['simulate', '--out', out, '--json', '--edges', '1', '--users', '1', '--rounds', '1'],
      ...['--steps-per-user', String(STEPS), '--batch-size', String(B), '--seq-len', String(T)],
      ...['--data', join(DATA, 'sotu/train/user-2.txt'), '--seed', '3', '--engine', 'reference', '--links', links],
    ],
    600_000,
  );
  if (r.code !== 0) throw new Error(`simulate --links ${links} exited ${r.code}: ${r.stderr}`);
  const rounds = jsonLines(r.stdout);
  expect(rounds.map((l) => l.round)).toEqual([1]);
  return { ms: Number(rounds[0].ms), bytes: Number(rounds[0].bytes) };
}

describe('simulate --links', () => {
  it("adds at least the modelled transfer time of the user's frames to the round", () => {
    const D = (JSON.parse(readFileSync(join(SHIPPED_MODEL, 'config.json'), 'utf8')) as { n_embd: number }).n_embd;
    const linked = simulate(join(tmp, 'random'), 'random:1:0.25-0.5');
    const userBytes = 4 * STEPS * B * T * D * 4;
    // the round reports the user's frames among its bytes (and the edge <-> cloud hop's besides)
    expect(linked.bytes).toBeGreaterThan(userBytes);
    const boundMs = ((userBytes * 8) / 0.5e6) * 1000;
    expect(boundMs).toBeGreaterThan(15_000); // a bound far above the unlinked round's time
    expect(linked.ms).toBeGreaterThanOrEqual(boundMs);
  });

  it('refuses a rate of 0 in one line, with a usage exit, before starting anything', () => {
    const out = join(tmp, 'refused');
    const r = cli(
      ['simulate', '--out', out, '--edges', '1', '--users', '1', '--rounds', '1', '--steps-per-user', '2'].concat([
        '--data',
        join(DATA, 'sotu/train/user-2.txt'),
        '--seed',
        '3',
        '--links',
        'random:1:0-0',
      ]),
    );
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toEqual([
      'splitllm: --links: link "random:1:0-0": the lowest rate (Mbps) must be a number > 0, got "0"',
    ]);
    expect(existsSync(out)).toBe(false); // not even the output directory was made
  });

  it('refuses an unknown link kind for one user in one line', () => {
    const r = cli(['user', '--cloud', 'http://127.0.0.1:9', '--data', 'x.txt', '--link', 'wifi:1']);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toEqual([
      'splitllm: --link: link "wifi:1": unknown kind "wifi" (none, table:FILE.json, random:SEED, shannon:SEED)',
    ]);
  });
});
