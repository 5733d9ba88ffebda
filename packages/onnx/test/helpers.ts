/**
 * Shared helpers of the ONNX tests: onnxruntime-node sessions (CPU, as the edge and cloud run
 * them: graph optimization 'all'), error measures, models, adapters and batches.
 */
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import {
  type Gpt2Config,
  randomGpt2Weights,
  initLoraAdapter,
  type LoraAdapter,
  type LoraConfig,
  type Gpt2Model,
  type TokenBatch,
  IGNORE_INDEX,
  Rng,
} from '@splitllm/model';
import { loadGpt2Dir } from '@splitllm/model/node';

export type Feed = { data: Float32Array | Int32Array; dims: number[] };
export type Outputs = Record<string, Float32Array>;

export async function createSession(model: Uint8Array): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(model, {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    intraOpNumThreads: 1,
    logSeverityLevel: 3,
  });
}

export async function run(session: ort.InferenceSession, feeds: Record<string, Feed>): Promise<Outputs> {
  const inputs: Record<string, ort.Tensor> = {};
  for (const [name, f] of Object.entries(feeds)) {
    inputs[name] =
      f.data instanceof Int32Array
        ? new ort.Tensor('int32', f.data, f.dims)
        : new ort.Tensor('float32', f.data, f.dims);
  }
  const out = await session.run(inputs);
  const res: Outputs = {};
  for (const [name, t] of Object.entries(out)) res[name] = t.data as Float32Array;
  return res;
}

/** max |got - ref| / max |ref| (the reference tensor's own scale): the project's one measure. */
export { maxRelErr as relErr } from '@splitllm/model';

export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

export function randn(n: number, rng: Rng, std = 1): Float32Array {
  return rng.fillNormal(new Float32Array(n), std);
}

/** Worst error seen per label, printed once per file (the report's "measured" figures). */
export class ErrorLog {
  private readonly worst = new Map<string, number>();
  constructor(private readonly title: string) {}
  note(label: string, err: number): number {
    this.worst.set(label, Math.max(this.worst.get(label) ?? 0, err));
    return err;
  }
  print(): void {
    const lines = [...this.worst].map(([k, v]) => `  ${k.padEnd(44)} ${v.toExponential(2)}`);
    console.log(`${this.title} (max relative error)\n${lines.join('\n')}`);
  }
}

const MOBY_DIR = fileURLToPath(new URL('../../assets/models/moby-tiny', import.meta.url));

export function loadMobyTiny(): Gpt2Model {
  const dir = loadGpt2Dir(MOBY_DIR);
  return { config: dir.config, weights: dir.weights };
}

export const SMALL_CONFIG: Gpt2Config = {
  vocabSize: 301,
  nPositions: 32,
  nEmbd: 64,
  nLayer: 5,
  nHead: 4,
  nInner: 256,
  layerNormEpsilon: 1e-5,
  bosTokenId: 300,
  eosTokenId: 300,
};

/**
 * A GPT-2-shaped random model. GPT-2's 0.02 init gives near-uniform attention and a nearly
 * linear MLP; weights are scaled up and norms/biases perturbed so every path matters.
 */
export function randomModel(config: Gpt2Config, seed: number): Gpt2Model {
  const weights = randomGpt2Weights(config, seed);
  const rng = new Rng(seed + 1);
  for (const [name, t] of weights) {
    if (name.endsWith('.weight') && !/ln_/.test(name)) for (let i = 0; i < t.data.length; i++) t.data[i] *= 5;
    else for (let i = 0; i < t.data.length; i++) t.data[i] += 0.1 * rng.normal();
  }
  return { config, weights };
}

/** An adapter over all layers whose B is random too (B = 0 would make every dA vanish). */
export function randomAdapter(config: Gpt2Config, lora: LoraConfig, seed: number): LoraAdapter {
  const a = initLoraAdapter(config, lora, seed);
  const rng = new Rng(seed + 5);
  for (const pair of a.layers.values()) rng.fillNormal(pair.B.data, 0.5 / Math.sqrt(lora.r));
  return a;
}

/** B rows of T random tokens; every row but the first is right-padded (ignored targets at the end). */
export function paddedBatch(config: Gpt2Config, B: number, T: number, seed: number): TokenBatch {
  const rng = new Rng(seed);
  const inputIds = new Int32Array(B * T);
  const targets = new Int32Array(B * T);
  for (let b = 0; b < B; b++) {
    const len = b === 0 ? T : Math.max(1, T - 3 * b);
    for (let t = 0; t < T; t++) {
      inputIds[b * T + t] = t < len ? rng.int(config.vocabSize) : config.eosTokenId;
    }
    for (let t = 0; t < T; t++)
      targets[b * T + t] = t < len - 1 ? inputIds[b * T + t + 1] : t === len - 1 ? config.eosTokenId : IGNORE_INDEX;
  }
  return { B, T, inputIds, targets };
}
