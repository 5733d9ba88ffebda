/**
 * The servers under attack and failure: a real cloud and real edges (Fastify on loopback,
 * onnxruntime sessions, a database file) driven by raw protocol clients that misbehave on
 * purpose, and, as separate processes, a cloud killed and restarted mid-run.
 */
import { startCloudServer, type CloudServer, type RoundSummary } from '@splitllm/cloud-server';
import { startEdgeServer, type EdgeServer } from '@splitllm/edge-server';
import { decodeExpected, decodeMessage, encodeFrameWith, encodeMessage, type MessageOn } from '@splitllm/wire';
import { Rng } from '@splitllm/model';
import { randomToken } from '@splitllm/wire/node';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { startPart, type Part } from '../src/launcher';
import { freePort, post } from './net';
import { activationsFrame, type EdgeMsgOf, headGradFrame, RawUser, withNaN } from './raw-user';
import { startHeadlessUser } from '@splitllm/user-client/node';
import { joinRun, type UserEvent } from '@splitllm/user-client';
import { DATA, HELDOUT, SHIPPED_MODEL } from './run-cli';

const tmp = mkdtempSync(join(tmpdir(), 'splitllm-system-'));
const edgeSecret = randomToken();
const operatorToken = randomToken();
const B = 2;
const T = 16;
const D = 128; // the shipped model's width
const V = 1024;
const STEPS = 2;

async function joinToken(cloud: string): Promise<string> {
  const r = await post(`${cloud}/api/join-tokens`, {}, operatorToken);
  expect(r.status).toBe(200);
  return r.json.token;
}

/** What an edge sends a user. */

/** A user's forward frame (to an edge), or with `userId` an edge's (to the cloud). */
function forwardFrame(
  round: number,
  step: number,
  rng: Rng,
  o: { h?: Float32Array; targets?: Int32Array; shape?: number[]; userId?: string } = {},
): Uint8Array {
  const hData = o.h ?? Float32Array.from({ length: B * T * D }, () => rng.normal() * 0.5);
  const h = { data: hData, shape: o.shape ?? [B, T, D] };
  const targets = { data: o.targets ?? Int32Array.from({ length: B * T }, () => rng.int(V)), shape: [B, T] };
  if (o.userId === undefined) return encodeMessage('userToEdge', 'forward', { round, step, h, targets });
  return encodeMessage('edgeToCloud', 'forward', { round, step, userId: o.userId, h, targets });
}

/** A step's activations (labels on the device, the run's default): random unless given. */
function activations(round: number, step: number, rng: Rng, o: { h?: Float32Array; shape?: number[] } = {}) {
  const h = o.h ?? Float32Array.from({ length: B * T * D }, () => rng.normal() * 0.5);
  return activationsFrame(round, step, h, o.shape ?? [B, T, D]);
}

/** The head's answer to a step's last hidden state: a small random dL/dhL (a tab without a model). */
function headGrad(round: number, step: number, rng: Rng, o: { loss?: number; count?: number; shape?: number[] } = {}) {
  const shape = o.shape ?? [B, T, D];
  const dh = Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rng.normal() * 1e-3);
  return headGradFrame(round, step, dh, shape, o);
}

/**
 * Plays a turn honestly, labels on the device: random activations, the last hidden state answered
 * with a head-grad, the global adapter sent back unchanged. `beforeStep` and `beforeHeadGrad` may
 * send bad frames first.
 */
async function playTurn(
  u: RawUser,
  edgeUrl: string,
  rng: Rng,
  beforeStep?: (round: number, step: number) => Promise<void>,
  beforeAdapter?: (round: number, tensors: Map<string, { data: Float32Array; shape: number[] }>) => Promise<void>,
  beforeHeadGrad?: (round: number, step: number) => Promise<void>,
): Promise<EdgeMsgOf<'turn-end'>> {
  const turn = await u.next('turn');
  const round = turn.round;
  for (let step = 1; step <= turn.steps; step++) {
    await beforeStep?.(round, step);
    u.send(activations(round, step, rng));
    const hidden = await u.next('hidden');
    expect(hidden.step).toBe(step);
    expect(hidden.h.shape).toEqual([B, T, D]);
    await beforeHeadGrad?.(round, step);
    u.send(headGrad(round, step, rng));
    const back = await u.next('backward');
    expect(back.step).toBe(step);
    // the loss and count are the tab's own report, relayed back
    expect([back.loss, back.count]).toEqual([6.9, B * T]);
  }
  const res = await fetch(`${edgeUrl}/api/adapters/user?version=${turn.version}`);
  const adapter = decodeExpected('adapterFile', 'adapter', new Uint8Array(await res.arrayBuffer()));
  const tensors = new Map([...adapter.tensors].map(([n, t]) => [n, { data: t.data, shape: t.shape }]));
  await beforeAdapter?.(round, tensors);
  u.send(encodeMessage('userToEdge', 'adapter', { round, tokens: B * T * STEPS, steps: STEPS, tensors }));
  return u.next('turn-end');
}

describe('servers on loopback', () => {
  let cloud: CloudServer;
  const edges: EdgeServer[] = [];
  const users: RawUser[] = [];
  const summaries: RoundSummary[] = [];

  beforeAll(async () => {
    cloud = await startCloudServer({
      modelDir: SHIPPED_MODEL,
      heldoutFile: HELDOUT,
      stateDir: join(tmp, 'state'),
      edgeSecret,
      operatorToken,
      seed: 1,
      train: { stepsPerUser: STEPS, usersPerEdge: 2, batch: B, seq: T },
      // the round waits for two edges with users: the test decides when it starts
      minEdges: 2,
      onRound: (r) => summaries.push(r),
      logLevel: false,
      threads: 1,
    });
    edges.push(await startEdgeServer({ cloudUrl: cloud.url, edgeId: 'e1', edgeSecret, logLevel: false, threads: 1 }));
  });

  afterAll(async () => {
    for (const u of users) u.ws.terminate();
    for (const e of edges) await e.close();
    await cloud?.close();
  });

  it('refuses a wrong edge secret, a missing edge token and a wrong operator token', async () => {
    const reg = await post(`${cloud.url}/api/edges/register`, {
      edgeId: 'intruder',
      url: 'http://127.0.0.1:1',
      secret: 'wrong',
    });
    expect(reg.status).toBe(401);
    expect(reg.json.code).toBe('BAD_EDGE_SECRET');
    const seg = await fetch(`${cloud.url}/api/segments/edge`);
    expect(seg.status).toBe(401);
    expect(((await seg.json()) as { code: string }).code).toBe('BAD_EDGE_TOKEN');
    const bad = await fetch(`${cloud.url}/api/segments/edge`, { headers: { authorization: 'Bearer not-a-token' } });
    expect(bad.status).toBe(401);
    const jt = await post(`${cloud.url}/api/join-tokens`, {}, 'wrong');
    expect(jt.status).toBe(401);
    expect(jt.json.code).toBe('BAD_OPERATOR_TOKEN');
    const ws = new WebSocket(`${cloud.url.replace(/^http/, 'ws')}/ws/edge`);
    const status = await new Promise<number>((res) =>
      ws.on('unexpected-response', (_req, r) => res(r.statusCode ?? 0)),
    );
    expect(status).toBe(401);
    expect(cloud.coordinator.edges.has('intruder')).toBe(false);
  });

  it('refuses a wrong or reused join token', async () => {
    const wrong = await post(`${cloud.url}/api/join`, { joinToken: 'f'.repeat(32) });
    expect(wrong.status).toBe(403);
    expect(wrong.json.code).toBe('BAD_JOIN_TOKEN');
    const token = await joinToken(cloud.url);
    const ok = await post(`${cloud.url}/api/join`, { joinToken: token });
    expect(ok.status).toBe(200);
    expect(ok.json.edgeId).toBe('e1');
    const again = await post(`${cloud.url}/api/join`, { joinToken: token });
    expect(again.status).toBe(403);
    const malformed = await post(`${cloud.url}/api/join`, { token: 1 });
    expect(malformed.status).toBe(400);
  });

  it('closes a user socket whose hello has a wrong token, or is not a hello', async () => {
    const join = await post(`${cloud.url}/api/join`, { joinToken: await joinToken(cloud.url) });
    const forged = await RawUser.connect(edges[0].url, join.json.userId);
    forged.send(encodeMessage('userToEdge', 'hello', { userId: join.json.userId, token: 'a'.repeat(64) }));
    expect(await forged.error()).toBe('UNAUTHORIZED');
    await expect.poll(() => forged.closed?.code).toBe(4001);
    const garbage = await RawUser.connect(edges[0].url, 'x');
    garbage.send(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]));
    expect(await garbage.error()).toBe('BAD_FRAME');
    await expect.poll(() => garbage.closed?.code).toBe(4001);
    expect(edges[0].edge.users.size).toBe(0);
  });

  it('answers malformed, oversized, NaN and out-of-turn frames with codes, and keeps the user', async () => {
    const join = await post(`${cloud.url}/api/join`, { joinToken: await joinToken(cloud.url) });
    const a = await RawUser.connect(edges[0].url, join.json.userId);
    users.push(a);
    a.send(encodeMessage('userToEdge', 'hello', { userId: join.json.userId, token: join.json.userToken }));
    const welcome = await a.next('welcome');
    expect(welcome.position).toBe(1);
    const rng = new Rng(5);

    a.send(new Uint8Array(64).fill(255));
    expect(await a.error()).toBe('BAD_FRAME');
    a.send('a text frame');
    expect(await a.error()).toBe('BAD_FRAME');
    // a well-formed frame of a type no channel declares (the typed encoder refuses it)
    a.send(encodeFrameWith({ fields: {} }, 'launch-missiles', {}));
    expect(await a.error()).toBe('UNKNOWN_TYPE');
    a.send(withNaN(activations(1, 1, rng), 'h'));
    expect(await a.error()).toBe('NOT_FINITE');
    a.send(forwardFrame(1, 1, rng));
    expect(await a.error()).toBe('NOT_YOUR_TURN');
    // larger than any frame this session needs (a step is 16 KiB here, the user adapter 24 KiB)
    a.send(forwardFrame(1, 1, rng, { h: new Float32Array(B * 400 * D), shape: [B, 400, D] }));
    expect(await a.error()).toBe('FRAME_TOO_LARGE');

    expect(a.closed).toBeUndefined();
    const status = (await (
      await fetch(`${edges[0].url}/api/admin/status`, {
        headers: { authorization: `Bearer ${edges[0].operatorToken}` },
      })
    ).json()) as {
      users: Array<{ userId: string; state: string }>;
      errors: Array<{ code: string }>;
    };
    expect(status.users.map((u) => [u.userId, u.state])).toEqual([[join.json.userId, 'waiting']]);
    expect(status.errors.map((e) => e.code)).toEqual(
      expect.arrayContaining(['BAD_FRAME', 'UNKNOWN_TYPE', 'NOT_FINITE', 'NOT_YOUR_TURN', 'FRAME_TOO_LARGE']),
    );
  });

  it('answers a malformed frame from an edge with a code', async () => {
    const reg = await post(`${cloud.url}/api/edges/register`, {
      edgeId: 'probe',
      url: 'http://127.0.0.1:1',
      secret: edgeSecret,
    });
    expect(reg.status).toBe(200);
    const ws = new WebSocket(`${cloud.url.replace(/^http/, 'ws')}/ws/edge`, {
      headers: { authorization: `Bearer ${reg.json.edgeToken}` },
    });
    const frames: MessageOn<'cloudToEdge'>[] = [];
    ws.on('message', (d: Buffer) => frames.push(decodeMessage('cloudToEdge', new Uint8Array(d))));
    await new Promise((res) => ws.once('open', res));
    ws.send(new Uint8Array([9, 0, 0, 0, 123]));
    // a well-formed edge forward, sent while no round runs
    ws.send(forwardFrame(1, 1, new Rng(1), { userId: 'u-probe' }));
    const codes = () => frames.flatMap((f) => (f.type === 'error' ? [f.code] : []));
    await expect.poll(codes).toEqual(['BAD_FRAME', 'NO_ROUND']);
    ws.close();
    await expect.poll(() => cloud.coordinator.edges.get('probe')?.channel).toBeUndefined();
  });

  it('drops a user killed mid-step and completes the round with the others', async () => {
    // e1's queue: a (first, from the test before) then b; e2: c. The round needs both edges.
    const a = users[0];
    const joinB = await post(`${cloud.url}/api/join`, { joinToken: await joinToken(cloud.url) });
    expect(joinB.json.edgeId).toBe('e1');
    const b = await RawUser.connect(edges[0].url, joinB.json.userId);
    users.push(b);
    b.send(encodeMessage('userToEdge', 'hello', { userId: joinB.json.userId, token: joinB.json.userToken }));
    expect((await b.next('welcome')).position).toBe(2);

    edges.push(await startEdgeServer({ cloudUrl: cloud.url, edgeId: 'e2', edgeSecret, logLevel: false, threads: 1 }));
    const joinC = await post(`${cloud.url}/api/join`, { joinToken: await joinToken(cloud.url) });
    expect(joinC.json.edgeId).toBe('e2');
    const c = await RawUser.connect(edges[1].url, joinC.json.userId);
    users.push(c);
    const rng = new Rng(9);
    const cTurn = playTurn(c, edges[1].url, rng);
    c.send(encodeMessage('userToEdge', 'hello', { userId: joinC.json.userId, token: joinC.json.userToken }));

    // a: one step's activations, then the process dies before the last hidden state comes back
    const aTurn = await a.next('turn');
    const round = aTurn.round;
    expect(round).toBe(1);
    a.send(activations(round, 1, rng));
    a.ws.terminate();

    // b plays its turn, after trying bad frames first: each is refused and changes nothing
    const bEnd = await playTurn(
      b,
      edges[0].url,
      rng,
      async (r, step) => {
        if (step !== 1) return;
        b.send(activations(r, 2, rng));
        expect(await b.error()).toBe('WRONG_STEP');
        b.send(activations(r + 1, 1, rng));
        expect(await b.error()).toBe('WRONG_ROUND');
        b.send(activations(r, 1, rng, { h: new Float32Array(B * T * 64), shape: [B, T, 64] }));
        expect(await b.error()).toBe('BAD_SHAPE');
        b.send(withNaN(activations(r, 1, rng), 'h'));
        expect(await b.error()).toBe('NOT_FINITE');
        // a labelled forward on a run that keeps labels on the device: not what the step waits for
        b.send(forwardFrame(r, 1, rng));
        expect(await b.error()).toBe('UNEXPECTED_TYPE');
      },
      undefined,
      async (r, step) => {
        if (step !== 1) return;
        b.send(headGrad(r, step, rng, { loss: -1 }));
        expect(await b.error()).toBe('BAD_LOSS');
        b.send(headGrad(r, step, rng, { count: B * T + 1 }));
        expect(await b.error()).toBe('BAD_COUNT');
        b.send(headGrad(r, step, rng, { shape: [B, T, 64] }));
        expect(await b.error()).toBe('BAD_SHAPE');
        b.send(withNaN(headGrad(r, step, rng), 'dh'));
        expect(await b.error()).toBe('NOT_FINITE');
      },
    );
    expect(bEnd.accepted).toBe(true);
    expect((await cTurn).accepted).toBe(true);

    const end = await b.next('round-end');
    expect(end.version).toBe(1);
    const rounds = cloud.store.rounds();
    const last = rounds[rounds.length - 1];
    expect(last.version).toBe(1);
    expect(last.participants.sort()).toEqual(
      [`edge:e1`, `edge:e2`, `user:${joinB.json.userId}`, `user:${joinC.json.userId}`].sort(),
    );
    expect(last.tokens).toBe(2 * STEPS * B * T);
    // the round's loss is the mean over b's and c's steps only: a's step went out with a
    const steps = summaries[0].turns.flatMap((t) => t.losses);
    expect(steps).toHaveLength(2 * STEPS);
    expect(last.loss).toBeCloseTo(steps.reduce((x, y) => x + y, 0) / steps.length, 5);
    // a's state went with it
    expect(edges[0].edge.users.has(a.userId)).toBe(false);

    const metrics = await (await fetch(`${cloud.url}/metrics`)).text();
    expect(metrics).toMatch(/^splitllm_cloud_version 1$/m);
    // a's step never reached its head-grad: the cloud counts the steps whose backward went out
    expect(metrics).toMatch(/^splitllm_cloud_steps_total 4$/m);
    const edgeMetrics = await (await fetch(`${edges[0].url}/metrics`)).text();
    expect(edgeMetrics).toMatch(/^splitllm_edge_users_dropped_total 1$/m);
  });

  it(`refuses a user adapter past the update-norm bound or missing a module, with a code; \
a valid one is taken`, async () => {
    const [, b, c] = users;
    const rng = new Rng(11);
    const bTurn = playTurn(b, edges[0].url, rng, undefined, async (round, tensors) => {
      const shifted = new Map([...tensors].map(([n, t]) => [n, { data: t.data.map((v) => v + 10), shape: t.shape }]));
      b.send(encodeMessage('userToEdge', 'adapter', { round, tokens: 1, steps: STEPS, tensors: shifted }));
      expect(await b.error()).toBe('ADAPTER_NORM');
      const missing = new Map([...tensors].slice(1));
      b.send(encodeMessage('userToEdge', 'adapter', { round, tokens: 1, steps: STEPS, tensors: missing }));
      expect(await b.error()).toBe('ADAPTER_MODULE');
    });
    const cTurn = playTurn(c, edges[1].url, rng);
    expect((await bTurn).accepted).toBe(true);
    expect((await cTurn).accepted).toBe(true);
    await c.next('round-end', (f) => f.version === 2);
    const last = cloud.store.rounds().find((r) => r.version === 2)!;
    expect(last.participants.sort()).toEqual(['edge:e1', 'edge:e2', `user:${b.userId}`, `user:${c.userId}`].sort());
  });
});

describe('an edge that dies', () => {
  let cloud: CloudServer;
  const edges: EdgeServer[] = [];
  afterAll(async () => {
    for (const e of edges) await e.close();
    await cloud?.close();
  });

  it('leaves its users to be reassigned to a live edge for the next round', async () => {
    cloud = await startCloudServer({
      modelDir: SHIPPED_MODEL,
      heldoutFile: HELDOUT,
      stateDir: join(tmp, 'edge-dies-state'),
      edgeSecret,
      operatorToken,
      seed: 2,
      train: { stepsPerUser: STEPS, batch: B, seq: T },
      logLevel: false,
      threads: 1,
    });
    edges.push(await startEdgeServer({ cloudUrl: cloud.url, edgeId: 'e1', edgeSecret, logLevel: false, threads: 1 }));
    edges.push(await startEdgeServer({ cloudUrl: cloud.url, edgeId: 'e2', edgeSecret, logLevel: false, threads: 1 }));
    const events: UserEvent[] = [];
    const first = await joinRun(cloud.url, await joinToken(cloud.url));
    const client = await startHeadlessUser({
      cloudUrl: cloud.url,
      credentials: first,
      dataFile: join(DATA, 'sotu/train/user-1.txt'),
      seed: 0,
      engine: 'reference',
      onEvent: (e) => events.push(e),
    });
    try {
      expect(client.edgeUrl).toBe(edges[0].url);
      await expect.poll(() => events.some((e) => e.type === 'turn-end' && e.accepted), { timeout: 60_000 }).toBe(true);
      await edges[0].close();
      await expect
        .poll(() => events.find((e) => e.type === 'reassigned'), { timeout: 60_000 })
        .toMatchObject({ edgeId: 'e2', edgeUrl: edges[1].url });
      const afterMove = events.length;
      await expect
        .poll(() => events.slice(afterMove).some((e) => e.type === 'turn-end' && e.accepted), { timeout: 60_000 })
        .toBe(true);
      await expect
        .poll(
          () =>
            cloud.store
              .rounds()
              .some((r) => r.participants.includes('edge:e2') && r.participants.includes(`user:${client.userId}`)),
          { timeout: 10_000 },
        )
        .toBe(true);
      // its first token (genuine, for e1) no longer names its edge: the cloud refuses it now
      expect(first.edgeId).toBe('e1');
      const stale = await post(`${cloud.url}/api/rejoin`, {
        userId: client.userId,
        userToken: first.userToken,
        edgeId: 'e1',
      });
      expect(stale.status).toBe(403);
      expect(stale.json.code).toBe('BAD_USER_TOKEN');
    } finally {
      client.stop();
    }
  });
});

describe('a cloud killed and restarted', () => {
  const parts: Part[] = [];
  afterAll(async () => {
    for (const p of parts.reverse()) await p.stop();
  });

  it('resumes at the last recorded round; the edge and its user carry on', async () => {
    const port = await freePort();
    const env = { SPLITLLM_EDGE_SECRET: edgeSecret, SPLITLLM_OPERATOR_TOKEN: operatorToken };
    const logDir = join(tmp, 'restart-logs');
    const cloudArgs = [
      'cloud',
      '--state',
      join(tmp, 'restart-state'),
      '--port',
      String(port),
      '--steps-per-user',
      '3',
      '--threads',
      '1',
    ];
    const rounds: number[] = [];
    const watch = (p: Part) => p.onLine((j) => j.event === 'round' && rounds.push(Number(j.version)));
    let cloud = startPart('cloud', cloudArgs, { logDir, env });
    parts.push(cloud);
    watch(cloud);
    const url = String((await cloud.ready).url);
    const edge = startPart('edge', ['edge', '--cloud', url, '--id', 'e1', '--threads', '1'], { logDir, env });
    parts.push(edge);
    await edge.ready;
    const user = startPart(
      'user',
      ['user', '--cloud', url, '--data', join(DATA, 'sotu/train/user-1.txt'), '--engine', 'reference'],
      { logDir, env: { SPLITLLM_JOIN_TOKEN: await joinToken(url) } },
    );
    parts.push(user);
    await user.ready;
    await expect.poll(() => rounds.length, { timeout: 120_000, interval: 100 }).toBeGreaterThanOrEqual(2);

    cloud.child.kill('SIGKILL');
    await cloud.exited;
    const recorded = (await (async () => {
      // what the database holds is what counts, not what was printed
      const { RoundStore } = await import('@splitllm/cloud-server');
      const store = RoundStore.open(join(tmp, 'restart-state'), { baseModel: SHIPPED_MODEL, nLayer: 4 });
      const v = store.latest().version;
      store.close();
      return v;
    })()) as number;
    expect(recorded).toBeGreaterThanOrEqual(2);

    cloud = startPart('cloud', cloudArgs, { logDir, env });
    parts.push(cloud);
    rounds.length = 0;
    watch(cloud);
    const ready = await cloud.ready;
    expect(ready.version).toBe(recorded);
    // the edge registers again by itself and the user, still in its queue, trains the next round
    await expect.poll(() => rounds[0], { timeout: 120_000, interval: 100 }).toBe(recorded + 1);
    const history = (await (await fetch(`${url}/api/rounds`)).json()) as { rounds: Array<{ version: number }> };
    expect(history.rounds.map((r) => r.version)).toEqual(Array.from({ length: recorded + 2 }, (_, i) => i));
  });
});
