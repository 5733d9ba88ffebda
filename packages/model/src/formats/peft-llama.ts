/**
 * Hugging Face PEFT layout of a LoRA adapter for the LLaMA family (`LlamaForCausalLM`,
 * `Qwen2ForCausalLM`): `adapter_config.json` plus `adapter_model.safetensors`, as
 * `PeftModel.save_pretrained` writes them and `PeftModel.from_pretrained` reads them, so an
 * adapter trained here loads in PEFT and the reverse.
 *
 * The base linears are nn.Linear (`fan_in_fan_out: false`), and PEFT's two LoRA linears keep
 * torch's [out_features, in_features] layout:
 *   base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight  [r, in]   = our A^T
 *   base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight  [out, r]  = our B^T
 * (`base_model.model.` is PeftModel's prefix, `model.layers...` the module's name inside the
 * CausalLM), and the update x A B * alpha / r is the same. `target_modules` is read as PEFT
 * reads it, a list of names or one regex (peftSelectedTargets in peft.ts), and must select the
 * same targets on every adapted layer: that is the adapter shape we train.
 *
 * Every error is a PeftError whose message names the file and, where there is one, the tensor or
 * the setting. Browser-safe.
 */
import type { LlamaConfig } from '../llama-config';
import {
  isLlamaLoraTarget,
  LLAMA_LORA_TARGETS,
  type LlamaLoraAdapter,
  type LlamaLoraTarget,
  llamaLoraModulePath,
  llamaLoraTargetDims,
  parseLlamaLoraModulePath,
} from '../llama-lora';
import type { LoraAdapter, LoraPair } from '../lora';
import type { Tensor } from '../tensor';
import {
  adapterToPeft,
  PEFT_CONFIG_FILE,
  PEFT_WEIGHTS_FILE,
  type PeftModule,
  PeftError,
  peftNamesSetting,
  peftSelectedTargets,
  transpose2d,
} from './peft';
import { readSafetensors, writeSafetensors } from './safetensors';

/** PeftModel's prefix plus the CausalLM's `model.` */
export const LLAMA_PEFT_KEY_PREFIX = 'base_model.model.model.';

/** The layers_pattern PEFT uses for these models (the ModuleList is `model.layers`). */
const LAYERS_PATTERN = 'layers';

export interface LlamaAdapterToPeftOptions {
  /** Written as `base_model_name_or_path` (default null: PEFT then needs the model passed in). */
  baseModel?: string | null;
  /**
   * Layers of the base model. When given and the adapter covers all of them,
   * `layers_to_transform` is left out; otherwise it lists the covered layers.
   */
  nLayer?: number;
}

export interface LlamaAdapterFromPeftOptions {
  /**
   * The base model: every tensor's shape is then checked against its dimensions, a layer past
   * its last is refused, and a regex `target_modules` must select its targets on all its
   * layers. Without it, shapes must agree with one another and layers run from 0 to the last
   * one the tensors cover.
   */
  model?: LlamaConfig;
  /** How messages name the two files (default adapter_config.json, adapter_model.safetensors). */
  configFile?: string;
  weightsFile?: string;
}

/** The module names of a LlamaForCausalLM / Qwen2ForCausalLM as PEFT sees them, for `layers`. */
export function llamaPeftModules(layers: readonly number[]): PeftModule<LlamaLoraTarget>[] {
  const plain = (name: string, layer: number | null = null): PeftModule<LlamaLoraTarget> => ({
    name,
    layer,
    target: null,
  });
  const out = ['model', 'model.embed_tokens', 'model.layers'].map((n) => plain(n));
  for (const i of layers) {
    const p = `model.layers.${i}`;
    // self_attn.rotary_emb exists in older transformers only; listing it costs nothing
    const parts = ['', '.self_attn', '.self_attn.rotary_emb', '.mlp', '.mlp.act_fn', '.input_layernorm'];
    for (const sub of [...parts, '.post_attention_layernorm']) out.push(plain(`${p}${sub}`, i));
    for (const t of LLAMA_LORA_TARGETS) out.push({ name: `model.${llamaLoraModulePath(i, t)}`, layer: i, target: t });
  }
  out.push(plain('model.norm'), plain('model.rotary_emb'), plain('lm_head'));
  return out;
}

function sortKey(layer: number, target: LlamaLoraTarget): number {
  return layer * LLAMA_LORA_TARGETS.length + LLAMA_LORA_TARGETS.indexOf(target);
}

/** The PEFT `adapter_config.json` object and `adapter_model.safetensors` bytes of a LLaMA-family adapter. */
export function llamaAdapterToPeft(
  adapter: LlamaLoraAdapter,
  opts: LlamaAdapterToPeftOptions = {},
): { config: Record<string, unknown>; safetensors: Uint8Array } {
  const fail: (msg: string) => never = (msg) => {
    throw new PeftError(`LLaMA LoRA adapter: ${msg}`);
  };
  const { r, alpha, targets } = adapter.config;
  if (!Number.isInteger(r) || r <= 0) fail(`r must be a positive integer, got ${r}`);
  if (!(alpha > 0)) fail(`alpha must be positive, got ${alpha}`);
  if (targets.length === 0) fail('no targets');
  if (adapter.layers.size === 0) fail('no layers');

  const entries = [...adapter.layers].map(([path, pair]) => {
    const parsed = parseLlamaLoraModulePath(path);
    if (!parsed) {
      fail(`module path "${path}" is not layers.{i}.self_attn|mlp.{${LLAMA_LORA_TARGETS.join('|')}}`);
    }
    if (!targets.includes(parsed.target)) {
      fail(`module "${path}" is not one of the adapter's targets [${targets.join(', ')}]`);
    }
    return { path, pair, ...parsed };
  });
  entries.sort((a, b) => sortKey(a.layer, a.target) - sortKey(b.layer, b.target));
  const layers = [...new Set(entries.map((e) => e.layer))];
  // PEFT adapts every target on every transformed layer: anything short of the full product
  // would make PEFT create modules we have no weights for
  for (const layer of layers) {
    for (const target of targets) {
      if (!adapter.layers.has(llamaLoraModulePath(layer, target))) {
        fail(`layer ${layer} has no weights for target ${target} (PEFT needs every target on every layer)`);
      }
    }
  }
  if (opts.nLayer !== undefined && layers[layers.length - 1] >= opts.nLayer) {
    fail(`layer ${layers[layers.length - 1]} is past the model's ${opts.nLayer} layers`);
  }

  const tensors: Array<[string, Tensor]> = [];
  for (const { path, pair } of entries) {
    const { A, B } = pair;
    const ok = A.shape.length === 2 && B.shape.length === 2 && A.shape[1] === r && B.shape[0] === r;
    if (!ok || A.data.length !== A.shape[0] * r || B.data.length !== r * B.shape[1]) {
      fail(
        `"${path}" has A [${A.shape.join(', ')}] and B [${B.shape.join(', ')}], expected [in, ${r}] and [${r}, out]`,
      );
    }
    tensors.push([`base_model.model.model.${path}.lora_A.weight`, transpose2d(A)]);
    tensors.push([`base_model.model.model.${path}.lora_B.weight`, transpose2d(B)]);
  }

  const coversAll = opts.nLayer !== undefined && layers.length === opts.nLayer && layers.every((l, i) => l === i);
  const config: Record<string, unknown> = {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: opts.baseModel ?? null,
    revision: null,
    r,
    lora_alpha: alpha,
    lora_dropout: 0,
    target_modules: LLAMA_LORA_TARGETS.filter((t) => targets.includes(t)),
    fan_in_fan_out: false,
    bias: 'none',
    use_rslora: false,
    use_dora: false,
    modules_to_save: null,
    init_lora_weights: true,
    inference_mode: true,
    layers_to_transform: coversAll ? null : layers,
    layers_pattern: coversAll ? null : LAYERS_PATTERN,
  };
  return { config, safetensors: writeSafetensors(tensors, { format: 'pt' }) };
}

const KEY_RE =
  /^base_model\.model\.model\.layers\.(0|[1-9]\d*)\.(self_attn|mlp)\.([a-z_]+)\.lora_([AB])(?:\.default)?\.weight$/;

/** Settings that change the adapter's math (or add weights) when set; refused by name. */
function refuseUnsupported(cfg: Record<string, unknown>, fail: (msg: string) => never): void {
  if (cfg.peft_type !== 'LORA') fail(`"peft_type" is ${JSON.stringify(cfg.peft_type)}, only "LORA" is supported`);
  const task = cfg.task_type;
  if (task !== undefined && task !== null && task !== 'CAUSAL_LM') {
    fail(`"task_type" is ${JSON.stringify(task)}; only "CAUSAL_LM" adapters fit a causal language model`);
  }
  // PEFT itself turns fan_in_fan_out off for nn.Linear (with a warning), so true reads the same
  if (cfg.fan_in_fan_out !== undefined && typeof cfg.fan_in_fan_out !== 'boolean') {
    fail(`"fan_in_fan_out" must be true or false, got ${JSON.stringify(cfg.fan_in_fan_out)}`);
  }
  if (cfg.bias !== undefined && cfg.bias !== null && cfg.bias !== 'none') {
    fail(`"bias" ${JSON.stringify(cfg.bias)} is not supported (only "none")`);
  }
  const flags: Array<[string, string]> = [
    ['use_rslora', 'the scale must be lora_alpha / r'],
    ['use_dora', 'DoRA adds a magnitude vector per module'],
    ['lora_bias', 'a bias on lora_B is not part of our LoRA'],
  ];
  for (const [key, why] of flags) if (cfg[key] === true) fail(`"${key}" is not supported (${why})`);
  const empty = (v: unknown) =>
    v === undefined ||
    v === null ||
    (Array.isArray(v) && v.length === 0) ||
    (typeof v === 'object' && Object.keys(v as object).length === 0);
  const settings: Array<[string, string]> = [
    ['rank_pattern', 'per-module r'],
    ['alpha_pattern', 'per-module alpha'],
    ['modules_to_save', 'fully trained modules'],
    ['layer_replication', 'repeated layers'],
    ['trainable_token_indices', 'trained embedding rows'],
    ['target_parameters', 'LoRA on bare parameters'],
  ];
  for (const [key, what] of settings) {
    if (!empty(cfg[key])) fail(`"${key}" (${what}) is not supported, got ${JSON.stringify(cfg[key])}`);
  }
}

function layersToTransform(cfg: Record<string, unknown>, fail: (msg: string) => never): number[] | null {
  const ltt = cfg.layers_to_transform;
  if (ltt === undefined || ltt === null) return null;
  const list = typeof ltt === 'number' ? [ltt] : ltt;
  if (!Array.isArray(list) || !list.every((l) => typeof l === 'number' && Number.isInteger(l) && l >= 0)) {
    fail(`"layers_to_transform" must list layer indices, got ${JSON.stringify(ltt)}`);
  }
  // PEFT finds the index after the layers_pattern component; these models call it "layers"
  const lp = cfg.layers_pattern;
  const patterns = lp === undefined || lp === null ? [] : typeof lp === 'string' ? [lp] : lp;
  if (!Array.isArray(patterns) || (patterns.length > 0 && !patterns.includes(LAYERS_PATTERN))) {
    fail(`"layers_pattern" ${JSON.stringify(lp)} does not name "${LAYERS_PATTERN}", the layer list of these models`);
  }
  return list as number[];
}

/**
 * Reads a PEFT LoRA adapter for a LLaMA-family model into our layout (A [in, r], B [r, out]),
 * checking the config, that target_modules selects targets the model has, that every selected
 * module has both tensors and nothing else is stored, and every shape.
 */
export function llamaAdapterFromPeft(
  configJson: unknown,
  safetensorsBytes: Uint8Array,
  opts: LlamaAdapterFromPeftOptions = {},
): LlamaLoraAdapter {
  const configFile = opts.configFile ?? PEFT_CONFIG_FILE;
  const weightsFile = opts.weightsFile ?? PEFT_WEIGHTS_FILE;
  const failConfig: (msg: string) => never = (msg) => {
    throw new PeftError(`${configFile}: ${msg}`);
  };
  const failWeights: (msg: string) => never = (msg) => {
    throw new PeftError(`${weightsFile}: ${msg}`);
  };
  if (typeof configJson !== 'object' || configJson === null || Array.isArray(configJson)) {
    failConfig('not a JSON object');
  }
  const cfg = configJson as Record<string, unknown>;
  refuseUnsupported(cfg, failConfig);
  const r = cfg.r;
  if (typeof r !== 'number' || !Number.isInteger(r) || r <= 0) {
    failConfig(`"r" must be a positive integer, got ${JSON.stringify(r)}`);
  }
  const alpha = cfg.lora_alpha;
  if (typeof alpha !== 'number' || !Number.isFinite(alpha) || alpha <= 0) {
    failConfig(`"lora_alpha" must be a positive number, got ${JSON.stringify(alpha)}`);
  }
  const tm = cfg.target_modules;
  const regexForm = typeof tm === 'string';
  if (!regexForm && !(Array.isArray(tm) && tm.length > 0 && tm.every((t) => typeof t === 'string'))) {
    failConfig(`"target_modules" must be a list of module names or a string, got ${JSON.stringify(tm)}`);
  }
  if (regexForm) {
    // PEFT refuses these two beside a string target_modules (LoraConfig.__post_init__)
    for (const key of ['layers_to_transform', 'layers_pattern'] as const) {
      if (cfg[key] !== undefined && cfg[key] !== null) {
        failConfig(`"${key}" cannot be used when "target_modules" is a string (a regular expression), as in PEFT`);
      }
    }
  }
  const ltt = layersToTransform(cfg, failConfig);

  // the tensors: each one a LoRA half of a known module, at most once
  const raw = readSafetensors(safetensorsBytes);
  const halves = new Map<
    string,
    { layer: number; target: LlamaLoraTarget; A?: [string, Tensor]; B?: [string, Tensor] }
  >();
  const nLayer = opts.model?.nLayer;
  for (const [key, t] of raw) {
    const m = KEY_RE.exec(key);
    const parsed = m ? parseLlamaLoraModulePath(`layers.${m[1]}.${m[2]}.${m[3]}`) : undefined;
    if (!m || !parsed) {
      failWeights(
        `tensor "${key}" is not the LoRA weight of a LLaMA-family linear ` +
          `(expected ${LLAMA_PEFT_KEY_PREFIX}layers.{i}.self_attn|mlp.{${LLAMA_LORA_TARGETS.join('|')}}` +
          '.lora_A|lora_B.weight)',
      );
    }
    if (nLayer !== undefined && parsed.layer >= nLayer) {
      failWeights(`tensor "${key}" is for layer ${parsed.layer}, but the model has ${nLayer} layers`);
    }
    if (t.shape.length !== 2) failWeights(`tensor "${key}" has shape [${t.shape.join(', ')}], expected 2-D`);
    const path = llamaLoraModulePath(parsed.layer, parsed.target);
    const h = halves.get(path) ?? { layer: parsed.layer, target: parsed.target };
    const side = m[4] as 'A' | 'B';
    // "x" and "x.default" name the same weight; both present is ambiguous
    if (h[side]) failWeights(`tensor "${key}" and "${h[side]![0]}" are the same weight`);
    h[side] = [key, t];
    halves.set(path, h);
  }
  if (halves.size === 0) failWeights('holds no LoRA tensors');

  // what target_modules selects, over the model's layers (or those the tensors cover)
  const last = Math.max(...[...halves.values()].map((h) => h.layer));
  const layers = Array.from({ length: nLayer ?? last + 1 }, (_, i) => i);
  const selection = peftSelectedTargets(
    {
      targetModules: tm as string | string[],
      excludeModules: peftNamesSetting(cfg, 'exclude_modules', failConfig),
      layersToTransform: ltt,
    },
    llamaPeftModules(layers),
    layers,
    LLAMA_LORA_TARGETS,
    failConfig,
  );
  const selected = new Set<string>();
  for (const l of selection.layers) for (const t of selection.targets) selected.add(llamaLoraModulePath(l, t));
  for (const [path, h] of halves) {
    if (!selected.has(path)) {
      const key = (h.A ?? h.B)![0];
      failWeights(`tensor "${key}" is for ${path}, which ${configFile}'s target_modules / layers do not select`);
    }
  }
  const keyOf = (path: string, side: 'A' | 'B') => `${LLAMA_PEFT_KEY_PREFIX}${path}.lora_${side}.weight`;
  for (const path of selected) {
    for (const side of ['A', 'B'] as const) {
      if (!halves.get(path)?.[side])
        failWeights(`tensor "${keyOf(path, side)}" is missing (${configFile} selects ${path})`);
    }
  }

  // shapes: lora_A [r, in], lora_B [out, r]; the model's dimensions when known, else one
  // width per role (hidden, q, kv, intermediate) across targets and layers
  const dims = new Map<string, [number, string]>(); // role -> [width, first tensor that set it]
  const roles: Record<LlamaLoraTarget, [string, string]> = {
    q_proj: ['hidden', 'q'],
    k_proj: ['hidden', 'kv'],
    v_proj: ['hidden', 'kv'],
    o_proj: ['q', 'hidden'],
    gate_proj: ['hidden', 'intermediate'],
    up_proj: ['hidden', 'intermediate'],
    down_proj: ['intermediate', 'hidden'],
  };
  const check = (key: string, t: Tensor, want: [number | string, number | string]) => {
    const got = t.shape;
    const notes: string[] = [];
    const exp = want.map((w, i) => {
      if (typeof w === 'number') return w;
      const seen = dims.get(w);
      if (!seen) {
        dims.set(w, [got[i], key]);
        return got[i];
      }
      notes.push(`the ${w} width ${seen[0]} of "${seen[1]}"`);
      return seen[0];
    });
    if (got[0] !== exp[0] || got[1] !== exp[1]) {
      const from = notes.length > 0 ? ` (r = ${r}; ${notes.join(', ')})` : ` (r = ${r})`;
      failWeights(`tensor "${key}" is [${got.join(', ')}], expected [${exp.join(', ')}]${from}`);
    }
  };
  const entries = [...halves.values()].sort((a, b) => sortKey(a.layer, a.target) - sortKey(b.layer, b.target));
  const layersOut = new Map<string, LoraPair>();
  for (const h of entries) {
    const [inRole, outRole] = roles[h.target];
    const [din, dout]: [number | string, number | string] = opts.model
      ? llamaLoraTargetDims(opts.model, h.target)
      : [inRole, outRole];
    const [keyA, A] = h.A!;
    const [keyB, B] = h.B!;
    check(keyA, A, [r, din]);
    check(keyB, B, [dout, r]);
    layersOut.set(llamaLoraModulePath(h.layer, h.target), { A: transpose2d(A), B: transpose2d(B) });
  }
  return { config: { r, alpha, targets: selection.targets }, layers: layersOut };
}

/**
 * The PEFT form of an adapter of either family, by its targets (the two families' names are
 * disjoint): llamaAdapterToPeft for q_proj ... down_proj, adapterToPeft (peft.ts) for GPT-2's.
 */
export function modelAdapterToPeft(
  adapter: LoraAdapter,
  opts: { baseModel?: string; nLayer?: number } = {},
): { config: Record<string, unknown>; safetensors: Uint8Array } {
  if (adapter.config.targets.some(isLlamaLoraTarget)) return llamaAdapterToPeft(adapter as LlamaLoraAdapter, opts);
  return adapterToPeft(adapter, opts);
}
