/**
 * What the edge reports about itself: Prometheus metrics (prom-client, one Registry per server,
 * never the process-global one, so two edges in one process keep apart) and the recent activity
 * the operator's dashboard shows (steps, refused frames, users who left, the round's loss series).
 * A user leaving (a closed tab, a pause, the operator's Drop) is not an error: it is kept apart
 * from the refusals, so the dashboard can list it as a departure.
 *
 * Metric names and labels are a contract with dashboards and tests: keep them.
 */
import { Counter, Gauge, Registry } from 'prom-client';

export interface Logger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export class EdgeMetrics {
  readonly registry = new Registry();
  readonly wireBytes = new Counter({
    name: 'splitllm_edge_wire_bytes_total',
    help: 'bytes of protocol frames, by peer and direction',
    labelNames: ['peer', 'direction'] as const,
    registers: [this.registry],
  });
  readonly frameErrors = new Counter({
    name: 'splitllm_edge_frame_errors_total',
    help: 'frames answered with an error, by code',
    labelNames: ['code'] as const,
    registers: [this.registry],
  });
  readonly steps = new Counter({
    name: 'splitllm_edge_steps_total',
    help: 'edge-segment training steps',
    registers: [this.registry],
  });
  readonly tokens = new Counter({
    name: 'splitllm_edge_tokens_total',
    help: 'tokens trained',
    registers: [this.registry],
  });
  readonly drops = new Counter({
    name: 'splitllm_edge_users_dropped_total',
    help: 'users dropped from a round',
    registers: [this.registry],
  });
  readonly lastStepMs = new Gauge({
    name: 'splitllm_edge_last_step_ms',
    help: 'wall time of the last step (user frame in to gradient out)',
    registers: [this.registry],
  });

  constructor() {
    this.sampled('splitllm_process_resident_memory_bytes', 'resident set size of the edge process', () =>
      process.memoryUsage.rss(),
    );
  }

  /** A gauge read when /metrics is scraped (queue length, connection state). */
  sampled(name: string, help: string, read: () => number): void {
    new Gauge({
      name,
      help,
      registers: [this.registry],
      collect() {
        this.set(read());
      },
    });
  }

  /** Bytes of one frame to or from a peer. */
  bytes(peer: 'user' | 'cloud', direction: 'in' | 'out', n: number): void {
    this.wireBytes.inc({ peer, direction }, n);
  }

  render(): Promise<string> {
    return this.registry.metrics();
  }
}

/** One step of a user's turn as the operator's dashboard charts it. */
export interface LossPoint {
  userId: string;
  step: number;
  loss: number;
  tokens: number;
  ms: number;
  at: string;
}

/**
 * Where a step's time went on the edge, in ms (turn.ts): parts of LossPoint.ms, which also holds
 * the edge's decoding, checks and bookkeeping, so their sum never exceeds it.
 */
export interface StepTimes {
  /** blocks [k, m) forward */
  forwardMs: number;
  /** blocks [k, m) backward and the AdamW step on the edge LoRA */
  backwardMs: number;
  /** waiting for the cloud's answers (one with labels in the cloud, two with labels on the device) */
  cloudMs: number;
  /** waiting for the user's head-grad (labels on the device; 0 with labels in the cloud) */
  userMs: number;
}

/** A finished step as a turn reports it: the loss point and its times. */
export type StepPoint = LossPoint & StepTimes;

export interface StepRecord extends StepPoint {
  round: number;
  /** this step's number among all the steps this edge ran since it started (the chart's x) */
  n: number;
}

export interface ErrorRecord {
  at: string;
  code: string;
  message: string;
  userId?: string;
}

/**
 * A user who went: `left` on its own (a closed tab, a lost connection, a pause: `bye`), `removed`
 * by this edge's operator (Drop), or `replaced` by a new connection of its own (a reload).
 */
export type LeaveKind = 'left' | 'removed' | 'replaced';

export interface LeaveRecord {
  at: string;
  userId: string;
  kind: LeaveKind;
  /** the reason as the edge recorded it, e.g. "connection closed", "user left: paused by the user" */
  reason: string;
  /** the round whose turn it was in when it went (that turn was rolled back); null when not in a turn */
  round: number | null;
}

/** The reason the queue gives for an operator's Drop (UserQueue.drop) and for a reconnect (authenticate). */
const DROPPED_REASON = 'dropped by the operator';
const REPLACED_REASON = 'replaced by a new connection';
/** the turn's wording of a user that went mid-turn (turn.ts, onDropped) */
const MID_TURN = /^user dropped from round (\d+): (.*)$/s;
/** a second report of the same departure (the queue's, then the turn's) comes within this time */
const SAME_LEAVE_MS = 10_000;

const RECENT = 200;
/** a round's loss series keeps at most this many steps (the dashboard's chart) */
const MAX_LOSS_POINTS = 10_000;

/** The recent steps and refusals, and the loss series of the current round (or the last one while idle). */
export class Activity {
  readonly recentSteps: StepRecord[] = [];
  readonly recentErrors: ErrorRecord[] = [];
  readonly recentLeaves: LeaveRecord[] = [];
  lossSeries: { round: number; points: LossPoint[] } | null = null;
  /** steps since the edge started */
  private stepCount = 0;

  constructor(
    private readonly metrics: EdgeMetrics,
    private readonly log: Logger,
  ) {}

  /**
   * A refused frame or a failed step: counted by code, kept for the dashboard, logged. A turn
   * that ended because its user went (USER_GONE) is counted too (the metric is a contract), but
   * kept as a departure, not as an error.
   */
  noteError(code: string, message: string, userId?: string): void {
    if (code === 'USER_GONE' && userId !== undefined) {
      this.metrics.frameErrors.inc({ code });
      const mid = MID_TURN.exec(message);
      this.noteLeave(userId, mid ? mid[2] : message, mid ? Number(mid[1]) : null);
      return;
    }
    this.recentErrors.push({ at: new Date().toISOString(), code, message, userId });
    if (this.recentErrors.length > RECENT) this.recentErrors.shift();
    this.metrics.frameErrors.inc({ code });
    this.log.warn({ code, err: message, userId }, 'frame rejected');
  }

  /**
   * A user went, for `reason` (the queue's words: "connection closed", "user left: <why>",
   * "dropped by the operator", ...), during its turn in `round` or (null) while not in a turn.
   * The same departure reported twice (by the queue as the connection goes, then by the turn it
   * ended) is kept once, with the round of the turn.
   */
  noteLeave(userId: string, reason: string, round: number | null = null): void {
    const now = Date.now();
    const kind: LeaveKind = reason.startsWith(DROPPED_REASON)
      ? 'removed'
      : reason.startsWith(REPLACED_REASON)
        ? 'replaced'
        : 'left';
    for (let i = this.recentLeaves.length - 1; i >= 0; i--) {
      const l = this.recentLeaves[i];
      if (now - Date.parse(l.at) > SAME_LEAVE_MS) break;
      if (l.userId !== userId) continue;
      // the operator's Drop is the reason, whatever the connection said as it closed
      if (l.kind === 'removed' || l.kind === kind) {
        if (round !== null) l.round = round;
        return;
      }
    }
    this.recentLeaves.push({ at: new Date(now).toISOString(), userId, kind, reason, round });
    if (this.recentLeaves.length > RECENT) this.recentLeaves.shift();
    this.log.info({ userId, kind, reason, round }, 'user left');
  }

  roundStarted(round: number): void {
    this.lossSeries = { round, points: [] };
  }

  step(round: number, point: StepPoint): void {
    this.metrics.steps.inc();
    this.metrics.tokens.inc(point.tokens);
    this.metrics.lastStepMs.set(point.ms);
    this.recentSteps.push({ round, n: ++this.stepCount, ...point });
    if (this.recentSteps.length > RECENT) this.recentSteps.shift();
    // the chart's series keeps the loss point only: up to MAX_LOSS_POINTS of them go out on every poll
    const { userId, step, loss, tokens, ms, at } = point;
    if (this.lossSeries?.round === round && this.lossSeries.points.length < MAX_LOSS_POINTS)
      this.lossSeries.points.push({ userId, step, loss, tokens, ms, at });
  }
}
