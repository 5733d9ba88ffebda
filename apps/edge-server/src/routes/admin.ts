/**
 * The edge operator's routes:
 *
 *   GET  /admin                          the dashboard page (admin-page.ts); holds no data, so no token
 *   GET  /admin/uplot.js, /admin/uplot.css  the chart library the page uses (uPlot's iife build and
 *                                        its CSS, read once from node_modules at start; no CDN)
 *   GET  /api/admin/status               Bearer operator token: everything the dashboard shows
 *                                        (Edge.status(), plus the model, each user's phase and the
 *                                        counts made from them, the departures, and each error
 *                                        said in a sentence for the operator)
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
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { ADMIN_SCRIPT, ADMIN_STYLE, adminPage } from '../admin-page';
import type { Edge } from '../edge';
import { ref } from '../schemas';
import type { ErrorRecord, LeaveRecord } from '../telemetry';

export interface AdminRoutesOptions {
  operatorToken: string;
}

const cspHash = (s: string) => `'sha256-${createHash('sha256').update(s, 'utf8').digest('base64')}'`;

/** A file the page loads from this edge: its bytes, and a hash that names this version of it. */
interface Asset {
  body: Buffer;
  etag: string;
  version: string;
}

function uplotAsset(file: string): Asset {
  const body = readFileSync(createRequire(import.meta.url).resolve(`uplot/dist/${file}`));
  const sha = createHash('sha256').update(body).digest('hex');
  return { body, etag: `"${sha}"`, version: sha.slice(0, 16) };
}

/** Where a connected user stands in the round, as the dashboard shows and counts it. */
export type UserPhase = 'training' | 'waiting' | 'done' | 'sitting-out';

/**
 * What each refusal means for the operator, in a sentence; the code and the edge's own message
 * go under it. A code not listed here gets a generic sentence (the message says the rest).
 */
const ERROR_SENTENCES: Record<string, string> = {
  USER_TIMEOUT:
    "A user's device stopped answering during its turn. Its steps were rolled back and the next user trained.",
  TURN_DEADLINE:
    "A user's turn took longer than the deadline. Its steps were rolled back; a device that misses " +
    'again sits out a round.',
  SITTING_OUT: 'A user missed its turn deadline several times in a row, so it sits out the next round.',
  STEP_FAILED: "A training step failed on this edge, so the user's turn was rolled back.",
  ROUND_FAILED: 'A round failed on this edge, so this edge sat that round out.',
  CLOUD_GONE: 'The connection to the cloud dropped. This edge reconnects by itself; the turn in progress was lost.',
  CLOUD_TIMEOUT: 'The cloud did not answer a step in time, so the turn in progress was rolled back.',
  CLOUD_UNREACHABLE: 'This edge cannot reach the cloud. It keeps trying; check that the cloud is running.',
  UPLOAD_REFUSED: "The cloud refused this edge's result for a round, so that round's work on this edge is lost.",
  ADAPTER_DOWNLOAD: 'This edge could not download the shared model from the cloud.',
  SEGMENT_DOWNLOAD: 'This edge could not download its part of the model from the cloud.',
  SEGMENT_CORRUPT: 'The part of the model this edge downloaded was damaged, so it was refused.',
  REMOVAL_NOT_RECORDED:
    'The cloud has not recorded a user you dropped yet. This edge keeps refusing that user and retries.',
  USER_REMOVED: 'A user you dropped tried to connect again and was refused.',
  UNAUTHORIZED: 'A connection without a valid invitation for this edge was refused.',
  FRAME_TOO_LARGE: 'A connection sent more data than this run allows, and it was refused.',
  NOT_YOUR_TURN: "A user's device sent training data out of turn; it was refused and the user stays.",
  WRONG_ROUND: "A user's device sent data for another round; it was refused and the user stays.",
  WRONG_STEP: "A user's device sent data for the wrong step; it was refused and the user stays.",
  UNKNOWN_VERSION: 'A user asked for a model version this edge no longer serves; its page fetches the current one.',
};
/** refusals of a malformed message (the wire's checks): one sentence for all */
const MALFORMED = new Set([
  'BAD_FRAME',
  'BAD_FIELD',
  'BAD_SHAPE',
  'BAD_TENSOR',
  'BAD_COUNT',
  'BAD_LOSS',
  'NOT_FINITE',
  'UNKNOWN_TYPE',
  'UNEXPECTED_TYPE',
]);

/** The sentence the dashboard shows for an error code. */
export function errorSentence(code: string): string {
  if (ERROR_SENTENCES[code]) return ERROR_SENTENCES[code];
  if (MALFORMED.has(code)) {
    return (
      'A message from a user or the cloud was malformed and refused. One is harmless; many point at an ' +
      'outdated or modified page.'
    );
  }
  return 'Something went wrong on this edge; the details below say what.';
}

/** The sentence the dashboard shows for a departure: what happened, and what it means for the run. */
export function leaveSentence(l: LeaveRecord): string {
  const turn = l.round === null ? '' : ` during its turn in round ${l.round} (that turn's steps were rolled back)`;
  if (l.kind === 'removed') {
    return `Dropped by you${turn}. It cannot rejoin until the cloud's operator re-admits it.`;
  }
  if (l.kind === 'replaced') return `Reconnected${turn}: a new connection of the same user replaced the old one.`;
  const why = l.reason.startsWith('user left: ') ? l.reason.slice('user left: '.length) : l.reason;
  // "the user is gone": its connection closed while the edge was between two of its messages
  if (why === 'connection closed' || why === 'the user is gone') {
    return `Left${turn}: the tab was closed, reloaded or lost its connection.`;
  }
  if (why === 'edge shutting down') return `Left${turn}: this edge shut down.`;
  return `Left${turn}: ${why}.`;
}

/**
 * GET /api/admin/status: Edge.status() with what the dashboard needs to say things once and
 * consistently: the model, each user's phase (training, waiting, done this round, sitting out)
 * with its place among the waiting ones, and counts made from those phases (so the counts add up
 * to the rows), the departures, and a sentence per error.
 */
export function dashboardStatus(edge: Edge) {
  const s = edge.status();
  const completed = new Set(s.round?.completed ?? []);
  const out = new Set(s.sittingOut);
  let waitingRank = 0;
  const users = s.users.map((u) => {
    const phase: UserPhase =
      u.state === 'training'
        ? 'training'
        : completed.has(u.userId)
          ? 'done'
          : out.has(u.userId)
            ? 'sitting-out'
            : 'waiting';
    return { ...u, phase, waitingPosition: phase === 'waiting' ? ++waitingRank : null };
  });
  const count = (p: UserPhase) => users.filter((u) => u.phase === p).length;
  return {
    ...s,
    model: edge.manifest.model,
    users,
    counts: {
      connected: users.length,
      training: count('training'),
      waiting: count('waiting'),
      done: count('done'),
      sittingOut: count('sitting-out'),
    },
    errors: s.errors.map((e: ErrorRecord) => ({ ...e, summary: errorSentence(e.code) })),
    leaves: edge.activity.recentLeaves.slice(-50).map((l) => ({ ...l, summary: leaveSentence(l) })),
  };
}

export const adminRoutes: FastifyPluginAsync<AdminRoutesOptions> = async (app, o) => {
  if (!o.operatorToken) throw new Error('the admin routes need an operator token');
  const uplotJs = uplotAsset('uPlot.iife.min.js');
  const uplotCss = uplotAsset('uPlot.min.css');
  // the asset URLs carry their hash, so a browser may keep them as long as it likes
  const page = adminPage({ uplotJs: uplotJs.version, uplotCss: uplotCss.version });
  // the page's own inline style and script, uPlot's two files from this origin, and requests
  // to this origin: nothing else (the hashes first: tests look for "script-src <hash>")
  const csp = [
    "default-src 'none'",
    `script-src ${cspHash(ADMIN_SCRIPT)} 'self'`,
    `style-src ${cspHash(ADMIN_STYLE)} 'self'`,
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

  const serveAsset = (path: string, asset: Asset, type: string) =>
    app.get(
      path,
      {
        schema: {
          querystring: {
            type: 'object',
            properties: { v: { type: 'string', maxLength: 64 } },
            additionalProperties: false,
          },
          // 304: the browser's copy (its If-None-Match) is this one
          response: { 200: { type: 'string' }, 304: { type: 'null' } },
        },
      },
      async (req, reply) => {
        reply
          .header('cache-control', 'public, max-age=31536000, immutable')
          .header('etag', asset.etag)
          .header('x-content-type-options', 'nosniff');
        if (req.headers['if-none-match'] === asset.etag) return reply.code(304).send();
        return reply.type(type).send(asset.body);
      },
    );
  serveAsset('/admin/uplot.js', uplotJs, 'text/javascript; charset=utf-8');
  serveAsset('/admin/uplot.css', uplotCss, 'text/css; charset=utf-8');

  app.get(
    '/api/admin/status',
    {
      onRequest: [requireOperator, app.requireEdge],
      schema: { response: { 200: ref('adminStatus'), 401: ref('edgeError'), 503: ref('edgeError') } },
    },
    async (_req, reply) => {
      reply.header('cache-control', 'no-store');
      return dashboardStatus(app.edge);
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
      app.edge.activity.noteLeave(userId, 'dropped by the operator');
      // answered once the cloud recorded it, so a reload right after the Drop is refused too;
      // when the cloud cannot be reached the edge keeps refusing the user and retries (the
      // dashboard's errors say so)
      await reported.catch(() => undefined);
      return { dropped: userId };
    },
  );
};
