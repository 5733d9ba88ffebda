/**
 * The user WebSocket, `GET /ws/user`: a `hello` first (within 10 s), then queue updates, turns
 * and steps (user-queue.ts, turn.ts). Frames are binary; anything else is answered BAD_FRAME.
 *
 * Before `hello` the peer is unknown: its socket may carry HELLO_MAX_BYTES in all, counted on the
 * TCP connection as bytes arrive, so a large frame is cut off long before ws has buffered it
 * (ws only hands over whole messages, too late to refuse one). After `hello` the per-message
 * limit is the one the run needs (Edge.frameLimit). New sockets are rate-limited per IP.
 */
import { encodeErrorMessage } from '@splitllm/wire';
import type { FastifyPluginAsync } from 'fastify';
import { HELLO_MAX_BYTES, type UserConn, type UserSocket } from '../user-queue';

const HELLO_WITHIN_MS = 10_000;

export interface UserSocketRoutesOptions {
  /** new sockets (each one `hello`) one IP may open per minute */
  connectsPerMinute: number;
}

export const userSocketRoutes: FastifyPluginAsync<UserSocketRoutesOptions> = async (app, o) => {
  const schema = { headers: { type: 'object', properties: { upgrade: { type: 'string', description: 'websocket' } } } };
  const config = { rateLimit: { max: o.connectsPerMinute, timeWindow: 60_000 } };
  app.get('/ws/user', { websocket: true, schema, config }, (socket, req) => {
    if (!app.edgeReady) {
      socket.send(encodeErrorMessage('NOT_READY', 'the edge is still starting'));
      socket.close(1013, 'not ready');
      return;
    }
    const edge = app.edge;
    let user: UserConn | undefined;
    const tcp = req.raw.socket;
    // ws's own 'data' listener came first: this one sees each chunk after ws has taken it in
    let before = 0;
    const countBeforeHello = (chunk: Buffer) => {
      if (user) return;
      before += chunk.byteLength;
      if (before > HELLO_MAX_BYTES) {
        tcp.off('data', countBeforeHello);
        edge.activity.noteError('FRAME_TOO_LARGE', `more than ${HELLO_MAX_BYTES} bytes before "hello"`);
        // no close handshake: that would wait for the rest of the frame
        socket.terminate();
      }
    };
    tcp.on('data', countBeforeHello);
    const helloTimer = setTimeout(() => {
      if (!user) socket.close(4001, 'no hello');
    }, HELLO_WITHIN_MS);
    const channel: UserSocket = { send: (b) => socket.send(b), close: (code, reason) => socket.close(code, reason) };
    const admit = (hello: Uint8Array) => {
      user = edge.queue.authenticate(channel, hello);
      if (user) {
        clearTimeout(helloTimer);
        tcp.off('data', countBeforeHello);
      }
    };
    // a user the operator dropped: the cloud says whether its operator admitted it again
    let asking = false;
    socket.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) {
        socket.send(encodeErrorMessage('BAD_FRAME', 'frames are binary'));
        return;
      }
      const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      if (!user) {
        // a client sends nothing more before its welcome; anything that does is ignored meanwhile
        if (asking) return;
        const dropped = edge.droppedHello(bytes);
        if (dropped === undefined) {
          admit(bytes);
          return;
        }
        asking = true;
        void edge.stillRemoved(dropped).then((out) => {
          asking = false;
          if (socket.readyState !== socket.OPEN) return;
          if (out) edge.refuseRemoved(channel, dropped);
          else admit(bytes);
        });
        return;
      }
      edge.queue.onMessage(user, bytes, edge.frameLimit);
    });
    socket.on('close', () => {
      clearTimeout(helloTimer);
      tcp.off('data', countBeforeHello);
      if (user) edge.queue.remove(user, 'connection closed');
    });
  });
};
