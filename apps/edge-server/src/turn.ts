/**
 * The turn relay: one user's turn of a round, every step user -> edge -> cloud and back.
 *
 *   labels in the cloud:
 *   user --forward {h1, targets}--> edge: blocks [k, m) forward --forward {h2, targets}--> cloud
 *   cloud --backward {dh2, loss, count}--> edge: blocks [k, m) backward, AdamW on the edge LoRA
 *   edge --backward {dh1, loss, count}--> user;  after the last step: user --adapter--> edge
 *
 *   labels on the device (no label reaches the edge or the cloud):
 *   user --activations {h1}--> edge: blocks [k, m) forward --activations {h2}--> cloud
 *   cloud --hidden {hL}--> edge --hidden {hL}--> user: ln_f, head, loss
 *   user --head-grad {dhL, loss, count}--> edge --head-grad--> cloud: blocks [m, L) backward
 *   cloud --backward {dh2, loss, count}--> edge ... as above
 *
 * A user who leaves, times out or sends an unusable adapter, a cloud that fails or goes away, or
 * a step that cannot be sent (a non-finite h2) ends the turn: the edge LoRA goes back to where
 * it was before the turn, the cloud is told to drop the user's steps, and the user hears why.
 *
 * What the turn keeps for a step's backward (its input, output and the runtime's saved tensors)
 * and the snapshot it may roll back to are counted in `deps.held` (HeldBytes) while it keeps them.
 *
 * Every wait for a peer's next message is installed before the frame that prompts it is sent
 * (MessageWaiter.request): when encoding or sending throws, the wait is withdrawn with its
 * timer, so nothing outlives the turn.
 *
 * Each step's record also says where its time went (StepTimes): the edge's forward, its backward
 * with AdamW, the waits for the cloud's answers, and (labels on the device) the wait for the
 * user's head-grad. The waits include the encoding of the frame that prompts the answer, since
 * the request sends it; the rest of `ms` is the edge's own decoding, checks and bookkeeping.
 */
import { adapterToNamedTensors, codeOf, IGNORE_INDEX, type LoraAdapter } from '@splitllm/model';
import { arraysBytes, type HeldBytes, type LoraTrainState, trainStateBytes } from '@splitllm/federation';
import type { BlocksForwardResult, BlocksSegment } from '@splitllm/onnx-runner';
import {
  type Codec,
  checkHeadReport,
  checkTargets,
  expectRoundStep,
  expectShape,
  type Incoming,
  type MessageOn,
  type MessageTypeOn,
  type MessageWaiter,
  type Outgoing,
  type WireTensor,
} from '@splitllm/wire';
import { EdgeError } from './errors';
import type { Logger, StepPoint } from './telemetry';
import type { ExpectOptions } from './user-queue';

/** The user's side of a turn (UserConn, or a fake in tests). */
export interface TurnUser {
  readonly userId: string;
  /** true once the user's connection is gone: nothing more is sent to it */
  readonly closed: boolean;
  send<T extends MessageTypeOn<'edgeToUser'>>(type: T, m: Outgoing<'edgeToUser', T>): void;
  sendError(code: string, message: string): void;
  /** sends with `send`, then waits for the user's next message of `type` (see UserConn.expect) */
  expect<T extends 'forward' | 'activations' | 'head-grad' | 'adapter'>(
    send: () => void,
    type: T,
    opts: ExpectOptions<Incoming<'userToEdge', T>>,
  ): Promise<Incoming<'userToEdge', T>>;
}

/** The cloud's side of a turn (the CloudLink, or a fake in tests). */
export interface TurnCloud {
  /** throws when the cloud is not connected */
  send<T extends MessageTypeOn<'edgeToCloud'>>(type: T, m: Outgoing<'edgeToCloud', T>): void;
  /** where the cloud's answers for this user are delivered */
  waiterFor(userId: string): MessageWaiter<MessageOn<'cloudToEdge'>>;
  /** the user's turn is over (its waiter goes) */
  endTurn(userId: string): void;
}

export type TurnBlocks = Pick<BlocksSegment, 'forward' | 'backward'>;
export type TurnTrainer = Pick<LoraTrainState, 'adapter' | 'snapshot' | 'restore' | 'step'>;

export interface TurnSpec {
  round: number;
  /** the global version the round trains from */
  version: number;
  steps: number;
  batch: number;
  seq: number;
  /** how activations and their gradients travel */
  codec: Codec;
  /** where the labels are: with 'device' the user runs the head and the loss */
  labels: 'device' | 'cloud';
  nEmbd: number;
  vocabSize: number;
  /** the user's next frame must arrive within this time */
  userTimeoutMs: number;
  /**
   * The whole turn's deadline on the user's side: the time spent waiting for the user's frames,
   * summed over the turn, must stay under this (omitted: only the per-frame limit). Only the
   * user's own time counts, so a slow cloud or edge never makes a user miss it.
   */
  turnBudgetMs?: number;
  /** the cloud must answer a step within this time */
  cloudTimeoutMs: number;
}

export interface TurnDeps {
  user: TurnUser;
  cloud: TurnCloud;
  blocks: TurnBlocks;
  /**
   * the edge LoRA and its optimizer: shared by the round's turns, or with 'sfl' this user's own
   * (`ownCopy`: nothing to roll back, the round runner drops the copy of a user who drops)
   */
  train: TurnTrainer;
  ownCopy?: boolean;
  /** where what the turn keeps is counted */
  held: HeldBytes;
  /** 'sequential': the adapter of blocks [0, k) the user starts from (the one the user before it left) */
  startAdapter?: LoraAdapter;
  /** the user's adapter from its `adapter` message, checked against the global one (throws to refuse it) */
  acceptAdapter: (m: Incoming<'userToEdge', 'adapter'>) => LoraAdapter;
  log: Logger;
  /** the step now in progress (for the status) */
  onProgress?: (step: number) => void;
  /** a step is done: its gradient went back to the user (with where its time went) */
  onStep?: (point: StepPoint) => void;
  /** the user was dropped from the round; everything was rolled back */
  onDropped?: (code: string, message: string) => void;
}

export interface TurnResult {
  userId: string;
  adapter: LoraAdapter;
  steps: number;
  tokens: number;
}

/** Runs one user's turn; returns its result, or undefined when the user was dropped (everything rolled back). */
export async function relayTurn(spec: TurnSpec, deps: TurnDeps): Promise<TurnResult | undefined> {
  const { round, steps, batch: B, seq: T, nEmbd: D, vocabSize: V, codec } = spec;
  const { user, cloud, blocks, train } = deps;
  const userId = user.userId;
  const before = deps.ownCopy ? undefined : train.snapshot();
  const releaseSnapshot = before ? deps.held.hold(trainStateBytes(train.adapter)) : () => undefined;
  const waiter = cloud.waiterFor(userId);
  // the user's time so far: from each prompt to the frame that answers it
  const userTurnTime = { ms: 0 };
  const fromUser = <M>(type: string, check: (m: M) => void): ExpectOptions<M> => {
    const left = spec.turnBudgetMs === undefined ? Infinity : Math.max(0, spec.turnBudgetMs - userTurnTime.ms);
    const byDeadline = left < spec.userTimeoutMs;
    return {
      timeoutMs: Math.min(spec.userTimeoutMs, left),
      onTimeout: () =>
        byDeadline
          ? new EdgeError('TURN_DEADLINE', `the turn's deadline of ${spec.turnBudgetMs} ms of the user's time passed`)
          : new EdgeError('USER_TIMEOUT', `no "${type}" frame within ${spec.userTimeoutMs} ms`),
      check,
    };
  };
  /** Runs `fn` and adds its duration to `into.ms` (a step's phase or the turn's user time), even when it throws. */
  const timed = async <R>(into: { ms: number }, fn: () => Promise<R>): Promise<R> => {
    const t0 = performance.now();
    try {
      return await fn();
    } finally {
      into.ms += performance.now() - t0;
    }
  };
  /** Waits for the user's frame as `user.expect` does, adding the wait to the user's time. */
  const fromUserTimed = <R>(wait: () => Promise<R>): Promise<R> => timed(userTurnTime, wait);
  const forwardCheck = (step: number) => (m: Incoming<'userToEdge', 'forward'>) => {
    expectRoundStep(m, round, step);
    expectShape(m.h, 'h', [B, T, D]);
    const targets = expectShape(m.targets, 'targets', [B, T]);
    checkTargets(targets, V, IGNORE_INDEX);
  };
  const activationsCheck = (step: number) => (m: Incoming<'userToEdge', 'activations'>) => {
    expectRoundStep(m, round, step);
    expectShape(m.h, 'h', [B, T, D]);
  };
  const headGradCheck = (step: number) => (m: Incoming<'userToEdge', 'head-grad'>) => {
    expectRoundStep(m, round, step);
    expectShape(m.dh, 'dh', [B, T, D]);
    checkHeadReport(m, B * T);
  };
  let tokens = 0;
  // what the step in progress keeps for its backward
  let releaseStep: () => void = () => undefined;
  try {
    cloud.send('user-begin', { round, userId });
    deps.log.info({ round, userId, steps }, 'turn started');
    // what goes to the user before each of its frames: the turn, then each step's gradient
    const start = deps.startAdapter ? adapterToNamedTensors(deps.startAdapter) : new Map();
    let prompt = () =>
      user.send('turn', { round, version: spec.version, steps, batch: B, seq: T, codec, tensors: start });
    /** The cloud's answer to a step: in time, of this round and step, with a tensor of the step's shape. */
    const fromCloud = <M extends { type: string; round: number; step: number }>(
      step: number,
      tensor: (m: M) => WireTensor<Float32Array>,
    ) => ({
      timeoutMs: spec.cloudTimeoutMs,
      onTimeout: () => new EdgeError('CLOUD_TIMEOUT', `the cloud did not answer within ${spec.cloudTimeoutMs} ms`),
      accept: (m: M) => {
        expectRoundStep(m, round, step);
        expectShape(tensor(m), m.type === 'hidden' ? 'hL' : 'dh', [B, T, D]);
      },
    });
    const backwardOf = (m: Incoming<'cloudToEdge', 'backward'>) => m.dh;
    for (let step = 1; step <= steps; step++) {
      deps.onProgress?.(step);
      let h: Float32Array;
      let out: BlocksForwardResult;
      let back: Incoming<'cloudToEdge', 'backward'>;
      let t0: number;
      // this step's phases (StepTimes), each summed over its parts
      const [fwdTime, bwdTime, cloudTime, userTime] = [{ ms: 0 }, { ms: 0 }, { ms: 0 }, { ms: 0 }];
      if (spec.labels === 'cloud') {
        const fwd = await fromUserTimed(() => user.expect(prompt, 'forward', fromUser('forward', forwardCheck(step))));
        h = fwd.h.data;
        t0 = performance.now();
        out = await timed(fwdTime, () => blocks.forward(train.adapter, h, B, T));
        releaseStep = deps.held.hold(arraysBytes([h, out.y, ...Object.values(out.saved)]));
        back = await timed(cloudTime, () =>
          waiter.request(
            () =>
              cloud.send('forward', {
                round,
                step,
                userId,
                h: { data: out.y, shape: [B, T, D], codec },
                targets: { data: fwd.targets.data, shape: [B, T] },
              }),
            'backward',
            fromCloud(step, backwardOf),
          ),
        );
      } else {
        const fwd = await fromUserTimed(() =>
          user.expect(prompt, 'activations', fromUser('activations', activationsCheck(step))),
        );
        h = fwd.h.data;
        t0 = performance.now();
        out = await timed(fwdTime, () => blocks.forward(train.adapter, h, B, T));
        releaseStep = deps.held.hold(arraysBytes([h, out.y, ...Object.values(out.saved)]));
        const hidden = await timed(cloudTime, () =>
          waiter.request(
            () => cloud.send('activations', { round, step, userId, h: { data: out.y, shape: [B, T, D], codec } }),
            'hidden',
            fromCloud(step, (m: Incoming<'cloudToEdge', 'hidden'>) => m.h),
          ),
        );
        const grad = await timed(userTime, () =>
          fromUserTimed(() =>
            user.expect(
              () => user.send('hidden', { round, step, h: { data: hidden.h.data, shape: [B, T, D], codec } }),
              'head-grad',
              fromUser('head-grad', headGradCheck(step)),
            ),
          ),
        );
        back = await timed(cloudTime, () =>
          waiter.request(
            () =>
              cloud.send('head-grad', {
                round,
                step,
                userId,
                loss: grad.loss,
                count: grad.count,
                dh: { data: grad.dh.data, shape: [B, T, D], codec },
              }),
            'backward',
            fromCloud(step, backwardOf),
          ),
        );
      }
      let grads: Awaited<ReturnType<TurnBlocks['backward']>>;
      const bwdStart = performance.now();
      try {
        grads = await blocks.backward(train.adapter, h, out.saved, back.dh.data, B, T);
      } finally {
        releaseStep();
      }
      const { dx, loraGrads } = grads;
      train.step(loraGrads);
      bwdTime.ms += performance.now() - bwdStart;
      const times = { forwardMs: fwdTime.ms, backwardMs: bwdTime.ms, cloudMs: cloudTime.ms, userMs: userTime.ms };
      prompt = () => {
        user.send('backward', {
          round,
          step,
          loss: back.loss,
          count: back.count,
          dh: { data: dx, shape: [B, T, D], codec },
        });
        tokens += back.count;
        const ms = performance.now() - t0;
        const at = new Date().toISOString();
        deps.onStep?.({ userId, step, loss: back.loss, tokens: back.count, ms, at, ...times });
      };
    }
    // the adapter its check accepted, by the message that carried it
    const accepted = new WeakMap<object, LoraAdapter>();
    const sent = await fromUserTimed(() =>
      user.expect(
        prompt,
        'adapter',
        fromUser('adapter', (m: Incoming<'userToEdge', 'adapter'>) => {
          expectRoundStep(m, round);
          accepted.set(m, deps.acceptAdapter(m));
        }),
      ),
    );
    const adapter = accepted.get(sent);
    if (!adapter) throw new Error("the user's adapter was delivered without passing its check");
    user.send('turn-end', { round, accepted: true });
    deps.log.info({ round, userId, tokens }, 'turn completed');
    return { userId, adapter, steps, tokens };
  } catch (e) {
    const code = codeOf(e, 'STEP_FAILED');
    const message = (e as Error).message;
    if (before) train.restore(before);
    deps.onDropped?.(code, `user dropped from round ${round}: ${message}`);
    try {
      cloud.send('user-dropped', { round, userId });
    } catch {
      /* the cloud is gone: the round is void there anyway */
    }
    if (!user.closed) {
      user.sendError(code, message);
      user.send('turn-end', { round, accepted: false, reason: code });
    }
    return undefined;
  } finally {
    releaseStep();
    releaseSnapshot();
    cloud.endTurn(userId);
  }
}
