/**
 * The cloud server: a Fastify app whose route groups are plugins (model hand-out, joining,
 * edges, rounds/status/metrics), over the Coordinator. `startCloudServer` owns the process-level
 * resources (the onnxruntime worker, the database) and closes them with the app.
 */
import websocket from '@fastify/websocket';
import { AGGREGATION_STRATEGIES } from '@splitllm/federation';
import { DEFAULT_LORA_CONFIG, DEFAULT_LORA_TRAIN, defaultSplitPlan, encodeSegment, gpt2ConfigToJson, initLoraAdapter, loraParameterCount, AdapterCheckError, adapterToNamedTensors, validateSplitPlan, type Gpt2Model, type LoraConfig, type SplitPlan } from '@splitllm/model';
import { decodeGenerateFrame, frameRequestStatus, encodeFrame, intField, maxGenerateFrameBytes, stringField, ProtocolError, type RunManifest, type TrainSettings } from '@splitllm/wire';
import { MetricsRegistry, bearerToken, randomToken, secretsEqual, userToken } from '@splitllm/wire/node';
import { loadGpt2Dir } from '@splitllm/model/node';
import { SegmentRunner, TailSegment, type ExecutionProvider } from '@splitllm/onnx-runner';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { createHash } from 'node:crypto';
import { basename, resolve } from 'node:path';
import { Coordinator, type EdgeInfo, type RoundSummary } from './coordinator';
import { RoundStore } from './store';
import { webPagePlugin } from './web';

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
  lora?: LoraConfig;
  train?: Partial<TrainSettings>;
  minEdges?: number;
  minUsers?: number;
  maxRounds?: number;
  roundTimeoutMs?: number;
  strategy?: string;
  provider?: ExecutionProvider;
  threads?: number;
  /** false silences the request log (tests); otherwise JSON lines on stderr */
  logLevel?: string | false;
  onRound?: (s: RoundSummary) => void;
  /** serve the built user page (apps/user-web/dist) from this directory at / */
  webDir?: string;
}

export const DEFAULT_TRAIN_SETTINGS: TrainSettings = {
  batch: DEFAULT_LORA_TRAIN.batchSize,
  seq: DEFAULT_LORA_TRAIN.seqLen,
  stepsPerUser: 20,
  usersPerEdge: 1,
  codec: 'f32',
  adamw: DEFAULT_LORA_TRAIN.adamw,
};

export interface CloudServer {
  app: FastifyInstance;
  url: string;
  coordinator: Coordinator;
  store: RoundStore;
  manifest: () => RunManifest;
  close(): Promise<void>;
}

const errorSchema = { type: 'object', properties: { code: { type: 'string' }, message: { type: 'string' } }, required: ['code', 'message'] };

function fail(reply: FastifyReply, status: number, code: string, message: string) {
  return reply.code(status).send({ code, message });
}

/**
 * The largest frame the session can legitimately need, plus 1 MiB for headers: a step (h and
 * labels), or an edge's update (its adapter of blocks [k, m) and usersPerEdge user adapters of
 * blocks [0, k), as float32).
 */
function maxFrameBytes(model: Gpt2Model, lora: LoraConfig, plan: SplitPlan, t: TrainSettings): number {
  const c = model.config;
  const step = t.batch * t.seq * (c.nEmbd + 1) * 4;
  const update = (loraParameterCount(c, lora, plan.k, plan.m) + t.usersPerEdge * loraParameterCount(c, lora, 0, plan.k)) * 4;
  return Math.max(step, update) + (1 << 20);
}

export async function startCloudServer(o: CloudServerOptions): Promise<CloudServer> {
  const loaded = loadGpt2Dir(o.modelDir);
  const model: Gpt2Model = { config: loaded.config, weights: loaded.weights };
  const c = model.config;
  const plan = o.plan ?? defaultSplitPlan(c);
  validateSplitPlan(c, plan);
  const train: TrainSettings = { ...DEFAULT_TRAIN_SETTINGS, ...o.train, adamw: { ...DEFAULT_TRAIN_SETTINGS.adamw, ...o.train?.adamw } };
  if (train.seq > c.nPositions) throw new Error(`seq ${train.seq} exceeds the model's n_positions ${c.nPositions}`);
  const strategyName = o.strategy ?? 'fedavg';
  const makeStrategy = AGGREGATION_STRATEGIES[strategyName];
  if (!makeStrategy) throw new Error(`unknown aggregation strategy "${strategyName}" (known: ${Object.keys(AGGREGATION_STRATEGIES).join(', ')})`);

  const store = RoundStore.open(o.stateDir, { baseModel: resolve(o.modelDir), nLayer: c.nLayer });
  // a state directory belongs to one run: resuming it with other settings would mix two runs
  const runKey = JSON.stringify({ model: resolve(o.modelDir), plan, train, lora: o.lora ?? DEFAULT_LORA_CONFIG, seed: o.seed });
  const recorded = store.getMeta('run');
  if (recorded === undefined) {
    store.setMeta('run', runKey);
    store.initGlobal(initLoraAdapter(c, o.lora ?? DEFAULT_LORA_CONFIG, o.seed));
  } else if (recorded !== runKey) {
    store.close();
    throw new Error(`state directory ${o.stateDir} belongs to another run (${recorded}); use a new --state directory`);
  }
  const lora = store.loadAdapter(store.latest()).config;

  const segments = {
    user: encodeSegment(model, plan, 'user'),
    edge: encodeSegment(model, plan, 'edge'),
  };
  const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
  const segmentInfo = { user: { sha256: sha(segments.user), bytes: segments.user.byteLength }, edge: { sha256: sha(segments.edge), bytes: segments.edge.byteLength } };
  const tokenizerFiles = loaded.tokenizer.toFiles();

  const log = o.logLevel === false ? false : { level: o.logLevel ?? 'info', stream: process.stderr };
  const app = Fastify({ logger: log, bodyLimit: 1 << 20 });
  const runner = await SegmentRunner.start({ provider: o.provider ?? 'cpu', threads: o.threads ?? 0, log: (line) => app.log.info(line) });
  const tail = await TailSegment.create(runner, model, lora, plan.m);
  const metrics = new MetricsRegistry();
  metrics.collected('splitllm_process_resident_memory_bytes', 'resident set size of the cloud process', () => process.memoryUsage.rss());
  const frameLimit = maxFrameBytes(model, lora, plan, train);
  const coordinator = new Coordinator({
    config: c,
    plan,
    train,
    tail,
    store,
    strategy: makeStrategy(),
    metrics,
    log: app.log,
    minEdges: o.minEdges ?? 1,
    minUsers: o.minUsers ?? 1,
    maxRounds: o.maxRounds ?? 0,
    roundTimeoutMs: o.roundTimeoutMs ?? 30 * 60_000,
    maxFrameBytes: frameLimit,
    onRound: o.onRound,
  });

  const manifest = (): RunManifest => ({
    modelName: basename(resolve(o.modelDir)),
    config: gpt2ConfigToJson(c),
    plan,
    lora,
    train,
    version: coordinator.version,
    segments: segmentInfo,
  });

  function edgeOf(req: FastifyRequest): EdgeInfo | undefined {
    const t = bearerToken(req.headers.authorization);
    return t ? coordinator.edgeByToken(t) : undefined;
  }
  async function requireEdge(req: FastifyRequest, reply: FastifyReply) {
    if (!edgeOf(req)) return fail(reply, 401, 'BAD_EDGE_TOKEN', 'this route needs a registered edge token (Authorization: Bearer ...)');
  }
  async function requireOperator(req: FastifyRequest, reply: FastifyReply) {
    const t = bearerToken(req.headers.authorization);
    if (!t || !secretsEqual(t, o.operatorToken)) return fail(reply, 401, 'BAD_OPERATOR_TOKEN', 'this route needs the operator token (Authorization: Bearer ...)');
  }

  app.setErrorHandler((err: Error & { validation?: unknown; statusCode?: number }, req, reply) => {
    const code = err instanceof ProtocolError || err instanceof AdapterCheckError ? String(err.code) : err.validation ? 'BAD_REQUEST' : ((err as { code?: string }).code ?? 'INTERNAL');
    const status = err instanceof ProtocolError || err instanceof AdapterCheckError || err.validation ? 400 : (err.statusCode ?? 500);
    req.log.warn({ code, err: err.message }, 'request rejected');
    void reply.code(status).send({ code, message: err.message });
  });
  app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer', bodyLimit: frameLimit }, (_req, body, done) => done(null, body));
  await app.register(websocket, { options: { maxPayload: frameLimit + (1 << 20) } });
  if (o.webDir) await app.register(webPagePlugin(o.webDir));

  // model hand-out: cloud -> edge (the edge serves the user segment on to its users)
  await app.register(async (r) => {
    r.get('/api/manifest', { schema: { response: { 200: { type: 'object', additionalProperties: true } } } }, async () => manifest());
    r.get('/api/tokenizer', { schema: { response: { 200: { type: 'object', properties: { vocabJson: { type: 'string' }, mergesTxt: { type: 'string' } } } } } }, async (_req, reply) => {
      reply.header('cache-control', 'public, max-age=31536000, immutable');
      return tokenizerFiles;
    });
    r.get<{ Params: { tier: 'user' | 'edge' } }>(
      '/api/segments/:tier',
      { schema: { params: { type: 'object', properties: { tier: { type: 'string', enum: ['user', 'edge'] } }, required: ['tier'] } }, preHandler: requireEdge },
      async (req, reply) => {
        const { tier } = req.params;
        reply.header('etag', `"${segmentInfo[tier].sha256}"`).header('cache-control', 'private, max-age=31536000, immutable').type('application/octet-stream');
        if (req.headers['if-none-match'] === `"${segmentInfo[tier].sha256}"`) return reply.code(304).send();
        return reply.send(Buffer.from(segments[tier].buffer, segments[tier].byteOffset, segments[tier].byteLength));
      },
    );
    r.get<{ Params: { version: number; tier: 'user' | 'edge' } }>(
      '/api/adapters/:version/:tier',
      {
        schema: { params: { type: 'object', properties: { version: { type: 'integer', minimum: 0 }, tier: { type: 'string', enum: ['user', 'edge'] } }, required: ['version', 'tier'] } },
        preHandler: requireEdge,
      },
      async (req, reply) => {
        const { version, tier } = req.params;
        if (version !== coordinator.version) return fail(reply, 404, 'UNKNOWN_VERSION', `version ${version} is not the current global version (${coordinator.version})`);
        const part = coordinator.adapterPart(tier);
        const frame = encodeFrame('adapter', { round: version, tokens: 0, steps: 0 }, adapterToNamedTensors(part));
        reply.header('cache-control', 'private, max-age=31536000, immutable').type('application/octet-stream');
        return reply.send(Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength));
      },
    );
  });

  // joining: operators issue join tokens, users redeem one and are assigned an edge
  await app.register(async (r) => {
    r.post(
      '/api/join-tokens',
      { preHandler: requireOperator, schema: { response: { 200: { type: 'object', properties: { token: { type: 'string' } }, required: ['token'] }, 401: errorSchema } } },
      async () => ({ token: store.issueJoinToken() }),
    );
    r.post<{ Body: { joinToken: string } }>(
      '/api/join',
      {
        schema: {
          body: { type: 'object', properties: { joinToken: { type: 'string', minLength: 1, maxLength: 128 } }, required: ['joinToken'], additionalProperties: false },
          response: {
            200: { type: 'object', properties: { userId: { type: 'string' }, userToken: { type: 'string' }, edgeId: { type: 'string' }, edgeUrl: { type: 'string' } }, required: ['userId', 'userToken', 'edgeId', 'edgeUrl'] },
            403: errorSchema,
            503: errorSchema,
          },
        },
      },
      async (req, reply) => {
        const edge = coordinator.pickEdge();
        if (!edge) return fail(reply, 503, 'NO_EDGE', 'no edge server is connected; try again shortly');
        const userId = `u-${randomToken(6)}`;
        if (!store.redeemJoinToken(req.body.joinToken, userId)) {
          req.log.warn({ code: 'BAD_JOIN_TOKEN' }, 'join refused');
          return fail(reply, 403, 'BAD_JOIN_TOKEN', 'this join token is unknown or was already used');
        }
        store.recordUser(userId, edge.edgeId);
        edge.assigned++;
        req.log.info({ userId, edgeId: edge.edgeId }, 'user joined');
        return { userId, userToken: userToken(o.edgeSecret, userId, edge.edgeId), edgeId: edge.edgeId, edgeUrl: edge.url };
      },
    );
    // an edge that died leaves its users without one: they come back with the token they hold
    // (it proves the user and its old edge) and are assigned a live edge for the next round
    r.post<{ Body: { userId: string; userToken: string; edgeId: string } }>(
      '/api/rejoin',
      {
        schema: {
          body: {
            type: 'object',
            properties: { userId: { type: 'string', maxLength: 64 }, userToken: { type: 'string', maxLength: 128 }, edgeId: { type: 'string', maxLength: 64 } },
            required: ['userId', 'userToken', 'edgeId'],
            additionalProperties: false,
          },
          response: {
            200: { type: 'object', properties: { userId: { type: 'string' }, userToken: { type: 'string' }, edgeId: { type: 'string' }, edgeUrl: { type: 'string' } }, required: ['userId', 'userToken', 'edgeId', 'edgeUrl'] },
            403: errorSchema,
            503: errorSchema,
          },
        },
      },
      async (req, reply) => {
        const { userId, userToken: token, edgeId } = req.body;
        const known = store.user(userId);
        if (!known || known.edgeId !== edgeId || !secretsEqual(userToken(o.edgeSecret, userId, edgeId), token)) {
          req.log.warn({ code: 'BAD_USER_TOKEN', userId }, 'rejoin refused');
          return fail(reply, 403, 'BAD_USER_TOKEN', 'unknown user, or a token that is not this user\'s for that edge');
        }
        const current = coordinator.edges.get(edgeId);
        const edge = current?.channel ? current : coordinator.pickEdge();
        if (!edge) return fail(reply, 503, 'NO_EDGE', 'no edge server is connected; try again shortly');
        if (edge.edgeId !== edgeId) {
          store.recordUser(userId, edge.edgeId);
          edge.assigned++;
          req.log.info({ userId, from: edgeId, to: edge.edgeId }, 'user reassigned');
        }
        return { userId, userToken: userToken(o.edgeSecret, userId, edge.edgeId), edgeId: edge.edgeId, edgeUrl: edge.url };
      },
    );
  });

  // edges: registration with the shared secret, then one WebSocket for rounds and steps
  await app.register(async (r) => {
    r.post<{ Body: { edgeId: string; url: string; secret: string } }>(
      '/api/edges/register',
      {
        schema: {
          body: {
            type: 'object',
            properties: { edgeId: { type: 'string', pattern: '^[A-Za-z0-9_.-]{1,64}$' }, url: { type: 'string', maxLength: 512 }, secret: { type: 'string', maxLength: 512 } },
            required: ['edgeId', 'url', 'secret'],
            additionalProperties: false,
          },
          response: { 200: { type: 'object', properties: { edgeToken: { type: 'string' }, manifest: { type: 'object', additionalProperties: true } } }, 401: errorSchema },
        },
      },
      async (req, reply) => {
        if (!secretsEqual(req.body.secret, o.edgeSecret)) {
          req.log.warn({ code: 'BAD_EDGE_SECRET', edgeId: req.body.edgeId }, 'edge registration refused');
          return fail(reply, 401, 'BAD_EDGE_SECRET', 'wrong edge secret');
        }
        const info = coordinator.registerEdge(req.body.edgeId, req.body.url, randomToken(16));
        return { edgeToken: info.token, manifest: manifest() };
      },
    );
    r.get('/ws/edge', { websocket: true, preValidation: requireEdge }, (socket, req) => {
      const edge = edgeOf(req)!;
      coordinator.attach(edge.edgeId, { send: (b) => socket.send(b), close: (code, reason) => socket.close(code, reason) });
      socket.on('message', (data: Buffer, isBinary: boolean) => {
        if (!isBinary) {
          socket.send(encodeFrame('error', { code: 'BAD_FRAME', message: 'frames are binary' }));
          return;
        }
        coordinator.onEdgeMessage(edge.edgeId, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      });
      socket.on('close', () => {
        if (coordinator.edges.get(edge.edgeId)?.token === edge.token) coordinator.detach(edge.edgeId, 'connection closed');
      });
    });
    r.post<{ Params: { round: number } }>(
      '/api/rounds/:round/update',
      {
        preHandler: requireEdge,
        schema: {
          params: { type: 'object', properties: { round: { type: 'integer', minimum: 1 } }, required: ['round'] },
          response: { 200: { type: 'object', properties: { accepted: { type: 'boolean' }, round: { type: 'integer' } } }, 400: errorSchema },
        },
      },
      async (req) => {
        const body = req.body as Buffer;
        if (!Buffer.isBuffer(body)) throw new ProtocolError('BAD_FRAME', 'the update is an application/octet-stream frame');
        if (req.params.round !== coordinator.currentRound) throw new ProtocolError('WRONG_ROUND', `round ${req.params.round} is not running (current: ${coordinator.currentRound ?? 'none'})`);
        return coordinator.acceptUpdate(edgeOf(req)!.edgeId, new Uint8Array(body.buffer, body.byteOffset, body.byteLength));
      },
    );
  });

  // generation: an edge sends h2 of one user's context (a `generate` frame with the user and the
  // global version whose edge part it ran); the answer is the next-token logits at the last
  // position, from the tail with that version's cloud part. The body is read only for a known edge.
  await app.register(async (r) => {
    const limit = maxGenerateFrameBytes(c);
    const V = c.vocabSize;
    const refused = metrics.counter('splitllm_cloud_generate_refused_total', 'generation requests refused, by code');
    const served = metrics.counter('splitllm_cloud_generate_total', 'next-token logits served to edges');
    r.setErrorHandler((err: Error & { validation?: unknown; statusCode?: number; code?: string }, req, reply) => {
      const { status, code } = frameRequestStatus(err);
      refused(1, { code });
      req.log.warn({ code, err: err.message }, 'generate request rejected');
      void reply.code(status).send({ code, message: err.message });
    });
    r.post(
      '/api/generate',
      {
        onRequest: requireEdge,
        bodyLimit: limit,
        schema: { response: { 400: errorSchema, 401: errorSchema, 404: errorSchema, 409: errorSchema, 413: errorSchema, 500: errorSchema } },
      },
      async (req, reply) => {
        const edge = edgeOf(req)!;
        const body = req.body as Buffer;
        if (!Buffer.isBuffer(body)) throw new ProtocolError('BAD_FRAME', 'the body is an application/octet-stream `generate` frame');
        const { frame: f, h, T } = decodeGenerateFrame(new Uint8Array(body.buffer, body.byteOffset, body.byteLength), c);
        const userId = stringField(f, 'userId', 64);
        const version = intField(f, 'version');
        const refuse = (status: number, code: string, message: string) => {
          refused(1, { code });
          req.log.warn({ code, edgeId: edge.edgeId, userId, version }, 'generate request refused');
          return fail(reply, status, code, message);
        };
        const user = store.user(userId);
        if (!user || user.edgeId !== edge.edgeId) return refuse(404, 'UNKNOWN_USER', `user "${userId}" is not a user of edge "${edge.edgeId}"`);
        const adapter = coordinator.globalAdapterAt(version);
        if (!adapter) return refuse(409, 'UNKNOWN_VERSION', `version ${version} is not a recorded global version (current: ${coordinator.version})`);
        const logits = await tail.logits(adapter, h, 1, T);
        for (let i = 0; i < V; i++) {
          if (!Number.isFinite(logits[i])) return refuse(500, 'NOT_FINITE', `logit ${i} is ${logits[i]}`);
        }
        served();
        const frame = encodeFrame('logits', { version }, { logits: { data: logits, shape: [V] } });
        return reply.type('application/octet-stream').send(Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength));
      },
    );
  });

  // status and metrics
  await app.register(async (r) => {
    r.get('/api/status', { schema: { response: { 200: { type: 'object', additionalProperties: true } } } }, async () => coordinator.status());
    r.get('/api/rounds', { schema: { response: { 200: { type: 'array', items: { type: 'object', additionalProperties: true } } } } }, async () => store.rounds());
    r.get('/metrics', { schema: { response: { 200: { type: 'string' } } } }, async (_req, reply) => reply.type('text/plain; version=0.0.4').send(metrics.render()));
    r.get('/api/health', { schema: { response: { 200: { type: 'object', properties: { ok: { type: 'boolean' } } } } } }, async () => ({ ok: true }));
  });

  const address = await app.listen({ host: o.host ?? '127.0.0.1', port: o.port ?? 0 });
  app.log.info({ url: address, version: coordinator.version, plan, provider: runner.provider }, 'cloud server listening');
  return {
    app,
    url: address,
    coordinator,
    store,
    manifest,
    async close() {
      coordinator.stop();
      await app.close();
      await runner.close();
      store.close();
    },
  };
}
