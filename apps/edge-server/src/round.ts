/**
 * The edge's rounds: when the cloud starts one, the edge trains up to `usersPerEdge` of its
 * waiting users (queue order), each for `stepsPerUser` steps (turn.ts), then uploads the edge
 * LoRA and the users' adapters. How the users train is the run's scheme (TrainingScheme):
 * - 'hierarchical' (the paper's): one after another on one edge LoRA; the edge holds one LoRA,
 *   one optimizer state and one user's activations whatever the number of waiting users.
 * - 'sequential': the same, and each user starts from the adapter the user before it left (the
 *   cloud runs one edge per round, so one user trains at a time across the system).
 * - 'sfl': all at once, each on its own copy of the edge LoRA with its own optimizer state and
 *   activations in flight; the upload carries the token-weighted mean of the copies.
 * `held` counts what the edge holds for its users (HeldBytes); its peak goes with the upload.
 */
import { adapterFromNamedTensors, codeOf, type LoraAdapter, type ModelConfig, modelDims } from '@splitllm/model';
import { checkAdamWUpdate, FedAvg, type HeldBytes, LoraTrainState, trainStateBytes } from '@splitllm/federation';
import { peakRssBytes, resetPeakRss } from '@splitllm/onnx-runner';
import type { Incoming, RunManifest } from '@splitllm/wire';
import type { AdapterVersion, CloudLink, CompletedUser } from './cloud-link';
import { EdgeError } from './errors';
import type { Activity, EdgeMetrics, Logger } from './telemetry';
import { relayTurn, type TurnBlocks } from './turn';
import type { UserConn, UserQueue } from './user-queue';

export interface RoundRunnerOptions {
  manifest: RunManifest;
  config: ModelConfig;
  blocks: TurnBlocks;
  queue: UserQueue;
  link: CloudLink;
  metrics: EdgeMetrics;
  activity: Activity;
  log: Logger;
  stepTimeoutMs: number;
  /** the user's share of a turn: this per step, plus one more for the adapter (the turn deadline) */
  stepBudgetMs: number;
  /** a user that misses its turn deadline this many turns in a row sits out the next round */
  maxMisses: number;
  cloudTimeoutMs: number;
  /** the round trains from this global version: the edge is at it now */
  setVersion: (version: number) => void;
  /** the round is over: the cloud hears the edge's status */
  reportStatus: () => void;
  /** where what the edge holds for its users is counted */
  held: HeldBytes;
}

interface RoundState {
  round: number;
  version: number;
  /** the edge LoRA the round's users carry on ('hierarchical', 'sequential'); with 'sfl' each has its own */
  train: LoraTrainState;
  /** 'sfl': the copy of each user that completed its turn, by user, held until the upload */
  copies: Map<string, { train: LoraTrainState; release: () => void }>;
  /** 'sequential': the adapter the last accepted user left, where the next one starts */
  handoff?: LoraAdapter;
  adapters: AdapterVersion;
  current?: { userId: string; step: number; steps: number };
  completed: CompletedUser[];
  userBytes: number;
}

export class RoundRunner {
  private round?: RoundState;
  /** the users whose turns run now (one, unless the scheme is 'sfl') */
  private readonly training = new Set<UserConn>();
  private task: Promise<void> = Promise.resolve();

  constructor(private readonly o: RoundRunnerOptions) {}

  /** A round the cloud started; it runs after the ones before it (the cloud may announce the next one first). */
  schedule(m: Incoming<'cloudToEdge', 'round-start'>): void {
    this.task = this.task.then(() => this.run(m.round, m.version, m.usersPerEdge, m.stepsPerUser));
  }

  /** Ends the turn in progress now (the cloud's half of the round is gone). */
  abortTurn(err: Error): void {
    for (const u of this.training) u.fail(err);
  }

  /** The round in progress, as the status shows it. */
  summary() {
    const r = this.round;
    return r
      ? { number: r.round, version: r.version, current: r.current ?? null, completed: r.completed.map((c) => c.userId) }
      : null;
  }

  /** Never throws: a failed round is noted, and the cloud is told this edge sits it out. */
  private async run(round: number, version: number, usersPerEdge: number, stepsPerUser: number): Promise<void> {
    const { link, manifest, held } = this.o;
    const { scheme } = manifest.train;
    held.resetPeak();
    // the round's own peak RSS, not the lifetime one start-up sets (see the cloud's rounds.ts)
    resetPeakRss();
    const memory = () => ({ heldPeak: held.peak, peakRss: peakRssBytes() ?? null });
    let releaseShared: () => void = () => undefined;
    let state: RoundState | undefined;
    try {
      this.o.setVersion(version);
      const adapters = await link.adaptersAt(version);
      state = {
        round,
        version,
        train: new LoraTrainState(adapters.edge, manifest.train.adamw),
        copies: new Map(),
        adapters,
        completed: [],
        userBytes: 0,
      };
      if (scheme !== 'sfl') releaseShared = held.hold(trainStateBytes(adapters.edge));
      this.round = state;
      this.o.activity.roundStarted(round);
      this.o.log.info({ round, version, scheme }, 'round started');
      if (scheme === 'sfl') await this.allAtOnce(state, usersPerEdge, stepsPerUser);
      else await this.oneAfterAnother(state, usersPerEdge, stepsPerUser);
      await link.upload(round, state.completed, this.edgeResult(state), state.userBytes, memory());
    } catch (e) {
      this.o.activity.noteError(codeOf(e, 'ROUND_FAILED'), `round ${round}: ${(e as Error).message}`);
      // tell the cloud this edge sits the round out, rather than leave it waiting (best effort:
      // when the upload itself was refused, the cloud has already excluded this edge)
      if (!(e instanceof EdgeError && e.code === 'UPLOAD_REFUSED') && link.connected) {
        await link.upload(round, [], undefined, 0, memory()).catch(() => undefined);
      }
    } finally {
      releaseShared();
      for (const c of state?.copies.values() ?? []) c.release();
      this.round = undefined;
      this.o.reportStatus();
    }
  }

  /** 'hierarchical' and 'sequential': the users' turns one after another, on the round's one edge LoRA. */
  private async oneAfterAnother(state: RoundState, usersPerEdge: number, stepsPerUser: number): Promise<void> {
    const { queue, link } = this.o;
    const tried = new Set<string>();
    while (state.completed.length < usersPerEdge && link.connected) {
      const u = queue.nextWaiting(tried, state.round);
      if (!u) break;
      tried.add(u.userId);
      const done = await this.turn(state, u, stepsPerUser, state.train);
      if (done) state.completed.push(done);
      this.afterTurn(u);
    }
  }

  /**
   * 'sfl': up to `usersPerEdge` waiting users train at once, each on its own copy of the edge LoRA
   * (its own AdamW state, its own activations in flight while its step is at the cloud).
   */
  private async allAtOnce(state: RoundState, usersPerEdge: number, stepsPerUser: number): Promise<void> {
    const { queue } = this.o;
    const chosen: UserConn[] = [];
    const tried = new Set<string>();
    for (let u = queue.nextWaiting(tried, state.round); u && chosen.length < usersPerEdge; ) {
      chosen.push(u);
      tried.add(u.userId);
      u = queue.nextWaiting(tried, state.round);
    }
    await Promise.all(
      chosen.map(async (u) => {
        const copy = new LoraTrainState(state.adapters.edge, this.o.manifest.train.adamw);
        const release = this.o.held.hold(trainStateBytes(copy.adapter));
        let done: CompletedUser | undefined;
        try {
          done = await this.turn(state, u, stepsPerUser, copy, true);
        } finally {
          if (done) {
            state.completed.push(done);
            state.copies.set(u.userId, { train: copy, release });
          } else release();
        }
        this.afterTurn(u);
      }),
    );
  }

  /** The edge LoRA of the upload: the one the users carried on, or with 'sfl' the token-weighted mean of the copies. */
  private edgeResult(state: RoundState): LoraAdapter {
    if (this.o.manifest.train.scheme !== 'sfl') return state.train.adapter;
    const updates = state.completed.map((c) => ({
      from: c.userId,
      adapter: state.copies.get(c.userId)!.train.adapter,
      tokens: c.tokens,
    }));
    return updates.length > 0 ? new FedAvg().aggregate(state.adapters.edge, updates) : state.adapters.edge;
  }

  /** A turn is over: the user goes to the back of the queue and waits again. */
  private afterTurn(u: UserConn): void {
    this.o.queue.toBack(u.userId);
    if (!u.closed) u.state = 'waiting';
    this.o.queue.positionsChanged();
  }

  /**
   * The user let its turn run out. It goes to the back of the queue (as after any turn); after
   * `maxMisses` such turns in a row (until it completes one) it also sits out the next round, and hears so.
   */
  private missed(u: UserConn, round: number): void {
    u.misses++;
    if (u.misses < this.o.maxMisses) return;
    u.sitsOutThrough = round + 1;
    const message =
      `missed the turn deadline ${u.misses} turns in a row: no turn for the rest of round ${round} ` +
      `and in round ${round + 1}`;
    this.o.activity.noteError('SITTING_OUT', message, u.userId);
    // after the turn's own error and turn-end (relayTurn sends them once this returns)
    queueMicrotask(() => u.sendError('SITTING_OUT', message));
  }

  private async turn(
    state: RoundState,
    u: UserConn,
    steps: number,
    train: LoraTrainState,
    ownCopy = false,
  ): Promise<CompletedUser | undefined> {
    const { manifest, config } = this.o;
    const { round } = state;
    const bytesBefore = u.bytesIn + u.bytesOut;
    u.state = 'training';
    this.training.add(u);
    const current = { userId: u.userId, step: 0, steps };
    // with 'sfl' the status shows the turn that began last
    state.current = current;
    const sequential = manifest.train.scheme === 'sequential';
    const startAdapter = sequential ? state.handoff : undefined;
    try {
      return await relayTurn(
        {
          round,
          version: state.version,
          steps,
          batch: manifest.train.batch,
          seq: manifest.train.seq,
          codec: manifest.train.codec,
          labels: manifest.train.labels,
          nEmbd: modelDims(config).width,
          vocabSize: config.vocabSize,
          userTimeoutMs: this.o.stepTimeoutMs,
          turnBudgetMs: (steps + 1) * this.o.stepBudgetMs,
          cloudTimeoutMs: this.o.cloudTimeoutMs,
        },
        {
          user: u,
          cloud: this.o.link,
          blocks: this.o.blocks,
          train,
          ownCopy,
          held: this.o.held,
          startAdapter,
          acceptAdapter: (m) => {
            const a = adapterFromNamedTensors(manifest.lora, m.tensors);
            // against where this user started: the handed-on adapter, else the global one
            checkAdamWUpdate(startAdapter ?? state.adapters.user, a, manifest.train.adamw.lr, steps);
            return a;
          },
          log: this.o.log,
          onProgress: (step) => (current.step = step),
          onStep: (point) => this.o.activity.step(round, point),
          onDropped: (code, message) => {
            this.o.metrics.drops.inc();
            this.o.activity.noteError(code, message, u.userId);
            if (code === 'TURN_DEADLINE' || code === 'USER_TIMEOUT') this.missed(u, round);
          },
        },
      ).then((done) => {
        if (done) u.misses = 0;
        if (done && sequential) state.handoff = done.adapter;
        return done;
      });
    } finally {
      // what the turn cost on the user's socket, for the cloud's bytes-per-round figure
      state.userBytes += u.bytesIn + u.bytesOut - bytesBefore;
      if (state.current === current) state.current = undefined;
      this.training.delete(u);
    }
  }
}
