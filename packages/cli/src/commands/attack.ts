/**
 * `splitllm attack`: measures what an honest-but-curious edge or cloud recovers from what a tab
 * sends (the attacks of @splitllm/privacy), on the demo users' held-out text, for each split
 * point and noise level, and prints the table docs/privacy.md quotes. `--write` stores the
 * shipped model's figures next to it (privacy.json) for the cloud's manifest.
 *
 * The attacker trains only on public text (the Moby-Dick pre-training chapters); the private
 * text is the demo users' held-out State of the Union text, never seen by the attacker.
 */
import { join } from 'node:path';
import {
  DEFAULT_LORA_CONFIG,
  FamilyError,
  GPT2_SMALL_CONFIG,
  type Gpt2Config,
  type Gpt2Model,
  defaultSplitPlan,
  initLoraAdapter,
  randomGpt2Weights,
} from '@splitllm/model';
import { isLlamaModelDir, loadGpt2Dir, writeFileAtomic } from '@splitllm/model/node';
import { type MeasuredFigure, type Observer, type RecoveryFigures, measure, measureSteps } from '@splitllm/privacy';
import { Args, UsageError } from '../args';
import { mobyDickSplit } from '../corpus';
import { REPO_ROOT, SHIPPED_MODEL_DIR, loadAdapterFor, modelDirOf, readText } from '../io';
import { Progress } from '../progress';

/** A GPT-2-small-shaped model with random weights instead of a directory. */
const RANDOM_GPT2_SMALL = 'random:gpt2-small';
const SOTU_HELDOUT = join(REPO_ROOT, 'packages/assets/data/sotu/heldout');
const DEFAULT_TEXTS = [1, 2, 3, 4].map((u) => join(SOTU_HELDOUT, `user-${u}.txt`));

export const attackHelp = `splitllm attack [--model DIR|${RANDOM_GPT2_SMALL}] [--adapter DIR] [--k K|all]
    [--sigma S[,S...]] [--tokens N] [--seq-len T] [--who edge|cloud|both] [--shortlist N] [--train-tokens N]
    [--text FILE[,FILE...]] [--seed S] [--json FILE] [--write]
  What an honest-but-curious edge (sees h1 = blocks [0,k)) and cloud (sees h2 = blocks [0,m), and
  dL/dhL with labels on the device) recover of a tab's text: a ridge decoder trained on public
  Moby-Dick text, a search with the known weights (decoder shortlist, language-model prior under
  noise), and the labels from the head gradient. Prints token and word recovery per attack, k, sigma.
  --model      default the shipped model; ${RANDOM_GPT2_SMALL}: GPT-2 small's shape (768 wide, 12
               layers) with random weights and the shipped tokenizer's vocabulary (edge only by default)
  --adapter    the adapter the observers hold (default the initial one, B = 0: the base model)
  --k          split points (default all: 1..L-1); the cloud's cut is the default plan's m (>= k+1)
  --sigma      Gaussian noise the tab adds to h1, comma-separated (default 0)
  --tokens     private tokens measured (default 256), in sequences of --seq-len (default 64) taken in
               turn from the demo users' held-out SOTU text (or --text files)
  --json FILE  writes every figure with its details; --write stores the figures as privacy.json in the
               model directory, where the cloud reads them into the manifest the page shows (a run whose
               k and sigma were not measured says so)`;

function parseList(raw: string, what: string, parse: (s: string) => number): number[] {
  const out = raw.split(',').map((s) => {
    const v = parse(s.trim());
    if (!Number.isFinite(v)) throw new UsageError(`attack: ${what} "${s}" is not a number`);
    return v;
  });
  if (out.length === 0) throw new UsageError(`attack: ${what} list is empty`);
  return [...new Set(out)];
}

function loadTarget(modelArg: string, seed: number) {
  if (modelArg !== RANDOM_GPT2_SMALL) {
    // the attacks and their stored figures are GPT-2's (docs/design.md, section 9)
    if (isLlamaModelDir(modelArg)) {
      throw new FamilyError(`attack measures GPT-2 models only; ${modelArg} is of the LLaMA family`);
    }
    const loaded = loadGpt2Dir(modelArg);
    const model: Gpt2Model = { config: loaded.config, weights: loaded.weights };
    const name = modelArg === SHIPPED_MODEL_DIR ? 'the shipped model moby-tiny' : modelArg;
    return { model, tokenizer: loaded.tokenizer, name };
  }
  // the shipped tokenizer (no 50257-token one ships): the shape is GPT-2 small's, the vocabulary 1024
  const { tokenizer } = loadGpt2Dir(SHIPPED_MODEL_DIR);
  const eos = tokenizer.eotId ?? tokenizer.vocabSize - 1;
  const config: Gpt2Config = { ...GPT2_SMALL_CONFIG, vocabSize: tokenizer.vocabSize, bosTokenId: eos, eosTokenId: eos };
  const model: Gpt2Model = { config, weights: randomGpt2Weights(config, seed) };
  return { model, tokenizer, name: `GPT-2 small shape, random weights (seed ${seed}), vocabulary ${config.vocabSize}` };
}

function pct(x: number): string {
  return `${(100 * x).toFixed(1)}%`.padStart(7);
}

export async function attackCommand(argv: string[]): Promise<void> {
  const args = Args.parse('attack', argv, {
    model: { type: 'string' },
    adapter: { type: 'string' },
    k: { type: 'string' },
    sigma: { type: 'string' },
    tokens: { type: 'string' },
    'seq-len': { type: 'string' },
    who: { type: 'string' },
    shortlist: { type: 'string' },
    'train-tokens': { type: 'string' },
    text: { type: 'string' },
    seed: { type: 'string' },
    json: { type: 'string' },
    write: { type: 'boolean' },
  });
  const modelArg = modelDirOf(args.optionalString('model'));
  const seed = args.int('seed', 1);
  const tokens = args.int('tokens', 256, 2);
  const write = args.flag('write');
  const jsonOut = args.optionalString('json');
  if (write && modelArg === RANDOM_GPT2_SMALL) {
    throw new UsageError(`attack: --write stores the figures next to a model directory; ${RANDOM_GPT2_SMALL} has none`);
  }
  const { model, tokenizer, name } = loadTarget(modelArg, seed);
  const c = model.config;
  const seqLen = args.int('seq-len', Math.min(64, c.nPositions), 2);
  if (seqLen > c.nPositions) throw new UsageError(`attack: --seq-len ${seqLen} exceeds n_positions ${c.nPositions}`);
  const kRaw = args.optionalString('k') ?? 'all';
  const ks =
    kRaw === 'all'
      ? Array.from({ length: c.nLayer - 1 }, (_, i) => i + 1)
      : parseList(kRaw, 'k', (s) => (/^\d+$/.test(s) ? Number(s) : Number.NaN));
  for (const k of ks) {
    if (!(k >= 1 && k < c.nLayer))
      throw new UsageError(`attack: --k ${k} is not a split point: need 1 <= k <= ${c.nLayer - 1}`);
  }
  const sigmas = parseList(args.optionalString('sigma') ?? '0', 'sigma', (s) => (s === '' ? Number.NaN : Number(s)));
  for (const s of sigmas) if (s < 0) throw new UsageError(`attack: --sigma ${s} must be >= 0`);
  const whoRaw = args.optionalString('who') ?? (modelArg === RANDOM_GPT2_SMALL ? 'edge' : 'both');
  if (!['edge', 'cloud', 'both'].includes(whoRaw)) throw new UsageError(`attack: --who must be edge, cloud or both`);
  const observers: Observer[] = whoRaw === 'both' ? ['edge', 'cloud'] : [whoRaw as Observer];
  const adapterDir = args.optionalString('adapter');
  const adapter = adapterDir ? loadAdapterFor(model, adapterDir) : initLoraAdapter(c, DEFAULT_LORA_CONFIG, seed);

  // private sequences: windows of seqLen tokens taken in turn from each text
  const textPaths = args.optionalString('text')?.split(',') ?? DEFAULT_TEXTS;
  const streams = textPaths.map((p) => tokenizer.encode(readText(p, '--text')));
  const sequences: Int32Array[] = [];
  const offsets = streams.map(() => 0);
  let left = tokens;
  for (let grew = true; grew && left >= 2; ) {
    grew = false;
    for (let i = 0; i < streams.length && left >= 2; i++) {
      const T = Math.min(seqLen, left);
      if (offsets[i] + T > streams[i].length) continue;
      sequences.push(Int32Array.from(streams[i].slice(offsets[i], offsets[i] + T)));
      offsets[i] += T;
      left -= T;
      grew = true;
    }
  }
  const measured = sequences.reduce((n, s) => n + s.length, 0);
  if (measured === 0) throw new Error('attack: the private text has too few tokens');

  const publicIds = tokenizer.encode(mobyDickSplit().train);
  const plan = defaultSplitPlan(c);
  const cloudCut = (k: number) => Math.max(plan.m, k + 1);
  const progress = new Progress('attack', measureSteps({ ks, sigmas, observers }));
  const t0 = Date.now();
  const figures = measure({
    model,
    adapter,
    publicIds,
    sequences,
    piece: (id) => tokenizer.decode([id]),
    ks,
    sigmas,
    observers,
    cloudCut,
    seed,
    shortlist: args.optionalString('shortlist') ? args.int('shortlist', 64, 1) : undefined,
    trainTokens: args.optionalString('train-tokens') ? args.int('train-tokens', 8192, 2) : undefined,
    onProgress: (what) => progress.tick(what),
  });
  progress.done();
  const seconds = (Date.now() - t0) / 1000;

  console.log(`model ${name}; ${measured} private tokens in ${sequences.length} sequences; ${seconds.toFixed(0)} s`);
  console.log('attack           who    k  layers  sigma   tokens   words');
  for (const f of figures) {
    console.log(
      `${f.attack.padEnd(16)} ${f.who.padEnd(5)} ${String(f.k).padStart(2)}  ${String(f.layers).padStart(6)}  ` +
        `${String(f.sigma).padStart(5)} ${pct(f.tokenRate)} ${pct(f.wordRate)}`,
    );
  }

  // the command that reproduces the figures (where a copy of them went does not change them)
  const jsonAt = argv.findIndex((a) => a === '--json' || a.startsWith('--json='));
  const kept =
    jsonAt < 0 ? argv : argv.filter((_, i) => i !== jsonAt && !(i === jsonAt + 1 && argv[jsonAt] === '--json'));
  const command = `splitllm attack ${kept.join(' ')}`.trim();
  const privateText =
    textPaths === DEFAULT_TEXTS ? "the demo users' held-out State of the Union text" : textPaths.join(', ');
  const measuredOn =
    `${name} (${c.nLayer} layers, n_embd ${c.nEmbd}, vocabulary ${c.vocabSize}) with ` +
    `${adapterDir ? `the adapter in ${adapterDir}` : 'its initial adapter (B = 0: the base model)'}; ` +
    `private text: ${measured} tokens of ${privateText} ` +
    `in sequences of ${seqLen}; the attacker trained on public Moby-Dick text only; ` +
    `the cloud sees blocks [0, m) with m = ${ks.map((k) => `${cloudCut(k)} for k=${k}`).join(', ')}`;
  if (jsonOut) {
    writeFileAtomic(
      jsonOut,
      `${JSON.stringify({ measuredOn, command, tokens: measured, seconds, figures }, null, 2)}\n`,
    );
  }
  if (write) {
    const file: RecoveryFigures = {
      measuredOn,
      command,
      tokens: measured,
      figures: figures.map((f: MeasuredFigure) => ({
        k: f.k,
        sigma: f.sigma,
        attack: f.attack,
        who: f.who,
        tokenRate: f.tokenRate,
        wordRate: f.wordRate,
      })),
    };
    // next to the model, where the cloud reads them into the manifest (apps/cloud-server/src/privacy.ts)
    const path = join(modelArg, 'privacy.json');
    writeFileAtomic(path, `${JSON.stringify(file, null, 2)}\n`);
    console.log(`wrote ${path}`);
  }
}
