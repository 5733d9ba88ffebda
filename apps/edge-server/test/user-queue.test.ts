/**
 * The user queue: the hello and its token, queue order and positions, what a refused frame gets,
 * and removal (a user leaving, replaced, dropped by the operator).
 */
import { encodeMessage } from '@splitllm/wire';
import { userToken } from '@splitllm/wire/node';
import { describe, expect, it, vi } from 'vitest';
import { Activity, EdgeMetrics } from '../src/telemetry';
import { UserQueue } from '../src/user-queue';
import { FakeSocket, silentLog } from './fakes';

const EDGE_ID = 'e1';
const SECRET = 'edge-secret-for-tests';

function setup() {
  const metrics = new EdgeMetrics();
  const activity = new Activity(metrics, silentLog);
  let changes = 0;
  const queue = new UserQueue({
    edgeId: EDGE_ID,
    edgeSecret: SECRET,
    version: () => 3,
    metrics,
    activity,
    log: silentLog,
    onChange: () => changes++,
  });
  const join = (userId: string, token = userToken(SECRET, userId, EDGE_ID)) => {
    const socket = new FakeSocket();
    const conn = queue.authenticate(socket, encodeMessage('userToEdge', 'hello', { userId, token }));
    return { socket, conn };
  };
  return { queue, activity, metrics, join, changes: () => changes };
}

describe('the user queue', () => {
  it('welcomes users in arrival order and tells each waiting user its position', () => {
    const q = setup();
    const a = q.join('alice');
    const b = q.join('bob');
    const c = q.join('carol');
    expect(q.queue.order).toEqual(['alice', 'bob', 'carol']);
    expect(a.socket.frames[0]).toMatchObject({
      type: 'welcome',
      userId: 'alice',
      edgeId: EDGE_ID,
      version: 3,
      position: 1,
    });
    expect(c.socket.frames[0]).toMatchObject({ type: 'welcome', userId: 'carol', position: 3 });
    // arrivals are told with the next flush, each user once, only what changed for it
    q.queue.sendPositions();
    expect(a.socket.last('queue')).toMatchObject({ position: 1, waiting: 3 });
    expect(b.socket.last('queue')).toMatchObject({ position: 2, waiting: 3 });
    // carol's welcome already told her position 3 of 3
    expect(c.socket.last('queue')).toBeUndefined();
    expect(q.queue.waitingCount()).toBe(3);
    expect(q.changes()).toBe(3);
  });

  it('coalesces queue updates: a burst of N connects costs about N queue frames, not N^2/2', async () => {
    vi.useFakeTimers();
    try {
      const q = setup();
      const joined = Array.from({ length: 100 }, (_, i) => q.join(`u${i}`));
      expect(q.queue.queueFrames).toBe(0);
      await vi.advanceTimersByTimeAsync(300);
      // one flush: everyone but the last learns the final count once
      expect(q.queue.queueFrames).toBe(99);
      expect(joined[0].socket.last('queue')).toMatchObject({ position: 1, waiting: 100 });
      // nothing changed: the next flush sends nothing
      q.queue.positionsChanged();
      await vi.advanceTimersByTimeAsync(300);
      expect(q.queue.queueFrames).toBe(99);
    } finally {
      vi.useRealTimers();
    }
  });

  it('skips a user sitting out the round', () => {
    const q = setup();
    const a = q.join('alice').conn!;
    q.join('bob');
    a.sitsOutThrough = 4;
    expect(q.queue.nextWaiting(new Set(), 4)?.userId).toBe('bob');
    expect(q.queue.nextWaiting(new Set(), 5)?.userId).toBe('alice');
  });

  it('picks the next waiting user in order, and sends a trained one to the back', () => {
    const q = setup();
    const a = q.join('alice').conn!;
    q.join('bob');
    q.join('carol');
    expect(q.queue.nextWaiting(new Set())?.userId).toBe('alice');
    expect(q.queue.nextWaiting(new Set(['alice']))?.userId).toBe('bob');
    a.state = 'training';
    expect(q.queue.nextWaiting(new Set())?.userId).toBe('bob');
    q.queue.toBack('alice');
    a.state = 'waiting';
    expect(q.queue.order).toEqual(['bob', 'carol', 'alice']);
    expect(q.queue.position('alice')).toBe(3);
  });

  it('removes a user that leaves and moves the others up', () => {
    const q = setup();
    const a = q.join('alice');
    const b = q.join('bob');
    const c = q.join('carol');
    q.queue.onMessage(a.conn!, encodeMessage('userToEdge', 'bye', { reason: 'paused' }), 1 << 20);
    expect(a.socket.closed?.code).toBe(1000);
    expect(a.conn!.closed).toBe(true);
    expect(q.queue.order).toEqual(['bob', 'carol']);
    expect(q.queue.users.has('alice')).toBe(false);
    q.queue.sendPositions();
    expect(b.socket.last('queue')).toMatchObject({ position: 1, waiting: 2 });
    expect(c.socket.last('queue')).toMatchObject({ position: 2, waiting: 2 });
    // a closed connection hears nothing more
    const before = a.socket.frames.length;
    q.queue.sendPositions();
    expect(a.socket.frames.length).toBe(before);
  });

  it('lets the operator drop a user with 4003, and a new connection replace an old one', () => {
    const q = setup();
    const a = q.join('alice');
    q.join('bob');
    expect(q.queue.drop('bob')).toBe(true);
    expect(q.queue.drop('bob')).toBe(false);
    expect(q.queue.order).toEqual(['alice']);
    const again = q.join('alice');
    expect(a.socket.closed?.code).toBe(1000);
    expect(a.conn!.closed).toBe(true);
    expect(q.queue.users.get('alice')).toBe(again.conn);
    expect(q.queue.order).toEqual(['alice']);
  });

  it('refuses a hello with a wrong token, and a first frame that is not a hello, closing with 4001', () => {
    const q = setup();
    const forged = q.join('mallory', 'a'.repeat(64));
    expect(forged.conn).toBeUndefined();
    expect(forged.socket.last('error')?.code).toBe('UNAUTHORIZED');
    expect(forged.socket.closed?.code).toBe(4001);
    const garbage = new FakeSocket();
    expect(q.queue.authenticate(garbage, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]))).toBeUndefined();
    expect(garbage.last('error')?.code).toBe('BAD_FRAME');
    const bye = new FakeSocket();
    expect(q.queue.authenticate(bye, encodeMessage('userToEdge', 'bye', { reason: 'x' }))).toBeUndefined();
    expect(bye.last('error')?.code).toBe('UNAUTHORIZED');
    expect(q.queue.users.size).toBe(0);
    expect(q.activity.recentErrors.map((e) => e.code)).toEqual(['UNAUTHORIZED', 'BAD_FRAME', 'UNAUTHORIZED']);
  });

  it('answers frames out of turn, of unknown types or too large with codes, and keeps the user', () => {
    const q = setup();
    const { socket, conn } = q.join('alice');
    const header = new TextEncoder().encode(JSON.stringify({ type: 'launch-missiles', tensors: [] }));
    const unknown = new Uint8Array(4 + header.length);
    new DataView(unknown.buffer).setUint32(0, header.length, true);
    unknown.set(header, 4);
    const step = encodeMessage('userToEdge', 'forward', {
      round: 1,
      step: 1,
      h: { data: new Float32Array(6), shape: [1, 2, 3] },
      targets: { data: new Int32Array(2), shape: [1, 2] },
    });
    // a message of another channel: known, but not something a user sends
    const welcome = encodeMessage('edgeToUser', 'welcome', { userId: 'x', edgeId: 'y', version: 0, position: 1 });
    for (const bytes of [unknown, step, welcome, step]) q.queue.onMessage(conn!, bytes, 1 << 20);
    q.queue.onMessage(conn!, step, 16);
    expect(socket.frames.filter((f) => f.type === 'error').map((f) => f.code)).toEqual([
      'UNKNOWN_TYPE',
      'NOT_YOUR_TURN',
      'UNEXPECTED_TYPE',
      'NOT_YOUR_TURN',
      'FRAME_TOO_LARGE',
    ]);
    expect(conn!.closed).toBe(false);
    expect(q.queue.order).toEqual(['alice']);
    expect(conn!.bytesIn).toBeGreaterThan(step.byteLength * 3);
  });
});
