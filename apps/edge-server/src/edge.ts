/**
 * The edge tier, wired: the users' queue (user-queue.ts), the link to the cloud (cloud-link.ts),
 * the rounds and their turns (round.ts, turn.ts) and what the edge reports (telemetry.ts).
 *
 * Per step of a user's turn: the user's h1 arrives, blocks [k, m) run forward (onnxruntime
 * worker), h2 goes to the cloud, dL/dh2 comes back, the backward gives dL/dh1 and the edge LoRA's
 * gradients, AdamW steps the edge LoRA, dL/dh1 goes back to the user.
 */
import { type LoraAdapter, loraParameterCount, type ModelConfig, modelDims } from '@splitllm/model';
import { decodeMessage, encodeErrorMessage, type RunManifest } from '@splitllm/wire';
import { checkUserToken } from '@splitllm/wire/node';
import { peakRssBytes } from '@splitllm/onnx-runner';
import { HeldBytes } from '@splitllm/federation';
import { CloudLink, type Registration } from './cloud-link';
import { EdgeError } from './errors';
import { RoundRunner } from './round';
import { Activity, type EdgeMetrics, type Logger } from './telemetry';
import type { TurnBlocks } from './turn';
import { HELLO_MAX_BYTES, type UserConn, UserQueue, type UserSocket } from './user-queue';

/** What a removed user is told (the cloud's rejoin refusal says the same). */
export const USER_REMOVED_MESSAGE =
  'The operator of this run removed you from it. Ask them to re-admit you if this is a mistake.';

export interface EdgeOptions {
  edgeId: string;
  edgeSecret: string;
  /** where users reach this edge */
  url: string;
  cloudUrl: string;
  registration: Registration;
  config: ModelConfig;
  blocks: TurnBlocks;
  /** the frozen user segment, served to users as is */
  userSegment: Uint8Array;
  /** the cloud's tokenizer, served to users as is */
  tokenizer: unknown;
  metrics: EdgeMetrics;
  log: Logger;
  /** a user's next frame must arrive within this time during its turn */
  stepTimeoutMs: number;
  /** the turn deadline: the user's time in a turn is at most this per step (and one more for its adapter) */
  stepBudgetMs: number;
  /** a user that misses its turn deadline this many turns in a row sits out the next round */
  maxMisses: number;
  /** how often a launcher restarted this edge, and how the last run ended (shown on the dashboard) */
  restarts?: RestartInfo;
  /** the cloud must answer a step within this time */
  cloudTimeoutMs: number;
  provider: string;
}

export interface RestartInfo {
  count: number;
  /** e.g. "code 1 at 2026-01-01T00:00:00.000Z" or "signal SIGKILL at ..." */
  lastExit: string | null;
}

export class Edge {
  readonly edgeId: string;
  /** the execution provider blocks [k, m) run on */
  readonly provider: string;
  readonly manifest: RunManifest;
  readonly config: ModelConfig;
  readonly userSegment: Uint8Array;
  readonly tokenizer: unknown;
  /** blocks [k, m) on the edge's runner */
  readonly blocks: TurnBlocks;
  /** the largest frame a user may send: a step (h and targets) or its adapter, with room for the header */
  readonly frameLimit: number;
  readonly activity: Activity;
  /** what the edge holds for its users' training (HeldBytes): flat in their number unless the scheme is 'sfl' */
  readonly held = new HeldBytes();
  readonly queue: UserQueue;
  readonly link: CloudLink;
  private readonly rounds: RoundRunner;
  /** the global adapter version this edge is at */
  version: number;
  /**
   * the version before it: a user that read the manifest just before a round ended asks for
   * this one, so it is served (and kept) too
   */
  previousVersion: number | undefined;
  /**
   * users this edge's operator dropped: their hello is refused until the cloud says its operator
   * admitted them again; `reported` once the cloud recorded the removal
   */
  private readonly removed = new Map<string, { reported: boolean }>();
  private closed = false;

  constructor(private readonly o: EdgeOptions) {
    const { manifest } = o.registration;
    // a restarted edge keeps out whom its operator removed before (the cloud remembers them)
    for (const userId of o.registration.removedUsers) this.removed.set(userId, { reported: true });
    this.edgeId = o.edgeId;
    this.provider = o.provider;
    this.blocks = o.blocks;
    this.manifest = manifest;
    this.config = o.config;
    this.userSegment = o.userSegment;
    this.tokenizer = o.tokenizer;
    this.version = manifest.version;
    const c = o.config;
    const t = manifest.train;
    const adapterBytes = loraParameterCount(c, manifest.lora, 0, manifest.plan.k) * 4;
    this.frameLimit = Math.max(t.batch * t.seq * (modelDims(c).width + 1) * 4, adapterBytes) + 64 * 1024;
    const { metrics, log } = o;
    this.activity = new Activity(metrics, log);
    this.queue = new UserQueue({
      edgeId: o.edgeId,
      edgeSecret: o.edgeSecret,
      version: () => this.version,
      metrics,
      activity: this.activity,
      log,
      onChange: () => this.reportStatus(),
    });
    this.link = new CloudLink({
      cloudUrl: o.cloudUrl,
      edgeId: o.edgeId,
      edgeSecret: o.edgeSecret,
      url: o.url,
      registration: o.registration,
      lora: manifest.lora,
      cloudTimeoutMs: o.cloudTimeoutMs,
      metrics,
      activity: this.activity,
      log,
    });
    this.rounds = new RoundRunner({
      manifest,
      config: c,
      blocks: o.blocks,
      queue: this.queue,
      link: this.link,
      metrics,
      activity: this.activity,
      log,
      stepTimeoutMs: o.stepTimeoutMs,
      stepBudgetMs: o.stepBudgetMs,
      maxMisses: o.maxMisses,
      cloudTimeoutMs: o.cloudTimeoutMs,
      setVersion: (v) => this.setVersion(v),
      reportStatus: () => this.reportStatus(),
      held: this.held,
    });
    metrics.sampled('splitllm_edge_users_connected', 'users with an open connection', () => this.queue.users.size);
    metrics.sampled('splitllm_edge_users_waiting', 'users waiting for their turn', () => this.queue.waitingCount());
    metrics.sampled('splitllm_edge_cloud_connected', '1 while the cloud connection is open', () =>
      this.link.connected ? 1 : 0,
    );
  }

  /** The connected users by id. */
  get users(): ReadonlyMap<string, UserConn> {
    return this.queue.users;
  }

  get cloudConnected(): boolean {
    return this.link.connected;
  }

  /** Opens the cloud link; resolves once it is open (and keeps it up from then on). */
  start(): Promise<void> {
    return this.link.start({
      connected: () => this.reportStatus(),
      welcome: (m) => this.setVersion(m.version),
      roundStart: (m) => this.rounds.schedule(m),
      roundEnd: (m) => {
        this.setVersion(m.version);
        this.o.log.info({ round: m.round, version: m.version }, 'round ended');
        this.queue.broadcast('round-end', { round: m.round, version: m.version });
        this.link.forgetBefore(this.previousVersion ?? m.version);
        this.reportStatus();
      },
      // the cloud's half of the round is gone with it: end the turn in progress now
      lost: (why) => this.rounds.abortTurn(new EdgeError('CLOUD_GONE', why)),
    });
  }

  /** The edge shuts down: the cloud link closes and every user goes. */
  close(): void {
    this.closed = true;
    this.link.close();
    this.queue.closeAll('edge shutting down');
  }

  /** The waiting count to the cloud, when it is connected (it hears it again on reconnect). */
  reportStatus(): void {
    if (!this.link.connected) return;
    try {
      this.link.send('edge-status', { waiting: this.queue.waitingCount() });
    } catch (e) {
      this.o.log.warn({ err: (e as Error).message }, 'could not report the status to the cloud');
    }
  }

  /** The edge part of a version's global adapter (generation runs blocks [k, m) with it). */
  async edgeAdapterAt(version: number): Promise<LoraAdapter> {
    return (await this.link.adaptersAt(version)).edge;
  }

  /** The edge moves to version `v`; the one it was at stays at hand as the previous one. */
  private setVersion(v: number): void {
    if (v === this.version) return;
    this.previousVersion = this.version;
    this.version = v;
  }

  /**
   * The user part of the current (or the previous) global adapter as a file (what
   * /api/adapters/user serves). Older versions are refused: a client asks for the current one
   * again (the manifest says which).
   */
  async userAdapterFile(version: number): Promise<Uint8Array> {
    if (version !== this.version && version !== this.previousVersion) {
      throw new EdgeError(
        'UNKNOWN_VERSION',
        `version ${version} is neither the current global version (${this.version}) nor the one before it; ` +
          'fetch the manifest for the current one',
      );
    }
    return (await this.link.adaptersAt(version)).userFile;
  }

  /** Whether `token` is the token the cloud derived for this user on this edge. */
  isUserToken(userId: string, token: string): boolean {
    return checkUserToken(this.o.edgeSecret, userId, this.o.edgeId, token);
  }

  /** The number of the round in progress, null while idle. */
  roundNumber(): number | null {
    return this.rounds.summary()?.number ?? null;
  }

  /**
   * An operator drops a user: it hears USER_REMOVED, its connection closes (4003), its turn (if
   * any) is rolled back, its hello is refused from now on and the cloud is told, so that its
   * rejoin is refused too. Undefined when no such user is connected; otherwise the first report
   * to the cloud (a failed one is retried in the background and noted on the dashboard).
   */
  dropUser(userId: string): Promise<void> | undefined {
    if (!this.queue.drop(userId, USER_REMOVED_MESSAGE)) return undefined;
    this.removed.set(userId, { reported: false });
    return this.reportRemoval(userId, 0);
  }

  private reportRemoval(userId: string, attempt: number): Promise<void> {
    const report = this.link.removeUser(userId).then(() => {
      const r = this.removed.get(userId);
      if (r) r.reported = true;
      this.o.log.info({ userId }, 'the cloud recorded the removal');
    });
    report.catch((e: unknown) => {
      const refused = (e as { code?: unknown }).code === 'UNKNOWN_USER';
      this.activity.noteError(
        'REMOVAL_NOT_RECORDED',
        `the cloud did not record the removal of ${userId}: ${(e as Error).message}` +
          (refused ? '' : '; retrying (this edge keeps refusing the user meanwhile)'),
        userId,
      );
      // a cloud that does not know the user as this edge's will not later; anything else may pass
      if (refused || this.closed || !this.removed.has(userId)) return;
      const retry = setTimeout(
        () => void this.reportRemoval(userId, attempt + 1).catch(() => undefined),
        Math.min(30_000, 1000 * 2 ** attempt),
      );
      retry.unref?.();
    });
    return report;
  }

  /**
   * The user a first frame names when it is a `hello`, with a valid token, of a user this edge's
   * operator dropped (else undefined: the queue checks the frame as usual).
   */
  droppedHello(bytes: Uint8Array): string | undefined {
    if (this.removed.size === 0) return undefined;
    try {
      const m = decodeMessage('userToEdge', bytes, { maxBytes: HELLO_MAX_BYTES });
      if (m.type !== 'hello' || !this.removed.has(m.userId) || !this.isUserToken(m.userId, m.token)) return undefined;
      return m.userId;
    } catch {
      return undefined;
    }
  }

  /**
   * Whether a user this edge dropped is still out: the cloud's word, since its operator may have
   * admitted the user again. Out while the removal is not recorded there yet, or the cloud
   * cannot say.
   */
  async stillRemoved(userId: string): Promise<boolean> {
    const r = this.removed.get(userId);
    if (!r) return false;
    if (!r.reported) return true;
    try {
      if (await this.link.userRemoved(userId)) return true;
      this.removed.delete(userId);
      this.o.log.info({ userId }, 'a dropped user was admitted again by the cloud operator');
      return false;
    } catch (e) {
      this.o.log.warn({ userId, err: (e as Error).message }, 'cannot ask the cloud about a dropped user');
      return true;
    }
  }

  /** Refuses a dropped user's new connection as the drop closed its last one (4003). */
  refuseRemoved(socket: UserSocket, userId: string): void {
    this.activity.noteError('USER_REMOVED', `refused a connection of ${userId}, whom the operator dropped`, userId);
    socket.send(encodeErrorMessage('USER_REMOVED', USER_REMOVED_MESSAGE));
    socket.close(4003, 'USER_REMOVED');
  }

  /** The users that get no turn in the round in progress (or, while idle, the next one). */
  sittingOut(): string[] {
    const round = this.rounds.summary()?.number ?? this.version + 1;
    return [...this.queue.users.values()].filter((u) => u.sitsOutThrough >= round).map((u) => u.userId);
  }

  /** Everything the operator's dashboard shows (GET /api/admin/status, with the loss series). */
  status() {
    const { activity, queue } = this;
    const last = activity.recentSteps.slice(-20);
    const secs = last.reduce((s, x) => s + x.ms, 0) / 1000;
    return {
      edgeId: this.edgeId,
      provider: this.provider,
      cloudConnected: this.link.connected,
      version: this.version,
      plan: this.manifest.plan,
      train: this.manifest.train,
      round: this.rounds.summary(),
      users: queue.order.flatMap((id, i) => {
        const u = queue.users.get(id);
        if (!u) return [];
        const { state, connectedAt, bytesIn, bytesOut, misses } = u;
        const sitsOutThrough = u.sitsOutThrough > 0 ? u.sitsOutThrough : null;
        return [{ userId: id, state, position: i + 1, connectedAt, bytesIn, bytesOut, misses, sitsOutThrough }];
      }),
      sittingOut: this.sittingOut(),
      waiting: queue.waitingCount(),
      queueFrames: queue.queueFrames,
      restarts: this.o.restarts && this.o.restarts.count > 0 ? this.o.restarts : null,
      lastStepMs: last.length ? last[last.length - 1].ms : null,
      tokensPerSecond: secs > 0 ? last.reduce((s, x) => s + x.tokens, 0) / secs : null,
      bytesIn: queue.bytesIn,
      bytesOut: queue.bytesOut,
      memory: { ...process.memoryUsage(), peakRss: peakRssBytes() ?? null },
      steps: activity.recentSteps,
      errors: activity.recentErrors.slice(-50),
      loss: activity.lossSeries ?? { round: null, points: [] },
    };
  }
}
