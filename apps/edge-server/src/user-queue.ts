/**
 * The users connected to this edge and their queue: who they are (the `hello` and its token),
 * the order they train in, the queue positions they are told, and the one wait each may have
 * for its next message during its turn.
 *
 * A waiting user costs a socket and a queue entry. A malformed or out-of-turn frame is answered
 * with an error frame and changes nothing.
 */
import {
  decodeMessage,
  encodeErrorMessage,
  encodeMessage,
  type Incoming,
  MessageWaiter,
  type MessageOn,
  type MessageTypeOn,
  type Outgoing,
  ProtocolError,
  type WaitOptions,
} from '@splitllm/wire';
import { checkUserToken } from '@splitllm/wire/node';
import { codeOf } from '@splitllm/model';
import { EdgeError } from './errors';
import type { Activity, EdgeMetrics, Logger } from './telemetry';

/** The socket of one user, as the queue needs it (a WebSocket, or a fake in tests). */
export interface UserSocket {
  send(bytes: Uint8Array): void;
  close(code?: number, reason?: string): void;
}

type UserMessage = MessageOn<'userToEdge'>;

/** How a turn waits for the user's next message (see UserConn.expect). */
export interface ExpectOptions<M> extends Omit<WaitOptions<M>, 'accept'> {
  /**
   * Checks a message of the awaited type against the turn (round, step, shapes). A throw is
   * answered to the user with an error frame and the wait goes on: the user may send it again.
   */
  check?: (m: M) => void;
}

/** One connected user. */
export class UserConn {
  readonly connectedAt = new Date().toISOString();
  state: 'waiting' | 'training' = 'waiting';
  bytesIn = 0;
  bytesOut = 0;
  closed = false;
  /** turns in a row that ended on the user's silence (its turn deadline or a frame's timeout) */
  misses = 0;
  /** the user gets no turn in rounds up to and including this one (after repeated misses) */
  sitsOutThrough = 0;
  /** the last `queue` (or `welcome`) position and waiting count this user was told */
  told?: { position: number; waiting: number };
  private readonly waiter = new MessageWaiter<UserMessage>();
  private check?: (m: UserMessage) => void;

  constructor(
    readonly userId: string,
    private readonly socket: UserSocket,
    /** counts every frame's bytes (the queue's totals and the metrics) */
    private readonly count: (direction: 'in' | 'out', n: number) => void = () => undefined,
  ) {}

  /** The message type the user's turn waits for now, if any. */
  get waitingFor(): string | undefined {
    return this.waiter.waitingFor;
  }

  send<T extends MessageTypeOn<'edgeToUser'>>(type: T, m: Outgoing<'edgeToUser', T>): void {
    this.sendBytes(encodeMessage('edgeToUser', type, m));
  }

  sendError(code: string, message: string): void {
    this.sendBytes(encodeErrorMessage(code, message));
  }

  private sendBytes(bytes: Uint8Array): void {
    if (this.closed) return;
    this.bytesOut += bytes.byteLength;
    this.count('out', bytes.byteLength);
    this.socket.send(bytes);
  }

  /** Bytes that arrived on the socket (counted before they are decoded). */
  received(n: number): void {
    this.bytesIn += n;
    this.count('in', n);
  }

  /**
   * Sends with `send`, then waits for the user's next message of `type`. The wait is installed
   * before the send (MessageWaiter.request), so a send that throws leaves nothing pending.
   * A user already gone is refused at once with USER_GONE.
   */
  expect<T extends 'forward' | 'activations' | 'head-grad' | 'adapter'>(
    send: () => void,
    type: T,
    opts: ExpectOptions<Incoming<'userToEdge', T>>,
  ): Promise<Incoming<'userToEdge', T>> {
    if (this.closed) return Promise.reject(new EdgeError('USER_GONE', 'the user is gone'));
    const { check, ...wait } = opts;
    this.check = check as ((m: UserMessage) => void) | undefined;
    return this.waiter.request(send, type, wait) as Promise<Incoming<'userToEdge', T>>;
  }

  /**
   * A message from the user for its turn: the awaited type passes its check and settles the
   * wait. Throws ProtocolError (answered by the caller) when it is not awaited or fails its check.
   */
  offer(m: UserMessage, position: number): void {
    const want = this.waiter.waitingFor;
    if (!want) {
      throw new ProtocolError(
        'NOT_YOUR_TURN',
        `a "${m.type}" frame is not expected now (position ${position} in the queue)`,
      );
    }
    if (want !== m.type) throw new ProtocolError('UNEXPECTED_TYPE', `expected a "${want}" frame, got "${m.type}"`);
    this.check?.(m);
    this.waiter.deliver(m);
  }

  /** Ends the turn's wait, if any, with `err` (the user left, the cloud went away). */
  fail(err: Error): void {
    this.waiter.fail(err);
  }

  /** The connection is over: nothing more is sent, and the wait in progress fails with USER_GONE. */
  gone(reason: string, closeSocket: boolean, closeCode: number): void {
    if (this.closed) return;
    this.closed = true;
    if (closeSocket) this.socket.close(closeCode, reason.slice(0, 100));
    this.waiter.fail(new EdgeError('USER_GONE', reason));
  }
}

export interface UserQueueOptions {
  edgeId: string;
  edgeSecret: string;
  /** the global version the edge is at (told in `welcome`) */
  version: () => number;
  metrics: EdgeMetrics;
  activity: Activity;
  log: Logger;
  /** the queue changed (a user came or went): the cloud hears the new waiting count */
  onChange: () => void;
}

/** A `hello` frame is small; anything larger is refused before it is parsed (and not buffered: user-socket.ts). */
export const HELLO_MAX_BYTES = 64 * 1024;
/**
 * Queue updates are coalesced: one flush at most per this interval, each user told only when its
 * position or the waiting count changed since it was last told. A burst of N connects costs one
 * frame per user per flush instead of one per user per connect (N^2/2 for the burst).
 */
export const QUEUE_UPDATE_MS = 250;
const MAX_USER_ID = 64;
const MAX_TOKEN = 128;

export class UserQueue {
  readonly users = new Map<string, UserConn>();
  /** user ids in queue order: the head trains next */
  readonly order: string[] = [];
  /** user traffic, all users together */
  bytesIn = 0;
  bytesOut = 0;
  /** `queue` frames sent, all users together (the metric and the tests count them) */
  queueFrames = 0;
  private flushTimer?: ReturnType<typeof setTimeout>;

  constructor(private readonly o: UserQueueOptions) {}

  waitingCount(): number {
    let n = 0;
    for (const u of this.users.values()) if (u.state === 'waiting') n++;
    return n;
  }

  /** 1-based position of a user in the queue, 0 when not in it. */
  position(userId: string): number {
    return this.order.indexOf(userId) + 1;
  }

  private counter(): (direction: 'in' | 'out', n: number) => void {
    return (direction, n) => {
      if (direction === 'in') this.bytesIn += n;
      else this.bytesOut += n;
      this.o.metrics.bytes('user', direction, n);
    };
  }

  /**
   * A new user socket's first frame, which must be `hello` with a token the cloud derived for
   * this (user, edge) pair. Returns the user, or undefined after answering with an error and
   * closing the socket (4001).
   */
  authenticate(socket: UserSocket, bytes: Uint8Array): UserConn | undefined {
    try {
      const m = decodeMessage('userToEdge', bytes, { maxBytes: HELLO_MAX_BYTES });
      if (m.type !== 'hello')
        throw new ProtocolError('UNAUTHORIZED', `the first frame must be "hello", got "${m.type}"`);
      const { userId, token } = m;
      if (userId.length > MAX_USER_ID)
        throw new ProtocolError('BAD_FIELD', `userId is longer than ${MAX_USER_ID} chars`);
      if (token.length > MAX_TOKEN) throw new ProtocolError('BAD_FIELD', `token is longer than ${MAX_TOKEN} chars`);
      if (!checkUserToken(this.o.edgeSecret, userId, this.o.edgeId, token)) {
        throw new ProtocolError('UNAUTHORIZED', `user "${userId}" has no valid token for edge "${this.o.edgeId}"`);
      }
      const old = this.users.get(userId);
      if (old) this.remove(old, 'replaced by a new connection', true);
      const u = new UserConn(userId, socket, this.counter());
      u.received(bytes.byteLength);
      this.users.set(userId, u);
      this.order.push(userId);
      const position = this.order.length;
      this.o.log.info({ userId, position }, 'user connected');
      u.send('welcome', { userId, edgeId: this.o.edgeId, version: this.o.version(), position });
      u.told = { position, waiting: this.waitingCount() };
      this.positionsChanged();
      this.o.onChange();
      return u;
    } catch (e) {
      const code = codeOf(e, 'BAD_FRAME');
      const message = (e as Error).message;
      this.o.activity.noteError(code, message);
      socket.send(encodeErrorMessage(code, message));
      socket.close(4001, code);
      return undefined;
    }
  }

  /** A frame from an authenticated user. Never throws: a refusal is answered with an error frame. */
  onMessage(u: UserConn, bytes: Uint8Array, maxBytes: number): void {
    u.received(bytes.byteLength);
    try {
      const m = decodeMessage('userToEdge', bytes, { maxBytes });
      if (m.type === 'bye') {
        this.remove(u, `user left: ${m.reason}`, true);
        return;
      }
      u.offer(m, this.position(u.userId));
    } catch (e) {
      const code = codeOf(e, 'BAD_FRAME');
      this.o.activity.noteError(code, (e as Error).message, u.userId);
      u.sendError(code, (e as Error).message);
    }
  }

  /** The user's connection closed (or an operator dropped it): its state goes at once. */
  remove(u: UserConn, reason: string, closeSocket = false, closeCode = 1000): void {
    if (u.closed) return;
    u.gone(reason, closeSocket, closeCode);
    // a user replaced by a new connection under the same id must not take the new one with it
    if (this.users.get(u.userId) === u) {
      this.users.delete(u.userId);
      const i = this.order.indexOf(u.userId);
      if (i >= 0) this.order.splice(i, 1);
    }
    // every departure, waiting or training, reaches the dashboard's "recently left" (not its problems)
    this.o.activity.noteLeave(u.userId, reason);
    this.positionsChanged();
    this.o.onChange();
  }

  /**
   * An operator drops a user: it hears why (USER_REMOVED, with `message`), its connection closes
   * and its turn (if any) is rolled back.
   */
  drop(userId: string, message = 'the operator of this run removed you from it'): boolean {
    const u = this.users.get(userId);
    if (!u) return false;
    // the code first: a close reason is cut at 123 bytes and a page shows the code's own text
    u.sendError('USER_REMOVED', message);
    // 4003: a client must not come back by itself (it would after an edge shutdown's 1000)
    this.remove(u, 'dropped by the operator', true, 4003);
    return true;
  }

  /** Every user goes (the edge shuts down). */
  closeAll(reason: string): void {
    for (const u of [...this.users.values()]) this.remove(u, reason, true);
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
  }

  /** The first waiting user in queue order not in `skip` and not sitting out `round`. */
  nextWaiting(skip: ReadonlySet<string>, round?: number): UserConn | undefined {
    for (const id of this.order) {
      const u = this.users.get(id);
      const out = round !== undefined && u !== undefined && u.sitsOutThrough >= round;
      if (u && u.state === 'waiting' && !skip.has(id) && !out) return u;
    }
    return undefined;
  }

  /** To the back of the queue after a turn, so the next round trains the next user. */
  toBack(userId: string): void {
    const i = this.order.indexOf(userId);
    if (i >= 0) this.order.push(...this.order.splice(i, 1));
  }

  /** The queue changed: its waiting users hear of it with the next flush (QUEUE_UPDATE_MS). */
  positionsChanged(): void {
    if (this.flushTimer) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined;
      this.sendPositions();
    }, QUEUE_UPDATE_MS);
    // a pending update must not keep a closing process alive
    this.flushTimer.unref?.();
  }

  /** Tells each waiting user its position and how many wait, when either changed since it was last told. */
  sendPositions(): void {
    const waiting = this.waitingCount();
    this.order.forEach((id, i) => {
      const u = this.users.get(id);
      if (u?.state !== 'waiting') return;
      const position = i + 1;
      if (u.told?.position === position && u.told.waiting === waiting) return;
      u.told = { position, waiting };
      this.queueFrames++;
      u.send('queue', { position, waiting });
    });
  }

  /** The same message to every connected user. */
  broadcast<T extends MessageTypeOn<'edgeToUser'>>(type: T, m: Outgoing<'edgeToUser', T>): void {
    for (const u of this.users.values()) u.send(type, m);
  }
}
