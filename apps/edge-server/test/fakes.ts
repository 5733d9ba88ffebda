/** Fakes for the edge's seams: a user socket that plays a scripted user, a cloud side, blocks and a trainer. */
import type { LoraAdapter } from '@splitllm/model';
import {
  decodeMessage,
  encodeMessage,
  type Incoming,
  type MessageOn,
  type MessageTypeOn,
  MessageWaiter,
  type Outgoing,
} from '@splitllm/wire';
import type { TurnBlocks, TurnCloud, TurnTrainer } from '../src/turn';
import type { Logger } from '../src/telemetry';
import { UserConn, type UserSocket } from '../src/user-queue';

export const silentLog: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined };

/** A socket that records what the edge sends to a user, decoded. */
export class FakeSocket implements UserSocket {
  readonly frames: Array<MessageOn<'edgeToUser'>> = [];
  closed?: { code?: number; reason?: string };
  onFrame?: (m: MessageOn<'edgeToUser'>) => void;

  send(bytes: Uint8Array): void {
    const m = decodeMessage('edgeToUser', bytes);
    this.frames.push(m);
    this.onFrame?.(m);
  }

  close(code?: number, reason?: string): void {
    this.closed = { code, reason };
  }

  types(): string[] {
    return this.frames.map((f) => f.type);
  }

  last<T extends MessageTypeOn<'edgeToUser'>>(type: T): Incoming<'edgeToUser', T> | undefined {
    return this.frames.filter((f) => f.type === type).at(-1) as Incoming<'edgeToUser', T> | undefined;
  }
}

/** A message as the edge's receiver would read it off the wire (encoded, then decoded). */
export function wire<C extends 'userToEdge' | 'cloudToEdge', T extends MessageTypeOn<C>>(
  channel: C,
  type: T,
  m: Outgoing<C, T>,
): MessageOn<C> {
  return decodeMessage(channel, encodeMessage(channel, type, m));
}

/** Hands a message from the user to its connection later, as a socket would (never inside the edge's send). */
export function later(fn: () => void): void {
  void Promise.resolve().then(fn);
}

/** A user connection over a FakeSocket. */
export function fakeUser(userId = 'u1'): { conn: UserConn; socket: FakeSocket } {
  const socket = new FakeSocket();
  return { conn: new UserConn(userId, socket), socket };
}

/** The cloud's side of a turn: records what the edge sends (encoded as on the wire) and answers as told. */
export class FakeCloud implements TurnCloud {
  /** one user's turn at a time in these tests: one waiter serves every user */
  readonly waiter = new MessageWaiter<MessageOn<'cloudToEdge'>>();
  /** the users whose turns ended (endTurn) */
  readonly ended: string[] = [];
  waiterFor(_userId: string): MessageWaiter<MessageOn<'cloudToEdge'>> {
    return this.waiter;
  }
  endTurn(userId: string): void {
    this.ended.push(userId);
  }
  readonly sent: Array<MessageOn<'edgeToCloud'>> = [];
  /** how the cloud answers a forward; default: a backward with dh = h */
  answer: (m: Incoming<'edgeToCloud', 'forward'>) => void = (m) =>
    later(() =>
      this.waiter.deliver(
        wire('cloudToEdge', 'backward', {
          round: m.round,
          step: m.step,
          userId: m.userId,
          loss: 2 + m.step,
          count: 3,
          dh: { data: m.h.data, shape: m.h.shape },
        }),
      ),
    );

  /** labels on the device, how the cloud answers activations; default: hidden with hL = h */
  answerActivations: (m: Incoming<'edgeToCloud', 'activations'>) => void = (m) =>
    later(() =>
      this.waiter.deliver(
        wire('cloudToEdge', 'hidden', {
          round: m.round,
          step: m.step,
          userId: m.userId,
          h: { data: m.h.data, shape: m.h.shape },
        }),
      ),
    );

  /** labels on the device, how the cloud answers a head-grad: a backward with dh = dhL and the user's loss */
  answerHeadGrad: (m: Incoming<'edgeToCloud', 'head-grad'>) => void = (m) =>
    later(() =>
      this.waiter.deliver(
        wire('cloudToEdge', 'backward', {
          round: m.round,
          step: m.step,
          userId: m.userId,
          loss: m.loss,
          count: m.count,
          dh: { data: m.dh.data, shape: m.dh.shape },
        }),
      ),
    );

  send<T extends MessageTypeOn<'edgeToCloud'>>(type: T, m: Outgoing<'edgeToCloud', T>): void {
    // encoded as the real link does, so what cannot be sent throws here too
    const decoded = decodeMessage('edgeToCloud', encodeMessage('edgeToCloud', type, m));
    this.sent.push(decoded);
    if (decoded.type === 'forward') this.answer(decoded);
    if (decoded.type === 'activations') this.answerActivations(decoded);
    if (decoded.type === 'head-grad') this.answerHeadGrad(decoded);
  }

  types(): string[] {
    return this.sent.map((m) => m.type);
  }
}

/** Blocks [k, m) as identity maps: y = x, dx = dy. `poison` makes the forward's output non-finite. */
export function fakeBlocks(o: { poison?: boolean } = {}): TurnBlocks & { forwards: number; backwards: number } {
  const b = {
    forwards: 0,
    backwards: 0,
    async forward(_a: LoraAdapter, x: Float32Array) {
      b.forwards++;
      const y = x.slice();
      if (o.poison) y[0] = Number.NaN;
      return { y, saved: {} };
    },
    async backward(_a: LoraAdapter, _x: Float32Array, _saved: unknown, dy: Float32Array) {
      b.backwards++;
      return { dx: dy.slice(), loraGrads: new Map() };
    },
  };
  return b as unknown as TurnBlocks & { forwards: number; backwards: number };
}

/** A trainer whose state is the number of steps taken; snapshots and restores that number. */
export function fakeTrainer(): TurnTrainer & { taken: number; restores: number } {
  const t = {
    taken: 0,
    restores: 0,
    adapter: { layers: new Map() } as unknown as LoraAdapter,
    snapshot: () => ({ taken: t.taken }),
    restore: (s: { taken: number }) => {
      t.taken = s.taken;
      t.restores++;
    },
    step: () => void t.taken++,
  };
  return t as unknown as TurnTrainer & { taken: number; restores: number };
}
