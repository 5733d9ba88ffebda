/**
 * `splitllm bench`: the paper's comparison, measured on the real system. Sweeps training scheme x
 * users per edge N x edges E (x link setting); each point is one `splitllm simulate` run (a cloud,
 * E edges, N x E headless users, each its own process on loopback) and records each server's peak
 * memory, the round time, the bytes per hop and, with --eval, the held-out loss after each round.
 * Writes results.json, results.md and SVG plots under --out; a failed point is recorded with its
 * log and the sweep goes on. The parts live in ../bench/.
 */
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { EXECUTION_PROVIDERS } from '@splitllm/onnx-runner';
import { TRAINING_SCHEMES } from '@splitllm/wire';
import { Args } from '../args';
import { writeResultsMd } from '../bench/markdown';
import { modelDirFor, RANDOM_GPT2_SMALL } from '../bench/model';
import {
  BENCH_DEFAULTS,
  type BenchPlan,
  parsePlan,
  planPoints,
  RATE_LINK_LATENCY_MS,
  USER_ENGINES,
} from '../bench/plan';
import { heldOutLoss, type RunningChild, runPoint } from '../bench/point';
import { type BenchResults, pendingResult, settingsOf, writeResultsJson } from '../bench/results';
import { bytesText } from '../bench/markdown';
import { readText } from '../io';

const D = BENCH_DEFAULTS;

export const benchHelp = `splitllm bench [--schemes LIST] [--users-per-edge LIST] [--edges LIST]
    [--model shipped|${RANDOM_GPT2_SMALL}|DIR] [--rounds R] [--steps-per-user S] [--links LIST]
    [--batch-size B] [--seq-len T] [--aggregation NAME] [--engine E] [--seed S] [--eval] [--eval-text FILE_OR_DIR]
    [--provider ${EXECUTION_PROVIDERS.join('|')}] [--timeout SECONDS] [--max-users U] [--out DIR]
  Sweeps scheme x users per edge N x edges E x link: each point is one \`splitllm simulate\` run with
  N x E headless users, and records each server's peak memory (the per-user training state it held,
  exactly, and its high-water RSS), the round wall time, the bytes on each hop and, with --eval, the
  held-out loss after every round. Writes results.json, results.md and SVG plots (peak memory vs N,
  round time vs N and vs link rate, loss vs round) to --out and says where. Progress on stderr.
  --schemes         default ${D.schemes} (${TRAINING_SCHEMES.join(', ')})
  --users-per-edge  N, default ${D.usersPerEdge};  --edges  E, default ${D.edges}
  --model           default shipped (moby-tiny); ${RANDOM_GPT2_SMALL}: GPT-2 small's shape with random
                    weights and the shipped 1024-token vocabulary, written once for the sweep
  --rounds R (default ${D.rounds}), --steps-per-user S (default ${D.stepsPerUser}); --batch-size and --seq-len go to
                    simulate (its defaults otherwise); --aggregation default ${D.aggregation}; --seed default ${D.seed};
                    --engine: the headless users' (${USER_ENGINES.join(', ')}; default ${D.engine})
  --provider        the edges' and the cloud's onnxruntime provider (\`simulate --provider\`; default: theirs,
                    cpu), recorded in results.json and named in results.md; --eval's \`splitllm eval\` stays on cpu.
                    Every round in results.json names the cloud's and the edges' process ids (pids), so figures
                    sampled per process join the points (scripts/device/bench-gpumem.ts: device memory)
  --links           comma-separated link settings, each a point of its own: none (default), a rate in
                    Mbps (every user that rate each way, ${RATE_LINK_LATENCY_MS} ms latency, no loss: two or more
                    rates draw round time vs link rate), or a \`simulate --links\` spec
  --eval            the held-out loss of the global adapter after each round (\`splitllm eval\`), on the
                    demo users' held-out SOTU text or --eval-text; not with ${RANDOM_GPT2_SMALL}
  --timeout         seconds a point may take (default ${D.timeoutS}); a point that runs out is stopped and
                    recorded as failed, and the same scheme's larger N at that E are skipped
  --max-users       points with more than U = N x E users are skipped (default ${D.maxUsers}: every user is a
                    Node process, at the shipped model about 450 MiB with the wasm engine, 170 with reference)
  --out             default bench-results/<date and time>; must be new or empty`;

/** The held-out text as one file: a directory's .txt files in name order, joined. */
function heldoutFile(path: string, workDir: string): string {
  if (!statSync(path).isDirectory()) return path;
  const file = join(workDir, 'heldout.txt');
  const parts = readdirSync(path)
    .filter((f) => f.endsWith('.txt'))
    .sort()
    .map((f) => readText(join(path, f), '--eval-text'));
  if (parts.length === 0) throw new Error(`--eval-text directory "${path}" has no .txt files`);
  writeFileSync(file, parts.join(''));
  return file;
}

/** Writes the table each rate setting's spec names: one link, the rate each way. */
function writeRateTables(plan: BenchPlan): void {
  for (const l of plan.links) {
    if (l.rateMbps === null) continue;
    const file = l.spec.slice('table:'.length);
    mkdirSync(dirname(file), { recursive: true });
    const bps = l.rateMbps * 1e6;
    const link = { uplinkBps: bps, downlinkBps: bps, latencyMs: RATE_LINK_LATENCY_MS, lossRate: 0 };
    writeFileSync(file, `${JSON.stringify([link], null, 2)}\n`);
  }
}

/**
 * The SVG plots, or, where vega or vega-lite is not installed (the GPU device run's packed node_modules
 * leaves them out: scripts/device/pack.sh), none, each said not drawn and why, so that a sweep's
 * measured points still get their results.md and exit status. Any other error is the plots' own.
 */
async function plotsIfInstalled(out: string, results: BenchResults, log: (line: string) => void) {
  let plotsModule: typeof import('../bench/plots');
  try {
    // loaded here only: vega and vega-lite are large, and no other command (no server process) needs them
    plotsModule = await import('../bench/plots');
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    if (code !== 'ERR_MODULE_NOT_FOUND' && code !== 'MODULE_NOT_FOUND') throw e;
    const why = `vega or vega-lite is not installed (${(e as Error).message.split('\n')[0]})`;
    log(`no plots: ${why}`);
    return [{ title: 'plots', skipped: why }];
  }
  return plotsModule.writePlots(out, results);
}

export async function benchCommand(argv: string[]): Promise<void> {
  const args = Args.parse('bench', argv, {
    schemes: { type: 'string' },
    'users-per-edge': { type: 'string' },
    edges: { type: 'string' },
    model: { type: 'string' },
    rounds: { type: 'string' },
    'steps-per-user': { type: 'string' },
    links: { type: 'string' },
    'batch-size': { type: 'string' },
    'seq-len': { type: 'string' },
    aggregation: { type: 'string' },
    engine: { type: 'string' },
    provider: { type: 'string' },
    seed: { type: 'string' },
    eval: { type: 'boolean' },
    'eval-text': { type: 'string' },
    timeout: { type: 'string' },
    'max-users': { type: 'string' },
    out: { type: 'string' },
  });
  // every check of the settings happens here, before a directory or a process exists
  const plan = parsePlan(args);
  const points = planPoints(plan);
  const n = points.length;
  const log = (line: string) => process.stderr.write(`bench: ${line}\n`);

  mkdirSync(join(plan.out, 'points'), { recursive: true });
  writeRateTables(plan);
  const workDir = mkdtempSync(join(tmpdir(), 'splitllm-bench-'));
  let current: RunningChild | undefined;
  let interrupted: string | undefined;
  const onSignal = (s: NodeJS.Signals) => {
    interrupted = `the sweep was interrupted (${s})`;
    log(`${s}: stopping the running point; the results so far are written`);
    current?.stop(interrupted);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const results: BenchResults = {
    tool: 'splitllm bench',
    createdAt: new Date().toISOString(),
    argv,
    machine: {
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model.trim() ?? 'unknown',
      totalMemBytes: totalmem(),
      node: process.versions.node,
      platform: `${process.platform} ${process.arch}`,
    },
    settings: settingsOf(plan),
    baseHeldOutLoss: null,
    points: points.map(pendingResult),
  };
  try {
    log(
      `${n} points (${plan.schemes.length} schemes x N ${plan.usersPerEdge.join(',')} x E ${plan.edges.join(',')}` +
        ` x ${plan.links.length} link setting(s)), model ${plan.model.label}, edges and cloud on ` +
        `${plan.provider ?? 'cpu (their default)'}; results in ${plan.out}`,
    );
    const modelDir = modelDirFor(plan.model, workDir, log);
    const onChild = (c: RunningChild | undefined) => {
      current = c;
    };
    let heldout: string | undefined;
    if (plan.evalText !== undefined) {
      heldout = heldoutFile(plan.evalText, workDir);
      log(`held-out loss of the base model on ${plan.evalText} ...`);
      results.baseHeldOutLoss = await heldOutLoss(modelDir, heldout, undefined, plan.timeoutS * 1000, onChild);
      log(`base model: held-out loss ${results.baseHeldOutLoss.toFixed(4)}`);
    }
    for (const [i, point] of points.entries()) {
      const tag = `[${point.index}/${n}] ${point.id}`;
      const r = results.points[i];
      const timedOutBelow = results.points
        .slice(0, i)
        .find(
          (q) =>
            q.timedOut &&
            q.scheme === point.scheme &&
            q.edges === point.edges &&
            q.link.label === point.link.label &&
            q.usersPerEdge < point.usersPerEdge,
        );
      if (interrupted) r.reason = interrupted;
      else if (point.users > plan.maxUsers) r.reason = `${point.users} users is more than --max-users ${plan.maxUsers}`;
      else if (timedOutBelow) r.reason = `${timedOutBelow.id} timed out, so a larger N would too`;
      if (r.reason) {
        log(`${tag}: skipped: ${r.reason}`);
        continue;
      }
      log(
        `${tag}: ${point.scheme}, ${point.usersPerEdge} user(s) per edge x ${point.edges} edge(s) = ` +
          `${point.users} user process(es), link ${point.link.label} ...`,
      );
      const done = await runPoint(point, plan, {
        modelDir,
        heldoutFile: heldout,
        pointsDir: join(plan.out, 'points'),
        log: (line) => log(`${tag}${line}`),
        onChild,
      });
      results.points[i] = done;
      if (done.status === 'ok') {
        const s = done.summary!;
        log(
          `${tag}: ok in ${((done.wallMs ?? 0) / 1000).toFixed(1)} s; ` +
            `held at peak: edge ${bytesText(s.edgeMax.heldPeak)},` +
            ` cloud ${bytesText(s.cloud.heldPeak)}; peak RSS: edge ${bytesText(s.edgeMax.peakRss)},` +
            ` cloud ${bytesText(s.cloud.peakRss)}; round ${(s.roundMs / 1000).toFixed(1)} s`,
        );
      } else log(`${tag}: FAILED: ${done.reason} (logs in ${join(plan.out, done.logDir ?? 'points')})`);
      writeResultsJson(plan.out, results);
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    rmSync(workDir, { recursive: true, force: true });
  }
  const json = writeResultsJson(plan.out, results);
  const plots = await plotsIfInstalled(plan.out, results, log);
  const md = writeResultsMd(plan.out, results, plots);
  console.log(`results: ${json}`);
  console.log(`table:   ${md}`);
  for (const p of plots) console.log(p.file ? `plot:    ${p.file}` : `(not drawn: ${p.title}: ${p.skipped})`);
  console.log(`logs:    ${join(plan.out, 'points')}/<point>/logs`);
  if (interrupted) throw new Error(interrupted);
  const failed = results.points.filter((p) => p.status === 'failed');
  if (failed.length > 0)
    throw new Error(`${failed.length} of ${n} points failed (${failed.map((p) => p.id).join(', ')}); see ${md}`);
}
