/**
 * Rounds over HTTP: an edge's end-of-round upload (one `update` message of the edgeUpload
 * channel) and the recorded versions.
 */
import { decodeExpected, ProtocolError } from '@splitllm/wire';
import type { FastifyPluginAsync } from 'fastify';
import { edgeOf, requireEdge } from '../auth';
import { ref } from '../schemas';

export const roundRoutes: FastifyPluginAsync = async (app) => {
  const rounds = app.cloudRounds;

  app.post<{ Params: { round: number } }>(
    '/api/rounds/:round/update',
    {
      preHandler: requireEdge,
      schema: {
        params: {
          type: 'object',
          properties: { round: { type: 'integer', minimum: 1 } },
          required: ['round'],
          additionalProperties: false,
        },
        response: {
          200: {
            type: 'object',
            properties: { accepted: { type: 'boolean' }, round: { type: 'integer' } },
            required: ['accepted', 'round'],
            additionalProperties: false,
          },
          400: ref('cloudError'),
          401: ref('cloudError'),
        },
      },
    },
    async (req) => {
      const edge = edgeOf(req);
      const body = req.body;
      if (!Buffer.isBuffer(body))
        throw new ProtocolError('BAD_FRAME', 'the update is an application/octet-stream frame');
      if (req.params.round !== rounds.current) {
        throw new ProtocolError(
          'WRONG_ROUND',
          `round ${req.params.round} is not running (current: ${rounds.current ?? 'none'})`,
        );
      }
      // counted as traffic, but not into the round's bytes: the upload adds its own size when accepted
      app.cloudMetrics.bytes.inc({ direction: 'in' }, body.byteLength);
      const bytes = new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
      const m = decodeExpected('edgeUpload', 'update', bytes, { maxBytes: app.cloudRun.frameLimit });
      return rounds.acceptUpdate(edge.edgeId, m, bytes.byteLength);
    },
  );

  app.get('/api/rounds', { schema: { response: { 200: { type: 'array', items: ref('roundRecord') } } } }, async () =>
    app.cloudStore.rounds(),
  );
};
