/**
 * Hugging Face PEFT layout of a GPT-2 LoRA adapter (what `PeftModel.save_pretrained` writes and
 * `PeftModel.from_pretrained` reads): `adapter_config.json` plus `adapter_model.safetensors`.
 *
 * PEFT wraps GPT-2's Conv1D with `fan_in_fan_out = true` and stores its two nn.Linear weights
 * in torch's [out_features, in_features] layout:
 *   base_model.model.transformer.h.{i}.{target}.lora_A.weight  [r, in]   = our A^T
 *   base_model.model.transformer.h.{i}.{target}.lora_B.weight  [out, r]  = our B^T
 * and the effective update is (lora_B.weight @ lora_A.weight)^T * alpha / r = A B * alpha / r,
 * the same [in, out] delta our math adds to the Conv1D weight.
 *
 * `target_modules` may be PEFT's list of names or its string form, a Python regular expression
 * PEFT matches with re.fullmatch against each whole module name (`transformer.h.0.attn.c_attn`).
 * A string is read by matching it against the names of the base model's modules, so it is
 * accepted exactly when it selects a set of our targets on every block and nothing else;
 * peft-llama.ts reads LLaMA adapters with the same matcher (peftSelectedTargets).
 *
 * Browser-safe.
 */
import { CodedError } from '../coded-error';
import type { Gpt2Config } from '../config';
import {
  type LoraAdapter,
  type LoraPair,
  type LoraTarget,
  type Gpt2LoraTarget,
  isGpt2LoraTarget,
  LORA_TARGETS,
  loraScale,
  loraTargetDims,
  parseLoraModulePath,
} from '../lora';
import { readSafetensors, writeSafetensors } from './safetensors';
import { type Tensor, assertShape } from '../tensor';
import type { Gpt2Weights } from '../weights';

export const PEFT_CONFIG_FILE = 'adapter_config.json';
export const PEFT_WEIGHTS_FILE = 'adapter_model.safetensors';
export const PEFT_KEY_PREFIX = 'base_model.model.transformer.';

export class PeftError extends CodedError<'BAD_PEFT_ADAPTER'> {
  constructor(message: string) {
    super('BAD_PEFT_ADAPTER', message);
  }
}

export interface AdapterToPeftOptions {
  /** Written as `base_model_name_or_path` (default "gpt2"). */
  baseModel?: string;
  /**
   * Number of blocks of the base model. When given and the adapter covers every block,
   * `layers_to_transform` is left out; otherwise it lists the covered blocks (harmless when
   * they happen to be all of them).
   */
  nLayer?: number;
}

/** A 2-D tensor transposed (PEFT's [r, in] / [out, r] <-> our [in, r] / [r, out]). */
export function transpose2d(t: Tensor): Tensor {
  const [rows, cols] = t.shape;
  const out = new Float32Array(rows * cols);
  const src = t.data;
  for (let i = 0; i < rows; i++) {
    const base = i * cols;
    for (let j = 0; j < cols; j++) out[j * rows + i] = src[base + j];
  }
  return { shape: [cols, rows], data: out };
}

function parseModulePath(path: string): { layer: number; target: Gpt2LoraTarget } {
  const parsed = parseLoraModulePath(path);
  if (!parsed || !isGpt2LoraTarget(parsed.target))
    throw new PeftError(`LoRA adapter: module path "${path}" is not h.{i}.{${LORA_TARGETS.join('|')}}`);
  return { layer: parsed.layer, target: parsed.target };
}

/** One module of a base model as PEFT names it (`named_modules()`), with the LoRA target it is, if any. */
export interface PeftModule<T extends string> {
  name: string;
  layer: number | null;
  target: T | null;
}

/**
 * PEFT's "all-linear" (a keyword, not a regex): every linear layer of the blocks, without the
 * output layer.
 */
export const PEFT_ALL_LINEAR = 'all-linear';

/**
 * A Python `re` pattern as a JavaScript RegExp with fullmatch semantics, or null when it uses
 * syntax JavaScript lacks (inline flags such as `(?i)`, `\Z`). Named groups are the one common
 * spelling difference and are translated.
 */
export function peftFullMatchRegex(pattern: string): RegExp | null {
  if (/\\[AZ]/.test(pattern)) return null;
  const js = pattern.replace(/\(\?P</g, '(?<').replace(/\(\?P=(\w+)\)/g, '\\k<$1>');
  try {
    return new RegExp(`^(?:${js})$`);
  } catch {
    return null;
  }
}

function layerList(layers: readonly number[]): string {
  return layers.length === 1 ? `layer ${layers[0]}` : `layers ${layers.join(', ')}`;
}

/** What of an adapter_config.json picks the adapted modules. */
export interface PeftTargetSpec {
  /** `target_modules`: names (each the whole module name or a dotted suffix of it), or one regex */
  targetModules: string | readonly string[];
  /** `exclude_modules`, in the same two forms; null for none */
  excludeModules: string | readonly string[] | null;
  /** `layers_to_transform` (list form only: PEFT refuses it beside a regex) */
  layersToTransform: readonly number[] | null;
}

/** `exclude_modules` (or another name-or-regex setting) of an adapter_config.json, null when unset or empty. */
export function peftNamesSetting(
  cfg: Record<string, unknown>,
  key: string,
  fail: (msg: string) => never,
): string | string[] | null {
  const v = cfg[key];
  if (v === undefined || v === null) return null;
  if (typeof v === 'string') return v;
  if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v.length === 0 ? null : (v as string[]);
  fail(`"${key}" must be a list of module names or a string, got ${JSON.stringify(v)}`);
}

function moduleMatcher<T extends string>(
  names: string | readonly string[],
  key: string,
  fail: (msg: string) => never,
): (m: PeftModule<T>) => boolean {
  if (typeof names !== 'string') return (m) => names.some((n) => m.name === n || m.name.endsWith(`.${n}`));
  if (names === PEFT_ALL_LINEAR && key === 'target_modules') return (m) => m.target !== null;
  const re = peftFullMatchRegex(names);
  if (!re) {
    fail(`"${key}" ${JSON.stringify(names)} uses regular-expression syntax we cannot read (inline flags, \\A, \\Z)`);
  }
  return (m) => re.test(m.name);
}

/**
 * The targets and layers an adapter_config.json selects, found as PEFT finds them
 * (check_target_module_exists over every module name of the base model: exclude_modules first,
 * then target_modules as names or as a re.fullmatch regex, then layers_to_transform). Refused,
 * through `fail` and naming the module, entry or layers: a pattern we cannot read, a list entry
 * that names no module of the model, a selected module that is not a LoRA target (a block, a
 * norm, the head: PEFT could not adapt it, or we do not have it), a selection that is not the
 * same targets on every adapted layer (our adapters' shape), a regex that selects its targets on
 * some of `layers` only (it cannot say so through layers_to_transform, and is almost always a
 * mistake), or nothing selected. `layers` are the blocks to check: the model's when known,
 * else those the adapter's tensors cover.
 */
export function peftSelectedTargets<T extends string>(
  spec: PeftTargetSpec,
  modules: readonly PeftModule<T>[],
  layers: readonly number[],
  order: readonly T[],
  fail: (msg: string) => never,
): { targets: T[]; layers: number[] } {
  const tm = spec.targetModules;
  const regexForm = typeof tm === 'string';
  const what = regexForm
    ? `"target_modules" ${JSON.stringify(tm)} (a regular expression matched against whole module names)`
    : `"target_modules" ${JSON.stringify(tm)}`;
  if (!regexForm) {
    for (const entry of tm) {
      if (!modules.some(moduleMatcher([entry], 'target_modules', fail))) {
        fail(`"target_modules" entry "${entry}" names no module of the model (its LoRA targets: ${order.join(', ')})`);
      }
    }
  }
  const isTarget = moduleMatcher<T>(tm, 'target_modules', fail);
  const isExcluded =
    spec.excludeModules === null ? () => false : moduleMatcher<T>(spec.excludeModules, 'exclude_modules', fail);
  const ltt = spec.layersToTransform;
  const selected = modules.filter(
    (m) => !isExcluded(m) && isTarget(m) && (ltt === null || (m.layer !== null && ltt.includes(m.layer))),
  );
  const other = selected.find((m) => m.target === null);
  if (other) fail(`${what} selects "${other.name}", which is not a LoRA target (the targets are ${order.join(', ')})`);
  if (selected.length === 0) {
    const example = modules.find((m) => m.target !== null)?.name ?? '';
    fail(`${what} selects no module (PEFT matches it against whole names such as "${example}")`);
  }
  const targets = order.filter((t) => selected.some((m) => m.target === t));
  const selLayers = layers.filter((l) => selected.some((m) => m.layer === l));
  for (const t of targets) {
    const on = selLayers.filter((l) => selected.some((m) => m.target === t && m.layer === l));
    if (on.length !== selLayers.length) {
      fail(
        `${what} selects ${t} on ${layerList(on)} but not on ${layerList(selLayers.filter((l) => !on.includes(l)))}, ` +
          'where it selects other targets: an adapter here holds the same targets on every layer it adapts',
      );
    }
  }
  if (regexForm && selLayers.length !== layers.length) {
    fail(
      `${what} selects modules on ${layerList(selLayers)} only, not on ` +
        `${layerList(layers.filter((l) => !selLayers.includes(l)))}: a pattern must select its targets on every ` +
        'layer (list target_modules and layers_to_transform to adapt some layers)',
    );
  }
  return { targets, layers: selLayers };
}

/** GPT2LMHeadModel's modules as PEFT sees them, for the blocks in `layers`. */
export function gpt2PeftModules(layers: readonly number[]): PeftModule<LoraTarget>[] {
  const plain = (name: string, layer: number | null = null): PeftModule<LoraTarget> => ({ name, layer, target: null });
  const out = ['transformer', 'transformer.wte', 'transformer.wpe', 'transformer.drop', 'transformer.h'].map((n) =>
    plain(n),
  );
  for (const i of layers) {
    const p = `transformer.h.${i}`;
    const parts = ['', '.ln_1', '.attn', '.attn.attn_dropout', '.attn.resid_dropout', '.ln_2', '.mlp', '.mlp.act'];
    for (const sub of [...parts, '.mlp.dropout']) out.push(plain(`${p}${sub}`, i));
    for (const t of LORA_TARGETS) out.push({ name: `${p}.${t}`, layer: i, target: t });
  }
  out.push(plain('transformer.ln_f'), plain('lm_head'));
  return out;
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

/** The PEFT `adapter_config.json` object and `adapter_model.safetensors` bytes of an adapter. */
export function adapterToPeft(
  adapter: LoraAdapter,
  opts: AdapterToPeftOptions = {},
): { config: Record<string, unknown>; safetensors: Uint8Array } {
  const { r, alpha, targets } = adapter.config;
  if (!Number.isInteger(r) || r <= 0) throw new PeftError(`LoRA adapter: r must be a positive integer, got ${r}`);
  if (!(alpha > 0)) throw new PeftError(`LoRA adapter: alpha must be positive, got ${alpha}`);
  if (targets.length === 0) throw new PeftError('LoRA adapter: no targets');
  if (adapter.layers.size === 0) throw new PeftError('LoRA adapter: no layers');

  // order: by block, then target in LORA_TARGETS order (deterministic files)
  const entries = [...adapter.layers].map(([path, pair]) => ({ path, pair, ...parseModulePath(path) }));
  entries.sort((a, b) => a.layer - b.layer || LORA_TARGETS.indexOf(a.target) - LORA_TARGETS.indexOf(b.target));

  const layers = [...new Set(entries.map((e) => e.layer))];
  // PEFT applies every target module on every transformed block, so the adapter must be the
  // full product blocks x targets or PEFT would create modules we have no weights for.
  for (const layer of layers) {
    for (const target of targets) {
      if (!adapter.layers.has(`h.${layer}.${target}`)) {
        throw new PeftError(
          `LoRA adapter: block ${layer} has no weights for target ${target} (PEFT needs every target on every block)`,
        );
      }
    }
  }

  const tensors: Array<[string, Tensor]> = [];
  for (const { path, pair, target } of entries) {
    if (!targets.includes(target)) {
      throw new PeftError(`LoRA adapter: module "${path}" is not one of the adapter's targets [${targets.join(', ')}]`);
    }
    const { A, B } = pair;
    if (A.shape.length !== 2 || B.shape.length !== 2 || A.shape[1] !== r || B.shape[0] !== r) {
      throw new PeftError(
        `LoRA adapter: "${path}" has A [${A.shape.join(', ')}] and B [${B.shape.join(', ')}], ` +
          `expected [in, ${r}] and [${r}, out]`,
      );
    }
    tensors.push([`${PEFT_KEY_PREFIX}${path}.lora_A.weight`, transpose2d(A)]);
    tensors.push([`${PEFT_KEY_PREFIX}${path}.lora_B.weight`, transpose2d(B)]);
  }

  const coversAll = opts.nLayer !== undefined && layers.length === opts.nLayer && layers.every((l, i) => l === i);
  const config: Record<string, unknown> = {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: opts.baseModel ?? 'gpt2',
    revision: null,
    r,
    lora_alpha: alpha,
    lora_dropout: 0,
    target_modules: LORA_TARGETS.filter((t) => targets.includes(t)),
    fan_in_fan_out: true,
    bias: 'none',
    modules_to_save: null,
    init_lora_weights: true,
    inference_mode: true,
    layers_to_transform: coversAll ? null : layers,
    layers_pattern: coversAll ? null : 'h',
  };
  return { config, safetensors: writeSafetensors(tensors, { format: 'pt' }) };
}

/**
 * Which of our targets a PEFT `target_modules` entry selects. PEFT matches an entry against a
 * module name by equality or as a dotted suffix, so "c_proj" selects both attn.c_proj and
 * mlp.c_proj; full names like "transformer.h.3.attn.c_attn" select that target too.
 */
function targetsMatchedBy(entry: string): LoraTarget[] {
  return LORA_TARGETS.filter((t) => {
    const probe = `transformer.h.0.${t}`;
    return probe === entry || probe.endsWith(`.${entry}`) || entry.endsWith(`.${t}`) || entry === t;
  });
}

const PEFT_KEY_RE = new RegExp(
  /^base_model\.model\.(?:transformer\.)?h\.(\d+)\./.source +
    /(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.lora_([AB])(?:\.default)?\.weight$/.source,
);

function fail(msg: string): never {
  throw new PeftError(`PEFT adapter: ${msg}`);
}

export interface AdapterFromPeftOptions {
  /**
   * Blocks of the base model, when known: a string `target_modules` must then select its
   * targets on all of them. Without it, on every block from 0 to the last the tensors cover.
   */
  nLayer?: number;
}

/**
 * Reads a PEFT LoRA adapter for GPT-2 back into our layout (transposing A and B), validating
 * the config and that every tensor's shape fits r and a consistent GPT-2 width.
 */
export function adapterFromPeft(
  configJson: unknown,
  safetensorsBytes: Uint8Array,
  opts: AdapterFromPeftOptions = {},
): LoraAdapter {
  if (typeof configJson !== 'object' || configJson === null || Array.isArray(configJson)) {
    fail('adapter_config.json is not a JSON object');
  }
  const cfg = configJson as Record<string, unknown>;
  if (cfg.peft_type !== 'LORA') fail(`peft_type is ${JSON.stringify(cfg.peft_type)}, only "LORA" is supported`);
  const r = cfg.r;
  if (typeof r !== 'number' || !Number.isInteger(r) || r <= 0)
    fail(`"r" must be a positive integer, got ${JSON.stringify(r)}`);
  const alpha = cfg.lora_alpha;
  if (typeof alpha !== 'number' || !(alpha > 0))
    fail(`"lora_alpha" must be a positive number, got ${JSON.stringify(alpha)}`);
  if (cfg.fan_in_fan_out !== true) {
    fail(
      `"fan_in_fan_out" is ${JSON.stringify(cfg.fan_in_fan_out)}; GPT-2's Conv1D layers need fan_in_fan_out: true ` +
        '(set it in adapter_config.json if the adapter was trained on GPT-2)',
    );
  }
  if (cfg.bias !== undefined && cfg.bias !== 'none') fail(`bias "${String(cfg.bias)}" is not supported (only "none")`);
  if (cfg.use_rslora === true) fail('use_rslora is not supported (scale must be lora_alpha / r)');
  if (cfg.use_dora === true) fail('use_dora is not supported');
  for (const key of ['rank_pattern', 'alpha_pattern'] as const) {
    const v = cfg[key];
    if (v !== undefined && v !== null && !(typeof v === 'object' && Object.keys(v).length === 0)) {
      fail(`"${key}" (per-module r/alpha) is not supported`);
    }
  }
  if (Array.isArray(cfg.modules_to_save) && cfg.modules_to_save.length > 0) {
    fail(`modules_to_save ${JSON.stringify(cfg.modules_to_save)} is not supported`);
  }

  const raw = readSafetensors(safetensorsBytes);
  let targetModules: string[];
  const allowed = new Set<LoraTarget>();
  if (Array.isArray(cfg.target_modules) && cfg.target_modules.every((t) => typeof t === 'string')) {
    targetModules = cfg.target_modules as string[];
    for (const entry of targetModules) {
      const matched = targetsMatchedBy(entry);
      if (matched.length === 0) {
        fail(`target module "${entry}" is not supported (GPT-2 LoRA targets: ${LORA_TARGETS.join(', ')})`);
      }
      for (const t of matched) allowed.add(t);
    }
  } else if (typeof cfg.target_modules === 'string') {
    // PEFT refuses these two beside a string target_modules (LoraConfig.__post_init__)
    for (const key of ['layers_to_transform', 'layers_pattern'] as const) {
      if (cfg[key] !== undefined && cfg[key] !== null) {
        fail(`"${key}" cannot be used when "target_modules" is a string (a regular expression), as in PEFT`);
      }
    }
    targetModules = [cfg.target_modules];
    let last = -1;
    for (const key of raw.keys()) {
      const m = PEFT_KEY_RE.exec(key);
      if (m) last = Math.max(last, Number(m[1]));
    }
    const layers = range(opts.nLayer ?? Math.max(1, last + 1));
    const spec: PeftTargetSpec = {
      targetModules: cfg.target_modules,
      excludeModules: peftNamesSetting(cfg, 'exclude_modules', fail),
      layersToTransform: null,
    };
    for (const t of peftSelectedTargets(spec, gpt2PeftModules(layers), layers, LORA_TARGETS, fail).targets) {
      allowed.add(t);
    }
  } else {
    fail(`"target_modules" must be a list of module names or a string, got ${JSON.stringify(cfg.target_modules)}`);
  }

  let layerFilter: Set<number> | null = null;
  const ltt = cfg.layers_to_transform;
  if (typeof ltt === 'number') layerFilter = new Set([ltt]);
  else if (Array.isArray(ltt)) {
    if (!ltt.every((l) => typeof l === 'number' && Number.isInteger(l) && l >= 0)) {
      fail(`"layers_to_transform" must list block indices, got ${JSON.stringify(ltt)}`);
    }
    layerFilter = new Set(ltt as number[]);
  } else if (ltt !== undefined && ltt !== null) {
    fail(`"layers_to_transform" must list block indices, got ${JSON.stringify(ltt)}`);
  }

  const halves = new Map<string, { layer: number; target: Gpt2LoraTarget; A?: Tensor; B?: Tensor }>();
  for (const [key, t] of raw) {
    const m = PEFT_KEY_RE.exec(key);
    if (!m)
      fail(`unexpected tensor "${key}" (expected base_model.model.transformer.h.{i}.{target}.lora_A/lora_B.weight)`);
    const layer = Number(m[1]);
    const target = m[2] as Gpt2LoraTarget;
    if (!allowed.has(target))
      fail(`tensor "${key}" is for ${target}, which target_modules ${JSON.stringify(targetModules)} does not select`);
    if (layerFilter && !layerFilter.has(layer))
      fail(`tensor "${key}" is for block ${layer}, outside layers_to_transform`);
    if (t.shape.length !== 2) fail(`tensor "${key}" has shape [${t.shape.join(', ')}], expected 2-D`);
    const path = `h.${layer}.${target}`;
    const h = halves.get(path) ?? { layer, target };
    if (m[3] === 'A') {
      if (h.A) fail(`tensor "${key}" appears twice`);
      h.A = t;
    } else {
      if (h.B) fail(`tensor "${key}" appears twice`);
      h.B = t;
    }
    halves.set(path, h);
  }
  if (halves.size === 0) fail('adapter_model.safetensors holds no LoRA tensors');

  // shape checks: lora_A [r, in], lora_B [out, r]; every block of a target agrees, and the
  // widths fit one GPT-2 (c_attn out = 3 n_embd, c_fc out = mlp.c_proj in, ...)
  const dims = new Map<LoraTarget, [number, number]>();
  for (const [path, h] of halves) {
    if (!h.A || !h.B) fail(`module "${path}" has lora_${h.A ? 'A' : 'B'} but no lora_${h.A ? 'B' : 'A'}`);
    const [ra, din] = h.A.shape;
    const [dout, rb] = h.B.shape;
    if (ra !== r || rb !== r) {
      fail(
        `module "${path}": lora_A [${h.A.shape.join(', ')}] / lora_B [${h.B.shape.join(', ')}] ` +
          `do not have rank r = ${r} ([r, in] / [out, r])`,
      );
    }
    const prev = dims.get(h.target);
    if (prev && (prev[0] !== din || prev[1] !== dout)) {
      fail(`module "${path}" is [${din} -> ${dout}] but other blocks' ${h.target} are [${prev[0]} -> ${prev[1]}]`);
    }
    dims.set(h.target, [din, dout]);
  }
  const embd: Array<[string, number]> = [];
  const inner: Array<[string, number]> = [];
  const ca = dims.get('attn.c_attn');
  if (ca) {
    embd.push(['attn.c_attn in', ca[0]]);
    if (ca[1] !== 3 * ca[0]) fail(`attn.c_attn maps ${ca[0]} -> ${ca[1]}, expected ${ca[0]} -> ${3 * ca[0]}`);
  }
  const ap = dims.get('attn.c_proj');
  if (ap) embd.push(['attn.c_proj in', ap[0]], ['attn.c_proj out', ap[1]]);
  const fc = dims.get('mlp.c_fc');
  if (fc) {
    embd.push(['mlp.c_fc in', fc[0]]);
    inner.push(['mlp.c_fc out', fc[1]]);
  }
  const mp = dims.get('mlp.c_proj');
  if (mp) {
    inner.push(['mlp.c_proj in', mp[0]]);
    embd.push(['mlp.c_proj out', mp[1]]);
  }
  for (const group of [embd, inner]) {
    for (const [what, v] of group) {
      if (v !== group[0][1]) fail(`inconsistent widths: ${group[0][0]} is ${group[0][1]} but ${what} is ${v}`);
    }
  }

  const sorted = [...halves.entries()].sort(
    ([, a], [, b]) => a.layer - b.layer || LORA_TARGETS.indexOf(a.target) - LORA_TARGETS.indexOf(b.target),
  );
  const layers = new Map<string, LoraPair>();
  for (const [path, h] of sorted) layers.set(path, { A: transpose2d(h.A!), B: transpose2d(h.B!) });
  const targets = LORA_TARGETS.filter((t) => dims.has(t));
  return { config: { r, alpha, targets }, layers };
}

/**
 * Base weights with every adapted Conv1D weight replaced by W + (alpha / r) A B. Only the
 * merged tensors are new; every other tensor is shared with `weights`.
 */
export function mergeLoraIntoWeights(c: Gpt2Config, weights: Gpt2Weights, adapter: LoraAdapter): Gpt2Weights {
  const scale = loraScale(adapter.config);
  const r = adapter.config.r;
  const out: Gpt2Weights = new Map(weights);
  for (const [path, { A, B }] of adapter.layers) {
    const { layer, target } = parseModulePath(path);
    if (layer >= c.nLayer) throw new PeftError(`LoRA merge: module "${path}" is past the model's ${c.nLayer} blocks`);
    const [din, dout] = loraTargetDims(c, target);
    assertShape(A, [din, r], `LoRA merge: "${path}" A`);
    assertShape(B, [r, dout], `LoRA merge: "${path}" B`);
    const name = `${path}.weight`;
    const W = weights.get(name);
    if (!W) throw new PeftError(`LoRA merge: base weights have no "${name}"`);
    assertShape(W, [din, dout], `LoRA merge: "${name}"`);
    const merged = new Float32Array(W.data); // copy
    const acc = new Float64Array(dout);
    for (let i = 0; i < din; i++) {
      acc.fill(0);
      for (let k = 0; k < r; k++) {
        const a = A.data[i * r + k];
        if (a === 0) continue;
        const bRow = k * dout;
        for (let j = 0; j < dout; j++) acc[j] += a * B.data[bRow + j];
      }
      const row = i * dout;
      for (let j = 0; j < dout; j++) merged[row + j] += scale * acc[j];
    }
    out.set(name, { shape: [din, dout], data: merged });
  }
  return out;
}
