/**
 * The edge tier: blocks [k, m) of every user attached to this edge, one user at a time (the
 * paper's scheme), so the edge holds one set of activations and one edge-side LoRA whatever
 * the number of waiting users. A waiting user costs a socket and a queue entry.
 *
 * Per step: the user's h1 arrives, blocks [k, m) run forward (onnxruntime worker), h2 goes to
 * the cloud, dL/dh2 comes back, the backward gives dL/dh1 and the edge LoRA's gradients, AdamW
 * steps the edge LoRA, dL/dh1 goes back to the user.
 *
 * A user who disconnects, times out or sends an unusable adapter is dropped from the round:
 * the edge LoRA and the cloud's copy are rolled back to before its turn, and the edge carries
 * on with the next user. A malformed frame is answered with an error frame and changes nothing.
 */
import { AdapterCheckError, adapterFromNamedTensors, adapterToNamedTensors, IGNORE_INDEX, type Gpt2Config, type LoraAdapter } from '@splitllm/model';
import { checkAdamWUpdate, LoraTrainState } from '@splitllm/federation';
import { decodeFrame, encodeErrorFrame, encodeFrame, expectFrameRoundStep, f32Tensor, i32Tensor, intField, ProtocolError, responseError, stringField, type Frame, type RunManifest } from '@splitllm/wire';
import { type MetricsRegistry, checkUserToken } from '@splitllm/wire/node';
import { peakRssBytes, type BlocksSegment } from '@splitllm/onnx-runner';
import { WebSocket } from 'ws';

export interface Logger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface UserSocket {
  send(bytes: Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export class EdgeError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'EdgeError';
  }
}

interface Waiter {
  type: string;
  accept: (f: Frame) => void;
  resolve: (f: Frame) => void;
  reject: (e: Error) => void;
}

export interface UserConn {
  userId: string;
  socket: UserSocket;
  connectedAt: string;
  state: 'waiting' | 'training';
  bytesIn: number;
  bytesOut: number;
  waiter?: Waiter;
  closed: boolean;
}

export interface StepRecord {
  round: number;
  userId: string;
  step: number;
  loss: number;
  tokens: number;
  ms: number;
  at: string;
}

/** One step of a round as the operator's dashboard charts it. */
export type LossPoint = Omit<StepRecord, 'round'>;

interface EdgeRoundState {
  round: number;
  version: number;
  train: LoraTrainState;
  current?: { userId: string; step: number; steps: number };
  completed: Array<{ userId: string; adapter: LoraAdapter; steps: number; tokens: number }>;
  userBytes: number;
}

/** A global adapter version as this edge holds it: the user part as served (a frame) and decoded, and the edge part. */
interface AdapterVersion {
  userFrame: Uint8Array;
  user: LoraAdapter;
  edge: LoraAdapter;
}

export interface CloudLink {
  url: string;
  edgeToken: string;
}

export interface EdgeOptions {
  edgeId: string;
  edgeSecret: string;
  manifest: RunManifest;
  config: Gpt2Config;
  blocks: BlocksSegment;
  metrics: MetricsRegistry;
  log: Logger;
  /** a user's next frame must arrive within this time during its turn */
  stepTimeoutMs: number;
  /** the cloud must answer a step within this time */
  cloudTimeoutMs: number;
  provider: string;
}

const RECENT = 200;
/** a round's loss series keeps at most this many steps (the dashboard's chart) */
const MAX_LOSS_POINTS = 10_000;

/**
 * The next frame of a type from one peer: `attach` installs the waiter where that peer's frames
 * are dispatched, and clears it once the wait is over (answered, failed or timed out).
 */
function waitFor(type: string, accept: (f: Frame) => void, timeoutMs: number, timeoutError: () => Error, attach: (w: Waiter | undefined) => void): Promise<Frame> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => w.reject(timeoutError()), timeoutMs);
    const settle = () => {
      clearTimeout(timer);
      attach(undefined);
    };
    const w: Waiter = {
      type,
      accept,
      resolve: (f) => {
        settle();
        resolve(f);
      },
      reject: (e) => {
        settle();
        reject(e);
      },
    };
    attach(w);
  });
}

/** The code of our own errors (protocol, adapter checks, edge); `fallback` for anything else. */
function codeOf(e: unknown, fallback: string): string {
  return e instanceof EdgeError || e instanceof ProtocolError || e instanceof AdapterCheckError ? String(e.code) : fallback;
}

export class Edge {
  readonly users = new Map<string, UserConn>();
  /** user ids in queue order: the head trains next */
  readonly queue: string[] = [];
  version: number;
  private cloudWs?: WebSocket;
  private link?: CloudLink;
  private cloudWaiter?: Waiter;
  private round?: EdgeRoundState;
  private roundTask: Promise<void> = Promise.resolve();
  private readonly adapters = new Map<number, AdapterVersion>();
  readonly recentSteps: StepRecord[] = [];
  readonly recentErrors: Array<{ at: string; code: string; message: string; userId?: string }> = [];
  /** every step's loss in the current round, or the last one while idle (the loss is in the cloud's backward frame) */
  lossSeries: { round: number; points: LossPoint[] } | null = null;
  bytesIn = 0;
  bytesOut = 0;
  private readonly m: Record<'bytes' | 'errors' | 'steps' | 'tokens' | 'drops', (by?: number, l?: Record<string, string>) => void> & {
    stepMs: (v: number) => void;
  };

  constructor(private readonly o: EdgeOptions) {
    this.version = o.manifest.version;
    const reg = o.metrics;
    this.m = {
      bytes: reg.counter('splitllm_edge_wire_bytes_total', 'bytes of protocol frames, by peer and direction'),
      errors: reg.counter('splitllm_edge_frame_errors_total', 'frames answered with an error, by code'),
      steps: reg.counter('splitllm_edge_steps_total', 'edge-segment training steps'),
      tokens: reg.counter('splitllm_edge_tokens_total', 'tokens trained'),
      drops: reg.counter('splitllm_edge_users_dropped_total', 'users dropped from a round'),
      stepMs: reg.gauge('splitllm_edge_last_step_ms', 'wall time of the last step (user frame in to gradient out)'),
    };
    reg.collected('splitllm_edge_users_connected', 'users with an open connection', () => this.users.size);
    reg.collected('splitllm_edge_users_waiting', 'users waiting for their turn', () => this.waitingCount());
    reg.collected('splitllm_edge_cloud_connected', '1 while the cloud connection is open', () => (this.cloudWs?.readyState === WebSocket.OPEN ? 1 : 0));
  }

  get cloudConnected(): boolean {
    return this.cloudWs?.readyState === WebSocket.OPEN;
  }

  private noteError(code: string, message: string, userId?: string): void {
    this.recentErrors.push({ at: new Date().toISOString(), code, message, userId });
    if (this.recentErrors.length > RECENT) this.recentErrors.shift();
    this.m.errors(1, { code });
    this.o.log.warn({ code, err: message, userId }, 'frame rejected');
  }

  // ------------------------------------------------------------------ the cloud link

  /** Opens the WebSocket to the cloud; resolves once open. `onClose` hears of its loss. */
  connectCloud(link: CloudLink, onClose: (reason: string) => void): Promise<void> {
    this.link = link;
    const wsUrl = link.url.replace(/^http/, 'ws') + '/ws/edge';
    const ws = new WebSocket(wsUrl, { headers: { authorization: `Bearer ${link.edgeToken}` }, maxPayload: 256 * 2 ** 20 });
    this.cloudWs = ws;
    return new Promise((resolve, reject) => {
      ws.once('open', () => {
        this.o.log.info({ cloud: link.url }, 'connected to the cloud');
        this.reportStatus();
        resolve();
      });
      ws.once('error', (e) => reject(e));
      ws.on('message', (data: Buffer) => this.onCloudMessage(new Uint8Array(data.buffer, data.byteOffset, data.byteLength)));
      ws.on('close', (code, reason) => {
        if (this.cloudWs !== ws) return;
        this.cloudWs = undefined;
        const why = `cloud connection closed (${code}${reason.length ? ` ${reason.toString()}` : ''})`;
        this.cloudWaiter?.reject(new EdgeError('CLOUD_GONE', why));
        this.cloudWaiter = undefined;
        // the cloud's half of the round is gone with it: end the turn in progress now
        const current = this.round?.current && this.users.get(this.round.current.userId);
        current?.waiter?.reject(new EdgeError('CLOUD_GONE', why));
        onClose(why);
      });
    });
  }

  closeCloud(): void {
    const ws = this.cloudWs;
    this.cloudWs = undefined;
    ws?.close();
  }

  private sendCloud(bytes: Uint8Array): void {
    const ws = this.cloudWs;
    if (!ws || ws.readyState !== WebSocket.OPEN) throw new EdgeError('CLOUD_GONE', 'the cloud is not connected');
    this.m.bytes(bytes.byteLength, { peer: 'cloud', direction: 'out' });
    ws.send(bytes);
  }

  private reportStatus(): void {
    if (this.cloudConnected) this.sendCloud(encodeFrame('edge-status', { waiting: this.waitingCount() }));
  }

  private onCloudMessage(bytes: Uint8Array): void {
    this.m.bytes(bytes.byteLength, { peer: 'cloud', direction: 'in' });
    let f: Frame;
    try {
      f = decodeFrame(bytes, { maxBytes: 256 * 2 ** 20 });
    } catch (e) {
      this.noteError((e as ProtocolError).code ?? 'BAD_FRAME', `from the cloud: ${(e as Error).message}`);
      return;
    }
    switch (f.type) {
      case 'round-start': {
        const args = [intField(f, 'round'), intField(f, 'version'), intField(f, 'usersPerEdge'), intField(f, 'stepsPerUser')] as const;
        // the cloud may announce the next round before this edge has heard back from its upload
        // of the last one: rounds run one after another
        this.roundTask = this.roundTask.then(() => this.runRound(...args));
        return;
      }
      case 'round-end': {
        this.version = intField(f, 'version');
        this.o.log.info({ round: f.fields.round, version: this.version }, 'round ended');
        const end = encodeFrame('round-end', { round: intField(f, 'round'), version: this.version });
        for (const u of this.users.values()) this.sendUser(u, end);
        for (const v of this.adapters.keys()) if (v < this.version) this.adapters.delete(v);
        this.reportStatus();
        return;
      }
      case 'error': {
        const err = new EdgeError(String(f.fields.code), `cloud: ${String(f.fields.message)}`);
        if (this.cloudWaiter) this.cloudWaiter.reject(err);
        else this.noteError(err.code, err.message);
        return;
      }
      case 'edge-welcome':
        this.version = intField(f, 'version');
        return;
      default: {
        const w = this.cloudWaiter;
        if (w && w.type === f.type) {
          try {
            w.accept(f);
          } catch (e) {
            w.reject(e as Error);
            return;
          }
          w.resolve(f);
        } else this.noteError('UNEXPECTED_TYPE', `unexpected "${f.type}" frame from the cloud`);
      }
    }
  }

  private awaitCloud(type: string, accept: (f: Frame) => void): Promise<Frame> {
    return waitFor(type, accept, this.o.cloudTimeoutMs, () => new EdgeError('CLOUD_TIMEOUT', `the cloud did not answer within ${this.o.cloudTimeoutMs} ms`), (w) => (this.cloudWaiter = w));
  }

  /** The global adapter of a version: the user part (served to users as is) and the edge part. */
  private async adaptersFor(version: number): Promise<AdapterVersion> {
    const cached = this.adapters.get(version);
    if (cached) return cached;
    const link = this.link!;
    const get = async (tier: string) => {
      const res = await fetch(`${link.url}/api/adapters/${version}/${tier}`, { headers: { authorization: `Bearer ${link.edgeToken}` }, signal: AbortSignal.timeout(this.o.cloudTimeoutMs) });
      if (!res.ok) throw new EdgeError('ADAPTER_DOWNLOAD', `GET adapters/${version}/${tier}: ${res.status} ${await res.text()}`);
      return new Uint8Array(await res.arrayBuffer());
    };
    const userFrame = await get('user');
    const maxBytes = 256 * 2 ** 20;
    const user = adapterFromNamedTensors(this.o.manifest.lora, decodeFrame(userFrame, { maxBytes }).tensors);
    const edge = adapterFromNamedTensors(this.o.manifest.lora, decodeFrame(await get('edge'), { maxBytes }).tensors);
    const entry = { userFrame, user, edge };
    this.adapters.set(version, entry);
    return entry;
  }

  /** The edge part of a version's global adapter (generation runs blocks [k, m) with it). */
  async edgeAdapterAt(version: number): Promise<LoraAdapter> {
    return (await this.adaptersFor(version)).edge;
  }

  /** The user part of the current global adapter as an `adapter` frame (what /api/adapters/user serves). */
  async userAdapterFrame(version: number): Promise<Uint8Array> {
    if (version !== this.version) throw new EdgeError('UNKNOWN_VERSION', `version ${version} is not the current global version (${this.version})`);
    return (await this.adaptersFor(version)).userFrame;
  }

  // ------------------------------------------------------------------ users

  waitingCount(): number {
    let n = 0;
    for (const u of this.users.values()) if (u.state === 'waiting') n++;
    return n;
  }

  private sendUser(u: UserConn, bytes: Uint8Array): void {
    if (u.closed) return;
    u.bytesOut += bytes.byteLength;
    this.bytesOut += bytes.byteLength;
    if (this.round && this.round.current?.userId === u.userId) this.round.userBytes += bytes.byteLength;
    this.m.bytes(bytes.byteLength, { peer: 'user', direction: 'out' });
    u.socket.send(bytes);
  }

  private sendQueuePositions(): void {
    const waiting = this.waitingCount();
    this.queue.forEach((id, i) => {
      const u = this.users.get(id);
      if (u && u.state === 'waiting') this.sendUser(u, encodeFrame('queue', { position: i + 1, waiting }));
    });
  }

  /**
   * A new user socket. The first frame must be `hello` with a token the cloud derived for this
   * (user, edge) pair; `authenticate` returns the user or undefined after answering with an error.
   */
  authenticate(socket: UserSocket, bytes: Uint8Array): UserConn | undefined {
    let f: Frame;
    try {
      f = decodeFrame(bytes, { maxBytes: 64 * 1024 });
      if (f.type !== 'hello') throw new ProtocolError('UNAUTHORIZED', `the first frame must be "hello", got "${f.type}"`);
      const userId = stringField(f, 'userId', 64);
      const token = stringField(f, 'token', 128);
      if (!checkUserToken(this.o.edgeSecret, userId, this.o.edgeId, token)) throw new ProtocolError('UNAUTHORIZED', `user "${userId}" has no valid token for edge "${this.o.edgeId}"`);
      const old = this.users.get(userId);
      if (old) this.removeUser(old, 'replaced by a new connection', true);
      const u: UserConn = { userId, socket, connectedAt: new Date().toISOString(), state: 'waiting', bytesIn: bytes.byteLength, bytesOut: 0, closed: false };
      this.users.set(userId, u);
      this.queue.push(userId);
      this.o.log.info({ userId, position: this.queue.length }, 'user connected');
      this.sendUser(u, encodeFrame('welcome', { userId, edgeId: this.o.edgeId, version: this.version, position: this.queue.length }));
      this.sendQueuePositions();
      this.reportStatus();
      return u;
    } catch (e) {
      const code = e instanceof ProtocolError ? String(e.code) : 'BAD_FRAME';
      this.noteError(code, (e as Error).message);
      socket.send(encodeErrorFrame(code, (e as Error).message));
      socket.close(4001, code);
      return undefined;
    }
  }

  /** A frame from an authenticated user. Never throws. */
  onUserMessage(u: UserConn, bytes: Uint8Array, maxBytes: number): void {
    u.bytesIn += bytes.byteLength;
    this.bytesIn += bytes.byteLength;
    if (this.round?.current?.userId === u.userId) this.round.userBytes += bytes.byteLength;
    this.m.bytes(bytes.byteLength, { peer: 'user', direction: 'in' });
    try {
      const f = decodeFrame(bytes, { maxBytes });
      if (f.type === 'bye') {
        this.removeUser(u, `user left: ${String(f.fields.reason)}`, true);
        return;
      }
      const w = u.waiter;
      if (!w) throw new ProtocolError('NOT_YOUR_TURN', `a "${f.type}" frame is not expected now (position ${this.queue.indexOf(u.userId) + 1} in the queue)`);
      if (f.type !== w.type) throw new ProtocolError('UNEXPECTED_TYPE', `expected a "${w.type}" frame, got "${f.type}"`);
      w.accept(f); // contextual checks (round, step, shapes): throws without changing anything
      w.resolve(f);
    } catch (e) {
      const code = codeOf(e, 'BAD_FRAME');
      this.noteError(code, (e as Error).message, u.userId);
      this.sendUser(u, encodeErrorFrame(code, (e as Error).message));
    }
  }

  /** The user's connection closed (or an operator dropped it): its state goes at once. */
  removeUser(u: UserConn, reason: string, closeSocket = false, closeCode = 1000): void {
    if (u.closed) return;
    u.closed = true;
    if (closeSocket) u.socket.close(closeCode, reason.slice(0, 100));
    this.users.delete(u.userId);
    const i = this.queue.indexOf(u.userId);
    if (i >= 0) this.queue.splice(i, 1);
    u.waiter?.reject(new EdgeError('USER_GONE', reason));
    u.waiter = undefined;
    this.o.log.info({ userId: u.userId, reason }, 'user disconnected');
    this.sendQueuePositions();
    if (this.cloudConnected) this.reportStatus();
  }

  private awaitUser(u: UserConn, type: string, accept: (f: Frame) => void): Promise<Frame> {
    if (u.closed) return Promise.reject(new EdgeError('USER_GONE', 'the user is gone'));
    return waitFor(type, accept, this.o.stepTimeoutMs, () => new EdgeError('USER_TIMEOUT', `no "${type}" frame within ${this.o.stepTimeoutMs} ms`), (w) => (u.waiter = w));
  }

  // ------------------------------------------------------------------ rounds

  private async runRound(round: number, version: number, usersPerEdge: number, stepsPerUser: number): Promise<void> {
    const { manifest } = this.o;
    try {
      this.version = version;
      const { edge } = await this.adaptersFor(version);
      const state: EdgeRoundState = { round, version, train: new LoraTrainState(edge, manifest.train.adamw), completed: [], userBytes: 0 };
      this.round = state;
      this.lossSeries = { round, points: [] };
      this.o.log.info({ round, version }, 'round started');
      const tried = new Set<string>();
      while (state.completed.length < usersPerEdge && this.cloudConnected) {
        const userId = this.queue.find((id) => !tried.has(id) && this.users.get(id)?.state === 'waiting');
        if (!userId) break;
        tried.add(userId);
        const u = this.users.get(userId)!;
        const done = await this.runTurn(state, u, stepsPerUser);
        if (done) state.completed.push(done);
        // to the back of the queue, so the next round trains the next user
        const i = this.queue.indexOf(userId);
        if (i >= 0) this.queue.push(...this.queue.splice(i, 1));
        if (!u.closed) u.state = 'waiting';
        this.sendQueuePositions();
      }
      await this.upload(round, state.completed, state.train.adapter, state.userBytes);
    } catch (e) {
      this.noteError(e instanceof EdgeError ? e.code : 'ROUND_FAILED', `round ${round}: ${(e as Error).message}`);
      // tell the cloud this edge sits the round out, rather than leave it waiting (best effort:
      // when the upload itself was refused, the cloud has already excluded this edge)
      if (!(e instanceof EdgeError && e.code === 'UPLOAD_REFUSED') && this.cloudConnected) {
        await this.upload(round, [], undefined, 0).catch(() => undefined);
      }
    } finally {
      this.round = undefined;
      this.reportStatusSafe();
    }
  }

  private reportStatusSafe(): void {
    try {
      this.reportStatus();
    } catch {
      /* the cloud is gone; the status goes out on reconnect */
    }
  }

  /** One user's turn; returns its result, or undefined when it was dropped (everything rolled back). */
  private async runTurn(state: EdgeRoundState, u: UserConn, steps: number) {
    const { round } = state;
    const { batch: B, seq: T, codec } = this.o.manifest.train;
    const D = this.o.config.nEmbd;
    const V = this.o.config.vocabSize;
    const before = state.train.snapshot();
    u.state = 'training';
    state.current = { userId: u.userId, step: 0, steps };
    let tokens = 0;
    try {
      this.sendCloud(encodeFrame('user-begin', { round, userId: u.userId }));
      this.sendUser(u, encodeFrame('turn', { round, version: state.version, steps, batch: B, seq: T, codec }));
      this.o.log.info({ round, userId: u.userId, steps }, 'turn started');
      for (let step = 1; step <= steps; step++) {
        state.current.step = step;
        let h: Float32Array | undefined;
        let targets: Int32Array | undefined;
        await this.awaitUser(u, 'forward', (f) => {
          expectFrameRoundStep(f, round, step);
          const hh = f32Tensor(f, 'h', [B, T, D]);
          const tt = i32Tensor(f, 'targets', [B, T]);
          for (let i = 0; i < tt.length; i++) {
            const t = tt[i];
            if (t !== IGNORE_INDEX && !(t >= 0 && t < V)) throw new ProtocolError('BAD_TARGET', `target ${t} at position ${i} is outside [0, ${V}) and is not ${IGNORE_INDEX}`);
          }
          h = hh;
          targets = tt;
        });
        const t0 = performance.now();
        const fwd = await this.o.blocks.forward(state.train.adapter, h!, B, T);
        const reply = this.awaitCloud('backward', (f) => {
          expectFrameRoundStep(f, round, step);
          f32Tensor(f, 'dh', [B, T, D]);
        });
        this.sendCloud(encodeFrame('forward', { round, step, userId: u.userId }, { h: { data: fwd.y, shape: [B, T, D], codec }, targets: { data: targets!, shape: [B, T] } }));
        const back = await reply;
        const dh2 = f32Tensor(back, 'dh', [B, T, D]);
        const loss = Number(back.fields.loss);
        const count = intField(back, 'count');
        const bwd = await this.o.blocks.backward(state.train.adapter, h!, fwd.saved, dh2, B, T);
        state.train.step(bwd.loraGrads);
        this.sendUser(u, encodeFrame('backward', { round, step, loss, count }, { dh: { data: bwd.dx, shape: [B, T, D], codec } }));
        const ms = performance.now() - t0;
        tokens += count;
        this.m.steps();
        this.m.tokens(count);
        this.m.stepMs(ms);
        const point: LossPoint = { userId: u.userId, step, loss, tokens: count, ms, at: new Date().toISOString() };
        this.recentSteps.push({ round, ...point });
        if (this.recentSteps.length > RECENT) this.recentSteps.shift();
        if (this.lossSeries?.round === round && this.lossSeries.points.length < MAX_LOSS_POINTS) this.lossSeries.points.push(point);
      }
      const global = (await this.adaptersFor(state.version)).user;
      let adapter: LoraAdapter | undefined;
      await this.awaitUser(u, 'adapter', (f) => {
        expectFrameRoundStep(f, round);
        const a = adapterFromNamedTensors(this.o.manifest.lora, f.tensors);
        checkAdamWUpdate(global, a, this.o.manifest.train.adamw.lr, steps);
        adapter = a;
      });
      this.sendUser(u, encodeFrame('turn-end', { round, accepted: true }));
      this.o.log.info({ round, userId: u.userId, tokens }, 'turn completed');
      return { userId: u.userId, adapter: adapter!, steps, tokens };
    } catch (e) {
      const code = codeOf(e, 'STEP_FAILED');
      state.train.restore(before);
      this.m.drops();
      this.noteError(code, `user dropped from round ${round}: ${(e as Error).message}`, u.userId);
      try {
        this.sendCloud(encodeFrame('user-dropped', { round, userId: u.userId }));
      } catch {
        /* the cloud is gone: the round is void there anyway */
      }
      if (!u.closed) {
        this.sendUser(u, encodeErrorFrame(code, (e as Error).message));
        this.sendUser(u, encodeFrame('turn-end', { round, accepted: false, reason: code }));
      }
      return undefined;
    } finally {
      state.current = undefined;
    }
  }

  /** The round's result to the cloud: the edge LoRA and each completed user's adapter. */
  private async upload(round: number, completed: EdgeRoundState['completed'], edgeAdapter: LoraAdapter | undefined, userBytes: number): Promise<void> {
    const tensors = new Map<string, { data: Float32Array; shape: number[] }>();
    if (completed.length > 0 && edgeAdapter) for (const [n, t] of adapterToNamedTensors(edgeAdapter, 'edge.')) tensors.set(n, t);
    for (const c of completed) for (const [n, t] of adapterToNamedTensors(c.adapter, `user.${c.userId}.`)) tensors.set(n, t);
    const tokens = completed.reduce((s, c) => s + c.tokens, 0);
    const body = encodeFrame(
      'update',
      { round, edgeId: this.o.edgeId, tokens, users: completed.map((c) => ({ userId: c.userId, steps: c.steps, tokens: c.tokens })), userBytes },
      tensors,
    );
    const link = this.link!;
    this.m.bytes(body.byteLength, { peer: 'cloud', direction: 'out' });
    const res = await fetch(`${link.url}/api/rounds/${round}/update`, {
      method: 'POST',
      headers: { authorization: `Bearer ${link.edgeToken}`, 'content-type': 'application/octet-stream' },
      body: new Blob([body as Uint8Array<ArrayBuffer>]),
    });
    if (!res.ok) throw new EdgeError('UPLOAD_REFUSED', `the cloud refused the round ${round} upload: ${res.status} ${await res.text()}`);
    this.o.log.info({ round, users: completed.map((c) => c.userId), tokens }, 'round result uploaded');
  }

  /** An operator drops a user: its connection closes and its turn (if any) is rolled back. */
  dropUser(userId: string): boolean {
    const u = this.users.get(userId);
    if (!u) return false;
    // 4003: a client must not come back by itself (it would after an edge shutdown's 1000)
    this.removeUser(u, 'dropped by the operator', true, 4003);
    return true;
  }

  status() {
    const r = this.round;
    const last = this.recentSteps.slice(-20);
    const secs = last.reduce((s, x) => s + x.ms, 0) / 1000;
    return {
      edgeId: this.o.edgeId,
      provider: this.o.provider,
      cloudConnected: this.cloudConnected,
      version: this.version,
      plan: this.o.manifest.plan,
      train: this.o.manifest.train,
      round: r ? { number: r.round, version: r.version, current: r.current ?? null, completed: r.completed.map((c) => c.userId) } : null,
      users: this.queue.map((id, i) => {
        const u = this.users.get(id)!;
        return { userId: id, state: u.state, position: i + 1, connectedAt: u.connectedAt, bytesIn: u.bytesIn, bytesOut: u.bytesOut };
      }),
      waiting: this.waitingCount(),
      lastStepMs: last.length ? last[last.length - 1].ms : null,
      tokensPerSecond: secs > 0 ? last.reduce((s, x) => s + x.tokens, 0) / secs : null,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      memory: { ...process.memoryUsage(), peakRss: peakRssBytes() ?? null },
      steps: this.recentSteps,
      errors: this.recentErrors.slice(-50),
    };
  }
}

export async function fetchJson<T>(url: string, init?: RequestInit): Promise<T> {
  const res = await fetch(url, init);
  if (!res.ok) {
    const e = await responseError(res);
    throw new EdgeError(e.code, `${init?.method ?? 'GET'} ${url}: ${res.status} ${e.message}`);
  }
  return (await res.json()) as T;
}
