/**
 * The edge server: a Fastify app whose route groups are plugins (routes/*.ts) over the Edge
 * (edge.ts), and its start-up.
 *
 * The app listens first (the cloud needs the edge's URL to register it), then start-up registers
 * with the cloud using the shared secret, fetches this edge's segment and the user segment once
 * (checked against the manifest's sha-256), loads blocks [k, m) into onnxruntime and opens the
 * cloud link (kept up from then on: when it drops, the edge registers again and carries on, its
 * users stay connected). Until then the routes that need the edge answer 503 NOT_READY.
 */
import cors from '@fastify/cors';
import rateLimit from '@fastify/rate-limit';
import websocket from '@fastify/websocket';
import { codeOf, decodeSegment } from '@splitllm/model';
import { GENERATE_USER_HEADER } from '@splitllm/wire';
import { randomToken, redactedRequest } from '@splitllm/wire/node';
import { BlocksSegment, type ExecutionProvider, SegmentRunner } from '@splitllm/onnx-runner';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { downloadSegment, register } from './cloud-link';
import { Edge, type RestartInfo } from './edge';
import { EdgeError } from './errors';
import { fetchJson } from './http';
import { adminRoutes } from './routes/admin';
import { generateRoutes } from './routes/generate';
import { segmentRoutes } from './routes/segments';
import { statusRoutes } from './routes/status';
import { userSocketRoutes } from './routes/user-socket';
import { SHARED_SCHEMAS } from './schemas';
import { EdgeMetrics } from './telemetry';
import { HELLO_MAX_BYTES } from './user-queue';

declare module 'fastify' {
  interface FastifyInstance {
    /** The running edge. Read it behind `requireEdge` only: while the edge starts it throws NOT_READY. */
    readonly edge: Edge;
    /** true once the edge serves (registered with the cloud, its segment loaded, the cloud link open) */
    readonly edgeReady: boolean;
    /** The onRequest hook of every route that needs the running edge: 503 NOT_READY until it serves. */
    requireEdge(req: FastifyRequest, reply: FastifyReply): Promise<void>;
    /** Starts serving `edge` (once, at the end of start-up). */
    serve(edge: Edge): void;
    /** the edge's Prometheus metrics (a registry of this app's own) */
    readonly metrics: EdgeMetrics;
  }
}

export interface EdgeAppOptions {
  /** opens the operator's dashboard (/admin, /api/admin/*) */
  operatorToken: string;
  metrics: EdgeMetrics;
  logLevel?: string | false;
  /** the cloud must answer a generation within this time */
  cloudTimeoutMs?: number;
  /** new user sockets (each one `hello`) one IP may open per minute (default 60) */
  userConnectsPerMinute?: number;
}

const NOT_READY = { code: 'NOT_READY', message: 'the edge is still starting' };

/** The Fastify app with every route; it serves the edge once `app.serve(edge)` is called. */
export async function buildEdgeApp(o: EdgeAppOptions): Promise<FastifyInstance> {
  const logger =
    o.logLevel === false
      ? false
      : { level: o.logLevel ?? 'info', stream: process.stderr, serializers: { req: redactedRequest } };
  const app = Fastify({ logger, bodyLimit: 1 << 16 });

  let serving: Edge | undefined;
  app.decorate('edge', {
    getter(): Edge {
      if (!serving) throw new EdgeError('NOT_READY', NOT_READY.message);
      return serving;
    },
  });
  app.decorate('edgeReady', { getter: () => serving !== undefined });
  app.decorate('requireEdge', async (_req: FastifyRequest, reply: FastifyReply) => {
    if (!serving) return reply.code(503).send(NOT_READY);
  });
  app.decorate('serve', (edge: Edge) => {
    if (serving) throw new Error('the edge app already serves an edge');
    serving = edge;
    // from now on a user's message may be as large as the run needs (a step, or its adapter),
    // plus 1 MiB: a frame somewhat over the limit is still read and refused with a code
    // (FRAME_TOO_LARGE, the user stays), a larger one closes the socket (1009). ws reads this
    // option at each upgrade. Before `hello` user-socket.ts holds a socket to HELLO_MAX_BYTES.
    app.websocketServer.options.maxPayload = edge.frameLimit + 2 ** 20;
  });
  app.decorate('metrics', { getter: () => o.metrics });
  for (const s of SHARED_SCHEMAS) app.addSchema(s);

  app.setErrorHandler((err: Error & { validation?: unknown; statusCode?: number }, req, reply) => {
    const code = err.validation ? 'BAD_REQUEST' : codeOf(err, (err as { code?: string }).code ?? 'INTERNAL');
    const status = err instanceof EdgeError ? (err.code === 'NOT_READY' ? 503 : 400) : (err.statusCode ?? 500);
    req.log.warn({ code, err: err.message }, 'request rejected');
    void reply.code(status).send({ code, message: err.message });
  });
  // the user page comes from the cloud's origin: its requests here are cross-origin. No cookies
  // are involved (credentials are bearer tokens the page holds), so any origin may read the
  // answers; a preflight is answered whatever it asks for, with the two headers the page sends.
  await app.register(cors, {
    origin: '*',
    methods: ['GET', 'POST'],
    allowedHeaders: ['authorization', 'content-type', GENERATE_USER_HEADER],
    maxAge: 600,
    strictPreflight: false,
  });
  // route by route (config.rateLimit): only the user socket is limited here
  await app.register(rateLimit, {
    global: false,
    errorResponseBuilder: (_req, ctx) =>
      Object.assign(new Error(`too many requests from this address: at most ${ctx.max} per ${ctx.after}`), {
        statusCode: 429,
        code: 'RATE_LIMITED',
      }),
  });
  // until the edge serves, no user socket is kept: the smallest limit (serve() raises it)
  await app.register(websocket, { options: { maxPayload: HELLO_MAX_BYTES } });

  await app.register(segmentRoutes);
  await app.register(userSocketRoutes, { connectsPerMinute: o.userConnectsPerMinute ?? 60 });
  await app.register(adminRoutes, { operatorToken: o.operatorToken });
  await app.register(generateRoutes, { cloudTimeoutMs: o.cloudTimeoutMs });
  await app.register(statusRoutes);
  return app;
}

export interface EdgeServerOptions {
  cloudUrl: string;
  edgeId: string;
  edgeSecret: string;
  host?: string;
  port?: number;
  provider?: ExecutionProvider;
  threads?: number;
  /**
   * the frozen weights once per segment, as inputs shared by its graphs, not pre-packed: less
   * memory, 10-20% slower on cpu (docs/benchmarks.md, "The edge's memory")
   */
  leanMemory?: boolean;
  /** keep the forward's intermediates for the backward (faster backward on cpu) instead of recomputing */
  saveIntermediates?: boolean;
  stepTimeoutMs?: number;
  /** the turn deadline per step of the user's time (default 30 s; the adapter counts as one more step) */
  stepBudgetMs?: number;
  /** turns in a row a user may let run out before it sits out the next round (default 2) */
  maxMisses?: number;
  /** new user sockets one IP may open per minute (default 60) */
  userConnectsPerMinute?: number;
  /** how often a launcher restarted this edge, and how its last run ended (the dashboard shows it) */
  restarts?: RestartInfo;
  cloudTimeoutMs?: number;
  logLevel?: string | false;
  /** opens the operator's dashboard (/admin, /api/admin/*); when not given, one is generated and logged once */
  operatorToken?: string;
}

export interface EdgeServer {
  app: FastifyInstance;
  url: string;
  /** the operator's dashboard, `${url}/admin` (the token is not in it) */
  adminUrl: string;
  operatorToken: string;
  edge: Edge;
  runner: SegmentRunner;
  close(): Promise<void>;
}

export async function startEdgeServer(o: EdgeServerOptions): Promise<EdgeServer> {
  const operatorToken = o.operatorToken || randomToken();
  const cloudTimeoutMs = o.cloudTimeoutMs ?? 60_000;
  const app = await buildEdgeApp({
    operatorToken,
    metrics: new EdgeMetrics(),
    logLevel: o.logLevel,
    cloudTimeoutMs,
    userConnectsPerMinute: o.userConnectsPerMinute,
  });

  const url = await app.listen({ host: o.host ?? '127.0.0.1', port: o.port ?? 0 });
  const me = { cloudUrl: o.cloudUrl, edgeId: o.edgeId, edgeSecret: o.edgeSecret, url };
  const registration = await register(me, app.log, 120_000);
  const { manifest, edgeToken } = registration;
  const [edgeBytes, userSegment] = await Promise.all([
    downloadSegment(o.cloudUrl, edgeToken, 'edge', manifest.segments.edge.sha256),
    downloadSegment(o.cloudUrl, edgeToken, 'user', manifest.segments.user.sha256),
  ]);
  const segment = decodeSegment(edgeBytes, 'edge');
  const edgeModel = segment.model;
  decodeSegment(userSegment, 'user'); // refuse to serve a segment users could not load
  const tokenizer = await fetchJson<unknown>(`${o.cloudUrl}/api/tokenizer`);
  const runner = await SegmentRunner.start({
    provider: o.provider ?? 'cpu',
    threads: o.threads ?? 0,
    log: (line) => app.log.info(line),
    ...(o.leanMemory ? { weights: 'shared' as const } : {}),
  });
  // on cpu, keeping the forward's intermediates makes the backward cheaper; on a GPU provider
  // copying them out of the runtime costs more than recomputing (docs/benchmarks.md)
  const saveIntermediates = o.saveIntermediates ?? runner.provider === 'cpu';
  const { k, m } = manifest.plan;
  const blocks = await BlocksSegment.create(runner, edgeModel, manifest.lora, k, m, { saveIntermediates });
  const edge = new Edge({
    ...me,
    registration,
    config: edgeModel.config,
    blocks,
    userSegment,
    tokenizer,
    metrics: app.metrics,
    log: app.log,
    stepTimeoutMs: o.stepTimeoutMs ?? 120_000,
    stepBudgetMs: o.stepBudgetMs ?? 30_000,
    maxMisses: o.maxMisses ?? 2,
    restarts: o.restarts,
    cloudTimeoutMs,
    provider: runner.provider,
  });
  await edge.start();
  app.serve(edge);
  app.log.info(
    { url, edgeId: o.edgeId, provider: runner.provider, saveIntermediates, blocks: [k, m] },
    'edge server ready',
  );
  const adminUrl = `${url}/admin`;
  if (o.operatorToken) app.log.info({ adminUrl }, 'operator dashboard');
  // printed once, here only: the fragment is not sent to the server, the page reads it
  else {
    app.log.warn(
      { adminUrl: `${adminUrl}#token=${operatorToken}`, operatorToken },
      'operator dashboard: no operator token was given, so this one was generated for this run',
    );
  }
  return {
    app,
    url,
    adminUrl,
    operatorToken,
    edge,
    runner,
    async close() {
      edge.close();
      await app.close();
      await runner.close();
    },
  };
}
