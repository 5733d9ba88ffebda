/**
 * One edge's part of a round on the cloud: its own copy of the cloud's LoRA (blocks [m, L)) with
 * its own AdamW state, the tail step on it (blocks [m, L), the head and the loss, forward and
 * backward), the turns of the edge's users, and the chain its frames run on.
 *
 * Every frame of one edge runs in arrival order on that edge's chain, so a `user-dropped` can
 * never overtake the step it follows; different edges run concurrently (their tail steps queue in
 * the one onnxruntime worker, each on its own copy, so the result does not depend on the order in
 * which edges' frames arrive).
 */
import { IGNORE_INDEX, type AdamWOptions, type LoraAdapter } from '@splitllm/model';
import { LoraTrainState, type LoraTrainSnapshot, type RoundConfig } from '@splitllm/federation';
import type { TailSegment } from '@splitllm/onnx-runner';
import {
  checkTargets,
  expectRoundStep,
  expectShape,
  ProtocolError,
  type Codec,
  type Incoming,
  type Outgoing,
} from '@splitllm/wire';

/** The tail step the cloud runs (TailSegment in the server, a fake in tests). */
export type TailStepper = Pick<TailSegment, 'step'>;

/** The shape of every step of the run. */
export interface StepShape {
  batch: number;
  seq: number;
  nEmbd: number;
  vocabSize: number;
  /** how dL/dh travels back */
  codec: Codec;
}

export interface UserTurn {
  userId: string;
  /** the cloud copy before this user's first step: restored if the user drops */
  before: LoraTrainSnapshot;
  steps: number;
  /** targets counted in the loss: the user's weight in the aggregate */
  tokens: number;
  /** the loss of each step, in order */
  losses: number[];
  /** sum of loss x counted tokens, taken back out of the round's mean if the user drops */
  lossSum: number;
}

export class EdgeTail {
  readonly cloud: LoraTrainState;
  /** the turn in progress */
  turn?: UserTurn;
  /** turns whose last step ran; they count once the user's adapter arrives in the upload */
  readonly completed: UserTurn[] = [];
  lossSum = 0;
  lossCount = 0;
  private chain: Promise<void> = Promise.resolve();

  constructor(
    readonly edgeId: string,
    readonly round: number,
    cloudPart: LoraAdapter,
    adamw: AdamWOptions,
    private readonly config: RoundConfig,
    private readonly shape: StepShape,
    private readonly tail: TailStepper,
  ) {
    this.cloud = new LoraTrainState(cloudPart, adamw);
  }

  /**
   * Runs `task` after every task queued before it. The returned promise carries the task's
   * outcome; the chain itself goes on after a failed task.
   */
  enqueue(task: () => Promise<void> | void): Promise<void> {
    const run = this.chain.then(task);
    this.chain = run.catch(() => undefined);
    return run;
  }

  /** Resolves once every task queued so far has run. */
  settled(): Promise<void> {
    return this.chain;
  }

  tokens(): number {
    return this.completed.reduce((s, t) => s + t.tokens, 0);
  }

  begin(m: Incoming<'edgeToCloud', 'user-begin'>): void {
    const { userId } = m;
    if (this.turn) {
      throw new ProtocolError(
        'TURN_OPEN',
        `user "${this.turn.userId}"'s turn is still open; end it before user "${userId}" begins`,
      );
    }
    if (this.completed.length >= this.config.usersPerEdge) {
      throw new ProtocolError('TOO_MANY_USERS', `round takes ${this.config.usersPerEdge} user(s) per edge`);
    }
    if (this.completed.some((t) => t.userId === userId)) {
      throw new ProtocolError('USER_REPEATED', `user "${userId}" already trained in this round`);
    }
    this.turn = { userId, before: this.cloud.snapshot(), steps: 0, tokens: 0, losses: [], lossSum: 0 };
  }

  /** The user left: its steps are rolled back on this copy and its loss leaves the mean. */
  drop(m: Incoming<'edgeToCloud', 'user-dropped'>): UserTurn {
    const { userId } = m;
    // the user may drop after its last step (before its adapter reached the edge): that turn is
    // the last completed one, and nothing has happened on this copy since
    const last = this.completed[this.completed.length - 1];
    const turn = this.turn ?? (last?.userId === userId ? this.completed.pop() : undefined);
    if (!turn || turn.userId !== userId) {
      throw new ProtocolError('UNKNOWN_USER', `user "${userId}" has no open turn at edge "${this.edgeId}"`);
    }
    this.cloud.restore(turn.before);
    this.lossSum -= turn.lossSum;
    this.lossCount -= turn.tokens;
    this.turn = undefined;
    return turn;
  }

  /**
   * The tail step: blocks [m, L), head, loss, backward, AdamW on this edge's copy. Returns the
   * `backward` to send (dL/dh with the step's loss) and the targets the loss counted.
   */
  async forward(m: Incoming<'edgeToCloud', 'forward'>): Promise<Outgoing<'cloudToEdge', 'backward'>> {
    const turn = this.turn;
    if (!turn) throw new ProtocolError('NO_TURN', 'a forward frame needs a user-begin first');
    const { stepsPerUser, lr } = this.config;
    if (turn.steps >= stepsPerUser) throw new ProtocolError('TOO_MANY_STEPS', `a turn has ${stepsPerUser} steps`);
    expectRoundStep(m, this.round, turn.steps + 1);
    if (m.userId !== turn.userId) {
      throw new ProtocolError('UNKNOWN_USER', `forward for user "${m.userId}" during user "${turn.userId}"'s turn`);
    }
    const { batch: B, seq: T, nEmbd: D, vocabSize: V } = this.shape;
    const h = expectShape(m.h, 'h', [B, T, D]);
    const targets = expectShape(m.targets, 'targets', [B, T]);
    checkTargets(targets, V, IGNORE_INDEX);
    turn.steps++; // claimed before the await: a duplicate of this step is refused
    const r = await this.tail.step(this.cloud.adapter, h, targets, B, T);
    if (!Number.isFinite(r.loss)) throw new ProtocolError('NOT_FINITE', `the loss of step ${turn.steps} is ${r.loss}`);
    this.cloud.step(r.loraGrads, lr);
    turn.tokens += r.count;
    turn.losses.push(r.loss);
    turn.lossSum += r.loss * r.count;
    this.lossSum += r.loss * r.count;
    this.lossCount += r.count;
    const step = turn.steps;
    if (step === stepsPerUser) {
      // the turn's last step: it counts once its user's adapter arrives in the edge's upload
      this.completed.push(turn);
      this.turn = undefined;
    }
    return {
      round: this.round,
      step,
      loss: r.loss,
      count: r.count,
      dh: { data: r.dx, shape: [B, T, D], codec: this.shape.codec },
    };
  }
}
