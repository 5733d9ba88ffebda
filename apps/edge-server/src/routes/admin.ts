/**
 * The edge operator's routes:
 *
 *   GET  /admin                          the dashboard page (admin-page.ts); holds no data, so no token
 *   GET  /api/admin/status               Bearer operator token: everything the dashboard shows
 *   POST /api/admin/users/:userId/drop   Bearer operator token: removes the user: its connection
 *                                        closes (4003), its hello is refused, and the cloud records
 *                                        the removal (its rejoin is refused) until the cloud's
 *                                        operator admits it again
 *
 * A missing or wrong token gets 401 {code: 'UNAUTHORIZED', message}; tokens are compared in
 * constant time. The token is checked before anything else, readiness included.
 */
import { bearerToken, secretsEqual } from '@splitllm/wire/node';
import { createHash } from 'node:crypto';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { ADMIN_SCRIPT, ADMIN_STYLE, adminPage } from '../admin-page';
import { ref } from '../schemas';

export interface AdminRoutesOptions {
  operatorToken: string;
}

const cspHash = (s: string) => `'sha256-${createHash('sha256').update(s, 'utf8').digest('base64')}'`;

export const adminRoutes: FastifyPluginAsync<AdminRoutesOptions> = async (app, o) => {
  if (!o.operatorToken) throw new Error('the admin routes need an operator token');
  const page = adminPage();
  // the page's own inline style and script, and requests to this origin: nothing else
  const csp = [
    "default-src 'none'",
    `script-src ${cspHash(ADMIN_SCRIPT)}`,
    `style-src ${cspHash(ADMIN_STYLE)}`,
    "connect-src 'self'",
    'img-src data:',
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');

  const requireOperator = async (req: FastifyRequest, reply: FastifyReply) => {
    const token = bearerToken(req.headers.authorization);
    if (token === undefined || !secretsEqual(token, o.operatorToken)) {
      // the path only: a query string may carry a secret (the request log redacts it too)
      req.log.warn({ url: req.url.split('?')[0] }, 'admin request with a missing or wrong operator token');
      const message =
        token === undefined
          ? 'this needs the operator token: authorization: Bearer <token>'
          : 'the operator token is wrong';
      return reply
        .code(401)
        .header('www-authenticate', 'Bearer realm="splitllm-edge-admin"')
        .send({ code: 'UNAUTHORIZED', message });
    }
  };

  app.get('/admin', { schema: { response: { 200: { type: 'string' } } } }, async (_req, reply) =>
    reply
      .type('text/html; charset=utf-8')
      .header('cache-control', 'no-store')
      .header('content-security-policy', csp)
      .header('referrer-policy', 'no-referrer')
      .header('x-content-type-options', 'nosniff')
      .send(page),
  );

  app.get(
    '/api/admin/status',
    {
      onRequest: [requireOperator, app.requireEdge],
      schema: { response: { 200: ref('adminStatus'), 401: ref('edgeError'), 503: ref('edgeError') } },
    },
    async (_req, reply) => {
      reply.header('cache-control', 'no-store');
      return app.edge.status();
    },
  );

  app.post<{ Params: { userId: string } }>(
    '/api/admin/users/:userId/drop',
    {
      onRequest: [requireOperator, app.requireEdge],
      schema: {
        params: {
          type: 'object',
          properties: { userId: { type: 'string', minLength: 1, maxLength: 64 } },
          required: ['userId'],
        },
        response: {
          200: {
            type: 'object',
            properties: { dropped: { type: 'string' } },
            required: ['dropped'],
            additionalProperties: false,
          },
          400: ref('edgeError'),
          401: ref('edgeError'),
          404: ref('edgeError'),
          503: ref('edgeError'),
        },
      },
    },
    async (req, reply) => {
      const { userId } = req.params;
      const reported = app.edge.dropUser(userId);
      if (!reported) {
        return reply.code(404).send({ code: 'UNKNOWN_USER', message: `no user "${userId}" is connected to this edge` });
      }
      req.log.info({ userId }, 'the operator dropped a user');
      // answered once the cloud recorded it, so a reload right after the Drop is refused too;
      // when the cloud cannot be reached the edge keeps refusing the user and retries (the
      // dashboard's errors say so)
      await reported.catch(() => undefined);
      return { dropped: userId };
    },
  );
};
