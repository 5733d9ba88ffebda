/** `splitllm train-central`: LoRA fine-tuning of the whole model in one process (the baseline). */
import {
  DEFAULT_LLAMA_LORA_TARGETS,
  DEFAULT_LORA_CONFIG,
  DEFAULT_LORA_TRAIN,
  defaultLoraConfig,
  parseLoraTargets,
  trainLoraCentral,
} from '@splitllm/model';
import { saveModelAdapterDir } from '@splitllm/model/node';
import { Args } from '../args';
import { modelDirOf, loadModel, readText } from '../io';
import { Progress } from '../progress';

export const trainCentralHelp = `splitllm train-central --text FILE --steps N --seed S --out DIR [--model NAME|DIR]
    [--json] [--rank R] [--alpha A] [--targets T,...]
    [--lr LR] [--adam-eps EPS] [--batch-size B] [--seq-len T]
  LoRA fine-tuning of the whole model (GPT-2 or LLaMA family) on FILE; writes the adapter to DIR in
  PEFT layout. Targets: GPT-2 attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj (default
  ${DEFAULT_LORA_CONFIG.targets.join(',')}); LLaMA q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
  down_proj (default ${DEFAULT_LLAMA_LORA_TARGETS.join(',')}).
  Defaults: the shipped model (moby-tiny), rank ${DEFAULT_LORA_CONFIG.r}, alpha ${DEFAULT_LORA_CONFIG.alpha},
  lr ${DEFAULT_LORA_TRAIN.adamw.lr}, batch ${DEFAULT_LORA_TRAIN.batchSize} x ${DEFAULT_LORA_TRAIN.seqLen} tokens.
  --json prints one object per step.`;

export async function trainCentralCommand(argv: string[]): Promise<void> {
  const args = Args.parse('train-central', argv, {
    model: { type: 'string' },
    text: { type: 'string' },
    steps: { type: 'string' },
    seed: { type: 'string' },
    out: { type: 'string' },
    rank: { type: 'string' },
    alpha: { type: 'string' },
    targets: { type: 'string' },
    lr: { type: 'string' },
    'adam-eps': { type: 'string' },
    'batch-size': { type: 'string' },
    'seq-len': { type: 'string' },
    json: { type: 'boolean' },
  });
  const textPath = args.string('text');
  const steps = args.int('steps', undefined, 1);
  const seed = args.int('seed');
  const outDir = args.string('out');
  const modelDir = modelDirOf(args.optionalString('model'));
  const { model, tokenizer } = loadModel(modelDir);
  const defaults = defaultLoraConfig(model.config);
  const lora = {
    r: args.int('rank', defaults.r, 1),
    alpha: args.float('alpha', defaults.alpha),
    targets: args.optionalString('targets') ? parseLoraTargets(args.string('targets'), model.config) : defaults.targets,
  };
  const lr = args.float('lr', DEFAULT_LORA_TRAIN.adamw.lr);
  const eps = args.float('adam-eps', DEFAULT_LORA_TRAIN.adamw.eps);
  const batchSize = args.int('batch-size', DEFAULT_LORA_TRAIN.batchSize, 1);
  const seqLen = args.int('seq-len', DEFAULT_LORA_TRAIN.seqLen, 2);
  const json = args.flag('json');

  const tokens = tokenizer.encode(readText(textPath, '--text'));
  const progress = new Progress('train-central', steps);
  const adapter = trainLoraCentral(
    model,
    tokens,
    { lora, steps, seed, batchSize, seqLen, adamw: { ...DEFAULT_LORA_TRAIN.adamw, lr, eps } },
    (s) => {
      if (json) console.log(JSON.stringify({ step: s.step, loss: s.loss, tokens: s.tokens, ms: Math.round(s.ms) }));
      else if (!process.stderr.isTTY)
        console.log(`step ${s.step}/${steps}  loss ${s.loss.toFixed(4)}  ${s.ms.toFixed(0)} ms`);
      progress.tick(`loss ${s.loss.toFixed(4)}`);
    },
  );
  progress.done();
  saveModelAdapterDir(outDir, adapter, { baseModel: modelDir, nLayer: model.config.nLayer });
  if (!json) console.log(`adapter written to ${outDir} (PEFT layout)`);
}
