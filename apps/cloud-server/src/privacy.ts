/**
 * What the manifest tells a person about the run's privacy before Start: where the labels are,
 * the split point, the noise, and the recovery rates measured by `splitllm attack` for exactly
 * this k and sigma. The figures are stored next to the model (`privacy.json`, written by
 * `splitllm attack --write`); a run whose k and sigma were never measured says so (null) rather
 * than borrow another setting's figures.
 */
import type { AnyModel, SplitPlan } from '@splitllm/model';
import type { ModelInfo, RecoveryFigure, RunPrivacy, TrainSettings } from '@splitllm/wire';
import { existsSync, readFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';

/** The model card a model directory may hold: how the page and the dashboard name and describe it. */
export const MODEL_CARD_FILE = 'model-card.json';

/** The model's name, one-line description and size, from its card (when there is one) and its weights. */
export function readModelInfo(modelDir: string, model: AnyModel): ModelInfo {
  let parameters = 0;
  for (const t of model.weights.values()) parameters += t.data.length;
  const path = join(modelDir, MODEL_CARD_FILE);
  const card = existsSync(path) ? (JSON.parse(readFileSync(path, 'utf8')) as Partial<ModelInfo>) : {};
  return {
    name: typeof card.name === 'string' && card.name ? card.name : basename(resolve(modelDir)),
    description: typeof card.description === 'string' ? card.description : '',
    parameters,
    demo: card.demo === true,
  };
}

/** The file `splitllm attack --write` leaves in a model directory. */
export const PRIVACY_FILE = 'privacy.json';

/** The attack that reads the labels back from the head's gradient (packages/privacy). */
const GRADIENT_ATTACK = 'gradient-labels';

interface StoredFigures {
  measuredOn: string;
  command: string;
  figures: RecoveryFigure[];
}

function readStored(modelDir: string): StoredFigures | undefined {
  const path = join(modelDir, PRIVACY_FILE);
  if (!existsSync(path)) return undefined;
  const j = JSON.parse(readFileSync(path, 'utf8')) as Partial<StoredFigures>;
  if (!Array.isArray(j.figures)) throw new Error(`${path}: "figures" must be a list`);
  return { measuredOn: String(j.measuredOn ?? ''), command: String(j.command ?? ''), figures: j.figures };
}

/** The run's privacy block: its settings and the stored figures for its k and sigma (if any). */
export function runPrivacy(modelDir: string, plan: SplitPlan, train: TrainSettings): RunPrivacy {
  const stored = readStored(modelDir);
  const sigma = train.activationNoise;
  // the figures of this split and noise; the attack on the head's gradient only where labels are on
  // the device (in the cloud there is no such gradient: the cloud holds the labels themselves)
  const figures = (stored?.figures ?? []).filter(
    (f) =>
      f.k === plan.k && Math.abs(f.sigma - sigma) < 1e-9 && (f.attack !== GRADIENT_ATTACK || train.labels === 'device'),
  );
  return {
    labels: train.labels,
    k: plan.k,
    noiseSigma: sigma,
    recovery: stored && figures.length > 0 ? { measuredOn: stored.measuredOn, command: stored.command, figures } : null,
  };
}
