/**
 * Generation at the edge: `POST /api/generate`, over HTTP so that it never touches the training
 * sockets and turns.
 *
 *   user  --generate {h: h1 [1, T, D]}-->  edge: blocks [k, m) with the global edge adapter of
 *   the edge's current version  --generate {h: h2, userId, version}-->  cloud: blocks [m, L),
 *   ln_f, tied head  --logits {logits [V], version}-->  edge  -->  user
 *
 * The user proves itself as on the WebSocket (checkUserToken over the token the cloud derived for
 * this user and this edge): `authorization: Bearer <userToken>` and `x-splitllm-user: <userId>`,
 * checked before any of the body is read. The body is one protocol frame (application/
 * octet-stream), at most maxGenerateFrameBytes(config). Refusals are JSON {code, message}:
 * 400 BAD_FRAME / BAD_SHAPE / NOT_FINITE / ..., 401 UNAUTHORIZED, 404 UNKNOWN_USER (from the
 * cloud: the cloud keeps the user registry), 413 FRAME_TOO_LARGE, 503 NOT_READY (starting, or
 * the global version is changing: retry), 502/504 when the cloud fails or is late.
 *
 * The page may be served from another origin: ./cors.ts answers CORS preflights for every
 * route (credentials travel in headers, never cookies, so any origin may ask).
 */
import { DEFAULT_MAX_FRAME_BYTES, decodeGenerateFrame, decodeLogitsFrame, GENERATE_USER_HEADER, encodeFrame, frameRequestStatus, maxGenerateFrameBytes, ProtocolError, responseError } from '@splitllm/wire';
import type { Gpt2Config, LoraAdapter } from '@splitllm/model';
import { bearerToken, checkUserToken } from '@splitllm/wire/node';
import type { BlocksSegment } from '@splitllm/onnx-runner';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { EdgeError } from './edge';

/** What a generation request needs from the running edge (read per request: the version and the edge token change). */
export interface GenerateState {
  edgeId: string;
  edgeSecret: string;
  config: Gpt2Config;
  /** the edge part of a version's global adapter (Edge.edgeAdapterAt: fetched from the cloud once per version) */
  edgeAdapter: (version: number) => Promise<LoraAdapter>;
  /** blocks [k, m) on the edge's runner */
  blocks: BlocksSegment;
  /** the global version the edge is at */
  version: number;
  cloudUrl: string;
  edgeToken: string;
}

export interface GenerateRoutesOptions {
  /** undefined while the edge is starting */
  state: () => GenerateState | undefined;
  /** the cloud must answer within this time (default 60 s) */
  cloudTimeoutMs?: number;
}


const errorSchema = { type: 'object', properties: { code: { type: 'string' }, message: { type: 'string' } }, required: ['code', 'message'] };

class GenerateError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'GenerateError';
  }
}

function headerValue(h: string | string[] | undefined): string | undefined {
  return Array.isArray(h) ? h[0] : h;
}

export async function generateRoutes(r: FastifyInstance, o: GenerateRoutesOptions): Promise<void> {
  const cloudTimeoutMs = o.cloudTimeoutMs ?? 60_000;
  const fail = (req: FastifyRequest, reply: FastifyReply, status: number, code: string, message: string) => {
    req.log.warn({ code, err: message, userId: headerValue(req.headers[GENERATE_USER_HEADER]) }, 'generate request refused');
    return reply.code(status).send({ code, message });
  };

  r.setErrorHandler((err: Error & { statusCode?: number; code?: string }, req, reply) => {
    const { status, code } =
      err instanceof GenerateError ? { status: err.status, code: err.code } : err.name === 'TimeoutError' ? { status: 504, code: 'CLOUD_TIMEOUT' } : frameRequestStatus(err);
    return fail(req, reply, status, code, err.message);
  });
  // the hard ceiling while reading; the session's own limit (known once the edge is ready) is
  // checked against content-length before reading and against the frame after
  r.addContentTypeParser('application/octet-stream', { parseAs: 'buffer', bodyLimit: DEFAULT_MAX_FRAME_BYTES }, (_req, body, done) => done(null, body));


  r.post(
    '/api/generate',
    {
      schema: { response: { 400: errorSchema, 401: errorSchema, 404: errorSchema, 413: errorSchema, 415: errorSchema, 502: errorSchema, 503: errorSchema, 504: errorSchema } },
      // the user is checked before a byte of the body is read
      onRequest: async (req, reply) => {
        const s = o.state();
        if (!s) return fail(req, reply, 503, 'NOT_READY', 'the edge is still starting');
        const userId = headerValue(req.headers[GENERATE_USER_HEADER]);
        const token = bearerToken(req.headers.authorization);
        if (!userId || userId.length > 64 || !token || token.length > 128) {
          return fail(req, reply, 401, 'UNAUTHORIZED', `generation needs the user's credentials: headers "authorization: Bearer <userToken>" and "${GENERATE_USER_HEADER}: <userId>"`);
        }
        if (!checkUserToken(s.edgeSecret, userId, s.edgeId, token)) return fail(req, reply, 401, 'UNAUTHORIZED', `user "${userId}" has no valid token for edge "${s.edgeId}"`);
        const declared = Number(req.headers['content-length']);
        const limit = maxGenerateFrameBytes(s.config);
        if (declared > limit) {
          // the client sends the body anyway: close the connection rather than read it
          reply.header('connection', 'close');
          return fail(req, reply, 413, 'FRAME_TOO_LARGE', `a frame of ${declared} bytes exceeds the limit of ${limit}`);
        }
      },
    },
    async (req, reply) => {
      const s = o.state()!;
      const c = s.config;
      const userId = headerValue(req.headers[GENERATE_USER_HEADER])!;
      const body = req.body as Buffer;
      if (!Buffer.isBuffer(body)) throw new ProtocolError('BAD_FRAME', 'the body is an application/octet-stream `generate` frame');
      const { h: h1, T } = decodeGenerateFrame(new Uint8Array(body.buffer, body.byteOffset, body.byteLength), c);

      const version = s.version;
      const adapter = await s.edgeAdapter(version).catch((e: unknown) => {
        // the cloud serves only its current version: it has moved on and this edge will hear of it shortly
        if (e instanceof EdgeError && e.code === 'ADAPTER_DOWNLOAD') throw new GenerateError(503, 'NOT_READY', `the global adapter is changing (version ${version}: ${e.message}); try again`);
        throw e;
      });
      const { y: h2 } = await s.blocks.forward(adapter, h1, 1, T);

      const frame = encodeFrame('generate', { userId, version }, { h: { data: h2, shape: [1, T, c.nEmbd] } });
      let res: Response;
      try {
        res = await fetch(`${s.cloudUrl}/api/generate`, {
          method: 'POST',
          headers: { authorization: `Bearer ${s.edgeToken}`, 'content-type': 'application/octet-stream' },
          body: frame as Uint8Array<ArrayBuffer>,
          signal: AbortSignal.timeout(cloudTimeoutMs),
        });
      } catch (e) {
        if ((e as Error).name === 'TimeoutError') throw new GenerateError(504, 'CLOUD_TIMEOUT', `the cloud did not answer within ${cloudTimeoutMs} ms`);
        throw new GenerateError(502, 'CLOUD_UNREACHABLE', `the cloud is unreachable: ${(e as Error).message}`);
      }
      if (!res.ok) {
        const e = await responseError(res);
        // the user's own problem (not known to the cloud) goes back as is; anything else is the edge's or the cloud's
        if (res.status === 404 && e.code === 'UNKNOWN_USER') throw new GenerateError(404, e.code, e.message);
        if (res.status === 409 && e.code === 'UNKNOWN_VERSION') throw new GenerateError(503, 'NOT_READY', `the global adapter is changing (${e.message}); try again`);
        throw new GenerateError(502, 'CLOUD_ERROR', `the cloud refused: ${res.status} ${e.code}: ${e.message}`);
      }
      const bytes = new Uint8Array(await res.arrayBuffer());
      try {
        decodeLogitsFrame(bytes, c);
      } catch (e) {
        throw new GenerateError(502, 'CLOUD_ERROR', `the cloud's answer is unusable: ${(e as Error).message}`);
      }
      // checked: relayed as it came
      return reply.type('application/octet-stream').send(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    },
  );
}
