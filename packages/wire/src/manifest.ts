/**
 * What a run is: the model, where it is cut, the LoRA shape and the training settings. The cloud
 * owns it and hands it down (cloud -> edge -> user) with the segments; every tier checks the
 * frames it receives against it.
 */
import {
  checkLoraTargetsFit,
  parseModelConfig,
  modelDims,
  type ModelConfig,
  isLoraTarget,
  type LoraConfig,
  type LoraTarget,
  type SplitPlan,
  type AdamWOptions,
  validateSplitPlan,
} from '@splitllm/model';
import { type Codec, isCodec } from './codecs';

/**
 * Where the labels are, chosen when the run is created. 'device' (the default): the tab also
 * runs ln_f, the LM head and the loss on the last hidden state the cloud sends back, so no
 * label, target or token id leaves it. 'cloud': the labels travel with h1 and the cloud runs
 * the head (the paper's scheme, kept for comparison).
 */
export type LabelPlacement = 'device' | 'cloud';
export const LABEL_PLACEMENTS: readonly LabelPlacement[] = ['device', 'cloud'];

export function isLabelPlacement(v: unknown): v is LabelPlacement {
  return typeof v === 'string' && (LABEL_PLACEMENTS as readonly string[]).includes(v);
}

/**
 * How the edges train their users, chosen when the run is created (docs/design.md, section 2):
 * - 'hierarchical' (the default, the paper's scheme): per edge one user at a time, edges in
 *   parallel, the user, edge and cloud adapters aggregated at round end. An edge and its cloud
 *   copy hold one LoRA, one optimizer state and one user's activations whatever the number of users.
 * - 'sfl' (split-federated): all the round's users of an edge train at once; the edge and the cloud
 *   keep one LoRA copy, optimizer state and in-flight activations per user, averaged at round end.
 * - 'sequential' (vanilla split learning): one user at a time across the whole system (one edge
 *   per round, the edges taking turns), each user starting from the adapter the one before it left.
 */
export type TrainingScheme = 'hierarchical' | 'sfl' | 'sequential';
export const TRAINING_SCHEMES: readonly TrainingScheme[] = ['hierarchical', 'sfl', 'sequential'];

export function isTrainingScheme(v: unknown): v is TrainingScheme {
  return typeof v === 'string' && (TRAINING_SCHEMES as readonly string[]).includes(v);
}

export interface TrainSettings {
  /** rows and tokens per row of every step (the WGSL engine is built for one shape) */
  batch: number;
  seq: number;
  /** steps each user trains in its turn */
  stepsPerUser: number;
  /** users an edge trains per round (one after another, or at once with 'sfl'; the paper's scheme: 1) */
  usersPerEdge: number;
  /** how the users of a round train (see TrainingScheme) */
  scheme: TrainingScheme;
  /** how activations and their gradients travel (adapters always travel as f32) */
  codec: Codec;
  adamw: AdamWOptions;
  /** where the labels are (see LabelPlacement) */
  labels: LabelPlacement;
  /** the standard deviation of the Gaussian noise the tab adds to h1 before it leaves (0: none) */
  activationNoise: number;
}

/** One measured figure: what share of a text an attacker at `who` recovered, for split k and noise sigma. */
export interface RecoveryFigure {
  who: 'edge' | 'cloud';
  /** the attack's name (see docs/privacy.md) */
  attack: string;
  k: number;
  sigma: number;
  /** share of token positions recovered exactly, in [0, 1] */
  tokenRate: number;
  /** share of whitespace-separated words recovered whole, in [0, 1] */
  wordRate: number;
}

/** What the person is told before Start: the run's privacy settings and the measured leak for them. */
export interface RunPrivacy {
  labels: LabelPlacement;
  /** the split point: blocks [0, k) run in the tab */
  k: number;
  noiseSigma: number;
  /** the figures measured for this k and sigma (null: none were measured for this run) */
  recovery: { measuredOn: string; command: string; figures: RecoveryFigure[] } | null;
}

export interface SegmentInfo {
  sha256: string;
  bytes: number;
}

/** What the page and the dashboard say about the model: its name, size, and what it is. */
export interface ModelInfo {
  /** the model card's name, else the model directory's name */
  name: string;
  /** one line from the model card (`model-card.json` in the model directory); '' when there is none */
  description: string;
  /** the number of weights of the whole model */
  parameters: number;
  /** a small model made for demonstrations: its continuations are not meant to be good */
  demo: boolean;
}

export interface RunManifest {
  /** the model directory's name, for display */
  modelName: string;
  model: ModelInfo;
  /** Hugging Face config.json object */
  config: Record<string, unknown>;
  plan: SplitPlan;
  lora: LoraConfig;
  train: TrainSettings;
  /** the current global adapter version (0 = the initial adapter) */
  version: number;
  segments: { user: SegmentInfo; edge: SegmentInfo };
  privacy: RunPrivacy;
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
export function parseRunManifest(json: unknown): { manifest: RunManifest; config: ModelConfig } {
  if (typeof json !== 'object' || json === null) throw new ManifestError('manifest: expected a JSON object');
  const j = json as Record<string, unknown>;
  // either family, by config.json's model_type
  const config = parseModelConfig(j.config, 'manifest config');
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
  try {
    checkLoraTargetsFit(config, lora);
  } catch (e) {
    throw new ManifestError(`manifest: ${(e as Error).message}`);
  }
  posInt(lora.r, 'lora.r');
  num(lora.alpha, 'lora.alpha');
  const t = j.train as TrainSettings;
  if (typeof t !== 'object' || t === null) throw new ManifestError('manifest: train missing');
  posInt(t.batch, 'train.batch');
  posInt(t.seq, 'train.seq');
  const { positions } = modelDims(config);
  if (t.seq > positions)
    throw new ManifestError(`manifest: train.seq ${t.seq} exceeds the model's ${positions} positions`);
  posInt(t.stepsPerUser, 'train.stepsPerUser');
  posInt(t.usersPerEdge, 'train.usersPerEdge');
  if (!isCodec(t.codec)) throw new ManifestError(`manifest: unknown codec ${JSON.stringify(t.codec)}`);
  for (const k of ['lr', 'beta1', 'beta2', 'eps', 'weightDecay'] as const) num(t.adamw?.[k], `train.adamw.${k}`);
  if (!isLabelPlacement(t.labels))
    throw new ManifestError(`manifest: train.labels must be one of ${LABEL_PLACEMENTS.join(', ')}`);
  num(t.activationNoise, 'train.activationNoise');
  if (!isTrainingScheme(t.scheme))
    throw new ManifestError(`manifest: train.scheme must be one of ${TRAINING_SCHEMES.join(', ')}`);
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
    model: parseModelInfo(j.model),
    config: j.config as Record<string, unknown>,
    plan: { k: plan.k, m: plan.m },
    lora: { r: lora.r, alpha: lora.alpha, targets: [...lora.targets] as LoraTarget[] },
    train: { ...t, adamw: { ...t.adamw } },
    version: j.version,
    segments: { user: { ...segs.user }, edge: { ...segs.edge } },
    privacy: parsePrivacy(j.privacy),
  };
  return { manifest, config };
}

function parseModelInfo(v: unknown): ModelInfo {
  const m = v as ModelInfo | undefined;
  if (typeof m !== 'object' || m === null) throw new ManifestError('manifest: model missing');
  if (typeof m.name !== 'string' || typeof m.description !== 'string' || typeof m.demo !== 'boolean')
    throw new ManifestError('manifest: model must have a name, a description and demo');
  return {
    name: m.name,
    description: m.description,
    parameters: posInt(m.parameters, 'model.parameters'),
    demo: m.demo,
  };
}

function rate(v: unknown, what: string): number {
  if (typeof v !== 'number' || !(v >= 0 && v <= 1)) throw new ManifestError(`manifest: ${what} must be in [0, 1]`);
  return v;
}

function parsePrivacy(v: unknown): RunPrivacy {
  const p = v as RunPrivacy | undefined;
  if (typeof p !== 'object' || p === null) throw new ManifestError('manifest: privacy missing');
  if (!isLabelPlacement(p.labels)) throw new ManifestError('manifest: privacy.labels is not a label placement');
  posInt(p.k, 'privacy.k');
  num(p.noiseSigma, 'privacy.noiseSigma');
  let recovery: RunPrivacy['recovery'] = null;
  if (p.recovery !== null) {
    const r = p.recovery;
    if (typeof r !== 'object' || !Array.isArray(r?.figures)) throw new ManifestError('manifest: privacy.recovery');
    recovery = {
      measuredOn: String(r.measuredOn ?? ''),
      command: String(r.command ?? ''),
      figures: r.figures.map((f, i) => ({
        who: f.who === 'cloud' ? 'cloud' : 'edge',
        attack: String(f.attack),
        k: posInt(f.k, `privacy.recovery.figures[${i}].k`),
        sigma: num(f.sigma, `privacy.recovery.figures[${i}].sigma`),
        tokenRate: rate(f.tokenRate, `privacy.recovery.figures[${i}].tokenRate`),
        wordRate: rate(f.wordRate, `privacy.recovery.figures[${i}].wordRate`),
      })),
    };
  }
  return { labels: p.labels, k: p.k, noiseSigma: p.noiseSigma, recovery };
}
