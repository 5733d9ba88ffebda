import { FedAvg } from './fedavg';
import type { AggregationStrategy } from './strategy';

/** Aggregation strategies by the name a run's settings give. */
export const AGGREGATION_STRATEGIES: Record<string, () => AggregationStrategy> = {
  fedavg: () => new FedAvg(),
};
