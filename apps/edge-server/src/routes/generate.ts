/**
 * Generation at the edge: `POST /api/generate`, over HTTP so that it never touches the training
 * sockets and turns.
 *
 *   user  --generate {h: h1 [1, T, D]}-->  edge: blocks [k, m) with the global edge adapter of
 *   the edge's current version  --generate {h: h2, userId, version}-->  cloud: blocks [m, L),
 *   ln_f, tied head  --logits {logits [V], version}-->  edge  -->  user
 *
 * The user proves itself as on the WebSocket (the token the cloud derived for this user and this
 * edge): `authorization: Bearer <userToken>` and `x-splitllm-user: <userId>`, checked before any
 * of the body is read. The body is one `generate` message (application/octet-stream), at most
 * maxGenerateFrameBytes(config). Refusals are JSON {code, message}: 400 BAD_FRAME / BAD_SHAPE /
 * NOT_FINITE / ..., 401 UNAUTHORIZED, 403 USER_REMOVED and 404 UNKNOWN_USER (from the cloud: the cloud keeps the user
 * registry), 413 FRAME_TOO_LARGE, 503 NOT_READY (starting, or the global version is changing:
 * retry), 502/504 when the cloud fails or is late.
 */
import { CodedError, modelDims } from '@splitllm/model';
import {
  DEFAULT_MAX_FRAME_BYTES,
  decodeMessage,
  encodeMessage,
  expectShape,
  frameRequestStatus,
  GENERATE_USER_HEADER,
  maxGenerateFrameBytes,
  maxLogitsFrameBytes,
  ProtocolError,
  responseError,
} from '@splitllm/wire';
import { bearerToken } from '@splitllm/wire/node';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { EdgeError } from '../errors';
import { ref } from '../schemas';

export interface GenerateRoutesOptions {
  /** the cloud must answer within this time (default 60 s) */
  cloudTimeoutMs?: number;
}

/** A refusal with its HTTP status (the code is the edge's, or the cloud's passed on). */
class GenerateError extends CodedError<string> {
  constructor(
    readonly status: number,
    code: string,
    message: string,
  ) {
    super(code, message);
  }
}

function headerValue(h: string | string[] | undefined): string | undefined {
  return Array.isArray(h) ? h[0] : h;
}

const refusals = Object.fromEntries([400, 401, 403, 404, 413, 415, 502, 503, 504].map((s) => [s, ref('edgeError')]));

export const generateRoutes: FastifyPluginAsync<GenerateRoutesOptions> = async (app, o) => {
  const cloudTimeoutMs = o.cloudTimeoutMs ?? 60_000;
  const fail = (req: FastifyRequest, reply: FastifyReply, status: number, code: string, message: string) => {
    req.log.warn(
      { code, err: message, userId: headerValue(req.headers[GENERATE_USER_HEADER]) },
      'generate request refused',
    );
    return reply.code(status).send({ code, message });
  };

  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, req, reply) => {
    const { status, code } =
      err instanceof GenerateError
        ? { status: err.status, code: err.code }
        : err.name === 'TimeoutError'
          ? { status: 504, code: 'CLOUD_TIMEOUT' }
          : frameRequestStatus(err);
    return fail(req, reply, status, code, err.message);
  });
  // the hard ceiling while reading; the session's own limit (known once the edge is ready) is
  // checked against content-length before reading and against the frame after
  app.addContentTypeParser(
    'application/octet-stream',
    { parseAs: 'buffer', bodyLimit: DEFAULT_MAX_FRAME_BYTES },
    (_req, body, done) => done(null, body),
  );

  app.post(
    '/api/generate',
    {
      schema: {
        headers: {
          type: 'object',
          properties: { authorization: { type: 'string' }, [GENERATE_USER_HEADER]: { type: 'string' } },
        },
        response: refusals,
      },
      // the user is checked before a byte of the body is read
      onRequest: [
        app.requireEdge,
        async (req, reply) => {
          const edge = app.edge;
          const userId = headerValue(req.headers[GENERATE_USER_HEADER]);
          const token = bearerToken(req.headers.authorization);
          if (!userId || userId.length > 64 || !token || token.length > 128) {
            const message =
              'generation needs the user\'s credentials: headers "authorization: Bearer <userToken>" and ' +
              `"${GENERATE_USER_HEADER}: <userId>"`;
            return fail(req, reply, 401, 'UNAUTHORIZED', message);
          }
          if (!edge.isUserToken(userId, token)) {
            return fail(
              req,
              reply,
              401,
              'UNAUTHORIZED',
              `user "${userId}" has no valid token for edge "${edge.edgeId}"`,
            );
          }
          const declared = Number(req.headers['content-length']);
          const limit = maxGenerateFrameBytes(modelDims(edge.config));
          if (declared > limit) {
            // the client sends the body anyway: close the connection rather than read it
            reply.header('connection', 'close');
            return fail(
              req,
              reply,
              413,
              'FRAME_TOO_LARGE',
              `a frame of ${declared} bytes exceeds the limit of ${limit}`,
            );
          }
        },
      ],
    },
    async (req, reply) => {
      const edge = app.edge;
      const c = modelDims(edge.config);
      const userId = headerValue(req.headers[GENERATE_USER_HEADER]);
      // checked on request; here for the type only
      if (!userId) throw new GenerateError(401, 'UNAUTHORIZED', `no "${GENERATE_USER_HEADER}" header`);
      const body = req.body as Buffer;
      if (!Buffer.isBuffer(body))
        throw new ProtocolError('BAD_FRAME', 'the body is an application/octet-stream `generate` frame');
      const asked = decodeMessage('userGenerate', new Uint8Array(body.buffer, body.byteOffset, body.byteLength), {
        maxBytes: maxGenerateFrameBytes(c),
      });
      const h1 = expectShape(asked.h, 'h', [1, null, c.width]);
      const T = asked.h.shape[1];
      if (T < 1 || T > c.positions)
        throw new ProtocolError('BAD_SHAPE', `h has ${T} positions; a context has 1 to ${c.positions}`);

      const version = edge.version;
      const adapter = await edge.edgeAdapterAt(version).catch((e: unknown) => {
        // the cloud serves only its current version: it has moved on and this edge will hear of it shortly
        if (e instanceof EdgeError && e.code === 'ADAPTER_DOWNLOAD') {
          throw new GenerateError(
            503,
            'NOT_READY',
            `the global adapter is changing (version ${version}: ${e.message}); try again`,
          );
        }
        throw e;
      });
      const { y: h2 } = await edge.blocks.forward(adapter, h1, 1, T);

      const frame = encodeMessage('edgeGenerate', 'generate', {
        userId,
        version,
        h: { data: h2, shape: [1, T, c.width] },
      });
      let res: Response;
      try {
        res = await fetch(`${edge.link.url}/api/generate`, {
          method: 'POST',
          headers: { authorization: `Bearer ${edge.link.edgeToken}`, 'content-type': 'application/octet-stream' },
          body: frame as Uint8Array<ArrayBuffer>,
          signal: AbortSignal.timeout(cloudTimeoutMs),
        });
      } catch (e) {
        if ((e as Error).name === 'TimeoutError') {
          throw new GenerateError(504, 'CLOUD_TIMEOUT', `the cloud did not answer within ${cloudTimeoutMs} ms`);
        }
        throw new GenerateError(502, 'CLOUD_UNREACHABLE', `the cloud is unreachable: ${(e as Error).message}`);
      }
      if (!res.ok) {
        const e = await responseError(res);
        // the user's own problem (not known to the cloud) goes back as is; anything else is the edge's or the cloud's
        if (res.status === 404 && e.code === 'UNKNOWN_USER') throw new GenerateError(404, e.code, e.message);
        if (res.status === 403 && e.code === 'USER_REMOVED') throw new GenerateError(403, e.code, e.message);
        if (res.status === 409 && e.code === 'UNKNOWN_VERSION') {
          throw new GenerateError(503, 'NOT_READY', `the global adapter is changing (${e.message}); try again`);
        }
        throw new GenerateError(502, 'CLOUD_ERROR', `the cloud refused: ${res.status} ${e.code}: ${e.message}`);
      }
      const bytes = new Uint8Array(await res.arrayBuffer());
      try {
        const answer = decodeMessage('logits', bytes, { maxBytes: maxLogitsFrameBytes(edge.config) });
        // labels in the cloud: the logits; on the device: the last hidden state (the tab runs the head)
        const want = edge.manifest.train.labels === 'cloud' ? 'logits' : 'hidden';
        if (answer.type !== want) throw new Error(`expected a "${want}" message, got "${answer.type}"`);
        if (answer.type === 'logits') expectShape(answer.logits, 'logits', [c.vocab]);
        else expectShape(answer.h, 'h', [c.width]);
      } catch (e) {
        throw new GenerateError(502, 'CLOUD_ERROR', `the cloud's answer is unusable: ${(e as Error).message}`);
      }
      // checked: relayed as it came
      return reply.type('application/octet-stream').send(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    },
  );
};
