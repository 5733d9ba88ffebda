/**
 * Invitations: the real `splitllm invite` command against a real cloud and edge on loopback.
 * Links it mints join; an expired one is refused and not spent; a revoked one is refused; the
 * operator's list tells used, unused and revoked apart; the operator page loads without a token,
 * its API calls need one.
 */
import { startCloudServer, type CloudServer } from '@splitllm/cloud-server';
import { startEdgeServer, type EdgeServer } from '@splitllm/edge-server';
import { randomToken } from '@splitllm/wire/node';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { post } from './net';
import { REPO, SHIPPED_MODEL } from './run-cli';

const tmp = mkdtempSync(join(tmpdir(), 'splitllm-invite-'));
const edgeSecret = randomToken();
const operatorToken = randomToken();

/** The CLI in a child process, without blocking this process (the cloud runs in it). */
function invite(args: string[], env: Record<string, string> = {}): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', join(REPO, 'packages/cli/src/main.ts'), 'invite', ...args],
      { cwd: REPO, env: { ...process.env, SPLITLLM_DEBUG: '', SPLITLLM_OPERATOR_TOKEN: '', ...env } },
      (e, out, err) => resolve({ code: e ? Number(e.code ?? 1) : 0, out, err }),
    );
  });
}

const tokenOf = (link: string) => new URL(link).searchParams.get('join') ?? '';
const list = async (url: string, token?: string) => {
  const res = await fetch(`${url}/api/admin/invitations`, {
    headers: token ? { authorization: `Bearer ${token}` } : {},
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
};

describe('invitations', () => {
  let cloud: CloudServer;
  let edge: EdgeServer;

  beforeAll(async () => {
    cloud = await startCloudServer({
      modelDir: SHIPPED_MODEL,
      stateDir: join(tmp, 'state'),
      edgeSecret,
      operatorToken,
      seed: 3,
      train: { stepsPerUser: 1, batch: 2, seq: 16 },
      aggregation: 'fedavg',
      logLevel: false,
      threads: 1,
    });
    edge = await startEdgeServer({
      cloudUrl: cloud.url,
      edgeId: 'e1',
      edgeSecret,
      operatorToken: randomToken(),
      logLevel: false,
      threads: 1,
    });
    // joining needs a live edge (expect.poll is for tests, not hooks)
    for (let i = 0; i < 300 && cloud.edges.live().length === 0; i++) await new Promise((r) => setTimeout(r, 100));
  });

  afterAll(async () => {
    await edge?.close();
    await cloud?.close();
  });

  it('mints N links that join; refuses bad arguments with a one-line usage error', async () => {
    const r = await invite(['--cloud', cloud.url, '--count', '3', '--expires', '1h'], {
      SPLITLLM_OPERATOR_TOKEN: operatorToken,
    });
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const links = r.out.trim().split('\n');
    expect(links).toHaveLength(3);
    for (const link of links) {
      expect(link.startsWith(`${cloud.url}/?join=`)).toBe(true);
      const joined = await post(`${cloud.url}/api/join`, { joinToken: tokenOf(link) });
      expect(joined.status).toBe(200);
    }
    for (const bad of [['--count', '0'], ['--expires', '5x'], ['--expires', '10s'], ['--nope']]) {
      const b = await invite(['--cloud', cloud.url, ...bad], { SPLITLLM_OPERATOR_TOKEN: operatorToken });
      expect(b.code).toBe(2);
      expect(b.err.trim().split('\n')).toHaveLength(1);
    }
    // the token of a `serve` state directory
    const stateDir = join(tmp, 'serve-state');
    mkdirSync(stateDir);
    writeFileSync(join(stateDir, 'secrets.json'), JSON.stringify({ edgeSecret, operatorToken }));
    const fromState = await invite(['--cloud', cloud.url, '--state', stateDir]);
    expect(fromState.code).toBe(0);
    expect(fromState.out.trim().split('\n')).toHaveLength(1);
    const noToken = await invite(['--cloud', cloud.url, '--state', join(tmp, 'nowhere')]);
    expect(noToken.code).toBe(2);
    expect(noToken.err).toContain('SPLITLLM_OPERATOR_TOKEN');
  });

  it('refuses nonsense expiries with 400; no body still mints one that never expires', async () => {
    const bare = await fetch(`${cloud.url}/api/join-tokens`, {
      method: 'POST',
      headers: { authorization: `Bearer ${operatorToken}` },
    });
    expect(bare.status).toBe(200);
    for (const expiresInS of [5, 1.5, 'soon', -60]) {
      const r = await post(`${cloud.url}/api/join-tokens`, { expiresInS }, operatorToken);
      expect(r.status).toBe(400);
      expect(r.json.code).toBe('BAD_REQUEST');
    }
  });

  it('refuses an expired invitation without spending it, and a revoked one', async () => {
    // an expiry already past: the store's own minting (the API takes at least a minute)
    const expired = cloud.store.issueJoinToken(-1);
    const refused = await post(`${cloud.url}/api/join`, { joinToken: expired });
    expect(refused.status).toBe(403);
    expect(refused.json).toEqual({
      code: 'JOIN_TOKEN_EXPIRED',
      message: 'this invitation expired: ask the organiser for a new link',
    });

    const minted = await post(`${cloud.url}/api/join-tokens`, {}, operatorToken);
    const unused = await post(`${cloud.url}/api/join-tokens`, { expiresInS: 3600 }, operatorToken);
    const before = (await list(cloud.url, operatorToken)).json.invitations as Array<Record<string, unknown>>;
    const idOf = (t: string) => createHash('sha256').update(t).digest('hex').slice(0, 12);
    const id = idOf(minted.json.token as string);
    expect(before.map((i) => i.id)).toContain(id);
    const revoke = await post(`${cloud.url}/api/admin/invitations/${id}/revoke`, {}, operatorToken);
    expect(revoke).toEqual({ status: 200, json: { id, revoked: true } });
    const afterRevoke = await post(`${cloud.url}/api/join`, { joinToken: minted.json.token });
    expect(afterRevoke.status).toBe(403);
    expect(afterRevoke.json.code).toBe('JOIN_TOKEN_REVOKED');
    const unknown = await post(`${cloud.url}/api/admin/invitations/ffffffffffff/revoke`, {}, operatorToken);
    expect(unknown.json.code).toBe('UNKNOWN_INVITATION');

    const all = (await list(cloud.url, operatorToken)).json.invitations as Array<Record<string, unknown>>;
    const byId = new Map(all.map((i) => [i.id, i]));
    expect(byId.get(id)).toMatchObject({ usedBy: null, revokedAt: expect.any(String) });
    expect(byId.get(idOf(expired))).toMatchObject({ usedBy: null, revokedAt: null, expired: true });
    expect(byId.get(idOf(unused.json.token as string))).toMatchObject({
      usedBy: null,
      revokedAt: null,
      expired: false,
      expiresAt: expect.any(String),
    });
    const used = all.filter((i) => typeof i.usedBy === 'string');
    expect(used).toHaveLength(3);
    for (const u of used) expect(cloud.store.user(u.usedBy as string)).toBeDefined();
    // no token in the list
    expect(JSON.stringify(all)).not.toContain(minted.json.token);
    // a used one cannot be revoked: its user is dropped on the edge instead
    const usedRevoke = await post(
      `${cloud.url}/api/admin/invitations/${String(used[0]?.id)}/revoke`,
      {},
      operatorToken,
    );
    expect(usedRevoke.json.code).toBe('INVITATION_USED');
  });

  it('serves the operator page without a token; its API calls need one', async () => {
    const page = await fetch(`${cloud.url}/admin/invitations`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-security-policy')).toContain("default-src 'none'");
    const html = await page.text();
    expect(html).toContain('Revoke invitation ');
    expect(html).toContain('name="viewport"');
    expect((await list(cloud.url)).status).toBe(401);
    expect((await list(cloud.url, 'wrong')).status).toBe(401);
    const revoke = await post(`${cloud.url}/api/admin/invitations/ffffffffffff/revoke`, {});
    expect(revoke.status).toBe(401);
    expect((await post(`${cloud.url}/api/join-tokens`, {})).status).toBe(401);
  });
});
