/**
 * Joining never fails for a reason the person cannot fix, and Drop means out: a real cloud and a
 * real edge on loopback (Fastify, onnxruntime, a database file), rounds of one step so that the
 * global version changes every second or so while users join, and headless users with the
 * reference engine, the same client the page runs.
 *
 *  - a join refused for want of an edge leaves its token unused; the same token works later;
 *  - 20 users join at once while rounds change: every join succeeds and every user gets a queue
 *    position or its turn (the client fetches the current version when the one it was told moved
 *    on; the edge keeps the previous version, the cloud serves any recorded one);
 *  - an operator's Drop revokes the user: its rejoin, a new hello (also at the edge restarted) and
 *    its generation requests are refused with USER_REMOVED until the cloud's operator admits it.
 */
import { startCloudServer, type CloudServer } from '@splitllm/cloud-server';
import { startEdgeServer, type EdgeServer } from '@splitllm/edge-server';
import { ClientError, rejoinRun, type JoinCredentials, type UserClient, type UserEvent } from '@splitllm/user-client';
import { startHeadlessUser } from '@splitllm/user-client/node';
import { decodeMessage, encodeMessage, GENERATE_USER_HEADER, type MessageOn } from '@splitllm/wire';
import { randomToken } from '@splitllm/wire/node';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { post } from './net';
import { DATA, SHIPPED_MODEL } from './run-cli';

const tmp = mkdtempSync(join(tmpdir(), 'splitllm-joining-'));
const edgeSecret = randomToken();
const operatorToken = randomToken();
const edgeOperatorToken = randomToken();
const USERS = 20;
const REMOVED = 'The operator of this run removed you from it. Ask them to re-admit you if this is a mistake.';

const dataFile = (i: number) => join(DATA, `sotu/train/user-${(i % 4) + 1}.txt`);

interface Joined {
  client: UserClient;
  events: UserEvent[];
}

/** What the edge answers a `hello` with: its frames until the socket closes, and the close code. */
async function hello(
  edgeUrl: string,
  c: JoinCredentials,
): Promise<{ frames: MessageOn<'edgeToUser'>[]; code: number }> {
  const ws = new WebSocket(`${edgeUrl.replace(/^http/, 'ws')}/ws/user`);
  const frames: MessageOn<'edgeToUser'>[] = [];
  return new Promise((resolve, reject) => {
    ws.on('open', () => ws.send(encodeMessage('userToEdge', 'hello', { userId: c.userId, token: c.userToken })));
    ws.on('message', (data: Buffer) => {
      const m = decodeMessage('edgeToUser', new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      frames.push(m);
      // admitted: that is all this check needs; leave without a trace in the queue
      if (m.type === 'welcome') ws.close(1000, 'checked');
    });
    ws.on('close', (code) => resolve({ frames, code }));
    ws.on('error', reject);
  });
}

describe('joining while rounds change, and Drop', () => {
  let cloud: CloudServer;
  let edge: EdgeServer | undefined;
  const users: Joined[] = [];
  let demo: UserClient | undefined;

  const joinToken = async () => {
    const r = await post(`${cloud.url}/api/join-tokens`, {}, operatorToken);
    expect(r.status).toBe(200);
    return r.json.token;
  };
  const startEdge = () =>
    startEdgeServer({
      cloudUrl: cloud.url,
      edgeId: 'e1',
      edgeSecret,
      operatorToken: edgeOperatorToken,
      userConnectsPerMinute: 200,
      logLevel: false,
      threads: 1,
    });

  beforeAll(async () => {
    cloud = await startCloudServer({
      modelDir: SHIPPED_MODEL,
      stateDir: join(tmp, 'state'),
      edgeSecret,
      operatorToken,
      seed: 5,
      // one small step a round: a new version every second or so while the demo user trains
      train: { stepsPerUser: 1, batch: 2, seq: 16 },
      aggregation: 'fedavg',
      // 20 joins from one address within seconds, and their rejoins
      rateLimits: { join: 100, rejoin: 200 },
      logLevel: false,
      threads: 1,
    });
  });

  afterAll(async () => {
    for (const u of users) u.client.stop();
    demo?.stop();
    await edge?.close();
    await cloud?.close();
  });

  it('refuses a join while no edge is up without spending its token, which works once one is', async () => {
    const token = await joinToken();
    const refused = await post(`${cloud.url}/api/join`, { joinToken: token });
    expect(refused.status).toBe(503);
    expect(refused.json.code).toBe('NO_EDGE');
    expect(refused.json.message).toContain('your invitation was not used');

    edge = await startEdge();
    await expect.poll(() => cloud.edges.live().length, { timeout: 30_000 }).toBe(1);
    const joined = await post(`${cloud.url}/api/join`, { joinToken: token });
    expect(joined.status).toBe(200);
    expect(joined.json).toMatchObject({ edgeId: 'e1', edgeUrl: edge.url });

    // spent now, and said so with what to do next; an unknown one is told apart
    const again = await post(`${cloud.url}/api/join`, { joinToken: token });
    expect(again.status).toBe(403);
    expect(again.json.code).toBe('BAD_JOIN_TOKEN');
    expect(again.json.message).toContain('this invitation was already used: ask the organiser for a new link');
    const unknown = await post(`${cloud.url}/api/join`, { joinToken: randomToken() });
    expect(unknown.json).toMatchObject({ code: 'BAD_JOIN_TOKEN', message: expect.stringContaining('not known') });

    // the joined user trains alone every round: the rounds the next joins race with
    demo = await startHeadlessUser({
      cloudUrl: cloud.url,
      credentials: joined.json as unknown as JoinCredentials,
      dataFile: dataFile(0),
      seed: 1,
      engine: 'reference',
    });
    await expect.poll(() => cloud.versions.version, { timeout: 60_000 }).toBeGreaterThanOrEqual(3);
  });

  it(`joins ${USERS} users at once while the version changes; each gets a queue position or its turn`, async () => {
    const tokens = await Promise.all(Array.from({ length: USERS }, joinToken));
    const before = cloud.versions.version;
    const results = await Promise.allSettled(
      tokens.map(async (joinToken, i) => {
        // spread over a few rounds, so that some joins fall on a round's end wherever it is
        await new Promise((r) => setTimeout(r, 100 * i));
        const events: UserEvent[] = [];
        const client = await startHeadlessUser({
          cloudUrl: cloud.url,
          joinToken,
          dataFile: dataFile(i),
          seed: 10 + i,
          engine: 'reference',
          onEvent: (e) => events.push(e),
        });
        users.push({ client, events });
        return { client, events };
      }),
    );
    const failed = results.flatMap((r, i) => (r.status === 'rejected' ? [`user ${i}: ${String(r.reason)}`] : []));
    expect(failed).toEqual([]);
    expect(users).toHaveLength(USERS);
    for (const { client, events } of users) {
      await expect
        .poll(() => events.find((e) => e.type === 'welcome' || e.type === 'turn'), { timeout: 30_000 })
        .toBeDefined();
      const welcome = events.find((e) => e.type === 'welcome');
      if (welcome?.type === 'welcome') expect(welcome.position, client.userId).toBeGreaterThanOrEqual(1);
      expect(
        events.filter((e) => e.type === 'error'),
        client.userId,
      ).toEqual([]);
    }
    // the joins raced real round changes (the demo user and the queue kept rounds going)
    expect(cloud.versions.version).toBeGreaterThan(before);
    expect(new Set(users.map((u) => u.client.userId)).size).toBe(USERS);
  });

  it('drops a connected user: its rejoin and its hello are refused until the cloud operator admits it', async () => {
    const { client, events } = users[USERS - 1];
    const credentials = client.currentCredentials;
    const drop = await fetch(`${edge!.url}/api/admin/users/${encodeURIComponent(client.userId)}/drop`, {
      method: 'POST',
      headers: { authorization: `Bearer ${edgeOperatorToken}` },
    });
    expect(drop.status).toBe(200);
    expect(await drop.json()).toEqual({ dropped: client.userId });
    await expect
      .poll(() => events.find((e) => e.type === 'closed'), { timeout: 10_000 })
      .toMatchObject({ type: 'closed', code: 4003 });
    expect(events.filter((e) => e.type === 'removed')).toEqual([{ type: 'removed', message: REMOVED }]);
    // the client stopped: it asks nobody again
    expect(events.some((e) => e.type === 'reconnecting')).toBe(false);

    const rejoin = await rejoinRun(cloud.url, credentials).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(rejoin).toBeInstanceOf(ClientError);
    expect(rejoin).toMatchObject({ code: 'USER_REMOVED', message: REMOVED });

    const refused = await hello(edge!.url, credentials);
    expect(refused.code).toBe(4003);
    expect(refused.frames).toEqual([{ type: 'error', code: 'USER_REMOVED', message: REMOVED }]);
    // out for generation too: the cloud refuses it, the edge relays the refusal
    const generate = () =>
      fetch(`${edge!.url}/api/generate`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${credentials.userToken}`,
          [GENERATE_USER_HEADER]: credentials.userId,
          'content-type': 'application/octet-stream',
        },
        body: encodeMessage('userGenerate', 'generate', {
          h: { data: new Float32Array(128), shape: [1, 1, 128] },
        }) as Uint8Array<ArrayBuffer>,
      });
    const gen = await generate();
    expect(gen.status).toBe(403);
    expect(await gen.json()).toEqual({ code: 'USER_REMOVED', message: REMOVED });

    // an edge that restarts keeps it out: the cloud hands the edge its removed users on registering
    await edge!.close();
    edge = await startEdge();
    const afterRestart = await hello(edge.url, credentials);
    expect(afterRestart.code).toBe(4003);
    expect(afterRestart.frames).toEqual([{ type: 'error', code: 'USER_REMOVED', message: REMOVED }]);

    // only its own edge removes a user; only the cloud operator admits one
    const other = users[0].client.userId;
    const noEdge = await fetch(`${cloud.url}/api/users/${other}/revoke`, { method: 'POST' });
    expect(noEdge.status).toBe(401);
    const notOperator = await fetch(`${cloud.url}/api/admin/users/${client.userId}/admit`, {
      method: 'POST',
      headers: { authorization: `Bearer ${edgeOperatorToken}` },
    });
    expect(notOperator.status).toBe(401);
    const nobody = await post(`${cloud.url}/api/admin/users/nobody/admit`, {}, operatorToken);
    expect(nobody).toMatchObject({ status: 404, json: { code: 'UNKNOWN_USER' } });

    const admit = await post(
      `${cloud.url}/api/admin/users/${encodeURIComponent(client.userId)}/admit`,
      {},
      operatorToken,
    );
    expect(admit).toEqual({ status: 200, json: { userId: client.userId, admitted: true } });
    const back = await rejoinRun(cloud.url, credentials);
    expect(back).toMatchObject({ userId: client.userId, edgeId: 'e1' });
    const welcomed = await hello(edge!.url, back);
    expect(welcomed.frames[0]).toMatchObject({ type: 'welcome', userId: client.userId });
    expect((await generate()).status).toBe(200);
    // the restarted edge trains on: its users came back (the demo user too) and the rounds go on
    await expect.poll(() => edge!.edge.previousVersion, { timeout: 60_000 }).toBeDefined();
  });

  it('serves the adapter of the current and the previous version, and says what to do for an older one', async () => {
    for (const u of users) u.client.stop();
    demo?.stop();
    // no user left: the rounds stop, and the versions with them
    let v = -1;
    await expect
      .poll(
        async () => {
          const seen = v;
          await new Promise((r) => setTimeout(r, 1500));
          v = edge!.edge.version;
          return v === seen;
        },
        { timeout: 60_000 },
      )
      .toBe(true);
    const previous = edge!.edge.previousVersion!;
    expect(previous).toBe(v - 1);
    for (const version of [v, previous]) {
      const res = await fetch(`${edge!.url}/api/adapters/user?version=${version}`);
      expect(res.status, `version ${version}`).toBe(200);
    }
    const old = await fetch(`${edge!.url}/api/adapters/user?version=${v - 2}`);
    expect(old.status).toBe(404);
    expect(await old.json()).toMatchObject({
      code: 'UNKNOWN_VERSION',
      message: expect.stringContaining('fetch the manifest'),
    });
    // the cloud serves an edge the version before the current one too, and refuses one not recorded
    const auth = { authorization: `Bearer ${edge!.edge.link.edgeToken}` };
    expect((await fetch(`${cloud.url}/api/adapters/${v - 1}/user`, { headers: auth })).status).toBe(200);
    const ahead = await fetch(`${cloud.url}/api/adapters/${v + 5}/user`, { headers: auth });
    expect(ahead.status).toBe(404);
    expect(((await ahead.json()) as { code: string }).code).toBe('UNKNOWN_VERSION');
  });
});
