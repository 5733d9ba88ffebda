/**
 * The cloud's persistent state, all in one directory:
 *   state.db                 SQLite (WAL): rounds, join tokens, users, removed users, meta
 *   adapters/round-000123/   the global adapter produced by round 123, PEFT layout
 *
 * A version exists once its row is in `rounds`; the adapter directory is put in place (temp dir
 * + rename) before the row is inserted, so a crash can leave a directory without a row (ignored,
 * and overwritten by the next commit of that round) but never a row without its directory.
 * Designed for one writing process (the cloud server); readers may open the same directory.
 *
 * Kept closed to other accounts: the directories are 0700, the database (and its -wal/-shm
 * files, which SQLite creates with the database file's mode) and every adapter file 0600. Join
 * tokens are stored as their SHA-256: the database alone does not let anyone join.
 */
import { createHash, randomBytes } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
} from 'node:fs';
import { join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import type { LoraAdapter } from '@splitllm/model';
import { loadModelAdapterDir, saveModelAdapterDir } from '@splitllm/model/node';

export interface RoundRecord {
  /** 1-based round that produced this version (0: the initial adapter). */
  round: number;
  /** == round */
  version: number;
  /** absolute path of the PEFT directory */
  adapterDir: string;
  tokens: number;
  users: number;
  edges: number;
  loss: number | null;
  bytes: number;
  startedAt: string;
  finishedAt: string;
  participants: string[];
  /** the updates the aggregation strategy refused in this round, and why */
  refused: RoundRefusal[];
  /** when the retention policy deleted this version's adapter directory (null: it is on disk) */
  evictedAt: string | null;
}

/** One update a round's aggregation refused (the strategy's AggregationRefusal, as recorded). */
export interface RoundRefusal {
  from: string;
  code: string;
  reason: string;
  globalLoss?: number;
  loss?: number;
}

/** What a round's commit records (the store adds the version, the directory and the finish time). */
export type RoundInput = Omit<RoundRecord, 'version' | 'adapterDir' | 'finishedAt' | 'refused' | 'evictedAt'> & {
  refused?: RoundRefusal[];
};

/** One page of recorded rounds, oldest first, and the cursor of the page before it. */
export interface RoundPage {
  rounds: RoundRecord[];
  /** pass as `before` for the older page; null when this page reaches version 0 */
  next: number | null;
}

interface UserRow {
  user_id: string;
  edge_id: string;
  joined_at: string;
}

const userRecord = (r: UserRow): UserRecord => ({ userId: r.user_id, edgeId: r.edge_id, joinedAt: r.joined_at });

export interface UserRecord {
  userId: string;
  edgeId: string;
  joinedAt: string;
}

/** A user an edge's operator removed (the cloud refuses its rejoin until the operator admits it). */
export interface UserRemoval {
  removedAt: string;
  byEdge: string;
}

export const STATE_DB_FILE = 'state.db';
export const ADAPTERS_DIR = 'adapters';
/**
 * 2: join tokens stored as SHA-256 hex (1 kept them in plain text) and rounds.refused. A version 1
 * database is migrated when opened: its tokens hashed in place (an unused one still works: the
 * user presents the plain token, which hashes to the stored value), refused set to '[]'.
 */
const SCHEMA_VERSION = 2;
/** Owner-only modes of the state directory's entries. */
export const STATE_DIR_MODE = 0o700;
export const STATE_FILE_MODE = 0o600;
const TMP_PREFIX = '.tmp-';
const META_BASE_MODEL = 'store.base_model';
const META_N_LAYER = 'store.n_layer';

export function roundDirName(round: number): string {
  return `round-${String(round).padStart(6, '0')}`;
}

interface RoundRow {
  round: number;
  tokens: number;
  users: number;
  edges: number;
  loss: number | null;
  bytes: number;
  started_at: string;
  finished_at: string;
  participants: string;
  refused: string;
  evicted_at: string | null;
}

/** What a join with a token came to. */
export type JoinOutcome = 'joined' | 'used' | 'unknown' | 'expired' | 'revoked';

/** An invitation (join token) as the operator's list shows it. */
export interface Invitation {
  /** the first hex digits of the token's hash: names it without letting anyone join */
  id: string;
  createdAt: string;
  expiresAt: string | null;
  /** the user that joined with it */
  usedBy: string | null;
  revokedAt: string | null;
}

/** 12 hex digits: 48 bits, no collision among any number of invitations one run mints. */
const INVITATION_ID_LENGTH = 12;
const INVITATION_ID = /^[0-9a-f]{12}$/;
export const invitationId = (tokenHash: string): string => tokenHash.slice(0, INVITATION_ID_LENGTH);

/** How a join token is kept: its SHA-256, hex. */
export function hashJoinToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** Sets `mode` on `path` and, for a directory, on everything below it (0700 directories, 0600 files). */
function restrictTree(path: string): void {
  const st = statSync(path);
  if (st.isDirectory()) {
    chmodSync(path, STATE_DIR_MODE);
    for (const entry of readdirSync(path)) restrictTree(join(path, entry));
  } else {
    chmodSync(path, STATE_FILE_MODE);
  }
}

/** Hashes the plain join tokens of a version 1 database; returns how many. */
function migrateV1(db: Database.Database): number {
  const rows = db.prepare('SELECT token FROM join_tokens').all() as Array<{ token: string }>;
  const update = db.prepare('UPDATE join_tokens SET token = ? WHERE token = ?');
  for (const r of rows) update.run(hashJoinToken(r.token), r.token);
  db.exec("ALTER TABLE rounds ADD COLUMN refused TEXT NOT NULL DEFAULT '[]'");
  db.prepare('UPDATE schema_version SET version = ?').run(SCHEMA_VERSION);
  return rows.length;
}

function fsyncDir(dir: string): void {
  try {
    const fd = openSync(dir, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // not every platform can fsync a directory; the rename is still atomic
  }
}

export class RoundStore {
  readonly dir: string;
  readonly dbPath: string;
  readonly adaptersDir: string;
  private readonly db: Database.Database;
  private readonly baseModel: string;
  private readonly nLayer: number;
  /** join tokens hashed by a migration from schema version 1 when this store was opened (else 0) */
  readonly migratedTokens: number;

  private constructor(dir: string, db: Database.Database, baseModel: string, nLayer: number, migrated: number) {
    this.migratedTokens = migrated;
    this.dir = dir;
    this.dbPath = join(dir, STATE_DB_FILE);
    this.adaptersDir = join(dir, ADAPTERS_DIR);
    this.db = db;
    this.baseModel = baseModel;
    this.nLayer = nLayer;
  }

  /**
   * Opens (creating when needed) the state directory. Leftovers of a crashed commit are left
   * alone here, since another process may be mid-commit; they are not listed and the next
   * commit replaces or removes them.
   */
  static open(dir: string, o: { baseModel: string; nLayer: number }): RoundStore {
    const abs = resolve(dir);
    mkdirSync(join(abs, ADAPTERS_DIR), { recursive: true, mode: STATE_DIR_MODE });
    const dbPath = join(abs, STATE_DB_FILE);
    // SQLite gives the -wal and -shm files the database file's mode: create it 0600 first (an
    // empty file is an empty database), and tighten what an older version left readable
    if (!existsSync(dbPath)) closeSync(openSync(dbPath, 'a', STATE_FILE_MODE));
    restrictTree(abs);
    const db = new Database(dbPath);
    let migrated = 0;
    try {
      db.pragma('journal_mode = WAL');
      // WAL's default NORMAL may lose the last commits on power loss; a committed round is
      // announced to everyone, so it must survive
      db.pragma('synchronous = FULL');
      db.pragma('foreign_keys = ON');
      db.transaction(() => {
        const has = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").get();
        if (!has) {
          db.exec(`
            CREATE TABLE schema_version (version INTEGER NOT NULL);
            CREATE TABLE rounds (
              round        INTEGER PRIMARY KEY,
              tokens       INTEGER NOT NULL,
              users        INTEGER NOT NULL,
              edges        INTEGER NOT NULL,
              loss         REAL,
              bytes        INTEGER NOT NULL,
              started_at   TEXT NOT NULL,
              finished_at  TEXT NOT NULL,
              participants TEXT NOT NULL,
              refused      TEXT NOT NULL DEFAULT '[]'
            );
            CREATE TABLE join_tokens (token TEXT PRIMARY KEY, created_at TEXT NOT NULL, used_by TEXT);
            CREATE TABLE users (user_id TEXT PRIMARY KEY, edge_id TEXT NOT NULL, joined_at TEXT NOT NULL);
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
          `);
          db.prepare('INSERT INTO schema_version (version) VALUES (?)').run(SCHEMA_VERSION);
        }
        let row = db.prepare('SELECT version FROM schema_version').get() as { version: number } | undefined;
        if (row?.version === 1) {
          migrated = migrateV1(db);
          row = { version: SCHEMA_VERSION };
        }
        if (row?.version !== SCHEMA_VERSION) {
          throw new Error(
            `${join(abs, STATE_DB_FILE)}: schema version ${row?.version ?? 'missing'}, ` +
              `this build reads version ${SCHEMA_VERSION}`,
          );
        }
        // kept apart from the users table (and created when missing) so a state of an earlier
        // version opens without a schema change: no row means the user is admitted
        db.exec(
          'CREATE TABLE IF NOT EXISTS removed_users ' +
            '(user_id TEXT PRIMARY KEY, removed_at TEXT NOT NULL, by_edge TEXT NOT NULL)',
        );
        // rounds.evicted_at (retention) is added in place: older builds read the table as before,
        // so it needs no schema version of its own
        const cols = db.prepare('PRAGMA table_info(rounds)').all() as Array<{ name: string }>;
        if (!cols.some((col) => col.name === 'evicted_at')) db.exec('ALTER TABLE rounds ADD COLUMN evicted_at TEXT');
        // join_tokens.expires_at and revoked_at (invitations) likewise: NULL means never expires, not revoked
        const tokenCols = db.prepare('PRAGMA table_info(join_tokens)').all() as Array<{ name: string }>;
        for (const col of ['expires_at', 'revoked_at']) {
          if (!tokenCols.some((c) => c.name === col)) db.exec(`ALTER TABLE join_tokens ADD COLUMN ${col} TEXT`);
        }
        const getMeta = db.prepare('SELECT value FROM meta WHERE key = ?').pluck();
        const setMeta = db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)');
        const nLayer = getMeta.get(META_N_LAYER) as string | undefined;
        if (nLayer === undefined) {
          setMeta.run(META_N_LAYER, String(o.nLayer));
          setMeta.run(META_BASE_MODEL, o.baseModel);
        } else if (Number(nLayer) !== o.nLayer) {
          // adapters of a model with another depth cannot be resumed; refuse before mixing them
          throw new Error(
            `${abs}: this state belongs to a ${nLayer}-layer model, but the model has ${o.nLayer} layers`,
          );
        }
      }).immediate();
    } catch (e) {
      db.close();
      throw e;
    }
    return new RoundStore(abs, db, o.baseModel, o.nLayer, migrated);
  }

  private toRecord(r: RoundRow): RoundRecord {
    return {
      round: r.round,
      version: r.round,
      adapterDir: join(this.adaptersDir, roundDirName(r.round)),
      tokens: r.tokens,
      users: r.users,
      edges: r.edges,
      loss: r.loss,
      bytes: r.bytes,
      startedAt: r.started_at,
      finishedAt: r.finished_at,
      participants: JSON.parse(r.participants) as string[],
      refused: JSON.parse(r.refused ?? '[]') as RoundRefusal[],
      evictedAt: r.evicted_at ?? null,
    };
  }

  private latestOrNull(): RoundRecord | null {
    const row = this.db.prepare('SELECT * FROM rounds ORDER BY round DESC LIMIT 1').get() as RoundRow | undefined;
    return row ? this.toRecord(row) : null;
  }

  /**
   * Records the initial global adapter as version 0 (adapters/round-000000), so a restart of a
   * fresh run continues from the very same init. No-op when version 0 is already recorded.
   */
  initGlobal(adapter: LoraAdapter): void {
    if (this.latestOrNull() !== null) return;
    const now = new Date().toISOString();
    this.persist(
      adapter,
      { round: 0, tokens: 0, users: 0, edges: 0, loss: null, bytes: 0, startedAt: now, participants: [] },
      -1,
    );
  }

  /** The highest recorded version (0 right after initGlobal). Throws before initGlobal. */
  latest(): RoundRecord {
    const rec = this.latestOrNull();
    if (!rec) throw new Error(`${this.dir}: no global adapter recorded yet (initGlobal first)`);
    return rec;
  }

  loadAdapter(rec: RoundRecord): LoraAdapter {
    if (rec.evictedAt) throw new Error(`version ${rec.version}'s adapter was deleted by the retention policy`);
    return loadModelAdapterDir(rec.adapterDir);
  }

  /**
   * Persists version rec.round: writes the PEFT dir to a temp dir, renames it into place, then
   * inserts the row; only after this returns may anyone be told of the version. Throws when
   * rec.round is not latest().round + 1 (which covers an already recorded round).
   */
  commitRound(adapter: LoraAdapter, rec: RoundInput): RoundRecord {
    if (!Number.isInteger(rec.round) || rec.round < 1)
      throw new Error(`commitRound: round must be an integer >= 1, got ${rec.round}`);
    return this.persist(adapter, rec, this.latest().round);
  }

  /** The shared commit path; `expectedPrev` is the version that must be latest (-1: none). */
  private persist(adapter: LoraAdapter, rec: RoundInput, expectedPrev: number): RoundRecord {
    const checkOrder = (): void => {
      const prev = this.latestOrNull()?.round ?? -1;
      if (prev === rec.round) throw new Error(`commitRound: round ${rec.round} is already recorded`);
      if (prev !== expectedPrev || rec.round !== prev + 1) {
        throw new Error(
          `commitRound: round ${rec.round} does not follow the latest recorded version ${prev < 0 ? '(none)' : prev}`,
        );
      }
    };
    checkOrder();
    const name = roundDirName(rec.round);
    const finalDir = join(this.adaptersDir, name);
    const tmpDir = join(this.adaptersDir, `${TMP_PREFIX}${name}-${process.pid}-${randomBytes(4).toString('hex')}`);
    // the slow part (serializing, fsyncs) happens before taking the write lock
    try {
      saveModelAdapterDir(tmpDir, adapter, { baseModel: this.baseModel, nLayer: this.nLayer });
      restrictTree(tmpDir);
    } catch (e) {
      rmSync(tmpDir, { recursive: true, force: true });
      throw e;
    }
    const finishedAt = new Date().toISOString();
    // SQLite has no NaN (it would read back as NULL anyway); say so explicitly
    const loss = rec.loss !== null && Number.isFinite(rec.loss) ? rec.loss : null;
    try {
      // IMMEDIATE holds the write lock across check, rename and insert, so no other writer can
      // record this round in between and have its directory replaced under it
      this.db
        .transaction(() => {
          checkOrder();
          // a directory without a row is a crashed commit's leftover: replace it
          if (existsSync(finalDir)) rmSync(finalDir, { recursive: true, force: true });
          renameSync(tmpDir, finalDir);
          fsyncDir(this.adaptersDir);
          this.db
            .prepare(
              `INSERT INTO rounds
                 (round, tokens, users, edges, loss, bytes, started_at, finished_at, participants, refused)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
            )
            .run(
              rec.round,
              rec.tokens,
              rec.users,
              rec.edges,
              loss,
              rec.bytes,
              rec.startedAt,
              finishedAt,
              JSON.stringify(rec.participants),
              JSON.stringify(rec.refused ?? []),
            );
        })
        .immediate();
    } catch (e) {
      rmSync(tmpDir, { recursive: true, force: true });
      throw e;
    }
    this.sweepTempDirs();
    return this.toRecord(this.db.prepare('SELECT * FROM rounds WHERE round = ?').get(rec.round) as RoundRow);
  }

  /**
   * Removes temp dirs a crashed commit left behind. Round dirs without a row are not swept:
   * each is replaced when its round is committed, and one far ahead of the rows can only mean
   * a lost state.db, whose adapters an operator may still want.
   */
  private sweepTempDirs(): void {
    for (const entry of readdirSync(this.adaptersDir)) {
      if (entry.startsWith(TMP_PREFIX)) rmSync(join(this.adaptersDir, entry), { recursive: true, force: true });
    }
  }

  rounds(): RoundRecord[] {
    return (this.db.prepare('SELECT * FROM rounds ORDER BY round').all() as RoundRow[]).map((r) => this.toRecord(r));
  }

  /**
   * At most `limit` recorded rounds just below `before` (default: the newest), oldest first, with
   * the cursor for the page before them.
   */
  roundPage(limit: number, before?: number): RoundPage {
    const rows = this.db
      .prepare('SELECT * FROM rounds WHERE round < ? ORDER BY round DESC LIMIT ?')
      .all(before ?? Number.MAX_SAFE_INTEGER, limit + 1) as RoundRow[];
    const more = rows.length > limit;
    const page = rows.slice(0, limit).reverse();
    return { rounds: page.map((r) => this.toRecord(r)), next: more && page.length > 0 ? page[0].round : null };
  }

  /** How many versions are recorded (version 0 included). */
  roundCount(): number {
    return this.db.prepare('SELECT COUNT(*) FROM rounds').pluck().get() as number;
  }

  /** The versions whose adapter directory is still on disk, oldest first. */
  liveVersions(): Array<{ version: number; finishedAt: string }> {
    const rows = this.db
      .prepare('SELECT round, finished_at FROM rounds WHERE evicted_at IS NULL ORDER BY round')
      .all() as Array<{ round: number; finished_at: string }>;
    return rows.map((r) => ({ version: r.round, finishedAt: r.finished_at }));
  }

  /** When version 0 was recorded: the run's start, which the hourly retention counts from. */
  startedAt(): string {
    return this.db.prepare('SELECT finished_at FROM rounds ORDER BY round LIMIT 1').pluck().get() as string;
  }

  /**
   * Deletes a version's adapter directory and marks its row (the row and its figures stay). The
   * mark comes first: a crash in between leaves a marked row whose directory is still there (disk
   * space, not an inconsistency), never an unmarked row without its directory. Refuses the latest
   * version: a restart resumes from it.
   */
  evictVersion(version: number): void {
    if (version >= this.latest().round) throw new Error(`evictVersion: version ${version} is the latest`);
    this.db
      .prepare('UPDATE rounds SET evicted_at = ? WHERE round = ? AND evicted_at IS NULL')
      .run(new Date().toISOString(), version);
    rmSync(join(this.adaptersDir, roundDirName(version)), { recursive: true, force: true });
  }

  /** One recorded version (its round row), or undefined. */
  round(version: number): RoundRecord | undefined {
    const row = this.db.prepare('SELECT * FROM rounds WHERE round = ?').get(version) as RoundRow | undefined;
    return row ? this.toRecord(row) : undefined;
  }

  setMeta(key: string, value: string): void {
    this.db
      .prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value')
      .run(key, value);
  }

  getMeta(key: string): string | undefined {
    return this.db.prepare('SELECT value FROM meta WHERE key = ?').pluck().get(key) as string | undefined;
  }

  /**
   * A random 32-hex-char token, recorded (as its hash) as unused; the plain token exists only in the answer.
   * With `expiresInS` a join after that many seconds is refused (and does not spend it).
   */
  issueJoinToken(expiresInS?: number): string {
    const token = randomBytes(16).toString('hex');
    const now = Date.now();
    const expires = expiresInS === undefined ? null : new Date(now + expiresInS * 1000).toISOString();
    this.db
      .prepare('INSERT INTO join_tokens (token, created_at, used_by, expires_at) VALUES (?, ?, NULL, ?)')
      .run(hashJoinToken(token), new Date(now).toISOString(), expires);
    return token;
  }

  /** Marks the token used by userId; false for an unknown, used, expired or revoked token. */
  redeemJoinToken(token: string, userId: string): boolean {
    // one conditional UPDATE, so two concurrent redemptions cannot both succeed; ISO times of
    // one format compare as strings
    return (
      this.db
        .prepare(
          'UPDATE join_tokens SET used_by = ? WHERE token = ? AND used_by IS NULL AND revoked_at IS NULL ' +
            'AND (expires_at IS NULL OR expires_at > ?)',
        )
        .run(userId, hashJoinToken(token), new Date().toISOString()).changes === 1
    );
  }

  /** Every invitation, oldest first, named by its id (never by its token, which is not kept). */
  invitations(): Invitation[] {
    const rows = this.db
      .prepare('SELECT token, created_at, expires_at, used_by, revoked_at FROM join_tokens ORDER BY created_at, token')
      .all() as Array<{
      token: string;
      created_at: string;
      expires_at: string | null;
      used_by: string | null;
      revoked_at: string | null;
    }>;
    return rows.map((r) => ({
      id: invitationId(r.token),
      createdAt: r.created_at,
      expiresAt: r.expires_at,
      usedBy: r.used_by,
      revokedAt: r.revoked_at,
    }));
  }

  /**
   * Revokes an unused invitation by its id: 'revoked' (or already was), 'used' (a join already
   * happened: dropping that user is the edge operator's Drop), 'unknown'.
   */
  revokeInvitation(id: string): 'revoked' | 'used' | 'unknown' {
    if (!INVITATION_ID.test(id)) return 'unknown';
    return this.db
      .transaction((): 'revoked' | 'used' | 'unknown' => {
        const row = this.db
          .prepare('SELECT token, used_by FROM join_tokens WHERE substr(token, 1, ?) = ?')
          .get(INVITATION_ID_LENGTH, id) as { token: string; used_by: string | null } | undefined;
        if (!row) return 'unknown';
        if (row.used_by !== null) return 'used';
        this.db
          .prepare('UPDATE join_tokens SET revoked_at = ? WHERE token = ? AND revoked_at IS NULL')
          .run(new Date().toISOString(), row.token);
        return 'revoked';
      })
      .immediate();
  }

  /** Records a user and its edge; a reassigned user keeps its original joined_at. */
  recordUser(userId: string, edgeId: string): void {
    this.db
      .prepare(
        'INSERT INTO users (user_id, edge_id, joined_at) VALUES (?, ?, ?) ' +
          'ON CONFLICT(user_id) DO UPDATE SET edge_id = excluded.edge_id',
      )
      .run(userId, edgeId, new Date().toISOString());
  }

  /**
   * Redeems a join token and records the user and its edge as one transaction: the token is
   * spent exactly when the user exists. Nothing is written for an unknown or already used token.
   */
  joinUser(token: string, userId: string, edgeId: string): JoinOutcome {
    return this.db
      .transaction((): JoinOutcome => {
        if (this.redeemJoinToken(token, userId)) {
          this.recordUser(userId, edgeId);
          return 'joined';
        }
        // which of these decides what the person is told to do; none helps a guesser
        const row = this.db
          .prepare('SELECT used_by, expires_at, revoked_at FROM join_tokens WHERE token = ?')
          .get(hashJoinToken(token)) as
          | { used_by: string | null; expires_at: string | null; revoked_at: string | null }
          | undefined;
        if (!row) return 'unknown';
        if (row.used_by !== null) return 'used';
        if (row.revoked_at !== null) return 'revoked';
        return 'expired';
      })
      .immediate();
  }

  /** An edge's operator removed the user: it stays out until `admitUser`. */
  removeUser(userId: string, byEdge: string): UserRemoval {
    this.db
      .prepare(
        'INSERT INTO removed_users (user_id, removed_at, by_edge) VALUES (?, ?, ?) ' +
          'ON CONFLICT(user_id) DO NOTHING',
      )
      .run(userId, new Date().toISOString(), byEdge);
    return this.removal(userId)!;
  }

  /** Whether and when the user was removed (undefined: it is admitted). */
  removal(userId: string): UserRemoval | undefined {
    const row = this.db.prepare('SELECT removed_at, by_edge FROM removed_users WHERE user_id = ?').get(userId) as
      | { removed_at: string; by_edge: string }
      | undefined;
    return row ? { removedAt: row.removed_at, byEdge: row.by_edge } : undefined;
  }

  /** The users an edge's operator removed that are still out (an edge that restarts starts from these). */
  removedBy(edgeId: string): string[] {
    const rows = this.db
      .prepare('SELECT user_id FROM removed_users WHERE by_edge = ? ORDER BY user_id')
      .all(edgeId) as {
      user_id: string;
    }[];
    return rows.map((r) => r.user_id);
  }

  /** The cloud's operator lets a removed user back in; false when it was not removed. */
  admitUser(userId: string): boolean {
    return this.db.prepare('DELETE FROM removed_users WHERE user_id = ?').run(userId).changes === 1;
  }

  users(): UserRecord[] {
    const rows = this.db
      .prepare('SELECT user_id, edge_id, joined_at FROM users ORDER BY joined_at, user_id')
      .all() as UserRow[];
    return rows.map(userRecord);
  }

  /** One user (a join, rejoin or generation request's check), or undefined. */
  user(userId: string): UserRecord | undefined {
    const row = this.db.prepare('SELECT user_id, edge_id, joined_at FROM users WHERE user_id = ?').get(userId) as
      | UserRow
      | undefined;
    return row ? userRecord(row) : undefined;
  }

  close(): void {
    this.db.close();
  }
}
