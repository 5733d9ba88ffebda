import {
  cpSync,
  statSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type Gpt2Config, type LoraAdapter, initLoraAdapter } from '@splitllm/model';
import { hashJoinToken, RoundStore, roundDirName } from '../src/store';

const tiny: Gpt2Config = {
  vocabSize: 16,
  nPositions: 8,
  nEmbd: 8,
  nLayer: 2,
  nHead: 2,
  nInner: 32,
  layerNormEpsilon: 1e-5,
  bosTokenId: 0,
  eosTokenId: 0,
};
const opts = { baseModel: 'tiny-gpt2', nLayer: tiny.nLayer };

/** The init with every value moved, so B is not all zero and rounds differ. */
function trained(seed: number): LoraAdapter {
  const a = initLoraAdapter(tiny, { r: 2, alpha: 4, targets: ['attn.c_attn', 'attn.c_proj'] }, 11);
  for (const { A, B } of a.layers.values()) {
    for (const t of [A, B])
      for (let i = 0; i < t.data.length; i++) t.data[i] += Math.fround(Math.sin(seed * 1000 + i) * 0.01);
  }
  return a;
}

function expectSameAdapter(got: LoraAdapter, want: LoraAdapter): void {
  expect(got.config).toEqual(want.config);
  expect([...got.layers.keys()]).toEqual([...want.layers.keys()]);
  for (const [path, { A, B }] of want.layers) {
    const g = got.layers.get(path)!;
    expect(g.A.shape).toEqual(A.shape);
    expect(g.B.shape).toEqual(B.shape);
    // bit-exact, not approximately equal
    expect(Buffer.from(g.A.data.buffer, g.A.data.byteOffset, g.A.data.byteLength)).toEqual(
      Buffer.from(A.data.buffer, A.data.byteOffset, A.data.byteLength),
    );
    expect(Buffer.from(g.B.data.buffer, g.B.data.byteOffset, g.B.data.byteLength)).toEqual(
      Buffer.from(B.data.buffer, B.data.byteOffset, B.data.byteLength),
    );
  }
}

const round = (n: number, extra: Partial<Parameters<RoundStore['commitRound']>[1]> = {}) => ({
  round: n,
  tokens: 100 * n,
  users: 2,
  edges: 1,
  loss: 3.5 - n / 10,
  bytes: 12345 * n,
  startedAt: new Date(Date.UTC(2025, 0, 1, 0, n)).toISOString(),
  participants: [`user:u${n}`, 'edge:e1', 'cloud:e1'],
  ...extra,
});

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'splitllm-store-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('RoundStore', () => {
  it('init + commit + reopen gives the same latest record and a bit-identical adapter', () => {
    const s = RoundStore.open(dir, opts);
    expect(() => s.latest()).toThrow(/initGlobal/);
    const init = trained(0);
    s.initGlobal(init);
    const v0 = s.latest();
    expect(v0).toMatchObject({ round: 0, version: 0, tokens: 0, loss: null, participants: [] });
    expect(v0.adapterDir).toBe(join(dir, 'adapters', 'round-000000'));
    // a second init (a restart) keeps the recorded one
    s.initGlobal(trained(99));
    expectSameAdapter(s.loadAdapter(s.latest()), init);

    const a1 = trained(1);
    const r1 = s.commitRound(a1, round(1));
    expect(r1).toMatchObject({ ...round(1), version: 1, adapterDir: join(dir, 'adapters', roundDirName(1)) });
    expect(Number.isNaN(Date.parse(r1.finishedAt))).toBe(false);
    const a2 = trained(2);
    const r2 = s.commitRound(a2, round(2, { loss: null }));
    expect(r2.loss).toBeNull();
    s.setMeta('run', 'abc');
    s.close();

    const t = RoundStore.open(dir, opts);
    expect(t.latest()).toEqual(r2);
    expect(t.rounds()).toEqual([v0, r1, r2]);
    expect(t.round(1)).toEqual(r1);
    expect(t.round(3)).toBeUndefined();
    expectSameAdapter(t.loadAdapter(t.latest()), a2);
    expectSameAdapter(t.loadAdapter(r1), a1);
    expect(t.getMeta('run')).toBe('abc');
    expect(t.getMeta('nope')).toBeUndefined();
    // the written dir is a PEFT adapter naming the base model
    const cfg = JSON.parse(readFileSync(join(r2.adapterDir, 'adapter_config.json'), 'utf8'));
    expect(cfg.base_model_name_or_path).toBe('tiny-gpt2');
    t.close();
  });

  it('refuses out-of-order and repeated commits', () => {
    const s = RoundStore.open(dir, opts);
    expect(() => s.commitRound(trained(1), round(1))).toThrow(/initGlobal/);
    s.initGlobal(trained(0));
    expect(() => s.commitRound(trained(2), round(2))).toThrow(/does not follow/);
    expect(() => s.commitRound(trained(0), round(0))).toThrow();
    s.commitRound(trained(1), round(1));
    expect(() => s.commitRound(trained(1), round(1))).toThrow(/already recorded/);
    expect(() => s.commitRound(trained(3), round(3))).toThrow(/does not follow/);
    expect(s.latest().round).toBe(1);
    // the refused commits left no directories behind
    expect(readdirSync(join(dir, 'adapters')).sort()).toEqual(['round-000000', 'round-000001']);
    s.close();
  });

  it('ignores a crashed commit (dir without row, temp dir) and overwrites it with the next commit', () => {
    const s = RoundStore.open(dir, opts);
    s.initGlobal(trained(0));
    const r1 = s.commitRound(trained(1), round(1));
    s.close();
    // crash between rename and insert of round 2, and one while writing a temp dir
    const adapters = join(dir, 'adapters');
    cpSync(r1.adapterDir, join(adapters, roundDirName(2)), { recursive: true });
    writeFileSync(join(adapters, roundDirName(2), 'junk'), 'x');
    mkdirSync(join(adapters, '.tmp-round-000002-4242-deadbeef'));
    writeFileSync(join(adapters, '.tmp-round-000002-4242-deadbeef', 'adapter_model.safetensors'), 'half');

    const t = RoundStore.open(dir, opts);
    expect(t.latest()).toEqual(r1);
    expect(t.rounds().map((r) => r.round)).toEqual([0, 1]);
    const a2 = trained(2);
    const r2 = t.commitRound(a2, round(2));
    expectSameAdapter(t.loadAdapter(r2), a2);
    expect(existsSync(join(r2.adapterDir, 'junk'))).toBe(false);
    expect(readdirSync(adapters).sort()).toEqual(['round-000000', 'round-000001', 'round-000002']);
    t.close();
  });

  it('join tokens are random, recorded and single-use; users are recorded', () => {
    const s = RoundStore.open(dir, opts);
    const a = s.issueJoinToken();
    const b = s.issueJoinToken();
    expect(a).toMatch(/^[0-9a-f]{32}$/);
    expect(b).not.toBe(a);
    expect(s.redeemJoinToken('0'.repeat(32), 'u0')).toBe(false);
    expect(s.redeemJoinToken(a, 'u1')).toBe(true);
    expect(s.redeemJoinToken(a, 'u2')).toBe(false);
    expect(s.redeemJoinToken(a, 'u1')).toBe(false);
    s.recordUser('u1', 'e1');
    s.recordUser('u1', 'e2'); // reassigned
    s.close();
    const t = RoundStore.open(dir, opts);
    expect(t.redeemJoinToken(a, 'u3')).toBe(false); // still used after a restart
    expect(t.redeemJoinToken(b, 'u3')).toBe(true);
    expect(t.users().map((u) => [u.userId, u.edgeId])).toEqual([['u1', 'e2']]);
    expect(t.user('u1')).toEqual(t.users()[0]);
    expect(t.user('u9')).toBeUndefined();
    t.close();
  });

  it('state.db is a real SQLite file in WAL mode', () => {
    const s = RoundStore.open(dir, opts);
    s.initGlobal(trained(0));
    s.commitRound(trained(1), round(1));
    const tok = s.issueJoinToken();
    s.redeemJoinToken(tok, 'u7');
    s.recordUser('u7', 'e3');
    s.close();

    const db = new Database(join(dir, 'state.db'), { readonly: true, fileMustExist: true });
    try {
      expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
      expect(db.prepare('SELECT version FROM schema_version').pluck().get()).toBe(2);
      const rows = db.prepare('SELECT round, tokens, loss, participants FROM rounds ORDER BY round').all();
      expect(rows).toEqual([
        { round: 0, tokens: 0, loss: null, participants: '[]' },
        { round: 1, tokens: 100, loss: 3.4, participants: JSON.stringify(round(1).participants) },
      ]);
      // stored as its SHA-256, never in plain text
      expect(db.prepare('SELECT used_by FROM join_tokens WHERE token = ?').pluck().get(hashJoinToken(tok))).toBe('u7');
      expect(db.prepare('SELECT COUNT(*) FROM join_tokens WHERE token = ?').pluck().get(tok)).toBe(0);
      expect(db.prepare('SELECT edge_id FROM users WHERE user_id = ?').pluck().get('u7')).toBe('e3');
    } finally {
      db.close();
    }
  });

  it('refuses a state directory of a model with another depth', () => {
    RoundStore.open(dir, opts).close();
    expect(() => RoundStore.open(dir, { ...opts, nLayer: 3 })).toThrow(/2-layer/);
    RoundStore.open(dir, opts).close();
  });

  it('keeps join tokens hashed: an unused one works once, a used or unknown one does not', () => {
    const s = RoundStore.open(dir, opts);
    const tok = s.issueJoinToken();
    expect(s.redeemJoinToken(hashJoinToken(tok), 'u1')).toBe(false);
    expect(s.redeemJoinToken('f'.repeat(32), 'u1')).toBe(false);
    expect(s.redeemJoinToken(tok, 'u1')).toBe(true);
    expect(s.redeemJoinToken(tok, 'u2')).toBe(false);
    s.close();
  });

  it('migrates a version 1 state (plain join tokens, no refused column) on open', () => {
    const s = RoundStore.open(dir, opts);
    s.initGlobal(trained(0));
    s.close();
    // make it what version 1 wrote
    const db = new Database(join(dir, 'state.db'));
    db.exec('ALTER TABLE rounds DROP COLUMN refused');
    db.prepare('UPDATE schema_version SET version = 1').run();
    const plain = 'a'.repeat(32);
    db.prepare("INSERT INTO join_tokens (token, created_at, used_by) VALUES (?, 'then', NULL)").run(plain);
    db.prepare("INSERT INTO join_tokens (token, created_at, used_by) VALUES (?, 'then', 'u0')").run('b'.repeat(32));
    db.close();

    const again = RoundStore.open(dir, opts);
    expect(again.migratedTokens).toBe(2);
    expect(again.latest().refused).toEqual([]);
    expect(again.redeemJoinToken('b'.repeat(32), 'u9')).toBe(false);
    expect(again.redeemJoinToken(plain, 'u1')).toBe(true);
    again.close();
    const raw = new Database(join(dir, 'state.db'), { readonly: true });
    expect(raw.prepare('SELECT token FROM join_tokens').pluck().all()).toEqual(
      expect.not.arrayContaining([plain, 'b'.repeat(32)]),
    );
    expect(raw.prepare('SELECT version FROM schema_version').pluck().get()).toBe(2);
    raw.close();
    expect(RoundStore.open(dir, opts).migratedTokens).toBe(0);
  });

  it('keeps the directories 0700 and the database, its WAL and the adapter files 0600', () => {
    const s = RoundStore.open(dir, opts);
    s.initGlobal(trained(0));
    s.commitRound(trained(1), round(1));
    const mode = (p: string) => statSync(p).mode & 0o777;
    expect(mode(dir)).toBe(0o700);
    expect(mode(join(dir, 'adapters'))).toBe(0o700);
    for (const f of ['state.db', 'state.db-wal', 'state.db-shm']) expect(mode(join(dir, f))).toBe(0o600);
    const r1 = join(dir, 'adapters', roundDirName(1));
    expect(mode(r1)).toBe(0o700);
    for (const f of readdirSync(r1)) expect(mode(join(r1, f))).toBe(0o600);
    s.close();
  });

  it('records refusals and pages the rounds, oldest first, with a cursor to the older page', () => {
    const s = RoundStore.open(dir, opts);
    s.initGlobal(trained(0));
    const refused = [{ from: 'user:u1', code: 'GATE_LOSS', reason: 'too high', globalLoss: 4.5, loss: 9 }];
    for (let n = 1; n <= 5; n++) s.commitRound(trained(n), round(n, n === 3 ? { refused } : {}));
    expect(s.round(3)!.refused).toEqual(refused);
    expect(s.round(2)!.refused).toEqual([]);
    const p1 = s.roundPage(2);
    expect(p1.rounds.map((r) => r.version)).toEqual([4, 5]);
    expect(p1.next).toBe(4);
    const p2 = s.roundPage(2, p1.next!);
    expect(p2.rounds.map((r) => r.version)).toEqual([2, 3]);
    const p3 = s.roundPage(2, p2.next!);
    expect(p3.rounds.map((r) => r.version)).toEqual([0, 1]);
    expect(p3.next).toBeNull();
    expect(s.roundPage(10).next).toBeNull();
    expect(s.roundCount()).toBe(6);
    s.close();
  });
});
