/**
 * Aggregation of LoRA adapters at the end of a round, and the checks an uploaded adapter must
 * pass before it may take part (DESIGN.md "Rounds" and "Trust").
 *
 * The strategy interface is deliberately small, in the spirit of Flower's `Strategy`: the cloud
 * collects one `AdapterUpdate` per participant (a user's blocks [0, k), an edge's [k, m), the
 * cloud's per-edge copy of [m, L)) and hands them with the current global adapter to
 * `aggregate`, which returns the next global version. Each update only holds the modules its
 * participant trained, so a strategy works module by module.
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

export interface AggregationStrategy {
  readonly name: string;
  /** Returns a new global adapter; must not mutate `global` or the updates. */
  aggregate(global: LoraAdapter, updates: readonly AdapterUpdate[]): LoraAdapter;
}
