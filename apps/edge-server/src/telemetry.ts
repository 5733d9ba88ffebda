/**
 * What the edge reports about itself: Prometheus metrics (prom-client, one Registry per server,
 * never the process-global one, so two edges in one process keep apart) and the recent activity
 * the operator's dashboard shows (steps, refused frames, the round's loss series).
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

export interface StepRecord {
  round: number;
  userId: string;
  step: number;
  loss: number;
  tokens: number;
  ms: number;
  at: string;
}

/** One step of a round as the operator's dashboard charts it. */
export type LossPoint = Omit<StepRecord, 'round'>;

export interface ErrorRecord {
  at: string;
  code: string;
  message: string;
  userId?: string;
}

const RECENT = 200;
/** a round's loss series keeps at most this many steps (the dashboard's chart) */
const MAX_LOSS_POINTS = 10_000;

/** The recent steps and refusals, and the loss series of the current round (or the last one while idle). */
export class Activity {
  readonly recentSteps: StepRecord[] = [];
  readonly recentErrors: ErrorRecord[] = [];
  lossSeries: { round: number; points: LossPoint[] } | null = null;

  constructor(
    private readonly metrics: EdgeMetrics,
    private readonly log: Logger,
  ) {}

  /** A refused frame or a failed step: counted by code, kept for the dashboard, logged. */
  noteError(code: string, message: string, userId?: string): void {
    this.recentErrors.push({ at: new Date().toISOString(), code, message, userId });
    if (this.recentErrors.length > RECENT) this.recentErrors.shift();
    this.metrics.frameErrors.inc({ code });
    this.log.warn({ code, err: message, userId }, 'frame rejected');
  }

  roundStarted(round: number): void {
    this.lossSeries = { round, points: [] };
  }

  step(round: number, point: LossPoint): void {
    this.metrics.steps.inc();
    this.metrics.tokens.inc(point.tokens);
    this.metrics.lastStepMs.set(point.ms);
    this.recentSteps.push({ round, ...point });
    if (this.recentSteps.length > RECENT) this.recentSteps.shift();
    if (this.lossSeries?.round === round && this.lossSeries.points.length < MAX_LOSS_POINTS)
      this.lossSeries.points.push(point);
  }
}
