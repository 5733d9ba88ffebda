/**
 * The global adapter's versions: the current one in memory, older ones from the store on demand
 * (generation: an edge lags by at most one version around a round's end), the tiers' parts of
 * the current one, and recording a new version (persisted first, then it becomes current), after
 * which the retention policy deletes the adapter directories of versions it no longer keeps.
 */
import { adapterSubset, CodedError, cloneAdapter, type LoraAdapter, type SplitPlan } from '@splitllm/model';
import type { Registry } from 'prom-client';
import { CloudConfigError } from './errors';
import { collected } from './metrics';
import type { RoundInput, RoundRecord, RoundStore } from './store';

export type AdapterTier = 'user' | 'edge' | 'cloud';

/**
 * Which versions keep their adapter directory. The latest and the one before it are always kept
 * whatever the setting (see retainedVersions); the others keep only their database row.
 */
export interface RetentionPolicy {
  /** the newest this many versions (0: keep every version, no retention at all) */
  keepLast: number;
  /** also the first version recorded in each hour of the run (hours counted from version 0) */
  keepHourly: boolean;
}

/** A version a day costs 24 hourly directories plus the last 20, whatever the round rate. */
export const DEFAULT_RETENTION: RetentionPolicy = { keepLast: 20, keepHourly: true };

const HOUR_MS = 3_600_000;

/** A version whose adapter directory the retention policy deleted: its row and figures remain. */
export class VersionEvictedError extends CodedError<'VERSION_EVICTED'> {
  /** the answer's HTTP status (Fastify's error handlers read statusCode): gone for good */
  readonly statusCode = 410;
  constructor(readonly version: number) {
    super(
      'VERSION_EVICTED',
      `version ${version} was recorded, but its adapter was deleted by the retention policy ` +
        '(the cloud keeps the latest versions and one per hour; see --keep-versions and --keep-hourly)',
    );
  }
}

/**
 * The versions whose directories stay, of the versions that still have one (`live`, any order):
 * the latest (a restarted cloud resumes from it; edges download it), the one before it (an edge
 * may still generate with it until it hears of the round's end), the newest `keepLast`, and with
 * `keepHourly` the oldest live version of each hour since `start` (version 0's time): once kept,
 * a version stays the oldest of its hour, so the hourly ones never change.
 */
export function retainedVersions(
  live: ReadonlyArray<{ version: number; finishedAt: string }>,
  policy: RetentionPolicy,
  start: string,
): Set<number> {
  const sorted = [...live].sort((a, b) => a.version - b.version);
  if (policy.keepLast === 0) return new Set(sorted.map((v) => v.version));
  const keep = new Set(sorted.slice(-Math.max(2, policy.keepLast)).map((v) => v.version));
  if (policy.keepHourly) {
    const t0 = Date.parse(start);
    const hours = new Set<number>();
    for (const v of sorted) {
      const hour = Math.floor((Date.parse(v.finishedAt) - t0) / HOUR_MS);
      if (hours.has(hour)) continue;
      hours.add(hour);
      keep.add(v.version);
    }
  }
  return keep;
}

export class GlobalVersions {
  private global: LoraAdapter;
  private last: RoundRecord;
  private older?: { version: number; adapter: LoraAdapter };
  private readonly retention: RetentionPolicy;
  private readonly warn: (obj: Record<string, unknown>, msg: string) => void;
  /** the versions whose directories the last record() deleted */
  lastEvicted: number[] = [];

  constructor(
    private readonly store: RoundStore,
    private readonly plan: SplitPlan,
    private readonly nLayer: number,
    registry?: Registry,
    o: { retention?: RetentionPolicy; warn?: (obj: Record<string, unknown>, msg: string) => void } = {},
  ) {
    this.retention = checkRetention(o.retention ?? DEFAULT_RETENTION);
    this.warn = o.warn ?? (() => undefined);
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
    return this.partOf(this.global, tier);
  }

  /**
   * A recorded version's part for one tier (the edges' downloads: a user that read the manifest
   * just before a round ended still gets its version). Undefined for a version never recorded;
   * throws VersionEvictedError for one the retention policy deleted.
   */
  partAt(tier: AdapterTier, version: number): LoraAdapter | undefined {
    const adapter = this.at(version);
    return adapter && this.partOf(adapter, tier);
  }

  private partOf(adapter: LoraAdapter, tier: AdapterTier): LoraAdapter {
    const { k, m } = this.plan;
    if (tier === 'user') return adapterSubset(adapter, 0, k);
    return tier === 'edge' ? adapterSubset(adapter, k, m) : adapterSubset(adapter, m, this.nLayer);
  }

  /**
   * The global adapter of a recorded version: the current one from memory, an older one from the
   * store (the last one read is kept); undefined for a version that was never recorded. Throws
   * VersionEvictedError for a version whose directory the retention policy deleted.
   */
  at(version: number): LoraAdapter | undefined {
    if (version === this.last.version) return this.global;
    if (this.older?.version === version) return this.older.adapter;
    if (!(version < this.last.version)) return undefined;
    const rec = this.store.round(version);
    if (!rec) return undefined;
    if (rec.evictedAt !== null) throw new VersionEvictedError(version);
    // read synchronously: retention (also synchronous, in record) cannot delete it meanwhile
    this.older = { version, adapter: this.store.loadAdapter(rec) };
    return this.older.adapter;
  }

  /**
   * Persists the next version; only once this returns may anyone be told of it. Then applies the
   * retention policy (lastEvicted lists what it deleted); a failed deletion is logged, never fatal.
   */
  record(next: LoraAdapter, rec: RoundInput): RoundRecord {
    const recorded = this.store.commitRound(next, rec);
    this.global = cloneAdapter(next);
    this.last = recorded;
    this.lastEvicted = this.applyRetention();
    return recorded;
  }

  /**
   * Deletes the directories of the versions the policy does not keep. Nothing else in the cloud
   * needs them: the current version is in memory, an older one is read (synchronously, on this
   * same thread, so never while this runs) for generation by an edge one version behind and for
   * an edge's download of the version before the current one (a user that joined as a round
   * ended); edges and users hold the versions they train on in their own memory.
   */
  private applyRetention(): number[] {
    if (this.retention.keepLast === 0) return [];
    const evicted: number[] = [];
    try {
      const live = this.store.liveVersions();
      const keep = retainedVersions(live, this.retention, this.store.startedAt());
      for (const v of live) {
        if (keep.has(v.version)) continue;
        this.store.evictVersion(v.version);
        if (this.older?.version === v.version) this.older = undefined;
        evicted.push(v.version);
      }
    } catch (err) {
      this.warn({ err: (err as Error).message, evicted }, 'retention: an adapter directory could not be deleted');
    }
    return evicted;
  }
}

/** The policy, checked: a bad setting is refused at start-up, not found out a round later. */
export function checkRetention(p: RetentionPolicy): RetentionPolicy {
  if (!(Number.isSafeInteger(p.keepLast) && p.keepLast >= 0)) {
    throw new CloudConfigError('BAD_SETTINGS', `keep-versions must be an integer >= 0, got ${p.keepLast}`);
  }
  return p;
}
