/**
 * The edge server: Fastify + @fastify/websocket over the Edge (edge.ts). Route groups are
 * plugins: what users download (manifest, tokenizer, user segment, adapters), the user
 * WebSocket, the operator's dashboard (admin.ts, behind the operator token), and public
 * status/metrics. Start-up registers with the cloud using the shared secret,
 * fetches this edge's segment and the user segment once (checked against the manifest's
 * sha-256), loads blocks [k, m) into onnxruntime, and keeps the cloud link up: when it drops,
 * the edge registers again and carries on (users stay connected).
 */
import websocket from '@fastify/websocket';
import { decodeSegment, loraParameterCount } from '@splitllm/model';
import { encodeErrorFrame, parseRunManifest, type RunManifest } from '@splitllm/wire';
import { MetricsRegistry, randomToken } from '@splitllm/wire/node';
import { BlocksSegment, SegmentRunner, type ExecutionProvider } from '@splitllm/onnx-runner';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import { createHash } from 'node:crypto';
import { adminRoutes } from './admin';
import { generateRoutes } from './generate';
import { corsHook } from './cors';
import { Edge, EdgeError, fetchJson, type UserConn } from './edge';

export interface EdgeServerOptions {
  cloudUrl: string;
  edgeId: string;
  edgeSecret: string;
  host?: string;
  port?: number;
  provider?: ExecutionProvider;
  threads?: number;
  /** keep the forward's intermediates for the backward (faster backward on cpu) instead of recomputing */
  saveIntermediates?: boolean;
  stepTimeoutMs?: number;
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

const errorSchema = { type: 'object', properties: { code: { type: 'string' }, message: { type: 'string' } }, required: ['code', 'message'] };

function fail(reply: FastifyReply, status: number, code: string, message: string) {
  return reply.code(status).send({ code, message });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Registration {
  edgeToken: string;
  manifest: RunManifest;
}

async function register(o: EdgeServerOptions, url: string, log: FastifyInstance['log'], giveUpAfterMs: number, stopped = () => false): Promise<Registration> {
  const deadline = Date.now() + giveUpAfterMs;
  for (let attempt = 1; ; attempt++) {
    if (stopped()) throw new EdgeError('SHUTTING_DOWN', 'the edge is shutting down');
    try {
      const r = await fetchJson<{ edgeToken: string; manifest: unknown }>(`${o.cloudUrl}/api/edges/register`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ edgeId: o.edgeId, url, secret: o.edgeSecret }),
      });
      return { edgeToken: r.edgeToken, manifest: parseRunManifest(r.manifest).manifest };
    } catch (e) {
      // a wrong secret will not get better by retrying
      if (e instanceof EdgeError && e.code === 'BAD_EDGE_SECRET') throw e;
      if (Date.now() > deadline) throw new EdgeError('CLOUD_UNREACHABLE', `cannot register with the cloud at ${o.cloudUrl}: ${(e as Error).message}`);
      if (attempt === 1 || attempt % 10 === 0) log.warn({ attempt, err: (e as Error).message }, 'cloud not reachable yet; retrying');
      await sleep(Math.min(2000, 100 * attempt));
    }
  }
}

async function download(o: EdgeServerOptions, token: string, tier: 'user' | 'edge', sha256: string): Promise<Uint8Array> {
  const res = await fetch(`${o.cloudUrl}/api/segments/${tier}`, { headers: { authorization: `Bearer ${token}` } });
  if (!res.ok) throw new EdgeError('SEGMENT_DOWNLOAD', `GET /api/segments/${tier}: ${res.status} ${await res.text()}`);
  const bytes = new Uint8Array(await res.arrayBuffer());
  const got = createHash('sha256').update(bytes).digest('hex');
  if (got !== sha256) throw new EdgeError('SEGMENT_CORRUPT', `the ${tier} segment's sha-256 is ${got}, the manifest says ${sha256}`);
  return bytes;
}

export async function startEdgeServer(o: EdgeServerOptions): Promise<EdgeServer> {
  const log = o.logLevel === false ? false : { level: o.logLevel ?? 'info', stream: process.stderr };
  const app = Fastify({ logger: log, bodyLimit: 1 << 16 });
  const ready: { edge?: Edge; userSegment?: Uint8Array; manifest?: RunManifest; tokenizer?: unknown; frameLimit: number } = { frameLimit: 1 << 20 };
  const operatorToken = o.operatorToken || randomToken();
  const metrics = new MetricsRegistry();
  metrics.collected('splitllm_process_resident_memory_bytes', 'resident set size of the edge process', () => process.memoryUsage.rss());

  app.setErrorHandler((err: Error & { validation?: unknown; statusCode?: number }, req, reply) => {
    const code = err instanceof EdgeError ? err.code : err.validation ? 'BAD_REQUEST' : ((err as { code?: string }).code ?? 'INTERNAL');
    req.log.warn({ code, err: err.message }, 'request rejected');
    void reply.code(err instanceof EdgeError ? 400 : (err.statusCode ?? 500)).send({ code, message: err.message });
  });
  // the user page comes from the cloud's origin: its requests here are cross-origin
  await corsHook(app);
  await app.register(websocket, { options: { maxPayload: 256 * 2 ** 20 } });

  // what users download: the run, the tokenizer, the frozen user segment, the current adapter
  await app.register(async (r) => {
    r.get('/api/manifest', { schema: { response: { 200: { type: 'object', additionalProperties: true }, 503: errorSchema } } }, async (_req, reply) => {
      if (!ready.manifest || !ready.edge) return fail(reply, 503, 'NOT_READY', 'the edge is still starting');
      return { ...ready.manifest, version: ready.edge.version };
    });
    r.get('/api/tokenizer', { schema: { response: { 200: { type: 'object', additionalProperties: true }, 503: errorSchema } } }, async (_req, reply) => {
      if (!ready.tokenizer) return fail(reply, 503, 'NOT_READY', 'the edge is still starting');
      reply.header('cache-control', 'public, max-age=31536000, immutable');
      return ready.tokenizer;
    });
    r.get('/api/segments/user', { schema: { response: { 304: { type: 'null' }, 503: errorSchema } } }, async (req, reply) => {
      if (!ready.userSegment || !ready.manifest) return fail(reply, 503, 'NOT_READY', 'the edge is still starting');
      const etag = `"${ready.manifest.segments.user.sha256}"`;
      // the frozen segment never changes for a run: cache it for good, keyed by its hash
      reply.header('etag', etag).header('cache-control', 'public, max-age=31536000, immutable').header('access-control-allow-origin', '*');
      if (req.headers['if-none-match'] === etag) return reply.code(304).send();
      const b = ready.userSegment;
      return reply.type('application/octet-stream').send(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
    });
    r.get<{ Querystring: { version: number } }>(
      '/api/adapters/user',
      { schema: { querystring: { type: 'object', properties: { version: { type: 'integer', minimum: 0 } }, required: ['version'] }, response: { 404: errorSchema, 503: errorSchema } } },
      async (req, reply) => {
        if (!ready.edge) return fail(reply, 503, 'NOT_READY', 'the edge is still starting');
        let frame: Uint8Array;
        try {
          frame = await ready.edge.userAdapterFrame(req.query.version);
        } catch (e) {
          return fail(reply, 404, (e as EdgeError).code ?? 'UNKNOWN_VERSION', (e as Error).message);
        }
        reply.header('cache-control', 'public, max-age=31536000, immutable');
        return reply.type('application/octet-stream').send(Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength));
      },
    );
  });

  // the user WebSocket: hello first, then queue updates, turns and steps
  await app.register(async (r) => {
    r.get('/ws/user', { websocket: true }, (socket) => {
      const edge = ready.edge;
      if (!edge) {
        socket.send(encodeErrorFrame('NOT_READY', 'the edge is still starting'));
        socket.close(1013, 'not ready');
        return;
      }
      let user: UserConn | undefined;
      const helloTimer = setTimeout(() => {
        if (!user) socket.close(4001, 'no hello');
      }, 10_000);
      const channel = { send: (b: Uint8Array) => socket.send(b), close: (code?: number, reason?: string) => socket.close(code, reason) };
      socket.on('message', (data: Buffer, isBinary: boolean) => {
        const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
        if (!isBinary) {
          socket.send(encodeErrorFrame('BAD_FRAME', 'frames are binary'));
          return;
        }
        if (!user) {
          user = edge.authenticate(channel, bytes);
          if (user) clearTimeout(helloTimer);
          return;
        }
        edge.onUserMessage(user, bytes, ready.frameLimit);
      });
      socket.on('close', () => {
        clearTimeout(helloTimer);
        if (user) edge.removeUser(user, 'connection closed');
      });
    });
  });

  // the operator's dashboard and its data (admin.ts), behind the operator token
  await app.register(adminRoutes, { operatorToken, edge: () => ready.edge });

  // generation (generate.ts): a user's h1 through blocks [k, m) to the cloud, its next-token logits back
  await app.register(generateRoutes, { state: () => (ready.edge ? { edgeId: o.edgeId, edgeSecret: o.edgeSecret, config: c, edgeAdapter: (v: number) => ready.edge!.edgeAdapterAt(v), blocks, version: ready.edge.version, cloudUrl: o.cloudUrl, edgeToken: token } : undefined) });

  // public status (a summary with no user ids) and metrics
  await app.register(async (r) => {
    const publicStatus = {
      type: 'object',
      properties: {
        edgeId: { type: 'string' },
        version: { type: 'integer' },
        round: { type: ['integer', 'null'] },
        cloudConnected: { type: 'boolean' },
        users: { type: 'object', properties: { connected: { type: 'integer' }, waiting: { type: 'integer' } }, required: ['connected', 'waiting'] },
        provider: { type: 'string' },
      },
      required: ['edgeId', 'version', 'round', 'cloudConnected', 'users', 'provider'],
    };
    r.get('/api/status', { schema: { response: { 200: publicStatus, 503: errorSchema } } }, async (_req, reply) => {
      const edge = ready.edge;
      if (!edge) return fail(reply, 503, 'NOT_READY', 'the edge is still starting');
      const s = edge.status();
      return { edgeId: s.edgeId, version: s.version, round: s.round?.number ?? null, cloudConnected: s.cloudConnected, users: { connected: s.users.length, waiting: s.waiting }, provider: s.provider };
    });
    r.get('/metrics', { schema: { response: { 200: { type: 'string' } } } }, async (_req, reply) => reply.type('text/plain; version=0.0.4').send(metrics.render()));
    r.get('/api/health', { schema: { response: { 200: { type: 'object', properties: { ok: { type: 'boolean' }, ready: { type: 'boolean' } } } } } }, async () => ({ ok: true, ready: !!ready.edge }));
  });

  const url = await app.listen({ host: o.host ?? '127.0.0.1', port: o.port ?? 0 });
  const reg = await register(o, url, app.log, 120_000);
  const { manifest } = reg;
  const [edgeBytes, userBytes] = await Promise.all([
    download(o, reg.edgeToken, 'edge', manifest.segments.edge.sha256),
    download(o, reg.edgeToken, 'user', manifest.segments.user.sha256),
  ]);
  const segment = decodeSegment(edgeBytes, 'edge');
  decodeSegment(userBytes, 'user'); // refuse to serve a segment users could not load
  const tokenizer = await fetchJson<unknown>(`${o.cloudUrl}/api/tokenizer`);
  const provider = o.provider ?? 'cpu';
  const runner = await SegmentRunner.start({ provider, threads: o.threads ?? 0, log: (line) => app.log.info(line) });
  // on cpu, keeping the forward's intermediates makes the backward cheaper; on a GPU provider
  // copying them out of the runtime costs more than recomputing (docs/benchmarks.md)
  const saveIntermediates = o.saveIntermediates ?? runner.provider === 'cpu';
  const blocks = await BlocksSegment.create(runner, segment.model, manifest.lora, manifest.plan.k, manifest.plan.m, { saveIntermediates });
  const c = segment.model.config;
  const t = manifest.train;
  // the largest frame a user may send: a step (h and targets) or its adapter, with room for the header
  const adapterBytes = loraParameterCount(c, manifest.lora, 0, manifest.plan.k) * 4;
  ready.frameLimit = Math.max(t.batch * t.seq * (c.nEmbd + 1) * 4, adapterBytes) + 64 * 1024;
  const edge = new Edge({
    edgeId: o.edgeId,
    edgeSecret: o.edgeSecret,
    manifest,
    config: c,
    blocks,
    metrics,
    log: app.log,
    stepTimeoutMs: o.stepTimeoutMs ?? 120_000,
    cloudTimeoutMs: o.cloudTimeoutMs ?? 60_000,
    provider: runner.provider,
  });

  let closing = false;
  let token = reg.edgeToken;
  const onCloudLost = (why: string) => {
    if (closing) return;
    app.log.warn({ reason: why }, 'lost the cloud; registering again');
    void (async () => {
      for (;;) {
        if (closing) return;
        try {
          const again = await register(o, url, app.log, 3_600_000, () => closing);
          if (again.manifest.segments.edge.sha256 !== manifest.segments.edge.sha256 || again.manifest.segments.user.sha256 !== manifest.segments.user.sha256) {
            app.log.error({ code: 'MODEL_CHANGED' }, 'the cloud now serves another model; restart this edge');
            return;
          }
          token = again.edgeToken;
          await edge.connectCloud({ url: o.cloudUrl, edgeToken: token }, onCloudLost);
          return;
        } catch (e) {
          app.log.warn({ err: (e as Error).message }, 'reconnecting to the cloud failed; retrying');
          await sleep(1000);
        }
      }
    })();
  };
  await edge.connectCloud({ url: o.cloudUrl, edgeToken: token }, onCloudLost);
  ready.edge = edge;
  ready.userSegment = userBytes;
  ready.manifest = manifest;
  ready.tokenizer = tokenizer;
  app.log.info({ url, edgeId: o.edgeId, provider: runner.provider, saveIntermediates, blocks: [manifest.plan.k, manifest.plan.m] }, 'edge server ready');
  const adminUrl = `${url}/admin`;
  if (o.operatorToken) app.log.info({ adminUrl }, 'operator dashboard');
  // printed once, here only: the fragment is not sent to the server, the page reads it
  else app.log.warn({ adminUrl: `${adminUrl}#token=${operatorToken}`, operatorToken }, 'operator dashboard: no operator token was given, so this one was generated for this run');
  return {
    app,
    url,
    adminUrl,
    operatorToken,
    edge,
    runner,
    async close() {
      closing = true;
      edge.closeCloud();
      for (const u of [...edge.users.values()]) edge.removeUser(u, 'edge shutting down', true);
      await app.close();
      await runner.close();
    },
  };
}
