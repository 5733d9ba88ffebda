/** `splitllm eval`: mean next-token loss and perplexity of a model (+ adapter) over a text file. */
import { evalBatches, meanLoss, unigramLoss } from '@splitllm/model';
import { Args } from '../args';
import { SHIPPED_MODEL_DIR, loadAdapterFor, loadModel, readText } from '../io';
import { Progress } from '../progress';

export const evalHelp = `splitllm eval --text FILE [--model DIR] [--adapter DIR] [--seq-len N] [--batch-size N] [--json]
  Mean next-token cross-entropy (nats/token) and perplexity over FILE, in non-overlapping
  windows of --seq-len tokens (default: the model's context, at most 128).
  --model defaults to the shipped model; --json prints one object.`;

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
  const { model, tokenizer } = loadModel(modelDir);
  const seqLen = args.int('seq-len', Math.min(128, model.config.nPositions), 1);
  const batchSize = args.int('batch-size', 8, 1);
  if (seqLen > model.config.nPositions)
    throw new Error(`--seq-len ${seqLen} exceeds the model's n_positions ${model.config.nPositions}`);
  const adapter = adapterDir ? loadAdapterFor(model, adapterDir) : undefined;
  const tokens = tokenizer.encode(readText(textPath, '--text'));
  if (tokens.length < 2) throw new Error(`"${textPath}" has fewer than 2 tokens: nothing to evaluate`);

  const batches = evalBatches(tokens, batchSize, seqLen, model.config.eosTokenId);
  const progress = new Progress('eval', batches.length);
  const { loss, tokens: scored } = meanLoss(model, adapter, batches, () => progress.tick());
  progress.done();
  const result = {
    model: modelDir,
    adapter: adapterDir ?? null,
    text: textPath,
    tokens: scored,
    loss,
    perplexity: Math.exp(loss),
    unigramLoss: unigramLoss(tokens, model.config.vocabSize),
  };
  if (json) console.log(JSON.stringify(result));
  else {
    console.log(
      `tokens ${scored}  loss ${loss.toFixed(4)}  perplexity ${result.perplexity.toFixed(2)}  ` +
        `(unigram fitted on the same text: loss ${result.unigramLoss.toFixed(4)})`,
    );
  }
}
