/**
 * One edge's part of a round on the cloud: its own copy of the cloud's LoRA (blocks [m, L)) with
 * its own AdamW state, the tail step on it, the turns of the edge's users, and the chain its
 * frames run on.
 *
 * The tail step depends on where the labels are:
 *   labels in the cloud:   forward {h2, targets} -> blocks [m, L), head, loss, backward -> backward {dh2}
 *   labels on the device:  activations {h2} -> blocks [m, L) forward -> hidden {hL} (to the tab)
 *                          head-grad {dhL, loss, count} (from the tab) -> blocks [m, L) backward -> backward {dh2}
 * With labels on the device the cloud never sees a label: the step's loss and its count are the
 * tab's report, checked for range (a count of at most B*T, a finite loss >= 0).
 *
 * The training scheme (TrainingScheme in packages/wire) decides how many turns are open at once:
 * one with 'hierarchical' and 'sequential' (the users of an edge carry on one copy, one after
 * another); with 'sfl' every user of the round may have its turn open at once, each on its own
 * copy with its own AdamW state, and the edge's cloud part is the token-weighted mean of the
 * copies of the users that completed (`cloudPart`). What the copies, their snapshots and the
 * steps' saved activations weigh is counted in `held` (HeldBytes).
 *
 * Every frame of one edge runs in arrival order on that edge's chain, so a `user-dropped` can
 * never overtake the step it follows; different edges run concurrently (their tail steps queue in
 * the one onnxruntime worker, each on its own copy, so the result does not depend on the order in
 * which edges' frames arrive).
 */
import { IGNORE_INDEX, type AdamWOptions, type LoraAdapter } from '@splitllm/model';
import {
  arraysBytes,
  FedAvg,
  type HeldBytes,
  LoraTrainState,
  type LoraTrainSnapshot,
  type RoundConfig,
  trainStateBytes,
} from '@splitllm/federation';
import type { BlocksForwardResult, BlocksSegment, TailSegment } from '@splitllm/onnx-runner';
import {
  checkHeadReport,
  checkTargets,
  expectRoundStep,
  expectShape,
  ProtocolError,
  type Codec,
  type Incoming,
  type Outgoing,
  type TrainingScheme,
} from '@splitllm/wire';

/** The tail step with labels in the cloud (TailSegment in the server, a fake in tests). */
export type TailStepper = Pick<TailSegment, 'step'>;
/** Blocks [m, L) alone, with labels on the device (BlocksSegment in the server). */
export type TailBlocks = Pick<BlocksSegment, 'forward' | 'backward'>;

/** What the cloud runs for a step: one of the two, by the run's label placement. */
export type CloudSteps = { labels: 'cloud'; tail: TailStepper } | { labels: 'device'; blocks: TailBlocks };

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
  /** the shared cloud copy before this user's first step: restored if the user drops (not with 'sfl') */
  before?: LoraTrainSnapshot;
  /** 'sfl': this user's own cloud copy and its AdamW state */
  own?: LoraTrainState;
  /** gives back what this turn holds (its snapshot or its own copy) */
  release: () => void;
  steps: number;
  /** targets counted in the loss: the user's weight in the aggregate */
  tokens: number;
  /** the loss of each step, in order */
  losses: number[];
  /** sum of loss x counted tokens, taken back out of the round's mean if the user drops */
  lossSum: number;
  /** labels on the device: the step whose hL went to the tab, waiting for its head-grad */
  pending?: { step: number; h: Float32Array; saved: BlocksForwardResult['saved']; release: () => void };
}

export class EdgeTail {
  /** the copy the edge's users carry on, one after another ('hierarchical', 'sequential') */
  readonly cloud: LoraTrainState;
  /** the turns in progress, by user: at most one unless the scheme is 'sfl' */
  readonly turns = new Map<string, UserTurn>();
  /** turns whose last step ran; they count once the user's adapter arrives in the upload */
  readonly completed: UserTurn[] = [];
  lossSum = 0;
  lossCount = 0;
  private chain: Promise<void> = Promise.resolve();
  private readonly releaseShared: () => void;

  constructor(
    readonly edgeId: string,
    readonly round: number,
    private readonly start: LoraAdapter,
    private readonly adamw: AdamWOptions,
    private readonly config: RoundConfig,
    private readonly shape: StepShape,
    private readonly steps: CloudSteps,
    private readonly scheme: TrainingScheme,
    private readonly held: HeldBytes,
  ) {
    this.cloud = new LoraTrainState(start, adamw);
    this.releaseShared = scheme === 'sfl' ? () => undefined : held.hold(trainStateBytes(start));
  }

  /** Gives back everything this edge's part of the round holds (the round is over for it). */
  dispose(): void {
    this.releaseShared();
    for (const t of [...this.turns.values(), ...this.completed]) {
      t.pending?.release();
      t.release();
    }
  }

  /** The edge's cloud part of the round: its one copy, or with 'sfl' the token-weighted mean of the users' copies. */
  cloudPart(): LoraAdapter {
    if (this.scheme !== 'sfl') return this.cloud.copyAdapter();
    const updates = this.completed.map((t) => ({ from: t.userId, adapter: t.own!.adapter, tokens: t.tokens }));
    return new FedAvg().aggregate(this.start, updates);
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
    const open = this.turns.values().next().value;
    if (open && this.scheme !== 'sfl') {
      throw new ProtocolError(
        'TURN_OPEN',
        `user "${open.userId}"'s turn is still open; end it before user "${userId}" begins`,
      );
    }
    if (this.completed.length + this.turns.size >= this.config.usersPerEdge) {
      throw new ProtocolError('TOO_MANY_USERS', `round takes ${this.config.usersPerEdge} user(s) per edge`);
    }
    if (this.turns.has(userId) || this.completed.some((t) => t.userId === userId)) {
      throw new ProtocolError('USER_REPEATED', `user "${userId}" already trained in this round`);
    }
    if (this.scheme !== 'sfl') {
      // the turn before can no longer be dropped (its user's adapter reached the edge before this
      // user began): its snapshot goes, so the edge's part holds one whatever the number of users
      for (const t of this.completed) {
        t.before = undefined;
        t.release();
      }
    }
    const base = { userId, steps: 0, tokens: 0, losses: [], lossSum: 0 };
    const bytes = trainStateBytes(this.start);
    // 'sfl': a copy of its own; otherwise a snapshot of the shared copy to roll back to
    const turn: UserTurn =
      this.scheme === 'sfl'
        ? { ...base, own: new LoraTrainState(this.start, this.adamw), release: this.held.hold(bytes) }
        : { ...base, before: this.cloud.snapshot(), release: this.held.hold(bytes) };
    this.turns.set(userId, turn);
  }

  /** The user left: its steps are rolled back (its own copy dropped with 'sfl') and its loss leaves the mean. */
  drop(m: Pick<Incoming<'edgeToCloud', 'user-dropped'>, 'userId'>): UserTurn {
    const { userId } = m;
    let turn = this.turns.get(userId);
    if (turn) this.turns.delete(userId);
    else {
      // the user may drop after its last step (before its adapter reached the edge). With one copy
      // that turn is the last completed one, and nothing has happened on the copy since; with
      // 'sfl' each completed turn has its own copy
      const i = this.completed.findIndex((t) => t.userId === userId);
      const last = i === this.completed.length - 1 && this.turns.size === 0 && this.completed[i].before !== undefined;
      if (i >= 0 && (this.scheme === 'sfl' || last)) turn = this.completed.splice(i, 1)[0];
    }
    if (!turn) {
      throw new ProtocolError('UNKNOWN_USER', `user "${userId}" has no open turn at edge "${this.edgeId}"`);
    }
    if (turn.before) this.cloud.restore(turn.before);
    turn.pending?.release();
    turn.pending = undefined;
    turn.release();
    this.lossSum -= turn.lossSum;
    this.lossCount -= turn.tokens;
    return turn;
  }

  /** The copy a turn steps: its own with 'sfl', else the edge's. */
  private copyOf(turn: UserTurn): LoraTrainState {
    return turn.own ?? this.cloud;
  }

  /** The turn and the step a frame of a training user's may carry (its number is the next one). */
  private stepOf(m: { type: string; round: number; step: number; userId: string }): UserTurn {
    const turn = this.turns.get(m.userId);
    if (!turn) {
      const open = this.turns.values().next().value;
      if (!open) throw new ProtocolError('NO_TURN', `a ${m.type} frame needs a user-begin first`);
      const during = this.scheme === 'sfl' ? 'while it has no open turn' : `during user "${open.userId}"'s turn`;
      throw new ProtocolError('UNKNOWN_USER', `${m.type} for user "${m.userId}" ${during}`);
    }
    const { stepsPerUser } = this.config;
    if (turn.steps >= stepsPerUser) throw new ProtocolError('TOO_MANY_STEPS', `a turn has ${stepsPerUser} steps`);
    expectRoundStep(m, this.round, turn.steps + 1);
    if (turn.pending) {
      throw new ProtocolError('STEP_OPEN', `step ${turn.pending.step} is waiting for its head-grad`);
    }
    return turn;
  }

  /**
   * A step is done (the cloud copy has stepped): its loss counts, the turn may be complete, and the
   * `backward` to send carries dL/dh (`dx`) with the step's loss and count.
   */
  private finishStep(
    turn: UserTurn,
    loss: number,
    count: number,
    dx: Float32Array,
  ): Outgoing<'cloudToEdge', 'backward'> {
    turn.tokens += count;
    turn.losses.push(loss);
    turn.lossSum += loss * count;
    this.lossSum += loss * count;
    this.lossCount += count;
    const step = turn.steps;
    if (step === this.config.stepsPerUser) {
      // the turn's last step: it counts once its user's adapter arrives in the edge's upload
      this.completed.push(turn);
      this.turns.delete(turn.userId);
    }
    const { batch: B, seq: T, nEmbd: D, codec } = this.shape;
    return { round: this.round, step, userId: turn.userId, loss, count, dh: { data: dx, shape: [B, T, D], codec } };
  }

  /**
   * Labels in the cloud, the tail step: blocks [m, L), head, loss, backward, AdamW on this edge's
   * copy. Returns the `backward` to send (dL/dh with the step's loss and the targets it counted).
   */
  async forward(m: Incoming<'edgeToCloud', 'forward'>): Promise<Outgoing<'cloudToEdge', 'backward'>> {
    if (this.steps.labels !== 'cloud') {
      throw new ProtocolError('LABELS_ON_DEVICE', 'this run keeps labels on the device: send activations, not forward');
    }
    const turn = this.stepOf(m);
    const { batch: B, seq: T, nEmbd: D, vocabSize: V } = this.shape;
    const h = expectShape(m.h, 'h', [B, T, D]);
    const targets = expectShape(m.targets, 'targets', [B, T]);
    checkTargets(targets, V, IGNORE_INDEX);
    turn.steps++; // claimed before the await: a duplicate of this step is refused
    const copy = this.copyOf(turn);
    const r = await this.steps.tail.step(copy.adapter, h, targets, B, T);
    if (!Number.isFinite(r.loss)) throw new ProtocolError('NOT_FINITE', `the loss of step ${turn.steps} is ${r.loss}`);
    copy.step(r.loraGrads, this.config.lr);
    return this.finishStep(turn, r.loss, r.count, r.dx);
  }

  /** Labels on the device, first half: blocks [m, L) forward; the last hidden state goes to the tab. */
  async activations(m: Incoming<'edgeToCloud', 'activations'>): Promise<Outgoing<'cloudToEdge', 'hidden'>> {
    if (this.steps.labels !== 'device') {
      throw new ProtocolError(
        'LABELS_IN_CLOUD',
        'this run takes the labels in the cloud: send forward, not activations',
      );
    }
    const turn = this.stepOf(m);
    const { batch: B, seq: T, nEmbd: D } = this.shape;
    const h = expectShape(m.h, 'h', [B, T, D]);
    turn.steps++; // claimed before the await: a duplicate of this step is refused
    const step = turn.steps;
    const out = await this.steps.blocks.forward(this.copyOf(turn).adapter, h, B, T);
    if (!out.y.every(Number.isFinite)) {
      throw new ProtocolError('NOT_FINITE', `the last hidden state of step ${step} is not finite`);
    }
    // kept until the tab's head-grad comes back: with 'sfl', one set per user in flight
    const release = this.held.hold(arraysBytes([h, ...Object.values(out.saved)]));
    turn.pending = { step, h, saved: out.saved, release };
    const hL = { data: out.y, shape: [B, T, D], codec: this.shape.codec };
    return { round: this.round, step, userId: turn.userId, h: hL };
  }

  /** Labels on the device, second half: the tab's dL/dhL -> blocks [m, L) backward, AdamW; dL/dh2 to the edge. */
  async headGrad(m: Incoming<'edgeToCloud', 'head-grad'>): Promise<Outgoing<'cloudToEdge', 'backward'>> {
    if (this.steps.labels !== 'device') {
      throw new ProtocolError('LABELS_IN_CLOUD', 'this run takes the labels in the cloud: there is no head-grad');
    }
    const turn = this.turns.get(m.userId);
    const pending = turn?.pending;
    if (!turn || !pending) {
      const open = this.turns.values().next().value;
      if (open && this.scheme !== 'sfl' && open.userId !== m.userId) {
        throw new ProtocolError('UNKNOWN_USER', `head-grad for user "${m.userId}" during user "${open.userId}"'s turn`);
      }
      throw new ProtocolError('NO_TURN', 'a head-grad frame needs the activations of its step first');
    }
    expectRoundStep(m, this.round, pending.step);
    const { batch: B, seq: T, nEmbd: D } = this.shape;
    const dh = expectShape(m.dh, 'dh', [B, T, D]);
    checkHeadReport(m, B * T);
    turn.pending = undefined;
    const copy = this.copyOf(turn);
    try {
      const r = await this.steps.blocks.backward(copy.adapter, pending.h, pending.saved, dh, B, T);
      copy.step(r.loraGrads, this.config.lr);
      return this.finishStep(turn, m.loss, m.count, r.dx);
    } finally {
      pending.release();
    }
  }
}
