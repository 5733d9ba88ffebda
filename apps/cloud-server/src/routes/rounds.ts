/**
 * Rounds over HTTP: an edge's end-of-round upload (one `update` message of the edgeUpload
 * channel) and the recorded versions: in public as counts (no participant, path or refusal
 * detail), in full for the operator; both a page at a time.
 */
import { decodeExpected, ProtocolError } from '@splitllm/wire';
import type { FastifyPluginAsync } from 'fastify';
import { edgeOf, requireEdge, requireOperator } from '../auth';
import type { RoundRecord } from '../store';
import { ref } from '../schemas';

/** Rounds per page unless `?limit=` says otherwise, and the most one page holds. */
export const ROUNDS_PAGE_DEFAULT = 100;
export const ROUNDS_PAGE_MAX = 1000;

/** A recorded version as the public sees it: counts and versions. */
export function publicRound(r: RoundRecord) {
  return {
    round: r.round,
    version: r.version,
    tokens: r.tokens,
    users: r.users,
    edges: r.edges,
    loss: r.loss,
    bytes: r.bytes,
    startedAt: r.startedAt,
    finishedAt: r.finishedAt,
    refused: r.refused.length,
  };
}

const pageQuery = {
  type: 'object',
  properties: {
    limit: { type: 'integer', minimum: 1, maximum: ROUNDS_PAGE_MAX, default: ROUNDS_PAGE_DEFAULT },
    before: { type: 'integer', minimum: 0 },
  },
  additionalProperties: false,
} as const;

const page = (item: Record<string, unknown>) => ({
  type: 'object',
  properties: {
    rounds: { type: 'array', items: item },
    next: { type: ['integer', 'null'] },
    total: { type: 'integer' },
  },
  required: ['rounds', 'next', 'total'],
  additionalProperties: false,
});

export const roundRoutes: FastifyPluginAsync = async (app) => {
  const rounds = app.cloudRounds;

  app.post<{ Params: { round: number } }>(
    '/api/rounds/:round/update',
    {
      // before the body: an unknown caller's upload is never read
      onRequest: requireEdge,
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

  type PageQuery = { Querystring: { limit: number; before?: number } };
  app.get<PageQuery>(
    '/api/rounds',
    { schema: { querystring: pageQuery, response: { 200: page(ref('publicRound')), 400: ref('cloudError') } } },
    async (req) => {
      const p = app.cloudStore.roundPage(req.query.limit, req.query.before);
      return { rounds: p.rounds.map(publicRound), next: p.next, total: app.cloudStore.roundCount() };
    },
  );

  app.get<PageQuery>(
    '/api/admin/rounds',
    {
      onRequest: requireOperator,
      schema: {
        querystring: pageQuery,
        response: { 200: page(ref('roundRecord')), 400: ref('cloudError'), 401: ref('cloudError') },
      },
    },
    async (req) => {
      const p = app.cloudStore.roundPage(req.query.limit, req.query.before);
      return { ...p, total: app.cloudStore.roundCount() };
    },
  );
};
