/**
 * The robust strategies on planted attacks: honest updates (small changes around a common
 * direction) plus one outlier, either noise at 0.99x the AdamW update-norm bound (what the
 * upload checks let through) or the negative of the honest change; and the fallbacks with fewer
 * than 3 contributors.
 */
import { describe, expect, it } from 'vitest';
import {
  adapterElementCount,
  adapterSubset,
  cloneAdapter,
  type Gpt2Config,
  initLoraAdapter,
  type LoraAdapter,
  type LoraConfig,
  type LoraPair,
  Rng,
} from '@splitllm/model';
import { FedAvg } from '../src/fedavg';
import { createStrategy, AGGREGATION_NAMES, DEFAULT_AGGREGATION } from '../src/registry';
import { ClipMedian, CoordinateMedian, DEFAULT_GATE_MARGIN, TrimmedMean, ValidationGate } from '../src/robust';
import { aggregateWithReport, type AdapterUpdate } from '../src/strategy';
import { adamUpdateNormBound, changeNorm, checkAdapterUpdate } from '../src/update-checks';

const tiny: Gpt2Config = {
  vocabSize: 16,
  nPositions: 8,
  nEmbd: 8,
  nLayer: 3,
  nHead: 2,
  nInner: 32,
  layerNormEpsilon: 1e-5,
  bosTokenId: 0,
  eosTokenId: 0,
};
const lora: LoraConfig = { r: 2, alpha: 4, targets: ['attn.c_attn'] };
const LR = 1e-3;
const STEPS = 20;

/** The global adapter (B non-zero, so a change of A matters too) and its user part (block 0). */
const global = initLoraAdapter(tiny, lora, 7);
for (const p of global.layers.values()) for (let i = 0; i < p.B.data.length; i++) p.B.data[i] = 0.01 * ((i % 5) - 2);
const userGlobal = adapterSubset(global, 0, 1);
const edgeGlobal = adapterSubset(global, 1, 3);
const bound = (part: LoraAdapter) => adamUpdateNormBound(LR, STEPS, adapterElementCount(part));

/** `part` moved by `scale` x `dir` (a unit direction), plus a little of its own noise. */
function moved(part: LoraAdapter, dir: Map<string, LoraPair>, scale: number, seed: number, jitter = 0): LoraAdapter {
  const out = cloneAdapter(part);
  const rng = new Rng(seed);
  for (const [path, p] of out.layers) {
    const d = dir.get(path)!;
    for (const half of ['A', 'B'] as const) {
      const t = p[half].data;
      for (let i = 0; i < t.length; i++) t[i] += scale * d[half].data[i] + jitter * rng.normal();
    }
  }
  return out;
}

/** A random direction of unit norm over `part`'s modules. */
function direction(part: LoraAdapter, seed: number): Map<string, LoraPair> {
  const rng = new Rng(seed);
  const dir = new Map<string, LoraPair>();
  let sq = 0;
  for (const [path, p] of part.layers) {
    const pair = {} as LoraPair;
    for (const half of ['A', 'B'] as const) {
      const data = Float32Array.from(p[half].data, () => rng.normal());
      for (const v of data) sq += v * v;
      pair[half] = { shape: [...p[half].shape], data };
    }
    dir.set(path, pair);
  }
  for (const pair of dir.values())
    for (const half of ['A', 'B'] as const) {
      const a = pair[half].data;
      for (let i = 0; i < a.length; i++) a[i] /= Math.sqrt(sq);
    }
  return dir;
}

const honestDir = direction(userGlobal, 1);
const HONEST = 0.05 * bound(userGlobal);
/** Four honest users: the honest direction at a typical norm, each with its own small noise. */
const honest: AdapterUpdate[] = [1, 2, 3, 4].map((i) => ({
  from: `user:h${i}`,
  tokens: 64,
  adapter: moved(userGlobal, honestDir, HONEST, 10 + i, 1e-4),
}));
/** The noise attack: a random direction at 0.99x the bound, which the upload checks accept. */
const noise: AdapterUpdate = {
  from: 'user:zz-noise',
  tokens: 64,
  adapter: moved(userGlobal, direction(userGlobal, 99), 0.99 * bound(userGlobal), 0),
};
/** The targeted attack: the negative of the honest change, as far as the bound allows. */
const negative: AdapterUpdate = {
  from: 'user:zz-negative',
  tokens: 64,
  adapter: moved(userGlobal, honestDir, -0.99 * bound(userGlobal), 0),
};
const honestMean = new FedAvg().aggregate(global, honest);

/** Distance between two adapters over `part`'s modules. */
function distance(a: LoraAdapter, b: LoraAdapter): number {
  return changeNorm(adapterSubset(a, 0, 1), adapterSubset(b, 0, 1));
}

describe('the planted attacks', () => {
  it('pass the upload checks (that is the point)', () => {
    for (const u of [noise, negative, ...honest]) {
      expect(() =>
        checkAdapterUpdate(userGlobal, u.adapter, {
          modules: [...userGlobal.layers.keys()],
          maxUpdateNorm: bound(userGlobal),
        }),
      ).not.toThrow();
    }
    expect(changeNorm(userGlobal, noise.adapter)).toBeCloseTo(0.99 * bound(userGlobal), 3);
  });

  it('move FedAvg far from the honest mean', () => {
    for (const bad of [noise, negative]) {
      const d = distance(new FedAvg().aggregate(global, [...honest, bad]), honestMean);
      expect(d).toBeGreaterThan(3 * HONEST);
    }
  });
});

describe('clip-median', () => {
  it('scales the outlier to the median change norm of its group: it moves no more than a typical user', () => {
    for (const bad of [noise, negative]) {
      const s = new ClipMedian();
      const r = aggregateWithReport(s, global, [...honest, bad]);
      // every change, clipped, has norm <= the median (~HONEST); their mean too
      expect(changeNorm(userGlobal, adapterSubset(r.adapter, 0, 1))).toBeLessThanOrEqual(HONEST * 1.01);
      expect(distance(r.adapter, honestMean)).toBeLessThan(0.5 * HONEST);
      expect(r.notes.join('\n')).toContain(`${bad.from}'s change norm`);
      expect(r.refused).toEqual([]);
    }
  });

  it("takes the median within each group: a large edge update is not clipped to the users' median", () => {
    const edgeDir = direction(edgeGlobal, 5);
    const edge: AdapterUpdate = {
      from: 'edge:e1',
      tokens: 256,
      adapter: moved(edgeGlobal, edgeDir, 0.5 * bound(edgeGlobal), 0),
    };
    const r = aggregateWithReport(new ClipMedian(), global, [...honest, noise, edge]);
    // the edge is alone in its group: its own median, unchanged
    expect(changeNorm(edgeGlobal, adapterSubset(r.adapter, 1, 3))).toBeCloseTo(0.5 * bound(edgeGlobal), 3);
    expect(r.notes.some((n) => n.includes('edge:e1'))).toBe(false);
  });

  it('with one update per group clips nothing (its own median): the same as FedAvg', () => {
    const r = new ClipMedian().aggregate(global, [noise]);
    expect(distance(r, new FedAvg().aggregate(global, [noise]))).toBe(0);
  });
});

describe('trimmed-mean', () => {
  it("drops the outlier at each coordinate: the result stays within the honest updates' spread", () => {
    for (const bad of [noise, negative]) {
      const r = aggregateWithReport(new TrimmedMean(), global, [...honest, bad]);
      expect(distance(r.adapter, honestMean)).toBeLessThan(0.2 * HONEST);
      expect(r.notes).toEqual([]);
    }
  });

  it('is hand-computed on 5 contributors: drops one at each end, token-weighted mean of the rest', () => {
    const one = (v: number, tokens: number, from: string): AdapterUpdate => {
      const a = cloneAdapter(userGlobal);
      for (const p of a.layers.values()) {
        p.A.data.fill(v);
        p.B.data.fill(v);
      }
      return { from, tokens, adapter: a };
    };
    const r = new TrimmedMean().aggregate(global, [
      one(1, 1, 'a'),
      one(2, 1, 'b'),
      one(3, 3, 'c'),
      one(100, 1, 'd'),
      one(-50, 1, 'e'),
    ]);
    // -50 and 100 dropped; (1*1 + 2*1 + 3*3) / 5
    const [path] = userGlobal.layers.keys();
    expect(r.layers.get(path)!.A.data[0]).toBeCloseTo(12 / 5, 6);
  });

  it('falls back to the token-weighted mean below 3 contributors, and says so', () => {
    const s = new TrimmedMean();
    const two = [honest[0], noise];
    const r = aggregateWithReport(s, global, two);
    expect(distance(r.adapter, new FedAvg().aggregate(global, two))).toBe(0);
    expect(r.notes).toHaveLength(1);
    expect(r.notes[0]).toMatch(/fewer than 3 updates \(user:h1, user:zz-noise\): token-weighted mean/);
  });
});

describe('coordinate-median', () => {
  it('takes the per-coordinate median: the outlier has no pull', () => {
    for (const bad of [noise, negative]) {
      const r = new CoordinateMedian().aggregate(global, [...honest, bad]);
      expect(distance(r, honestMean)).toBeLessThan(0.2 * HONEST);
    }
  });

  it('is the middle value (odd) or the mean of the two middle ones (even), unweighted', () => {
    const vals = (xs: number[]) =>
      xs.map((v, j): AdapterUpdate => {
        const a = cloneAdapter(userGlobal);
        for (const p of a.layers.values()) {
          p.A.data.fill(v);
          p.B.data.fill(v);
        }
        return { from: `u${j}`, tokens: j + 1, adapter: a };
      });
    const [path] = userGlobal.layers.keys();
    expect(new CoordinateMedian().aggregate(global, vals([5, -1, 3])).layers.get(path)!.A.data[0]).toBe(3);
    expect(new CoordinateMedian().aggregate(global, vals([5, -1, 3, 100])).layers.get(path)!.B.data[0]).toBe(4);
  });

  it('falls back to the mean below 3 contributors, and says so', () => {
    const r = aggregateWithReport(new CoordinateMedian(), global, [negative]);
    expect(distance(r.adapter, negative.adapter)).toBeLessThan(1e-6);
    expect(r.notes[0]).toMatch(/coordinate-median: 1 module\(s\) held by fewer than 3 updates/);
  });
});

/**
 * A stand-in for the held-out loss: a quadratic bowl whose minimum lies along the honest
 * direction, so honest changes lower it and both attacks raise it.
 */
function bowl(): (a: LoraAdapter) => number {
  const target = moved(userGlobal, honestDir, 4 * HONEST, 0);
  return (a) => 4 + 50 * changeNorm(target, adapterSubset(a, 0, 1)) ** 2;
}

describe('the validation gate', () => {
  it("refuses the noise and the negative update with both losses and the reason; the honest ones are FedAvg's", () => {
    const s = createStrategy('gate-fedavg', { score: bowl() });
    expect(s.name).toBe('gate-fedavg');
    const r = aggregateWithReport(s, global, [...honest, noise, negative]);
    expect(r.refused.map((x) => x.from).sort()).toEqual(['user:zz-negative', 'user:zz-noise']);
    for (const x of r.refused) {
      expect(x.code).toBe('GATE_LOSS');
      expect(x.loss! - x.globalLoss!).toBeGreaterThan(DEFAULT_GATE_MARGIN);
      expect(x.reason).toMatch(/exceeds the margin 0\.25/);
    }
    // the honest updates took part exactly as under FedAvg
    expect(distance(r.adapter, honestMean)).toBe(0);
  });

  it('in front of clip-median passes the accepted updates to it', () => {
    const s = createStrategy('gate-clip-median', { score: bowl(), margin: 0.01 });
    const r = aggregateWithReport(s, global, [...honest, noise]);
    expect(r.refused.map((x) => x.from)).toEqual(['user:zz-noise']);
    expect(distance(r.adapter, new ClipMedian().aggregate(global, honest))).toBe(0);
    expect(r.notes[0]).toMatch(/gate-clip-median: global held-out loss .*; 5 update\(s\) scored, 1 refused/);
  });

  it('refuses an update whose loss is not finite, and with every update refused keeps the global', () => {
    const [path] = noise.adapter.layers.keys();
    const scoreNaN = (a: LoraAdapter) => (a.layers.get(path) === noise.adapter.layers.get(path) ? Number.NaN : 4);
    const s = new ValidationGate(new FedAvg(), scoreNaN);
    const r = aggregateWithReport(s, global, [noise]);
    expect(r.refused).toMatchObject([{ from: 'user:zz-noise', code: 'GATE_NOT_FINITE' }]);
    expect(distance(r.adapter, global)).toBe(0);
  });

  it('needs a scorer: a clear error without one', () => {
    expect(() => createStrategy('gate-fedavg')).toThrow(/needs ctx.score/);
    expect(() => createStrategy('gate-clip-median', {})).toThrow(/needs ctx.score/);
  });
});

describe('the registry', () => {
  it('creates every strategy by name, with FedAvg the default; an unknown name lists the known ones', () => {
    expect(DEFAULT_AGGREGATION).toBe('gate-clip-median');
    for (const name of AGGREGATION_NAMES) expect(createStrategy(name, { score: () => 1 }).name).toBe(name);
    expect(() => createStrategy('krum')).toThrow(/unknown aggregation strategy "krum" \(known: fedavg, clip-median/);
    expect(() => createStrategy('toString')).toThrow(/unknown/);
  });

  it('does not depend on the order of the updates, and mutates nothing', () => {
    for (const name of ['clip-median', 'trimmed-mean', 'coordinate-median']) {
      const ups = [...honest, noise, negative];
      const before = ups.map((u) => cloneAdapter(u.adapter));
      const a = createStrategy(name).aggregate(global, ups);
      const b = createStrategy(name).aggregate(global, [...ups].reverse());
      expect(distance(a, b)).toBe(0);
      for (const [i, u] of ups.entries()) expect(changeNorm(before[i], u.adapter)).toBe(0);
    }
  });
});
