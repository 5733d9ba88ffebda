/**
 * Edges: registration with the shared secret, then one WebSocket per edge (`/ws/edge`) for the
 * rounds. Every frame on it is a typed message of the edgeToCloud channel; what it means for the
 * round is rounds.ts's business, this file decodes, keeps each edge's frames in order and answers
 * a refused one with an error frame.
 */
import {
  type DecodeLimits,
  decodeMessage,
  encodeErrorMessage,
  encodeMessage,
  type MessageOn,
  ProtocolError,
} from '@splitllm/wire';
import { randomToken, secretsEqual } from '@splitllm/wire/node';
import type { FastifyInstance, FastifyPluginAsync } from 'fastify';
import { edgeOf, requireEdge } from '../auth';
import type { EdgeInfo } from '../edge-registry';
import { CloudRequestError } from '../errors';
import { ref } from '../schemas';

type EdgeMessage = MessageOn<'edgeToCloud'>;

/** The messages that belong to a round: without one running they are refused as NO_ROUND. */
const ROUND_MESSAGES: ReadonlySet<string> = new Set([
  'user-begin',
  'user-dropped',
  'forward',
  'activations',
  'head-grad',
]);

/**
 * The `type` named by a frame's header (the frame layout: u32 header length, JSON header), read
 * only to choose the answer to a frame that failed to decode; never trusted for anything else.
 */
function headerType(bytes: Uint8Array): string | undefined {
  try {
    const n = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0, true);
    const header: unknown = JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + n)));
    const type = (header as { type?: unknown } | null)?.type;
    return typeof type === 'string' ? type : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Decodes an edge's frame. A round message while no round runs is NO_ROUND even when its fields
 * are off too: whether a round runs is what the edge needs to hear (and what it heard before
 * the messages had a registry per channel, which made a missing field the first error found).
 */
function decodeEdgeFrame(bytes: Uint8Array, limits: DecodeLimits, roundRunning: boolean): EdgeMessage {
  try {
    return decodeMessage('edgeToCloud', bytes, limits);
  } catch (err) {
    const fieldLevel = err instanceof ProtocolError && ['BAD_FIELD', 'BAD_TENSOR', 'BAD_SHAPE'].includes(err.code);
    if (fieldLevel && !roundRunning && ROUND_MESSAGES.has(headerType(bytes) ?? '')) {
      throw new ProtocolError('NO_ROUND', 'no round is running', { cause: err });
    }
    throw err;
  }
}

/** One message from an edge, in its turn on the edge's chain. */
async function handle(app: FastifyInstance, e: EdgeInfo, m: EdgeMessage): Promise<void> {
  const rounds = app.cloudRounds;
  switch (m.type) {
    case 'edge-status':
      app.cloudEdges.setWaiting(e.edgeId, m.waiting);
      rounds.scheduleStart();
      return;
    case 'user-begin':
      return rounds.userBegin(e.edgeId, m);
    case 'user-dropped':
      return rounds.userDropped(e.edgeId, m);
    case 'forward':
      return rounds.forward(e.edgeId, m);
    case 'activations':
      return rounds.activations(e.edgeId, m);
    case 'head-grad':
      return rounds.headGrad(e.edgeId, m);
    case 'error':
      app.log.warn({ edgeId: e.edgeId, code: m.code, err: m.message }, 'edge reported an error');
      return;
  }
}

/** One binary message from an edge. Never throws: a refused frame is answered and logged. */
function receive(app: FastifyInstance, edgeId: string, bytes: Uint8Array): void {
  const edges = app.cloudEdges;
  const e = edges.edges.get(edgeId);
  if (!e) return;
  e.framesIn++;
  edges.received(bytes.byteLength);
  let m: EdgeMessage;
  try {
    m = decodeEdgeFrame(bytes, { maxBytes: app.cloudRun.frameLimit }, app.cloudRounds.current !== undefined);
  } catch (err) {
    edges.reject(edgeId, err, 'undecodable');
    return;
  }
  app.cloudMetrics.frames.inc({ type: m.type });
  const userId = 'userId' in m ? m.userId : undefined;
  app.cloudRounds
    .enqueue(edgeId, () => handle(app, e, m))
    .catch((err: unknown) => edges.reject(edgeId, err, m.type, userId));
}

export const edgeRoutes: FastifyPluginAsync = async (app) => {
  const edges = app.cloudEdges;

  app.post<{ Body: { edgeId: string; url: string; secret: string } }>(
    '/api/edges/register',
    {
      // an edge is not known yet: its registration is a few short strings, not the app's 1 MiB
      bodyLimit: 4096,
      schema: {
        body: {
          type: 'object',
          properties: {
            edgeId: { type: 'string', pattern: '^[A-Za-z0-9_.-]{1,64}$' },
            url: { type: 'string', maxLength: 512 },
            secret: { type: 'string', maxLength: 512 },
          },
          required: ['edgeId', 'url', 'secret'],
          additionalProperties: false,
        },
        response: {
          200: {
            type: 'object',
            properties: {
              edgeToken: { type: 'string' },
              manifest: ref('runManifest'),
              // users this edge's operator removed and nobody re-admitted: a restarted edge keeps them out
              removedUsers: { type: 'array', items: { type: 'string' } },
            },
            required: ['edgeToken', 'manifest', 'removedUsers'],
            additionalProperties: false,
          },
          400: ref('cloudError'),
          401: ref('cloudError'),
        },
      },
    },
    async (req) => {
      if (!secretsEqual(req.body.secret, app.cloudRun.edgeSecret)) {
        req.log.warn({ code: 'BAD_EDGE_SECRET', edgeId: req.body.edgeId }, 'edge registration refused');
        throw new CloudRequestError(401, 'BAD_EDGE_SECRET', 'wrong edge secret');
      }
      const info = edges.register(req.body.edgeId, req.body.url, randomToken(16));
      return {
        edgeToken: info.token,
        manifest: app.cloudRun.manifest(),
        removedUsers: app.cloudStore.removedBy(req.body.edgeId),
      };
    },
  );

  app.get(
    '/ws/edge',
    {
      websocket: true,
      // in the upgrade request: an unknown caller never gets a socket (nor the frame limit)
      onRequest: requireEdge,
      schema: { headers: { type: 'object', properties: { authorization: { type: 'string' } } } },
    },
    (socket, req) => {
      const edge = edgeOf(req);
      const welcome = encodeMessage('cloudToEdge', 'edge-welcome', {
        edgeId: edge.edgeId,
        version: app.cloudVersions.version,
      });
      edges.attach(
        edge.edgeId,
        { send: (b) => socket.send(b), close: (code, reason) => socket.close(code, reason) },
        welcome,
      );
      socket.on('message', (data: Buffer, isBinary: boolean) => {
        if (!isBinary) {
          socket.send(encodeErrorMessage('BAD_FRAME', 'frames are binary'));
          return;
        }
        receive(app, edge.edgeId, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      });
      socket.on('close', () => {
        // a newer registration of the same id has its own socket: this one's close is not its end
        if (edges.edges.get(edge.edgeId)?.token === edge.token) edges.detach(edge.edgeId, 'connection closed');
      });
    },
  );
};
