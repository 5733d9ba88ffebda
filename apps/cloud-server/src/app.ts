/**
 * The cloud server: builds the run (model, cut, settings, state directory), the cloud's parts
 * (edge registry, global versions, round lifecycle, metrics) as typed decorators, and registers
 * one plugin per route group. `startCloudServer` owns the process-level resources (the
 * onnxruntime worker, the database) and closes them with the app.
 */
import rateLimit from '@fastify/rate-limit';
import websocket from '@fastify/websocket';
import {
  AGGREGATION_NAMES,
  createStrategy,
  DEFAULT_AGGREGATION,
  DEFAULT_GATE_MARGIN,
  type AdapterScore,
  needsScore,
} from '@splitllm/federation';
import {
  AdapterCheckError,
  codeOf,
  type AnyModel,
  checkLoraTargetsFit,
  defaultLoraConfig,
  DEFAULT_LORA_TRAIN,
  defaultSplitPlan,
  encodeSegment,
  initLoraAdapter,
  isLlamaConfig,
  modelConfigToJson,
  modelDims,
  tokenizerWireFiles,
  type LoraConfig,
  loraParameterCount,
  type SplitPlan,
  validateSplitPlan,
} from '@splitllm/model';
import { loadModelDir } from '@splitllm/model/node';
import { BlocksSegment, type ExecutionProvider, SegmentRunner, TailSegment } from '@splitllm/onnx-runner';
import {
  isLabelPlacement,
  isTrainingScheme,
  TRAINING_SCHEMES,
  LABEL_PLACEMENTS,
  ProtocolError,
  type RunManifest,
  type TrainSettings,
} from '@splitllm/wire';
import { redactedRequest } from '@splitllm/wire/node';
import Fastify, { type FastifyError, type FastifyInstance } from 'fastify';
import { createHash } from 'node:crypto';
import { basename, resolve } from 'node:path';
import type { CloudRun, CloudSegment, RateLimits } from './context';

export type { RateLimits } from './context';
/** what the `cloud` command's --aggregation and --gate-margin offer */
export { AGGREGATION_NAMES, DEFAULT_AGGREGATION, DEFAULT_GATE_MARGIN } from '@splitllm/federation';
import { EdgeRegistry, type EdgeInfo } from './edge-registry';
import { CloudConfigError, CloudRequestError } from './errors';
import { heldoutScorer } from './gate';
import { readModelInfo, runPrivacy } from './privacy';
import { createCloudMetrics } from './metrics';
import { Rounds, type RoundSummary } from './rounds';
import type { CloudSteps } from './tail';
import { downloadRoutes } from './routes/downloads';
import { edgeRoutes } from './routes/edges';
import { generateRoutes } from './routes/generate';
import { invitationRoutes } from './routes/invitations';
import { joinRoutes } from './routes/join';
import { roundRoutes } from './routes/rounds';
import { statusRoutes } from './routes/status';
import { versionRoutes } from './routes/versions';
import { webPagePlugin } from './routes/web';
import { addSharedSchemas } from './schemas';
import { RoundStore } from './store';
import { GlobalVersions, type RetentionPolicy } from './versions';

export interface CloudServerOptions {
  modelDir: string;
  /** database file and adapter versions live here; an existing state resumes */
  stateDir: string;
  host?: string;
  /** 0 picks a free port */
  port?: number;
  /** edges prove this to register */
  edgeSecret: string;
  /** issues join tokens */
  operatorToken: string;
  /** the initial adapter's seed (a resumed state keeps its own) */
  seed: number;
  plan?: SplitPlan;
  /** rank, alpha, targets; what is left out is the model family's default (defaultLoraConfig) */
  lora?: Partial<LoraConfig>;
  train?: Partial<TrainSettings>;
  minEdges?: number;
  minUsers?: number;
  maxRounds?: number;
  roundTimeoutMs?: number;
  /** the aggregation strategy's name (default DEFAULT_AGGREGATION); part of the run's settings */
  aggregation?: string;
  /** the validation gate's margin in nats/token (gate-* strategies; default DEFAULT_GATE_MARGIN) */
  gateMargin?: number;
  /** public held-out text the gate scores candidates on (needed by gate-* strategies) */
  heldoutFile?: string;
  /** requests per minute per client IP (see DEFAULT_RATE_LIMITS) */
  rateLimits?: Partial<RateLimits>;
  provider?: ExecutionProvider;
  threads?: number;
  /**
   * the frozen weights once per segment, as inputs shared by its graphs, not pre-packed: less
   * memory, 10-20% slower on cpu (docs/benchmarks.md, "The edge's memory")
   */
  leanMemory?: boolean;
  /** false silences the request log (tests); otherwise JSON lines on stderr */
  logLevel?: string | false;
  onRound?: (s: RoundSummary) => void;
  /** serve the built user page (apps/user-web/dist) from this directory at / */
  webDir?: string;
  /** which versions keep their adapter directory (default DEFAULT_RETENTION: the last 20, one an hour) */
  retention?: RetentionPolicy;
}

/**
 * 20 joins a minute from one address lets a classroom behind one NAT in within a minute or two
 * while a join-token guesser gets 1,200 tries an hour against 128-bit tokens; rejoin is higher
 * because an edge that dies sends all its users back at once (the client retries every second);
 * the operator's own token issuing is not limited, guesses of its token are.
 */
export const DEFAULT_RATE_LIMITS: RateLimits = { join: 20, rejoin: 60, joinTokens: 30 };

export const DEFAULT_TRAIN_SETTINGS: TrainSettings = {
  batch: DEFAULT_LORA_TRAIN.batchSize,
  seq: DEFAULT_LORA_TRAIN.seqLen,
  stepsPerUser: 20,
  usersPerEdge: 1,
  codec: 'f32',
  adamw: DEFAULT_LORA_TRAIN.adamw,
  labels: 'device',
  activationNoise: 0,
  scheme: 'hierarchical',
};

export interface CloudServer {
  app: FastifyInstance;
  url: string;
  edges: EdgeRegistry;
  rounds: Rounds;
  versions: GlobalVersions;
  store: RoundStore;
  /** the view the CLI and the system tests read: the edges and the current version */
  coordinator: { readonly edges: ReadonlyMap<string, EdgeInfo>; readonly version: number };
  manifest: () => RunManifest;
  close(): Promise<void>;
}

/**
 * The largest frame the session can legitimately need, plus 1 MiB for headers: a step (h and
 * labels), or an edge's update (its adapter of blocks [k, m) and usersPerEdge user adapters of
 * blocks [0, k), as float32).
 */
function maxFrameBytes(model: AnyModel, lora: LoraConfig, plan: SplitPlan, t: TrainSettings): number {
  const c = model.config;
  const step = t.batch * t.seq * (modelDims(c).width + 1) * 4;
  const edgePart = loraParameterCount(c, lora, plan.k, plan.m);
  const update = (edgePart + t.usersPerEdge * loraParameterCount(c, lora, 0, plan.k)) * 4;
  return Math.max(step, update) + (1 << 20);
}

/** The status and code a refused request is answered with. */
function refusal(err: FastifyError | Error): { status: number; code: string } {
  if (err instanceof CloudRequestError) return { status: err.status, code: err.code };
  if (err instanceof ProtocolError || err instanceof AdapterCheckError) return { status: 400, code: err.code };
  const e = err as FastifyError;
  if (e.validation) return { status: 400, code: 'BAD_REQUEST' };
  return { status: e.statusCode ?? 500, code: codeOf(err, typeof e.code === 'string' ? e.code : 'INTERNAL') };
}

/** Opens the state directory: a new one records this run and its initial adapter. */
function openState(
  o: CloudServerOptions,
  model: AnyModel,
  plan: SplitPlan,
  train: TrainSettings,
  aggregation: string,
): RoundStore {
  const c = model.config;
  const store = RoundStore.open(o.stateDir, { baseModel: resolve(o.modelDir), nLayer: c.nLayer });
  // a state directory belongs to one run: resuming it with other settings would mix two runs
  const lora: LoraConfig = { ...defaultLoraConfig(c), ...o.lora };
  try {
    checkLoraTargetsFit(c, lora);
  } catch (e) {
    store.close();
    throw new CloudConfigError('BAD_SETTINGS', (e as Error).message);
  }
  const runKey = JSON.stringify({ model: resolve(o.modelDir), plan, train, lora, seed: o.seed });
  const recorded = store.getMeta('run');
  if (recorded === undefined) {
    store.setMeta('run', runKey);
    store.initGlobal(initLoraAdapter(c, lora, o.seed));
  } else if (recorded !== runKey) {
    store.close();
    throw new CloudConfigError(
      'STATE_OF_ANOTHER_RUN',
      `state directory ${o.stateDir} belongs to another run (${recorded}); use a new --state directory`,
    );
  }
  // kept apart from the run key so that a state directory of a version without the setting
  // (which always aggregated with FedAvg) resumes, recording the aggregation it runs with from now
  const agg = store.getMeta('run.aggregation');
  if (agg === undefined) {
    store.setMeta('run.aggregation', aggregation);
  } else if (agg !== aggregation) {
    store.close();
    throw new CloudConfigError(
      'STATE_OF_ANOTHER_RUN',
      `state directory ${o.stateDir} belongs to a run that aggregates with ${agg}, not ${aggregation}; ` +
        'use a new --state directory',
    );
  }
  return store;
}

export async function startCloudServer(o: CloudServerOptions): Promise<CloudServer> {
  const loaded = loadModelDir(o.modelDir);
  const { model } = loaded;
  const c = model.config;
  const plan = o.plan ?? defaultSplitPlan(c);
  validateSplitPlan(c, plan);
  const train: TrainSettings = {
    ...DEFAULT_TRAIN_SETTINGS,
    ...o.train,
    adamw: { ...DEFAULT_TRAIN_SETTINGS.adamw, ...o.train?.adamw },
  };
  const { positions } = modelDims(c);
  if (train.seq > positions) {
    throw new CloudConfigError('BAD_SETTINGS', `seq ${train.seq} exceeds the model's ${positions} positions`);
  }
  if (!isTrainingScheme(train.scheme)) {
    const known = TRAINING_SCHEMES.join(', ');
    throw new CloudConfigError('BAD_SETTINGS', `scheme must be one of ${known}, got ${JSON.stringify(train.scheme)}`);
  }
  if (!isLabelPlacement(train.labels)) {
    const known = LABEL_PLACEMENTS.join(', ');
    throw new CloudConfigError('BAD_SETTINGS', `labels must be one of ${known}, got ${JSON.stringify(train.labels)}`);
  }
  if (!(Number.isFinite(train.activationNoise) && train.activationNoise >= 0)) {
    throw new CloudConfigError(
      'BAD_SETTINGS',
      `the activation noise must be a number >= 0, got ${train.activationNoise}`,
    );
  }
  const strategyName = o.aggregation ?? DEFAULT_AGGREGATION;
  if (!AGGREGATION_NAMES.includes(strategyName)) {
    const known = AGGREGATION_NAMES.join(', ');
    throw new CloudConfigError('UNKNOWN_STRATEGY', `unknown aggregation strategy "${strategyName}" (known: ${known})`);
  }
  const margin = o.gateMargin ?? DEFAULT_GATE_MARGIN;
  if (!(Number.isFinite(margin) && margin >= 0)) {
    throw new CloudConfigError('BAD_SETTINGS', `the gate margin must be a number >= 0, got ${margin}`);
  }
  let score: AdapterScore | undefined;
  if (needsScore(strategyName)) {
    if (!o.heldoutFile) {
      throw new CloudConfigError('BAD_SETTINGS', `aggregation ${strategyName} needs held-out text (--heldout FILE)`);
    }
    score = heldoutScorer(model, loaded.tokenizer, o.heldoutFile, train.batch, train.seq).score;
  }
  const strategy = createStrategy(strategyName, { score, margin });
  // the margin decides what is refused: a run's is part of its aggregation setting
  const aggregationKey = needsScore(strategyName) ? `${strategyName} (margin ${margin})` : strategyName;
  const limits: RateLimits = { ...DEFAULT_RATE_LIMITS, ...o.rateLimits };
  const webPage = o.webDir ? webPagePlugin(o.webDir) : undefined;

  // read once: the model card and the measured figures belong to the run, which never changes them
  const modelInfo = readModelInfo(o.modelDir, model);
  const privacy = runPrivacy(o.modelDir, plan, train);
  const store = openState(o, model, plan, train, aggregationKey);
  const lora = store.loadAdapter(store.latest()).config;
  const segments = { user: encodeSegment(model, plan, 'user'), edge: encodeSegment(model, plan, 'edge') };
  const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
  const segmentInfo = {
    user: { sha256: sha(segments.user), bytes: segments.user.byteLength },
    edge: { sha256: sha(segments.edge), bytes: segments.edge.byteLength },
  };

  const log =
    o.logLevel === false
      ? false
      : { level: o.logLevel ?? 'info', stream: process.stderr, serializers: { req: redactedRequest } };
  const app = Fastify({ logger: log, bodyLimit: 1 << 20 });
  const runner = await SegmentRunner.start({
    provider: o.provider ?? 'cpu',
    threads: o.threads ?? 0,
    log: (line) => app.log.info(line),
    ...(o.leanMemory ? { weights: 'shared' as const } : {}),
  });
  // labels in the cloud: the tail with the head and the loss; on the device: blocks [m, L) alone
  const segment: CloudSegment =
    train.labels === 'cloud'
      ? { labels: 'cloud', tail: await TailSegment.create(runner, model, lora, plan.m) }
      : {
          labels: 'device',
          blocks: await BlocksSegment.create(runner, model, lora, plan.m, c.nLayer, {
            saveIntermediates: runner.provider === 'cpu',
          }),
        };
  const steps: CloudSteps = segment.labels === 'cloud' ? segment : { labels: 'device', blocks: segment.blocks };
  const metrics = createCloudMetrics();
  const versions = new GlobalVersions(store, plan, c.nLayer, metrics.registry, {
    retention: o.retention,
    warn: (obj, msg) => app.log.warn(obj, msg),
  });
  const edges = new EdgeRegistry(app.log, metrics, metrics.registry);
  const minEdges = o.minEdges ?? 1;
  const minUsers = o.minUsers ?? 1;
  const maxRounds = o.maxRounds ?? 0;
  const rounds = new Rounds({
    config: c,
    train,
    steps,
    versions,
    edges,
    strategy,
    metrics,
    registry: metrics.registry,
    log: app.log,
    minEdges,
    minUsers,
    maxRounds,
    roundTimeoutMs: o.roundTimeoutMs ?? 30 * 60_000,
    onRound: o.onRound,
  });
  edges.onDetached((edgeId) => rounds.excludeEdge(edgeId, 'edge excluded from the round'));
  edges.onTraffic((bytes) => rounds.countBytes(bytes));

  const run: CloudRun = {
    config: c,
    plan,
    lora,
    train,
    settings: { minEdges, minUsers, maxRounds, strategy: aggregationKey },
    rateLimits: limits,
    manifest: () => ({
      modelName: basename(resolve(o.modelDir)),
      model: modelInfo,
      config: modelConfigToJson(c),
      plan,
      lora,
      train,
      version: versions.version,
      segments: segmentInfo,
      privacy,
    }),
    segments,
    segmentInfo,
    tokenizer: tokenizerWireFiles(loaded.tokenizer),
    frameLimit: maxFrameBytes(model, lora, plan, train),
    edgeSecret: o.edgeSecret,
    operatorToken: o.operatorToken,
  };

  app.decorate('cloudRun', run);
  app.decorate('cloudEdges', edges);
  app.decorate('cloudRounds', rounds);
  app.decorate('cloudVersions', versions);
  app.decorate('cloudStore', store);
  app.decorate('cloudSegment', { getter: () => segment });
  app.decorate('cloudMetrics', metrics);
  app.decorateRequest('cloudEdge', null);
  addSharedSchemas(app);

  app.setErrorHandler((err: FastifyError, req, reply) => {
    const { status, code } = refusal(err);
    // a CloudRequestError was logged (or deliberately not) where it was refused
    if (!(err instanceof CloudRequestError)) req.log.warn({ code, err: err.message }, 'request rejected');
    return reply.code(status).send({ code, message: err.message });
  });
  app.addContentTypeParser(
    'application/octet-stream',
    { parseAs: 'buffer', bodyLimit: run.frameLimit },
    (_req, body, done) => done(null, body),
  );
  // route-level limits only (config.rateLimit on join, rejoin, join-tokens), checked in onRequest,
  // before any body is read
  await app.register(rateLimit, { global: false });
  // the default not-found answer and log line carry the whole URL, query string included
  app.setNotFoundHandler((req, reply) => {
    const path = (req.url ?? '').split('?')[0];
    req.log.info({ code: 'NOT_FOUND' }, 'no such route');
    return reply.code(404).send({ code: 'NOT_FOUND', message: `no route ${req.method} ${path}` });
  });
  await app.register(websocket, { options: { maxPayload: run.frameLimit + (1 << 20) } });
  if (webPage) await app.register(webPage);
  await app.register(downloadRoutes);
  await app.register(joinRoutes);
  await app.register(invitationRoutes);
  await app.register(edgeRoutes);
  await app.register(roundRoutes);
  await app.register(generateRoutes);
  await app.register(statusRoutes);
  await app.register(versionRoutes);

  const address = await app.listen({ host: o.host ?? '127.0.0.1', port: o.port ?? 0 });
  app.log.info(
    { url: address, version: versions.version, plan, provider: runner.provider, aggregation: aggregationKey, limits },
    'cloud server listening',
  );
  if (privacy.recovery === null) {
    // the page then tells each contributor that the leak was not measured for this run
    // the attacks measure GPT-2 models only (docs/design.md, section 9)
    const how = isLlamaConfig(c)
      ? '`splitllm attack` measures GPT-2 models only, so none can be measured for this LLaMA-family model'
      : 'measure them with ' +
        `splitllm attack --model ${resolve(o.modelDir)} --k ${privacy.k} --sigma ${privacy.noiseSigma} --write`;
    app.log.warn(
      { k: privacy.k, sigma: privacy.noiseSigma },
      `no measured recovery figures for this split and noise: the page will say so; ${how}`,
    );
  }
  if (store.migratedTokens > 0) {
    app.log.info(
      { tokens: store.migratedTokens },
      'state from an older version: its join tokens are now stored hashed',
    );
  }
  return {
    app,
    url: address,
    edges,
    rounds,
    versions,
    store,
    coordinator: {
      get edges() {
        return edges.edges;
      },
      get version() {
        return versions.version;
      },
    },
    manifest: run.manifest,
    async close() {
      rounds.stop();
      await app.close();
      await runner.close();
      store.close();
    },
  };
}
