/**
 * The operator's dashboard data and page, without a cloud: leaves kept apart from errors (a
 * closed tab, a pause, a Drop are departures; refusals are errors, each with a sentence), the
 * phases and the counts made from them (they add up to the rows), the model in the status, uPlot
 * served from the edge itself under the page's CSP, and a page whose script finds every element
 * it writes to.
 */
import { encodeMessage } from '@splitllm/wire';
import { userToken } from '@splitllm/wire/node';
import type { FastifyInstance } from 'fastify';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Script } from 'node:vm';
import { afterEach, describe, expect, it } from 'vitest';
import { ADMIN_SCRIPT } from '../src/admin-page';
import type { Edge } from '../src/edge';
import { dashboardStatus, errorSentence } from '../src/routes/admin';
import { Activity, EdgeMetrics } from '../src/telemetry';
import { FakeSocket, silentLog } from './fakes';
import { servingApp, TEST_EDGE_SECRET, TEST_MANIFEST, TEST_OPERATOR_TOKEN } from './fixtures';

const admin = { authorization: `Bearer ${TEST_OPERATOR_TOKEN}` };

let app: FastifyInstance | undefined;
afterEach(async () => {
  await app?.close();
  app = undefined;
});

async function serving() {
  const served = await servingApp();
  app = served.app;
  return served;
}

/** A user joins the edge's queue over a fake socket, with the token the cloud would derive. */
function join(edge: Edge, userId: string): FakeSocket {
  const socket = new FakeSocket();
  const token = userToken(TEST_EDGE_SECRET, userId, 'e1');
  const conn = edge.queue.authenticate(socket, encodeMessage('userToEdge', 'hello', { userId, token }));
  expect(conn, userId).toBeDefined();
  return socket;
}

async function status(a: FastifyInstance) {
  const res = await a.inject({ url: '/api/admin/status', headers: admin });
  expect(res.statusCode).toBe(200);
  return res.json();
}

describe('departures are not errors', () => {
  it('keeps a user who went mid-turn as "left", once, with the round of its turn', () => {
    const metrics = new EdgeMetrics();
    const a = new Activity(metrics, silentLog);
    // the queue's word as the socket closes, then the turn's as it is rolled back
    a.noteLeave('u-tab', 'connection closed');
    a.noteError('USER_GONE', 'user dropped from round 4: connection closed', 'u-tab');
    // a pause sends bye, during a turn
    a.noteError('USER_GONE', 'user dropped from round 4: user left: paused by the user', 'u-pause');
    a.noteError('NOT_YOUR_TURN', 'a "forward" frame is not expected now (position 2 in the queue)', 'u-x');
    expect(a.recentErrors.map((e) => e.code)).toEqual(['NOT_YOUR_TURN']);
    expect(a.recentLeaves.map(({ userId, kind, reason, round }) => ({ userId, kind, reason, round }))).toEqual([
      { userId: 'u-tab', kind: 'left', reason: 'connection closed', round: 4 },
      { userId: 'u-pause', kind: 'left', reason: 'user left: paused by the user', round: 4 },
    ]);
  });

  it("keeps an operator's Drop as removed, whatever the connection says as it closes", () => {
    const a = new Activity(new EdgeMetrics(), silentLog);
    a.noteLeave('u-d', 'dropped by the operator');
    a.noteError('USER_GONE', 'user dropped from round 2: dropped by the operator', 'u-d');
    a.noteLeave('u-d', 'connection closed');
    a.noteLeave('u-r', 'replaced by a new connection');
    expect(a.recentLeaves.map(({ userId, kind, round }) => [userId, kind, round])).toEqual([
      ['u-d', 'removed', 2],
      ['u-r', 'replaced', null],
    ]);
    expect(a.recentErrors).toEqual([]);
  });

  it('still counts USER_GONE in the frame-error metric (its contract), not on the dashboard', async () => {
    const metrics = new EdgeMetrics();
    const a = new Activity(metrics, silentLog);
    a.noteError('USER_GONE', 'user dropped from round 1: connection closed', 'u1');
    expect(await metrics.render()).toMatch(/^splitllm_edge_frame_errors_total\{code="USER_GONE"\} 1$/m);
  });

  it('says every error code the edge has in a sentence of its own, and any other in a general one', () => {
    const codes = [
      'USER_TIMEOUT',
      'TURN_DEADLINE',
      'SITTING_OUT',
      'CLOUD_GONE',
      'CLOUD_TIMEOUT',
      'CLOUD_UNREACHABLE',
      'UPLOAD_REFUSED',
      'ADAPTER_DOWNLOAD',
      'SEGMENT_DOWNLOAD',
      'SEGMENT_CORRUPT',
      'UNKNOWN_VERSION',
      'REMOVAL_NOT_RECORDED',
      'USER_REMOVED',
      'FRAME_TOO_LARGE',
      'UNAUTHORIZED',
      'NOT_YOUR_TURN',
    ];
    const general = errorSentence('SOMETHING_NEW');
    const sentences = codes.map(errorSentence);
    for (const [i, s] of sentences.entries()) {
      expect(s, codes[i]).not.toBe(general);
      // a sentence, not a code
      expect(s, codes[i]).toMatch(/^[A-Z][^_]*\.$/);
    }
    expect(errorSentence('BAD_TENSOR')).toBe(errorSentence('NOT_FINITE'));
    expect(errorSentence('BAD_TENSOR')).toContain('malformed');
  });
});

describe('phases and counts', () => {
  /** dashboardStatus over a status with one user in each phase */
  function statusOf(): ReturnType<typeof dashboardStatus> {
    const user = (userId: string, state: 'waiting' | 'training', position: number) => ({
      userId,
      state,
      position,
      connectedAt: new Date(0).toISOString(),
      bytesIn: 0,
      bytesOut: 0,
      misses: 0,
      sitsOutThrough: userId === 'out' ? 8 : null,
    });
    const edge = {
      manifest: TEST_MANIFEST,
      activity: new Activity(new EdgeMetrics(), silentLog),
      status: () => ({
        round: { number: 7, version: 6, current: { userId: 'now', step: 1, steps: 2 }, completed: ['done'] },
        users: [
          user('done', 'waiting', 1),
          user('now', 'training', 2),
          user('out', 'waiting', 3),
          user('w1', 'waiting', 4),
          user('w2', 'waiting', 5),
        ],
        sittingOut: ['out'],
        waiting: 4,
        errors: [],
      }),
    } as unknown as Edge;
    return dashboardStatus(edge);
  }

  it('gives each user one phase, the waiting ones their turn order, and counts that add up to the rows', () => {
    const s = statusOf();
    expect(s.users.map((u) => [u.userId, u.phase, u.waitingPosition])).toEqual([
      ['done', 'done', null],
      ['now', 'training', null],
      ['out', 'sitting-out', null],
      ['w1', 'waiting', 1],
      ['w2', 'waiting', 2],
    ]);
    expect(s.counts).toEqual({ connected: 5, training: 1, waiting: 2, done: 1, sittingOut: 1 });
    const { connected, ...byPhase } = s.counts;
    expect(Object.values(byPhase).reduce((a, b) => a + b, 0)).toBe(connected);
    expect(connected).toBe(s.users.length);
  });
});

describe('the admin status', () => {
  it('names the model, lists users with their phase, departures apart from errors, each said for people', async () => {
    const { app: a, edge } = await serving();
    join(edge, 'u-alice');
    join(edge, 'u-bob');
    edge.activity.noteError('FRAME_TOO_LARGE', 'more than 65536 bytes before "hello"');
    let s = await status(a);
    expect(s.model).toEqual(TEST_MANIFEST.model);
    expect(
      s.users.map((u: { userId: string; phase: string; waitingPosition: number }) => [
        u.userId,
        u.phase,
        u.waitingPosition,
      ]),
    ).toEqual([
      ['u-alice', 'waiting', 1],
      ['u-bob', 'waiting', 2],
    ]);
    expect(s.counts).toEqual({ connected: 2, training: 0, waiting: 2, done: 0, sittingOut: 0 });
    expect(s.errors).toEqual([
      expect.objectContaining({ code: 'FRAME_TOO_LARGE', summary: errorSentence('FRAME_TOO_LARGE') }),
    ]);
    expect(s.leaves).toEqual([]);

    // the operator drops one: it is listed as removed, with what that means, and is no error
    const drop = await a.inject({ method: 'POST', url: '/api/admin/users/u-bob/drop', headers: admin });
    // the cloud link was never opened: the removal is not recorded there (an error, said so)
    expect(drop.statusCode).toBe(200);
    s = await status(a);
    expect(s.users.map((u: { userId: string }) => u.userId)).toEqual(['u-alice']);
    expect(s.counts.connected).toBe(1);
    expect(s.leaves).toEqual([expect.objectContaining({ userId: 'u-bob', kind: 'removed', round: null })]);
    expect(s.leaves[0].summary).toMatch(
      /^Dropped by you\. It cannot rejoin until the cloud's operator re-admits it\.$/,
    );
    expect(s.errors.map((e: { code: string }) => e.code)).not.toContain('USER_GONE');
    expect(s.errors.map((e: { code: string }) => e.code)).toContain('REMOVAL_NOT_RECORDED');
    // a departure during a turn says which round's turn was rolled back
    edge.activity.noteError('USER_GONE', 'user dropped from round 3: connection closed', 'u-carol');
    s = await status(a);
    expect(s.leaves.at(-1)).toMatchObject({ userId: 'u-carol', kind: 'left', round: 3 });
    expect(s.leaves.at(-1).summary).toBe(
      "Left during its turn in round 3 (that turn's steps were rolled back): the tab was closed, reloaded or " +
        'lost its connection.',
    );
    // gone between two of its messages, the same for the operator; a pause says so
    edge.activity.noteError('USER_GONE', 'user dropped from round 3: the user is gone', 'u-dave');
    edge.activity.noteError('USER_GONE', 'user dropped from round 3: user left: paused by the user', 'u-erin');
    s = await status(a);
    expect(s.leaves.slice(-2).map((l: { summary: string }) => l.summary)).toEqual([
      s.leaves.at(-3).summary,
      "Left during its turn in round 3 (that turn's steps were rolled back): paused by the user.",
    ]);
  });

  it('numbers the recent steps in the order the edge ran them', async () => {
    const { app: a, edge } = await serving();
    const at = new Date().toISOString();
    const times = { forwardMs: 1, backwardMs: 2, cloudMs: 1.5, userMs: 0.25 };
    edge.activity.step(1, { userId: 'u1', step: 1, loss: 3, tokens: 4, ms: 5, at, ...times });
    edge.activity.roundStarted(2);
    edge.activity.step(2, { userId: 'u1', step: 1, loss: 2.5, tokens: 4, ms: 5, at, ...times });
    const s = await status(a);
    expect(s.steps.map((p: { round: number; n: number }) => [p.round, p.n])).toEqual([
      [1, 1],
      [2, 2],
    ]);
    // the closed response schema lets each step's times through; the chart's loss series leaves them out
    expect(s.steps[1]).toMatchObject(times);
    expect(s.loss.points[0]).toEqual({ userId: 'u1', step: 1, loss: 2.5, tokens: 4, ms: 5, at });
  });
});

describe('the page and its chart library', () => {
  const uplot = (file: string) => readFileSync(createRequire(import.meta.url).resolve(`uplot/dist/${file}`));

  it("serves uPlot's iife build and CSS from the edge, cacheable for good, allowed by the page's CSP", async () => {
    const { app: a } = await serving();
    const page = await a.inject('/admin');
    const html = page.body;
    const js = /<script src="(\/admin\/uplot\.js\?v=[0-9a-f]{16})"><\/script>/.exec(html);
    const css = /<link rel="stylesheet" href="(\/admin\/uplot\.css\?v=[0-9a-f]{16})">/.exec(html);
    expect(js, 'script tag').not.toBeNull();
    expect(css, 'stylesheet link').not.toBeNull();
    for (const [url, file, type] of [
      [js![1], 'uPlot.iife.min.js', /^text\/javascript/],
      [css![1], 'uPlot.min.css', /^text\/css/],
    ] as const) {
      const res = await a.inject(url);
      expect(res.statusCode, url).toBe(200);
      expect(res.headers['content-type']).toMatch(type);
      expect(res.headers['cache-control']).toBe('public, max-age=31536000, immutable');
      expect(res.rawPayload.equals(uplot(file))).toBe(true);
      const etag = `"${createHash('sha256').update(uplot(file)).digest('hex')}"`;
      expect(res.headers.etag).toBe(etag);
      expect((await a.inject({ url, headers: { 'if-none-match': etag } })).statusCode).toBe(304);
    }
    const csp = String(page.headers['content-security-policy']);
    expect(csp).toMatch(/script-src 'sha256-[^']+' 'self'(;|$)/);
    expect(csp).toMatch(/style-src 'sha256-[^']+' 'self'(;|$)/);
    expect(csp).toContain("default-src 'none'");
    // nothing from elsewhere
    expect(html).not.toMatch(/\b(src|href)="(https?:)?\/\//);
  });

  it('has a script that parses and finds every element it writes to', async () => {
    const { app: a } = await serving();
    const html = (await a.inject('/admin')).body;
    expect(() => new Script(ADMIN_SCRIPT)).not.toThrow();
    const ids = new Set<string>();
    for (const m of ADMIN_SCRIPT.matchAll(/(?:\$|text)\('([a-z-]+)'/g)) ids.add(m[1]);
    for (const m of ADMIN_SCRIPT.matchAll(/problem\('([a-z-]+)'/g)) {
      for (const id of [m[1], `${m[1]}-text`, `${m[1]}-code`]) ids.add(id);
    }
    // the ones the script makes itself
    for (const m of ADMIN_SCRIPT.matchAll(/\.id = '([a-z-]+)'/g)) ids.delete(m[1]);
    expect(ids.size).toBeGreaterThan(30);
    for (const id of ids) expect(html, id).toContain(`id="${id}"`);
    // the legend says the words the page uses for rounds and versions
    expect(html).toContain('round R');
    expect(html).toContain('shared model update R\u22121');
  });
});
