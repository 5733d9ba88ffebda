import type { Gpt2Config } from './config';
import { isLlamaConfig, type ModelConfig } from './family';
import {
  checkLlamaAdapterFits,
  DEFAULT_LLAMA_LORA_TARGETS,
  initLlamaLoraAdapter,
  isLlamaLoraTarget,
  LLAMA_LORA_TARGETS,
  type LlamaLoraAdapter,
  type LlamaLoraConfig,
  type LlamaLoraTarget,
  llamaLoraModulePath,
  llamaLoraParameterCount,
  llamaLoraTargetDims,
  LoraConfigError,
  parseLlamaLoraModulePath,
  parseLlamaLoraTargets,
} from './llama-lora';
import { Rng } from './rng';
import type { LoraPair } from './step-types';
import { numel } from './tensor';

/**
 * LoRA, for every family: y = x W + b + (alpha / r) * (x A) B.
 * A is [in, r] (random init), B is [r, out] (zero init), so a fresh adapter changes nothing.
 *
 * GPT-2's targets name the Conv1D module inside a block (`attn.c_proj` and `mlp.c_proj` are
 * distinct; paths `h.{i}.attn.c_attn`); the LLaMA family's are PEFT's names (q_proj ... down_proj;
 * paths `layers.{i}.self_attn.q_proj`, see llama-lora.ts). The two name sets are disjoint, so a
 * target or a module path says its family by itself, and one LoraConfig / LoraAdapter type serves
 * both: AdamW, FedAvg, clipping, the wire form and the engines treat every pair alike. The functions
 * here that need the model's shapes take a ModelConfig and dispatch on its family; a target of the
 * other family is refused by name.
 */
export const LORA_TARGETS = ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'] as const;
export type Gpt2LoraTarget = (typeof LORA_TARGETS)[number];
export type LoraTarget = Gpt2LoraTarget | LlamaLoraTarget;
export const DEFAULT_LORA_TARGETS: Gpt2LoraTarget[] = ['attn.c_attn', 'attn.c_proj'];

export interface LoraConfig {
  r: number;
  alpha: number;
  targets: LoraTarget[];
}

/** GPT-2's default (the shipped model's); defaultLoraConfig gives each family's. */
export const DEFAULT_LORA_CONFIG: LoraConfig = { r: 8, alpha: 16, targets: DEFAULT_LORA_TARGETS };

/** r 8, alpha 16, and the family's default targets (GPT-2: c_attn and c_proj; LLaMA: q_proj and v_proj, as PEFT). */
export function defaultLoraConfig(c: ModelConfig): LoraConfig {
  return isLlamaConfig(c) ? { r: 8, alpha: 16, targets: [...DEFAULT_LLAMA_LORA_TARGETS] } : DEFAULT_LORA_CONFIG;
}

export type { LoraPair } from './step-types';

/** Adapter weights keyed by module path, e.g. `h.3.attn.c_attn`. */
export interface LoraAdapter {
  config: LoraConfig;
  layers: Map<string, LoraPair>;
}

export function loraScale(c: LoraConfig): number {
  return c.alpha / c.r;
}

export function isGpt2LoraTarget(s: string): s is Gpt2LoraTarget {
  return (LORA_TARGETS as readonly string[]).includes(s);
}

/** A target of either family. */
export function isLoraTarget(s: string): s is LoraTarget {
  return isGpt2LoraTarget(s) || isLlamaLoraTarget(s);
}

/** A target's place in its family's canonical order (block, then this): how adapters and files are sorted. */
export function loraTargetOrder(t: LoraTarget): number {
  return isLlamaLoraTarget(t) ? LLAMA_LORA_TARGETS.indexOf(t) : LORA_TARGETS.indexOf(t);
}

/** The targets a model of this config can take, in their canonical order. */
export function loraTargetsOf(c: ModelConfig): readonly LoraTarget[] {
  return isLlamaConfig(c) ? LLAMA_LORA_TARGETS : LORA_TARGETS;
}

/**
 * A comma-separated list of targets for a model of config `c` (GPT-2 when none is given),
 * deduplicated in the order given; a name the family lacks is refused with the valid ones.
 */
export function parseLoraTargets(list: string, c?: ModelConfig): LoraTarget[] {
  if (c && isLlamaConfig(c)) return parseLlamaLoraTargets(list);
  const out: Gpt2LoraTarget[] = [];
  for (const raw of list
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    if (!isGpt2LoraTarget(raw))
      throw new LoraConfigError(
        'BAD_LORA_TARGET',
        `unknown LoRA target "${raw}" for a GPT-2 model (choose from ${LORA_TARGETS.join(', ')})`,
      );
    if (!out.includes(raw)) out.push(raw);
  }
  if (out.length === 0) throw new LoraConfigError('BAD_LORA_TARGET', 'at least one LoRA target is needed');
  return out;
}

/**
 * A comma-separated list of targets of either family, before the model is known (a server's
 * flags): each name must be a target of some family, and all of one family; whether the model
 * has them is checkLoraTargetsFit's job once it is loaded.
 */
export function parseAnyLoraTargets(list: string): LoraTarget[] {
  const names = list
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const llama = names.some((n) => isLlamaLoraTarget(n.replace(/^(self_attn|mlp)\./, '')));
  return llama ? parseLlamaLoraTargets(names) : parseLoraTargets(list);
}

/** A LoRA config's targets all belong to the model's family; throws naming the first that does not. */
export function checkLoraTargetsFit(c: ModelConfig, lora: Pick<LoraConfig, 'targets'>): void {
  const valid = loraTargetsOf(c);
  for (const t of lora.targets) {
    if (!valid.includes(t)) {
      const family = isLlamaConfig(c) ? `${c.family}-family` : 'GPT-2';
      throw new LoraConfigError(
        'BAD_LORA_TARGET',
        `LoRA target "${t}" is not one a ${family} model has (choose from ${valid.join(', ')})`,
      );
    }
  }
}

/** The config as the LLaMA family's (its targets checked to be that family's). */
export function asLlamaLoraConfig(c: ModelConfig, lora: LoraConfig): LlamaLoraConfig {
  checkLoraTargetsFit(c, lora);
  return lora as LlamaLoraConfig;
}

/** The adapter as the LLaMA family's (its config's targets checked); its pairs are checked where it is used. */
export function asLlamaLoraAdapter(c: ModelConfig, adapter: LoraAdapter): LlamaLoraAdapter {
  checkLoraTargetsFit(c, adapter.config);
  return adapter as LlamaLoraAdapter;
}

/** [in, out] of a target's base linear. */
export function loraTargetDims(c: ModelConfig, target: LoraTarget): [number, number] {
  if (isLlamaConfig(c)) {
    if (!isLlamaLoraTarget(target)) checkLoraTargetsFit(c, { targets: [target] });
    return llamaLoraTargetDims(c, target as LlamaLoraTarget);
  }
  if (!isGpt2LoraTarget(target)) checkLoraTargetsFit(c, { targets: [target] });
  return gpt2LoraTargetDims(c, target as Gpt2LoraTarget);
}

function gpt2LoraTargetDims(c: Gpt2Config, target: Gpt2LoraTarget): [number, number] {
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

/** `h.{layer}.{target}` for GPT-2, `layers.{layer}.self_attn|mlp.{target}` for the LLaMA family. */
export function loraModulePath(layer: number, target: LoraTarget): string {
  return isLlamaLoraTarget(target) ? llamaLoraModulePath(layer, target) : `h.${layer}.${target}`;
}

/** Inverse of loraModulePath (either family's form); undefined for anything else. */
export function parseLoraModulePath(path: string): { layer: number; target: LoraTarget } | undefined {
  const m = /^h\.(\d+)\.(.+)$/.exec(path);
  if (m) return isGpt2LoraTarget(m[2]) ? { layer: Number(m[1]), target: m[2] } : undefined;
  return parseLlamaLoraModulePath(path);
}

/**
 * A fresh adapter for blocks [from, to): A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's default,
 * Kaiming-uniform with a = sqrt(5)), B = 0. Deterministic from the seed and independent of
 * the block range, so the user, edge and cloud segments initialize exactly the adapters a
 * centralized run would.
 */
export function initLoraAdapter(
  c: ModelConfig,
  config: LoraConfig,
  seed: number,
  from = 0,
  to = c.nLayer,
): LoraAdapter {
  if (isLlamaConfig(c)) return initLlamaLoraAdapter(c, asLlamaLoraConfig(c, config), seed, from, to);
  checkLoraTargetsFit(c, config);
  const layers = new Map<string, LoraPair>();
  for (let i = from; i < to; i++) {
    for (const target of config.targets) {
      const [din, dout] = loraTargetDims(c, target);
      // one stream per (layer, target) so a segment's init does not depend on other segments
      const rng = new Rng(seed * 1000003 + i * 97 + LORA_TARGETS.indexOf(target as Gpt2LoraTarget) + 1);
      const bound = 1 / Math.sqrt(din);
      const A = { shape: [din, config.r], data: rng.fillUniform(new Float32Array(din * config.r), -bound, bound) };
      const B = { shape: [config.r, dout], data: new Float32Array(config.r * dout) };
      layers.set(loraModulePath(i, target), { A, B });
    }
  }
  return { config: { ...config, targets: [...config.targets] }, layers };
}

/** Number of LoRA parameters (A and B) of blocks [from, to) for this config: what an adapter of them holds. */
export function loraParameterCount(c: ModelConfig, lora: LoraConfig, from: number, to: number): number {
  if (isLlamaConfig(c)) return llamaLoraParameterCount(c, asLlamaLoraConfig(c, lora), from, to);
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
  c: ModelConfig,
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
export function checkAdapterFits(c: ModelConfig, adapter: LoraAdapter): void {
  if (isLlamaConfig(c)) {
    checkLlamaAdapterFits(c, asLlamaLoraAdapter(c, adapter));
    return;
  }
  for (const [path, pair] of adapter.layers) {
    const parsed = parseLoraModulePath(path);
    if (!parsed || !isGpt2LoraTarget(parsed.target)) throw new Error(`adapter: unknown module "${path}"`);
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
