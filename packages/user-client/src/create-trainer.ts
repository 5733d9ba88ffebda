/**
 * Choosing the user tier's engine: 'wgsl' (./engines/wgsl), 'wasm' (./engines/wasm, loaded on
 * first use: onnxruntime-web is a large module that only it needs) or 'reference'
 * (./engines/reference), or 'auto', which picks by the WebGPU adapter and, on a software
 * adapter, by timing one training step of each.
 *
 * Browser-safe (no Node API): the default device comes from navigator.gpu; Node passes
 * `nodeGpu` from ./node/gpu.
 */
import { type AnyModel, type LoraAdapter, type ModelConfig, modelDims, type TokenBatch } from '@splitllm/model';
import { GpuError, isSoftwareAdapter, type GpuContext } from '@splitllm/lora-kernels';
import type { OnnxWasmOptions, OnnxWasmUserTrainer } from './engines/wasm';
import { ReferenceUserTrainer } from './engines/reference';
import { browserGpu, WgslUserTrainer } from './engines/wgsl';
import { checkTrainerInputs, type UserEngineKind, type UserTrainer, type UserTrainerOptions } from './trainer';

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** The wasm engine, loaded on first use. */
async function startWasm(
  model: AnyModel,
  adapter: LoraAdapter,
  o: UserTrainerOptions,
  wasm: OnnxWasmOptions | undefined,
): Promise<OnnxWasmUserTrainer> {
  const { OnnxWasmUserTrainer } = await import('./engines/wasm');
  return OnnxWasmUserTrainer.create(model, adapter, o, wasm);
}

function msText(ms: number): string {
  return ms >= 10 ? ms.toFixed(0) : ms.toFixed(1);
}

/**
 * One training step's wall time at the run's shapes, on a throwaway batch: one warm-up step,
 * then the median of two timed steps (forward + backwardAndStep, and for wgsl until the queue
 * is drained). The trainer's adapter and optimizer are then reset to `adapter`, so nothing of
 * the trial leaks into training.
 */
async function timeOneStep(
  trainer: UserTrainer,
  c: ModelConfig,
  o: UserTrainerOptions,
  adapter: LoraAdapter,
): Promise<number> {
  const n = o.batch * o.seq;
  const inputIds = new Int32Array(n);
  for (let i = 0; i < n; i++) inputIds[i] = (i * 7919 + 13) % c.vocabSize;
  const batch: TokenBatch = { B: o.batch, T: o.seq, inputIds, targets: inputIds.slice() };
  const dh1 = new Float32Array(n * modelDims(c).width);
  for (let i = 0; i < dh1.length; i++) dh1[i] = ((i % 13) - 6) * 1e-4;
  const step = async (): Promise<number> => {
    const t0 = performance.now();
    await trainer.forward(batch);
    await trainer.backwardAndStep(dh1);
    if (trainer instanceof WgslUserTrainer) await trainer.engine.finish();
    return performance.now() - t0;
  };
  await step();
  const times = [await step(), await step()];
  await trainer.setAdapter(adapter);
  return (times[0] + times[1]) / 2; // the median of two
}

/** Builds an engine and, when asked, times it; a failure (to build or to step) is a message, not a throw. */
async function tryEngine<T extends UserTrainer>(
  make: () => Promise<T>,
  time?: (t: T) => Promise<number>,
): Promise<{ trainer: T; ms: number } | { error: string }> {
  let trainer: T | undefined;
  try {
    trainer = await make();
    return { trainer, ms: time ? await time(trainer) : NaN };
  } catch (e) {
    trainer?.destroy();
    return { error: messageOf(e) };
  }
}

/**
 * kind 'wgsl', 'wasm' or 'reference': that engine, or an Error saying why it cannot start ('wgsl'
 * without a device throws GpuError, with its code, when getGpu threw one; 'reference' and
 * 'wasm' never call getGpu). 'auto', by the WebGPU adapter getGpu() gives:
 *  - none: wasm;
 *  - a hardware adapter: wgsl;
 *  - only a software/fallback adapter (isSoftwareAdapter): both are built and one training step
 *    of each is timed at the run's shapes (timeOneStep); the faster is kept, the other destroyed.
 * When a chosen engine fails to start, the next one is taken (wgsl -> wasm, wasm -> wgsl when
 * there is an adapter, else the reference) and the reason says what failed. Bad options,
 * weights or adapters throw whatever the kind: they are the caller's bug. The reason always
 * names the adapter (or its absence) and, for a software adapter, both timings.
 *
 * getGpu defaults to the browser's navigator.gpu; in Node pass nodeGpu. `wasm` sets up the wasm
 * engine (where the page serves onnxruntime-web's files, threads): see OnnxWasmOptions.
 */
export async function createUserTrainer(
  kind: UserEngineKind | 'auto',
  model: AnyModel,
  adapter: LoraAdapter,
  o: UserTrainerOptions,
  getGpu: () => Promise<GpuContext> = browserGpu,
  wasm?: OnnxWasmOptions,
): Promise<{ trainer: UserTrainer; reason: string }> {
  if (kind === 'reference') {
    const trainer = ReferenceUserTrainer.create(model, adapter, o);
    return { trainer, reason: 'the reference engine was asked for' };
  }
  if (kind !== 'wgsl' && kind !== 'wasm' && kind !== 'auto') {
    throw new Error(`unknown user engine "${String(kind)}" (wgsl, wasm, reference or auto)`);
  }
  // bad options, weights or adapter are the caller's bug, not a reason to change engines
  checkTrainerInputs(model, adapter, o);
  const reference = (why: string) => ({
    trainer: ReferenceUserTrainer.create(model, adapter, o),
    reason: `${why}: reference (TypeScript) engine`,
  });

  if (kind === 'wasm') {
    let trainer: OnnxWasmUserTrainer;
    try {
      trainer = await startWasm(model, adapter, o, wasm);
    } catch (e) {
      throw new Error(`the wasm engine was asked for but could not start: ${messageOf(e)}`, { cause: e });
    }
    return { trainer, reason: `the wasm engine was asked for: ${trainer.description}` };
  }

  let gpu: GpuContext;
  try {
    gpu = await getGpu();
  } catch (e) {
    if (kind === 'wgsl') {
      const message = `the wgsl engine was asked for but there is no WebGPU device: ${messageOf(e)}`;
      if (e instanceof GpuError) throw new GpuError(e.code, message);
      throw new Error(message, { cause: e });
    }
    const noGpu = `no WebGPU device (${messageOf(e)})`;
    const w = await tryEngine(() => startWasm(model, adapter, o, wasm));
    if ('trainer' in w) return { trainer: w.trainer, reason: `${noGpu}: ${w.trainer.description}` };
    return reference(`${noGpu} and the wasm engine could not start (${w.error})`);
  }
  if (kind === 'wgsl') {
    const trainer = await WgslUserTrainer.create(gpu, model, adapter, o);
    return { trainer, reason: `the wgsl engine was asked for: ${trainer.description}` };
  }

  if (!isSoftwareAdapter(gpu.adapter)) {
    const g = await tryEngine(() => WgslUserTrainer.create(gpu, model, adapter, o));
    if ('trainer' in g) return { trainer: g.trainer, reason: `WebGPU device available: ${g.trainer.description}` };
    // e.g. the segment exceeds this adapter's buffer limits: training still works, only slower
    const failed = `WebGPU device found but the wgsl engine failed (${g.error})`;
    const w = await tryEngine(() => startWasm(model, adapter, o, wasm));
    if ('trainer' in w) return { trainer: w.trainer, reason: `${failed}: ${w.trainer.description}` };
    return reference(`${failed} and the wasm engine could not start (${w.error})`);
  }

  // only a software adapter (SwiftShader, lavapipe, WARP...): time both engines on this run's shapes
  const soft = `software WebGPU adapter (${gpu.adapter.name || 'unnamed'})`;
  const time = (t: UserTrainer) => timeOneStep(t, model.config, o, adapter);
  const w = await tryEngine(() => startWasm(model, adapter, o, wasm), time);
  const g = await tryEngine(() => WgslUserTrainer.create(gpu, model, adapter, o), time);
  if ('trainer' in w && 'trainer' in g) {
    const useWasm = w.ms <= g.ms;
    const [keep, drop] = useWasm ? [w.trainer, g.trainer] : [g.trainer, w.trainer];
    drop.destroy();
    return {
      trainer: keep,
      reason: `${soft}: wgsl ${msText(g.ms)} ms/step vs wasm ${msText(w.ms)} ms/step, using ${keep.kind}`,
    };
  }
  if ('trainer' in w) {
    const gError = (g as { error: string }).error;
    return {
      trainer: w.trainer,
      reason: `${soft}: the wgsl engine failed (${gError}): using wasm, ${msText(w.ms)} ms/step`,
    };
  }
  if ('trainer' in g) {
    return {
      trainer: g.trainer,
      reason: `${soft}: the wasm engine could not start (${w.error}): using wgsl, ${msText(g.ms)} ms/step`,
    };
  }
  return reference(`${soft}: the wgsl engine failed (${g.error}) and the wasm engine could not start (${w.error})`);
}
