/**
 * The global adapter's versions: the current one in memory, older ones from the store on demand
 * (generation: an edge lags by at most one version around a round's end), the tiers' parts of
 * the current one, and recording a new version (persisted first, then it becomes current).
 */
import { adapterSubset, cloneAdapter, type LoraAdapter, type SplitPlan } from '@splitllm/model';
import type { Registry } from 'prom-client';
import { collected } from './metrics';
import type { RoundInput, RoundRecord, RoundStore } from './store';

export type AdapterTier = 'user' | 'edge' | 'cloud';

export class GlobalVersions {
  private global: LoraAdapter;
  private last: RoundRecord;
  private older?: { version: number; adapter: LoraAdapter };

  constructor(
    private readonly store: RoundStore,
    private readonly plan: SplitPlan,
    private readonly nLayer: number,
    registry?: Registry,
  ) {
    this.last = store.latest();
    this.global = store.loadAdapter(this.last);
    if (registry) {
      collected(registry, 'splitllm_cloud_version', 'the current global adapter version', () => this.version);
      collected(
        registry,
        'splitllm_cloud_last_round_loss',
        'mean training loss of the last recorded round',
        () => this.last.loss ?? Number.NaN,
      );
    }
  }

  get version(): number {
    return this.last.version;
  }

  /** The record of the current version. */
  get latest(): RoundRecord {
    return this.last;
  }

  get adapter(): LoraAdapter {
    return this.global;
  }

  /** The current version's part for one tier: user [0, k), edge [k, m), cloud [m, L). */
  part(tier: AdapterTier): LoraAdapter {
    const { k, m } = this.plan;
    if (tier === 'user') return adapterSubset(this.global, 0, k);
    return tier === 'edge' ? adapterSubset(this.global, k, m) : adapterSubset(this.global, m, this.nLayer);
  }

  /**
   * The global adapter of a recorded version: the current one from memory, an older one from the
   * store (the last one read is kept); undefined for a version that was never recorded.
   */
  at(version: number): LoraAdapter | undefined {
    if (version === this.last.version) return this.global;
    if (this.older?.version === version) return this.older.adapter;
    if (!(version < this.last.version)) return undefined;
    const rec = this.store.round(version);
    if (!rec) return undefined;
    this.older = { version, adapter: this.store.loadAdapter(rec) };
    return this.older.adapter;
  }

  /** Persists the next version; only once this returns may anyone be told of it. */
  record(next: LoraAdapter, rec: RoundInput): RoundRecord {
    const recorded = this.store.commitRound(next, rec);
    this.global = cloneAdapter(next);
    this.last = recorded;
    return recorded;
  }
}
