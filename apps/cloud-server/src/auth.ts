/**
 * The two kinds of callers the cloud's protected routes admit, as route hooks: a registered edge
 * (its bearer token from registration) and the operator (the operator token).
 *
 * Both run as `onRequest` hooks on routes with a body: the token is checked before a byte of
 * the body is read, and a refused request that has a body is answered with `Connection: close`,
 * so the server neither buffers nor drains what an unknown caller sends.
 */
import { bearerToken, secretsEqual } from '@splitllm/wire/node';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import './context';
import type { EdgeInfo } from './edge-registry';
import { CloudRequestError } from './errors';

/** Whether the request announces a body (a length > 0, or chunks). */
function hasBody(req: FastifyRequest): boolean {
  const len = req.headers['content-length'];
  return (len !== undefined && len !== '0') || req.headers['transfer-encoding'] !== undefined;
}

/** The refusal of an unauthenticated request; closes the connection when a body is on its way. */
function unauthorized(
  req: FastifyRequest,
  reply: FastifyReply | undefined,
  code: 'BAD_EDGE_TOKEN' | 'BAD_OPERATOR_TOKEN',
  message: string,
): CloudRequestError {
  if (reply && hasBody(req)) reply.header('connection', 'close');
  return new CloudRequestError(401, code, message);
}

/** Admits a registered edge and sets `req.cloudEdge`. */
export async function requireEdge(this: FastifyInstance, req: FastifyRequest, reply?: FastifyReply): Promise<void> {
  const token = bearerToken(req.headers.authorization);
  const edge = token ? this.cloudEdges.byToken(token) : undefined;
  if (!edge) {
    throw unauthorized(
      req,
      reply,
      'BAD_EDGE_TOKEN',
      'this route needs a registered edge token (Authorization: Bearer ...)',
    );
  }
  req.cloudEdge = edge;
}

/** Whether the request carries the operator token. */
export function isOperator(app: FastifyInstance, req: FastifyRequest): boolean {
  const token = bearerToken(req.headers.authorization);
  return !!token && secretsEqual(token, app.cloudRun.operatorToken);
}

export async function requireOperator(this: FastifyInstance, req: FastifyRequest, reply?: FastifyReply): Promise<void> {
  if (!isOperator(this, req)) {
    throw unauthorized(
      req,
      reply,
      'BAD_OPERATOR_TOKEN',
      'this route needs the operator token (Authorization: Bearer ...)',
    );
  }
}

/** The edge `requireEdge` admitted (a route without that hook has none: a wiring bug). */
export function edgeOf(req: FastifyRequest): EdgeInfo {
  if (!req.cloudEdge) throw new Error(`${req.url}: no edge on the request (is requireEdge among its hooks?)`);
  return req.cloudEdge;
}
