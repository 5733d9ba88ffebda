/**
 * Generation: an edge sends h2 of one user's context (a `generate` message of the edgeGenerate
 * channel, with the user and the global version whose edge part it ran). The answer, on the
 * `logits` channel, runs blocks [m, L) with that version's cloud part: with labels in the cloud,
 * a `logits` message (ln_f and the tied head too: the next-token logits at the last position);
 * with labels on the device, a `hidden` message (the last position's last hidden state: the tab
 * runs the head). The body is read only for a known edge (the edge check is an onRequest hook).
 */
import {
  decodeExpected,
  encodeMessage,
  expectShape,
  frameRequestStatus,
  maxGenerateFrameBytes,
  ProtocolError,
} from '@splitllm/wire';
import { modelDims } from '@splitllm/model';
import type { FastifyPluginAsync } from 'fastify';
import { edgeOf, requireEdge } from '../auth';
import { CloudRequestError } from '../errors';
import { ref } from '../schemas';
import { USER_REMOVED_MESSAGE } from './join';

export const generateRoutes: FastifyPluginAsync = async (app) => {
  const c = modelDims(app.cloudRun.config);
  const limit = maxGenerateFrameBytes(c);
  const V = c.vocab;
  const { generateRefused: refused, generateServed: served } = app.cloudMetrics;

  app.setErrorHandler((err: Error & { statusCode?: number; code?: unknown }, req, reply) => {
    if (err instanceof CloudRequestError) {
      // logged where it was refused, with the user and version it was about
      refused.inc({ code: err.code });
      return reply.code(err.status).send({ code: err.code, message: err.message });
    }
    const { status, code } = frameRequestStatus(err);
    refused.inc({ code });
    req.log.warn({ code, err: err.message }, 'generate request rejected');
    return reply.code(status).send({ code, message: err.message });
  });

  const errors = Object.fromEntries([400, 401, 403, 404, 409, 413, 415, 500].map((s) => [s, ref('cloudError')]));
  app.post(
    '/api/generate',
    { onRequest: requireEdge, bodyLimit: limit, schema: { response: errors } },
    async (req, reply) => {
      const edge = edgeOf(req);
      const body = req.body;
      if (!Buffer.isBuffer(body))
        throw new ProtocolError('BAD_FRAME', 'the body is an application/octet-stream `generate` frame');
      const m = decodeExpected(
        'edgeGenerate',
        'generate',
        new Uint8Array(body.buffer, body.byteOffset, body.byteLength),
        {
          maxBytes: limit,
        },
      );
      const h = expectShape(m.h, 'h', [1, null, c.width]);
      const T = m.h.shape[1];
      if (T < 1 || T > c.positions)
        throw new ProtocolError('BAD_SHAPE', `h has ${T} positions; a context has 1 to ${c.positions}`);
      const { userId, version } = m;
      const refuse = (
        status: number,
        code: 'UNKNOWN_USER' | 'USER_REMOVED' | 'UNKNOWN_VERSION' | 'NOT_FINITE',
        message: string,
      ) => {
        req.log.warn({ code, edgeId: edge.edgeId, userId, version }, 'generate request refused');
        return new CloudRequestError(status, code, message);
      };
      const user = app.cloudStore.user(userId);
      if (!user || user.edgeId !== edge.edgeId) {
        throw refuse(404, 'UNKNOWN_USER', `user "${userId}" is not a user of edge "${edge.edgeId}"`);
      }
      // a removed user is out of the run for generation too, not only for training
      if (app.cloudStore.removal(userId)) throw refuse(403, 'USER_REMOVED', USER_REMOVED_MESSAGE);
      const adapter = app.cloudVersions.at(version);
      if (!adapter) {
        const current = app.cloudVersions.version;
        throw refuse(
          409,
          'UNKNOWN_VERSION',
          `version ${version} is not a recorded global version (current: ${current})`,
        );
      }
      const segment = app.cloudSegment;
      let answer: Uint8Array;
      if (segment.labels === 'cloud') {
        const logits = await segment.tail.logits(adapter, h, 1, T);
        for (let i = 0; i < V; i++) {
          if (!Number.isFinite(logits[i])) throw refuse(500, 'NOT_FINITE', `logit ${i} is ${logits[i]}`);
        }
        answer = encodeMessage('logits', 'logits', { version, logits: { data: logits, shape: [V] } });
      } else {
        const D = c.width;
        const { y } = await segment.blocks.forward(adapter, h, 1, T);
        const last = y.slice((T - 1) * D, T * D);
        for (let i = 0; i < D; i++) {
          if (!Number.isFinite(last[i]))
            throw refuse(500, 'NOT_FINITE', `the last hidden state's value ${i} is ${last[i]}`);
        }
        answer = encodeMessage('logits', 'hidden', { version, h: { data: last, shape: [D] } });
      }
      served.inc();
      return reply
        .type('application/octet-stream')
        .send(Buffer.from(answer.buffer, answer.byteOffset, answer.byteLength));
    },
  );
};
