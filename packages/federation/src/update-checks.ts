/**
 * The checks an uploaded adapter must pass before it may take part in aggregation.
 */
import {
  type LoraAdapter,
  type LoraConfig,
  type LoraPair,
  AdapterCheckError,
  adapterElementCount,
  numel,
  sameLoraConfig,
  sameShape,
} from '@splitllm/model';

/** The L2 norm of (update - global) over the modules the update holds. */
export function changeNorm(global: LoraAdapter, update: LoraAdapter): number {
  let sq = 0;
  for (const [path, pair] of update.layers) {
    const g = global.layers.get(path)!;
    for (const half of ['A', 'B'] as const) {
      const u = pair[half].data;
      const gd = g[half].data;
      for (let i = 0; i < u.length; i++) {
        const d = u[i] - gd[i];
        sq += d * d;
      }
    }
  }
  return Math.sqrt(sq);
}

function describeConfig(c: LoraConfig): string {
  return `r=${c.r}, alpha=${c.alpha}, targets=[${c.targets.join(', ')}]`;
}

export function checkConfig(global: LoraAdapter, update: LoraAdapter, who: string): void {
  if (!sameLoraConfig(global.config, update.config)) {
    throw new AdapterCheckError(
      'ADAPTER_CONFIG',
      `${who}: LoRA config ${describeConfig(update.config)} differs from the global ${describeConfig(global.config)}`,
    );
  }
}

export function checkPairShape(path: string, pair: LoraPair, want: LoraPair, who: string): void {
  for (const half of ['A', 'B'] as const) {
    const t = pair[half];
    const w = want[half];
    // a lying shape (data length != product of dims) must not slip through a shape-only compare
    if (!sameShape(t.shape, w.shape) || t.data.length !== numel(w.shape)) {
      throw new AdapterCheckError(
        'ADAPTER_SHAPE',
        `${who}: "${path}" ${half} is [${t.shape.join(', ')}] with ${t.data.length} values, ` +
          `the global has [${w.shape.join(', ')}]`,
      );
    }
  }
}

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
      throw new AdapterCheckError(
        'ADAPTER_MODULE',
        `${who}: module "${path}" was not expected (expected ${o.modules.length} modules: ${o.modules.join(', ')})`,
      );
    }
  }
  for (const path of expected) {
    if (!update.layers.has(path)) throw new AdapterCheckError('ADAPTER_MODULE', `${who}: module "${path}" is missing`);
    if (!global.layers.has(path))
      throw new AdapterCheckError('ADAPTER_MODULE', `${who}: module "${path}" is not in the global adapter`);
  }
  for (const [path, pair] of update.layers) checkPairShape(path, pair, global.layers.get(path)!, who);

  for (const [path, pair] of update.layers) {
    for (const half of ['A', 'B'] as const) {
      const u = pair[half].data;
      for (let i = 0; i < u.length; i++) {
        if (!Number.isFinite(u[i])) {
          throw new AdapterCheckError('ADAPTER_NOT_FINITE', `${who}: "${path}" ${half}[${i}] is ${u[i]}`);
        }
      }
    }
  }
  const norm = changeNorm(global, update);
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
  return checkAdapterUpdate(global, update, {
    modules: [...global.layers.keys()],
    maxUpdateNorm: adamUpdateNormBound(lr, steps, adapterElementCount(global)),
  });
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
