/**
 * Benchmark (not a test): milliseconds per user-segment training step of the engine.
 *
 *   pnpm exec tsx packages/lora-kernels/scripts/bench-engine.ts [--batch 4] [--seq 64]
 *       [--steps 5] [--variants auto|gpu|software] [--gpt2-small]
 *
 * A step: upload ids, forward, read back h1, upload dL/dh1, backward, AdamW (what the user
 * tier does per step, without the network). Runs on the shipped model's user segment (default
 * split: embedding + block 0) and with --gpt2-small also on a GPT-2 small-shaped one (random
 * weights, embedding + blocks [0, 3)). Prints the adapter and the kernel variants used.
 */
import { DEFAULT_ADAMW, DEFAULT_LORA_CONFIG, defaultSplitPlan, initLoraAdapter, randomGpt2Weights, Rng, type Gpt2Config, type Gpt2Model } from '@splitllm/shared';
import { loadGpt2Dir } from '@splitllm/shared/node';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { UserSegmentEngine, type KernelVariants } from '../src/engine';
import { nodeKernelDevice } from '../src/node';
import { chooseKernelVariants, engineMatmulShapes, GPU_DEFAULT_VARIANTS } from '../src/variants';
import { SOFTWARE_ADAPTER_VARIANTS } from '../src/engine';

const { values: opt } = parseArgs({
  options: {
    batch: { type: 'string', default: '4' },
    seq: { type: 'string', default: '64' },
    steps: { type: 'string', default: '5' },
    variants: { type: 'string', default: 'auto' },
    'gpt2-small': { type: 'boolean', default: false },
  },
});

const GPT2_SMALL: Gpt2Config = { vocabSize: 50257, nPositions: 1024, nEmbd: 768, nLayer: 12, nHead: 12, nInner: 3072, layerNormEpsilon: 1e-5, bosTokenId: 50256, eosTokenId: 50256 };
const gpu = await nodeKernelDevice();
console.log(`adapter: ${gpu.adapter.name} (fallback: ${gpu.adapter.isFallbackAdapter})`);
const [B, T, steps] = [Number(opt.batch), Number(opt.seq), Number(opt.steps)];

async function bench(label: string, model: Gpt2Model) {
  const { k } = defaultSplitPlan(model.config);
  let variants: Required<KernelVariants>;
  if (opt.variants === 'gpu') variants = GPU_DEFAULT_VARIANTS;
  else if (opt.variants === 'software') variants = SOFTWARE_ADAPTER_VARIANTS;
  else {
    const choice = await chooseKernelVariants(gpu, engineMatmulShapes(model.config, B, T));
    console.log(`variants: ${choice.reason}`);
    variants = choice.variants;
  }
  const adapter = initLoraAdapter(model.config, DEFAULT_LORA_CONFIG, 1, 0, k);
  const engine = await UserSegmentEngine.create(gpu, model, adapter, { k, lora: DEFAULT_LORA_CONFIG, batch: B, seq: T, adamw: { ...DEFAULT_ADAMW, lr: 5e-3 }, variants });
  const rng = new Rng(1);
  const ids = Int32Array.from({ length: B * T }, () => rng.int(model.config.vocabSize));
  const dh1 = rng.fillNormal(new Float32Array(B * T * model.config.nEmbd), 1e-3);
  const times: { fwd: number; bwd: number; total: number }[] = [];
  for (let s = 0; s <= steps; s++) {
    const t0 = performance.now();
    await engine.forward(ids);
    const t1 = performance.now();
    engine.backward(dh1);
    engine.step();
    await engine.finish();
    const t2 = performance.now();
    if (s > 0) times.push({ fwd: t1 - t0, bwd: t2 - t1, total: t2 - t0 });
  }
  engine.destroy();
  const med = (f: (t: (typeof times)[0]) => number) => times.map(f).sort((a, b) => a - b)[Math.floor(times.length / 2)].toFixed(1);
  console.log(
    `${label}: user segment embedding + blocks [0,${k}), B=${B} T=${T}, LoRA ${DEFAULT_LORA_CONFIG.targets.join('+')} r=${DEFAULT_LORA_CONFIG.r}: ` +
      `step ${med((t) => t.total)} ms (forward + read-back ${med((t) => t.fwd)} ms, backward + AdamW ${med((t) => t.bwd)} ms; ` +
      `matmul ${variants.matmul}, layernorm ${variants.layernorm}, attention ${variants.attention}; median of ${steps})`,
  );
}

await bench('moby-tiny', loadGpt2Dir(fileURLToPath(new URL('../../assets/models/moby-tiny', import.meta.url))));
if (opt['gpt2-small']) await bench('gpt2-small', { config: GPT2_SMALL, weights: randomGpt2Weights(GPT2_SMALL, 1) });
process.exit(0);
