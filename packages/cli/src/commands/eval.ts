/**
 * `splitllm eval`: mean next-token loss and perplexity of a model (+ adapter) over a text file.
 * A GPT-2 directory runs the GPT-2 reference; a LLaMA-family one (config.json `model_type`
 * "llama" or "qwen2", e.g. the shipped moby-llama-tiny) runs the LLaMA reference, with a PEFT
 * adapter in that family's layout.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  type LlamaLoraAdapter,
  type LlamaModel,
  type LoraAdapter,
  type TokenBatch,
  checkLlamaAdapterFits,
  evalBatches,
  llamaLoss,
  meanLoss,
  unigramLoss,
} from '@splitllm/model';
import { loadLlamaAdapterDir, loadLlamaDir } from '@splitllm/model/node';
import { Args } from '../args';
import { SHIPPED_MODEL_DIR, loadAdapterFor, loadModel, readText } from '../io';
import { Progress } from '../progress';

export const evalHelp = `splitllm eval --text FILE [--model DIR] [--adapter DIR] [--seq-len N] [--batch-size N] [--json]
  Mean next-token cross-entropy (nats/token) and perplexity over FILE, in non-overlapping
  windows of --seq-len tokens (default: the model's context, at most 128).
  --model defaults to the shipped model; a LLaMA-family directory (model_type llama or qwen2)
  is read with its tokenizer.json; --json prints one object.`;

/**
 * Token-weighted mean loss of a LLaMA-family model over batches: meanLoss (trainer.ts) is the
 * GPT-2 one, and the two must weigh batches alike for the two shipped models to compare.
 */
export function llamaMeanLoss(
  model: LlamaModel,
  adapter: LlamaLoraAdapter | undefined,
  batches: TokenBatch[],
  onBatch?: () => void,
): { loss: number; tokens: number } {
  let nll = 0;
  let tokens = 0;
  for (const b of batches) {
    const r = llamaLoss(model, adapter, b);
    nll += r.loss * r.count;
    tokens += r.count;
    onBatch?.();
  }
  if (tokens === 0) throw new Error('no targets to evaluate');
  return { loss: nll / tokens, tokens };
}

/** True for a directory whose config.json names a LLaMA-family model_type; anything else goes the GPT-2 way. */
function isLlamaDir(dir: string): boolean {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  } catch {
    return false; // the GPT-2 loader reports a missing or broken config.json
  }
  const type = (json as { model_type?: unknown } | null)?.model_type;
  return type === 'llama' || type === 'qwen2';
}

interface Evaluable {
  seqLimit: number;
  vocabSize: number;
  padId: number;
  encode(text: string): number[];
  /** Reads and checks the adapter the loss is then taken with. */
  useAdapter(dir: string): void;
  meanLoss(batches: TokenBatch[], onBatch: () => void): { loss: number; tokens: number };
}

function loadEvaluable(modelDir: string): Evaluable {
  if (isLlamaDir(modelDir)) {
    const dir = loadLlamaDir(modelDir);
    const model: LlamaModel = { config: dir.config, weights: dir.weights };
    let adapter: LlamaLoraAdapter | undefined;
    return {
      seqLimit: dir.config.maxPositionEmbeddings,
      vocabSize: dir.config.vocabSize,
      // right padding behind a causal mask with ignored targets: any id in the vocabulary does
      padId: dir.config.eosTokenIds[0] ?? 0,
      // the text only, as the model was trained (special tokens would be scored as text)
      encode: (text) => dir.tokenizer.encode(text),
      useAdapter: (path) => {
        adapter = loadLlamaAdapterDir(path, dir.config);
        checkLlamaAdapterFits(dir.config, adapter);
      },
      meanLoss: (batches, onBatch) => llamaMeanLoss(model, adapter, batches, onBatch),
    };
  }
  const { model, tokenizer } = loadModel(modelDir);
  let adapter: LoraAdapter | undefined;
  return {
    seqLimit: model.config.nPositions,
    vocabSize: model.config.vocabSize,
    padId: model.config.eosTokenId,
    encode: (text) => tokenizer.encode(text),
    useAdapter: (path) => {
      adapter = loadAdapterFor(model, path);
    },
    meanLoss: (batches, onBatch) => meanLoss(model, adapter, batches, onBatch),
  };
}

export async function evalCommand(argv: string[]): Promise<void> {
  const args = Args.parse('eval', argv, {
    model: { type: 'string' },
    adapter: { type: 'string' },
    text: { type: 'string' },
    'seq-len': { type: 'string' },
    'batch-size': { type: 'string' },
    json: { type: 'boolean' },
  });
  const textPath = args.string('text');
  const modelDir = args.optionalString('model') ?? SHIPPED_MODEL_DIR;
  const adapterDir = args.optionalString('adapter');
  const json = args.flag('json');
  const m = loadEvaluable(modelDir);
  const seqLen = args.int('seq-len', Math.min(128, m.seqLimit), 1);
  const batchSize = args.int('batch-size', 8, 1);
  if (seqLen > m.seqLimit) throw new Error(`--seq-len ${seqLen} exceeds the model's n_positions ${m.seqLimit}`);
  if (adapterDir) m.useAdapter(adapterDir);
  const tokens = m.encode(readText(textPath, '--text'));
  if (tokens.length < 2) throw new Error(`"${textPath}" has fewer than 2 tokens: nothing to evaluate`);

  const batches = evalBatches(tokens, batchSize, seqLen, m.padId);
  const progress = new Progress('eval', batches.length);
  const { loss, tokens: scored } = m.meanLoss(batches, () => progress.tick());
  progress.done();
  const result = {
    model: modelDir,
    adapter: adapterDir ?? null,
    text: textPath,
    tokens: scored,
    loss,
    perplexity: Math.exp(loss),
    unigramLoss: unigramLoss(tokens, m.vocabSize),
  };
  if (json) console.log(JSON.stringify(result));
  else {
    console.log(
      `tokens ${scored}  loss ${loss.toFixed(4)}  perplexity ${result.perplexity.toFixed(2)}  ` +
        `(unigram fitted on the same text: loss ${result.unigramLoss.toFixed(4)})`,
    );
  }
}
