/**
 * The head with labels on the device (UserTrainer.headStep / headLogits) on the 'reference',
 * 'wasm' and 'wgsl' engines (wgsl on the software adapter here: SwiftShader through the Node
 * `webgpu` package; its own chunking is tested in packages/lora-kernels/test/head.test.ts),
 * against the TypeScript reference (headLossStep, headLogits of
 * @splitllm/model), on the user segment of the shipped model (V 1024, D 128) cut at k=2:
 *  - 2 x 32 with a right-padded row, on the real last hidden state of the shipped model: one
 *    chunk;
 *  - 9 x 128 (1152 rows): two chunks of the wasm engine's step graph (1024 + 128 rows);
 *  - 17 x 128 (2176 rows): three chunks, the middle one without a counted target (skipped by
 *    the wasm engine), so the last one starts at row 2048;
 * the batch with every target ignored; bad inputs, which must fail with a clear Error before
 * anything is computed; and a finite-difference check of the reference's dh itself.
 *
 * Tolerances (max |got - want| / max |want| per tensor, the project's measure):
 *  - the reference engine IS headLossStep / headLogits: bit for bit;
 *  - wgsl: the same bounds as wasm (float32 kernels against the float64 reference; the kernels'
 *    own test measures loss 3e-8, dh 1.3e-6, logits < 1e-5);
 *  - wasm, loss and logits 1e-5, dh 1e-4 (measured: loss 5e-8, logits 7e-7, dh 2.3e-6): those of
 *    the tail graphs (packages/onnx), the same ops with the same float32 accumulation (MLAS)
 *    against the reference's float64; the loss is summed over chunks in float64, so chunking adds
 *    no error of its own.
 *  - finite differences: see the last describe.
 */
import {
  blocksForward,
  DEFAULT_LORA_TARGETS,
  DEFAULT_LORA_TRAIN,
  embedForward,
  type Gpt2Config,
  type Gpt2Model,
  headLogits,
  headLossStep,
  IGNORE_INDEX,
  initLoraAdapter,
  type LoraConfig,
  maxRelErr,
  randomGpt2Weights,
  Rng,
  type SplitPlan,
} from '@splitllm/model';
import { headChunkRows } from '@splitllm/onnx';
import * as ort from 'onnxruntime-web/wasm';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { OnnxWasmUserTrainer, type OnnxWasmOptions } from '../src/engines/wasm';
import { WgslUserTrainer } from '../src/engines/wgsl';
import { nodeGpu } from '../src/node/gpu';
import type { GpuContext } from '@splitllm/lora-kernels';
import { ReferenceUserTrainer } from '../src/engines/reference';
import type { UserTrainer, UserTrainerOptions } from '../src/trainer';
import { paddedRandomBatch, shipped, tierModel } from './fixtures';

const c = shipped.config;
const D = c.nEmbd;
const V = c.vocabSize;
const plan: SplitPlan = { k: 2, m: 3 };
const lora: LoraConfig = { r: 8, alpha: 16, targets: [...DEFAULT_LORA_TARGETS] };
const userModel = tierModel(plan, 'user');
const adapter = initLoraAdapter(c, lora, 7, 0, plan.k);

const ortDist = dirname(createRequire(import.meta.url).resolve('onnxruntime-web/ort-wasm-simd-threaded.wasm'));
const wasm: OnnxWasmOptions = { wasmPaths: `${pathToFileURL(ortDist).href}/`, numThreads: 1 };

const LOSS_TOL = 1e-5;
const LOGITS_TOL = 1e-5;
const DH_TOL = 1e-4;

const options = (B: number, T: number): UserTrainerOptions => ({
  plan,
  lora,
  batch: B,
  seq: T,
  adamw: DEFAULT_LORA_TRAIN.adamw,
});

type Kind = 'reference' | 'wasm' | 'wgsl';
let gpu: Promise<GpuContext> | undefined;
async function makeTrainer(kind: Kind, B: number, T: number): Promise<UserTrainer> {
  if (kind === 'reference') return ReferenceUserTrainer.create(userModel, adapter, options(B, T));
  if (kind === 'wasm') return OnnxWasmUserTrainer.create(userModel, adapter, options(B, T), wasm);
  gpu ??= nodeGpu();
  return WgslUserTrainer.create(await gpu, userModel, adapter, options(B, T));
}

interface Case {
  label: string;
  B: number;
  T: number;
  hL: Float32Array;
  targets: Int32Array;
  /** runs of the wasm engine's step graph */
  chunks: number;
}

/** the shipped model's real last hidden state: its logits are as peaked as training sees them */
function realCase(B: number, T: number): Case {
  const batch = paddedRandomBatch(c, 31, B, T);
  const hL = blocksForward(shipped, undefined, embedForward(shipped, batch.inputIds, B, T), B, T, 0, c.nLayer).y;
  return { label: `${B} x ${T} (real hL)`, B, T, hL, targets: batch.targets, chunks: 1 };
}

/** random rows with their own offsets and spreads (the layer norm has work to do) */
function randomCase(B: number, T: number, seed: number, ignoredRows: [number, number] | null, chunks: number): Case {
  const rng = new Rng(seed);
  const rows = B * T;
  const hL = new Float32Array(rows * D);
  for (let r = 0; r < rows; r++) {
    const offset = 3 * rng.normal();
    const spread = 0.5 + 4 * rng.uniform();
    for (let j = 0; j < D; j++) hL[r * D + j] = offset + spread * rng.normal();
  }
  const targets = paddedRandomBatch(c, seed + 1, B, T).targets;
  if (ignoredRows) targets.fill(IGNORE_INDEX, ignoredRows[0], ignoredRows[1]);
  return { label: `${B} x ${T} (random hL)`, B, T, hL, targets, chunks };
}

const cases: Case[] = [
  realCase(2, 32),
  randomCase(9, 128, 50, null, 2),
  // rows [1024, 2048): the whole second chunk ignored
  randomCase(17, 128, 60, [1024, 2048], 3),
];

/** wall time of headStep and the wasm engine's errors, per shape, printed once (the report's figures) */
const timings: string[] = [];
const errors: string[] = [];
afterAll(() => {
  console.log(`headStep wall time (Node, 1 wasm thread):\n  ${timings.join('\n  ')}`);
  console.log(`wasm and wgsl engines vs reference (max relative error):\n  ${errors.join('\n  ')}`);
});

describe('the cases are what the header says', () => {
  it.each(cases)('$label: $chunks chunk(s) of the step graph, ignored and counted targets', (k) => {
    const rows = k.B * k.T;
    expect(Math.ceil(rows / headChunkRows(V, rows))).toBe(k.chunks);
    const counted = k.targets.filter((t) => t !== IGNORE_INDEX).length;
    expect(counted).toBeGreaterThan(0);
    expect(counted).toBeLessThan(rows);
  });
});

describe.each<Kind>(['reference', 'wasm', 'wgsl'])('%s engine: head against headLossStep / headLogits', (kind) => {
  it.each(cases)('headStep, $label', async (k) => {
    const want = headLossStep(userModel, k.hL, k.targets, k.B, k.T);
    const trainer = await makeTrainer(kind, k.B, k.T);
    try {
      const t0 = performance.now();
      const got = await trainer.headStep(k.hL, k.targets);
      timings.push(`${kind.padEnd(9)} ${k.label.padEnd(22)} ${(performance.now() - t0).toFixed(0)} ms (first call)`);
      expect(got.count).toBe(want.count);
      expect(got.dh.length).toBe(k.B * k.T * D);
      if (kind === 'reference') {
        expect(got.loss).toBe(want.loss);
        expect(maxRelErr(got.dh, want.dh)).toBe(0);
      } else {
        const lossErr = Math.abs(got.loss - want.loss) / Math.abs(want.loss);
        const dhErr = maxRelErr(got.dh, want.dh);
        errors.push(`${kind} ${k.label.padEnd(22)} loss ${lossErr.toExponential(2)}, dh ${dhErr.toExponential(2)}`);
        expect(lossErr).toBeLessThan(LOSS_TOL);
        expect(dhErr).toBeLessThan(DH_TOL);
        // the rows of ignored targets: exactly 0, whether their chunk ran or was skipped
        for (let r = 0; r < k.B * k.T; r++) {
          if (k.targets[r] !== IGNORE_INDEX) continue;
          expect(
            got.dh.subarray(r * D, (r + 1) * D).every((v) => v === 0),
            `row ${r}`,
          ).toBe(true);
        }
        // a second call on the loaded engine: same numbers (one wasm thread; the same kernels in the same order)
        const t1 = performance.now();
        const again = await trainer.headStep(k.hL, k.targets);
        timings.push(`${kind.padEnd(9)} ${k.label.padEnd(22)} ${(performance.now() - t1).toFixed(0)} ms (loaded)`);
        expect(again.loss).toBe(got.loss);
        expect(maxRelErr(again.dh, got.dh)).toBe(0);
      }
    } finally {
      trainer.destroy();
    }
  });

  it('headLogits of single rows', async () => {
    const k = cases[0];
    const trainer = await makeTrainer(kind, k.B, k.T);
    try {
      for (const r of [0, 17, k.B * k.T - 1]) {
        const h = k.hL.slice(r * D, (r + 1) * D);
        const got = await trainer.headLogits(h);
        expect(got.length).toBe(V);
        const err = maxRelErr(got, headLogits(userModel, h));
        if (kind !== 'reference') errors.push(`${kind} logits of row ${String(r).padEnd(9)} ${err.toExponential(2)}`);
        expect(err).toBeLessThan(kind === 'reference' ? Number.MIN_VALUE : LOGITS_TOL);
      }
    } finally {
      trainer.destroy();
    }
  });

  it('every target ignored: loss 0, count 0, dh all 0', async () => {
    const [B, T] = [2, 32];
    const trainer = await makeTrainer(kind, B, T);
    try {
      const got = await trainer.headStep(cases[0].hL, new Int32Array(B * T).fill(IGNORE_INDEX));
      expect(got.loss).toBe(0);
      expect(got.count).toBe(0);
      expect(got.dh.length).toBe(B * T * D);
      expect(got.dh.every((v) => v === 0)).toBe(true);
    } finally {
      trainer.destroy();
    }
  });

  it('bad inputs: a clear Error, nothing computed; the trainer still works after them', async () => {
    const k = cases[0];
    const n = k.B * k.T;
    // the wasm engine loads its head graphs on first use: no load means no head ran
    const loads = vi.spyOn(ort.InferenceSession, 'create');
    const trainer = await makeTrainer(kind, k.B, k.T);
    loads.mockClear();
    try {
      const nan = k.hL.slice();
      nan[5] = Number.NaN;
      const badTarget = k.targets.slice();
      badTarget[3] = V;
      const negative = k.targets.slice();
      negative[4] = -1;
      const bad: Array<[Promise<unknown>, RegExp]> = [
        [trainer.headStep(k.hL.subarray(1), k.targets), /last hidden state has 8191 values, expected 8192/],
        [trainer.headStep(new Float32Array(3 * n * D), k.targets), /expected 8192 \(2 x 32 x 128\)/],
        [trainer.headStep(nan, k.targets), /non-finite value at 5/],
        [trainer.headStep(k.hL, badTarget), /target 1024 at position 3 is outside \[0, 1024\)/],
        [trainer.headStep(k.hL, negative), /target -1 at position 4 is outside/],
        [trainer.headStep(k.hL, k.targets.subarray(1)), /63 targets, expected 64/],
        [trainer.headLogits(new Float32Array(D + 1)), /has 129 values, expected 128/],
        [trainer.headLogits(new Float32Array(D).fill(Number.POSITIVE_INFINITY)), /non-finite value at 0/],
      ];
      for (const [p, message] of bad) await expect(p).rejects.toThrow(message);
      if (kind === 'wasm') expect(loads).not.toHaveBeenCalled();
      const want = headLossStep(userModel, k.hL, k.targets, k.B, k.T);
      const got = await trainer.headStep(k.hL, k.targets);
      expect(Math.abs(got.loss - want.loss) / want.loss).toBeLessThan(LOSS_TOL);
      if (kind === 'wasm') expect(loads).toHaveBeenCalledTimes(1);
      trainer.destroy();
      await expect(trainer.headStep(k.hL, k.targets)).rejects.toThrow(/after destroy/);
      await expect(trainer.headLogits(k.hL.subarray(0, D))).rejects.toThrow(/after destroy/);
    } finally {
      loads.mockRestore();
      trainer.destroy();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// the oracle itself: headLossStep's dh against central differences of the same loss in float64

/**
 * The head's loss written out in float64 (layer norm with the biased variance, the tied head,
 * the mean cross-entropy over counted targets): the function whose gradient headLossStep claims
 * to return. Checked against headLossStep's own loss below, so it is the same function.
 */
function headLossF64(model: Gpt2Model, hL: Float64Array, targets: Int32Array): number {
  const cfg = model.config;
  const [d, v] = [cfg.nEmbd, cfg.vocabSize];
  const gamma = model.weights.get('ln_f.weight')!.data;
  const beta = model.weights.get('ln_f.bias')!.data;
  const wte = model.weights.get('wte.weight')!.data;
  const y = new Float64Array(d);
  const logits = new Float64Array(v);
  let total = 0;
  let count = 0;
  for (let r = 0; r < targets.length; r++) {
    if (targets[r] === IGNORE_INDEX) continue;
    const h = hL.subarray(r * d, (r + 1) * d);
    let mean = 0;
    for (let j = 0; j < d; j++) mean += h[j];
    mean /= d;
    let variance = 0;
    for (let j = 0; j < d; j++) variance += (h[j] - mean) ** 2;
    const rstd = 1 / Math.sqrt(variance / d + cfg.layerNormEpsilon);
    for (let j = 0; j < d; j++) y[j] = (h[j] - mean) * rstd * gamma[j] + beta[j];
    let max = -Infinity;
    for (let t = 0; t < v; t++) {
      let s = 0;
      for (let j = 0; j < d; j++) s += y[j] * wte[t * d + j];
      logits[t] = s;
      max = Math.max(max, s);
    }
    let sumExp = 0;
    for (let t = 0; t < v; t++) sumExp += Math.exp(logits[t] - max);
    total += max + Math.log(sumExp) - logits[targets[r]];
    count++;
  }
  return count > 0 ? total / count : 0;
}

describe('the reference headLossStep: dh against central differences (float64)', () => {
  const tiny: Gpt2Config = {
    vocabSize: 23,
    nPositions: 8,
    nEmbd: 12,
    nLayer: 1,
    nHead: 2,
    nInner: 48,
    layerNormEpsilon: 1e-5,
    bosTokenId: 22,
    eosTokenId: 22,
  };
  const weights = randomGpt2Weights(tiny, 3);
  const rng = new Rng(4);
  // GPT-2's init (wte std 0.02, ln_f = identity) gives near-uniform softmaxes and would leave
  // ln_f's parameters untested: wte scaled to logits of O(1), ln_f perturbed
  for (const x of [weights.get('wte.weight')!.data]) for (let i = 0; i < x.length; i++) x[i] *= 60;
  for (const name of ['ln_f.weight', 'ln_f.bias']) {
    const x = weights.get(name)!.data;
    for (let i = 0; i < x.length; i++) x[i] += 0.3 * rng.normal();
  }
  const model: Gpt2Model = { config: tiny, weights };
  const [B, T] = [2, 4];
  const hL = new Float32Array(B * T * tiny.nEmbd);
  for (let i = 0; i < hL.length; i++) hL[i] = 1 + 2 * rng.normal();
  const targets = Int32Array.from([3, 0, 22, IGNORE_INDEX, 7, 7, IGNORE_INDEX, 11]);

  /**
   * Step 1e-4 (the inputs are O(1)): the truncation error of central differences is
   * ~step^2 |f'''| / 6 ~ 1e-9, their rounding ~1e-16 / step ~ 1e-12, so the float64 differences
   * are exact to ~1e-8 of the gradient's scale. What remains is the reference's own float32
   * storage of the normed rows, logits and dlogits (~6e-8 relative each, compounded through two
   * matmuls of K <= 23 and the layer-norm backward; measured 5e-8): 1e-6 bounds that with room.
   * The loss, float32 logits summed in float64: 1e-6 likewise.
   */
  it('matches within 1e-6 (relative to max |dh|); ignored rows exactly 0; loss within 1e-6', () => {
    const ref = headLossStep(model, hL, targets, B, T);
    const x = Float64Array.from(hL);
    expect(Math.abs(headLossF64(model, x, targets) - ref.loss) / ref.loss).toBeLessThan(1e-6);
    const step = 1e-4;
    const fd = new Float64Array(x.length);
    for (let i = 0; i < x.length; i++) {
      const keep = x[i];
      x[i] = keep + step;
      const up = headLossF64(model, x, targets);
      x[i] = keep - step;
      const down = headLossF64(model, x, targets);
      x[i] = keep;
      fd[i] = (up - down) / (2 * step);
    }
    const err = maxRelErr(ref.dh, fd);
    console.log(`headLossStep dh vs central differences: ${err.toExponential(2)}`);
    expect(err).toBeLessThan(1e-6);
    for (const r of [3, 6])
      expect(ref.dh.subarray(r * tiny.nEmbd, (r + 1) * tiny.nEmbd).every((v) => v === 0)).toBe(true);
  });
});
