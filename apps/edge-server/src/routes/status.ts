/** Public status (a summary with counts, no user ids), health and Prometheus metrics. */
import type { FastifyPluginAsync } from 'fastify';
import { ref } from '../schemas';

export const statusRoutes: FastifyPluginAsync = async (app) => {
  app.get(
    '/api/status',
    { onRequest: app.requireEdge, schema: { response: { 200: ref('publicStatus'), 503: ref('edgeError') } } },
    async () => {
      const edge = app.edge;
      return {
        edgeId: edge.edgeId,
        version: edge.version,
        round: edge.roundNumber(),
        cloudConnected: edge.cloudConnected,
        users: { connected: edge.users.size, waiting: edge.queue.waitingCount() },
        provider: edge.provider,
      };
    },
  );

  app.get('/metrics', { schema: { response: { 200: { type: 'string' } } } }, async (_req, reply) =>
    reply.type(app.metrics.registry.contentType).send(await app.metrics.render()),
  );

  app.get(
    '/api/health',
    {
      schema: {
        response: {
          200: {
            type: 'object',
            properties: { ok: { type: 'boolean' }, ready: { type: 'boolean' } },
            required: ['ok', 'ready'],
            additionalProperties: false,
          },
        },
      },
    },
    async () => ({ ok: true, ready: app.edgeReady }),
  );
};
