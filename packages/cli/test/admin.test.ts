/**
 * The edge operator's dashboard and its routes: a real cloud and a real edge on loopback and one
 * headless user training a round; the dashboard's data behind the operator token, the public
 * status without user ids, and an operator dropping the user.
 */
import { startCloudServer, type CloudServer } from '@splitllm/cloud-server';
import { startEdgeServer, type EdgeServer } from '@splitllm/edge-server';
import { randomToken } from '@splitllm/wire/node';
import { startHeadlessUser } from '@splitllm/user-client/node';
import type { UserClient, UserEvent } from '@splitllm/user-client';
import { createHash } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Script } from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DATA, HELDOUT, SHIPPED_MODEL } from './run-cli';

const tmp = mkdtempSync(join(tmpdir(), 'splitllm-admin-'));
const edgeSecret = randomToken();
const cloudOperatorToken = randomToken();
const edgeOperatorToken = randomToken();
const STEPS = 2;

const PAGE_IDS = [
  'edge-id',
  'provider',
  'cloud-state',
  'version',
  'round',
  'training-now',
  'step-ms',
  'tokens-per-second',
  'bytes-in',
  'bytes-out',
  'memory',
  'users',
  'loss-chart',
  'errors',
  'status-line',
  'token',
  'token-submit',
];

interface AdminStatus {
  edgeId: string;
  round: { number: number } | null;
  users: Array<{ userId: string; state: string; position: number; bytesIn: number; bytesOut: number }>;
  memory: { rss: number; heapUsed: number; peakRss: number | null };
  loss: {
    round: number | null;
    points: Array<{ userId: string; step: number; loss: number; ms: number; tokens: number; at: string }>;
  };
  steps: Array<{ step: number; ms: number; forwardMs: number; backwardMs: number; cloudMs: number; userMs: number }>;
}

/**
 * A step's phase times: each finite and not negative, and together no more than the step's `ms`,
 * which is measured around all of them. The 1 ms slack is for rounding only (each part is its own
 * difference of two clock readings); it is no timing budget.
 */
function expectParts(what: string, ms: number, parts: Array<number | undefined>): void {
  for (const x of parts) {
    expect(Number.isFinite(x), `${what}: ${parts}`).toBe(true);
    expect(x).toBeGreaterThanOrEqual(0);
  }
  expect(
    parts.reduce((a: number, b) => a + (b ?? 0), 0),
    what,
  ).toBeLessThanOrEqual(ms + 1);
}

describe('the edge operator dashboard', () => {
  let cloud: CloudServer;
  let edge: EdgeServer;
  let client: UserClient | undefined;
  const events: UserEvent[] = [];

  const admin = (path: string, init: RequestInit & { token?: string | null } = {}) =>
    fetch(`${edge.url}${path}`, {
      ...init,
      headers: init.token === null ? {} : { authorization: `Bearer ${init.token ?? edgeOperatorToken}` },
    });
  const adminStatus = async () => {
    const res = await admin('/api/admin/status');
    expect(res.status).toBe(200);
    return (await res.json()) as AdminStatus;
  };

  beforeAll(async () => {
    cloud = await startCloudServer({
      modelDir: SHIPPED_MODEL,
      heldoutFile: HELDOUT,
      stateDir: join(tmp, 'state'),
      edgeSecret,
      operatorToken: cloudOperatorToken,
      seed: 3,
      train: { stepsPerUser: STEPS, batch: 2, seq: 16 },
      // one round, then the user stays connected and waits: the test looks at it idle
      maxRounds: 1,
      logLevel: false,
      threads: 1,
    });
    edge = await startEdgeServer({
      cloudUrl: cloud.url,
      edgeId: 'e1',
      edgeSecret,
      operatorToken: edgeOperatorToken,
      logLevel: false,
      threads: 1,
    });
  });

  afterAll(async () => {
    client?.stop();
    await edge?.close();
    await cloud?.close();
  });

  it('serves the page with every stable id, its own inline script and style only', async () => {
    expect(edge.operatorToken).toBe(edgeOperatorToken);
    expect(edge.adminUrl).toBe(`${edge.url}/admin`);
    const res = await fetch(edge.adminUrl);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/html/);
    const html = await res.text();
    for (const id of PAGE_IDS) expect(html, id).toContain(`id="${id}"`);
    expect(html).toContain('data-points="0"');
    // no external resources
    expect(html).not.toMatch(/\b(src|href)="(https?:)?\/\//);
    const script = /<script>([\s\S]*?)<\/script>/.exec(html)![1];
    const style = /<style>([\s\S]*?)<\/style>/.exec(html)![1];
    expect(() => new Script(script)).not.toThrow();
    const csp = res.headers.get('content-security-policy')!;
    const hash = (s: string) => `'sha256-${createHash('sha256').update(s).digest('base64')}'`;
    expect(csp).toContain(`script-src ${hash(script)}`);
    expect(csp).toContain(`style-src ${hash(style)}`);
    expect(csp).toContain("connect-src 'self'");
  });

  it('refuses the admin routes without the operator token, or with a wrong one', async () => {
    for (const token of [null, 'wrong', edgeOperatorToken.slice(1), cloudOperatorToken]) {
      const status = await admin('/api/admin/status', { token });
      expect(status.status).toBe(401);
      expect(await status.json()).toMatchObject({ code: 'UNAUTHORIZED', message: expect.any(String) });
      const drop = await admin('/api/admin/users/anyone/drop', { method: 'POST', token });
      expect(drop.status).toBe(401);
      expect(((await drop.json()) as { code: string }).code).toBe('UNAUTHORIZED');
    }
    const basic = await fetch(`${edge.url}/api/admin/status`, {
      headers: { authorization: `Basic ${edgeOperatorToken}` },
    });
    expect(basic.status).toBe(401);
    const unknown = await admin('/api/admin/users/nobody-here/drop', { method: 'POST' });
    expect(unknown.status).toBe(404);
    expect(((await unknown.json()) as { code: string }).code).toBe('UNKNOWN_USER');
  });

  it('lists a connected user with its round losses; the public status has counts only', async () => {
    const jt = await fetch(`${cloud.url}/api/join-tokens`, {
      method: 'POST',
      headers: { authorization: `Bearer ${cloudOperatorToken}` },
    });
    const { token } = (await jt.json()) as { token: string };
    client = await startHeadlessUser({
      cloudUrl: cloud.url,
      joinToken: token,
      dataFile: join(DATA, 'sotu/train/user-1.txt'),
      seed: 0,
      engine: 'reference',
      onEvent: (e) => events.push(e),
    });
    const userId = client.userId;
    await expect.poll(() => events.some((e) => e.type === 'round-end'), { timeout: 60_000 }).toBe(true);

    const s = await adminStatus();
    expect(s.edgeId).toBe('e1');
    expect(s.round).toBeNull();
    expect(s.users).toEqual([expect.objectContaining({ userId, state: 'waiting', position: 1 })]);
    expect(s.users[0].bytesIn).toBeGreaterThan(0);
    expect(s.users[0].bytesOut).toBeGreaterThan(0);
    expect(s.memory.rss).toBeGreaterThan(0);
    // the last round's loss series (idle now): one point per step, the loss the user saw
    expect(s.loss.round).toBe(1);
    expect(s.loss.points.map((p) => [p.userId, p.step])).toEqual(
      Array.from({ length: STEPS }, (_, i) => [userId, i + 1]),
    );
    const seen = events.flatMap((e) => (e.type === 'step' ? [[e.loss, e.tokens]] : []));
    expect(s.loss.points.map((p) => [p.loss, p.tokens])).toEqual(seen);
    // where each step's time went, on the user's side (labels on the device: the head too) and the edge's
    const userSteps = events.flatMap((e) => (e.type === 'step' ? [e] : []));
    expect(userSteps).toHaveLength(STEPS);
    for (const e of userSteps)
      expectParts(`user step ${e.step}`, e.ms, [e.forwardMs, e.backwardMs, e.headMs, e.waitMs]);
    expect(s.steps.map((p) => p.step)).toEqual(Array.from({ length: STEPS }, (_, i) => i + 1));
    for (const p of s.steps) expectParts(`edge step ${p.step}`, p.ms, [p.forwardMs, p.backwardMs, p.cloudMs, p.userMs]);

    const pub = await fetch(`${edge.url}/api/status`);
    expect(pub.status).toBe(200);
    const text = await pub.text();
    expect(JSON.parse(text)).toEqual({
      edgeId: 'e1',
      version: 1,
      round: null,
      cloudConnected: true,
      users: { connected: 1, waiting: 1 },
      provider: 'cpu',
    });
    expect(text).not.toContain(userId);
  });

  it('lets the operator drop a user: its socket closes with 4003 and it leaves the status', async () => {
    const userId = client!.userId;
    const res = await admin(`/api/admin/users/${encodeURIComponent(userId)}/drop`, { method: 'POST' });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ dropped: userId });
    await expect
      .poll(() => events.find((e) => e.type === 'closed'), { timeout: 10_000 })
      .toMatchObject({ type: 'closed', code: 4003 });
    expect((await adminStatus()).users).toEqual([]);
    const again = await admin(`/api/admin/users/${encodeURIComponent(userId)}/drop`, { method: 'POST' });
    expect(again.status).toBe(404);
  });
});
