/**
 * The turn relay through its interface, with a scripted user (a UserConn over a fake socket), a
 * fake cloud, identity blocks and a counting trainer: a full turn, and each way a turn ends early
 * (the user times out or leaves, the cloud refuses, a step cannot be sent) rolls back and leaves
 * nothing pending. With labels on the device: the four hops of a step, a tab's bad head-grad
 * answered with its code, and a cloud's last hidden state of the wrong shape ending the turn.
 */
import { codeOf, type LoraAdapter } from '@splitllm/model';
import { HeldBytes } from '@splitllm/federation';
import type { Incoming, MessageOn } from '@splitllm/wire';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { CloudError } from '../src/errors';
import type { StepPoint } from '../src/telemetry';
import { relayTurn, type TurnSpec } from '../src/turn';
import type { UserConn } from '../src/user-queue';
import { FakeCloud, type FakeSocket, fakeBlocks, fakeTrainer, fakeUser, later, silentLog, wire } from './fakes';

const SPEC: TurnSpec = {
  round: 1,
  version: 0,
  steps: 2,
  batch: 1,
  seq: 2,
  codec: 'f32',
  labels: 'cloud',
  nEmbd: 3,
  vocabSize: 5,
  userTimeoutMs: 1000,
  cloudTimeoutMs: 1000,
};
const ADAPTER = { layers: new Map() } as unknown as LoraAdapter;

function forward(step: number, round = SPEC.round) {
  return wire('userToEdge', 'forward', {
    round,
    step,
    h: { data: new Float32Array(6).fill(0.25 * step), shape: [1, 2, 3] },
    targets: { data: Int32Array.of(1, 4), shape: [1, 2] },
  });
}

function adapterMessage() {
  return wire('userToEdge', 'adapter', {
    round: SPEC.round,
    tokens: 4,
    steps: SPEC.steps,
    tensors: new Map([['h.0.attn.c_attn.lora_A', { data: Float32Array.of(1, 2), shape: [1, 2] }]]),
  });
}

/** What the user queue does with a user's message: hand it to the turn, or answer the refusal. */
function fromUser(conn: UserConn, m: MessageOn<'userToEdge'>): void {
  try {
    conn.offer(m, 1);
  } catch (e) {
    conn.sendError(codeOf(e, 'BAD_FRAME'), (e as Error).message);
  }
}

/** An honest user: a forward for every turn and gradient, its adapter after the last step. */
function playHonestly(conn: UserConn, socket: FakeSocket, o: { leaveAfterStep?: number; silent?: boolean } = {}): void {
  socket.onFrame = (m) => {
    if (o.silent) return;
    if (m.type === 'turn') later(() => fromUser(conn, forward(1)));
    if (m.type === 'backward') {
      if (m.step === o.leaveAfterStep) later(() => conn.gone('user left', true, 1000));
      else if (m.step < SPEC.steps) later(() => fromUser(conn, forward(m.step + 1)));
      else later(() => fromUser(conn, adapterMessage()));
    }
  };
}

const DEVICE: TurnSpec = { ...SPEC, labels: 'device' };

function activations(step: number) {
  return wire('userToEdge', 'activations', {
    round: SPEC.round,
    step,
    h: { data: new Float32Array(6).fill(0.25 * step), shape: [1, 2, 3] },
  });
}

function headGrad(step: number, o: { loss?: number; count?: number; shape?: number[] } = {}) {
  const shape = o.shape ?? [1, 2, 3];
  return wire('userToEdge', 'head-grad', {
    round: SPEC.round,
    step,
    loss: o.loss ?? 1 + step,
    count: o.count ?? 2,
    dh: { data: new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(-step), shape },
  });
}

/** An honest tab with labels on the device: activations, then a head-grad for each hidden state. */
function playDevice(conn: UserConn, socket: FakeSocket): void {
  socket.onFrame = (m) => {
    if (m.type === 'turn') later(() => fromUser(conn, activations(1)));
    if (m.type === 'hidden') later(() => fromUser(conn, headGrad(m.step)));
    if (m.type === 'backward') {
      if (m.step < SPEC.steps) later(() => fromUser(conn, activations(m.step + 1)));
      else later(() => fromUser(conn, adapterMessage()));
    }
  };
}

/**
 * Each step's times: finite, not negative, and parts of the step's `ms`, which the turn measures
 * around all of them. The 1 ms slack is for rounding only (each part is its own difference of two
 * clock readings); it is no timing budget.
 */
function expectStepTimes(steps: StepPoint[]): void {
  for (const p of steps) {
    const parts = [p.forwardMs, p.backwardMs, p.cloudMs, p.userMs];
    for (const x of parts) {
      expect(Number.isFinite(x), `step ${p.step}: ${parts}`).toBe(true);
      expect(x).toBeGreaterThanOrEqual(0);
    }
    expect(parts.reduce((a, b) => a + b)).toBeLessThanOrEqual(p.ms + 1);
  }
}

function setup(o: { poison?: boolean; spec?: TurnSpec; ownCopy?: boolean } = {}) {
  const { conn, socket } = fakeUser('u1');
  const cloud = new FakeCloud();
  const blocks = fakeBlocks(o);
  const train = fakeTrainer();
  const held = new HeldBytes();
  const steps: StepPoint[] = [];
  const drops: Array<{ code: string; message: string }> = [];
  const run = () =>
    relayTurn(o.spec ?? SPEC, {
      user: conn,
      cloud,
      blocks,
      held,
      train,
      ownCopy: o.ownCopy,
      acceptAdapter: (m: Incoming<'userToEdge', 'adapter'>) => {
        expect(m.tensors.size).toBe(1);
        return ADAPTER;
      },
      log: silentLog,
      onStep: (p) => steps.push(p),
      onDropped: (code, message) => drops.push({ code, message }),
    });
  return { conn, socket, cloud, blocks, train, held, steps, drops, run };
}

describe('the turn relay', () => {
  it('relays every step user -> edge -> cloud and back, and ends the turn accepted', async () => {
    const t = setup();
    playHonestly(t.conn, t.socket);
    const result = await t.run();
    expect(result).toEqual({ userId: 'u1', adapter: ADAPTER, steps: 2, tokens: 6 });
    expect(t.socket.types()).toEqual(['turn', 'backward', 'backward', 'turn-end']);
    expect(t.socket.last('turn')).toMatchObject({ round: 1, version: 0, steps: 2, batch: 1, seq: 2, codec: 'f32' });
    expect(t.socket.last('turn-end')).toMatchObject({ round: 1, accepted: true });
    const backs = t.socket.frames.filter((f) => f.type === 'backward');
    expect(backs.map((b) => [b.step, b.loss, b.count])).toEqual([
      [1, 3, 3],
      [2, 4, 3],
    ]);
    // identity blocks and a cloud that answers dh = h: the user gets its own activations back
    expect(Array.from(backs[1].dh.data)).toEqual(Array(6).fill(0.5));
    expect(t.cloud.types()).toEqual(['user-begin', 'forward', 'forward']);
    expect(t.cloud.sent[1]).toMatchObject({ type: 'forward', round: 1, step: 1, userId: 'u1' });
    expect(t.steps.map((p) => [p.userId, p.step, p.loss, p.tokens])).toEqual([
      ['u1', 1, 3, 3],
      ['u1', 2, 4, 3],
    ]);
    expectStepTimes(t.steps);
    // labels in the cloud: no head-grad to wait for within a step
    expect(t.steps.map((p) => p.userMs)).toEqual([0, 0]);
    expect(t.train.taken).toBe(2);
    expect(t.train.restores).toBe(0);
    // the snapshot and each step's activations were held, and all given back when the turn ended
    expect(t.held.peak).toBeGreaterThan(0);
    expect(t.held.current).toBe(0);
    expect(t.drops).toEqual([]);
    expect(t.cloud.waiter.waitingFor).toBeUndefined();
    expect(t.conn.waitingFor).toBeUndefined();
  });

  it("answers a frame that fails the turn's checks and keeps waiting for a good one", async () => {
    const t = setup();
    playHonestly(t.conn, t.socket);
    t.socket.onFrame = ((honest) => (m: MessageOn<'edgeToUser'>) => {
      if (m.type !== 'turn') return honest?.(m);
      later(() => {
        fromUser(t.conn, forward(2)); // the wrong step
        fromUser(t.conn, forward(1, 7)); // the wrong round
        fromUser(t.conn, adapterMessage()); // not what the turn waits for
        fromUser(t.conn, forward(1));
      });
    })(t.socket.onFrame);
    const result = await t.run();
    expect(result?.steps).toBe(2);
    expect(t.socket.frames.filter((f) => f.type === 'error').map((f) => f.code)).toEqual([
      'WRONG_STEP',
      'WRONG_ROUND',
      'UNEXPECTED_TYPE',
    ]);
    expect(t.socket.last('turn-end')?.accepted).toBe(true);
  });

  describe('labels on the device', () => {
    it('relays activations, last hidden state, head-grad and backward; no label reaches the cloud', async () => {
      const t = setup({ spec: DEVICE });
      playDevice(t.conn, t.socket);
      const result = await t.run();
      expect(result).toEqual({ userId: 'u1', adapter: ADAPTER, steps: 2, tokens: 4 });
      expect(t.socket.types()).toEqual(['turn', 'hidden', 'backward', 'hidden', 'backward', 'turn-end']);
      expect(t.cloud.types()).toEqual(['user-begin', 'activations', 'head-grad', 'activations', 'head-grad']);
      // the loss and count are the tab's report; the backward carries them back
      expect(t.cloud.sent[2]).toMatchObject({ type: 'head-grad', step: 1, userId: 'u1', loss: 2, count: 2 });
      const backs = t.socket.frames.filter((f) => f.type === 'backward');
      expect(backs.map((b) => [b.step, b.loss, b.count])).toEqual([
        [1, 2, 2],
        [2, 3, 2],
      ]);
      // identity blocks, a cloud that returns hL = h2 and dh2 = dhL: the tab's own values come back
      expect(Array.from(t.socket.last('hidden')!.h.data)).toEqual(Array(6).fill(0.5));
      expect(Array.from(backs[1].dh.data)).toEqual(Array(6).fill(-2));
      expect(t.steps.map((p) => p.step)).toEqual([1, 2]);
      expectStepTimes(t.steps);
      expect(t.train.taken).toBe(2);
      expect(t.conn.waitingFor).toBeUndefined();
    });

    it('answers a head-grad with a bad loss, count or shape with its code, relays none, and goes on', async () => {
      const t = setup({ spec: DEVICE });
      playDevice(t.conn, t.socket);
      t.socket.onFrame = ((honest) => (m: MessageOn<'edgeToUser'>) => {
        if (m.type !== 'hidden' || m.step !== 1) return honest?.(m);
        later(() => {
          fromUser(t.conn, headGrad(1, { loss: -1 }));
          fromUser(t.conn, headGrad(1, { count: 3 })); // a 1 x 2 batch has 2 positions
          fromUser(t.conn, headGrad(1, { shape: [1, 3, 3] }));
          fromUser(t.conn, activations(2)); // not what the step waits for
          fromUser(t.conn, headGrad(1));
        });
      })(t.socket.onFrame);
      const result = await t.run();
      expect(result?.steps).toBe(2);
      expect(t.socket.frames.filter((f) => f.type === 'error').map((f) => f.code)).toEqual([
        'BAD_LOSS',
        'BAD_COUNT',
        'BAD_SHAPE',
        'UNEXPECTED_TYPE',
      ]);
      expect(t.cloud.types().filter((x) => x === 'head-grad')).toHaveLength(2);
    });

    it('ends the turn when the cloud sends a last hidden state of the wrong shape', async () => {
      const t = setup({ spec: DEVICE });
      playDevice(t.conn, t.socket);
      t.cloud.answerActivations = (m) =>
        later(() =>
          t.cloud.waiter.deliver(
            wire('cloudToEdge', 'hidden', {
              round: m.round,
              step: m.step,
              userId: m.userId,
              h: { data: new Float32Array(9), shape: [1, 3, 3] },
            }),
          ),
        );
      expect(await t.run()).toBeUndefined();
      expect(t.drops.map((d) => d.code)).toEqual(['BAD_SHAPE']);
      expect(t.socket.types()).toEqual(['turn', 'error', 'turn-end']);
      expect(t.socket.last('turn-end')).toMatchObject({ accepted: false, reason: 'BAD_SHAPE' });
      expect(t.cloud.types()).toEqual(['user-begin', 'activations', 'user-dropped']);
      expect(t.train.restores).toBe(1);
    });
  });

  describe('ending early', () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    beforeEach(() => {
      unhandled.length = 0;
      process.on('unhandledRejection', onUnhandled);
      vi.useFakeTimers();
    });
    afterEach(async () => {
      // long after every deadline: nothing may fire or reject any more
      await vi.advanceTimersByTimeAsync(10 * 60_000);
      expect(vi.getTimerCount()).toBe(0);
      vi.useRealTimers();
      await new Promise((r) => setTimeout(r, 10));
      process.off('unhandledRejection', onUnhandled);
      expect(unhandled).toEqual([]);
    });

    it('rolls back a user that does not send its next step in time', async () => {
      const t = setup();
      playHonestly(t.conn, t.socket, { silent: true });
      const turn = t.run();
      await vi.advanceTimersByTimeAsync(SPEC.userTimeoutMs);
      expect(await turn).toBeUndefined();
      expect(t.drops.map((d) => d.code)).toEqual(['USER_TIMEOUT']);
      expect(t.socket.types()).toEqual(['turn', 'error', 'turn-end']);
      expect(t.socket.last('turn-end')).toMatchObject({ accepted: false, reason: 'USER_TIMEOUT' });
      expect(t.cloud.types()).toEqual(['user-begin', 'user-dropped']);
      expect(t.train.restores).toBe(1);
    });

    it('rolls back a user whose frames each come in time but whose turn runs past its deadline', async () => {
      const t = setup();
      // every frame 600 ms after its prompt: under the 1000 ms per-frame limit, over 1000 ms in all by the second
      t.socket.onFrame = (m) => {
        if (m.type === 'turn') setTimeout(() => fromUser(t.conn, forward(1)), 600);
        if (m.type === 'backward') setTimeout(() => fromUser(t.conn, forward(m.step + 1)), 600);
      };
      const turn = relayTurn(
        { ...SPEC, turnBudgetMs: 1000 },
        {
          user: t.conn,
          cloud: t.cloud,
          blocks: t.blocks,
          held: t.held,
          train: t.train,
          acceptAdapter: () => ADAPTER,
          log: silentLog,
          onDropped: (code, message) => t.drops.push({ code, message }),
        },
      );
      await vi.advanceTimersByTimeAsync(1000);
      expect(await turn).toBeUndefined();
      expect(t.drops.map((d) => d.code)).toEqual(['TURN_DEADLINE']);
      expect(t.socket.last('turn-end')).toMatchObject({ accepted: false, reason: 'TURN_DEADLINE' });
      expect(t.train.restores).toBe(1);
    });

    it("on the user's own copy ('sfl'): no snapshot, nothing rolled back, what it held given back", async () => {
      const t = setup({ ownCopy: true });
      playHonestly(t.conn, t.socket, { leaveAfterStep: 1 });
      expect(await t.run()).toBeUndefined();
      expect(t.drops.map((d) => d.code)).toEqual(['USER_GONE']);
      expect(t.cloud.types()).toEqual(['user-begin', 'forward', 'user-dropped']);
      // the step stays on the copy, which the round runner drops with the user
      expect(t.train).toMatchObject({ taken: 1, restores: 0 });
      // the step's activations were held while the step ran, and nothing is held after the turn
      expect(t.held.peak).toBeGreaterThan(0);
      expect(t.held.current).toBe(0);
      expect(t.cloud.ended).toEqual(['u1']);
    });

    it('rolls back a user that leaves mid-turn, and sends it nothing more', async () => {
      const t = setup();
      playHonestly(t.conn, t.socket, { leaveAfterStep: 1 });
      expect(await t.run()).toBeUndefined();
      expect(t.drops.map((d) => d.code)).toEqual(['USER_GONE']);
      expect(t.socket.types()).toEqual(['turn', 'backward']);
      expect(t.socket.closed?.code).toBe(1000);
      expect(t.cloud.types()).toEqual(['user-begin', 'forward', 'user-dropped']);
      // the step it took is undone
      expect(t.train.restores).toBe(1);
      expect(t.train.taken).toBe(0);
      expect(t.conn.waitingFor).toBeUndefined();
    });

    it("rolls back when the cloud answers a step with an error, and tells the user the cloud's code", async () => {
      const t = setup();
      playHonestly(t.conn, t.socket);
      const honest = t.cloud.answer;
      t.cloud.answer = (m) => {
        if (m.step === 2) later(() => t.cloud.waiter.fail(new CloudError('NO_ROUND', 'cloud: there is no round')));
        else honest(m);
      };
      expect(await t.run()).toBeUndefined();
      expect(t.drops.map((d) => d.code)).toEqual(['NO_ROUND']);
      expect(t.socket.last('error')?.code).toBe('NO_ROUND');
      expect(t.socket.last('turn-end')).toMatchObject({ accepted: false, reason: 'NO_ROUND' });
      expect(t.train).toMatchObject({ taken: 0, restores: 1 });
      expect(t.cloud.types()).toEqual(['user-begin', 'forward', 'forward', 'user-dropped']);
    });

    it('rolls back when the cloud does not answer in time', async () => {
      const t = setup();
      playHonestly(t.conn, t.socket);
      t.cloud.answer = () => undefined;
      const turn = t.run();
      await vi.advanceTimersByTimeAsync(SPEC.cloudTimeoutMs);
      expect(await turn).toBeUndefined();
      expect(t.drops.map((d) => d.code)).toEqual(['CLOUD_TIMEOUT']);
      expect(t.cloud.waiter.waitingFor).toBeUndefined();
    });

    it('leaves no wait, no timer and no rejection behind when a step cannot be sent (h2 not finite)', async () => {
      const t = setup({ poison: true });
      playHonestly(t.conn, t.socket);
      expect(await t.run()).toBeUndefined();
      expect(t.drops.map((d) => d.code)).toEqual(['NOT_FINITE']);
      // the forward never left: the wait for its answer was withdrawn with its timer
      expect(t.cloud.types()).toEqual(['user-begin', 'user-dropped']);
      expect(t.cloud.waiter.waitingFor).toBeUndefined();
      expect(vi.getTimerCount()).toBe(0);
      expect(t.socket.last('turn-end')).toMatchObject({ accepted: false, reason: 'NOT_FINITE' });
      expect(t.train.restores).toBe(1);
    });
  });
});
