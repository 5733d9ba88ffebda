/**
 * The edge operator's routes (DESIGN.md, Trust: the admin dashboard needs an operator token):
 *
 *   GET  /admin                          the dashboard page (admin-page.ts); holds no data, so no token
 *   GET  /api/admin/status               Bearer operator token: everything the dashboard shows
 *   POST /api/admin/users/:userId/drop   Bearer operator token: closes the user's connection (4003)
 *
 * A missing or wrong token gets 401 {code: 'UNAUTHORIZED', message}; tokens are compared in
 * constant time.
 */
import { bearerToken, secretsEqual } from '@splitllm/wire/node';
import { createHash } from 'node:crypto';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { ADMIN_SCRIPT, ADMIN_STYLE, adminPage } from './admin-page';
import type { Edge } from './edge';

export interface AdminRoutesOptions {
  operatorToken: string;
  /** the edge, once it serves (undefined while starting) */
  edge: () => Edge | undefined;
}

const errorSchema = { type: 'object', properties: { code: { type: 'string' }, message: { type: 'string' } }, required: ['code', 'message'] };
const nullable = (type: string) => ({ type: [type, 'null'] });
const userSchema = {
  type: 'object',
  properties: {
    userId: { type: 'string' },
    state: { type: 'string', enum: ['waiting', 'training'] },
    position: { type: 'integer' },
    connectedAt: { type: 'string' },
    bytesIn: { type: 'integer' },
    bytesOut: { type: 'integer' },
  },
  required: ['userId', 'state', 'position', 'connectedAt', 'bytesIn', 'bytesOut'],
};
const lossPointSchema = {
  type: 'object',
  properties: { userId: { type: 'string' }, step: { type: 'integer' }, loss: { type: 'number' }, ms: { type: 'number' }, tokens: { type: 'integer' }, at: { type: 'string' } },
  required: ['userId', 'step', 'loss', 'ms', 'tokens', 'at'],
};

/** What GET /api/admin/status answers: Edge.status() and the loss series of the current (or last) round. */
export const adminStatusSchema = {
  type: 'object',
  properties: {
    edgeId: { type: 'string' },
    provider: { type: 'string' },
    cloudConnected: { type: 'boolean' },
    version: { type: 'integer' },
    plan: { type: 'object', additionalProperties: true },
    train: { type: 'object', additionalProperties: true },
    round: {
      type: ['object', 'null'],
      properties: {
        number: { type: 'integer' },
        version: { type: 'integer' },
        current: { type: ['object', 'null'], properties: { userId: { type: 'string' }, step: { type: 'integer' }, steps: { type: 'integer' } } },
        completed: { type: 'array', items: { type: 'string' } },
      },
    },
    users: { type: 'array', items: userSchema },
    waiting: { type: 'integer' },
    lastStepMs: nullable('number'),
    tokensPerSecond: nullable('number'),
    bytesIn: { type: 'integer' },
    bytesOut: { type: 'integer' },
    memory: {
      type: 'object',
      properties: { rss: { type: 'number' }, heapTotal: { type: 'number' }, heapUsed: { type: 'number' }, external: { type: 'number' }, arrayBuffers: { type: 'number' }, peakRss: nullable('number') },
    },
    steps: { type: 'array', items: { type: 'object', properties: { round: { type: 'integer' }, ...lossPointSchema.properties } } },
    errors: {
      type: 'array',
      items: { type: 'object', properties: { at: { type: 'string' }, code: { type: 'string' }, message: { type: 'string' }, userId: { type: 'string' } }, required: ['at', 'code', 'message'] },
    },
    loss: {
      type: 'object',
      properties: { round: nullable('integer'), points: { type: 'array', items: lossPointSchema } },
      required: ['round', 'points'],
    },
  },
  required: ['edgeId', 'provider', 'cloudConnected', 'version', 'round', 'users', 'waiting', 'lastStepMs', 'tokensPerSecond', 'bytesIn', 'bytesOut', 'memory', 'steps', 'errors', 'loss'],
};

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
      req.log.warn({ url: req.url }, 'admin request with a missing or wrong operator token');
      return reply
        .code(401)
        .header('www-authenticate', 'Bearer realm="splitllm-edge-admin"')
        .send({ code: 'UNAUTHORIZED', message: token === undefined ? 'this needs the operator token: authorization: Bearer <token>' : 'the operator token is wrong' });
    }
  };
  const notReady = (reply: FastifyReply) => reply.code(503).send({ code: 'NOT_READY', message: 'the edge is still starting' });

  app.get('/admin', { schema: { response: { 200: { type: 'string' } } } }, async (_req, reply) =>
    reply
      .type('text/html; charset=utf-8')
      .header('cache-control', 'no-store')
      .header('content-security-policy', csp)
      .header('referrer-policy', 'no-referrer')
      .header('x-content-type-options', 'nosniff')
      .send(page),
  );

  app.get('/api/admin/status', { onRequest: requireOperator, schema: { response: { 200: adminStatusSchema, 401: errorSchema, 503: errorSchema } } }, async (_req, reply) => {
    const edge = o.edge();
    if (!edge) return notReady(reply);
    reply.header('cache-control', 'no-store');
    return { ...edge.status(), loss: edge.lossSeries ?? { round: null, points: [] } };
  });

  app.post<{ Params: { userId: string } }>(
    '/api/admin/users/:userId/drop',
    {
      onRequest: requireOperator,
      schema: {
        params: { type: 'object', properties: { userId: { type: 'string', minLength: 1, maxLength: 64 } }, required: ['userId'] },
        response: { 200: { type: 'object', properties: { dropped: { type: 'string' } }, required: ['dropped'] }, 401: errorSchema, 404: errorSchema, 503: errorSchema },
      },
    },
    async (req, reply) => {
      const edge = o.edge();
      if (!edge) return notReady(reply);
      const { userId } = req.params;
      if (!edge.dropUser(userId)) return reply.code(404).send({ code: 'UNKNOWN_USER', message: `no user "${userId}" is connected to this edge` });
      req.log.info({ userId }, 'the operator dropped a user');
      return { dropped: userId };
    },
  );
};
