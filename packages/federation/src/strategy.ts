/**
 * Aggregation strategies, in the spirit of Flower's `Strategy`: a strategy owns the round. It
 * decides which edges take part (`selectEdges`), what the round asks of them (`configureRound`:
 * what the round-start carries) and how their updates become the next global version
 * (`aggregate`). The cloud asks and carries the answers out, so a new strategy is a new file and
 * a registry entry, not an edit of the cloud.
 *
 * The cloud collects one `AdapterUpdate` per participant (a user's blocks [0, k), an edge's
 * [k, m), the cloud's per-edge copy of [m, L)) and hands them with the current global adapter
 * to `aggregate`. Each update only holds the modules its participant trained, so a strategy
 * works module by module. The upload checks (update-checks.ts) run before any update gets here.
 *
 * Browser-safe: no Node imports.
 */
import type { LoraAdapter } from '@splitllm/model';

export interface AdapterUpdate {
  /** Who sent it, e.g. 'user:u3', 'edge:e1', 'cloud:e1'; used for ordering and messages. */
  from: string;
  /** Partial adapter: only the modules that participant trained. */
  adapter: LoraAdapter;
  /** Tokens trained this round: the FedAvg weight. */
  tokens: number;
}

/** What the cloud knows of one connected edge when a round could start. */
export interface EdgeCandidate {
  edgeId: string;
  /** users waiting at the edge, as it last reported */
  waiting: number;
}

/** The run's settings a strategy decides from (the operator's command line). */
export interface RoundSettings {
  /** a round needs this many edges with waiting users ... */
  minEdges: number;
  /** ... and this many waiting users in all */
  minUsers: number;
  usersPerEdge: number;
  stepsPerUser: number;
  /** the AdamW learning rate of the run */
  lr: number;
}

/** What one round asks of every edge in it. */
export interface RoundConfig {
  /** users an edge trains, one after another, in this round */
  usersPerEdge: number;
  /** steps each of those users trains */
  stepsPerUser: number;
  /** the learning rate of this round's steps (the update-norm bound is computed from it) */
  lr: number;
}

export interface AggregationStrategy {
  readonly name: string;
  /**
   * The edges that take part in round `round`, chosen among `edges` (the connected ones, in
   * registration order). An empty list: no round now; the cloud asks again when an edge reports.
   */
  selectEdges(round: number, edges: readonly EdgeCandidate[], settings: RoundSettings): string[];
  /** The configuration of round `round` (what its round-start carries). */
  configureRound(round: number, settings: RoundSettings): RoundConfig;
  /** Returns a new global adapter; must not mutate `global` or the updates. */
  aggregate(global: LoraAdapter, updates: readonly AdapterUpdate[]): LoraAdapter;
  /**
   * What the last `aggregate` call refused and noted (a strategy that never refuses may leave it
   * out). Set by every call, so it describes the adapter that call returned.
   */
  readonly lastReport?: AggregationReport;
}

/** Why a strategy left an update out of the aggregate. */
export type AggregationRefusalCode =
  /** the validation gate: the update raised the held-out loss by more than the margin */
  | 'GATE_LOSS'
  /** the validation gate: the held-out loss with the update is not a finite number */
  | 'GATE_NOT_FINITE';

export interface AggregationRefusal {
  /** the refused update's `from` ('user:u3', 'edge:e1', 'cloud:e1') */
  from: string;
  code: AggregationRefusalCode;
  reason: string;
  /** the held-out loss of the global adapter the round started from (nats/token) */
  globalLoss?: number;
  /** the held-out loss of the global with this update's modules substituted */
  loss?: number;
}

/** What one aggregation did besides its result: refusals and notes (a fallback taken, a clip). */
export interface AggregationReport {
  refused: AggregationRefusal[];
  notes: string[];
}

export interface AggregationResult extends AggregationReport {
  adapter: LoraAdapter;
}

/** Runs `strategy.aggregate` and returns its adapter with the report of that call (empty when it keeps none). */
export function aggregateWithReport(
  strategy: AggregationStrategy,
  global: LoraAdapter,
  updates: readonly AdapterUpdate[],
): AggregationResult {
  const adapter = strategy.aggregate(global, updates);
  const r = strategy.lastReport;
  return { adapter, refused: r ? [...r.refused] : [], notes: r ? [...r.notes] : [] };
}
