/**
 * `splitllm cloud`, `splitllm edge`, `splitllm user`: one part of the system in this process,
 * serving until SIGINT/SIGTERM. Each prints `{"event":"ready",...}` on stdout when it serves
 * (launchers wait for it) and its structured log on stderr. Secrets come from the environment
 * (SPLITLLM_EDGE_SECRET, SPLITLLM_OPERATOR_TOKEN, SPLITLLM_EDGE_OPERATOR_TOKEN, SPLITLLM_JOIN_TOKEN)
 * so they never show in a process list.
 */
import {
  AGGREGATION_NAMES,
  DEFAULT_AGGREGATION,
  DEFAULT_GATE_MARGIN,
  DEFAULT_RATE_LIMITS,
  DEFAULT_RETENTION,
  startCloudServer,
} from '@splitllm/cloud-server';
import { startEdgeServer } from '@splitllm/edge-server';
import { EXECUTION_PROVIDERS, type ExecutionProvider } from '@splitllm/onnx-runner';
import { DEFAULT_LORA_TRAIN, parseAnyLoraTargets } from '@splitllm/model';
import {
  CODECS,
  type Codec,
  isCodec,
  isLabelPlacement,
  isTrainingScheme,
  LABEL_PLACEMENTS,
  type LabelPlacement,
  TRAINING_SCHEMES,
  type TrainingScheme,
} from '@splitllm/wire';
import { randomToken } from '@splitllm/wire/node';
import { LinkError, parseLinkSpec, startHeadlessUser, userLink } from '@splitllm/user-client/node';
import { Args, UsageError } from '../args';
import { SHIPPED_HELDOUT, modelDirOf } from '../io';
import { untilSignal } from '../launcher';

const print = (j: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(j)}\n`);

export function envSecret(name: string, what: string): string {
  const v = process.env[name];
  if (!v) throw new UsageError(`${what}: set ${name} in the environment`);
  return v;
}

/** A secret that may be left unset (the part then makes its own); an empty value counts as unset. */
export function optionalEnvSecret(name: string): string | undefined {
  return process.env[name] || undefined;
}

function provider(args: Args): ExecutionProvider {
  const p = args.optionalString('provider') ?? 'cpu';
  if (!(EXECUTION_PROVIDERS as readonly string[]).includes(p))
    throw new UsageError(`--provider must be one of ${EXECUTION_PROVIDERS.join(', ')}, got "${p}"`);
  return p as ExecutionProvider;
}

/** --noise SIGMA: a finite number >= 0 (0: no noise). */
export function noiseOf(args: Args): number {
  const sigma = args.float('noise', 0);
  if (!(Number.isFinite(sigma) && sigma >= 0)) throw new UsageError(`--noise must be a number >= 0, got ${sigma}`);
  return sigma;
}

export function codecOf(v: string | undefined): Codec {
  const c = v ?? 'f32';
  if (!isCodec(c)) throw new UsageError(`--codec must be one of ${CODECS.join(', ')}, got "${c}"`);
  return c;
}

/** --labels: where the labels are (default device: no token id leaves the tab). */
export function labelsOf(v: string | undefined): LabelPlacement {
  const l = v ?? 'device';
  if (!isLabelPlacement(l)) throw new UsageError(`--labels must be one of ${LABEL_PLACEMENTS.join(', ')}, got "${l}"`);
  return l;
}

/** --scheme: how the users of a round train (default hierarchical, the paper's scheme). */
export function schemeOf(v: string | undefined): TrainingScheme {
  const s = v ?? 'hierarchical';
  if (!isTrainingScheme(s)) throw new UsageError(`--scheme must be one of ${TRAINING_SCHEMES.join(', ')}, got "${s}"`);
  return s;
}

export const cloudHelp = `splitllm cloud --state DIR [--model NAME|DIR] [--port P] [--seed S] [--steps-per-user N]
    [--users-per-edge N] [--min-edges N] [--min-users N] [--max-rounds R] [--codec ${CODECS.join('|')}]
    [--labels ${LABEL_PLACEMENTS.join('|')}] [--noise SIGMA] [--scheme ${TRAINING_SCHEMES.join('|')}]
    [--batch-size B] [--seq-len T] [--lr LR] [--adam-eps EPS] [--rank R] [--alpha A] [--targets LIST]
    [--provider cpu|cuda|webgpu] [--threads N] [--lean-memory] [--log-level L] [--web DIR]
    [--aggregation ${AGGREGATION_NAMES.join('|')}] [--gate-margin NATS] [--heldout FILE]
    [--join-rate N] [--rejoin-rate N] [--join-token-rate N] [--keep-versions N] [--keep-hourly true|false]
  The cloud server: tail segment, rounds, aggregation (default ${DEFAULT_AGGREGATION}), state in DIR (resumes from
  the last recorded round; a state directory keeps its run's settings, aggregation included).
  --labels device (default): the tabs run the head and the loss, no label leaves them; cloud: labels travel
  with the activations (the paper's scheme). --noise SIGMA: the tabs add Gaussian noise of that standard
  deviation to h1 before it leaves (default 0); docs/privacy.md measures what each setting protects.
  --scheme hierarchical (default, the paper's): each edge trains its users one after another, edges in
  parallel; sfl: an edge trains its round's users all at once, one LoRA copy and optimizer state per user;
  sequential: one user at a time in the whole system (one edge per round), each starting from the adapter
  the one before it left (docs/design.md, section 2). The gate-*
  strategies refuse an update that raises the held-out loss on FILE (default the shipped Moby-Dick held-out
  text) by more than NATS (default ${DEFAULT_GATE_MARGIN}). Rate limits, requests a minute per address (0: none):
  join ${DEFAULT_RATE_LIMITS.join}, rejoin ${DEFAULT_RATE_LIMITS.rejoin},
  join-token guesses ${DEFAULT_RATE_LIMITS.joinTokens}.
  Retention: after each round the cloud deletes the adapter directories of versions outside the newest
  --keep-versions (default ${DEFAULT_RETENTION.keepLast}; 0 keeps all) and, with --keep-hourly (default
  ${DEFAULT_RETENTION.keepHourly}), the first version of each hour of the run; the latest two always stay. A deleted
  version keeps its row and figures (/api/admin/rounds); downloading it answers 410 VERSION_EVICTED.
  --lean-memory holds the tail's frozen weights once, not pre-packed: less memory, 10-20% slower on cpu
  (docs/benchmarks.md, "The edge's memory"). --web DIR serves the built user page (apps/user-web/dist)
  at /, so a join link is the cloud's address with ?join=TOKEN. Needs SPLITLLM_EDGE_SECRET and
  SPLITLLM_OPERATOR_TOKEN in the environment.
  Prints {"event":"ready","url":...} and one {"event":"round",...} line per recorded round.`;

export async function cloudCommand(argv: string[]): Promise<void> {
  const args = Args.parse('cloud', argv, {
    model: { type: 'string' },
    state: { type: 'string' },
    port: { type: 'string' },
    seed: { type: 'string' },
    'steps-per-user': { type: 'string' },
    'users-per-edge': { type: 'string' },
    'min-edges': { type: 'string' },
    'min-users': { type: 'string' },
    'max-rounds': { type: 'string' },
    codec: { type: 'string' },
    labels: { type: 'string' },
    noise: { type: 'string' },
    scheme: { type: 'string' },
    'batch-size': { type: 'string' },
    'seq-len': { type: 'string' },
    lr: { type: 'string' },
    'adam-eps': { type: 'string' },
    rank: { type: 'string' },
    alpha: { type: 'string' },
    targets: { type: 'string' },
    provider: { type: 'string' },
    threads: { type: 'string' },
    'lean-memory': { type: 'boolean' },
    'log-level': { type: 'string' },
    web: { type: 'string' },
    aggregation: { type: 'string' },
    'gate-margin': { type: 'string' },
    heldout: { type: 'string' },
    'join-rate': { type: 'string' },
    'rejoin-rate': { type: 'string' },
    'join-token-rate': { type: 'string' },
    'keep-versions': { type: 'string' },
    'keep-hourly': { type: 'string' },
  });
  const keepHourly = args.optionalString('keep-hourly') ?? String(DEFAULT_RETENTION.keepHourly);
  if (keepHourly !== 'true' && keepHourly !== 'false')
    throw new UsageError(`--keep-hourly must be true or false, got "${keepHourly}"`);
  const aggregation = args.optionalString('aggregation') ?? DEFAULT_AGGREGATION;
  if (!AGGREGATION_NAMES.includes(aggregation))
    throw new UsageError(`--aggregation must be one of ${AGGREGATION_NAMES.join(', ')}, got "${aggregation}"`);
  const server = await startCloudServer({
    aggregation,
    gateMargin: args.float('gate-margin', DEFAULT_GATE_MARGIN),
    heldoutFile: args.optionalString('heldout') ?? SHIPPED_HELDOUT,
    rateLimits: {
      join: args.int('join-rate', DEFAULT_RATE_LIMITS.join, 0),
      rejoin: args.int('rejoin-rate', DEFAULT_RATE_LIMITS.rejoin, 0),
      joinTokens: args.int('join-token-rate', DEFAULT_RATE_LIMITS.joinTokens, 0),
    },
    webDir: args.optionalString('web'),
    retention: {
      keepLast: args.int('keep-versions', DEFAULT_RETENTION.keepLast, 0),
      keepHourly: keepHourly === 'true',
    },
    modelDir: modelDirOf(args.optionalString('model')),
    stateDir: args.string('state'),
    port: args.int('port', 0),
    seed: args.int('seed', 0),
    edgeSecret: envSecret('SPLITLLM_EDGE_SECRET', 'cloud'),
    operatorToken: envSecret('SPLITLLM_OPERATOR_TOKEN', 'cloud'),
    // what is left out is the model family's default (r 8, alpha 16, its default targets)
    lora: {
      ...(args.optionalString('rank') !== undefined ? { r: args.int('rank', undefined, 1) } : {}),
      ...(args.optionalString('alpha') !== undefined ? { alpha: args.float('alpha', 16) } : {}),
      ...(args.optionalString('targets') ? { targets: parseAnyLoraTargets(args.string('targets')) } : {}),
    },
    train: {
      stepsPerUser: args.int('steps-per-user', 20, 1),
      usersPerEdge: args.int('users-per-edge', 1, 1),
      codec: codecOf(args.optionalString('codec')),
      labels: labelsOf(args.optionalString('labels')),
      activationNoise: noiseOf(args),
      scheme: schemeOf(args.optionalString('scheme')),
      ...(args.optionalString('batch-size') ? { batch: args.int('batch-size', 4, 1) } : {}),
      ...(args.optionalString('seq-len') ? { seq: args.int('seq-len', 64, 2) } : {}),
      adamw: {
        ...DEFAULT_LORA_TRAIN.adamw,
        lr: args.float('lr', DEFAULT_LORA_TRAIN.adamw.lr),
        eps: args.float('adam-eps', DEFAULT_LORA_TRAIN.adamw.eps),
      },
    },
    minEdges: args.int('min-edges', 1, 1),
    minUsers: args.int('min-users', 1, 1),
    maxRounds: args.int('max-rounds', 0),
    provider: provider(args),
    threads: args.int('threads', 0),
    leanMemory: args.flag('lean-memory'),
    logLevel: args.optionalString('log-level') ?? 'info',
    onRound: (s) => print({ event: 'round', ...s }),
  });
  print({ event: 'ready', url: server.url, version: server.coordinator.version });
  await untilSignal();
  await server.close();
}

export const edgeHelp = `splitllm edge --cloud URL [--id NAME] [--port P] [--provider cpu|cuda|webgpu]
    [--threads N] [--lean-memory] [--log-level L] [--step-timeout-ms MS] [--step-budget-ms MS] [--max-misses N]
    [--cloud-timeout-ms MS] [--user-connects-per-minute N]
  An edge server: registers with the cloud (SPLITLLM_EDGE_SECRET in the environment), runs the
  middle blocks for its users one at a time. The operator's dashboard is at /admin; its token is
  SPLITLLM_EDGE_OPERATOR_TOKEN from the environment, or, when unset, one generated and logged
  (stderr) once at start-up. Prints {"event":"ready","url":...,"adminUrl":...}.
  A user's frame must come within --step-timeout-ms (120000), its whole turn within
  --step-budget-ms (30000) per step plus one for its adapter; after --max-misses (2) turns in a
  row that run out it sits out the next round. The cloud must answer within --cloud-timeout-ms
  (60000). One IP may open --user-connects-per-minute (60) user sockets a minute. --lean-memory holds
  the segment's frozen weights once, not pre-packed: less memory, 10-20% slower on cpu.
  A launcher that restarted the edge says so in SPLITLLM_PART_RESTARTS and SPLITLLM_PART_LAST_EXIT.`;

export async function edgeCommand(argv: string[]): Promise<void> {
  const args = Args.parse('edge', argv, {
    cloud: { type: 'string' },
    id: { type: 'string' },
    port: { type: 'string' },
    provider: { type: 'string' },
    threads: { type: 'string' },
    'lean-memory': { type: 'boolean' },
    'log-level': { type: 'string' },
    'step-timeout-ms': { type: 'string' },
    'step-budget-ms': { type: 'string' },
    'max-misses': { type: 'string' },
    'cloud-timeout-ms': { type: 'string' },
    'user-connects-per-minute': { type: 'string' },
  });
  // a promise nobody awaited is a bug: logged in the structured log (launchers and tests look
  // for it), then the process exits as Node would, so a launcher restarts it
  process.on('unhandledRejection', (e) => {
    const err = e instanceof Error ? e : new Error(String(e));
    process.stderr.write(
      `${JSON.stringify({ level: 50, code: 'UNHANDLED_REJECTION', err: err.message, msg: 'unhandled rejection' })}\n`,
    );
    process.exit(1);
  });
  const restarts = Number(process.env.SPLITLLM_PART_RESTARTS ?? '');
  const server = await startEdgeServer({
    cloudUrl: args.string('cloud').replace(/\/$/, ''),
    edgeId: args.optionalString('id') ?? `edge-${randomToken(3)}`,
    edgeSecret: envSecret('SPLITLLM_EDGE_SECRET', 'edge'),
    operatorToken: optionalEnvSecret('SPLITLLM_EDGE_OPERATOR_TOKEN'),
    port: args.int('port', 0),
    provider: provider(args),
    threads: args.int('threads', 0),
    leanMemory: args.flag('lean-memory'),
    logLevel: args.optionalString('log-level') ?? 'info',
    stepTimeoutMs: args.int('step-timeout-ms', 120_000, 1),
    stepBudgetMs: args.int('step-budget-ms', 30_000, 1),
    maxMisses: args.int('max-misses', 2, 1),
    cloudTimeoutMs: args.int('cloud-timeout-ms', 60_000, 1),
    userConnectsPerMinute: args.int('user-connects-per-minute', 60, 1),
    ...(Number.isInteger(restarts) && restarts > 0
      ? { restarts: { count: restarts, lastExit: process.env.SPLITLLM_PART_LAST_EXIT || null } }
      : {}),
  });
  print({
    event: 'ready',
    url: server.url,
    provider: server.runner.provider,
    ...(server.adminUrl ? { adminUrl: server.adminUrl } : {}),
  });
  await untilSignal();
  await server.close();
}

export const userHelp = `splitllm user --cloud URL --data FILE [--seed S] [--engine auto|wgsl|wasm|reference] [--json]
    [--pause-ms MS] [--link none|table:FILE.json|random:SEED[:LO-HI]|shannon:SEED[:RADIUS] [--link-index I]]
  A headless user: joins with SPLITLLM_JOIN_TOKEN (from the environment), downloads its segment
  from the assigned edge and trains on FILE whenever its turn comes. Engines: wgsl (WebGPU),
  wasm (onnxruntime-web's wasm backend), reference (TypeScript). 'auto' uses wgsl on a hardware
  WebGPU adapter, wasm without one, and on a software adapter times one step of each and keeps
  the faster. --pause-ms (default 0) paces it: a turn that comes sooner than MS after its last turn
  ended waits out the rest, unless another user waits at the edge (keep MS under the edge's turn deadline).
  --link models a wireless link on the edge socket, this user being user I (default 0) of the spec: a table's
  entry I (cycling), rates log-uniform in LO-HI Mbps, or Shannon capacity at a distance within RADIUS m
  (docs/benchmarks.md, "Modelled wireless links"). Default none.`;

export async function userCommand(argv: string[]): Promise<void> {
  const args = Args.parse('user', argv, {
    cloud: { type: 'string' },
    data: { type: 'string' },
    seed: { type: 'string' },
    engine: { type: 'string' },
    json: { type: 'boolean' },
    'pause-ms': { type: 'string' },
    link: { type: 'string' },
    'link-index': { type: 'string' },
  });
  const engine = args.optionalString('engine') ?? 'auto';
  if (engine !== 'auto' && engine !== 'wgsl' && engine !== 'wasm' && engine !== 'reference')
    throw new UsageError(`--engine must be auto, wgsl, wasm or reference, got "${engine}"`);
  const linkIndex = args.int('link-index', 0);
  let link: ReturnType<typeof userLink>;
  try {
    link = userLink(parseLinkSpec(args.optionalString('link') ?? 'none'), linkIndex);
  } catch (e) {
    if (e instanceof LinkError) throw new UsageError(`--link: ${e.message}`);
    throw e;
  }
  const json = args.flag('json');
  const client = await startHeadlessUser({
    cloudUrl: args.string('cloud').replace(/\/$/, ''),
    joinToken: envSecret('SPLITLLM_JOIN_TOKEN', 'user'),
    dataFile: args.string('data'),
    seed: args.int('seed', 0),
    engine,
    pauseMs: args.int('pause-ms', 0),
    link,
    onEvent: (e) => {
      if (json) {
        print({ event: 'user', ...e });
        // the edge closed for good (a refused token, a removal, no edge to go to): this process is done
        if (e.type === 'closed') process.exit(3);
        return;
      }
      if (e.type === 'engine') process.stderr.write(`user engine: ${e.kind} (${e.reason})\n`);
      else if (e.type === 'step')
        process.stderr.write(
          `round ${e.round} step ${e.step}/${e.steps} loss ${e.loss.toFixed(4)} ${e.ms.toFixed(0)} ms\n`,
        );
      else if (e.type === 'error') process.stderr.write(`user: ${e.code}: ${e.message}\n`);
      else if (e.type === 'reconnecting') process.stderr.write(`user: ${e.reason}; asking the cloud for an edge\n`);
      else if (e.type === 'reassigned') process.stderr.write(`user: now on edge ${e.edgeId} (${e.edgeUrl})\n`);
      else if (e.type === 'closed') {
        process.stderr.write(`user: the edge closed the connection (${e.code} ${e.reason})\n`);
        process.exit(3);
      }
    },
  });
  print({
    event: 'ready',
    userId: client.userId,
    edgeUrl: client.edgeUrl,
    engine: client.trainer?.kind,
    description: client.trainer?.description,
  });
  await untilSignal();
  client.stop('stopped');
  // Dawn's device keeps the event loop alive; nothing is left to flush
  process.exit(0);
}
