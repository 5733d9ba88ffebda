/**
 * The edge's rounds: when the cloud starts one, the edge trains up to `usersPerEdge` of its
 * waiting users, one after another in queue order (the paper's scheme), each for
 * `stepsPerUser` steps (turn.ts), then uploads the edge LoRA and the users' adapters. The edge
 * holds one set of activations and one edge LoRA whatever the number of waiting users.
 */
import { adapterFromNamedTensors, codeOf, type Gpt2Config } from '@splitllm/model';
import { checkAdamWUpdate, LoraTrainState } from '@splitllm/federation';
import type { Incoming, RunManifest } from '@splitllm/wire';
import type { AdapterVersion, CloudLink, CompletedUser } from './cloud-link';
import { EdgeError } from './errors';
import type { Activity, EdgeMetrics, Logger } from './telemetry';
import { relayTurn, type TurnBlocks } from './turn';
import type { UserConn, UserQueue } from './user-queue';

export interface RoundRunnerOptions {
  manifest: RunManifest;
  config: Gpt2Config;
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
}

interface RoundState {
  round: number;
  version: number;
  train: LoraTrainState;
  adapters: AdapterVersion;
  current?: { userId: string; step: number; steps: number };
  completed: CompletedUser[];
  userBytes: number;
}

export class RoundRunner {
  private round?: RoundState;
  /** the user whose turn runs now */
  private training?: UserConn;
  private task: Promise<void> = Promise.resolve();

  constructor(private readonly o: RoundRunnerOptions) {}

  /** A round the cloud started; it runs after the ones before it (the cloud may announce the next one first). */
  schedule(m: Incoming<'cloudToEdge', 'round-start'>): void {
    this.task = this.task.then(() => this.run(m.round, m.version, m.usersPerEdge, m.stepsPerUser));
  }

  /** Ends the turn in progress now (the cloud's half of the round is gone). */
  abortTurn(err: Error): void {
    this.training?.fail(err);
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
    const { queue, link, manifest } = this.o;
    try {
      this.o.setVersion(version);
      const adapters = await link.adaptersAt(version);
      const state: RoundState = {
        round,
        version,
        train: new LoraTrainState(adapters.edge, manifest.train.adamw),
        adapters,
        completed: [],
        userBytes: 0,
      };
      this.round = state;
      this.o.activity.roundStarted(round);
      this.o.log.info({ round, version }, 'round started');
      const tried = new Set<string>();
      while (state.completed.length < usersPerEdge && link.connected) {
        const u = queue.nextWaiting(tried, round);
        if (!u) break;
        tried.add(u.userId);
        const done = await this.turn(state, u, stepsPerUser);
        if (done) state.completed.push(done);
        queue.toBack(u.userId);
        if (!u.closed) u.state = 'waiting';
        queue.positionsChanged();
      }
      await link.upload(round, state.completed, state.train.adapter, state.userBytes);
    } catch (e) {
      this.o.activity.noteError(codeOf(e, 'ROUND_FAILED'), `round ${round}: ${(e as Error).message}`);
      // tell the cloud this edge sits the round out, rather than leave it waiting (best effort:
      // when the upload itself was refused, the cloud has already excluded this edge)
      if (!(e instanceof EdgeError && e.code === 'UPLOAD_REFUSED') && link.connected) {
        await link.upload(round, [], undefined, 0).catch(() => undefined);
      }
    } finally {
      this.round = undefined;
      this.o.reportStatus();
    }
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

  private async turn(state: RoundState, u: UserConn, steps: number): Promise<CompletedUser | undefined> {
    const { manifest, config } = this.o;
    const { round } = state;
    const bytesBefore = u.bytesIn + u.bytesOut;
    u.state = 'training';
    this.training = u;
    const current = { userId: u.userId, step: 0, steps };
    state.current = current;
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
          nEmbd: config.nEmbd,
          vocabSize: config.vocabSize,
          userTimeoutMs: this.o.stepTimeoutMs,
          turnBudgetMs: (steps + 1) * this.o.stepBudgetMs,
          cloudTimeoutMs: this.o.cloudTimeoutMs,
        },
        {
          user: u,
          cloud: this.o.link,
          blocks: this.o.blocks,
          train: state.train,
          acceptAdapter: (m) => {
            const a = adapterFromNamedTensors(manifest.lora, m.tensors);
            checkAdamWUpdate(state.adapters.user, a, manifest.train.adamw.lr, steps);
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
        return done;
      });
    } finally {
      // what the turn cost on the user's socket, for the cloud's bytes-per-round figure
      state.userBytes += u.bytesIn + u.bytesOut - bytesBefore;
      state.current = undefined;
      this.training = undefined;
    }
  }
}
