import { type LoraAdapter, type LoraPair, AdapterCheckError, cloneLoraConfig, cloneTensorCopy } from '@splitllm/model';
import type { AdapterUpdate, AggregationStrategy, EdgeCandidate, RoundConfig, RoundSettings } from './strategy';
import { checkConfig, checkPairShape } from './update-checks';

/**
 * FedAvg (McMahan et al.) on the LoRA factors.
 *
 * Selection: every edge with waiting users, once at least `minEdges` such edges and `minUsers`
 * waiting users in all are there (none before). Configuration: the run's settings, the same for
 * every round. Aggregation: each module's A and B become the token-weighted mean over the
 * updates that contain that module. Modules nobody updated (or only updates with 0 tokens) keep
 * the global value. Accumulates in float64 and visits updates sorted by `from`, so the result
 * does not depend on the order in which uploads arrived.
 */
export class FedAvg implements AggregationStrategy {
  readonly name = 'fedavg';

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
    for (const u of updates) {
      if (!(Number.isFinite(u.tokens) && u.tokens >= 0)) {
        throw new RangeError(`fedavg: update from ${u.from} has tokens ${u.tokens}, expected a finite number >= 0`);
      }
      checkConfig(global, u.adapter, `fedavg: update from ${u.from}`);
      for (const [path, pair] of u.adapter.layers) {
        const g = global.layers.get(path);
        if (!g) {
          throw new AdapterCheckError(
            'ADAPTER_MODULE',
            `fedavg: update from ${u.from} has module "${path}", which the global adapter lacks`,
          );
        }
        checkPairShape(path, pair, g, `fedavg: update from ${u.from}`);
      }
    }
    // stable sort: equal `from`s keep their given order
    const ordered = [...updates]
      .filter((u) => u.tokens > 0)
      .sort((a, b) => (a.from < b.from ? -1 : a.from > b.from ? 1 : 0));

    const layers = new Map<string, LoraPair>();
    for (const [path, g] of global.layers) {
      const contributors = ordered.filter((u) => u.adapter.layers.has(path));
      if (contributors.length === 0) {
        layers.set(path, { A: cloneTensorCopy(g.A), B: cloneTensorCopy(g.B) });
        continue;
      }
      let total = 0;
      for (const u of contributors) total += u.tokens;
      const pair = {} as LoraPair;
      for (const half of ['A', 'B'] as const) {
        const acc = new Float64Array(g[half].data.length);
        for (const u of contributors) {
          const src = u.adapter.layers.get(path)![half].data;
          const w = u.tokens;
          for (let i = 0; i < acc.length; i++) acc[i] += w * src[i];
        }
        const out = new Float32Array(acc.length);
        for (let i = 0; i < acc.length; i++) {
          const v = acc[i] / total;
          // one NaN upload would silently poison the global for every later round
          if (!Number.isFinite(v)) {
            throw new AdapterCheckError(
              'ADAPTER_NOT_FINITE',
              `fedavg: "${path}" ${half}[${i}] is not finite after averaging`,
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
}
