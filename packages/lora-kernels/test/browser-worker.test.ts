/**
 * UserSegmentEngine in a real browser Web Worker: test/browser/engine-worker.ts is bundled with
 * esbuild (ESM, platform 'browser', in memory), served with a tiny page from a Node http server on
 * 127.0.0.1 (the page is loaded as http://localhost, since WebGPU needs a secure context), and
 * run by headless Debian Chromium (playwright-core, --enable-unsafe-webgpu: SwiftShader here) in
 * a dedicated module Worker. The worker does forward, backward, readGrads, AdamW step and
 * readAdapter on the browser's own navigator.gpu; the test checks the results against the
 * TypeScript reference in Node.
 *
 * Tolerances (max |got - want| / max |want| per tensor, as in engine.test.ts):
 *  - h1: 1e-5. Every op is float32 on both sides; the reference accumulates dot products in
 *    float64, the kernels in float32, which leaves ~sqrt(K) * 6e-8 per matmul (K <= 64 here)
 *    and a few such layers in a chain.
 *  - LoRA gradients: 1e-4: the backward chains more products and cancellations (layer-norm and
 *    softmax backward) than the forward.
 *  - parameters after AdamW: 1e-6 of the parameter scale, against the reference AdamW applied to
 *    the engine's own gradients (against the reference gradients, AdamW's first step moves each
 *    element by about lr * sign(g), so an element whose gradient is ~0 may step either way).
 */
import {
  adamwInit,
  adamwStep,
  DEFAULT_ADAMW,
  LORA_TARGETS,
  Rng,
  userSegmentBackward,
  userSegmentForward,
  type AdamWOptions,
  type Gpt2Config,
  type Gpt2Model,
  type LoraAdapter,
  type LoraConfig,
  type TokenBatch,
} from '@splitllm/model';
import { build } from 'esbuild';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { CHROMIUM_ARGS, CHROMIUM_PATH } from '@splitllm/lora-kernels/chromium';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SOFTWARE_ADAPTER_VARIANTS, type KernelVariants } from '../src/engine';
import type { EngineWorkerReply, EngineWorkerRequest, WireLoraPair } from './browser/engine-worker';
import { adapterWithRandomB, maxRelErr, scaledRandomModel } from './harness';

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));

/** How long the page waits for the worker's reply; under the test timeout, so the message says what hung. */
const WORKER_TIMEOUT_MS = 100_000;

const config: Gpt2Config = {
  vocabSize: 97,
  nPositions: 16,
  nEmbd: 32,
  nLayer: 2,
  nHead: 4,
  nInner: 64,
  layerNormEpsilon: 1e-5,
  bosTokenId: 96,
  eosTokenId: 96,
};
const lora: LoraConfig = { r: 4, alpha: 8, targets: [...LORA_TARGETS] };
const K_USER = 2; // the user segment is both blocks: block 1 runs ln_1's backward, block 0 skips it
const adamw: AdamWOptions = { ...DEFAULT_ADAMW, lr: 5e-3, weightDecay: 0.01 };

const randomModel = () => scaledRandomModel(config, 7);
const randomAdapter = (seed: number) => adapterWithRandomB(config, lora, seed);

function randomBatch(B: number, T: number, seed: number): TokenBatch {
  const rng = new Rng(seed);
  const inputIds = Int32Array.from({ length: B * T }, () => rng.int(config.vocabSize));
  return { B, T, inputIds, targets: new Int32Array(B * T) };
}

const b64 = (a: Float32Array | Int32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64');
const f32 = (s: string) => new Float32Array(Uint8Array.from(Buffer.from(s, 'base64')).buffer);
const pairs = (list: WireLoraPair[]) => new Map(list.map((p) => [p.path, { A: f32(p.A.data), B: f32(p.B.data) }]));

function requestFor(
  model: Gpt2Model,
  adapter: LoraAdapter,
  batch: TokenBatch,
  dh1: Float32Array,
  variants?: KernelVariants,
): EngineWorkerRequest {
  return {
    config: model.config,
    weights: [...model.weights].map(([name, t]) => ({ name, shape: t.shape, data: b64(t.data) })),
    lora,
    adapter: [...adapter.layers].map(([path, p]) => ({
      path,
      A: { shape: p.A.shape, data: b64(p.A.data) },
      B: { shape: p.B.shape, data: b64(p.B.data) },
    })),
    k: K_USER,
    batch: batch.B,
    seq: batch.T,
    inputIds: b64(batch.inputIds),
    dh1: b64(dh1),
    adamw,
    variants,
  };
}

let server: http.Server | undefined;
let browser: Browser | undefined;
let page: Page | undefined;
let bundleBytes = 0;
const browserLog: string[] = [];
/** One line per step test, printed once in afterAll (adapter name, measured errors, timings). */
const summary: string[] = [];

/** Runs one request in a fresh dedicated worker; rejects with the worker's own message when it throws. */
async function inWorker(req: EngineWorkerRequest): Promise<Extract<EngineWorkerReply, { ok: true }>> {
  let reply: EngineWorkerReply;
  try {
    reply = await page!.evaluate(
      ([r, timeout]) =>
        (window as unknown as { runEngineWorker(r: unknown, t: number): Promise<EngineWorkerReply> }).runEngineWorker(
          r,
          timeout,
        ),
      [req, WORKER_TIMEOUT_MS] as const,
    );
  } catch (e) {
    throw new Error(scrubBrowserFrames((e as Error).message));
  }
  if (!reply.ok) throw new Error(`the engine worker threw: ${scrubBrowserFrames(reply.error)}`);
  return reply;
}

/**
 * Browser stack frames ("at f (http://localhost:PORT/...)") kept in the message but made unparseable:
 * vitest would otherwise take them for frames of this test and try to read http://localhost:PORT/
 * as a local file (EISDIR on "/"), turning a clear failure into a confusing "Test Run Error".
 */
function scrubBrowserFrames(text: string): string {
  return text.replace(/^(\s*)at /gm, '$1(browser) at ');
}

beforeAll(async () => {
  const bundle = await build({
    entryPoints: [here('./browser/engine-worker.ts')],
    absWorkingDir: here('..'),
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    write: false,
    metafile: true,
    logLevel: 'silent',
  });
  // Nothing Node-only may reach the browser bundle (platform 'browser' already fails on node: builtins).
  const inputs = Object.keys(bundle.metafile.inputs);
  expect(inputs.filter((p) => /(^|\/)src\/node(\.ts$|\/)|(^|\/)node_modules\/webgpu\//.test(p))).toEqual([]);
  expect(inputs.some((p) => p.endsWith('src/engine.ts'))).toBe(true);
  const js = bundle.outputFiles[0].contents;
  bundleBytes = js.byteLength;
  const html = fs.readFileSync(here('./browser/index.html'));

  server = http.createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://localhost').pathname;
    const body = path === '/' ? html : path === '/engine-worker.js' ? js : undefined;
    if (path === '/favicon.ico') {
      res.writeHead(204).end();
      return;
    }
    if (!body) {
      res.writeHead(404).end('not found');
      return;
    }
    res.writeHead(200, {
      'content-type': path === '/' ? 'text/html; charset=utf-8' : 'text/javascript; charset=utf-8',
      'cache-control': 'no-store',
    });
    res.end(body);
  });
  await new Promise<void>((resolve, reject) => {
    server!.once('error', reject);
    server!.listen(0, '127.0.0.1', resolve);
  });
  const port = (server.address() as AddressInfo).port;

  // chromium.launch gives a fresh temporary profile and removes it on close
  browser = await chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: CHROMIUM_ARGS });
  page = await browser.newPage();
  page.on('console', (m) => browserLog.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => browserLog.push(`pageerror: ${e.message}`));
  page.on('worker', (w) => w.on('console', (m) => browserLog.push(`worker console.${m.type()}: ${m.text()}`)));
  await page.goto(`http://localhost:${port}/`);
  await page.waitForFunction(() => 'runEngineWorker' in window);
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  const log = [...summary, ...(browserLog.length ? ['browser log:', ...browserLog] : [])];
  if (log.length) console.log(log.join('\n'));
});

describe('UserSegmentEngine in a browser Web Worker (headless Chromium, WebGPU)', () => {
  const model = randomModel();
  const adapter = randomAdapter(10);
  const batch = randomBatch(2, 12, 20);
  const dh1 = new Rng(21).fillNormal(new Float32Array(batch.B * batch.T * config.nEmbd), 1e-2);
  const plan = { k: K_USER, m: config.nLayer };
  const ref = userSegmentForward(model, adapter, batch, plan);
  const refGrads = userSegmentBackward(model, adapter, ref.state, dh1);

  const cases: { name: string; variants?: KernelVariants }[] = [
    { name: 'default (GPU-tuned) kernels' },
    { name: 'software-tuned kernels', variants: SOFTWARE_ADAPTER_VARIANTS },
  ];

  for (const c of cases) {
    it(`one training step matches the reference, ${c.name}`, async () => {
      const t0 = performance.now();
      const reply = await inWorker(requestFor(model, adapter, batch, dh1, c.variants));
      expect(reply.inWorker, `ran in ${reply.scope}`).toBe(true);
      expect(reply.scope).toBe('DedicatedWorkerGlobalScope');

      const h1Err = maxRelErr(f32(reply.h1), ref.h1);
      expect(h1Err, 'h1').toBeLessThan(1e-5);

      const grads = pairs(reply.grads);
      expect([...grads.keys()].sort()).toEqual([...refGrads.keys()].sort());
      let gradErr = 0;
      for (const [path, g] of refGrads) {
        for (const w of ['A', 'B'] as const) {
          const err = maxRelErr(grads.get(path)![w], g[w]);
          expect(err, `${path} d${w}`).toBeLessThan(1e-4);
          gradErr = Math.max(gradErr, err);
        }
      }

      const after = pairs(reply.after);
      let stepErr = 0;
      for (const path of refGrads.keys()) {
        for (const w of ['A', 'B'] as const) {
          const want = adapter.layers.get(path)![w].data.slice();
          adamwStep(want, grads.get(path)![w], adamwInit(want.length), 1, adamw);
          const err = maxRelErr(after.get(path)![w], want);
          expect(err, `${path} ${w} after AdamW`).toBeLessThan(1e-6);
          stepErr = Math.max(stepErr, err);
        }
      }
      summary.push(
        `[browser worker, ${c.name}] adapter "${reply.adapterName}" ` +
          `(isFallbackAdapter ${reply.isFallbackAdapter}, ${reply.featureLevel}) in ${reply.scope}; ` +
          `max rel err h1 ${h1Err.toExponential(2)}, grads ${gradErr.toExponential(2)}, ` +
          `AdamW params ${stepErr.toExponential(2)}; ` +
          `worker ${reply.ms.toFixed(0)} ms, round trip ${(performance.now() - t0).toFixed(0)} ms, ` +
          `bundle ${(bundleBytes / 1024).toFixed(0)} KiB`,
      );
    }, 120_000);
  }

  it('an error thrown inside the worker reaches the test with its message', async () => {
    const bad = randomBatch(2, 12, 22);
    bad.inputIds[5] = config.vocabSize;
    await expect(inWorker(requestFor(model, adapter, bad, dh1, SOFTWARE_ADAPTER_VARIANTS))).rejects.toThrow(
      /the engine worker threw: Error: token id 97 at position 5 is outside the vocabulary \[0, 97\)/,
    );
  }, 120_000);
});
