/**
 * `splitllm simulate`: the whole system on loopback, every part its own process: a cloud, E
 * edges and U headless users. Runs R rounds, prints one JSON object per round and writes the
 * final global adapter (PEFT layout) to --out.
 */
import { AGGREGATION_NAMES } from '@splitllm/federation';
import { EXECUTION_PROVIDERS } from '@splitllm/onnx-runner';
import { CODECS, TRAINING_SCHEMES } from '@splitllm/wire';
import { DEFAULT_LORA_TRAIN } from '@splitllm/model';
import { loadModelAdapterDir, saveModelAdapterDir } from '@splitllm/model/node';
import { randomToken } from '@splitllm/wire/node';
import { LinkError, parseLinkSpec } from '@splitllm/user-client/node';
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Args, UsageError } from '../args';
import { modelDirOf } from '../io';
import { issueJoinToken, logTail, startPart, untilSignal, type Part } from '../launcher';
import { codecOf, schemeOf } from './parts';

export const simulateHelp = `splitllm simulate --edges E --users U --rounds R --steps-per-user N --data DIR_OR_FILE
    --seed S --out DIR [--model NAME|DIR] [--codec ${CODECS.join('|')}] [--labels device|cloud] [--noise SIGMA]
    [--scheme ${TRAINING_SCHEMES.join('|')}] [--users-per-edge N] [--aggregation NAME]
    [--links none|table:FILE.json|random:SEED[:LO-HI]|shannon:SEED[:RADIUS]]
    [--engine auto|wgsl|wasm|reference] [--batch-size B] [--seq-len T] [--lr LR] [--adam-eps EPS]
    [--state DIR] [--keep-versions N] [--threads N] [--provider ${EXECUTION_PROVIDERS.join('|')}] [--json]
  --model: moby-tiny (the shipped GPT-2, default), moby-llama-tiny (the shipped LLaMA-architecture
  model) or a model directory of either family.
  Starts a cloud, E edges and U headless users as separate processes on loopback and runs R
  rounds. User i trains on the i-th .txt file of DIR (cycling), or all on FILE; its batches come
  from seed S+i. Prints one line per round (--json: one JSON object with round, loss, users,
  bytes, the scheme, the bytes of each hop and the peak memory of the cloud and each edge, as the
  cloud reports them, and pids: the process id of the cloud and of each edge, to join with
  per-process figures sampled from outside), writes the final global adapter to DIR in PEFT layout,
  logs to DIR/logs, and every round's line with its adapter directory to DIR/rounds.json.
  --scheme, --aggregation, --keep-versions and the training settings go to the cloud (see
  \`splitllm cloud\`); --state DIR keeps the cloud's state (a temporary one is removed otherwise).
  --provider goes to the cloud and to every edge (their onnxruntime execution provider; left out, theirs
  is cpu); --threads too (their intra-op threads, default 1).
  A measurement run: a part that exits before round R fails the run with the tail of its log
  (nothing is restarted, so no figure mixes a restart in; \`serve\` restarts parts).
  --links gives user i the i-th link of the spec (see \`splitllm user --link\`), so round times include
  a modelled wireless link between each user and its edge.
  Defaults: the shipped model, f32, 1 user per edge per round, engine auto,
  batch ${DEFAULT_LORA_TRAIN.batchSize} x ${DEFAULT_LORA_TRAIN.seqLen}, lr ${DEFAULT_LORA_TRAIN.adamw.lr}.`;

function dataFiles(path: string): string[] {
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(path);
  } catch {
    throw new UsageError(`--data "${path}" does not exist`);
  }
  if (st.isFile()) return [resolve(path)];
  const files = readdirSync(path)
    .filter((f) => f.endsWith('.txt'))
    .sort()
    .map((f) => resolve(path, f));
  if (files.length === 0) throw new UsageError(`--data directory "${path}" has no .txt files`);
  return files;
}

/** A part's process id; a part that has been ready has one (spawn failed otherwise). */
function pidOf(p: Part): number {
  if (p.child.pid === undefined) throw new Error(`${p.name} has no process id (it did not start)`);
  return p.child.pid;
}

/** ", training state held at peak: cloud X MiB, edges Y MiB": the round's memory for the human-readable line. */
function heldText(memory: unknown): string {
  const m = memory as { cloud?: { heldPeak?: unknown }; edges?: Record<string, { heldPeak?: unknown }> } | undefined;
  if (typeof m?.cloud?.heldPeak !== 'number' || typeof m.edges !== 'object') return ', no memory figures in the round';
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(2)} MiB`;
  const edges = Object.values(m.edges).map((e) => mib(Number(e.heldPeak)));
  return `, training state held at peak: cloud ${mib(m.cloud.heldPeak)}, edges ${edges.join(' / ') || '-'}`;
}

export async function simulateCommand(argv: string[]): Promise<void> {
  const args = Args.parse('simulate', argv, {
    edges: { type: 'string' },
    users: { type: 'string' },
    rounds: { type: 'string' },
    'steps-per-user': { type: 'string' },
    'users-per-edge': { type: 'string' },
    model: { type: 'string' },
    data: { type: 'string' },
    seed: { type: 'string' },
    out: { type: 'string' },
    codec: { type: 'string' },
    labels: { type: 'string' },
    noise: { type: 'string' },
    engine: { type: 'string' },
    'batch-size': { type: 'string' },
    'seq-len': { type: 'string' },
    lr: { type: 'string' },
    'adam-eps': { type: 'string' },
    state: { type: 'string' },
    threads: { type: 'string' },
    json: { type: 'boolean' },
    links: { type: 'string' },
    scheme: { type: 'string' },
    aggregation: { type: 'string' },
    'keep-versions': { type: 'string' },
    provider: { type: 'string' },
  });
  const E = args.int('edges', undefined, 1);
  const U = args.int('users', undefined, 1);
  const R = args.int('rounds', undefined, 1);
  const N = args.int('steps-per-user', undefined, 1);
  const seed = args.int('seed');
  const outDir = resolve(args.string('out'));
  const files = dataFiles(args.string('data'));
  const codec = codecOf(args.optionalString('codec'));
  const engine = args.optionalString('engine') ?? 'auto';
  if (!['auto', 'wgsl', 'wasm', 'reference'].includes(engine))
    throw new UsageError(`--engine must be auto, wgsl, wasm or reference, got "${engine}"`);
  const json = args.flag('json');
  // checked here, so that a wrong value is one line before any process starts, not a cloud that fails
  schemeOf(args.optionalString('scheme'));
  const aggregation = args.optionalString('aggregation');
  if (aggregation !== undefined && !AGGREGATION_NAMES.includes(aggregation))
    throw new UsageError(`--aggregation must be one of ${AGGREGATION_NAMES.join(', ')}, got "${aggregation}"`);
  if (args.optionalString('keep-versions') !== undefined) args.int('keep-versions', undefined, 0);
  const provider = args.optionalString('provider');
  if (provider !== undefined && !(EXECUTION_PROVIDERS as readonly string[]).includes(provider))
    throw new UsageError(`--provider must be one of ${EXECUTION_PROVIDERS.join(', ')}, got "${provider}"`);
  // the cloud and the edges get it alike; left out, each part keeps its own default
  const providerArgs = provider === undefined ? [] : ['--provider', provider];
  let links: ReturnType<typeof parseLinkSpec>;
  try {
    links = parseLinkSpec(args.optionalString('links') ?? 'none');
  } catch (e) {
    if (e instanceof LinkError) throw new UsageError(`--links: ${e.message}`);
    throw e;
  }
  const modelDir = modelDirOf(args.optionalString('model'));
  const threads = String(args.int('threads', 1));
  const tmpState = args.optionalString('state') ? undefined : mkdtempSync(join(tmpdir(), 'splitllm-sim-'));
  const stateDir = args.optionalString('state') ?? join(tmpState!, 'state');
  const logDir = join(outDir, 'logs');
  mkdirSync(outDir, { recursive: true });
  const env = { SPLITLLM_EDGE_SECRET: randomToken(), SPLITLLM_OPERATOR_TOKEN: randomToken() };

  const parts: Part[] = [];
  const stopAll = async () => {
    for (const p of [...parts].reverse()) await p.stop();
  };
  let failed: Error | undefined;
  const fail = (e: Error) => {
    failed ??= e;
  };
  try {
    const trainArgs = ['--steps-per-user', String(N), '--codec', codec, '--seed', String(seed)];
    for (const [flag, key] of [
      ['--users-per-edge', 'users-per-edge'],
      ['--batch-size', 'batch-size'],
      ['--seq-len', 'seq-len'],
      ['--lr', 'lr'],
      ['--adam-eps', 'adam-eps'],
      ['--labels', 'labels'],
      ['--noise', 'noise'],
      ['--scheme', 'scheme'],
      ['--aggregation', 'aggregation'],
      ['--keep-versions', 'keep-versions'],
    ] as const) {
      const v = args.optionalString(key);
      if (v !== undefined) trainArgs.push(flag, v);
    }
    const cloud = startPart(
      'cloud',
      [
        'cloud',
        '--model',
        modelDir,
        '--state',
        stateDir,
        '--min-edges',
        String(E),
        '--min-users',
        String(U),
        '--max-rounds',
        String(R),
        '--threads',
        threads,
        // a measurement run joins all its users at once from one address: no join rate limit
        '--join-rate',
        '0',
        ...providerArgs,
        ...trainArgs,
      ],
      { logDir, env },
    );
    parts.push(cloud);
    // each round's line says which processes ran it, so figures sampled per process (device memory) join it
    const pids: { cloud: number; edges: Record<string, number> } = { cloud: pidOf(cloud), edges: {} };
    const url = String((await cloud.ready).url);
    const rounds: Array<Record<string, unknown>> = [];
    let watchExit: (p: Part) => void = () => undefined;
    const allDone = new Promise<void>((res, rej) => {
      cloud.onLine((j) => {
        if (j.event !== 'round') return;
        const line = {
          round: j.round,
          version: j.version,
          loss: j.loss,
          users: j.users,
          edges: j.edges,
          tokens: j.tokens,
          bytes: j.bytes,
          ms: j.ms,
          // the scheme's figures (splitllm bench reads them): bytes per hop, each process's peak memory
          scheme: j.scheme,
          userEdgeBytes: j.userEdgeBytes,
          edgeCloudBytes: j.edgeCloudBytes,
          memory: j.memory,
          pids: { cloud: pids.cloud, edges: { ...pids.edges } },
          adapterDir: j.adapterDir,
          turns: j.turns,
        };
        rounds.push(line);
        if (json) console.log(JSON.stringify({ ...line, adapterDir: undefined, turns: undefined }));
        else
          console.log(
            `round ${j.round} (${String(j.scheme)}): loss ${Number(j.loss).toFixed(4)}, ${j.users} users on ` +
              `${j.edges} edges, ${j.tokens} tokens, ${(Number(j.bytes) / 2 ** 20).toFixed(2)} MiB on the wire, ` +
              `${(Number(j.ms) / 1000).toFixed(1)} s${heldText(j.memory)}`,
          );
        if (Number(j.version) >= R) res();
      });
      watchExit = (p) =>
        void p.exited.then((code) =>
          rej(new Error(`${p.name} exited (code ${code}) before round ${R}; log ${p.logFile}:\n${logTail(p.logFile)}`)),
        );
      watchExit(cloud);
    });
    allDone.catch(() => undefined);
    const edges = Array.from({ length: E }, (_, i) =>
      startPart(`edge-${i}`, ['edge', '--cloud', url, '--id', `edge-${i}`, '--threads', threads, ...providerArgs], {
        logDir,
        env,
      }),
    );
    parts.push(...edges);
    // the edge's id (its name here) is the key the round's memory figures use too
    for (const e of edges) pids.edges[e.name] = pidOf(e);
    for (const e of edges) watchExit(e);
    await Promise.all(edges.map((e) => e.ready));
    for (let i = 0; i < U; i++) {
      const joinToken = await issueJoinToken(url, env.SPLITLLM_OPERATOR_TOKEN);
      const userArgs = ['user', '--cloud', url, '--data', files[i % files.length], '--seed', String(seed + i)];
      // the spec as parsed (a table's path absolute), checked above: user i picks its own link
      const linkArgs = links.kind === 'none' ? [] : ['--link', links.spec, '--link-index', String(i)];
      const user = startPart(`user-${i}`, [...userArgs, '--engine', engine, ...linkArgs], {
        logDir,
        env: { SPLITLLM_JOIN_TOKEN: joinToken },
      });
      parts.push(user);
      watchExit(user);
      const ready = await user.ready;
      if (!json)
        console.log(
          `user-${i} (${String(ready.userId)}) on ${String(ready.edgeUrl)}: ` +
            `${String(ready.description ?? ready.engine)}`,
        );
    }
    const signal = untilSignal().then((s) => {
      throw new Error(`interrupted (${s})`);
    });
    await Promise.race([allDone, signal]);
    const last = rounds[rounds.length - 1];
    const version = Number(last.version);
    saveModelAdapterDir(outDir, loadModelAdapterDir(String(last.adapterDir)), { baseModel: modelDir });
    writeFileSync(join(outDir, 'rounds.json'), `${JSON.stringify(rounds, null, 2)}\n`);
    if (!json) console.log(`final adapter (version ${version}) written to ${outDir} (PEFT layout); logs in ${logDir}`);
  } catch (e) {
    fail(e as Error);
  } finally {
    await stopAll();
    if (tmpState) rmSync(tmpState, { recursive: true, force: true });
  }
  if (failed) throw failed;
}
