import { FedAvg } from './fedavg';
import { type AdapterScore, ClipMedian, CoordinateMedian, TrimmedMean, ValidationGate } from './robust';
import type { AggregationStrategy } from './strategy';

/** What a strategy may need from the cloud: the gate's scorer and margin. */
export interface StrategyContext {
  /** held-out loss (nats/token) of a whole adapter */
  score?: AdapterScore;
  /** the gate's margin in nats/token (default DEFAULT_GATE_MARGIN) */
  margin?: number;
}

function gate(name: string, inner: FedAvg, ctx?: StrategyContext): ValidationGate {
  if (!ctx?.score) {
    throw new Error(
      `aggregation strategy "${name}" needs ctx.score (the held-out loss of a whole adapter) to score updates`,
    );
  }
  return new ValidationGate(inner, ctx.score, ctx.margin);
}

/** Aggregation strategies by the name a run's settings give. */
export const AGGREGATION_STRATEGIES: Record<string, (ctx?: StrategyContext) => AggregationStrategy> = {
  fedavg: () => new FedAvg(),
  'clip-median': () => new ClipMedian(),
  'trimmed-mean': () => new TrimmedMean(),
  'coordinate-median': () => new CoordinateMedian(),
  'gate-fedavg': (ctx) => gate('gate-fedavg', new FedAvg(), ctx),
  'gate-clip-median': (ctx) => gate('gate-clip-median', new ClipMedian(), ctx),
};

export const AGGREGATION_NAMES: readonly string[] = Object.keys(AGGREGATION_STRATEGIES);

/** The strategies that score updates on held-out text (the cloud provides `score` for them). */
export const needsScore = (name: string): boolean => name.startsWith('gate-');

/**
 * The strategy a run uses unless told otherwise, picked from the measured table in
 * docs/reliability.md: the validation gate is the only strategy that stopped either poisoning
 * attack with one user per edge per round, and clipping to the median change bounds whatever
 * passes the gate (an attack aimed at the users' text rather than the public held-out text).
 */
export const DEFAULT_AGGREGATION = 'gate-clip-median';

/** The strategy called `name`; throws for an unknown name (listing the known ones) or a gate without `score`. */
export function createStrategy(name: string, ctx?: StrategyContext): AggregationStrategy {
  const make = Object.hasOwn(AGGREGATION_STRATEGIES, name) ? AGGREGATION_STRATEGIES[name] : undefined;
  if (!make) throw new Error(`unknown aggregation strategy "${name}" (known: ${AGGREGATION_NAMES.join(', ')})`);
  return make(ctx);
}
