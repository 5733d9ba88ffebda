/**
 * Times the user-segment engine's training step: upload ids, forward, read back h1, upload
 * dL/dh1, backward, AdamW (what the user tier does per step, without the network). Used by
 * bench-kernels.ts and bench-engine.ts.
 */
import {
  DEFAULT_ADAMW,
  DEFAULT_LORA_CONFIG,
  defaultSplitPlan,
  initLoraAdapter,
  Rng,
  type Gpt2Model,
} from '@splitllm/model';
import { loadGpt2Dir } from '@splitllm/model/node';
import { fileURLToPath } from 'node:url';
import { SOFTWARE_ADAPTER_VARIANTS, UserSegmentEngine, type KernelVariants } from '../src/engine';
import type { GpuContext } from '../src/gpu';
import { chooseKernelVariants, engineMatmulShapes, GPU_DEFAULT_VARIANTS } from '../src/variants';

export const SHIPPED_MODEL_DIR = fileURLToPath(new URL('../../assets/models/moby-tiny', import.meta.url));

export function loadShippedModel(): Gpt2Model {
  return loadGpt2Dir(SHIPPED_MODEL_DIR);
}

export type VariantSetting = 'auto' | 'gpu' | 'software';

export async function benchUserSegmentStep(
  gpu: GpuContext,
  label: string,
  model: Gpt2Model,
  o: { batch: number; seq: number; steps: number; variants: VariantSetting; override?: KernelVariants },
): Promise<{ msPerStep: number }> {
  const { batch: B, seq: T, steps } = o;
  const { k } = defaultSplitPlan(model.config);
  let variants: Required<KernelVariants>;
  let why = o.variants;
  if (o.variants === 'gpu') variants = GPU_DEFAULT_VARIANTS;
  else if (o.variants === 'software') variants = SOFTWARE_ADAPTER_VARIANTS;
  else {
    const choice = await chooseKernelVariants(gpu, engineMatmulShapes(model.config, B, T));
    variants = choice.variants;
    why = `auto: ${choice.reason}` as VariantSetting;
  }
  if (o.override && Object.keys(o.override).length) {
    variants = { ...variants, ...o.override };
    why = `${why}, overridden: ${JSON.stringify(o.override)}` as VariantSetting;
  }
  const adapter = initLoraAdapter(model.config, DEFAULT_LORA_CONFIG, 1, 0, k);
  const engine = await UserSegmentEngine.create(gpu, model, adapter, {
    k,
    lora: DEFAULT_LORA_CONFIG,
    batch: B,
    seq: T,
    adamw: { ...DEFAULT_ADAMW, lr: 5e-3 },
    variants,
  });
  const rng = new Rng(1);
  const ids = Int32Array.from({ length: B * T }, () => rng.int(model.config.vocabSize));
  const dh1 = rng.fillNormal(new Float32Array(B * T * model.config.nEmbd), 1e-3);
  const times: { fwd: number; bwd: number; total: number }[] = [];
  const WARMUP = 3; // pipelines are compiled at creation, but a GPU's clocks rise only under load
  for (let s = 0; s < WARMUP + steps; s++) {
    const t0 = performance.now();
    await engine.forward(ids);
    const t1 = performance.now();
    engine.backward(dh1);
    engine.step();
    await engine.finish();
    const t2 = performance.now();
    if (s >= WARMUP) times.push({ fwd: t1 - t0, bwd: t2 - t1, total: t2 - t0 });
  }
  engine.destroy();
  const med = (f: (t: (typeof times)[0]) => number) => times.map(f).sort((a, b) => a - b)[Math.floor(times.length / 2)];
  console.log(
    `${label}: embedding + blocks [0,${k}), B=${B} T=${T}, ` +
      `LoRA ${DEFAULT_LORA_CONFIG.targets.join('+')} r=${DEFAULT_LORA_CONFIG.r}: ` +
      `step ${med((t) => t.total).toFixed(1)} ms (forward + read-back ${med((t) => t.fwd).toFixed(1)} ms, ` +
      `backward + AdamW ${med((t) => t.bwd).toFixed(1)} ms), ` +
      `${((B * T) / (med((t) => t.total) / 1000)).toFixed(0)} tokens/s; ` +
      `matmul ${variants.matmul}, rank-r ${variants.lowRank}, ` +
      `layernorm ${variants.layernorm}, attention ${variants.attention} [${why}]; median of ${steps}`,
  );
  return { msPerStep: med((t) => t.total) };
}
