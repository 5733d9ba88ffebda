/**
 * What a run is: the model, where it is cut, the LoRA shape and the training settings. The cloud
 * owns it and hands it down (cloud -> edge -> user) with the segments; every tier checks the
 * frames it receives against it.
 */
import {
  parseGpt2Config,
  type Gpt2Config,
  isLoraTarget,
  type LoraConfig,
  type LoraTarget,
  type SplitPlan,
  type AdamWOptions,
  validateSplitPlan,
} from '@splitllm/model';
import { type Codec, isCodec } from './codecs';

export interface TrainSettings {
  /** rows and tokens per row of every step (the WGSL engine is built for one shape) */
  batch: number;
  seq: number;
  /** steps each user trains in its turn */
  stepsPerUser: number;
  /** users an edge trains, one after another, per round (the paper's scheme: 1) */
  usersPerEdge: number;
  /** how activations and their gradients travel (adapters always travel as f32) */
  codec: Codec;
  adamw: AdamWOptions;
}

export interface SegmentInfo {
  sha256: string;
  bytes: number;
}

export interface RunManifest {
  /** the model directory's name, for display */
  modelName: string;
  /** Hugging Face config.json object */
  config: Record<string, unknown>;
  plan: SplitPlan;
  lora: LoraConfig;
  train: TrainSettings;
  /** the current global adapter version (0 = the initial adapter) */
  version: number;
  segments: { user: SegmentInfo; edge: SegmentInfo };
}

export class ManifestError extends Error {
  readonly code = 'BAD_MANIFEST';
  constructor(message: string) {
    super(message);
    this.name = 'ManifestError';
  }
}

function posInt(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1)
    throw new ManifestError(`manifest: ${what} must be a positive integer, got ${JSON.stringify(v)}`);
  return v;
}

function num(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0)
    throw new ManifestError(`manifest: ${what} must be a finite number >= 0, got ${JSON.stringify(v)}`);
  return v;
}

/** Validates a manifest received over the network; returns it with the parsed model config. */
export function parseRunManifest(json: unknown): { manifest: RunManifest; config: Gpt2Config } {
  if (typeof json !== 'object' || json === null) throw new ManifestError('manifest: expected a JSON object');
  const j = json as Record<string, unknown>;
  const config = parseGpt2Config(j.config);
  const plan = j.plan as SplitPlan;
  if (typeof plan !== 'object' || plan === null) throw new ManifestError('manifest: plan missing');
  validateSplitPlan(config, { k: posInt(plan.k, 'plan.k'), m: posInt(plan.m, 'plan.m') });
  const lora = j.lora as LoraConfig;
  if (
    typeof lora !== 'object' ||
    lora === null ||
    !Array.isArray(lora.targets) ||
    !lora.targets.every((t) => typeof t === 'string' && isLoraTarget(t))
  ) {
    throw new ManifestError('manifest: lora must have r, alpha and known targets');
  }
  posInt(lora.r, 'lora.r');
  num(lora.alpha, 'lora.alpha');
  const t = j.train as TrainSettings;
  if (typeof t !== 'object' || t === null) throw new ManifestError('manifest: train missing');
  posInt(t.batch, 'train.batch');
  posInt(t.seq, 'train.seq');
  if (t.seq > config.nPositions)
    throw new ManifestError(`manifest: train.seq ${t.seq} exceeds n_positions ${config.nPositions}`);
  posInt(t.stepsPerUser, 'train.stepsPerUser');
  posInt(t.usersPerEdge, 'train.usersPerEdge');
  if (!isCodec(t.codec)) throw new ManifestError(`manifest: unknown codec ${JSON.stringify(t.codec)}`);
  for (const k of ['lr', 'beta1', 'beta2', 'eps', 'weightDecay'] as const) num(t.adamw?.[k], `train.adamw.${k}`);
  if (typeof j.version !== 'number' || !Number.isSafeInteger(j.version) || j.version < 0)
    throw new ManifestError('manifest: version must be an integer >= 0');
  const segs = j.segments as RunManifest['segments'];
  for (const tier of ['user', 'edge'] as const) {
    const s = segs?.[tier];
    if (typeof s?.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(s.sha256))
      throw new ManifestError(`manifest: segments.${tier}.sha256 must be a sha-256 hex digest`);
    posInt(s.bytes, `segments.${tier}.bytes`);
  }
  const manifest: RunManifest = {
    modelName: String(j.modelName ?? ''),
    config: j.config as Record<string, unknown>,
    plan: { k: plan.k, m: plan.m },
    lora: { r: lora.r, alpha: lora.alpha, targets: [...lora.targets] as LoraTarget[] },
    train: { ...t, adamw: { ...t.adamw } },
    version: j.version,
    segments: { user: { ...segs.user }, edge: { ...segs.edge } },
  };
  return { manifest, config };
}
