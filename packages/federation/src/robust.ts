/**
 * Robust aggregation: strategies that bound what one participant can do to the global adapter.
 * Each keeps FedAvg's selection and configuration and changes only `aggregate`:
 *
 * - clip-median: every update's change (update - global, over the modules it holds) is scaled
 *   down to the median change norm of its group (the round's updates holding the same module
 *   set: the users' parts, the edges' parts, the cloud copies), then the token-weighted mean;
 *   nobody moves the model further than the group's typical participant. A group of one (one
 *   user per round) is its own median: clipping alone does not help there, the gate does.
 * - trimmed-mean: per coordinate, the largest and smallest 20% (at least one each side) of the
 *   contributors' values are dropped, then the token-weighted mean of the rest; a module with
 *   fewer than 3 contributors gets the token-weighted mean (noted in the report).
 * - coordinate-median: per coordinate, the median of the contributors' values (unweighted);
 *   fewer than 3 contributors: the token-weighted mean (noted).
 * - gate-*: the validation gate in front of another strategy (see ValidationGate).
 *
 * Browser-safe: no Node imports.
 */
import type { LoraAdapter, LoraPair } from '@splitllm/model';
import { type CombineHalf, checkUpdates, combineModules, FedAvg, weighted, weightedMean } from './fedavg';
import { changeNorm } from './update-checks';
import type {
  AdapterUpdate,
  AggregationRefusal,
  AggregationReport,
  AggregationStrategy,
  EdgeCandidate,
  RoundConfig,
  RoundSettings,
} from './strategy';

/** The fewest contributors a module needs for the trimmed mean or the coordinate median. */
export const ROBUST_MIN_CONTRIBUTORS = 3;
/** The share of contributors the trimmed mean drops at each end (at least one). */
export const TRIM_BETA = 0.2;

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 === 1 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/** `global + scale * (update - global)` over the update's modules. */
function scaleChange(global: LoraAdapter, update: LoraAdapter, scale: number): LoraAdapter {
  const layers = new Map<string, LoraPair>();
  for (const [path, pair] of update.layers) {
    const g = global.layers.get(path)!;
    const out = {} as LoraPair;
    for (const half of ['A', 'B'] as const) {
      const u = pair[half].data;
      const gd = g[half].data;
      const data = new Float32Array(u.length);
      for (let i = 0; i < u.length; i++) data[i] = gd[i] + scale * (u[i] - gd[i]);
      out[half] = { shape: [...pair[half].shape], data };
    }
    layers.set(path, out);
  }
  return { config: update.config, layers };
}

const moduleSetKey = (a: LoraAdapter) => [...a.layers.keys()].sort().join('\n');

/** FedAvg after clipping every change to its group's median change norm. */
export class ClipMedian extends FedAvg {
  override readonly name: string = 'clip-median';

  override aggregate(global: LoraAdapter, updates: readonly AdapterUpdate[]): LoraAdapter {
    checkUpdates(global, updates, this.name);
    const ordered = weighted(updates);
    const groups = new Map<string, AdapterUpdate[]>();
    for (const u of ordered) {
      const key = moduleSetKey(u.adapter);
      groups.set(key, [...(groups.get(key) ?? []), u]);
    }
    const notes: string[] = [];
    const clipped = new Map<AdapterUpdate, AdapterUpdate>();
    for (const group of groups.values()) {
      const norms = group.map((u) => changeNorm(global, u.adapter));
      const bound = median(norms);
      group.forEach((u, j) => {
        if (!(norms[j] > bound)) return;
        clipped.set(u, { ...u, adapter: scaleChange(global, u.adapter, bound / norms[j]) });
        notes.push(
          `${this.name}: ${u.from}'s change norm ${norms[j].toPrecision(4)} clipped to ${bound.toPrecision(4)}, ` +
            `the median of the ${group.length} updates holding its modules`,
        );
      });
    }
    const adapter = combineModules(
      global,
      ordered.map((u) => clipped.get(u) ?? u),
      this.name,
      () => weightedMean,
    );
    this.lastReport = { refused: [], notes };
    return adapter;
  }
}

/**
 * The per-coordinate rule of a strategy that needs ROBUST_MIN_CONTRIBUTORS, the token-weighted
 * mean for modules with fewer, with one note per distinct set of too few contributors.
 */
function perCoordinate(
  name: string,
  rule: CombineHalf,
  global: LoraAdapter,
  updates: readonly AdapterUpdate[],
): { adapter: LoraAdapter; notes: string[] } {
  const fallbacks = new Map<string, number>();
  const adapter = combineModules(global, weighted(updates), name, (_path, contributors) => {
    if (contributors.length >= ROBUST_MIN_CONTRIBUTORS) return rule;
    const who = contributors.map((u) => u.from).join(', ');
    fallbacks.set(who, (fallbacks.get(who) ?? 0) + 1);
    return weightedMean;
  });
  const notes = [...fallbacks].map(
    ([who, modules]) =>
      `${name}: ${modules} module(s) held by fewer than ${ROBUST_MIN_CONTRIBUTORS} updates (${who}): ` +
      'token-weighted mean',
  );
  return { adapter, notes };
}

/** Per coordinate, drops the `t` smallest and `t` largest values, then the token-weighted mean of the rest. */
export function trimmedMeanHalf(beta = TRIM_BETA): CombineHalf {
  return (values, tokens, out) => {
    const n = values.length;
    const t = Math.max(1, Math.floor(beta * n));
    if (n - 2 * t < 1) throw new RangeError(`trimmed mean: ${n} values cannot lose ${t} at each end`);
    const order = Array.from({ length: n }, (_, j) => j);
    const col = new Float64Array(n);
    for (let i = 0; i < out.length; i++) {
      for (let j = 0; j < n; j++) col[j] = values[j][i];
      // ties broken by contributor order (sorted by `from`): the result is deterministic
      order.sort((a, b) => col[a] - col[b] || a - b);
      let sum = 0;
      let w = 0;
      for (let k = t; k < n - t; k++) {
        const j = order[k];
        sum += tokens[j] * col[j];
        w += tokens[j];
      }
      out[i] = sum / w;
    }
  };
}

/** Per coordinate, the (unweighted) median of the values. */
export const coordinateMedianHalf: CombineHalf = (values, _tokens, out) => {
  const n = values.length;
  const col = new Float64Array(n);
  for (let i = 0; i < out.length; i++) {
    for (let j = 0; j < n; j++) col[j] = values[j][i];
    col.sort();
    out[i] = n % 2 === 1 ? col[(n - 1) / 2] : (col[n / 2 - 1] + col[n / 2]) / 2;
  }
};

export class TrimmedMean extends FedAvg {
  override readonly name: string = 'trimmed-mean';

  override aggregate(global: LoraAdapter, updates: readonly AdapterUpdate[]): LoraAdapter {
    checkUpdates(global, updates, this.name);
    const { adapter, notes } = perCoordinate(this.name, trimmedMeanHalf(), global, updates);
    this.lastReport = { refused: [], notes };
    return adapter;
  }
}

export class CoordinateMedian extends FedAvg {
  override readonly name: string = 'coordinate-median';

  override aggregate(global: LoraAdapter, updates: readonly AdapterUpdate[]): LoraAdapter {
    checkUpdates(global, updates, this.name);
    const { adapter, notes } = perCoordinate(this.name, coordinateMedianHalf, global, updates);
    this.lastReport = { refused: [], notes };
    return adapter;
  }
}

/** Held-out loss (nats/token) of a whole adapter; the gate's measure of an update. */
export type AdapterScore = (candidate: LoraAdapter) => number;

/**
 * The margin (nats/token) by which one update may raise the held-out loss before the gate
 * refuses it. Measured on the shipped model with the cloud's default settings
 * (apps/cloud-server/scripts/gate-figures.ts): one honest user's 20 steps move the Moby-Dick
 * held-out loss by at most +0.003 nats through its user part and +0.032 through the edge or the
 * cloud part (users train on other text, so an honest update may raise it a little); the noise
 * attack at 0.99x the norm bound raises it by +2.6 and the negative of the honest update at the
 * bound by +3.0. 0.25 is 8x the largest honest change and 10x below the attacks; 0.05 would sit
 * within 2x of an honest edge part, which grows with the steps an edge takes in a round.
 */
export const DEFAULT_GATE_MARGIN = 0.25;

/** `global` with `update`'s modules substituted (arrays shared, not copied: only read). */
export function substitute(global: LoraAdapter, update: LoraAdapter): LoraAdapter {
  const layers = new Map(global.layers);
  for (const [path, pair] of update.layers) layers.set(path, pair);
  return { config: global.config, layers };
}

/** The held-out losses the gate saw in its last aggregation. */
export interface GateReport extends AggregationReport {
  globalLoss: number;
  scored: Array<{ from: string; loss: number }>;
}

/**
 * The validation gate: the cloud holds the whole model, so it can score what an update does.
 * The gate scores the global adapter on held-out text, then, for each update, the global with that
 * update's modules substituted, and refuses an update whose loss exceeds the global's by more
 * than `margin` (or is not finite). Refused updates take no part; the others go to the inner
 * strategy. Each candidate costs one held-out evaluation of the whole model.
 */
export class ValidationGate implements AggregationStrategy {
  readonly name: string;
  lastReport: GateReport = { refused: [], notes: [], globalLoss: Number.NaN, scored: [] };

  constructor(
    readonly inner: FedAvg,
    private readonly score: AdapterScore,
    readonly margin = DEFAULT_GATE_MARGIN,
  ) {
    if (!(Number.isFinite(margin) && margin >= 0)) throw new RangeError(`gate margin must be >= 0, got ${margin}`);
    this.name = `gate-${inner.name}`;
  }

  selectEdges(round: number, edges: readonly EdgeCandidate[], settings: RoundSettings): string[] {
    return this.inner.selectEdges(round, edges, settings);
  }

  configureRound(round: number, settings: RoundSettings): RoundConfig {
    return this.inner.configureRound(round, settings);
  }

  aggregate(global: LoraAdapter, updates: readonly AdapterUpdate[]): LoraAdapter {
    checkUpdates(global, updates, this.name);
    const globalLoss = this.score(global);
    if (!Number.isFinite(globalLoss)) {
      throw new RangeError(`${this.name}: the held-out loss of the global adapter is ${globalLoss}`);
    }
    const refused: AggregationRefusal[] = [];
    const scored: Array<{ from: string; loss: number }> = [];
    const accepted: AdapterUpdate[] = [];
    for (const u of weighted(updates)) {
      const loss = this.score(substitute(global, u.adapter));
      scored.push({ from: u.from, loss });
      if (!Number.isFinite(loss)) {
        refused.push({
          from: u.from,
          code: 'GATE_NOT_FINITE',
          reason: `the held-out loss with this update is ${loss}`,
          globalLoss,
          loss,
        });
      } else if (loss > globalLoss + this.margin) {
        refused.push({
          from: u.from,
          code: 'GATE_LOSS',
          reason:
            `the held-out loss with this update is ${loss.toFixed(4)}, the global's ${globalLoss.toFixed(4)}: ` +
            `+${(loss - globalLoss).toFixed(4)} nats exceeds the margin ${this.margin}`,
          globalLoss,
          loss,
        });
      } else {
        accepted.push(u);
      }
    }
    const adapter = this.inner.aggregate(global, accepted);
    const notes = [
      `${this.name}: global held-out loss ${globalLoss.toFixed(4)}; ${scored.length} update(s) scored, ` +
        `${refused.length} refused`,
      ...this.inner.lastReport.notes,
    ];
    this.lastReport = { refused, notes, globalLoss, scored };
    return adapter;
  }
}
