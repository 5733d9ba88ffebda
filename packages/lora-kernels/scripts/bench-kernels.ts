/**
 * Kernel benchmark (a script, not a test):
 *   pnpm exec tsx packages/lora-kernels/scripts/bench-kernels.ts [--sizes=256,512,1024]
 *     [--variants=naive,tiled,blocked,registers] [--layouts=nn,nt,tn] [--runs=5] [--budget-ms=6000]
 *
 * Prints the adapter, then GFLOPS of every matmul variant and layout at n^3 for each size: the
 * median of up to --runs timed runs after one warm-up (fewer when a run is slow: the runs of one
 * cell stop at about --budget-ms; the table says how many). Each variant/layout is checked once,
 * at the first size, against the float64 reference (ops/matmul.ts).
 * On machines without a GPU this runs on software Vulkan: its figures say nothing about a GPU.
 */
import { Rng, maxRelErr, matmul as refNN, matmulAT as refTN, matmulBT as refNT } from '@splitllm/model';
import type { GpuContext } from '../src/gpu';
import { nodeKernelDevice } from '../src/node';
import { benchUserSegmentStep, loadShippedModel } from './user-step-bench';
import {
  DEFAULT_MATMUL_VARIANT,
  MATMUL_LAYOUTS,
  MATMUL_VARIANTS,
  matmul,
  matmulFlops,
  type MatmulLayout,
  type MatmulVariant,
} from '../src/kernels/matmul';

function arg(name: string): string | undefined {
  const hit = process.argv.find((a) => a.startsWith(`--${name}=`));
  return hit?.slice(name.length + 3);
}
const list = (name: string, fallback: readonly string[]) =>
  (arg(name) ?? fallback.join(',')).split(',').filter((s) => s);

const sizes = list('sizes', ['256', '512', '1024']).map(Number);
const variants = list('variants', MATMUL_VARIANTS) as MatmulVariant[];
const layouts = list('layouts', MATMUL_LAYOUTS) as MatmulLayout[];
const maxRuns = Number(arg('runs') ?? 5);
const budgetMs = Number(arg('budget-ms') ?? 6000);

function reference(layout: MatmulLayout, a: Float32Array, b: Float32Array, n: number): Float32Array {
  if (layout === 'nn') return refNN(a, b, n, n, n);
  if (layout === 'nt') return refNT(a, b, n, n, n);
  return refTN(a, b, n, n, n);
}

async function benchMatmul(gpu: GpuContext): Promise<void> {
  const rng = new Rng(1);
  const checked = new Set<string>();
  const header = ['size', 'layout', 'variant', 'runs', 'ms (median)', 'GFLOPS', 'check (max rel err)'];
  console.log('\nmatmul, fp32, C = A B at n^3 (2 n^3 FLOP)');
  console.log(header.join('\t'));
  const summary = new Map<string, string[]>();
  for (const n of sizes) {
    const a = rng.fillNormal(new Float32Array(n * n), 1);
    const b = rng.fillNormal(new Float32Array(n * n), 1);
    const bufs = { a: gpu.storage(a), b: gpu.storage(b), c: gpu.storage(n * n * 4) };
    const dims = { M: n, K: n, N: n };
    for (const layout of layouts) {
      let want: Float32Array | undefined;
      for (const variant of variants) {
        const ds = matmul(gpu, bufs, dims, { layout, variant });
        // warm-up (also the correctness run at the first size)
        const tw = performance.now();
        gpu.run(ds);
        await gpu.finish();
        const warmMs = performance.now() - tw;
        let check = '';
        const key = `${variant}/${layout}`;
        if (!checked.has(key)) {
          checked.add(key);
          want ??= reference(layout, a, b, n);
          const err = maxRelErr(await gpu.readF32(bufs.c, n * n), want);
          check = `${err.toExponential(1)}${err < 1e-4 ? ' ok' : ' WRONG'}`;
        }
        const runs = Math.max(1, Math.min(maxRuns, Math.floor(budgetMs / Math.max(warmMs, 1e-3))));
        const ms: number[] = [];
        for (let i = 0; i < runs; i++) {
          const t0 = performance.now();
          gpu.run(ds);
          await gpu.finish();
          ms.push(performance.now() - t0);
        }
        ms.sort((x, y) => x - y);
        const med = ms[Math.floor(ms.length / 2)];
        const gflops = matmulFlops(dims) / (med * 1e6);
        console.log([n, layout, variant, runs, med.toFixed(1), gflops.toFixed(2), check].join('\t'));
        const row = summary.get(`${layout} ${variant}`) ?? [];
        row.push(gflops.toFixed(2));
        summary.set(`${layout} ${variant}`, row);
      }
    }
    for (const x of Object.values(bufs)) x.destroy();
  }
  console.log(`\nGFLOPS summary (sizes ${sizes.join(', ')}; default variant '${DEFAULT_MATMUL_VARIANT}')`);
  for (const [k, v] of summary) console.log(`  ${k.padEnd(14)} ${v.map((x) => x.padStart(8)).join('')}`);
}

// ---------------------------------------------------------------------------------------------
// the user-segment step on the shipped model: the variants chosen for this adapter, then the
// GPU-tuned defaults (scripts/user-step-bench.ts; bench-engine.ts has more options)
async function benchUserSegmentSteps(gpu: GpuContext): Promise<void> {
  console.log('');
  const model = loadShippedModel();
  await benchUserSegmentStep(gpu, 'moby-tiny', model, { batch: 4, seq: 64, steps: 5, variants: 'auto' });
  await benchUserSegmentStep(gpu, 'moby-tiny', model, { batch: 4, seq: 64, steps: 5, variants: 'gpu' });
}
// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const gpu = await nodeKernelDevice();
  const a = gpu.adapter;
  console.log(
    `adapter: ${a.name}${a.isFallbackAdapter ? ' (fallback/software)' : ''}, ${a.featureLevel}, ` +
      `${a.maxComputeInvocationsPerWorkgroup} invocations/workgroup, ` +
      `${a.maxComputeWorkgroupStorageSize} B workgroup memory`,
  );
  await benchMatmul(gpu);
  await benchUserSegmentSteps(gpu);
  gpu.destroy();
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
