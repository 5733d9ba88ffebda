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
import type { LoraAdapter, LoraConfig, LoraPair } from './lora';
import { LORA_TARGETS, isLoraTarget, parseLoraModulePath, sameLoraConfig } from './lora';
import type { Tensor } from './tensor';
import { numel, sameShape } from './tensor';

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

export type AdapterCheckCode = 'ADAPTER_CONFIG' | 'ADAPTER_SHAPE' | 'ADAPTER_NOT_FINITE' | 'ADAPTER_NORM' | 'ADAPTER_MODULE';

export class AdapterCheckError extends Error {
  readonly code: AdapterCheckCode;
  constructor(code: AdapterCheckCode, message: string) {
    super(message);
    this.name = 'AdapterCheckError';
    this.code = code;
  }
}

// ---------------------------------------------------------------- small helpers

function cloneTensorCopy(t: Tensor): Tensor {
  return { shape: [...t.shape], data: t.data.slice() };
}

function cloneConfig(c: LoraConfig): LoraConfig {
  return { r: c.r, alpha: c.alpha, targets: [...c.targets] };
}

export function cloneAdapter(a: LoraAdapter): LoraAdapter {
  const layers = new Map<string, LoraPair>();
  for (const [path, { A, B }] of a.layers) layers.set(path, { A: cloneTensorCopy(A), B: cloneTensorCopy(B) });
  return { config: cloneConfig(a.config), layers };
}

export function adapterElementCount(a: LoraAdapter): number {
  let n = 0;
  for (const { A, B } of a.layers.values()) n += A.data.length + B.data.length;
  return n;
}

/** Modules whose block index is in [fromLayer, toLayer), with copied arrays (the result may be trained in place). */
export function adapterSubset(adapter: LoraAdapter, fromLayer: number, toLayer: number): LoraAdapter {
  const layers = new Map<string, LoraPair>();
  for (const [path, { A, B }] of adapter.layers) {
    const parsed = parseLoraModulePath(path);
    if (!parsed) throw new AdapterCheckError('ADAPTER_MODULE', `adapter: unknown module "${path}"`);
    if (parsed.layer >= fromLayer && parsed.layer < toLayer) {
      layers.set(path, { A: cloneTensorCopy(A), B: cloneTensorCopy(B) });
    }
  }
  return { config: cloneConfig(adapter.config), layers };
}

function describeConfig(c: LoraConfig): string {
  return `r=${c.r}, alpha=${c.alpha}, targets=[${c.targets.join(', ')}]`;
}

function checkConfig(global: LoraAdapter, update: LoraAdapter, who: string): void {
  if (!sameLoraConfig(global.config, update.config)) {
    throw new AdapterCheckError(
      'ADAPTER_CONFIG',
      `${who}: LoRA config ${describeConfig(update.config)} differs from the global ${describeConfig(global.config)}`,
    );
  }
}

function checkPairShape(path: string, pair: LoraPair, want: LoraPair, who: string): void {
  for (const half of ['A', 'B'] as const) {
    const t = pair[half];
    const w = want[half];
    // a lying shape (data length != product of dims) must not slip through a shape-only compare
    if (!sameShape(t.shape, w.shape) || t.data.length !== numel(w.shape)) {
      throw new AdapterCheckError(
        'ADAPTER_SHAPE',
        `${who}: "${path}" ${half} is [${t.shape.join(', ')}] with ${t.data.length} values, the global has [${w.shape.join(', ')}]`,
      );
    }
  }
}

// ---------------------------------------------------------------- FedAvg

/**
 * FedAvg (McMahan et al.) on the LoRA factors: each module's A and B become the token-weighted
 * mean over the updates that contain that module. Modules nobody updated (or only updates
 * with 0 tokens) keep the global value. Accumulates in float64 and visits updates sorted by
 * `from`, so the result does not depend on the order in which uploads arrived.
 */
export class FedAvg implements AggregationStrategy {
  readonly name = 'fedavg';

  aggregate(global: LoraAdapter, updates: readonly AdapterUpdate[]): LoraAdapter {
    for (const u of updates) {
      if (!(Number.isFinite(u.tokens) && u.tokens >= 0)) {
        throw new RangeError(`fedavg: update from ${u.from} has tokens ${u.tokens}, expected a finite number >= 0`);
      }
      checkConfig(global, u.adapter, `fedavg: update from ${u.from}`);
      for (const [path, pair] of u.adapter.layers) {
        const g = global.layers.get(path);
        if (!g) {
          throw new AdapterCheckError('ADAPTER_MODULE', `fedavg: update from ${u.from} has module "${path}", which the global adapter lacks`);
        }
        checkPairShape(path, pair, g, `fedavg: update from ${u.from}`);
      }
    }
    // stable sort: equal `from`s keep their given order
    const ordered = [...updates].filter((u) => u.tokens > 0).sort((a, b) => (a.from < b.from ? -1 : a.from > b.from ? 1 : 0));

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
            throw new AdapterCheckError('ADAPTER_NOT_FINITE', `fedavg: "${path}" ${half}[${i}] is not finite after averaging`);
          }
          out[i] = v;
        }
        pair[half] = { shape: [...g[half].shape], data: out };
      }
      layers.set(path, pair);
    }
    return { config: cloneConfig(global.config), layers };
  }
}

export const AGGREGATION_STRATEGIES: Record<string, () => AggregationStrategy> = {
  fedavg: () => new FedAvg(),
};

// ---------------------------------------------------------------- upload checks

export interface AdapterCheckOptions {
  /** The module paths this participant must send, exactly. */
  modules: readonly string[];
  /** Largest allowed L2 norm of (update - global) over all of the update's tensors. */
  maxUpdateNorm: number;
}

/**
 * Checks an uploaded adapter against the global one before it may be aggregated, and returns
 * the L2 norm of its change. Throws AdapterCheckError:
 * - ADAPTER_CONFIG: r, alpha or the target set differ from the global's;
 * - ADAPTER_MODULE: a module is missing, extra, or unknown to the global adapter;
 * - ADAPTER_SHAPE: an A or B shape differs from the global's;
 * - ADAPTER_NOT_FINITE: a NaN or infinity anywhere;
 * - ADAPTER_NORM: || update - global ||_2 > maxUpdateNorm.
 */
export function checkAdapterUpdate(global: LoraAdapter, update: LoraAdapter, o: AdapterCheckOptions): number {
  const who = 'adapter upload';
  checkConfig(global, update, who);
  const expected = new Set(o.modules);
  for (const path of update.layers.keys()) {
    if (!expected.has(path)) {
      throw new AdapterCheckError('ADAPTER_MODULE', `${who}: module "${path}" was not expected (expected ${o.modules.length} modules: ${o.modules.join(', ')})`);
    }
  }
  for (const path of expected) {
    if (!update.layers.has(path)) throw new AdapterCheckError('ADAPTER_MODULE', `${who}: module "${path}" is missing`);
    if (!global.layers.has(path)) throw new AdapterCheckError('ADAPTER_MODULE', `${who}: module "${path}" is not in the global adapter`);
  }
  for (const [path, pair] of update.layers) checkPairShape(path, pair, global.layers.get(path)!, who);

  let sq = 0;
  for (const [path, pair] of update.layers) {
    const g = global.layers.get(path)!;
    for (const half of ['A', 'B'] as const) {
      const u = pair[half].data;
      const gd = g[half].data;
      for (let i = 0; i < u.length; i++) {
        const v = u[i];
        if (!Number.isFinite(v)) {
          throw new AdapterCheckError('ADAPTER_NOT_FINITE', `${who}: "${path}" ${half}[${i}] is ${v}`);
        }
        const d = v - gd[i];
        sq += d * d;
      }
    }
  }
  const norm = Math.sqrt(sq);
  if (!(norm <= o.maxUpdateNorm)) {
    throw new AdapterCheckError(
      'ADAPTER_NORM',
      `${who}: update norm ${norm.toPrecision(4)} exceeds the bound ${o.maxUpdateNorm.toPrecision(4)}`,
    );
  }
  return norm;
}

/**
 * checkAdapterUpdate for a participant that trained exactly `global`'s modules with AdamW for
 * `steps` steps at `lr`: the bound is adamUpdateNormBound over those modules' elements.
 */
export function checkAdamWUpdate(global: LoraAdapter, update: LoraAdapter, lr: number, steps: number): number {
  return checkAdapterUpdate(global, update, { modules: [...global.layers.keys()], maxUpdateNorm: adamUpdateNormBound(lr, steps, adapterElementCount(global)) });
}

/**
 * The largest update norm an honest AdamW run (weight decay 0) can produce: Adam moves each
 * element by about lr per step (|m̂ / sqrt(v̂)| <= ~1), so over `steps` steps the change of
 * `elements` values has norm <= lr * steps * sqrt(elements); a factor-2 margin on top.
 *
 * With the default betas (0.9, 0.999) the factor 2 is a hard bound, not only a typical one,
 * for runs up to ~160 steps: by Cauchy-Schwarz |m̂_t| / sqrt(v̂_t) <= sqrt(sum_j w_j^2 / u_j)
 * (w, u the bias-corrected EMA weights), which is 1.0 at t = 1, 1.6 at t = 50 and 2.0 at
 * t = 79, and the mean over the first ~160 steps stays <= 2. Longer runs rely on gradients not
 * being adversarially sparse.
 */
export function adamUpdateNormBound(lr: number, steps: number, elements: number): number {
  return 2 * lr * steps * Math.sqrt(elements);
}

// ---------------------------------------------------------------- wire form

/**
 * The adapter's A and B arrays as flat named tensors for a wire frame:
 * `${prefix}h.{i}.{target}.lora_A` / `.lora_B`. The arrays are shared, not copied (the
 * encoder only reads them).
 */
export function adapterToNamedTensors(a: LoraAdapter, prefix = ''): Map<string, { data: Float32Array; shape: number[] }> {
  const out = new Map<string, { data: Float32Array; shape: number[] }>();
  for (const [path, { A, B }] of a.layers) {
    out.set(`${prefix}${path}.lora_A`, { data: A.data, shape: [...A.shape] });
    out.set(`${prefix}${path}.lora_B`, { data: B.data, shape: [...B.shape] });
  }
  return out;
}

const NAMED_RE = /^h\.(0|[1-9]\d*)\.([a-z_.]+)\.lora_([AB])$/;

/**
 * Inverse of adapterToNamedTensors. Only names starting with `prefix` are taken; each of those
 * must be a LoRA half of one of the config's targets (else ADAPTER_MODULE), float32, 2-D with
 * rank r where it must be (else ADAPTER_SHAPE). Arrays are copied, so the adapter does not
 * alias a frame buffer that may be reused. Full shape and config checks against the global
 * adapter are checkAdapterUpdate's job.
 */
export function adapterFromNamedTensors(
  config: LoraConfig,
  tensors: Map<string, { data: Float32Array | Int32Array; shape: number[] }>,
  prefix = '',
): LoraAdapter {
  const halves = new Map<string, { layer: number; target: number; A?: Tensor; B?: Tensor }>();
  for (const [name, t] of tensors) {
    if (!name.startsWith(prefix)) continue;
    const rest = name.slice(prefix.length);
    const m = NAMED_RE.exec(rest);
    const target = m?.[2];
    if (!m || target === undefined || !isLoraTarget(target) || !config.targets.includes(target)) {
      throw new AdapterCheckError(
        'ADAPTER_MODULE',
        `adapter tensor "${name}" is not ${prefix}h.{i}.{${config.targets.join('|')}}.lora_A/lora_B`,
      );
    }
    if (!(t.data instanceof Float32Array)) {
      throw new AdapterCheckError('ADAPTER_SHAPE', `adapter tensor "${name}" must be float32`);
    }
    const half = m[3] as 'A' | 'B';
    const rankDim = half === 'A' ? t.shape[1] : t.shape[0];
    if (t.shape.length !== 2 || rankDim !== config.r || t.data.length !== numel(t.shape)) {
      throw new AdapterCheckError(
        'ADAPTER_SHAPE',
        `adapter tensor "${name}" has shape [${t.shape.join(', ')}] with ${t.data.length} values; lora_${half} must be ${half === 'A' ? '[in, r]' : '[r, out]'} with r = ${config.r}`,
      );
    }
    const path = `h.${m[1]}.${target}`;
    const h = halves.get(path) ?? { layer: Number(m[1]), target: LORA_TARGETS.indexOf(target) };
    h[half] = { shape: [...t.shape], data: t.data.slice() };
    halves.set(path, h);
  }
  // canonical order (block, then target), as the PEFT reader produces it
  const sorted = [...halves].sort(([, a], [, b]) => a.layer - b.layer || a.target - b.target);
  const layers = new Map<string, LoraPair>();
  for (const [path, h] of sorted) {
    if (!h.A || !h.B) {
      throw new AdapterCheckError('ADAPTER_MODULE', `adapter module "${prefix}${path}" has lora_${h.A ? 'A' : 'B'} but no lora_${h.A ? 'B' : 'A'}`);
    }
    layers.set(path, { A: h.A, B: h.B });
  }
  return { config: cloneConfig(config), layers };
}
