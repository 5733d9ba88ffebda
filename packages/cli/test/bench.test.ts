/**
 * `splitllm bench` through the real command: a small sweep of real processes (a cloud, an edge
 * and 1 or 2 headless users per point, on loopback) that holds the schemes to what the design
 * guarantees, the outputs it writes, what it refuses before anything starts, and a failed point
 * recorded without ending the sweep.
 *
 * The memory ordering is asserted on heldPeak, the exact bytes of per-user training state a
 * server held (LoRA copies, AdamW moments, saved activations), not on RSS: RSS carries the
 * runtime's buffers and the allocator's slack and moves by megabytes between identical runs,
 * while heldPeak is a count of arrays, the same in every run of a configuration. So the
 * comparisons are exact: hierarchical holds one user's state whatever N is (equal), sfl one
 * state per concurrent user (strictly larger at N = 2). No timing is asserted.
 */
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { BenchResults, PointResult } from '../src/bench/results';
import { DATA, cli } from './run-cli';

const tmp = mkdtempSync(join(tmpdir(), 'splitllm-bench-test-'));

function readResults(out: string): BenchResults {
  return JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')) as BenchResults;
}

describe('splitllm bench', () => {
  it('sweeps hierarchical and sfl at N = 1 and 2: hierarchical holds the same at both, sfl more at 2', () => {
    const out = join(tmp, 'sweep');
    // a short held-out text keeps each `eval` to a few seconds; the default is the demo users' 60 KB
    const evalText = join(tmp, 'heldout-short.txt');
    writeFileSync(evalText, readFileSync(join(DATA, 'sotu/heldout/user-1.txt'), 'utf8').slice(0, 3000));
    const r = cli(
      [
        'bench',
        ...['--schemes', 'hierarchical,sfl', '--users-per-edge', '1,2', '--edges', '1'],
        ...['--rounds', '1', '--steps-per-user', '2', '--eval-text', evalText, '--out', out],
      ],
      600_000,
    );
    expect(r.code, r.stderr).toBe(0);
    // progress goes to stderr, point by point
    expect(r.stderr).toContain('[1/4] hierarchical-N1-E1');
    expect(r.stderr).toContain('[4/4] sfl-N2-E1');

    const results = readResults(out);
    expect(results.points.map((p) => [p.id, p.status])).toEqual([
      ['hierarchical-N1-E1', 'ok'],
      ['sfl-N1-E1', 'ok'],
      ['hierarchical-N2-E1', 'ok'],
      ['sfl-N2-E1', 'ok'],
    ]);
    const at = (scheme: string, N: number): PointResult => results.points.find((p) => p.id === `${scheme}-N${N}-E1`)!;
    for (const p of results.points) {
      expect(p.rounds).toHaveLength(1);
      const round = p.rounds[0];
      expect(round.users).toBe(p.users);
      expect(Object.keys(round.memory.edges)).toEqual(['edge-0']);
      // every hop carried the round's activations and adapters
      expect(round.userEdgeBytes).toBeGreaterThan(0);
      expect(round.edgeCloudBytes).toBeGreaterThan(0);
      expect(round.memory.cloud.heldPeak).toBeGreaterThan(0);
      expect(round.pids?.cloud).toBeGreaterThan(0);
      expect(Object.keys(round.pids?.edges ?? {})).toEqual(['edge-0']);
      expect(Number.isFinite(round.heldOutLoss)).toBe(true);
      expect(p.summary!.finalHeldOutLoss).toBe(round.heldOutLoss);
    }
    const edgeHeld = (scheme: string, N: number) => at(scheme, N).summary!.edges['edge-0'].heldPeak;
    const cloudHeld = (scheme: string, N: number) => at(scheme, N).summary!.cloud.heldPeak;
    // the design's guarantee: hierarchical flat in N, sfl growing with N (exact byte counts, see the header)
    expect(edgeHeld('hierarchical', 2)).toBe(edgeHeld('hierarchical', 1));
    expect(cloudHeld('hierarchical', 2)).toBe(cloudHeld('hierarchical', 1));
    expect(edgeHeld('sfl', 2)).toBeGreaterThan(edgeHeld('sfl', 1));
    expect(cloudHeld('sfl', 2)).toBeGreaterThan(cloudHeld('sfl', 1));
    expect(edgeHeld('sfl', 2)).toBeGreaterThan(edgeHeld('hierarchical', 2));
    expect(results.baseHeldOutLoss).toBeGreaterThan(0);

    // the outputs: a table with a row per point, the plots as SVG, and where they are on stdout
    const md = readFileSync(join(out, 'results.md'), 'utf8');
    expect(md.split('\n').filter((l) => /^\| (hierarchical|sfl) \| [12] \| 1 \| /.test(l))).toHaveLength(4);
    expect(md).toContain('## Headline: hierarchical vs sfl');
    for (const svg of ['memory-held.svg', 'memory-rss.svg', 'round-time.svg', 'loss-vs-round.svg']) {
      const text = readFileSync(join(out, svg), 'utf8');
      expect(text.startsWith('<svg'), svg).toBe(true);
      expect(text, svg).toContain('hierarchical');
      expect(r.stdout).toContain(join(out, svg));
    }
    // one link setting: the link-rate plot is not drawn, and the command says so
    expect(existsSync(join(out, 'round-time-vs-link.svg'))).toBe(false);
    expect(r.stdout).toContain('not drawn: round time vs link rate');
  }, 600_000);

  it('passes --provider to every point, records it and what each part ran on, and the processes of each round', () => {
    const out = join(tmp, 'provider');
    // cuda: a provider other than the parts' default, so the logs show that it was passed on; where it cannot
    // start (no CUDA on this machine) the runner falls back to cpu, and the results must say so
    const r = cli([
      'bench',
      ...['--provider', 'cuda', '--schemes', 'hierarchical', '--users-per-edge', '1', '--edges', '1'],
      ...['--rounds', '1', '--steps-per-user', '1', '--engine', 'reference', '--out', out],
    ]);
    expect(r.code, r.stderr).toBe(0);
    const results = readResults(out);
    expect(results.settings.provider).toBe('cuda');
    const [point] = results.points;
    expect(point.status).toBe('ok');
    // the processes that ran the round: the cloud's and the edge's ids, integers > 0, each its own
    const pids = point.rounds[0].pids!;
    expect(Object.keys(pids.edges)).toEqual(['edge-0']);
    const all = [pids.cloud, pids.edges['edge-0']];
    for (const pid of all) expect(Number.isSafeInteger(pid) && pid > 0, String(pid)).toBe(true);
    expect(new Set([...all, process.pid]).size).toBe(3);
    // the ids are the parts' own (each part's structured log stamps its lines with its pid), and each
    // part was asked for the sweep's provider
    const logLines = (log: string) =>
      readFileSync(join(out, point.logDir!, log), 'utf8')
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as { pid?: number; msg?: string });
    for (const [log, pid] of [
      ['cloud.log', pids.cloud],
      ['edge-0.log', pids.edges['edge-0']],
    ] as const) {
      expect(new Set(logLines(log).map((l) => l.pid)), log).toEqual(new Set([pid]));
      expect(
        logLines(log).some((l) => l.msg?.startsWith('onnx runner: provider cuda requested')),
        log,
      ).toBe(true);
    }
    // when the point ran, so that samples taken from outside can be joined within its time
    expect(Number.isNaN(Date.parse(point.startedAt!))).toBe(false);
    // what each part ran on, and a reader of the table sees it: the provider asked for, and any part not on it
    expect(Object.keys(point.providers!).sort()).toEqual(['cloud', 'edge-0']);
    const md = readFileSync(join(out, 'results.md'), 'utf8');
    expect(md).toContain("the edges and the cloud on onnxruntime's cuda provider");
    for (const [part, ran] of Object.entries(point.providers!)) {
      if (ran !== 'cuda') expect(md).toContain(`${part} ran on ${ran}`);
    }
  });

  it('records a point that fails with its reason and log, and goes on to the next point', () => {
    const out = join(tmp, 'failing');
    // 1 s cannot hold a point: simulate alone needs longer to compile and start its cloud, so both
    // points run out of time whatever the machine; the second runs although the first failed
    const r = cli([
      'bench',
      ...['--schemes', 'hierarchical,sfl', '--users-per-edge', '1', '--edges', '1'],
      ...['--rounds', '1', '--steps-per-user', '1', '--timeout', '1', '--out', out],
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n').pop()).toMatch(/^splitllm: 2 of 2 points failed/);
    const results = readResults(out);
    for (const p of results.points) {
      expect(p.status).toBe('failed');
      expect(p.reason).toBe('timed out after 1 s');
      expect(p.logTail).toContain("simulate's stderr");
    }
    expect(readFileSync(join(out, 'results.md'), 'utf8')).toContain('## Failed and skipped points');
  });

  it('refuses impossible settings with one line and exit code 2 before anything starts', () => {
    const cases: Array<[string[], RegExp]> = [
      [['--users-per-edge', '0,2'], /--users-per-edge must be integers >= 1, got "0"/],
      [['--edges', '0'], /--edges must be integers >= 1, got "0"/],
      [['--links', '10,0'], /--links rate 0 Mbps: a link needs a rate > 0/],
      [['--schemes', 'hierarchical,ring'], /unknown scheme "ring"/],
      [['--model', 'random:gpt3'], /unknown --model "random:gpt3"/],
      [['--provider', 'bogus'], /--provider must be one of cpu, cuda, webgpu, got "bogus"/],
      [['--model', join(tmp, 'no-such-model')], /is not shipped, random:gpt2-small or a model directory/],
    ];
    for (const [args, message] of cases) {
      const out = join(tmp, `refused-${args.join('-').replace(/[^\w-]/g, '_')}`);
      const r = cli(['bench', ...args, '--out', out]);
      expect(r.code, args.join(' ')).toBe(2);
      const lines = r.stderr.trim().split('\n');
      expect(lines, args.join(' ')).toHaveLength(1);
      expect(lines[0]).toMatch(/^splitllm: bench: /);
      expect(lines[0]).toMatch(message);
      // refused before anything started: not even the output directory exists
      expect(existsSync(out), args.join(' ')).toBe(false);
    }
  });
});
