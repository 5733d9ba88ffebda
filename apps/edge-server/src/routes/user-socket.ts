/**
 * The user WebSocket, `GET /ws/user`: a `hello` first (within 10 s), then queue updates, turns
 * and steps (user-queue.ts, turn.ts). Frames are binary; anything else is answered BAD_FRAME.
 */
import { encodeErrorMessage } from '@splitllm/wire';
import type { FastifyPluginAsync } from 'fastify';
import type { UserConn, UserSocket } from '../user-queue';

const HELLO_WITHIN_MS = 10_000;

export const userSocketRoutes: FastifyPluginAsync = async (app) => {
  const schema = { headers: { type: 'object', properties: { upgrade: { type: 'string', description: 'websocket' } } } };
  app.get('/ws/user', { websocket: true, schema }, (socket) => {
    if (!app.edgeReady) {
      socket.send(encodeErrorMessage('NOT_READY', 'the edge is still starting'));
      socket.close(1013, 'not ready');
      return;
    }
    const edge = app.edge;
    let user: UserConn | undefined;
    const helloTimer = setTimeout(() => {
      if (!user) socket.close(4001, 'no hello');
    }, HELLO_WITHIN_MS);
    const channel: UserSocket = { send: (b) => socket.send(b), close: (code, reason) => socket.close(code, reason) };
    socket.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) {
        socket.send(encodeErrorMessage('BAD_FRAME', 'frames are binary'));
        return;
      }
      const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      if (!user) {
        user = edge.queue.authenticate(channel, bytes);
        if (user) clearTimeout(helloTimer);
        return;
      }
      edge.queue.onMessage(user, bytes, edge.frameLimit);
    });
    socket.on('close', () => {
      clearTimeout(helloTimer);
      if (user) edge.queue.remove(user, 'connection closed');
    });
  });
};
