/**
 * Generation through the three tiers, on real servers (a cloud and an edge on loopback,
 * onnxruntime sessions, the shipped moby-tiny model): one round is trained first by a headless
 * user, so the global adapter (version 1) has nonzero LoRA B on every tier and generation is
 * checked with adapters that matter, not the base model.
 *
 * Tolerance of the served logits against the reference: 1e-4 relative to the max |logit| of the
 * reference (the project's measure). The path is float32 engines in a chain (the user's
 * TypeScript reference, onnxruntime on the edge, onnxruntime on the cloud for blocks [m, L), and
 * the user's head: the run keeps labels on the device, its default) against one TypeScript
 * reference forward of the whole model; each ONNX segment alone agrees with the reference to
 * ~1e-6 (test/onnx in shared), so 1e-4 leaves two orders of magnitude for the chain while staying
 * far below the logit gaps greedy decoding turns on (the test asserts that gap too).
 */
import { startCloudServer, type CloudServer } from '@splitllm/cloud-server';
import { startEdgeServer, type EdgeServer } from '@splitllm/edge-server';
import {
  adapterSubset,
  blocksForward,
  decodeSegment,
  embedForward,
  headForward,
  maxRelErr,
  type Gpt2Model,
  type LoraAdapter,
  Rng,
  gpt2ModelOf,
  modelDims,
} from '@splitllm/model';
import { encodeMessage, maxGenerateFrameBytes } from '@splitllm/wire';
import { loadAdapterDir, loadGpt2Dir } from '@splitllm/model/node';
import { randomToken, userToken } from '@splitllm/wire/node';
import {
  createUserTrainer,
  generateContinuation,
  joinRun,
  nextTokenLogits,
  paddedForward,
  sampleToken,
  type JoinCredentials,
  type UserTrainer,
} from '@splitllm/user-client';
import { startHeadlessUser } from '@splitllm/user-client/node';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { DATA, SHIPPED_MODEL } from './run-cli';

const TOL = 1e-4;
const tmp = mkdtempSync(join(tmpdir(), 'splitllm-generate-'));
const edgeSecret = randomToken();
const operatorToken = randomToken();
const B = 2;
const T = 16;
const STEPS = 3;

/** The whole model's next-token logits for a context: the reference (TypeScript) forward. */
function referenceLogits(model: Gpt2Model, adapter: LoraAdapter | undefined, ids: number[]): Float32Array {
  const n = ids.length;
  const c = model.config;
  const h0 = embedForward(model, Int32Array.from(ids), 1, n);
  const y = blocksForward(model, adapter, h0, 1, n, 0, c.nLayer).y;
  const { logits } = headForward(model, y, new Int32Array(n), 1, n);
  return logits.slice((n - 1) * c.vocabSize, n * c.vocabSize);
}

function top2(logits: Float32Array): [number, number] {
  let a = -Infinity;
  let b = -Infinity;
  for (const v of logits) {
    if (v > a) [a, b] = [v, a];
    else if (v > b) b = v;
  }
  return [a, b];
}

describe('generation through user, edge and cloud', () => {
  let cloud: CloudServer;
  let edge: EdgeServer;
  let creds: JoinCredentials;
  let model: Gpt2Model;
  let global: LoraAdapter;
  let trainer: UserTrainer;
  let forward: (ids: Int32Array) => Promise<Float32Array>;
  /** labels on the device (the run's default): the cloud answers with the last hidden state, the tab runs the head */
  let head: (h: Float32Array) => Promise<Float32Array>;
  let prompt: number[];

  beforeAll(async () => {
    cloud = await startCloudServer({
      modelDir: SHIPPED_MODEL,
      stateDir: join(tmp, 'state'),
      // plain averaging: the large step below is meant to move the adapters, not to be judged
      aggregation: 'fedavg',
      edgeSecret,
      operatorToken,
      seed: 3,
      // a larger step than the default so that one round moves the adapters well clear of the tolerance
      train: {
        stepsPerUser: STEPS,
        batch: B,
        seq: T,
        adamw: { lr: 0.02, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 },
      },
      maxRounds: 1,
      logLevel: false,
      threads: 1,
    });
    edge = await startEdgeServer({ cloudUrl: cloud.url, edgeId: 'e1', edgeSecret, logLevel: false, threads: 1 });
    const jt = await fetch(`${cloud.url}/api/join-tokens`, {
      method: 'POST',
      headers: { authorization: `Bearer ${operatorToken}` },
    });
    creds = await joinRun(cloud.url, ((await jt.json()) as { token: string }).token);
    const client = await startHeadlessUser({
      cloudUrl: cloud.url,
      credentials: creds,
      dataFile: join(DATA, 'sotu/train/user-1.txt'),
      seed: 0,
      engine: 'reference',
    });
    try {
      await vi.waitFor(() => expect(cloud.coordinator.version).toBe(1), { timeout: 120_000, interval: 100 });
      await vi.waitFor(() => expect(edge.edge.version).toBe(1), { timeout: 10_000 });
    } finally {
      client.stop();
    }

    const dir = loadGpt2Dir(SHIPPED_MODEL);
    model = { config: dir.config, weights: dir.weights };
    prompt = dir.tokenizer.encode('The state of the Union is');
    // the aggregated global adapter as persisted in the cloud's state directory
    const rec = cloud.store.rounds().find((r) => r.version === 1)!;
    global = loadAdapterDir(rec.adapterDir);
    const manifest = cloud.manifest();
    // the user tier as a page would run it: the segment its edge serves, a fixed-shape engine
    const segment = decodeSegment(
      new Uint8Array(await (await fetch(`${edge.url}/api/segments/user`)).arrayBuffer()),
      'user',
    );
    const opts = { plan: manifest.plan, lora: manifest.lora, batch: B, seq: T, adamw: manifest.train.adamw };
    const userModel = gpt2ModelOf(segment.model, 'this test');
    trainer = (await createUserTrainer('reference', userModel, adapterSubset(global, 0, manifest.plan.k), opts))
      .trainer;
    forward = paddedForward((b) => trainer.forward(b), B, T, model.config.nEmbd, model.config.eosTokenId);
    head = (h) => trainer.headLogits(h);
  });

  afterAll(async () => {
    trainer?.destroy();
    await edge?.close();
    await cloud?.close();
  });

  it('the round left nonzero LoRA B on every tier (so the adapters matter below)', () => {
    const { k, m } = cloud.manifest().plan;
    for (const [from, to] of [
      [0, k],
      [k, m],
      [m, model.config.nLayer],
    ]) {
      const part = adapterSubset(global, from, to);
      expect(part.layers.size).toBeGreaterThan(0);
      for (const [path, pair] of part.layers)
        expect(
          pair.B.data.some((v) => v !== 0),
          path,
        ).toBe(true);
    }
  });

  it(`serves the reference model's last-position logits (within ${TOL} relative)`, async () => {
    const c = model.config;
    const ids = Int32Array.from(prompt);
    const h1 = await forward(ids);
    expect(h1).toHaveLength(ids.length * c.nEmbd);
    const served = await nextTokenLogits({ edgeUrl: edge.url, credentials: creds, config: c, head }, h1, ids.length);
    expect(served.version).toBe(1);
    const ref = referenceLogits(model, global, prompt);
    const err = maxRelErr(served.logits, ref);
    console.log(`generate: served vs reference logits, max relative error ${err.toExponential(2)}`);
    expect(err).toBeLessThan(TOL);
    // and the trained adapters do change them: the base model is far outside the tolerance
    expect(maxRelErr(served.logits, referenceLogits(model, undefined, prompt))).toBeGreaterThan(100 * TOL);
    // a one-token context works too
    const one = await nextTokenLogits(
      { edgeUrl: edge.url, credentials: creds, config: c, head },
      await forward(ids.slice(0, 1)),
      1,
    );
    expect(maxRelErr(one.logits, referenceLogits(model, global, prompt.slice(0, 1)))).toBeLessThan(TOL);
    // the answer is a last hidden state, not logits: without the head to run it on, a clear refusal
    await expect(nextTokenLogits({ edgeUrl: edge.url, credentials: creds, config: c }, h1, ids.length)).rejects.toThrow(
      /keeps labels on the device: pass `head`/,
    );
  });

  it('greedy generation through the tiers equals greedy generation with the reference model', async () => {
    const c = model.config;
    const N = 14; // with the prompt, past T = 16: the context window slides
    const seen: number[] = [];
    const got = await generateContinuation({
      edgeUrl: edge.url,
      credentials: creds,
      forward,
      head,
      config: c,
      promptIds: prompt,
      maxNewTokens: N,
      temperature: 0,
      maxContext: T,
      stopAtEos: false,
      onToken: (id) => seen.push(id),
    });
    const want: number[] = [];
    const context = [...prompt];
    let minGap = Infinity;
    for (let i = 0; i < N; i++) {
      const logits = referenceLogits(model, global, context.slice(-T));
      const [a, b] = top2(logits);
      minGap = Math.min(minGap, (a - b) / Math.max(...logits.map(Math.abs)));
      const next = sampleToken(logits, { temperature: 0, topK: 0 }, new Rng(0));
      want.push(next);
      context.push(next);
    }
    console.log(`generate: greedy ${JSON.stringify(got)}; smallest top-2 gap ${minGap.toExponential(2)} (relative)`);
    // a gap below the tolerance would make the comparison a coin toss rather than a check
    expect(minGap).toBeGreaterThan(TOL);
    expect(got).toEqual(want);
    expect(seen).toEqual(got);
  });

  it('sampling is reproducible from its seed and stays in the top k', async () => {
    const c = model.config;
    const run = () =>
      generateContinuation({
        edgeUrl: edge.url,
        credentials: creds,
        forward,
        head,
        config: c,
        promptIds: prompt,
        maxNewTokens: 4,
        temperature: 0.8,
        topK: 5,
        seed: 42,
        maxContext: T,
      });
    const a = await run();
    expect(await run()).toEqual(a);
    const first = referenceLogits(model, global, prompt);
    const top5 = [...first.keys()].sort((x, y) => first[y] - first[x]).slice(0, 5);
    expect(top5).toContain(a[0]);
  });

  it('refuses bad credentials, unknown users, bad shapes, non-finite and oversized frames with codes', async () => {
    const c = model.config;
    const D = c.nEmbd;
    const h = (n: number, d = D, rows = 1) => new Rng(n).fillNormal(new Float32Array(rows * n * d), 1);
    const frame = (data: Float32Array, shape: number[]) =>
      encodeMessage('userGenerate', 'generate', { h: { data, shape } });
    const post = async (
      body: Uint8Array,
      headers: Record<string, string> = { authorization: `Bearer ${creds.userToken}`, 'x-splitllm-user': creds.userId },
      url = `${edge.url}/api/generate`,
    ) => {
      const res = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/octet-stream', ...headers },
        body: body as Uint8Array<ArrayBuffer>,
      });
      const text = await res.text();
      return { status: res.status, code: res.ok ? 'OK' : (JSON.parse(text) as { code: string }).code };
    };
    const good = frame(h(5), [1, 5, D]);

    expect(await post(good, {})).toEqual({ status: 401, code: 'UNAUTHORIZED' });
    expect(await post(good, { authorization: `Bearer ${'0'.repeat(64)}`, 'x-splitllm-user': creds.userId })).toEqual({
      status: 401,
      code: 'UNAUTHORIZED',
    });
    // a token for another edge is refused by this one
    expect(
      await post(good, {
        authorization: `Bearer ${userToken(edgeSecret, creds.userId, 'e2')}`,
        'x-splitllm-user': creds.userId,
      }),
    ).toEqual({ status: 401, code: 'UNAUTHORIZED' });
    // a genuine token (made with the secret) for a user the cloud never admitted
    expect(
      await post(good, {
        authorization: `Bearer ${userToken(edgeSecret, 'u-nobody', 'e1')}`,
        'x-splitllm-user': 'u-nobody',
      }),
    ).toEqual({ status: 404, code: 'UNKNOWN_USER' });

    expect(await post(frame(h(5, D - 1), [1, 5, D - 1]))).toEqual({ status: 400, code: 'BAD_SHAPE' });
    expect(await post(frame(h(5, D, 2), [2, 5, D]))).toEqual({ status: 400, code: 'BAD_SHAPE' });
    expect(await post(frame(h(c.nPositions + 1), [1, c.nPositions + 1, D]))).toEqual({
      status: 400,
      code: 'BAD_SHAPE',
    });
    expect(await post(frame(new Float32Array(0), [1, 0, D]))).toEqual({ status: 400, code: 'BAD_SHAPE' });
    // a valid message of another channel
    const bye = encodeMessage('userToEdge', 'bye', { reason: 'x' });
    expect(await post(bye)).toEqual({ status: 400, code: 'UNEXPECTED_TYPE' });
    expect(await post(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]))).toEqual({ status: 400, code: 'BAD_FRAME' });
    // NaN written after encoding (the encoder refuses it)
    const nan = frame(h(5), [1, 5, D]);
    nan.set(new Uint8Array(Float32Array.of(NaN).buffer), nan.length - 8);
    expect(await post(nan)).toEqual({ status: 400, code: 'NOT_FINITE' });
    expect(await post(new Uint8Array(maxGenerateFrameBytes(modelDims(c)) + 1))).toEqual({
      status: 413,
      code: 'FRAME_TOO_LARGE',
    });
    // the same without a content-length (chunked): refused once read, by the frame limit
    const chunked = await fetch(`${edge.url}/api/generate`, {
      method: 'POST',
      headers: {
        'content-type': 'application/octet-stream',
        authorization: `Bearer ${creds.userToken}`,
        'x-splitllm-user': creds.userId,
      },
      body: new Blob([new Uint8Array(maxGenerateFrameBytes(modelDims(c)) + 1)]).stream(),
      duplex: 'half',
    } as RequestInit);
    expect(chunked.status).toBe(413);
    expect(((await chunked.json()) as { code: string }).code).toBe('FRAME_TOO_LARGE');

    // the cloud's route is for edges only
    const h2 = { data: h(5), shape: [1, 5, D] };
    const fromEdge = encodeMessage('edgeGenerate', 'generate', { userId: creds.userId, version: 1, h: h2 });
    const userAuth = { authorization: `Bearer ${creds.userToken}` };
    const refused = await post(fromEdge, userAuth, `${cloud.url}/api/generate`);
    expect(refused).toEqual({ status: 401, code: 'BAD_EDGE_TOKEN' });

    // none of it broke anything
    expect(await post(good)).toEqual({ status: 200, code: 'OK' });
    const preflight = await fetch(`${edge.url}/api/generate`, {
      method: 'OPTIONS',
      headers: { origin: 'http://page.example', 'access-control-request-method': 'POST' },
    });
    expect(preflight.status).toBe(204);
    expect(preflight.headers.get('access-control-allow-headers')).toContain('x-splitllm-user');
  });
});
