/**
 * Benchmark (not a test): milliseconds per forward and per backward of an edge segment through
 * onnxruntime-node, for the keep-intermediates and the recompute setting.
 *
 *   pnpm exec tsx packages/onnx-runner/scripts/bench-segments.ts [--provider cpu|cuda|webgpu]
 *       [--threads N] [--batch 4] [--seq 128] [--iters 5] [--only shipped|gpt2-small]
 *
 * Models: the shipped moby-tiny (edge = its default split plan) and a GPT-2 small-shaped model
 * with random weights (12 layers x 768, edge = blocks [3, 9)). Prints one line per case and
 * the process's peak RSS.
 */
import {
  GPT2_SMALL_CONFIG,
  DEFAULT_LORA_CONFIG,
  defaultSplitPlan,
  initLoraAdapter,
  randomGpt2Weights,
  Rng,
  type Gpt2Model,
} from '@splitllm/model';
import { loadGpt2Dir } from '@splitllm/model/node';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { BlocksSegment, peakRssBytes, SegmentRunner, type ExecutionProvider } from '../src/index';

const { values: opt } = parseArgs({
  options: {
    provider: { type: 'string', default: 'cpu' },
    threads: { type: 'string', default: '0' },
    batch: { type: 'string', default: '4' },
    seq: { type: 'string', default: '128' },
    iters: { type: 'string', default: '5' },
    only: { type: 'string' },
  },
});

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function bench(label: string, model: Gpt2Model, runner: SegmentRunner, B: number, T: number, iters: number) {
  const { k, m } = defaultSplitPlan(model.config);
  const adapter = initLoraAdapter(model.config, DEFAULT_LORA_CONFIG, 1, k, m);
  const rng = new Rng(2);
  const D = model.config.nEmbd;
  for (const saveIntermediates of [true, false]) {
    const seg = await BlocksSegment.create(runner, model, DEFAULT_LORA_CONFIG, k, m, { saveIntermediates });
    const fwd: number[] = [];
    const bwd: number[] = [];
    for (let i = 0; i < iters + 1; i++) {
      const x = rng.fillNormal(new Float32Array(B * T * D), 1);
      const dy = rng.fillNormal(new Float32Array(B * T * D), 1e-3);
      let t0 = performance.now();
      const f = await seg.forward(adapter, x, B, T);
      const t1 = performance.now() - t0;
      t0 = performance.now();
      await seg.backward(adapter, x, f.saved, dy, B, T);
      const t2 = performance.now() - t0;
      if (i > 0) {
        fwd.push(t1);
        bwd.push(t2);
      }
    }
    await seg.close();
    console.log(
      `${label.padEnd(11)} blocks [${k},${m}) B=${B} T=${T} ${saveIntermediates ? 'keep     ' : 'recompute'} ` +
        `forward ${median(fwd).toFixed(1).padStart(7)} ms  backward ${median(bwd).toFixed(1).padStart(7)} ms  ` +
        `(median of ${iters}, provider ${runner.provider}, threads ${runner.threads || 'auto'})`,
    );
  }
}

const runner = await SegmentRunner.start({
  provider: opt.provider as ExecutionProvider,
  threads: Number(opt.threads),
  log: (l) => console.log(l),
});
const [B, T, iters] = [Number(opt.batch), Number(opt.seq), Number(opt.iters)];
if (!opt.only || opt.only === 'shipped') {
  const dir = fileURLToPath(new URL('../../assets/models/moby-tiny', import.meta.url));
  const { config, weights } = loadGpt2Dir(dir);
  await bench('moby-tiny', { config, weights }, runner, B, Math.min(T, config.nPositions), iters);
}
if (!opt.only || opt.only === 'gpt2-small') {
  await bench(
    'gpt2-small',
    { config: GPT2_SMALL_CONFIG, weights: randomGpt2Weights(GPT2_SMALL_CONFIG, 1) },
    runner,
    B,
    T,
    iters,
  );
}
console.log(`peak RSS ${((peakRssBytes() ?? 0) / 2 ** 20).toFixed(0)} MiB`);
await runner.close();
