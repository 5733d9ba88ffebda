import { type LoraAdapter, type LoraPair, AdapterCheckError, cloneLoraConfig, cloneTensorCopy } from '@splitllm/model';
import type {
  AdapterUpdate,
  AggregationReport,
  AggregationStrategy,
  EdgeCandidate,
  RoundConfig,
  RoundSettings,
} from './strategy';
import { checkConfig, checkPairShape } from './update-checks';

/**
 * The checks every aggregation makes of its inputs (the upload checks ran before, these guard
 * the strategy's own contract): finite token counts >= 0, the global's LoRA config, only modules
 * the global has, with its shapes.
 */
export function checkUpdates(global: LoraAdapter, updates: readonly AdapterUpdate[], name: string): void {
  for (const u of updates) {
    if (!(Number.isFinite(u.tokens) && u.tokens >= 0)) {
      throw new RangeError(`${name}: update from ${u.from} has tokens ${u.tokens}, expected a finite number >= 0`);
    }
    checkConfig(global, u.adapter, `${name}: update from ${u.from}`);
    for (const [path, pair] of u.adapter.layers) {
      const g = global.layers.get(path);
      if (!g) {
        throw new AdapterCheckError(
          'ADAPTER_MODULE',
          `${name}: update from ${u.from} has module "${path}", which the global adapter lacks`,
        );
      }
      checkPairShape(path, pair, g, `${name}: update from ${u.from}`);
    }
  }
}

/**
 * The updates that carry weight (tokens > 0), sorted by `from` (stable: equal `from`s keep their
 * given order), so a result never depends on the order in which uploads arrived.
 */
export function weighted(updates: readonly AdapterUpdate[]): AdapterUpdate[] {
  return [...updates].filter((u) => u.tokens > 0).sort((a, b) => (a.from < b.from ? -1 : a.from > b.from ? 1 : 0));
}

/**
 * Combines one half (A or B) of one module over its contributors into `out` (float64): the part a
 * strategy chooses. `values[j]` is contributor j's array, `tokens[j]` its weight.
 */
export type CombineHalf = (values: readonly Float32Array[], tokens: readonly number[], out: Float64Array) => void;

/** The token-weighted mean of each coordinate. */
export const weightedMean: CombineHalf = (values, tokens, out) => {
  let total = 0;
  for (const w of tokens) total += w;
  out.fill(0);
  for (let j = 0; j < values.length; j++) {
    const src = values[j];
    const w = tokens[j];
    for (let i = 0; i < out.length; i++) out[i] += w * src[i];
  }
  for (let i = 0; i < out.length; i++) out[i] /= total;
};

/**
 * The module-by-module skeleton every strategy here shares: each module of the global becomes
 * `combine(module, contributors)` over the updates (already checked and ordered) that hold it;
 * a module nobody updated keeps the global value. A non-finite result throws: one NaN would
 * silently poison the global for every later round.
 */
export function combineModules(
  global: LoraAdapter,
  ordered: readonly AdapterUpdate[],
  name: string,
  combine: (path: string, contributors: readonly AdapterUpdate[]) => CombineHalf,
): LoraAdapter {
  const layers = new Map<string, LoraPair>();
  for (const [path, g] of global.layers) {
    const contributors = ordered.filter((u) => u.adapter.layers.has(path));
    if (contributors.length === 0) {
      layers.set(path, { A: cloneTensorCopy(g.A), B: cloneTensorCopy(g.B) });
      continue;
    }
    const how = combine(path, contributors);
    const tokens = contributors.map((u) => u.tokens);
    const pair = {} as LoraPair;
    for (const half of ['A', 'B'] as const) {
      const acc = new Float64Array(g[half].data.length);
      how(
        contributors.map((u) => u.adapter.layers.get(path)![half].data),
        tokens,
        acc,
      );
      const out = new Float32Array(acc.length);
      for (let i = 0; i < acc.length; i++) {
        const v = acc[i];
        if (!Number.isFinite(v)) {
          throw new AdapterCheckError(
            'ADAPTER_NOT_FINITE',
            `${name}: "${path}" ${half}[${i}] is not finite after aggregating`,
          );
        }
        out[i] = v;
      }
      pair[half] = { shape: [...g[half].shape], data: out };
    }
    layers.set(path, pair);
  }
  return { config: cloneLoraConfig(global.config), layers };
}

/**
 * FedAvg (McMahan et al.) on the LoRA factors.
 *
 * Selection: every edge with waiting users, once at least `minEdges` such edges and `minUsers`
 * waiting users in all are there (none before). Configuration: the run's settings, the same for
 * every round. Aggregation: each module's A and B become the token-weighted mean over the
 * updates that contain that module. Modules nobody updated (or only updates with 0 tokens) keep
 * the global value. Accumulates in float64 and visits updates sorted by `from`, so the result
 * does not depend on the order in which uploads arrived.
 *
 * The robust strategies (robust.ts) extend it: the same selection and configuration, another
 * `aggregate`.
 */
export class FedAvg implements AggregationStrategy {
  readonly name: string = 'fedavg';
  lastReport: AggregationReport = { refused: [], notes: [] };

  selectEdges(_round: number, edges: readonly EdgeCandidate[], settings: RoundSettings): string[] {
    const ready = edges.filter((e) => e.waiting > 0);
    if (ready.length < settings.minEdges) return [];
    if (ready.reduce((n, e) => n + e.waiting, 0) < settings.minUsers) return [];
    return ready.map((e) => e.edgeId);
  }

  configureRound(_round: number, settings: RoundSettings): RoundConfig {
    return { usersPerEdge: settings.usersPerEdge, stepsPerUser: settings.stepsPerUser, lr: settings.lr };
  }

  aggregate(global: LoraAdapter, updates: readonly AdapterUpdate[]): LoraAdapter {
    checkUpdates(global, updates, this.name);
    this.lastReport = { refused: [], notes: [] };
    return combineModules(global, weighted(updates), this.name, () => weightedMean);
  }
}
