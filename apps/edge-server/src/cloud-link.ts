/**
 * The edge's link to the cloud: registration (the shared edge secret buys an edge token and the
 * run's manifest), the segments' download, the WebSocket the round's messages travel on (kept
 * up: when it drops, the edge registers again and reconnects, its users stay connected), the
 * global adapters by version (downloaded once each), and the round's upload.
 */
import {
  adapterFromNamedTensors,
  adapterToNamedTensors,
  codeOf,
  type LoraAdapter,
  type LoraConfig,
} from '@splitllm/model';
import {
  decodeExpected,
  decodeMessage,
  encodeMessage,
  type Incoming,
  ManifestError,
  type MessageOn,
  MessageWaiter,
  type MessageTypeOn,
  type Outgoing,
  parseRunManifest,
  type RunManifest,
  updateUserPrefix,
  UPDATE_EDGE_PREFIX,
} from '@splitllm/wire';
import { createHash } from 'node:crypto';
import { WebSocket } from 'ws';
import { CloudError, EdgeError } from './errors';
import { fetchJson } from './http';
import type { Activity, EdgeMetrics, Logger } from './telemetry';

/** Frames from the cloud (and adapter files) may be this large: a full LoRA adapter fits with room. */
const CLOUD_MAX_BYTES = 256 * 2 ** 20;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/**
 * The cloud's answer about a removed user: an operator waits for the first (Drop), a user's hello
 * for the second, well within the 10 s a hello has.
 */
const REMOVAL_TIMEOUT_MS = 4000;

export interface Registration {
  edgeToken: string;
  manifest: RunManifest;
  /** users this edge's operator removed earlier (before a restart) who are still out */
  removedUsers: string[];
}

export interface RegisterOptions {
  cloudUrl: string;
  edgeId: string;
  edgeSecret: string;
  /** where users reach this edge (the cloud hands it to them) */
  url: string;
}

/**
 * Registers with the cloud, retrying while it is unreachable for up to `giveUpAfterMs`. A wrong
 * secret is final (BAD_EDGE_SECRET from the cloud, as a CloudError).
 */
export async function register(
  o: RegisterOptions,
  log: Logger,
  giveUpAfterMs: number,
  stopped = () => false,
): Promise<Registration> {
  const deadline = Date.now() + giveUpAfterMs;
  for (let attempt = 1; ; attempt++) {
    if (stopped()) throw new EdgeError('SHUTTING_DOWN', 'the edge is shutting down');
    try {
      const r = await fetchJson<{ edgeToken: string; manifest: unknown; removedUsers?: unknown }>(
        `${o.cloudUrl}/api/edges/register`,
        {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ edgeId: o.edgeId, url: o.url, secret: o.edgeSecret }),
        },
      );
      const removedUsers = Array.isArray(r.removedUsers) ? r.removedUsers.filter((u) => typeof u === 'string') : [];
      return { edgeToken: r.edgeToken, manifest: parseRunManifest(r.manifest).manifest, removedUsers };
    } catch (e) {
      // a wrong secret, or a manifest this edge cannot run, will not get better by retrying
      if (e instanceof CloudError && e.code === 'BAD_EDGE_SECRET') throw e;
      if (e instanceof ManifestError) throw e;
      if (Date.now() > deadline) {
        throw new EdgeError(
          'CLOUD_UNREACHABLE',
          `cannot register with the cloud at ${o.cloudUrl}: ${(e as Error).message}`,
        );
      }
      if (attempt === 1 || attempt % 10 === 0)
        log.warn({ attempt, err: (e as Error).message }, 'cloud not reachable yet; retrying');
      await sleep(Math.min(2000, 100 * attempt));
    }
  }
}

/** A segment file of the run, checked against the manifest's sha-256. */
export async function downloadSegment(
  cloudUrl: string,
  token: string,
  tier: 'user' | 'edge',
  sha256: string,
): Promise<Uint8Array> {
  const res = await fetch(`${cloudUrl}/api/segments/${tier}`, { headers: { authorization: `Bearer ${token}` } });
  if (!res.ok) throw new EdgeError('SEGMENT_DOWNLOAD', `GET /api/segments/${tier}: ${res.status} ${await res.text()}`);
  const bytes = new Uint8Array(await res.arrayBuffer());
  const got = createHash('sha256').update(bytes).digest('hex');
  if (got !== sha256)
    throw new EdgeError('SEGMENT_CORRUPT', `the ${tier} segment's sha-256 is ${got}, the manifest says ${sha256}`);
  return bytes;
}

/** A global adapter version as this edge holds it: the user part as served (a file) and decoded, and the edge part. */
export interface AdapterVersion {
  userFile: Uint8Array;
  user: LoraAdapter;
  edge: LoraAdapter;
}

/** What one completed user of a round contributes to the upload. */
export interface CompletedUser {
  userId: string;
  adapter: LoraAdapter;
  steps: number;
  tokens: number;
}

/** What the cloud says, besides the answers a turn waits for. */
export interface CloudHandlers {
  welcome(m: Incoming<'cloudToEdge', 'edge-welcome'>): void;
  roundStart(m: Incoming<'cloudToEdge', 'round-start'>): void;
  roundEnd(m: Incoming<'cloudToEdge', 'round-end'>): void;
  /** the socket is open (again): the cloud should hear the edge's status */
  connected(): void;
  /** the socket was lost (before a reconnect is tried) */
  lost(why: string): void;
}

export interface CloudLinkOptions extends RegisterOptions {
  registration: Registration;
  lora: LoraConfig;
  /** the cloud must answer within this time (adapter downloads) */
  cloudTimeoutMs: number;
  metrics: EdgeMetrics;
  activity: Activity;
  log: Logger;
}

export class CloudLink {
  /**
   * where the cloud's answers to a user's turn are delivered (`backward`; `hidden` with labels on
   * the device), by user: with 'sfl' several users' steps are in flight at once
   */
  private readonly waiters = new Map<string, MessageWaiter<MessageOn<'cloudToEdge'>>>();
  private ws?: WebSocket;
  private token: string;
  private closing = false;
  private handlers?: CloudHandlers;
  private readonly adapters = new Map<number, Promise<AdapterVersion>>();

  constructor(private readonly o: CloudLinkOptions) {
    this.token = o.registration.edgeToken;
  }

  get url(): string {
    return this.o.cloudUrl;
  }

  /** The edge token of the current registration (it changes when the edge registers again). */
  get edgeToken(): string {
    return this.token;
  }

  get connected(): boolean {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  /** Opens the socket; resolves once open. From then on a lost socket is reopened until `close()`. */
  start(handlers: CloudHandlers): Promise<void> {
    this.handlers = handlers;
    return this.connect();
  }

  private connect(): Promise<void> {
    const ws = new WebSocket(`${this.o.cloudUrl.replace(/^http/, 'ws')}/ws/edge`, {
      headers: { authorization: `Bearer ${this.token}` },
      maxPayload: CLOUD_MAX_BYTES,
    });
    this.ws = ws;
    let opened = false;
    return new Promise((resolve, reject) => {
      ws.once('open', () => {
        opened = true;
        this.o.log.info({ cloud: this.o.cloudUrl }, 'connected to the cloud');
        this.handlers?.connected();
        resolve();
      });
      // before 'open' this fails the connect (its caller retries or gives up); after it, 'close' follows
      ws.on('error', (e) => reject(e));
      ws.on('message', (data: Buffer) => this.onMessage(new Uint8Array(data.buffer, data.byteOffset, data.byteLength)));
      ws.on('close', (code, reason) => {
        if (this.ws !== ws) return;
        this.ws = undefined;
        const why = `cloud connection closed (${code}${reason.length ? ` ${reason.toString()}` : ''})`;
        this.failAll(new EdgeError('CLOUD_GONE', why));
        if (!opened) return;
        this.handlers?.lost(why);
        if (!this.closing) this.reconnect(why);
      });
    });
  }

  /** Registers again (the cloud may have restarted and forgotten this edge) and reopens the socket. */
  private reconnect(why: string): void {
    this.o.log.warn({ reason: why }, 'lost the cloud; registering again');
    const segments = this.o.registration.manifest.segments;
    void (async () => {
      for (;;) {
        if (this.closing) return;
        try {
          const again = await register(this.o, this.o.log, 3_600_000, () => this.closing);
          if (
            again.manifest.segments.edge.sha256 !== segments.edge.sha256 ||
            again.manifest.segments.user.sha256 !== segments.user.sha256
          ) {
            this.o.log.error({ code: 'MODEL_CHANGED' }, 'the cloud now serves another model; restart this edge');
            return;
          }
          this.token = again.edgeToken;
          await this.connect();
          return;
        } catch (e) {
          if (this.closing) return;
          this.o.log.warn({ err: (e as Error).message }, 'reconnecting to the cloud failed; retrying');
          await sleep(1000);
        }
      }
    })();
  }

  /** Closes the socket for good; a turn waiting on the cloud ends now. */
  close(): void {
    this.closing = true;
    const ws = this.ws;
    this.ws = undefined;
    this.failAll(new EdgeError('SHUTTING_DOWN', 'the edge is shutting down'));
    ws?.close();
  }

  /** The waiter of a user's turn (made on first use; `endTurn` forgets it). */
  waiterFor(userId: string): MessageWaiter<MessageOn<'cloudToEdge'>> {
    let w = this.waiters.get(userId);
    if (!w) {
      w = new MessageWaiter();
      this.waiters.set(userId, w);
    }
    return w;
  }

  /** The user's turn is over: its waiter goes. */
  endTurn(userId: string): void {
    this.waiters.delete(userId);
  }

  /** Ends every wait on the cloud with `err` (the cloud is gone, the edge shuts down). */
  private failAll(err: Error): void {
    for (const w of this.waiters.values()) w.fail(err);
  }

  /** Sends a message on the socket; throws CLOUD_GONE when it is not open. */
  send<T extends MessageTypeOn<'edgeToCloud'>>(type: T, m: Outgoing<'edgeToCloud', T>): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) throw new EdgeError('CLOUD_GONE', 'the cloud is not connected');
    const bytes = encodeMessage('edgeToCloud', type, m);
    this.o.metrics.bytes('cloud', 'out', bytes.byteLength);
    ws.send(bytes);
  }

  private onMessage(bytes: Uint8Array): void {
    this.o.metrics.bytes('cloud', 'in', bytes.byteLength);
    let m: MessageOn<'cloudToEdge'>;
    try {
      m = decodeMessage('cloudToEdge', bytes, { maxBytes: CLOUD_MAX_BYTES });
    } catch (e) {
      this.o.activity.noteError(codeOf(e, 'BAD_FRAME'), `from the cloud: ${(e as Error).message}`);
      return;
    }
    switch (m.type) {
      case 'edge-welcome':
        this.handlers?.welcome(m);
        return;
      case 'round-start':
        this.handlers?.roundStart(m);
        return;
      case 'round-end':
        this.handlers?.roundEnd(m);
        return;
      case 'error': {
        const err = new CloudError(m.code, `cloud: ${m.message}`);
        // a turn waiting on the cloud ends with the cloud's reason: the named user's, or, when the
        // error names none, every waiting one; otherwise it is only noted
        const named = m.userId === undefined ? undefined : this.waiters.get(m.userId);
        const waiting = named ? [named] : [...this.waiters.values()];
        const failed = waiting.filter((w) => w.waitingFor !== undefined);
        for (const w of failed) w.fail(err);
        if (failed.length === 0) this.o.activity.noteError(err.code, err.message, m.userId);
        return;
      }
      case 'hidden':
      case 'backward':
        if (!this.waiters.get(m.userId)?.deliver(m))
          this.o.activity.noteError('UNEXPECTED_TYPE', `unexpected "${m.type}" frame from the cloud for ${m.userId}`);
        return;
    }
  }

  /** The global adapter of a version: the user part (served to users as is) and the edge part; downloaded once. */
  adaptersAt(version: number): Promise<AdapterVersion> {
    let entry = this.adapters.get(version);
    if (!entry) {
      entry = this.download(version);
      this.adapters.set(version, entry);
      // a failed download is tried again by the next caller (the caller hears of this one)
      entry.catch(() => {
        if (this.adapters.get(version) === entry) this.adapters.delete(version);
      });
    }
    return entry;
  }

  /** Forgets the adapters of versions before `version` (the edge keeps its current and previous one). */
  forgetBefore(version: number): void {
    for (const v of this.adapters.keys()) if (v < version) this.adapters.delete(v);
  }

  private async download(version: number): Promise<AdapterVersion> {
    const get = async (tier: 'user' | 'edge') => {
      const res = await fetch(`${this.o.cloudUrl}/api/adapters/${version}/${tier}`, {
        headers: { authorization: `Bearer ${this.token}` },
        signal: AbortSignal.timeout(this.o.cloudTimeoutMs),
      });
      if (!res.ok)
        throw new EdgeError('ADAPTER_DOWNLOAD', `GET adapters/${version}/${tier}: ${res.status} ${await res.text()}`);
      return new Uint8Array(await res.arrayBuffer());
    };
    const userFile = await get('user');
    const user = decodeExpected('adapterFile', 'adapter', userFile, { maxBytes: CLOUD_MAX_BYTES });
    const edge = decodeExpected('adapterFile', 'adapter', await get('edge'), { maxBytes: CLOUD_MAX_BYTES });
    return {
      userFile,
      user: adapterFromNamedTensors(this.o.lora, user.tensors),
      edge: adapterFromNamedTensors(this.o.lora, edge.tensors),
    };
  }

  /**
   * Tells the cloud this edge's operator removed a user (the cloud then refuses its rejoin).
   * Throws CloudError with the cloud's code when refused, or the fetch's error when unreachable.
   */
  async removeUser(userId: string): Promise<void> {
    await fetchJson(`${this.o.cloudUrl}/api/users/${encodeURIComponent(userId)}/revoke`, {
      method: 'POST',
      headers: { authorization: `Bearer ${this.token}` },
      signal: AbortSignal.timeout(REMOVAL_TIMEOUT_MS),
    });
  }

  /** Whether the cloud still has the user removed (its operator may have admitted it since). */
  async userRemoved(userId: string): Promise<boolean> {
    const r = await fetchJson<{ removed: boolean }>(`${this.o.cloudUrl}/api/users/${encodeURIComponent(userId)}`, {
      headers: { authorization: `Bearer ${this.token}` },
      signal: AbortSignal.timeout(REMOVAL_TIMEOUT_MS),
    });
    return r.removed;
  }

  /**
   * The round's result to the cloud: the edge LoRA (when some user completed) and each completed
   * user's adapter. Throws UPLOAD_REFUSED when the cloud says no.
   */
  async upload(
    round: number,
    completed: CompletedUser[],
    edgeAdapter: LoraAdapter | undefined,
    userBytes: number,
    memory: { heldPeak: number; peakRss: number | null },
  ): Promise<void> {
    const tensors = new Map<string, { data: Float32Array; shape: number[] }>();
    if (completed.length > 0 && edgeAdapter)
      for (const [n, t] of adapterToNamedTensors(edgeAdapter, UPDATE_EDGE_PREFIX)) tensors.set(n, t);
    for (const c of completed)
      for (const [n, t] of adapterToNamedTensors(c.adapter, updateUserPrefix(c.userId))) tensors.set(n, t);
    const tokens = completed.reduce((s, c) => s + c.tokens, 0);
    const users = completed.map((c) => ({ userId: c.userId, steps: c.steps, tokens: c.tokens }));
    const body = encodeMessage('edgeUpload', 'update', {
      round,
      edgeId: this.o.edgeId,
      tokens,
      users,
      userBytes,
      heldPeak: memory.heldPeak,
      ...(memory.peakRss === null ? {} : { peakRss: memory.peakRss }),
      tensors,
    });
    this.o.metrics.bytes('cloud', 'out', body.byteLength);
    const res = await fetch(`${this.o.cloudUrl}/api/rounds/${round}/update`, {
      method: 'POST',
      headers: { authorization: `Bearer ${this.token}`, 'content-type': 'application/octet-stream' },
      body: new Blob([body as Uint8Array<ArrayBuffer>]),
    });
    if (!res.ok)
      throw new EdgeError(
        'UPLOAD_REFUSED',
        `the cloud refused the round ${round} upload: ${res.status} ${await res.text()}`,
      );
    this.o.log.info({ round, users: completed.map((c) => c.userId), tokens }, 'round result uploaded');
  }
}
