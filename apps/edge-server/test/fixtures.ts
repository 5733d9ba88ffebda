/**
 * A tiny run for the app's tests: a model config and the manifest the cloud would give for it,
 * and an edge app serving an Edge whose cloud link is never opened (no process, socket or cloud).
 */
import { DEFAULT_ADAMW, DEFAULT_LORA_CONFIG, type Gpt2Config, gpt2ConfigToJson } from '@splitllm/model';
import type { RunManifest } from '@splitllm/wire';
import type { FastifyInstance } from 'fastify';
import { buildEdgeApp } from '../src/app';
import { Edge } from '../src/edge';
import { EdgeMetrics } from '../src/telemetry';
import { fakeBlocks, silentLog } from './fakes';

export const TEST_CONFIG: Gpt2Config = {
  vocabSize: 16,
  nPositions: 8,
  nEmbd: 4,
  nLayer: 3,
  nHead: 1,
  nInner: 16,
  layerNormEpsilon: 1e-5,
  bosTokenId: 15,
  eosTokenId: 15,
};

export const TEST_MANIFEST: RunManifest = {
  modelName: 'tiny',
  model: { name: 'tiny', description: '', parameters: 1000, demo: true },
  config: gpt2ConfigToJson(TEST_CONFIG),
  plan: { k: 1, m: 2 },
  lora: DEFAULT_LORA_CONFIG,
  train: {
    batch: 1,
    seq: 4,
    stepsPerUser: 2,
    usersPerEdge: 1,
    codec: 'f32',
    adamw: DEFAULT_ADAMW,
    labels: 'device',
    activationNoise: 0,
    scheme: 'hierarchical',
  },
  version: 2,
  segments: { user: { sha256: 'a'.repeat(64), bytes: 10 }, edge: { sha256: 'b'.repeat(64), bytes: 20 } },
  privacy: { labels: 'device', k: 1, noiseSigma: 0, recovery: null },
};

export const TEST_OPERATOR_TOKEN = 'operator-token-for-tests';
export const TEST_EDGE_SECRET = 'secret';
export const TEST_USER_SEGMENT = Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8, 9, 10);

/** An app still starting: no edge yet. */
export function startingApp(): Promise<FastifyInstance> {
  return buildEdgeApp({ operatorToken: TEST_OPERATOR_TOKEN, metrics: new EdgeMetrics(), logLevel: false });
}

/** An app that serves an edge ('e1') whose cloud link was never opened. */
export async function servingApp(manifest: RunManifest = TEST_MANIFEST): Promise<{ app: FastifyInstance; edge: Edge }> {
  const app = await startingApp();
  const edge = new Edge({
    edgeId: 'e1',
    edgeSecret: TEST_EDGE_SECRET,
    url: 'http://127.0.0.1:1',
    cloudUrl: 'http://127.0.0.1:2',
    registration: { edgeToken: 'token', manifest, removedUsers: [] },
    config: TEST_CONFIG,
    blocks: fakeBlocks(),
    userSegment: TEST_USER_SEGMENT,
    tokenizer: { vocabJson: '{}', mergesTxt: '#' },
    metrics: app.metrics,
    log: silentLog,
    stepTimeoutMs: 1000,
    stepBudgetMs: 1000,
    maxMisses: 2,
    cloudTimeoutMs: 1000,
    provider: 'cpu',
  });
  app.serve(edge);
  return { app, edge };
}
