/**
 * `splitllm eval`: mean next-token loss and perplexity of a model (+ adapter) over a text file,
 * for either family: a GPT-2 directory or a LLaMA-family one (config.json `model_type` "llama" or
 * "qwen2", e.g. the shipped moby-llama-tiny, with its tokenizer.json), each with a PEFT adapter
 * in its own family's layout. The text is encoded without special tokens, as the models were trained.
 */
import { evalBatches, meanLoss, modelDims, unigramLoss, type LoraAdapter } from '@splitllm/model';
import { Args } from '../args';
import { modelDirOf, loadAdapterFor, loadModel, readText } from '../io';
import { Progress } from '../progress';

export const evalHelp = `splitllm eval --text FILE [--model NAME|DIR] [--adapter DIR] [--seq-len N] [--batch-size N]
    [--json]
  Mean next-token cross-entropy (nats/token) and perplexity over FILE, in non-overlapping
  windows of --seq-len tokens (default: the model's context, at most 128).
  --model defaults to the shipped model; a LLaMA-family directory (model_type llama or qwen2)
  is read with its tokenizer.json; --json prints one object.`;

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
  const modelDir = modelDirOf(args.optionalString('model'));
  const adapterDir = args.optionalString('adapter');
  const json = args.flag('json');
  const { model, tokenizer } = loadModel(modelDir);
  const dims = modelDims(model.config);
  const seqLen = args.int('seq-len', Math.min(128, dims.positions), 1);
  const batchSize = args.int('batch-size', 8, 1);
  if (seqLen > dims.positions) throw new Error(`--seq-len ${seqLen} exceeds the model's ${dims.positions} positions`);
  const adapter: LoraAdapter | undefined = adapterDir ? loadAdapterFor(model, adapterDir) : undefined;
  const tokens = tokenizer.encode(readText(textPath, '--text'));
  if (tokens.length < 2) throw new Error(`"${textPath}" has fewer than 2 tokens: nothing to evaluate`);

  const batches = evalBatches(tokens, batchSize, seqLen, dims.padId);
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
    unigramLoss: unigramLoss(tokens, dims.vocab),
  };
  if (json) console.log(JSON.stringify(result));
  else {
    console.log(
      `tokens ${scored}  loss ${loss.toFixed(4)}  perplexity ${result.perplexity.toFixed(2)}  ` +
        `(unigram fitted on the same text: loss ${result.unigramLoss.toFixed(4)})`,
    );
  }
}
