/**
 * The user page is served by the cloud, so its requests to an edge (manifest, tokenizer,
 * segment, adapters, generation) are cross-origin. No cookies are involved (credentials are
 * bearer tokens the page holds), so any origin may read the answers; the preflight allows the
 * two request headers the page sends.
 */
import type { FastifyInstance } from 'fastify';
import { GENERATE_USER_HEADER } from '@splitllm/wire';

export async function corsHook(app: FastifyInstance): Promise<void> {
  app.addHook('onRequest', async (req, reply) => {
    if (!req.headers.origin) return;
    reply.header('access-control-allow-origin', '*');
    reply.header('vary', 'origin');
    if (req.method === 'OPTIONS') {
      return reply
        .code(204)
        .header('access-control-allow-methods', 'GET, POST')
        .header('access-control-allow-headers', `authorization, content-type, ${GENERATE_USER_HEADER}`)
        .header('access-control-max-age', '600')
        .send();
    }
  });
}
