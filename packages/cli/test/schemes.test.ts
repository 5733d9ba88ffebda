/**
 * The training schemes (`--scheme`, TrainingScheme in packages/wire) on real servers: a cloud and
 * edges on loopback (Fastify, onnxruntime sessions, a database file) driven by raw protocol users
 * with no trainer, which send exactly what a test decides, so what each scheme does with them can
 * be checked frame by frame:
 *  - 'sfl': an edge starts every chosen user's turn at once and keeps a copy per user; a user who
 *    drops mid-turn takes only its own steps with it;
 *  - 'sequential': each user starts from the adapter the user before it left, the round's user part
 *    is the last user's adapter, and one edge trains per round, the edges taking turns.
 * That 'sequential' and 'sfl' with one user equal train-central is in simulate.test.ts.
 */
import { startCloudServer, type CloudServer, type RoundSummary } from '@splitllm/cloud-server';
import { startEdgeServer, type EdgeServer } from '@splitllm/edge-server';
import { decodeExpected, encodeMessage, parseRunManifest, type TrainingScheme } from '@splitllm/wire';
import { loraParameterCount, Rng } from '@splitllm/model';
import { randomToken } from '@splitllm/wire/node';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { post } from './net';
import { activationsFrame, headGradFrame, RawUser } from './raw-user';
import { HELDOUT, SHIPPED_MODEL } from './run-cli';

const tmp = mkdtempSync(join(tmpdir(), 'splitllm-schemes-'));
const edgeSecret = randomToken();
const operatorToken = randomToken();
const B = 2;
const T = 16;
const D = 128; // the shipped model's width
const STEPS = 2;

type Tensors = Map<string, { data: Float32Array; shape: number[] }>;

interface System {
  cloud: CloudServer;
  edges: EdgeServer[];
  users: RawUser[];
  summaries: RoundSummary[];
}

let sys: System | undefined;
/** each test's own state directory: a reused one would resume its run */
let runs = 0;

afterEach(async () => {
  if (!sys) return;
  for (const u of sys.users) u.ws.terminate();
  for (const e of sys.edges) await e.close();
  await sys.cloud.close();
  sys = undefined;
});

async function start(scheme: TrainingScheme, usersPerEdge: number, minUsers: number, edgeIds: string[]) {
  const summaries: RoundSummary[] = [];
  const cloud = await startCloudServer({
    modelDir: SHIPPED_MODEL,
    heldoutFile: HELDOUT,
    stateDir: join(tmp, `state-${scheme}-${++runs}`),
    edgeSecret,
    operatorToken,
    seed: 1,
    // plain token-weighted means: the checks below compare adapters exactly
    aggregation: 'fedavg',
    train: { stepsPerUser: STEPS, usersPerEdge, batch: B, seq: T, scheme },
    // the round waits for this many waiting users: the test decides when it starts
    minUsers,
    onRound: (r) => summaries.push(r),
    logLevel: false,
    threads: 1,
  });
  const edges: EdgeServer[] = [];
  for (const edgeId of edgeIds) {
    edges.push(await startEdgeServer({ cloudUrl: cloud.url, edgeId, edgeSecret, logLevel: false, threads: 1 }));
  }
  sys = { cloud, edges, users: [], summaries };
  return sys;
}

/** A user joins (the cloud assigns its edge) and says hello; its socket is open and welcomed. */
async function joinUser(s: System): Promise<RawUser & { edgeId: string }> {
  const token = (await post(`${s.cloud.url}/api/join-tokens`, {}, operatorToken)).json.token;
  const j = (await post(`${s.cloud.url}/api/join`, { joinToken: token })).json;
  const edge = s.edges.find((e) => e.edge.edgeId === j.edgeId)!;
  const u = await RawUser.connect(edge.url, j.userId);
  s.users.push(u);
  u.send(encodeMessage('userToEdge', 'hello', { userId: j.userId, token: j.userToken }));
  await u.next('welcome');
  return Object.assign(u, { edgeId: j.edgeId as string });
}

/** Plays the steps of a turn that has begun, labels on the device, as a tab without a model would. */
async function playSteps(u: RawUser, round: number, rng: Rng): Promise<void> {
  for (let step = 1; step <= STEPS; step++) {
    const h = Float32Array.from({ length: B * T * D }, () => rng.normal() * 0.5);
    u.send(activationsFrame(round, step, h, [B, T, D]));
    expect((await u.next('hidden')).step).toBe(step);
    const dh = Float32Array.from({ length: B * T * D }, () => rng.normal() * 1e-3);
    u.send(headGradFrame(round, step, dh, [B, T, D]));
    expect((await u.next('backward')).step).toBe(step);
  }
}

/** The user adapter of a version, as the edge serves it. */
async function userAdapter(edgeUrl: string, version: number): Promise<Tensors> {
  const res = await fetch(`${edgeUrl}/api/adapters/user?version=${version}`);
  const file = decodeExpected('adapterFile', 'adapter', new Uint8Array(await res.arrayBuffer()));
  return new Map([...file.tensors].map(([n, t]) => [n, { data: t.data, shape: t.shape }]));
}

/** `tensors` moved by `delta` per element: a trained adapter within the update-norm bound for a small delta. */
function shifted(tensors: Tensors, delta: number): Tensors {
  return new Map([...tensors].map(([n, t]) => [n, { data: t.data.map((v) => v + delta), shape: t.shape }]));
}

function sendAdapter(u: RawUser, round: number, tensors: Tensors): void {
  u.send(encodeMessage('userToEdge', 'adapter', { round, tokens: B * T * STEPS, steps: STEPS, tensors }));
}

async function manifestOf(edgeUrl: string) {
  return parseRunManifest(await (await fetch(`${edgeUrl}/api/manifest`)).json());
}

describe("scheme 'sfl'", () => {
  it('starts all chosen users of an edge at once, a copy each; a user who drops takes only its own steps', async () => {
    const s = await start('sfl', 3, 3, ['e1']);
    const [a, b, c] = [await joinUser(s), await joinUser(s), await joinUser(s)];
    // every turn begins before any step: with one user at a time, b's and c's would wait for a's end
    const turns = await Promise.all([a.next('turn'), b.next('turn'), c.next('turn')]);
    const round = turns[0].round;
    expect(turns.map((t) => t.round)).toEqual([round, round, round]);
    // the turns start from the global version (only 'sequential' hands an adapter on)
    expect(turns.map((t) => t.tensors.size)).toEqual([0, 0, 0]);
    // c's first step is in flight at the cloud while a and b train; then c's process dies
    const rng = new Rng(5);
    c.send(
      activationsFrame(
        round,
        1,
        Float32Array.from({ length: B * T * D }, () => rng.normal()),
        [B, T, D],
      ),
    );
    await c.next('hidden');
    const global = await userAdapter(s.edges[0].url, 0);
    await Promise.all([playSteps(a, round, new Rng(1)), playSteps(b, round, new Rng(2))]);
    c.ws.terminate();
    sendAdapter(a, round, shifted(global, 1e-4));
    sendAdapter(b, round, shifted(global, 3e-4));
    expect((await a.next('turn-end')).accepted).toBe(true);
    expect((await b.next('turn-end')).accepted).toBe(true);
    await a.next('round-end');

    const [summary] = s.summaries;
    expect(summary.scheme).toBe('sfl');
    expect(summary.participants.sort()).toEqual(['edge:e1', `user:${a.userId}`, `user:${b.userId}`].sort());
    expect(summary.tokens).toBe(2 * STEPS * B * T);
    expect(summary.turns.map((t) => t.userId).sort()).toEqual([a.userId, b.userId].sort());
    // the user part is the token-weighted mean of a's and b's adapters (equal tokens): global + 2e-4
    const v1 = await userAdapter(s.edges[0].url, 1);
    for (const [name, t] of v1) {
      const g = global.get(name)!.data;
      for (let i = 0; i < t.data.length; i += 97) expect(t.data[i] - g[i]).toBeCloseTo(2e-4, 6);
    }
    // each tier held a LoRA copy, its AdamW moments and a snapshot-free turn per user: at least 3 of them at once
    const { manifest, config } = await manifestOf(s.edges[0].url);
    const { k, m } = manifest.plan;
    const copy = (from: number, to: number) => 3 * 4 * loraParameterCount(config, manifest.lora, from, to);
    expect(summary.memory.cloud.heldPeak).toBeGreaterThanOrEqual(3 * copy(m, config.nLayer));
    expect(summary.memory.edges.e1.heldPeak).toBeGreaterThanOrEqual(3 * copy(k, m));
    expect(summary.memory.edges.e1.peakRss).toBeGreaterThan(0);
    expect(summary.userEdgeBytes).toBeGreaterThan(0);
    expect(summary.edgeCloudBytes).toBeGreaterThan(0);
  });
});

describe("scheme 'sequential'", () => {
  it(`hands each user the adapter the one before it left, keeps the last as the round's, \
and trains one edge per round`, async () => {
    const s = await start('sequential', 2, 2, ['e1', 'e2']);
    // the cloud assigns joins to the edge with the fewest users: a and c on e1, b on e2
    const a = await joinUser(s);
    const b = await joinUser(s);
    const c = await joinUser(s);
    expect([a.edgeId, b.edgeId, c.edgeId]).toEqual(['e1', 'e2', 'e1']);
    const e1 = s.edges[0].url;
    const global = await userAdapter(e1, 0);

    // round 1 runs on e1 alone: a, then c starting from a's adapter
    const aTurn = await a.next('turn');
    const round = aTurn.round;
    expect(aTurn.tensors.size).toBe(0);
    await playSteps(a, round, new Rng(1));
    const fromA = shifted(global, 1e-4);
    sendAdapter(a, round, fromA);
    expect((await a.next('turn-end')).accepted).toBe(true);
    const cTurn = await c.next('turn');
    expect([...cTurn.tensors.keys()].sort()).toEqual([...fromA.keys()].sort());
    for (const [name, t] of cTurn.tensors) expect(t.data).toEqual(fromA.get(name)!.data);
    await playSteps(c, round, new Rng(3));
    const fromC = shifted(fromA, -3e-4);
    sendAdapter(c, round, fromC);
    expect((await c.next('turn-end')).accepted).toBe(true);
    await a.next('round-end', (f) => f.round === round);
    // b, on e2, had no turn in round 1
    expect(b.seen.some((f) => f.type === 'turn')).toBe(false);
    const [r1] = s.summaries;
    expect(r1.scheme).toBe('sequential');
    expect(r1.participants.sort()).toEqual(['edge:e1', `user:${a.userId}`, `user:${c.userId}`].sort());
    // the round's user part is c's adapter itself, not a mean of a's and c's
    const v1 = await userAdapter(e1, 1);
    for (const [name, t] of v1) expect(t.data).toEqual(fromC.get(name)!.data);

    // round 2 runs on e2 (the edges take turns): b starts from the global version 1
    const bTurn = await b.next('turn');
    expect(bTurn.round).toBe(round + 1);
    expect(bTurn.version).toBe(1);
    expect(bTurn.tensors.size).toBe(0);
    await playSteps(b, bTurn.round, new Rng(2));
    sendAdapter(b, bTurn.round, shifted(v1, 2e-4));
    expect((await b.next('turn-end')).accepted).toBe(true);
    await b.next('round-end', (f) => f.round === bTurn.round);
    expect(s.summaries[1].participants.sort()).toEqual(['edge:e2', `user:${b.userId}`].sort());
  });

  it("refuses a user's adapter that strays from the adapter it was handed past the update-norm bound", async () => {
    const s = await start('sequential', 2, 2, ['e1']);
    const [a, c] = [await joinUser(s), await joinUser(s)];
    const global = await userAdapter(s.edges[0].url, 0);
    const round = (await a.next('turn')).round;
    await playSteps(a, round, new Rng(1));
    // a moved 1.5 lr per step per element (the bound is 2 per element over a turn's steps)
    const { manifest } = await manifestOf(s.edges[0].url);
    const lr = manifest.train.adamw.lr;
    const fromA = shifted(global, 1.5 * STEPS * lr);
    sendAdapter(a, round, fromA);
    expect((await a.next('turn-end')).accepted).toBe(true);
    await c.next('turn');
    await playSteps(c, round, new Rng(3));
    // c moves 2.5 lr per step per element back: within the bound from the global version (1 lr
    // per step away), past it from where c started, so refused
    sendAdapter(c, round, shifted(fromA, -2.5 * STEPS * lr));
    expect(await c.error()).toBe('ADAPTER_NORM');
    sendAdapter(c, round, shifted(fromA, 1e-4));
    expect((await c.next('turn-end')).accepted).toBe(true);
  });
});
