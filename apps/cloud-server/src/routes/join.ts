/**
 * Joining: the operator issues single-use join tokens; a user redeems one and is assigned the
 * least-loaded live edge, with a token that admits it there. A user whose edge died comes back
 * with the token it holds (it proves the user and its old edge) and is assigned a live edge.
 *
 * Removal: an edge's operator drops a user and the edge reports it (POST /api/users/:userId/revoke,
 * edge token); the cloud refuses that user's rejoin with USER_REMOVED, and an edge asks
 * (GET /api/users/:userId, edge token) before it lets a user it dropped back in, until the
 * cloud's operator admits it again (POST /api/admin/users/:userId/admit, operator token).
 *
 * Every refusal a person can meet says what to do next: the page shows the message as it is.
 */
import { randomToken, secretsEqual, userToken } from '@splitllm/wire/node';
import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import { edgeOf, isOperator, requireEdge, requireOperator } from '../auth';
import { CloudRequestError } from '../errors';
import { ref } from '../schemas';

/** Nothing was spent: the same invitation (or credentials) works once an edge is back. */
const noEdge = (joining: boolean) =>
  new CloudRequestError(
    503,
    'NO_EDGE',
    joining
      ? 'no edge server is connected right now; your invitation was not used: try again in a minute'
      : 'no edge server is connected right now; try again in a minute',
  );

/** What the page shows a removed user (the cloud's rejoin and the edge's hello say the same). */
export const USER_REMOVED_MESSAGE =
  'The operator of this run removed you from it. Ask them to re-admit you if this is a mistake.';

const userParams = {
  type: 'object',
  properties: { userId: { type: 'string', minLength: 1, maxLength: 64 } },
  required: ['userId'],
  additionalProperties: false,
} as const;

/** The longest an invitation can be valid for: a year. */
export const MAX_INVITATION_S = 365 * 24 * 3600;

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
        // no body, or { expiresInS }: one minute to a year (anything else is a 400 BAD_REQUEST)
        body: {
          type: ['object', 'null'],
          properties: { expiresInS: { type: 'integer', minimum: 60, maximum: MAX_INVITATION_S } },
          additionalProperties: false,
        },
        response: {
          400: ref('cloudError'),
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
    async (req) => ({ token: store.issueJoinToken((req.body as { expiresInS?: number } | null)?.expiresInS) }),
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
      // an edge first: a join refused for want of one leaves the token unused
      const edge = edges.pickEdge();
      if (!edge) throw noEdge(true);
      const userId = `u-${randomToken(6)}`;
      const joined = store.joinUser(req.body.joinToken, userId, edge.edgeId);
      if (joined === 'expired' || joined === 'revoked') {
        const code = joined === 'expired' ? 'JOIN_TOKEN_EXPIRED' : 'JOIN_TOKEN_REVOKED';
        req.log.warn({ code }, 'join refused');
        throw new CloudRequestError(
          403,
          code,
          joined === 'expired'
            ? 'this invitation expired: ask the organiser for a new link'
            : 'this invitation was withdrawn by the organiser: ask them for a new link',
        );
      }
      if (joined !== 'joined') {
        req.log.warn({ code: 'BAD_JOIN_TOKEN', why: joined }, 'join refused');
        throw new CloudRequestError(
          403,
          'BAD_JOIN_TOKEN',
          joined === 'used'
            ? 'this invitation was already used: ask the organiser for a new link ' +
                '(a browser that joined with it goes on with Start, without the code)'
            : 'this invitation is not known to this run: check that the whole link was copied, ' +
                'or ask the organiser for a new one',
        );
      }
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
          "unknown user, or a token that is not this user's for that edge: join again with a new link " +
            'from the organiser',
        );
      }
      if (store.removal(userId)) {
        req.log.warn({ code: 'USER_REMOVED', userId }, 'rejoin refused');
        throw new CloudRequestError(403, 'USER_REMOVED', USER_REMOVED_MESSAGE);
      }
      const current = edges.edges.get(edgeId);
      const edge = current?.channel ? current : edges.pickEdge();
      if (!edge) throw noEdge(false);
      if (edge.edgeId !== edgeId) {
        store.recordUser(userId, edge.edgeId);
        edge.assigned++;
        req.log.info({ userId, from: edgeId, to: edge.edgeId }, 'user reassigned');
      }
      return { userId, userToken: userToken(edgeSecret, userId, edge.edgeId), edgeId: edge.edgeId, edgeUrl: edge.url };
    },
  );

  const removalAnswer = {
    type: 'object',
    properties: { userId: { type: 'string' }, edgeId: { type: 'string' }, removed: { type: 'boolean' } },
    required: ['userId', 'edgeId', 'removed'],
    additionalProperties: false,
  } as const;
  const userErrors = { 401: ref('cloudError'), 404: ref('cloudError') };

  /** A user of the requesting edge: only its own edge can remove it or ask about it. */
  const usersOwnUser = (req: FastifyRequest<{ Params: { userId: string } }>) => {
    const edge = edgeOf(req);
    const known = store.user(req.params.userId);
    if (!known || known.edgeId !== edge.edgeId) {
      throw new CloudRequestError(
        404,
        'UNKNOWN_USER',
        `no user "${req.params.userId}" is assigned to edge "${edge.edgeId}"`,
      );
    }
    return { edge, known };
  };

  app.post<{ Params: { userId: string } }>(
    '/api/users/:userId/revoke',
    {
      onRequest: requireEdge,
      bodyLimit: JOIN_BODY_LIMIT,
      schema: { params: userParams, response: { 200: removalAnswer, ...userErrors } },
    },
    async (req) => {
      const { edge, known } = usersOwnUser(req);
      const removal = store.removeUser(known.userId, edge.edgeId);
      req.log.info({ userId: known.userId, edgeId: edge.edgeId, since: removal.removedAt }, 'user removed');
      return { userId: known.userId, edgeId: known.edgeId, removed: true };
    },
  );

  app.get<{ Params: { userId: string } }>(
    '/api/users/:userId',
    { onRequest: requireEdge, schema: { params: userParams, response: { 200: removalAnswer, ...userErrors } } },
    async (req) => {
      const { known } = usersOwnUser(req);
      return { userId: known.userId, edgeId: known.edgeId, removed: store.removal(known.userId) !== undefined };
    },
  );

  app.post<{ Params: { userId: string } }>(
    '/api/admin/users/:userId/admit',
    {
      onRequest: requireOperator,
      bodyLimit: JOIN_BODY_LIMIT,
      schema: {
        params: userParams,
        response: {
          200: {
            type: 'object',
            // admitted: false when the user was not removed (nothing changed)
            properties: { userId: { type: 'string' }, admitted: { type: 'boolean' } },
            required: ['userId', 'admitted'],
            additionalProperties: false,
          },
          ...userErrors,
        },
      },
    },
    async (req) => {
      const { userId } = req.params;
      if (!store.user(userId)) throw new CloudRequestError(404, 'UNKNOWN_USER', `no user "${userId}" joined this run`);
      const admitted = store.admitUser(userId);
      req.log.info({ userId, admitted }, 'the operator admitted a user');
      return { userId, admitted };
    },
  );
};
