/** What the cloud is doing: /api/status (JSON), /metrics (Prometheus text), /api/health. */
import type { FastifyPluginAsync } from 'fastify';
import { ref } from '../schemas';

const str = { type: 'string' } as const;
const int = { type: 'integer' } as const;
const closed = (properties: Record<string, unknown>) => ({
  type: 'object',
  properties,
  required: Object.keys(properties),
  additionalProperties: false,
});

const statusSchema = closed({
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
  settings: closed({
    plan: ref('splitPlan'),
    train: ref('trainSettings'),
    minEdges: int,
    minUsers: int,
    maxRounds: int,
    strategy: str,
  }),
});

export const statusRoutes: FastifyPluginAsync = async (app) => {
  app.get('/api/status', { schema: { response: { 200: statusSchema } } }, async () => {
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
