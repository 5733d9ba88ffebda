/**
 * Times the user-segment engine's training step: upload ids, forward, read back h1, upload
 * dL/dh1, backward, AdamW (what the user tier does per step, without the network); and apart, the
 * LM head's step with the labels on the device (upload hL and the targets, every chunk's norm,
 * logits, cross-entropy and dy, read back dL/dhL and the loss terms), which the user tier runs
 * between the edge's reply and its backward. Used by bench-kernels.ts and bench-engine.ts.
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
import type { Dispatch } from '../src/gpu';

export const SHIPPED_MODEL_DIR = fileURLToPath(new URL('../../assets/models/moby-tiny', import.meta.url));

export function loadShippedModel(): Gpt2Model {
  return loadGpt2Dir(SHIPPED_MODEL_DIR);
}

export type VariantSetting = 'auto' | 'gpu' | 'software';

export async function benchUserSegmentStep(
  gpu: GpuContext,
  label: string,
  model: Gpt2Model,
  o: {
    batch: number;
    seq: number;
    steps: number;
    variants: VariantSetting;
    override?: KernelVariants;
    /** also time every dispatch of the step alone and print the kernels by time (profileStep) */
    profile?: boolean;
  },
): Promise<{ msPerStep: number }> {
  const { batch: B, seq: T, steps } = o;
  const { k } = defaultSplitPlan(model.config);
  let variants: Required<KernelVariants>;
  let why = o.variants;
  if (o.variants === 'gpu') variants = GPU_DEFAULT_VARIANTS;
  else if (o.variants === 'software') variants = SOFTWARE_ADAPTER_VARIANTS;
  else {
    const choice = await chooseKernelVariants(gpu, engineMatmulShapes(model.config, B, T, DEFAULT_LORA_CONFIG.r, k));
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
  const M = B * T;
  const hL = rng.fillNormal(new Float32Array(M * model.config.nEmbd), 1);
  const targets = Int32Array.from({ length: M }, () => rng.int(model.config.vocabSize));
  const headMs: number[] = [];
  for (let s = 0; s < WARMUP + steps; s++) {
    const t0 = performance.now();
    await engine.headStep(hL, targets);
    if (s >= WARMUP) headMs.push(performance.now() - t0);
  }
  if (o.profile) await profileStep(gpu, engine, med3(times.map((t) => t.total)), med3(headMs), M);
  const R = engine.headChunkRows;
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
  console.log(
    `${label}: head (labels on the device, V=${model.config.vocabSize}): ${med3(headMs).toFixed(1)} ms per step ` +
      `(${M} rows in ${Math.ceil(M / R)} chunks of ${R}; dy = dlogits W split-K ${variants.headSplitK}); ` +
      `median of ${steps}`,
  );
  return { msPerStep: med((t) => t.total) };
}

const med3 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * Where the user step's GPU time goes: every dispatch of the forward, backward and AdamW lists
 * run alone (submit, wait), median of 5, less the median of an empty submit-and-wait (the fixed
 * cost of one round trip to the GPU); summed per kernel configuration (the pipeline's key). The
 * sum is the step's kernel time without overlap; `step - kernels` is what the step spends
 * elsewhere: uploads, the read-back of h1, the finite check of dL/dh1, submits and waits. The head's
 * chunk is profiled the same way and printed apart, against the head's step (whose chunks are all
 * full but maybe the last: chunks x one chunk's kernels is its kernel time to within that one).
 */
async function profileStep(
  gpu: GpuContext,
  engine: UserSegmentEngine,
  stepMs: number,
  headMs: number,
  rows: number,
): Promise<void> {
  const lists = engine.stepDispatches();
  const alone = async (ds: Dispatch[]) => {
    const ms: number[] = [];
    for (let i = 0; i < 6; i++) {
      const t0 = performance.now();
      gpu.run(ds);
      await gpu.finish();
      if (i > 0) ms.push(performance.now() - t0);
    }
    return med3(ms);
  };
  const empty = await alone([]);
  /** One dispatch's kernel time: alone, less the round trip. */
  const kernelMs = async (d: Dispatch) => Math.max(0, (await alone([d])) - empty);
  const byKernel = new Map<string, { ms: number; n: number }>();
  const byPhase: Record<string, number> = {};
  for (const [phase, ds] of Object.entries(lists)) {
    byPhase[phase] = 0;
    for (const d of ds) {
      const ms = await kernelMs(d);
      const key = `${phase} ${gpu.keyOf(d.pipeline)}`;
      const k = byKernel.get(key) ?? { ms: 0, n: 0 };
      byKernel.set(key, { ms: k.ms + ms, n: k.n + 1 });
      byPhase[phase] += ms;
    }
  }
  const kernels = Object.values(byPhase).reduce((a, b) => a + b, 0);
  const count = Object.values(lists).reduce((a, l) => a + l.length, 0);
  console.log(
    `  profile: ${count} dispatches; kernels alone ${kernels.toFixed(2)} ms of a ${stepMs.toFixed(2)} ms step ` +
      `(${Object.entries(byPhase)
        .map(([p, ms]) => `${p} ${ms.toFixed(2)}`)
        .join(', ')}); one empty submit-and-wait ${empty.toFixed(3)} ms`,
  );
  const top = [...byKernel].sort((a, b) => b[1].ms - a[1].ms).slice(0, 12);
  for (const [key, { ms, n }] of top)
    console.log(`    ${ms.toFixed(3).padStart(8)} ms  ${String(n).padStart(3)} x  ${key}`);

  const chunk = engine.headChunkDispatches();
  const chunks = Math.ceil(rows / engine.headChunkRows);
  const each: string[] = [];
  let chunkMs = 0;
  for (const d of chunk) {
    const ms = await kernelMs(d);
    chunkMs += ms;
    each.push(`    ${ms.toFixed(3).padStart(8)} ms  ${gpu.keyOf(d.pipeline)} ${d.workgroups.join('x')} workgroups`);
  }
  console.log(
    `  head profile: ${chunk.length} dispatches per chunk of ${engine.headChunkRows} rows, kernels alone ` +
      `${chunkMs.toFixed(2)} ms a chunk, ~${(chunks * chunkMs).toFixed(2)} ms for ${chunks} chunks, ` +
      `of a ${headMs.toFixed(2)} ms head step`,
  );
  for (const line of each) console.log(line);
}
