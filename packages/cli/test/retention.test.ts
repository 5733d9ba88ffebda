/**
 * Bounded state: a real cloud (Fastify, onnxruntime, a database file in a temporary state dir),
 * a real edge and a headless user drive 30 short rounds; the cloud's retention policy leaves only
 * the policy's adapter directories on disk, every round's row keeps its figures, a kept version
 * downloads and an evicted one answers VERSION_EVICTED, and a new cloud resumes the state.
 */
import { retainedVersions, startCloudServer, type CloudServer } from '@splitllm/cloud-server';
import { startEdgeServer, type EdgeServer } from '@splitllm/edge-server';
import { joinRun } from '@splitllm/user-client';
import { startHeadlessUser } from '@splitllm/user-client/node';
import { decodeExpected } from '@splitllm/wire';
import { randomToken } from '@splitllm/wire/node';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { DATA, SHIPPED_MODEL } from './run-cli';

const tmp = mkdtempSync(join(tmpdir(), 'splitllm-retention-'));
const state = join(tmp, 'state');
const edgeSecret = randomToken();
const operatorToken = randomToken();
const KEEP = 5;
const ROUNDS = 30;

/** The cloud, an edge and one headless user, until the cloud reaches `maxRounds`. */
async function runUntil(maxRounds: number): Promise<CloudServer> {
  const cloud = await startCloudServer({
    modelDir: SHIPPED_MODEL,
    stateDir: state,
    edgeSecret,
    operatorToken,
    seed: 3,
    aggregation: 'fedavg',
    train: { stepsPerUser: 1, batch: 2, seq: 16 },
    maxRounds,
    retention: { keepLast: KEEP, keepHourly: true },
    logLevel: false,
    threads: 1,
  });
  let edge: EdgeServer | undefined;
  let stopUser = () => undefined as unknown;
  try {
    edge = await startEdgeServer({ cloudUrl: cloud.url, edgeId: 'e1', edgeSecret, logLevel: false, threads: 1 });
    const jt = await fetch(`${cloud.url}/api/join-tokens`, {
      method: 'POST',
      headers: { authorization: `Bearer ${operatorToken}` },
    });
    const credentials = await joinRun(cloud.url, ((await jt.json()) as { token: string }).token);
    const user = await startHeadlessUser({
      cloudUrl: cloud.url,
      credentials,
      dataFile: join(DATA, 'sotu/train/user-1.txt'),
      seed: 0,
      engine: 'reference',
    });
    stopUser = () => user.stop();
    await vi.waitFor(() => expect(cloud.coordinator.version).toBe(maxRounds), { timeout: 240_000, interval: 100 });
  } catch (e) {
    await cloud.close();
    throw e;
  } finally {
    stopUser();
    await edge?.close();
  }
  return cloud;
}

const dirs = () =>
  readdirSync(join(state, 'adapters'))
    .filter((d) => d.startsWith('round-'))
    .map((d) => Number(d.slice('round-'.length)))
    .sort((a, b) => a - b);

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

describe('retention of adapter versions', () => {
  let cloud: CloudServer | undefined;
  afterAll(async () => {
    await cloud?.close();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('keeps the policy, the latest two and the hourly ones, whatever the setting', () => {
    const t0 = Date.parse('2025-01-01T00:00:00.000Z');
    const at = (minutes: number) => new Date(t0 + minutes * 60_000).toISOString();
    // one version every 10 minutes for 3 hours: 0 at 0 min, 6 at 60 min, 12 at 120 min, 18 at 180 min
    const live = range(0, 18).map((v) => ({ version: v, finishedAt: at(v * 10) }));
    const sorted = (s: Set<number>) => [...s].sort((a, b) => a - b);
    expect(sorted(retainedVersions(live, { keepLast: 3, keepHourly: true }, at(0)))).toEqual([0, 6, 12, 16, 17, 18]);
    expect(sorted(retainedVersions(live, { keepLast: 3, keepHourly: false }, at(0)))).toEqual([16, 17, 18]);
    // the latest and the one before it stay even with keepLast 1
    expect(sorted(retainedVersions(live, { keepLast: 1, keepHourly: false }, at(0)))).toEqual([17, 18]);
    expect(retainedVersions(live, { keepLast: 0, keepHourly: false }, at(0)).size).toBe(live.length);
    // with the hourly ones already the only survivors of their hours, the choice does not move
    const after = live.filter((v) => [0, 6, 12, 16, 17, 18].includes(v.version));
    expect(sorted(retainedVersions(after, { keepLast: 3, keepHourly: true }, at(0)))).toEqual([0, 6, 12, 16, 17, 18]);
  });

  it(`after ${ROUNDS} versions only the policy's directories remain; rows, downloads and resume`, async () => {
    cloud = await runUntil(ROUNDS);
    // every version of this run lies within its first hour: version 0 is that hour's; then the last KEEP
    const kept = [0, ...range(ROUNDS - KEEP + 1, ROUNDS)];
    expect(dirs()).toEqual(kept);

    // every row stays, with its figures; the evicted ones say when they were evicted
    const rows = cloud.store.rounds();
    expect(rows.map((r) => r.version)).toEqual(range(0, ROUNDS));
    for (const r of rows.filter((x) => x.version > 0)) {
      expect(r.tokens, `version ${r.version}`).toBeGreaterThan(0);
      expect(r.loss, `version ${r.version}`).toEqual(expect.any(Number));
      expect(r.evictedAt === null, `version ${r.version}`).toBe(kept.includes(r.version));
    }
    // the operator's round list still lists an evicted version's figures
    const admin = await fetch(`${cloud.url}/api/admin/rounds?limit=${ROUNDS + 1}`, {
      headers: { authorization: `Bearer ${operatorToken}` },
    });
    const listed = ((await admin.json()) as { rounds: Array<{ version: number; tokens: number; loss: number }> })
      .rounds;
    expect(listed).toHaveLength(ROUNDS + 1);
    expect(listed.find((r) => r.version === 10)).toMatchObject({ tokens: rows[10].tokens, loss: rows[10].loss });

    // a kept older version downloads; an evicted one answers a clear code
    const get = (v: number) =>
      fetch(`${cloud!.url}/api/admin/adapters/${v}`, { headers: { authorization: `Bearer ${operatorToken}` } });
    for (const v of [0, ROUNDS - 1, ROUNDS]) {
      const res = await get(v);
      expect(res.status, `version ${v}`).toBe(200);
      const file = decodeExpected('adapterFile', 'adapter', new Uint8Array(await res.arrayBuffer()));
      expect(file.round).toBe(v);
      expect(file.tensors.size).toBeGreaterThan(0);
    }
    const evicted = await get(10);
    expect(evicted.status).toBe(410);
    expect(((await evicted.json()) as { code: string }).code).toBe('VERSION_EVICTED');
    const never = await get(ROUNDS + 5);
    expect(never.status).toBe(404);
    expect(((await never.json()) as { code: string }).code).toBe('UNKNOWN_VERSION');
    const noToken = await fetch(`${cloud.url}/api/admin/adapters/0`);
    expect(noToken.status).toBe(401);

    // a new cloud on the same state resumes at the latest version and goes on, still within the policy
    await cloud.close();
    cloud = undefined;
    cloud = await runUntil(ROUNDS + 1);
    expect(cloud.store.rounds()).toHaveLength(ROUNDS + 2);
    expect(dirs()).toEqual([0, ...range(ROUNDS - KEEP + 2, ROUNDS + 1)]);
  }, 600_000);
});
