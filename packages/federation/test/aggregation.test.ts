import { describe, expect, it } from 'vitest';
import {
  type AdapterCheckCode,
  AdapterCheckError,
  adapterElementCount,
  adapterFromNamedTensors,
  adapterSubset,
  adapterToNamedTensors,
  cloneAdapter,
  type Gpt2Config,
  type LoraAdapter,
  type LoraConfig,
  type LoraPair,
  initLoraAdapter,
  DEFAULT_ADAMW,
  adamwInit,
  adamwStep,
  Rng,
} from '@splitllm/model';
import type { AdapterUpdate } from '../src/strategy';
import { AGGREGATION_STRATEGIES } from '../src/registry';
import { FedAvg } from '../src/fedavg';
import { adamUpdateNormBound, checkAdapterUpdate } from '../src/update-checks';

const tiny: Gpt2Config = {
  vocabSize: 16,
  nPositions: 8,
  nEmbd: 4,
  nLayer: 3,
  nHead: 2,
  nInner: 16,
  layerNormEpsilon: 1e-5,
  bosTokenId: 0,
  eosTokenId: 0,
};
const loraCfg: LoraConfig = { r: 2, alpha: 4, targets: ['attn.c_attn', 'mlp.c_fc'] };

/** Hand-sized adapter: r = 1, A [2, 1], B [1, 2], one target, modules h.0..h.2. */
const handCfg: LoraConfig = { r: 1, alpha: 2, targets: ['attn.c_attn'] };
function pair(a: number[], b: number[]): LoraPair {
  return { A: { shape: [2, 1], data: Float32Array.from(a) }, B: { shape: [1, 2], data: Float32Array.from(b) } };
}
function hand(mods: Record<string, [number[], number[]]>): LoraAdapter {
  const layers = new Map<string, LoraPair>();
  for (const [path, [a, b]] of Object.entries(mods)) layers.set(`h.${path}.attn.c_attn`, pair(a, b));
  return { config: { ...handCfg, targets: [...handCfg.targets] }, layers };
}

function snapshot(a: LoraAdapter): unknown {
  return {
    config: JSON.parse(JSON.stringify(a.config)),
    layers: [...a.layers].map(([p, { A, B }]) => [
      p,
      A.shape.slice(),
      Array.from(A.data),
      B.shape.slice(),
      Array.from(B.data),
    ]),
  };
}

function expectCode(fn: () => unknown, code: AdapterCheckCode): AdapterCheckError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(AdapterCheckError);
    expect((e as AdapterCheckError).code).toBe(code);
    return e as AdapterCheckError;
  }
  throw new Error(`expected AdapterCheckError ${code}`);
}

/** A trained-looking adapter: the init plus a deterministic perturbation of every value. */
function perturbed(base: LoraAdapter, seed: number, scale: number): LoraAdapter {
  const out = cloneAdapter(base);
  const rng = new Rng(seed);
  for (const { A, B } of out.layers.values()) {
    for (const t of [A, B]) for (let i = 0; i < t.data.length; i++) t.data[i] += scale * rng.normal();
  }
  return out;
}

describe('FedAvg', () => {
  const global = hand({
    '0': [
      [1, 1],
      [1, 1],
    ],
    '1': [
      [2, 2],
      [2, 2],
    ],
    '2': [
      [3, 3],
      [3, 3],
    ],
  });
  const updates: AdapterUpdate[] = [
    // only h.0 and h.1
    {
      from: 'user:u1',
      tokens: 10,
      adapter: hand({
        '0': [
          [2, 4],
          [6, 8],
        ],
        '1': [
          [1, 0],
          [-1, 5],
        ],
      }),
    },
    // overlaps u1 on h.1
    {
      from: 'edge:e1',
      tokens: 30,
      adapter: hand({
        '1': [
          [5, 4],
          [3, 1],
        ],
      }),
    },
    // 0 tokens: its wild h.0 and h.2 must not count, and h.2 keeps the global value
    {
      from: 'cloud:e1',
      tokens: 0,
      adapter: hand({
        '0': [
          [1e6, 1e6],
          [1e6, 1e6],
        ],
        '2': [
          [-9, -9],
          [-9, -9],
        ],
      }),
    },
  ];

  it('is the token-weighted mean per module, hand-computed', () => {
    const out = new FedAvg().aggregate(global, updates);
    expect([...out.layers.keys()]).toEqual(['h.0.attn.c_attn', 'h.1.attn.c_attn', 'h.2.attn.c_attn']);
    // h.0: only u1 has tokens -> u1 exactly
    expect(Array.from(out.layers.get('h.0.attn.c_attn')!.A.data)).toEqual([2, 4]);
    expect(Array.from(out.layers.get('h.0.attn.c_attn')!.B.data)).toEqual([6, 8]);
    // h.1: (10 * u1 + 30 * e1) / 40
    // A: (10*1 + 30*5)/40 = 4, (10*0 + 30*4)/40 = 3;  B: (10*-1 + 30*3)/40 = 2, (10*5 + 30*1)/40 = 2
    expect(Array.from(out.layers.get('h.1.attn.c_attn')!.A.data)).toEqual([4, 3]);
    expect(Array.from(out.layers.get('h.1.attn.c_attn')!.B.data)).toEqual([2, 2]);
    // h.2: nobody with tokens updated it
    expect(Array.from(out.layers.get('h.2.attn.c_attn')!.A.data)).toEqual([3, 3]);
    expect(out.layers.get('h.1.attn.c_attn')!.A.shape).toEqual([2, 1]);
    expect(out.config).toEqual(handCfg);
  });

  it('does not mutate its inputs and shares no arrays with them', () => {
    const before = [snapshot(global), ...updates.map((u) => snapshot(u.adapter))];
    const out = new FedAvg().aggregate(global, updates);
    expect([snapshot(global), ...updates.map((u) => snapshot(u.adapter))]).toEqual(before);
    for (const { A, B } of out.layers.values()) {
      A.data.fill(123);
      B.data.fill(123);
    }
    out.config.targets.push('mlp.c_fc');
    expect([snapshot(global), ...updates.map((u) => snapshot(u.adapter))]).toEqual(before);
  });

  it('does not depend on the order of the updates', () => {
    const g = initLoraAdapter(tiny, loraCfg, 1);
    const ups: AdapterUpdate[] = [1, 2, 3, 4].map((s) => ({
      from: `user:u${s}`,
      tokens: 17 * s + 3,
      adapter: perturbed(g, s, 0.1),
    }));
    const a = new FedAvg().aggregate(g, ups);
    const b = new FedAvg().aggregate(g, [...ups].reverse());
    expect(snapshot(a)).toEqual(snapshot(b));
  });

  it('with no updates (or only 0-token ones) returns a copy of the global', () => {
    const out = new FedAvg().aggregate(global, [updates[2]]);
    expect(snapshot(out)).toEqual(snapshot(global));
    expect(out.layers.get('h.0.attn.c_attn')!.A.data).not.toBe(global.layers.get('h.0.attn.c_attn')!.A.data);
  });

  it('rejects unknown modules, other shapes and configs, bad token counts and non-finite values', () => {
    const fed = new FedAvg();
    const unknown = hand({
      '0': [
        [1, 1],
        [1, 1],
      ],
      '7': [
        [1, 1],
        [1, 1],
      ],
    });
    expect(
      expectCode(() => fed.aggregate(global, [{ from: 'user:x', tokens: 1, adapter: unknown }]), 'ADAPTER_MODULE')
        .message,
    ).toContain('h.7.attn.c_attn');
    const wide = hand({
      '0': [
        [1, 1],
        [1, 1],
      ],
    });
    wide.layers.get('h.0.attn.c_attn')!.B = { shape: [1, 3], data: new Float32Array(3) };
    expectCode(() => fed.aggregate(global, [{ from: 'user:x', tokens: 1, adapter: wide }]), 'ADAPTER_SHAPE');
    const otherAlpha = hand({
      '0': [
        [1, 1],
        [1, 1],
      ],
    });
    otherAlpha.config.alpha = 8;
    expectCode(() => fed.aggregate(global, [{ from: 'user:x', tokens: 1, adapter: otherAlpha }]), 'ADAPTER_CONFIG');
    expect(() => fed.aggregate(global, [{ from: 'user:x', tokens: -1, adapter: hand({}) }])).toThrow(RangeError);
    expect(() => fed.aggregate(global, [{ from: 'user:x', tokens: NaN, adapter: hand({}) }])).toThrow(RangeError);
    const nan = hand({
      '0': [
        [NaN, 1],
        [1, 1],
      ],
    });
    expectCode(() => fed.aggregate(global, [{ from: 'user:x', tokens: 1, adapter: nan }]), 'ADAPTER_NOT_FINITE');
    // a rejected aggregate leaves the global untouched
    expect(Array.from(global.layers.get('h.0.attn.c_attn')!.A.data)).toEqual([1, 1]);
  });

  it('is registered by name', () => {
    const s = AGGREGATION_STRATEGIES.fedavg();
    expect(s).toBeInstanceOf(FedAvg);
    expect(s.name).toBe('fedavg');
  });
});

describe('checkAdapterUpdate', () => {
  const global = initLoraAdapter(tiny, loraCfg, 7);
  const userMods = ['h.0.attn.c_attn', 'h.0.mlp.c_fc'];
  const good = perturbed(adapterSubset(global, 0, 1), 3, 0.01);
  const opts = { modules: userMods, maxUpdateNorm: 10 };

  it('accepts an honest update and returns its exact norm', () => {
    let sq = 0;
    for (const [p, { A, B }] of good.layers) {
      const g = global.layers.get(p)!;
      for (let i = 0; i < A.data.length; i++) sq += (A.data[i] - g.A.data[i]) ** 2;
      for (let i = 0; i < B.data.length; i++) sq += (B.data[i] - g.B.data[i]) ** 2;
    }
    const norm = checkAdapterUpdate(global, good, opts);
    expect(norm).toBeCloseTo(Math.sqrt(sq), 12);
    expect(norm).toBeGreaterThan(0);
    // the target list is a set: a PEFT round trip may reorder it
    const reordered = cloneAdapter(good);
    reordered.config.targets.reverse();
    expect(checkAdapterUpdate(global, reordered, opts)).toBe(norm);
  });

  it('ADAPTER_CONFIG on other r, alpha or targets', () => {
    for (const change of [
      (c: LoraConfig) => (c.alpha = 8),
      (c: LoraConfig) => (c.r = 4),
      (c: LoraConfig) => (c.targets = ['attn.c_attn']),
    ]) {
      const u = cloneAdapter(good);
      change(u.config);
      expectCode(() => checkAdapterUpdate(global, u, opts), 'ADAPTER_CONFIG');
    }
  });

  it('ADAPTER_MODULE on a missing, an extra or a non-global module', () => {
    const missing = cloneAdapter(good);
    missing.layers.delete('h.0.mlp.c_fc');
    expect(expectCode(() => checkAdapterUpdate(global, missing, opts), 'ADAPTER_MODULE').message).toContain('missing');
    const extra = cloneAdapter(good);
    extra.layers.set('h.1.attn.c_attn', global.layers.get('h.1.attn.c_attn')!);
    expectCode(() => checkAdapterUpdate(global, extra, opts), 'ADAPTER_MODULE');
    const beyond = cloneAdapter(good);
    beyond.layers.set('h.9.attn.c_attn', global.layers.get('h.1.attn.c_attn')!);
    expectCode(
      () => checkAdapterUpdate(global, beyond, { ...opts, modules: [...userMods, 'h.9.attn.c_attn'] }),
      'ADAPTER_MODULE',
    );
  });

  it('ADAPTER_SHAPE on a wrong shape or a shape that lies about its data', () => {
    const wrong = cloneAdapter(good);
    wrong.layers.get('h.0.attn.c_attn')!.A = { shape: [2, 4], data: new Float32Array(8) }; // [in=4, r=2] transposed
    expectCode(() => checkAdapterUpdate(global, wrong, opts), 'ADAPTER_SHAPE');
    const lying = cloneAdapter(good);
    const B = lying.layers.get('h.0.mlp.c_fc')!.B;
    lying.layers.get('h.0.mlp.c_fc')!.B = { shape: B.shape, data: B.data.slice(1) };
    expectCode(() => checkAdapterUpdate(global, lying, opts), 'ADAPTER_SHAPE');
  });

  it('ADAPTER_NOT_FINITE on NaN or infinity', () => {
    for (const bad of [NaN, Infinity, -Infinity]) {
      const u = cloneAdapter(good);
      u.layers.get('h.0.mlp.c_fc')!.B.data[5] = bad;
      expectCode(() => checkAdapterUpdate(global, u, opts), 'ADAPTER_NOT_FINITE');
    }
  });

  it('ADAPTER_NORM past the bound, with the norm and bound in the message', () => {
    const norm = checkAdapterUpdate(global, good, opts);
    const e = expectCode(
      () => checkAdapterUpdate(global, good, { ...opts, maxUpdateNorm: norm * 0.99 }),
      'ADAPTER_NORM',
    );
    expect(e.message).toContain(norm.toPrecision(4));
    expect(e.message).toContain((norm * 0.99).toPrecision(4));
    expect(checkAdapterUpdate(global, good, { ...opts, maxUpdateNorm: norm })).toBe(norm);
  });
});

describe('adamUpdateNormBound', () => {
  it('bounds a real reference AdamW run, and not vacuously', () => {
    const n = 4096;
    const steps = 50;
    const o = { ...DEFAULT_ADAMW, lr: 5e-3, weightDecay: 0 };
    const rng = new Rng(2024);
    const p0 = rng.fillNormal(new Float32Array(n), 0.02);
    const p = p0.slice();
    const s = adamwInit(n);
    // per element: a drift of random sign and size, plus noise; a third of the elements flip
    // the drift's sign halfway, and a few see spikes, so the run mixes steady and reversing moves
    const drift = Float32Array.from({ length: n }, () => rng.normal());
    const flips = Uint8Array.from({ length: n }, () => (rng.uniform() < 1 / 3 ? 1 : 0));
    const g = new Float32Array(n);
    for (let t = 1; t <= steps; t++) {
      for (let i = 0; i < n; i++) {
        const sign = flips[i] && t > steps / 2 ? -1 : 1;
        const spike = rng.uniform() < 0.01 ? 50 : 1;
        g[i] = spike * (sign * drift[i] + 0.7 * rng.normal());
      }
      adamwStep(p, g, s, t, o);
    }
    let sq = 0;
    for (let i = 0; i < n; i++) sq += (p[i] - p0[i]) ** 2;
    const measured = Math.sqrt(sq);
    const bound = adamUpdateNormBound(o.lr, steps, n);
    expect(bound).toBeCloseTo(2 * 5e-3 * 50 * 64, 12);
    expect(measured).toBeLessThanOrEqual(bound);
    expect(measured).toBeGreaterThan(bound / 20);
  });
});

describe('adapter helpers', () => {
  const a = initLoraAdapter(tiny, loraCfg, 5);

  it('adapterSubset keeps [from, to) with copied arrays; cloneAdapter copies; element count', () => {
    const sub = adapterSubset(a, 1, 3);
    expect([...sub.layers.keys()]).toEqual(['h.1.attn.c_attn', 'h.1.mlp.c_fc', 'h.2.attn.c_attn', 'h.2.mlp.c_fc']);
    sub.layers.get('h.1.attn.c_attn')!.A.data[0] = 99;
    expect(a.layers.get('h.1.attn.c_attn')!.A.data[0]).not.toBe(99);
    const c = cloneAdapter(a);
    expect(snapshot(c)).toEqual(snapshot(a));
    c.layers.get('h.0.mlp.c_fc')!.A.data[0] = 99;
    expect(a.layers.get('h.0.mlp.c_fc')!.A.data[0]).not.toBe(99);
    // per block: c_attn A [4,2] + B [2,12] = 32, c_fc A [4,2] + B [2,16] = 40
    expect(adapterElementCount(a)).toBe(3 * (32 + 40));
    expect(adapterElementCount(sub)).toBe(2 * (32 + 40));
  });

  it('named tensors round trip with a prefix, ignoring other prefixes', () => {
    const sub = perturbed(adapterSubset(a, 1, 3), 9, 0.5);
    const named = adapterToNamedTensors(sub, 'edge.');
    expect([...named.keys()]).toContain('edge.h.1.attn.c_attn.lora_A');
    expect([...named.keys()]).toContain('edge.h.2.mlp.c_fc.lora_B');
    expect(named.size).toBe(8);
    const mixed = new Map<string, { data: Float32Array | Int32Array; shape: number[] }>(named);
    mixed.set('labels', { data: new Int32Array(4), shape: [4] });
    mixed.set('user.h.0.attn.c_attn.lora_A', { data: new Float32Array(8), shape: [4, 2] });
    const back = adapterFromNamedTensors(loraCfg, mixed, 'edge.');
    expect(snapshot(back)).toEqual(snapshot(sub));
    // copied out of the (possibly reused) frame buffers
    expect(back.layers.get('h.1.attn.c_attn')!.A.data).not.toBe(sub.layers.get('h.1.attn.c_attn')!.A.data);
    // no prefix
    expect(snapshot(adapterFromNamedTensors(loraCfg, adapterToNamedTensors(sub)))).toEqual(snapshot(sub));
  });

  it('adapterFromNamedTensors rejects unknown names, missing halves, int32 and wrong ranks', () => {
    const named = (): Map<string, { data: Float32Array | Int32Array; shape: number[] }> =>
      new Map(adapterToNamedTensors(a, 'p.'));
    for (const bad of [
      'p.h.0.attn.c_proj.lora_A',
      'p.h.0.attn.c_attn.lora_C',
      'p.h.01.attn.c_attn.lora_A',
      'p.bias',
      'p.h.x.mlp.c_fc.lora_B',
    ]) {
      const m = named();
      m.set(bad, { data: new Float32Array(8), shape: [4, 2] });
      expect(expectCode(() => adapterFromNamedTensors(loraCfg, m, 'p.'), 'ADAPTER_MODULE').message).toContain(bad);
    }
    const half = named();
    half.delete('p.h.2.mlp.c_fc.lora_B');
    expectCode(() => adapterFromNamedTensors(loraCfg, half, 'p.'), 'ADAPTER_MODULE');
    const ints = named();
    ints.set('p.h.0.attn.c_attn.lora_A', { data: new Int32Array(8), shape: [4, 2] });
    expectCode(() => adapterFromNamedTensors(loraCfg, ints, 'p.'), 'ADAPTER_SHAPE');
    const rank = named();
    rank.set('p.h.0.attn.c_attn.lora_A', { data: new Float32Array(12), shape: [4, 3] });
    expectCode(() => adapterFromNamedTensors(loraCfg, rank, 'p.'), 'ADAPTER_SHAPE');
  });
});
