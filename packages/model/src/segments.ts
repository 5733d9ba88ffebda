/**
 * Model segments: the frozen base weights one tier needs, as one safetensors file, so the cloud
 * (which holds the whole checkpoint) can hand each tier its part (cloud -> edge -> user) and no
 * tier ever downloads weights it does not run.
 *
 *   GPT-2
 *   user : wte.weight, wpe.weight, h.[0,k).*, ln_f.*   (embedding + first blocks; ln_f and wte are
 *                                                       the head the tab runs with labels on the device)
 *   edge : h.[k,m).*
 *   cloud: wte.weight, h.[m,L).*, ln_f.*               (wte again: the LM head is tied to it)
 *   LLaMA family (names without `model.`)
 *   user : embed_tokens.weight, layers.[0,k).*, norm.weight, lm_head.weight (when untied)
 *   edge : layers.[k,m).*
 *   cloud: layers.[m,L).*, norm.weight, and the head: lm_head.weight, or embed_tokens.weight when tied
 *
 * The header's __metadata__ carries everything needed to run the segment without another file:
 * {format: 'splitllm-segment', tier, k, m, config: the Hugging Face config.json as JSON}.
 * Safetensors metadata values must be strings, so k and m are decimal strings.
 *
 * Browser-safe.
 */
import { CodedError } from './coded-error';
import { type AnyModel, isLlamaConfig, type ModelConfig, modelConfigToJson, parseModelConfig } from './family';
import { llamaParameterShapes } from './llama-weights';
import { type SplitPlan, validateSplitPlan } from './model';
import { SafetensorsError, parseSafetensors, readSafetensors, writeSafetensors } from './formats/safetensors';
import { type Tensor, numel, sameShape } from './tensor';
import { gpt2ParameterShapes } from './weights';

export type Tier = 'user' | 'edge' | 'cloud';

export const TIERS: readonly Tier[] = ['user', 'edge', 'cloud'];

export const SEGMENT_FORMAT = 'splitllm-segment';

export class SegmentError extends CodedError<'SEGMENT_BAD'> {
  constructor(message: string, options?: { cause?: unknown }) {
    super('SEGMENT_BAD', message, options);
  }
}

function blockOf(name: string): number | undefined {
  const m = /^(?:h|layers)\.(\d+)\./.exec(name);
  return m ? Number(m[1]) : undefined;
}

/** The weights outside the blocks each tier holds: the embedding, the final norm and the head. */
function outsideBlocks(c: ModelConfig, tier: Tier): string[] {
  if (!isLlamaConfig(c)) {
    // GPT-2's head is tied to wte; wpe is the user's alone
    return tier === 'user' ? ['wte.weight', 'wpe.weight', 'ln_f.'] : tier === 'cloud' ? ['wte.weight', 'ln_f.'] : [];
  }
  const head = c.tieWordEmbeddings ? 'embed_tokens.weight' : 'lm_head.weight';
  if (tier === 'user') return ['embed_tokens.weight', 'norm.weight', head];
  return tier === 'cloud' ? ['norm.weight', head] : [];
}

function inTier(c: ModelConfig, name: string, plan: SplitPlan, tier: Tier): boolean {
  const layer = blockOf(name);
  if (layer === undefined)
    return outsideBlocks(c, tier).some((w) => (w.endsWith('.') ? name.startsWith(w) : name === w));
  switch (tier) {
    case 'user':
      return layer < plan.k;
    case 'edge':
      return layer >= plan.k && layer < plan.m;
    case 'cloud':
      return layer >= plan.m && layer < c.nLayer;
  }
}

/** The tier's weights with their shapes, in Hugging Face order. */
export function segmentParameterShapes(c: ModelConfig, plan: SplitPlan, tier: Tier): Array<[string, number[]]> {
  validateSplitPlan(c, plan);
  if (!TIERS.includes(tier))
    throw new SegmentError(`segment: unknown tier "${String(tier)}" (one of ${TIERS.join(', ')})`);
  const shapes = isLlamaConfig(c) ? llamaParameterShapes(c) : gpt2ParameterShapes(c);
  return shapes.filter(([name]) => inTier(c, name, plan, tier));
}

/** The tier's weight names (see the header for which). */
export function segmentWeightNames(c: ModelConfig, plan: SplitPlan, tier: Tier): string[] {
  return segmentParameterShapes(c, plan, tier).map(([name]) => name);
}

/**
 * Safetensors bytes (F32) of the tier's weights, with the segment metadata. Typed as backed by
 * a plain ArrayBuffer (writeSafetensors allocates a fresh one) so it can go straight into a
 * fetch body or an HTTP reply.
 */
export function encodeSegment(model: AnyModel, plan: SplitPlan, tier: Tier): Uint8Array<ArrayBuffer> {
  const c = model.config;
  const entries: Array<[string, Tensor]> = [];
  for (const [name, shape] of segmentParameterShapes(c, plan, tier)) {
    const t = model.weights.get(name);
    if (!t) throw new SegmentError(`segment (${tier}): the model has no tensor "${name}"`);
    if (!sameShape(t.shape, shape) || t.data.length !== numel(shape)) {
      throw new SegmentError(
        `segment (${tier}): "${name}" is [${t.shape.join(', ')}], the config needs [${shape.join(', ')}]`,
      );
    }
    entries.push([name, t]);
  }
  return writeSafetensors(entries, {
    format: SEGMENT_FORMAT,
    tier,
    k: String(plan.k),
    m: String(plan.m),
    config: JSON.stringify(modelConfigToJson(c)),
  }) as Uint8Array<ArrayBuffer>;
}

export interface DecodedSegment {
  tier: Tier;
  plan: SplitPlan;
  /** the config of the whole model, and only this tier's weights */
  model: AnyModel;
}

function bad(message: string, cause?: unknown): never {
  throw new SegmentError(`segment: ${message}`, cause === undefined ? undefined : { cause });
}

function metaInt(meta: Record<string, string>, key: 'k' | 'm'): number {
  const v = meta[key];
  if (typeof v !== 'string' || !/^\d{1,6}$/.test(v))
    bad(`metadata "${key}" must be a non-negative integer, got ${JSON.stringify(v)}`);
  return Number(v);
}

/**
 * Checks the metadata, and that the file holds exactly the tier's tensors, as F32, with the
 * shapes the config gives; any failure is a SegmentError('SEGMENT_BAD') saying what is wrong.
 *
 * The returned weights are zero-copy views into `bytes.buffer` (as the checkpoint loaders give)
 * when `bytes` starts at a 4-aligned offset, copies otherwise: keep `bytes` unmodified while the
 * model is in use.
 */
export function decodeSegment(bytes: Uint8Array, expectTier?: Tier): DecodedSegment {
  let parsed: ReturnType<typeof parseSafetensors>;
  try {
    parsed = parseSafetensors(bytes);
  } catch (e) {
    if (e instanceof SafetensorsError) bad(e.message, e);
    throw e;
  }
  const meta = parsed.metadata;
  if (!meta) bad('the file has no __metadata__: not a splitllm segment');
  if (meta.format !== SEGMENT_FORMAT)
    bad(`metadata "format" is ${JSON.stringify(meta.format)}, expected "${SEGMENT_FORMAT}"`);
  const tier = meta.tier as Tier;
  if (!TIERS.includes(tier))
    bad(`metadata "tier" is ${JSON.stringify(meta.tier)}, expected one of ${TIERS.join(', ')}`);
  if (expectTier !== undefined && tier !== expectTier)
    bad(`this is the ${tier} segment, the ${expectTier} segment was expected`);
  const plan: SplitPlan = { k: metaInt(meta, 'k'), m: metaInt(meta, 'm') };
  if (typeof meta.config !== 'string') bad('metadata has no "config"');
  let config: ModelConfig;
  try {
    config = parseModelConfig(JSON.parse(meta.config), 'segment metadata "config"');
  } catch (e) {
    bad(`metadata "config" is not a usable model config: ${(e as Error).message}`, e);
  }
  try {
    validateSplitPlan(config, plan);
  } catch (e) {
    bad((e as Error).message, e);
  }

  const expected = segmentParameterShapes(config, plan, tier);
  const expectedNames = new Set(expected.map(([n]) => n));
  const extra = [...parsed.tensors.keys()].filter((n) => !expectedNames.has(n));
  if (extra.length > 0)
    bad(`the ${tier} segment (k=${plan.k}, m=${plan.m}) must not hold ${extra.map((n) => `"${n}"`).join(', ')}`);
  for (const [name, shape] of expected) {
    const info = parsed.tensors.get(name);
    if (!info) bad(`the ${tier} segment (k=${plan.k}, m=${plan.m}) is missing "${name}"`);
    if (info.dtype !== 'F32') bad(`"${name}" is ${info.dtype}, segments are F32`);
    if (!sameShape(info.shape, shape))
      bad(`"${name}" is [${info.shape.join(', ')}], the config needs [${shape.join(', ')}]`);
  }

  const raw = readSafetensors(bytes);
  const weights = new Map<string, Tensor>();
  for (const [name] of expected) weights.set(name, raw.get(name)!);
  return { tier, plan, model: { config, weights } };
}
