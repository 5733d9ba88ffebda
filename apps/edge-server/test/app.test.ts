/**
 * The app's routes through `app.inject`, with no process, socket or cloud: what they answer while
 * the edge starts, the closed response contracts once it serves, CORS, metrics and the operator's
 * token.
 */
import type { FastifyInstance } from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import { buildEdgeApp } from '../src/app';
import type { Edge } from '../src/edge';
import { EdgeMetrics } from '../src/telemetry';
import {
  servingApp,
  startingApp,
  TEST_MANIFEST as MANIFEST,
  TEST_OPERATOR_TOKEN as OPERATOR,
  TEST_USER_SEGMENT as USER_SEGMENT,
} from './fixtures';

let app: FastifyInstance | undefined;
afterEach(async () => {
  await app?.close();
  app = undefined;
});

async function starting(): Promise<FastifyInstance> {
  app = await startingApp();
  return app;
}

/** An app that serves an edge whose cloud link was never opened. */
async function serving(): Promise<{ app: FastifyInstance; edge: Edge }> {
  const served = await servingApp();
  app = served.app;
  return served;
}

const admin = { authorization: `Bearer ${OPERATOR}` };

describe('the edge app', () => {
  it('answers 503 NOT_READY {code, message} on every route that needs the edge while it starts', async () => {
    const a = await starting();
    const routes: Array<{ method: 'GET' | 'POST'; url: string; headers?: Record<string, string> }> = [
      { method: 'GET', url: '/api/manifest' },
      { method: 'GET', url: '/api/tokenizer' },
      { method: 'GET', url: '/api/segments/user' },
      { method: 'GET', url: '/api/adapters/user?version=0' },
      { method: 'GET', url: '/api/status' },
      { method: 'GET', url: '/api/admin/status', headers: admin },
      { method: 'POST', url: '/api/admin/users/u1/drop', headers: admin },
      { method: 'POST', url: '/api/generate' },
    ];
    for (const r of routes) {
      const res = await a.inject(r);
      expect(res.statusCode, r.url).toBe(503);
      expect(res.json(), r.url).toEqual({ code: 'NOT_READY', message: 'the edge is still starting' });
    }
    expect((await a.inject('/api/health')).json()).toEqual({ ok: true, ready: false });
  });

  it('checks the operator token before anything else', async () => {
    const a = await starting();
    for (const headers of [{}, { authorization: 'Bearer wrong' }, { authorization: `Basic ${OPERATOR}` }]) {
      const res = await a.inject({ url: '/api/admin/status', headers });
      expect(res.statusCode).toBe(401);
      expect(res.headers['www-authenticate']).toContain('Bearer');
      expect(Object.keys(res.json())).toEqual(['code', 'message']);
      expect(res.json().code).toBe('UNAUTHORIZED');
    }
  });

  it('answers CORS preflights for the page on the cloud origin', async () => {
    const a = await starting();
    const pre = await a.inject({
      method: 'OPTIONS',
      url: '/api/generate',
      headers: { origin: 'http://page.example', 'access-control-request-method': 'POST' },
    });
    expect(pre.statusCode).toBe(204);
    expect(pre.headers['access-control-allow-origin']).toBe('*');
    expect(pre.headers['access-control-allow-methods']).toBe('GET, POST');
    expect(pre.headers['access-control-allow-headers']).toBe('authorization, content-type, x-splitllm-user');
    expect(pre.headers['access-control-max-age']).toBe('600');
    const get = await a.inject({ url: '/api/health', headers: { origin: 'http://page.example' } });
    expect(get.headers['access-control-allow-origin']).toBe('*');
  });

  it("serves Prometheus metrics from the app's own registry", async () => {
    const a = await starting();
    const res = await a.inject('/metrics');
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain/);
    expect(res.body).toMatch(/^splitllm_edge_steps_total 0$/m);
    expect(res.body).toMatch(/^splitllm_edge_users_dropped_total 0$/m);
    expect(res.body).toMatch(/^splitllm_process_resident_memory_bytes \d+/m);
    // a second app in the same process has a registry of its own
    const other = await buildEdgeApp({ operatorToken: OPERATOR, metrics: new EdgeMetrics(), logLevel: false });
    expect((await other.inject('/metrics')).statusCode).toBe(200);
    await other.close();
  });

  it('serves the manifest at the current version and the closed public status once ready', async () => {
    const { app: a, edge } = await serving();
    const manifest = await a.inject('/api/manifest');
    expect(manifest.json()).toEqual({ ...MANIFEST, version: 2 });
    edge.version = 5;
    expect((await a.inject('/api/manifest')).json().version).toBe(5);
    const status = await a.inject('/api/status');
    expect(status.json()).toEqual({
      edgeId: 'e1',
      version: 5,
      round: null,
      cloudConnected: false,
      users: { connected: 0, waiting: 0 },
      provider: 'cpu',
    });
    expect((await a.inject('/api/tokenizer')).json()).toEqual({ vocabJson: '{}', mergesTxt: '#' });
    expect((await a.inject('/api/health')).json()).toEqual({ ok: true, ready: true });
    const metrics = (await a.inject('/metrics')).body;
    expect(metrics).toMatch(/^splitllm_edge_cloud_connected 0$/m);
    expect(metrics).toMatch(/^splitllm_edge_users_connected 0$/m);
  });

  it('serves the user segment by its hash, with a 304 for a cached copy', async () => {
    const { app: a } = await serving();
    const res = await a.inject('/api/segments/user');
    expect(res.statusCode).toBe(200);
    expect(new Uint8Array(res.rawPayload)).toEqual(USER_SEGMENT);
    expect(res.headers.etag).toBe(`"${'a'.repeat(64)}"`);
    const cached = await a.inject({ url: '/api/segments/user', headers: { 'if-none-match': `"${'a'.repeat(64)}"` } });
    expect(cached.statusCode).toBe(304);
  });

  it('refuses an adapter version other than the current one, and a missing version', async () => {
    const { app: a } = await serving();
    const old = await a.inject('/api/adapters/user?version=1');
    expect(old.statusCode).toBe(404);
    expect(old.json().code).toBe('UNKNOWN_VERSION');
    const missing = await a.inject('/api/adapters/user');
    expect(missing.statusCode).toBe(400);
    expect(missing.json().code).toBe('BAD_REQUEST');
  });

  it("gives the operator the dashboard's data, closed to its declared fields", async () => {
    const { app: a } = await serving();
    const res = await a.inject({ url: '/api/admin/status', headers: admin });
    expect(res.statusCode).toBe(200);
    const s = res.json();
    expect(Object.keys(s).sort()).toEqual(
      [
        'edgeId',
        'provider',
        'cloudConnected',
        'version',
        'model',
        'plan',
        'train',
        'round',
        'users',
        'counts',
        'sittingOut',
        'waiting',
        'queueFrames',
        'restarts',
        'lastStepMs',
        'tokensPerSecond',
        'bytesIn',
        'bytesOut',
        'memory',
        'steps',
        'errors',
        'leaves',
        'loss',
      ].sort(),
    );
    expect(s).toMatchObject({
      edgeId: 'e1',
      model: MANIFEST.model,
      plan: MANIFEST.plan,
      train: MANIFEST.train,
      round: null,
      users: [],
      loss: { round: null, points: [] },
    });
    expect(Object.keys(s.memory).sort()).toEqual([
      'arrayBuffers',
      'external',
      'heapTotal',
      'heapUsed',
      'peakRss',
      'rss',
    ]);
    const drop = await a.inject({ method: 'POST', url: '/api/admin/users/nobody/drop', headers: admin });
    expect(drop.statusCode).toBe(404);
    expect(drop.json().code).toBe('UNKNOWN_USER');
  });
});
