/**
 * The two kinds of callers the cloud's protected routes admit, as route hooks: a registered edge
 * (its bearer token from registration) and the operator (the operator token).
 */
import { bearerToken, secretsEqual } from '@splitllm/wire/node';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import './context';
import type { EdgeInfo } from './edge-registry';
import { CloudRequestError } from './errors';

/** Admits a registered edge and sets `req.cloudEdge`. */
export async function requireEdge(this: FastifyInstance, req: FastifyRequest): Promise<void> {
  const token = bearerToken(req.headers.authorization);
  const edge = token ? this.cloudEdges.byToken(token) : undefined;
  if (!edge) {
    throw new CloudRequestError(
      401,
      'BAD_EDGE_TOKEN',
      'this route needs a registered edge token (Authorization: Bearer ...)',
    );
  }
  req.cloudEdge = edge;
}

export async function requireOperator(this: FastifyInstance, req: FastifyRequest): Promise<void> {
  const token = bearerToken(req.headers.authorization);
  if (!token || !secretsEqual(token, this.cloudRun.operatorToken)) {
    throw new CloudRequestError(
      401,
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
