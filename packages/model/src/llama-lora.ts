/**
 * LoRA on the LLaMA family's linears (LLaMA, Qwen2): y = x W^T + b + (alpha / r) * (x A) B.
 *
 * The pairs are stored exactly as GPT-2's (lora.ts): A [in, r] (Kaiming-uniform, PEFT's init),
 * B [r, out] (zero, so a fresh adapter changes nothing), scale alpha / r, and the same LoraPair
 * type, so AdamW, FedAvg, clipping and the wire form treat both families' pairs alike. Only the
 * base weight differs: nn.Linear keeps W as [out, in], GPT-2's Conv1D as [in, out]; the model
 * (llama.ts) multiplies by W^T, the adapter does not care. PEFT's lora_A.weight is [r, in] = A^T
 * and lora_B.weight [out, r] = B^T for nn.Linear as for Conv1D.
 *
 * Targets are PEFT's names for these models; a module path is the Hugging Face module name
 * without the `model.` prefix: `layers.{i}.self_attn.q_proj`, `layers.{i}.mlp.gate_proj`.
 */
import { AdapterCheckError } from './adapter-error';
import { CodedError } from './coded-error';
import type { LlamaConfig } from './llama-config';
import type { LoraPair } from './step-types';
import { Rng } from './rng';
import { numel } from './tensor';

export const LLAMA_LORA_TARGETS = [
  'q_proj',
  'k_proj',
  'v_proj',
  'o_proj',
  'gate_proj',
  'up_proj',
  'down_proj',
] as const;
export type LlamaLoraTarget = (typeof LLAMA_LORA_TARGETS)[number];

/**
 * q_proj and v_proj, as PEFT's default for llama and qwen2 (its
 * TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING): the LoRA paper (Hu et al. 2021, section 7.1)
 * found that adapting W_q and W_v together beats spending the same parameter budget on any
 * single projection, and matching PEFT means an adapter trained here with defaults loads there
 * with defaults, and the reverse.
 */
export const DEFAULT_LLAMA_LORA_TARGETS: LlamaLoraTarget[] = ['q_proj', 'v_proj'];

export interface LlamaLoraConfig {
  r: number;
  alpha: number;
  targets: LlamaLoraTarget[];
}

export const DEFAULT_LLAMA_LORA_CONFIG: LlamaLoraConfig = { r: 8, alpha: 16, targets: DEFAULT_LLAMA_LORA_TARGETS };

/** Adapter weights keyed by module path, e.g. `layers.3.self_attn.q_proj`. */
export interface LlamaLoraAdapter {
  config: LlamaLoraConfig;
  layers: Map<string, LoraPair>;
}

/** A LoRA setting that cannot be: a target the model's family lacks, a rank or alpha out of range. */
export class LoraConfigError extends CodedError<'BAD_LORA_TARGET' | 'BAD_LORA_CONFIG'> {}

/** The LLaMA family's LoraConfigError (kept as its own name for the callers that catch it). */
export class LlamaLoraError extends LoraConfigError {}

export function llamaLoraScale(c: LlamaLoraConfig): number {
  return c.alpha / c.r;
}

export function isLlamaLoraTarget(s: string): s is LlamaLoraTarget {
  return (LLAMA_LORA_TARGETS as readonly string[]).includes(s);
}

/** `self_attn` for the attention projections, `mlp` for the SwiGLU ones. */
export function llamaLoraTargetModule(target: LlamaLoraTarget): 'self_attn' | 'mlp' {
  return target === 'gate_proj' || target === 'up_proj' || target === 'down_proj' ? 'mlp' : 'self_attn';
}

/**
 * A comma-separated list (or an array) of targets, deduplicated in the order given. An unknown
 * name is refused with the name and the valid ones; `self_attn.q_proj` / `mlp.up_proj` forms are
 * accepted too, since that is how the module paths spell them.
 */
export function parseLlamaLoraTargets(list: string | readonly string[]): LlamaLoraTarget[] {
  const items = typeof list === 'string' ? list.split(',') : [...list];
  const out: LlamaLoraTarget[] = [];
  for (const raw of items.map((s) => s.trim()).filter(Boolean)) {
    const name = raw.replace(/^(self_attn|mlp)\./, '');
    if (!isLlamaLoraTarget(name) || (name !== raw && `${llamaLoraTargetModule(name)}.${name}` !== raw)) {
      throw new LlamaLoraError(
        'BAD_LORA_TARGET',
        `unknown LoRA target "${raw}" for a LLaMA-family model (choose from ${LLAMA_LORA_TARGETS.join(', ')})`,
      );
    }
    if (!out.includes(name)) out.push(name);
  }
  if (out.length === 0)
    throw new LlamaLoraError('BAD_LORA_TARGET', 'at least one LoRA target is needed for a LLaMA-family model');
  return out;
}

/** [in, out] of a target's base linear (nn.Linear stores its weight as [out, in]). */
export function llamaLoraTargetDims(c: LlamaConfig, target: LlamaLoraTarget): [number, number] {
  const D = c.hiddenSize;
  const q = c.nHead * c.headDim;
  const kv = c.nKvHead * c.headDim;
  const F = c.intermediateSize;
  switch (target) {
    case 'q_proj':
      return [D, q];
    case 'k_proj':
    case 'v_proj':
      return [D, kv];
    case 'o_proj':
      return [q, D];
    case 'gate_proj':
    case 'up_proj':
      return [D, F];
    case 'down_proj':
      return [F, D];
  }
}

export function llamaLoraModulePath(layer: number, target: LlamaLoraTarget): string {
  return `layers.${layer}.${llamaLoraTargetModule(target)}.${target}`;
}

/** Inverse of llamaLoraModulePath; undefined for anything else. */
export function parseLlamaLoraModulePath(path: string): { layer: number; target: LlamaLoraTarget } | undefined {
  const m = /^layers\.(0|[1-9]\d*)\.(self_attn|mlp)\.([a-z_]+)$/.exec(path);
  if (!m || !isLlamaLoraTarget(m[3]) || llamaLoraTargetModule(m[3]) !== m[2]) return undefined;
  return { layer: Number(m[1]), target: m[3] };
}

function checkLoraConfig(config: LlamaLoraConfig): void {
  if (!(Number.isInteger(config.r) && config.r > 0))
    throw new LlamaLoraError('BAD_LORA_CONFIG', `LoRA rank r must be a positive integer, got ${config.r}`);
  if (!(config.alpha > 0 && Number.isFinite(config.alpha)))
    throw new LlamaLoraError('BAD_LORA_CONFIG', `LoRA alpha must be a positive number, got ${config.alpha}`);
  for (const t of config.targets) {
    if (!isLlamaLoraTarget(t)) parseLlamaLoraTargets([t]); // throws, naming it
  }
}

/**
 * A fresh adapter for blocks [from, to): A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's
 * kaiming_uniform_(a = sqrt(5)) on lora_A [r, in], whose fan-in is `in`), B = 0. One seeded
 * stream per (layer, target), as lora.ts does for GPT-2, so a segment's adapters are the ones a
 * centralized run of the same seed would make.
 */
export function initLlamaLoraAdapter(
  c: LlamaConfig,
  config: LlamaLoraConfig,
  seed: number,
  from = 0,
  to = c.nLayer,
): LlamaLoraAdapter {
  checkLoraConfig(config);
  const layers = new Map<string, LoraPair>();
  for (let i = from; i < to; i++) {
    for (const target of config.targets) {
      const [din, dout] = llamaLoraTargetDims(c, target);
      const rng = new Rng(seed * 1000003 + i * 97 + LLAMA_LORA_TARGETS.indexOf(target) + 1);
      const bound = 1 / Math.sqrt(din);
      const A = { shape: [din, config.r], data: rng.fillUniform(new Float32Array(din * config.r), -bound, bound) };
      const B = { shape: [config.r, dout], data: new Float32Array(config.r * dout) };
      layers.set(llamaLoraModulePath(i, target), { A, B });
    }
  }
  return { config: { ...config, targets: [...config.targets] }, layers };
}

/** Number of LoRA parameters (A and B) of blocks [from, to). */
export function llamaLoraParameterCount(c: LlamaConfig, lora: LlamaLoraConfig, from: number, to: number): number {
  let perBlock = 0;
  for (const t of lora.targets) {
    const [din, dout] = llamaLoraTargetDims(c, t);
    perBlock += lora.r * (din + dout);
  }
  return perBlock * (to - from);
}

/**
 * Throws AdapterCheckError (the code every adapter check uses) when an adapter does not belong
 * to a model of this config: an unknown module, a module past the last layer, a target the
 * adapter's config does not list, or a pair of the wrong shape.
 */
export function checkLlamaAdapterFits(c: LlamaConfig, adapter: LlamaLoraAdapter): void {
  const r = adapter.config.r;
  for (const [path, pair] of adapter.layers) {
    const parsed = parseLlamaLoraModulePath(path);
    if (!parsed) {
      throw new AdapterCheckError(
        'ADAPTER_MODULE',
        `adapter: unknown module "${path}" (expected layers.{i}.self_attn|mlp.{${LLAMA_LORA_TARGETS.join('|')}})`,
      );
    }
    if (parsed.layer >= c.nLayer)
      throw new AdapterCheckError('ADAPTER_MODULE', `adapter: module "${path}" is past the model's ${c.nLayer} layers`);
    if (!adapter.config.targets.includes(parsed.target)) {
      throw new AdapterCheckError(
        'ADAPTER_MODULE',
        `adapter: module "${path}" is not one of the adapter's targets [${adapter.config.targets.join(', ')}]`,
      );
    }
    const [din, dout] = llamaLoraTargetDims(c, parsed.target);
    const shapesOk =
      pair.A.shape.length === 2 &&
      pair.B.shape.length === 2 &&
      pair.A.shape[0] === din &&
      pair.A.shape[1] === r &&
      pair.B.shape[0] === r &&
      pair.B.shape[1] === dout;
    if (!shapesOk || pair.A.data.length !== numel(pair.A.shape) || pair.B.data.length !== numel(pair.B.shape)) {
      throw new AdapterCheckError(
        'ADAPTER_SHAPE',
        `adapter: "${path}" has A [${pair.A.shape}] and B [${pair.B.shape}] (${pair.A.data.length} + ` +
          `${pair.B.data.length} values), the model needs A [${din},${r}] and B [${r},${dout}]`,
      );
    }
  }
}
