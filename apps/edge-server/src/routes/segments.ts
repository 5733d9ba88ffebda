/**
 * What users download from their edge: the run's manifest, the tokenizer, the frozen user
 * segment and the user part of the current global adapter.
 */
import type { FastifyPluginAsync } from 'fastify';
import { ref } from '../schemas';

/** Never changes for a run (or for a version): cache it for good. */
const IMMUTABLE = 'public, max-age=31536000, immutable';

export const segmentRoutes: FastifyPluginAsync = async (app) => {
  app.get(
    '/api/manifest',
    { onRequest: app.requireEdge, schema: { response: { 200: ref('manifest'), 503: ref('edgeError') } } },
    async () => ({ ...app.edge.manifest, version: app.edge.version }),
  );

  app.get(
    '/api/tokenizer',
    { onRequest: app.requireEdge, schema: { response: { 200: ref('tokenizer'), 503: ref('edgeError') } } },
    async (_req, reply) => {
      reply.header('cache-control', IMMUTABLE);
      return app.edge.tokenizer;
    },
  );

  app.get(
    '/api/segments/user',
    {
      onRequest: app.requireEdge,
      schema: {
        headers: { type: 'object', properties: { 'if-none-match': { type: 'string' } } },
        response: { 304: { type: 'null' }, 503: ref('edgeError') },
      },
    },
    async (req, reply) => {
      const { manifest, userSegment: b } = app.edge;
      const etag = `"${manifest.segments.user.sha256}"`;
      // the frozen segment never changes for a run: cache it for good, keyed by its hash
      reply.header('etag', etag).header('cache-control', IMMUTABLE).header('access-control-allow-origin', '*');
      if (req.headers['if-none-match'] === etag) return reply.code(304).send();
      return reply.type('application/octet-stream').send(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
    },
  );

  app.get<{ Querystring: { version: number } }>(
    '/api/adapters/user',
    {
      onRequest: app.requireEdge,
      schema: {
        querystring: {
          type: 'object',
          properties: { version: { type: 'integer', minimum: 0 } },
          required: ['version'],
        },
        response: { 400: ref('edgeError'), 404: ref('edgeError'), 503: ref('edgeError') },
      },
    },
    async (req, reply) => {
      let file: Uint8Array;
      try {
        file = await app.edge.userAdapterFile(req.query.version);
      } catch (e) {
        const code = (e as { code?: unknown }).code;
        return reply
          .code(404)
          .send({ code: typeof code === 'string' ? code : 'UNKNOWN_VERSION', message: (e as Error).message });
      }
      reply.header('cache-control', IMMUTABLE);
      return reply.type('application/octet-stream').send(Buffer.from(file.buffer, file.byteOffset, file.byteLength));
    },
  );
};
