/**
 * Entry of the dedicated module Worker that test/browser-worker.test.ts bundles with esbuild and
 * runs in headless Chromium: one UserSegmentEngine training step on the browser's own WebGPU.
 *
 * Browser-only on purpose: imports the engine, the device helper and '@splitllm/model' (never
 * src/node.ts or '@splitllm/model/node'), so the bundle proves the browser path has no Node
 * dependency. Float tensors cross postMessage / page.evaluate as base64 of their raw bytes
 * (exact, compact); the test decodes them with Buffer.
 *
 * The test imports only the types below (`import type`), so nothing here runs in Node.
 */
import type { AdamWOptions, Gpt2Config, Gpt2Model, LoraAdapter, LoraConfig } from '@splitllm/model';
import { UserSegmentEngine, type KernelVariants } from '../../src/engine';
import { requestKernelDevice } from '../../src/gpu';

/** A float32 tensor: shape and base64 of its little-endian bytes. */
export interface WireTensor {
  shape: number[];
  data: string;
}

export interface WireLoraPair {
  path: string;
  A: WireTensor;
  B: WireTensor;
}

/** What the test sends: model, adapter, one batch, dL/dh1, and the engine's options. */
export interface EngineWorkerRequest {
  config: Gpt2Config;
  weights: ({ name: string } & WireTensor)[];
  lora: LoraConfig;
  adapter: WireLoraPair[];
  k: number;
  batch: number;
  seq: number;
  /** base64 of an Int32Array [batch * seq] */
  inputIds: string;
  /** base64 of a Float32Array [batch * seq * nEmbd] */
  dh1: string;
  adamw: AdamWOptions;
  variants?: KernelVariants;
}

export type EngineWorkerReply =
  | {
      ok: true;
      /** `self instanceof WorkerGlobalScope`, evaluated inside the worker */
      inWorker: boolean;
      /** the global scope's constructor name (DedicatedWorkerGlobalScope in a dedicated worker) */
      scope: string;
      adapterName: string;
      isFallbackAdapter: boolean;
      featureLevel: string;
      h1: string;
      grads: WireLoraPair[];
      after: WireLoraPair[];
      ms: number;
    }
  | { ok: false; error: string };

function toBase64(a: Float32Array | Int32Array): string {
  const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function bytesOf(b64: string): ArrayBuffer {
  const s = atob(b64);
  const bytes = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
  return bytes.buffer;
}

const f32 = (b64: string) => new Float32Array(bytesOf(b64));

async function runStep(req: EngineWorkerRequest): Promise<EngineWorkerReply> {
  const t0 = performance.now();
  const scopeCtor = (globalThis as { WorkerGlobalScope?: abstract new () => unknown }).WorkerGlobalScope;
  const inWorker = typeof scopeCtor !== 'undefined' && self instanceof scopeCtor;
  const gpuApi = (navigator as Navigator & { gpu?: GPU }).gpu;
  if (!gpuApi) throw new Error('navigator.gpu is undefined in this worker (WebGPU disabled, or not a secure context)');
  const gpu = await requestKernelDevice(gpuApi);
  const model: Gpt2Model = {
    config: req.config,
    weights: new Map(req.weights.map((w) => [w.name, { shape: w.shape, data: f32(w.data) }])),
  };
  const adapter: LoraAdapter = {
    config: req.lora,
    layers: new Map(
      req.adapter.map((p) => [
        p.path,
        { A: { shape: p.A.shape, data: f32(p.A.data) }, B: { shape: p.B.shape, data: f32(p.B.data) } },
      ]),
    ),
  };
  try {
    const engine = await UserSegmentEngine.create(gpu, model, adapter, {
      k: req.k,
      lora: req.lora,
      batch: req.batch,
      seq: req.seq,
      adamw: req.adamw,
      variants: req.variants,
    });
    try {
      const h1 = await engine.forward(new Int32Array(bytesOf(req.inputIds)));
      engine.backward(f32(req.dh1));
      const grads = await engine.readGrads();
      engine.step();
      const after = await engine.readAdapter();
      return {
        ok: true,
        inWorker,
        scope: (self as { constructor?: { name?: string } }).constructor?.name ?? 'unknown',
        adapterName: gpu.adapter.name,
        isFallbackAdapter: gpu.adapter.isFallbackAdapter,
        featureLevel: gpu.adapter.featureLevel,
        h1: toBase64(h1),
        grads: [...grads].map(([path, g]) => ({
          path,
          A: { shape: [g.A.length], data: toBase64(g.A) },
          B: { shape: [g.B.length], data: toBase64(g.B) },
        })),
        after: [...after.layers].map(([path, p]) => ({
          path,
          A: { shape: p.A.shape, data: toBase64(p.A.data) },
          B: { shape: p.B.shape, data: toBase64(p.B.data) },
        })),
        ms: performance.now() - t0,
      };
    } finally {
      engine.destroy();
    }
  } finally {
    gpu.destroy();
  }
}

self.onmessage = (e: MessageEvent<EngineWorkerRequest>) => {
  runStep(e.data).then(
    (reply) => self.postMessage(reply),
    (err: unknown) => {
      const error = err instanceof Error ? `${err.name}: ${err.message}\n${err.stack ?? ''}` : String(err);
      self.postMessage({ ok: false, error } satisfies EngineWorkerReply);
    },
  );
};
