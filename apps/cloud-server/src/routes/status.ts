/**
 * What the cloud is doing: /api/status (JSON, public: counts and versions, never a user id, an
 * edge's URL or a path), /api/admin/status (the operator's: the edges and participants by name),
 * /metrics (Prometheus text), /api/health.
 */
import type { FastifyPluginAsync } from 'fastify';
import { requireOperator } from '../auth';
import { closed, int, ref, str } from '../schemas';
import { publicRound } from './rounds';

const settingsSchema = closed({
  plan: ref('splitPlan'),
  train: ref('trainSettings'),
  minEdges: int,
  minUsers: int,
  maxRounds: int,
  strategy: str,
});

const publicStatusSchema = closed({
  version: int,
  round: {
    ...closed({ number: int, startedAt: str, edges: int, training: int, completed: int, uploaded: int }),
    type: ['object', 'null'],
  },
  last: ref('publicRound'),
  edges: closed({ registered: int, live: int, waiting: int }),
  settings: settingsSchema,
});

const adminStatusSchema = closed({
  version: int,
  round: {
    ...closed({
      number: int,
      startedAt: str,
      edges: {
        type: 'array',
        items: closed({
          edgeId: str,
          user: { type: ['string', 'null'] },
          step: int,
          completed: { type: 'array', items: str },
          uploaded: { type: 'boolean' },
        }),
      },
    }),
    type: ['object', 'null'],
  },
  last: ref('roundRecord'),
  edges: {
    type: 'array',
    items: closed({ edgeId: str, url: str, live: { type: 'boolean' }, waiting: int, assigned: int, errors: int }),
  },
  settings: settingsSchema,
});

export const statusRoutes: FastifyPluginAsync = async (app) => {
  app.get('/api/status', { schema: { response: { 200: publicStatusSchema } } }, async () => {
    const { plan, train, settings } = app.cloudRun;
    const round = app.cloudRounds.status();
    const edges = [...app.cloudEdges.edges.values()];
    return {
      version: app.cloudVersions.version,
      round: round && {
        number: round.number,
        startedAt: round.startedAt,
        edges: round.edges.length,
        training: round.edges.filter((e) => e.user !== null).length,
        completed: round.edges.reduce((n, e) => n + e.completed.length, 0),
        uploaded: round.edges.filter((e) => e.uploaded).length,
      },
      last: publicRound(app.cloudVersions.latest),
      edges: {
        registered: edges.length,
        live: edges.filter((e) => !!e.channel).length,
        waiting: edges.reduce((n, e) => n + e.waiting, 0),
      },
      settings: { plan, train, ...settings },
    };
  });

  const admin = {
    onRequest: requireOperator,
    schema: { response: { 200: adminStatusSchema, 401: ref('cloudError') } },
  };
  app.get('/api/admin/status', admin, async () => {
    const { plan, train, settings } = app.cloudRun;
    return {
      version: app.cloudVersions.version,
      round: app.cloudRounds.status(),
      last: app.cloudVersions.latest,
      edges: [...app.cloudEdges.edges.values()].map((e) => ({
        edgeId: e.edgeId,
        url: e.url,
        live: !!e.channel,
        waiting: e.waiting,
        assigned: e.assigned,
        errors: e.errors,
      })),
      settings: { plan, train, ...settings },
    };
  });

  app.get('/metrics', { schema: { response: { 200: str } } }, async (_req, reply) => {
    const { registry } = app.cloudMetrics;
    return reply.type(registry.contentType).send(await registry.metrics());
  });

  app.get('/api/health', { schema: { response: { 200: closed({ ok: { type: 'boolean' } }) } } }, async () => ({
    ok: true,
  }));
};
