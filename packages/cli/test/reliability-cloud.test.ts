/**
 * The cloud under attack, as a real process (started by the launcher, as `simulate` does) with a
 * real edge process and raw protocol users on loopback: what an unauthenticated caller can make
 * it hold, what it writes down (log, database, file modes), what it tells the public, a user
 * poisoning the global adapter through the update checks, and its rate limits. Every loop is
 * bounded in count; every wait has a timeout.
 */
import { decodeExpected, encodeMessage } from '@splitllm/wire';
import { Rng } from '@splitllm/model';
import { randomToken } from '@splitllm/wire/node';
import { mkdtempSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { startPart, type Part } from '../src/launcher';
import { peakRss } from './net';
import { post } from './net';
import { activationsFrame, headGradFrame, RawUser } from './raw-user';

const tmp = mkdtempSync(join(tmpdir(), 'splitllm-reliability-cloud-'));
const stateDir = join(tmp, 'state');
const logDir = join(tmp, 'logs');
const edgeSecret = randomToken();
const operatorToken = randomToken();
const B = 2;
const T = 16;
const D = 128; // the shipped model's width
const STEPS = 20; // the noise attack is scaled to the norm bound of 20 steps
const LR = 5e-3; // the run's default learning rate: the bound is computed from it
const MiB = 1 << 20;

type Tensors = Map<string, { data: Float32Array; shape: number[] }>;

/**
 * Plays one turn, labels on the device (the run's default): random activations for every step, a
 * small random head gradient for each last hidden state, then the adapter `upload` makes of the
 * global user part the edge serves.
 */
async function playTurn(u: RawUser, edgeUrl: string, rng: Rng, upload: (g: Tensors) => Tensors) {
  const turn = await u.next('turn');
  for (let step = 1; step <= turn.steps; step++) {
    const h = Float32Array.from({ length: B * T * D }, () => rng.normal() * 0.5);
    u.ws.send(activationsFrame(turn.round, step, h, [B, T, D]));
    expect((await u.next('hidden')).step).toBe(step);
    const dh = Float32Array.from({ length: B * T * D }, () => rng.normal() * 1e-3);
    u.ws.send(headGradFrame(turn.round, step, dh, [B, T, D]));
    expect((await u.next('backward')).step).toBe(step);
  }
  const res = await fetch(`${edgeUrl}/api/adapters/user?version=${turn.version}`);
  const file = decodeExpected('adapterFile', 'adapter', new Uint8Array(await res.arrayBuffer()));
  const global: Tensors = new Map([...file.tensors].map(([n, t]) => [n, { data: t.data, shape: t.shape }]));
  const tensors = upload(global);
  u.ws.send(
    encodeMessage('userToEdge', 'adapter', { round: turn.round, tokens: B * T * STEPS, steps: STEPS, tensors }),
  );
  return u.next('turn-end');
}

/** The global plus random noise whose norm is 0.99x the AdamW update-norm bound of the turn. */
function noiseAttack(global: Tensors, rng: Rng): Tensors {
  let n = 0;
  for (const t of global.values()) n += t.data.length;
  const bound = 2 * LR * STEPS * Math.sqrt(n);
  const noise = [...global.values()].map((t) => Float32Array.from(t.data, () => rng.normal()));
  const norm = Math.sqrt(noise.reduce((s, a) => s + a.reduce((x, v) => x + v * v, 0), 0));
  const scale = (0.99 * bound) / norm;
  return new Map(
    [...global].map(([name, t], i) => [
      name,
      { shape: t.shape, data: Float32Array.from(t.data, (v, j) => v + scale * noise[i][j]) },
    ]),
  );
}

/**
 * POSTs a body announced as `total` bytes (with a Content-Length, or chunked) without a token on
 * a raw socket: sends its first MiB and waits (at most 10 s) for an answer, which a server that
 * checks the token first gives at once, and one that reads the body first never does; then goes
 * on sending the rest, 1 MiB at a time, until the server's close stops it. Returns the answer
 * and how many bytes were written in all.
 */
function unauthenticatedUpload(url: string, total: number, chunked: boolean) {
  return new Promise<{ status: number; head: string; body: string; atAnswer: number; written: number }>((resolve) => {
    const u = new URL(url);
    const sock = connect(Number(u.port), u.hostname);
    const head =
      `POST ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\nContent-Type: application/octet-stream\r\n` +
      (chunked ? 'Transfer-Encoding: chunked\r\n\r\n' : `Content-Length: ${total}\r\n\r\n`);
    const chunk = Buffer.alloc(MiB, 7);
    const frame = chunked ? Buffer.concat([Buffer.from(`${MiB.toString(16)}\r\n`), chunk, Buffer.from('\r\n')]) : chunk;
    let written = 0;
    let atAnswer = -1;
    let got = '';
    let failed = false;
    let answered: () => void = () => undefined;
    const answer = new Promise<void>((res) => {
      answered = res;
      setTimeout(res, 10_000);
    });
    sock.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      if (atAnswer < 0) atAnswer = written;
      answered();
    });
    // EPIPE/ECONNRESET: the server closed while we were still sending, as it should
    sock.on('error', () => (failed = true));
    sock.on('close', () => {
      const [h, ...rest] = got.split('\r\n\r\n');
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(h)?.[1] ?? 0);
      resolve({ status, head: h.toLowerCase(), body: rest.join('\r\n\r\n'), atAnswer, written });
    });
    const pump = () => {
      while (!failed && !sock.destroyed && written < total) {
        written += MiB;
        if (!sock.write(frame)) return void sock.once('drain', pump);
      }
      if (failed) return;
      if (chunked) sock.end('0\r\n\r\n');
      else sock.end();
    };
    // the head alone first: the answer must come before any of the body was sent (a server
    // that waited for the body would answer nothing within the 10 s). Sending body bytes before
    // the answer would also race the close: a socket closed with unread input sends a reset,
    // which can drop the answer on our side before we read it.
    sock.once('connect', async () => {
      sock.write(head);
      await answer;
      pump();
    });
  });
}

describe('the cloud as a process, attacked', () => {
  const parts: Part[] = [];
  let cloud: Part;
  let cloudUrl: string;
  let edgeUrl: string;
  const users: RawUser[] = [];
  const userIds: string[] = [];

  beforeAll(async () => {
    const env = { SPLITLLM_EDGE_SECRET: edgeSecret, SPLITLLM_OPERATOR_TOKEN: operatorToken };
    cloud = startPart(
      'cloud',
      [
        'cloud',
        '--state',
        stateDir,
        '--aggregation',
        'gate-fedavg',
        '--steps-per-user',
        String(STEPS),
        '--users-per-edge',
        '2',
        '--min-users',
        '2',
        '--batch-size',
        String(B),
        '--seq-len',
        String(T),
        '--threads',
        '1',
      ],
      { logDir, env },
    );
    parts.push(cloud);
    cloudUrl = String((await cloud.ready).url);
    const edge = startPart('edge', ['edge', '--cloud', cloudUrl, '--id', 'e1', '--threads', '1'], { logDir, env });
    parts.push(edge);
    edgeUrl = String((await edge.ready).url);
  }, 240_000);

  afterAll(async () => {
    for (const u of users) u.ws.terminate();
    for (const p of parts.reverse()) await p.stop();
  });

  it('refuses an unauthenticated 200 MiB upload with 401 before reading it, and does not grow', async () => {
    const pid = cloud.child.pid!;
    const before = peakRss(pid);
    const answers = [];
    for (const chunked of [false, true]) {
      const a = await unauthenticatedUpload(`${cloudUrl}/api/rounds/1/update`, 200 * MiB, chunked);
      expect(a.status).toBe(401);
      expect(a.body).toContain('"code":"BAD_EDGE_TOKEN"');
      expect(a.head).toContain('connection: close');
      // answered on the head alone, and the connection was gone long before the body was through
      expect(a.atAnswer).toBe(0);
      answers.push(a.written);
    }
    const grew = peakRss(pid) - before;
    const cloudLog = readFileSync(cloud.logFile, 'utf8');
    expect(cloudLog).not.toContain('FST_ERR_CTP_BODY_TOO_LARGE');
    // what the socket buffers took before the answer, not the body
    expect(grew).toBeLessThan(32 * MiB);
    expect(Math.max(...answers)).toBeLessThan(200 * MiB);
    process.stdout.write(
      `unauthenticated 200 MiB upload: 401 on the head; the connection closed after ${answers.join(' / ')} bytes ` +
        `(content-length / chunked); cloud VmHWM grew ${(grew / MiB).toFixed(1)} MiB\n`,
    );
    // the edge socket without a token: refused in the upgrade request
    const ws = new WebSocket(`${cloudUrl.replace(/^http/, 'ws')}/ws/edge`);
    const status = await new Promise<number>((res) =>
      ws.on('unexpected-response', (_req, r) => res(r.statusCode ?? 0)),
    );
    expect(status).toBe(401);
  });

  it('keeps join tokens and bearer tokens out of cloud.log and plain join tokens out of the database', async () => {
    const issued = await post(`${cloudUrl}/api/join-tokens`, {}, operatorToken);
    expect(issued.status).toBe(200);
    const unused = issued.json.token;
    // the page's join link, and a query string on an API route
    expect((await fetch(`${cloudUrl}/?join=${unused}`)).status).toBe(404);
    expect((await fetch(`${cloudUrl}/api/status?join=${unused}`)).status).toBe(200);
    await expect.poll(() => readFileSync(cloud.logFile, 'utf8').includes('[redacted]'), { timeout: 10_000 }).toBe(true);
    const log = readFileSync(cloud.logFile, 'utf8');
    expect(log).toContain('"url":"/?[redacted]"');
    for (const secret of [unused, operatorToken, edgeSecret]) expect(log).not.toContain(secret);
    // the database, its WAL included, never holds the token itself
    for (const f of readdirSync(stateDir).filter((n) => n.startsWith('state.db'))) {
      expect(readFileSync(join(stateDir, f)).includes(Buffer.from(unused))).toBe(false);
    }
  });

  it('refuses a poisoning user at the gate with the reason recorded; the honest user of the round counts', async () => {
    for (let i = 0; i < 2; i++) {
      const token = (await post(`${cloudUrl}/api/join-tokens`, {}, operatorToken)).json.token;
      const j = await post(`${cloudUrl}/api/join`, { joinToken: token });
      expect(j.status).toBe(200);
      const u = await RawUser.connect(j.json.edgeUrl, j.json.userId);
      users.push(u);
      userIds.push(j.json.userId);
      u.ws.send(encodeMessage('userToEdge', 'hello', { userId: j.json.userId, token: j.json.userToken }));
      await u.next('welcome');
    }
    const [honest, attacker] = users;
    const rng = new Rng(3);
    const [hEnd, aEnd] = await Promise.all([
      playTurn(honest, edgeUrl, new Rng(4), (g) => g),
      playTurn(attacker, edgeUrl, new Rng(5), (g) => noiseAttack(g, rng)),
    ]);
    // both pass the edge's and the cloud's update checks: the noise is within the norm bound
    expect(hEnd.accepted).toBe(true);
    expect(aEnd.accepted).toBe(true);
    await honest.next('round-end');

    const admin = await fetch(`${cloudUrl}/api/admin/rounds`, {
      headers: { authorization: `Bearer ${operatorToken}` },
    });
    expect(admin.status).toBe(200);
    const page = (await admin.json()) as {
      rounds: Array<{
        version: number;
        participants: string[];
        refused: Array<{ from: string; code: string; reason: string; globalLoss: number; loss: number }>;
      }>;
    };
    const r1 = page.rounds.find((r) => r.version === 1)!;
    expect(r1.participants).toEqual(expect.arrayContaining(userIds.map((id) => `user:${id}`)));
    const refusal = r1.refused.find((x) => x.from === `user:${userIds[1]}`);
    expect(refusal).toMatchObject({ code: 'GATE_LOSS' });
    expect(refusal!.loss - refusal!.globalLoss).toBeGreaterThan(0.25);
    expect(refusal!.reason).toMatch(/exceeds the margin/);
    expect(r1.refused.map((x) => x.from)).not.toContain(`user:${userIds[0]}`);
    await expect
      .poll(() => readFileSync(cloud.logFile, 'utf8').includes('update refused by the aggregation strategy'))
      .toBe(true);
    process.stdout.write(
      `gate: ${refusal!.from} refused, held-out loss ` +
        `${refusal!.globalLoss.toFixed(3)} -> ${refusal!.loss.toFixed(3)}\n`,
    );
  }, 300_000);

  it('tells the public counts and versions, not ids, URLs or paths, a page at a time', async () => {
    const status = await (await fetch(`${cloudUrl}/api/status`)).text();
    const rounds = await (await fetch(`${cloudUrl}/api/rounds?limit=1`)).text();
    for (const body of [status, rounds]) {
      for (const secret of [...userIds, edgeUrl, stateDir, 'e1', 'user:']) expect(body).not.toContain(secret);
    }
    const s = JSON.parse(status) as { version: number; edges: { registered: number; live: number } };
    expect(s.version).toBe(1);
    expect(s.edges).toMatchObject({ registered: 1, live: 1 });
    const page = JSON.parse(rounds) as { rounds: Array<{ version: number; refused: number }>; next: number };
    expect(page.rounds.map((r) => r.version)).toEqual([1]);
    expect(page.rounds[0].refused).toBeGreaterThanOrEqual(1);
    expect(page.next).toBe(1);
    const older = (await (await fetch(`${cloudUrl}/api/rounds?limit=1&before=${page.next}`)).json()) as {
      rounds: Array<{ version: number }>;
      next: number | null;
    };
    expect(older.rounds.map((r) => r.version)).toEqual([0]);
    expect(older.next).toBeNull();
    expect((await fetch(`${cloudUrl}/api/rounds?limit=100000`)).status).toBe(400);
    // the detail is the operator's
    expect((await fetch(`${cloudUrl}/api/admin/rounds`)).status).toBe(401);
    const adminStatus = await fetch(`${cloudUrl}/api/admin/status`, {
      headers: { authorization: `Bearer ${operatorToken}` },
    });
    expect(((await adminStatus.json()) as { edges: Array<{ url: string }> }).edges[0].url).toBe(edgeUrl);
  });

  it('keeps its state directory 0700 and its database and adapter files 0600', () => {
    const mode = (p: string) => statSync(p).mode & 0o777;
    const dirs = [stateDir, join(stateDir, 'adapters')];
    const files: string[] = [];
    for (const n of readdirSync(stateDir)) if (n.startsWith('state.db')) files.push(join(stateDir, n));
    for (const r of readdirSync(join(stateDir, 'adapters'))) {
      dirs.push(join(stateDir, 'adapters', r));
      for (const f of readdirSync(join(stateDir, 'adapters', r))) files.push(join(stateDir, 'adapters', r, f));
    }
    expect(files.length).toBeGreaterThanOrEqual(5); // state.db, -wal, -shm, two versions' files
    for (const d of dirs) expect([d, mode(d).toString(8)]).toEqual([d, '700']);
    for (const f of files) expect([f, mode(f).toString(8)]).toEqual([f, '600']);
  });

  // last: it spends this address's join allowance
  it('rate-limits join and join-token guesses per address (429 RATE_LIMITED); not the operator', async () => {
    const codes: number[] = [];
    for (let i = 0; i < 25; i++) codes.push((await post(`${cloudUrl}/api/join`, { joinToken: 'f'.repeat(32) })).status);
    // 20 a minute: the joins of the test before count too (unless its minute has passed)
    const refused = codes.filter((c) => c === 403).length;
    expect(refused).toBeGreaterThanOrEqual(20 - userIds.length);
    expect(refused).toBeLessThanOrEqual(20);
    expect(codes).toEqual([...Array(refused).fill(403), ...Array(25 - refused).fill(429)]);
    const limited = await post(`${cloudUrl}/api/join`, { joinToken: 'f'.repeat(32) });
    expect(limited.json.code).toBe('RATE_LIMITED');
    const guesses: number[] = [];
    for (let i = 0; i < 32; i++) guesses.push((await post(`${cloudUrl}/api/join-tokens`, {}, `guess-${i}`)).status);
    expect(guesses.filter((c) => c === 401)).toHaveLength(30);
    expect(guesses.slice(30)).toEqual([429, 429]);
    expect((await post(`${cloudUrl}/api/join-tokens`, {}, operatorToken)).status).toBe(200);
  });
});
