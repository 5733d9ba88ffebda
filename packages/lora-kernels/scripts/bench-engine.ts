/**
 * Benchmark (not a test): milliseconds per user-segment training step of the engine.
 *
 *   pnpm exec tsx packages/lora-kernels/scripts/bench-engine.ts [--batch 4] [--seq 64]
 *       [--steps 5] [--variants auto|gpu|software] [--matmul V] [--low-rank V] [--head-split-k S]
 *       [--gpt2-small] [--profile]
 *
 * --matmul / --low-rank override the variant of the full-size / rank-r products, --head-split-k the
 * slices of the head's dy = dlogits W (1: none). --profile times every dispatch of the step and of
 * one head chunk alone and prints the kernels that take the most time. The head's step (labels on
 * the device) is timed and printed apart from the segment's.
 *
 * Runs on the shipped model's user segment (default split: embedding + block 0) and with
 * --gpt2-small also on a GPT-2 small-shaped one (random weights, embedding + blocks [0, 3)).
 */
import { GPT2_SMALL_CONFIG, randomGpt2Weights } from '@splitllm/model';
import { parseArgs } from 'node:util';
import { MATMUL_VARIANTS, type MatmulVariant } from '../src/kernels/matmul';
import { nodeKernelDevice } from '../src/node';
import { benchUserSegmentStep, loadShippedModel, type VariantSetting } from './user-step-bench';

const { values: opt } = parseArgs({
  options: {
    batch: { type: 'string', default: '4' },
    seq: { type: 'string', default: '64' },
    steps: { type: 'string', default: '5' },
    variants: { type: 'string', default: 'auto' },
    'gpt2-small': { type: 'boolean', default: false },
    matmul: { type: 'string' },
    'low-rank': { type: 'string' },
    'head-split-k': { type: 'string' },
    profile: { type: 'boolean', default: false },
  },
});
if (!['auto', 'gpu', 'software'].includes(opt.variants)) throw new Error(`--variants must be auto, gpu or software`);

const gpu = await nodeKernelDevice();
console.log(`adapter: ${gpu.adapter.name} (fallback: ${gpu.adapter.isFallbackAdapter})`);
for (const v of [opt.matmul, opt['low-rank']])
  if (v !== undefined && !MATMUL_VARIANTS.includes(v as MatmulVariant))
    throw new Error(`unknown matmul variant ${v}: ${MATMUL_VARIANTS.join(', ')}`);
const headSplitK = opt['head-split-k'] === undefined ? undefined : Number(opt['head-split-k']);
if (headSplitK !== undefined && !(Number.isInteger(headSplitK) && headSplitK >= 1))
  throw new Error(`--head-split-k must be a positive integer, got ${opt['head-split-k']}`);
const override = {
  ...(opt.matmul ? { matmul: opt.matmul as MatmulVariant } : {}),
  ...(opt['low-rank'] ? { lowRank: opt['low-rank'] as MatmulVariant } : {}),
  ...(headSplitK === undefined ? {} : { headSplitK }),
};
const o = {
  batch: Number(opt.batch),
  seq: Number(opt.seq),
  steps: Number(opt.steps),
  variants: opt.variants as VariantSetting,
  override,
  profile: opt.profile,
};
await benchUserSegmentStep(gpu, 'moby-tiny', loadShippedModel(), o);
if (opt['gpt2-small'])
  await benchUserSegmentStep(
    gpu,
    'gpt2-small',
    { config: GPT2_SMALL_CONFIG, weights: randomGpt2Weights(GPT2_SMALL_CONFIG, 1) },
    o,
  );
process.exit(0);
