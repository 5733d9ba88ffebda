import type { Gpt2Config } from './config';
import { Rng } from './rng';
import { type Tensor, numel } from './tensor';

/**
 * LoRA on GPT-2's Conv1D linears: y = x W + b + (alpha / r) * (x A) B.
 * A is [in, r] (random init), B is [r, out] (zero init), so a fresh adapter changes nothing.
 * Targets name the module inside a block; `attn.c_proj` and `mlp.c_proj` are distinct.
 */
export const LORA_TARGETS = ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'] as const;
export type LoraTarget = (typeof LORA_TARGETS)[number];
export const DEFAULT_LORA_TARGETS: LoraTarget[] = ['attn.c_attn', 'attn.c_proj'];

export interface LoraConfig {
  r: number;
  alpha: number;
  targets: LoraTarget[];
}

export const DEFAULT_LORA_CONFIG: LoraConfig = { r: 8, alpha: 16, targets: DEFAULT_LORA_TARGETS };

export interface LoraPair {
  A: Tensor;
  B: Tensor;
}

/** Adapter weights keyed by module path, e.g. `h.3.attn.c_attn`. */
export interface LoraAdapter {
  config: LoraConfig;
  layers: Map<string, LoraPair>;
}

export function loraScale(c: LoraConfig): number {
  return c.alpha / c.r;
}

export function isLoraTarget(s: string): s is LoraTarget {
  return (LORA_TARGETS as readonly string[]).includes(s);
}

export function parseLoraTargets(list: string): LoraTarget[] {
  const out: LoraTarget[] = [];
  for (const raw of list
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    if (!isLoraTarget(raw)) throw new Error(`unknown LoRA target "${raw}" (choose from ${LORA_TARGETS.join(', ')})`);
    if (!out.includes(raw)) out.push(raw);
  }
  if (out.length === 0) throw new Error('at least one LoRA target is needed');
  return out;
}

/** [in, out] of a target's base linear. */
export function loraTargetDims(c: Gpt2Config, target: LoraTarget): [number, number] {
  switch (target) {
    case 'attn.c_attn':
      return [c.nEmbd, 3 * c.nEmbd];
    case 'attn.c_proj':
      return [c.nEmbd, c.nEmbd];
    case 'mlp.c_fc':
      return [c.nEmbd, c.nInner];
    case 'mlp.c_proj':
      return [c.nInner, c.nEmbd];
  }
}

export function loraModulePath(layer: number, target: LoraTarget): string {
  return `h.${layer}.${target}`;
}

/** Inverse of loraModulePath; undefined for anything else. */
export function parseLoraModulePath(path: string): { layer: number; target: LoraTarget } | undefined {
  const m = /^h\.(\d+)\.(.+)$/.exec(path);
  return m && isLoraTarget(m[2]) ? { layer: Number(m[1]), target: m[2] } : undefined;
}

/**
 * A fresh adapter for blocks [from, to): A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's default,
 * Kaiming-uniform with a = sqrt(5)), B = 0. Deterministic from the seed and independent of
 * the block range, so the user, edge and cloud segments initialize exactly the adapters a
 * centralized run would.
 */
export function initLoraAdapter(c: Gpt2Config, config: LoraConfig, seed: number, from = 0, to = c.nLayer): LoraAdapter {
  const layers = new Map<string, LoraPair>();
  for (let i = from; i < to; i++) {
    for (const target of config.targets) {
      const [din, dout] = loraTargetDims(c, target);
      // one stream per (layer, target) so a segment's init does not depend on other segments
      const rng = new Rng(seed * 1000003 + i * 97 + LORA_TARGETS.indexOf(target) + 1);
      const bound = 1 / Math.sqrt(din);
      const A = { shape: [din, config.r], data: rng.fillUniform(new Float32Array(din * config.r), -bound, bound) };
      const B = { shape: [config.r, dout], data: new Float32Array(config.r * dout) };
      layers.set(loraModulePath(i, target), { A, B });
    }
  }
  return { config: { ...config, targets: [...config.targets] }, layers };
}

/** Number of LoRA parameters (A and B) of blocks [from, to) for this config: what an adapter of them holds. */
export function loraParameterCount(c: Gpt2Config, lora: LoraConfig, from: number, to: number): number {
  let perBlock = 0;
  for (const t of lora.targets) {
    const [din, dout] = loraTargetDims(c, t);
    perBlock += lora.r * (din + dout);
  }
  return perBlock * (to - from);
}

/** Same rank, alpha and targets; target lists compare as sets (a PEFT round trip reorders them). */
export function sameLoraConfig(a: LoraConfig, b: LoraConfig): boolean {
  if (a.r !== b.r || a.alpha !== b.alpha) return false;
  const ta = new Set(a.targets);
  const tb = new Set(b.targets);
  return ta.size === tb.size && [...ta].every((t) => tb.has(t));
}

function describeLoraConfig(c: LoraConfig): string {
  return `r=${c.r} alpha=${c.alpha} on ${c.targets.join(',')}`;
}

/**
 * The adapter is one `who` (an engine, a trainer) can train blocks [from, to) with: LoRA config
 * `lora`, shapes that fit the model (checkAdapterFits), arrays as long as their shapes, and a
 * pair for every target of every block in range. Throws a readable Error otherwise.
 */
export function checkAdapterCovers(
  c: Gpt2Config,
  lora: LoraConfig,
  adapter: LoraAdapter,
  from: number,
  to: number,
  who: string,
): void {
  if (!sameLoraConfig(adapter.config, lora)) {
    throw new Error(
      `${who}: the adapter is LoRA ${describeLoraConfig(adapter.config)}, ` +
        `another LoRA config than the ${describeLoraConfig(lora)} it was made for`,
    );
  }
  checkAdapterFits(c, adapter);
  for (const [path, pair] of adapter.layers) {
    if (pair.A.data.length !== numel(pair.A.shape) || pair.B.data.length !== numel(pair.B.shape)) {
      throw new Error(`${who}: adapter "${path}" holds fewer or more values than its shapes say`);
    }
  }
  for (let layer = from; layer < to; layer++) {
    for (const target of lora.targets) {
      if (!adapter.layers.has(loraModulePath(layer, target)))
        throw new Error(`${who}: the adapter has no LoRA pair for ${loraModulePath(layer, target)}`);
    }
  }
}

/** Throws a clear error when an adapter does not belong to a model of this config. */
export function checkAdapterFits(c: Gpt2Config, adapter: LoraAdapter): void {
  for (const [path, pair] of adapter.layers) {
    const parsed = parseLoraModulePath(path);
    if (!parsed) throw new Error(`adapter: unknown module "${path}"`);
    if (parsed.layer >= c.nLayer) throw new Error(`adapter: module "${path}" is past the model's ${c.nLayer} layers`);
    const [din, dout] = loraTargetDims(c, parsed.target);
    const r = adapter.config.r;
    if (pair.A.shape[0] !== din || pair.A.shape[1] !== r || pair.B.shape[0] !== r || pair.B.shape[1] !== dout) {
      throw new Error(
        `adapter: "${path}" has A [${pair.A.shape}] and B [${pair.B.shape}], ` +
          `the model needs A [${din},${r}] and B [${r},${dout}]`,
      );
    }
  }
}
