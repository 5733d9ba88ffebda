/**
 * Joining: the operator issues single-use join tokens; a user redeems one and is assigned the
 * least-loaded live edge, with a token that admits it there. A user whose edge died comes back
 * with the token it holds (it proves the user and its old edge) and is assigned a live edge.
 */
import { randomToken, secretsEqual, userToken } from '@splitllm/wire/node';
import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import { isOperator, requireOperator } from '../auth';
import { CloudRequestError } from '../errors';
import { ref } from '../schemas';

const noEdge = () => new CloudRequestError(503, 'NO_EDGE', 'no edge server is connected; try again shortly');

/** These routes' bodies are a few short strings: nobody needs the app's 1 MiB before being known. */
export const JOIN_BODY_LIMIT = 4096;
export const joinRoutes: FastifyPluginAsync = async (app) => {
  const { cloudEdges: edges, cloudStore: store } = app;
  const { edgeSecret, rateLimits } = app.cloudRun;

  /**
   * `perMinute` requests a minute per client IP (none when 0), counted and refused in onRequest,
   * before the body is read; the answer is 429 RATE_LIMITED with Retry-After.
   */
  const limited = (route: string, perMinute: number, allow?: (req: FastifyRequest) => boolean) =>
    perMinute > 0
      ? {
          rateLimit: {
            max: perMinute,
            timeWindow: 60_000,
            ...(allow ? { allowList: allow } : {}),
            onExceeded: (req: FastifyRequest) =>
              req.log.warn({ code: 'RATE_LIMITED', route, perMinute }, 'request refused: rate limit'),
            errorResponseBuilder: (_req: FastifyRequest, ctx: { max: number; after: string }) =>
              new CloudRequestError(
                429,
                'RATE_LIMITED',
                `${route}: at most ${ctx.max} requests a minute from one address; retry in ${ctx.after}`,
              ),
          },
        }
      : {};
  const assignment = {
    200: ref('edgeAssignment'),
    400: ref('cloudError'),
    403: ref('cloudError'),
    413: ref('cloudError'),
    429: ref('cloudError'),
    503: ref('cloudError'),
  };

  app.post(
    '/api/join-tokens',
    {
      // the limit counts guesses of the operator token: the limiter's hook (onRequest) runs
      // before this check, and the operator's own requests are let through
      config: limited('join-tokens', rateLimits.joinTokens, (req) => isOperator(app, req)),
      preValidation: requireOperator,
      bodyLimit: JOIN_BODY_LIMIT,
      schema: {
        response: {
          200: {
            type: 'object',
            properties: { token: { type: 'string' } },
            required: ['token'],
            additionalProperties: false,
          },
          401: ref('cloudError'),
          429: ref('cloudError'),
        },
      },
    },
    async () => ({ token: store.issueJoinToken() }),
  );

  app.post<{ Body: { joinToken: string } }>(
    '/api/join',
    {
      config: limited('join', rateLimits.join),
      bodyLimit: JOIN_BODY_LIMIT,
      schema: {
        body: {
          type: 'object',
          properties: { joinToken: { type: 'string', minLength: 1, maxLength: 128 } },
          required: ['joinToken'],
          additionalProperties: false,
        },
        response: assignment,
      },
    },
    async (req) => {
      const edge = edges.pickEdge();
      if (!edge) throw noEdge();
      const userId = `u-${randomToken(6)}`;
      if (!store.redeemJoinToken(req.body.joinToken, userId)) {
        req.log.warn({ code: 'BAD_JOIN_TOKEN' }, 'join refused');
        throw new CloudRequestError(403, 'BAD_JOIN_TOKEN', 'this join token is unknown or was already used');
      }
      store.recordUser(userId, edge.edgeId);
      edge.assigned++;
      req.log.info({ userId, edgeId: edge.edgeId }, 'user joined');
      return { userId, userToken: userToken(edgeSecret, userId, edge.edgeId), edgeId: edge.edgeId, edgeUrl: edge.url };
    },
  );

  app.post<{ Body: { userId: string; userToken: string; edgeId: string } }>(
    '/api/rejoin',
    {
      config: limited('rejoin', rateLimits.rejoin),
      bodyLimit: JOIN_BODY_LIMIT,
      schema: {
        body: {
          type: 'object',
          properties: {
            userId: { type: 'string', maxLength: 64 },
            userToken: { type: 'string', maxLength: 128 },
            edgeId: { type: 'string', maxLength: 64 },
          },
          required: ['userId', 'userToken', 'edgeId'],
          additionalProperties: false,
        },
        response: assignment,
      },
    },
    async (req) => {
      const { userId, userToken: token, edgeId } = req.body;
      const known = store.user(userId);
      if (!known || known.edgeId !== edgeId || !secretsEqual(userToken(edgeSecret, userId, edgeId), token)) {
        req.log.warn({ code: 'BAD_USER_TOKEN', userId }, 'rejoin refused');
        throw new CloudRequestError(
          403,
          'BAD_USER_TOKEN',
          "unknown user, or a token that is not this user's for that edge",
        );
      }
      const current = edges.edges.get(edgeId);
      const edge = current?.channel ? current : edges.pickEdge();
      if (!edge) throw noEdge();
      if (edge.edgeId !== edgeId) {
        store.recordUser(userId, edge.edgeId);
        edge.assigned++;
        req.log.info({ userId, from: edgeId, to: edge.edgeId }, 'user reassigned');
      }
      return { userId, userToken: userToken(edgeSecret, userId, edge.edgeId), edgeId: edge.edgeId, edgeUrl: edge.url };
    },
  );
};
