/**
 * The cloud's rounds (DESIGN.md, Rounds): which edges take part, the tail segment's step for
 * every edge's frames on that edge's own cloud-side LoRA copy, the end-of-round uploads, their
 * checks, the aggregate, and persistence before anyone hears of a new version.
 *
 * Every frame of one edge is handled in arrival order on a per-edge chain, so a `user-dropped`
 * can never overtake the step it follows; different edges run concurrently (their tail steps
 * queue in the one onnxruntime worker, each on its own adapter copy, so the result does not
 * depend on the order in which edges' frames arrive).
 */
import { adapterFromNamedTensors, adapterToNamedTensors, adapterSubset, AdapterCheckError, cloneAdapter, IGNORE_INDEX, type Gpt2Config, type LoraAdapter, type SplitPlan } from '@splitllm/model';
import { checkAdamWUpdate, LoraTrainState, type AdapterUpdate, type AggregationStrategy, type LoraTrainSnapshot } from '@splitllm/federation';
import { decodeFrame, encodeErrorFrame, encodeFrame, expectFrameRoundStep, f32Tensor, i32Tensor, intField, ProtocolError, stringField, type Frame, type TrainSettings } from '@splitllm/wire';
import type { MetricsRegistry } from '@splitllm/wire/node';
import type { TailSegment } from '@splitllm/onnx-runner';
import type { RoundRecord, RoundStore } from './store';

/** The socket side the coordinator needs (a `ws` WebSocket in the server, anything in tests). */
export interface EdgeChannel {
  send(bytes: Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export interface Logger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface EdgeInfo {
  edgeId: string;
  url: string;
  token: string;
  registeredAt: string;
  channel?: EdgeChannel;
  /** users waiting at the edge, as it last reported */
  waiting: number;
  /** users the cloud assigned to this edge since it registered */
  assigned: number;
  framesIn: number;
  errors: number;
}

interface UserTurn {
  userId: string;
  /** the cloud copy before this user's first step: restored if the user drops */
  before: LoraTrainSnapshot;
  steps: number;
  tokens: number;
  /** the loss of each step, in order */
  losses: number[];
  /** sum of loss x counted tokens, taken back out of the round's mean if the user drops */
  lossSum: number;
}

interface EdgeRound {
  edgeId: string;
  cloud: LoraTrainState;
  turn?: UserTurn;
  completed: UserTurn[];
  /** set when the edge's upload was accepted */
  upload?: { edge?: LoraAdapter; users: Map<string, LoraAdapter> };
  lossSum: number;
  lossCount: number;
  chain: Promise<void>;
}

interface ActiveRound {
  round: number;
  startedAt: string;
  startedMs: number;
  edges: Map<string, EdgeRound>;
  bytes: number;
  timer?: NodeJS.Timeout;
}

export interface RoundSummary extends RoundRecord {
  ms: number;
  /** every aggregated user's step losses, by edge */
  turns: Array<{ edgeId: string; userId: string; tokens: number; losses: number[] }>;
}

export interface CoordinatorOptions {
  config: Gpt2Config;
  plan: SplitPlan;
  train: TrainSettings;
  tail: TailSegment;
  store: RoundStore;
  strategy: AggregationStrategy;
  metrics: MetricsRegistry;
  log: Logger;
  /** a round starts once this many edges have waiting users ... */
  minEdges: number;
  /** ... and this many users wait in all (simulate: every user it started, so rounds rotate alike) */
  minUsers: number;
  /** no round starts once this version is reached (0: no limit) */
  maxRounds: number;
  /** an edge that has not uploaded this long after the round started is excluded from it */
  roundTimeoutMs: number;
  maxFrameBytes: number;
  onRound?: (s: RoundSummary) => void;
}

export class Coordinator {
  readonly edges = new Map<string, EdgeInfo>();
  private global: LoraAdapter;
  private latest: RoundRecord;
  private active?: ActiveRound;
  private stopping = false;
  private startTimer?: NodeJS.Timeout;
  private olderGlobal?: { version: number; adapter: LoraAdapter };
  private readonly m: {
    frames: (by?: number, l?: Record<string, string>) => void;
    bytes: (by?: number, l?: Record<string, string>) => void;
    errors: (by?: number, l?: Record<string, string>) => void;
    steps: (by?: number) => void;
    tokens: (by?: number) => void;
    rounds: (by?: number, l?: Record<string, string>) => void;
    lastLoss: (v: number) => void;
  };

  constructor(private readonly o: CoordinatorOptions) {
    this.latest = o.store.latest();
    this.global = o.store.loadAdapter(this.latest);
    const reg = o.metrics;
    this.m = {
      frames: reg.counter('splitllm_cloud_frames_total', 'protocol frames received from edges, by type'),
      bytes: reg.counter('splitllm_cloud_wire_bytes_total', 'bytes of protocol frames, by direction'),
      errors: reg.counter('splitllm_cloud_frame_errors_total', 'frames answered with an error, by code'),
      steps: reg.counter('splitllm_cloud_steps_total', 'tail-segment training steps'),
      tokens: reg.counter('splitllm_cloud_tokens_total', 'tokens trained (counted targets)'),
      rounds: reg.counter('splitllm_cloud_rounds_total', 'rounds ended, by outcome'),
      lastLoss: reg.gauge('splitllm_cloud_last_round_loss', 'mean training loss of the last recorded round'),
    };
    reg.collected('splitllm_cloud_version', 'the current global adapter version', () => this.latest.version);
    reg.collected('splitllm_cloud_edges_live', 'edges with an open connection', () => [...this.edges.values()].filter((e) => e.channel).length);
    reg.collected('splitllm_cloud_round_active', '1 while a round runs', () => (this.active ? 1 : 0));
    if (this.latest.loss !== null) this.m.lastLoss(this.latest.loss);
  }

  get version(): number {
    return this.latest.version;
  }

  get currentRound(): number | undefined {
    return this.active?.round;
  }

  globalAdapter(): LoraAdapter {
    return this.global;
  }

  /**
   * The global adapter of a recorded version (generation: the version whose edge part an edge
   * ran): the current one from memory, an older one from the store (the last one read is kept,
   * as an edge lags by at most one version around a round's end); undefined for a version that
   * was never recorded.
   */
  globalAdapterAt(version: number): LoraAdapter | undefined {
    if (version === this.latest.version) return this.global;
    if (this.olderGlobal?.version === version) return this.olderGlobal.adapter;
    if (!(version < this.latest.version)) return undefined;
    const rec = this.o.store.round(version);
    if (!rec) return undefined;
    this.olderGlobal = { version, adapter: this.o.store.loadAdapter(rec) };
    return this.olderGlobal.adapter;
  }

  /** The global adapter's part for one tier (what an edge downloads). */
  adapterPart(tier: 'user' | 'edge'): LoraAdapter {
    const { k, m } = this.o.plan;
    return tier === 'user' ? adapterSubset(this.global, 0, k) : adapterSubset(this.global, k, m);
  }

  // ------------------------------------------------------------------ edges

  registerEdge(edgeId: string, url: string, token: string): EdgeInfo {
    const old = this.edges.get(edgeId);
    if (old?.channel) {
      old.channel.close(4000, 'replaced by a new registration');
      this.detach(edgeId, 'replaced by a new registration');
    }
    const info: EdgeInfo = { edgeId, url, token, registeredAt: new Date().toISOString(), waiting: 0, assigned: old?.assigned ?? 0, framesIn: 0, errors: 0 };
    this.edges.set(edgeId, info);
    this.o.log.info({ edgeId, url }, 'edge registered');
    return info;
  }

  edgeByToken(token: string): EdgeInfo | undefined {
    for (const e of this.edges.values()) if (e.token === token) return e;
    return undefined;
  }

  attach(edgeId: string, channel: EdgeChannel): void {
    const e = this.edges.get(edgeId)!;
    e.channel = channel;
    this.o.log.info({ edgeId }, 'edge connected');
    // an edge that (re)connects mid-round sits that round out; it hears of the round's end
    this.sendTo(e, encodeFrame('edge-welcome', { edgeId, version: this.latest.version }));
  }

  /** The edge's connection closed: it leaves the running round (excluded from the aggregate). */
  detach(edgeId: string, reason: string): void {
    const e = this.edges.get(edgeId);
    if (!e || !e.channel) return;
    e.channel = undefined;
    e.waiting = 0;
    this.o.log.warn({ edgeId, reason }, 'edge disconnected');
    const r = this.active;
    if (r?.edges.has(edgeId)) {
      r.edges.delete(edgeId);
      this.o.log.warn({ edgeId, round: r.round }, 'edge excluded from the round');
      this.maybeFinishRound();
    }
  }

  /** Least-loaded live edge for a joining user. */
  pickEdge(): EdgeInfo | undefined {
    const live = [...this.edges.values()].filter((e) => e.channel);
    live.sort((a, b) => a.assigned - b.assigned || a.edgeId.localeCompare(b.edgeId));
    return live[0];
  }

  private sendTo(e: EdgeInfo, bytes: Uint8Array): void {
    if (!e.channel) return;
    this.m.bytes(bytes.byteLength, { direction: 'out' });
    if (this.active) this.active.bytes += bytes.byteLength;
    e.channel.send(bytes);
  }

  private reject(e: EdgeInfo, err: unknown, type: string): void {
    const code = err instanceof ProtocolError || err instanceof AdapterCheckError ? String(err.code) : 'INTERNAL';
    const message = err instanceof Error ? err.message : String(err);
    e.errors++;
    this.m.errors(1, { code });
    this.o.log.warn({ edgeId: e.edgeId, type, code, err: message }, 'frame rejected');
    this.sendTo(e, encodeErrorFrame(code, message));
  }

  /** One binary WebSocket message from an edge. Never throws: a bad frame is answered and logged. */
  onEdgeMessage(edgeId: string, bytes: Uint8Array): void {
    const e = this.edges.get(edgeId);
    if (!e) return;
    e.framesIn++;
    this.m.bytes(bytes.byteLength, { direction: 'in' });
    if (this.active) this.active.bytes += bytes.byteLength;
    let frame: Frame;
    try {
      frame = decodeFrame(bytes, { maxBytes: this.o.maxFrameBytes });
    } catch (err) {
      this.reject(e, err, 'undecodable');
      return;
    }
    this.m.frames(1, { type: frame.type });
    const er = this.active?.edges.get(edgeId);
    const handle = async () => {
      try {
        await this.handle(e, frame);
      } catch (err) {
        this.reject(e, err, frame.type);
      }
    };
    if (er) er.chain = er.chain.then(handle);
    else void handle();
  }

  private async handle(e: EdgeInfo, f: Frame): Promise<void> {
    switch (f.type) {
      case 'edge-status':
        e.waiting = intField(f, 'waiting');
        this.scheduleStart();
        return;
      case 'user-begin':
        return this.userBegin(e, f);
      case 'user-dropped':
        return this.userDropped(e, f);
      case 'forward':
        return this.forward(e, f);
      case 'error':
        this.o.log.warn({ edgeId: e.edgeId, code: f.fields.code, err: f.fields.message }, 'edge reported an error');
        return;
      default:
        throw new ProtocolError('UNEXPECTED_TYPE', `a "${f.type}" frame is not something an edge sends to the cloud`);
    }
  }

  private edgeRound(e: EdgeInfo, f: Frame): EdgeRound {
    const r = this.active;
    if (!r) throw new ProtocolError('NO_ROUND', 'no round is running');
    expectFrameRoundStep(f, r.round);
    const er = r.edges.get(e.edgeId);
    if (!er) throw new ProtocolError('NOT_IN_ROUND', `edge "${e.edgeId}" does not take part in round ${r.round}`);
    if (er.upload) throw new ProtocolError('ROUND_UPLOADED', `edge "${e.edgeId}" already uploaded its round ${r.round} result`);
    return er;
  }

  private userBegin(e: EdgeInfo, f: Frame): void {
    const er = this.edgeRound(e, f);
    const userId = stringField(f, 'userId');
    if (er.turn) throw new ProtocolError('TURN_OPEN', `user "${er.turn.userId}"'s turn is still open; end it before user "${userId}" begins`);
    if (er.completed.length >= this.o.train.usersPerEdge) throw new ProtocolError('TOO_MANY_USERS', `round takes ${this.o.train.usersPerEdge} user(s) per edge`);
    if (er.completed.some((t) => t.userId === userId)) throw new ProtocolError('USER_REPEATED', `user "${userId}" already trained in this round`);
    er.turn = { userId, before: er.cloud.snapshot(), steps: 0, tokens: 0, losses: [], lossSum: 0 };
  }

  private userDropped(e: EdgeInfo, f: Frame): void {
    const er = this.edgeRound(e, f);
    const userId = stringField(f, 'userId');
    // the user may drop after its last step (before its adapter reached the edge): that turn is
    // the last completed one, and nothing has happened on this copy since
    const last = er.completed[er.completed.length - 1];
    const turn = er.turn ?? (last?.userId === userId ? er.completed.pop() : undefined);
    if (!turn || turn.userId !== userId) throw new ProtocolError('UNKNOWN_USER', `user "${userId}" has no open turn at edge "${e.edgeId}"`);
    er.cloud.restore(turn.before);
    er.lossSum -= turn.lossSum;
    er.lossCount -= turn.tokens;
    this.o.log.warn({ edgeId: e.edgeId, userId, steps: turn.steps }, 'user dropped: its steps are rolled back');
    er.turn = undefined;
  }

  /** The tail step: blocks [m, L), head, loss, backward, AdamW on this edge's cloud copy. */
  private async forward(e: EdgeInfo, f: Frame): Promise<void> {
    const er = this.edgeRound(e, f);
    const turn = er.turn;
    if (!turn) throw new ProtocolError('NO_TURN', 'a forward frame needs a user-begin first');
    if (turn.steps >= this.o.train.stepsPerUser) throw new ProtocolError('TOO_MANY_STEPS', `a turn has ${this.o.train.stepsPerUser} steps`);
    expectFrameRoundStep(f, this.active!.round, turn.steps + 1);
    const userId = stringField(f, 'userId');
    if (userId !== turn.userId) throw new ProtocolError('UNKNOWN_USER', `forward for user "${userId}" during user "${turn.userId}"'s turn`);
    const { batch: B, seq: T } = this.o.train;
    const D = this.o.config.nEmbd;
    const h = f32Tensor(f, 'h', [B, T, D]);
    const targets = i32Tensor(f, 'targets', [B, T]);
    const V = this.o.config.vocabSize;
    for (let i = 0; i < targets.length; i++) {
      const t = targets[i];
      if (t !== IGNORE_INDEX && !(t >= 0 && t < V)) throw new ProtocolError('BAD_TARGET', `target ${t} at position ${i} is outside [0, ${V}) and is not ${IGNORE_INDEX}`);
    }
    turn.steps++; // claimed before the await: a duplicate of this step is refused
    const r = await this.o.tail.step(er.cloud.adapter, h, targets, B, T);
    if (!Number.isFinite(r.loss)) throw new ProtocolError('NOT_FINITE', `the loss of step ${turn.steps} is ${r.loss}`);
    er.cloud.step(r.loraGrads);
    turn.tokens += r.count;
    turn.losses.push(r.loss);
    turn.lossSum += r.loss * r.count;
    er.lossSum += r.loss * r.count;
    er.lossCount += r.count;
    this.m.steps();
    this.m.tokens(r.count);
    const step = turn.steps;
    this.sendTo(e, encodeFrame('backward', { round: this.active!.round, step, loss: r.loss, count: r.count }, { dh: { data: r.dx, shape: [B, T, D], codec: this.o.train.codec } }));
    if (step === this.o.train.stepsPerUser) {
      // the turn's last step: it counts once its user's adapter arrives in the edge's upload
      er.completed.push(turn);
      er.turn = undefined;
    }
  }

  // ------------------------------------------------------------------ rounds

  private scheduleStart(delayMs = 0): void {
    if (this.startTimer || this.active || this.stopping) return;
    this.startTimer = setTimeout(() => {
      this.startTimer = undefined;
      this.maybeStartRound();
    }, delayMs);
  }

  private maybeStartRound(): void {
    if (this.active || this.stopping) return;
    if (this.o.maxRounds > 0 && this.latest.version >= this.o.maxRounds) return;
    const ready = [...this.edges.values()].filter((e) => e.channel && e.waiting > 0);
    if (ready.length < this.o.minEdges) return;
    if (ready.reduce((n, e) => n + e.waiting, 0) < this.o.minUsers) return;
    const round = this.latest.version + 1;
    const { m } = this.o.plan;
    const cloudPart = adapterSubset(this.global, m, this.o.config.nLayer);
    const r: ActiveRound = { round, startedAt: new Date().toISOString(), startedMs: Date.now(), edges: new Map(), bytes: 0 };
    for (const e of ready) {
      r.edges.set(e.edgeId, { edgeId: e.edgeId, cloud: new LoraTrainState(cloudPart, this.o.train.adamw), completed: [], lossSum: 0, lossCount: 0, chain: Promise.resolve() });
    }
    this.active = r;
    r.timer = setTimeout(() => this.timeoutRound(round), this.o.roundTimeoutMs);
    r.timer.unref?.();
    this.o.log.info({ round, edges: [...r.edges.keys()] }, 'round started');
    const start = encodeFrame('round-start', { round, version: this.latest.version, usersPerEdge: this.o.train.usersPerEdge, stepsPerUser: this.o.train.stepsPerUser });
    for (const e of ready) this.sendTo(e, start);
  }

  private timeoutRound(round: number): void {
    const r = this.active;
    if (!r || r.round !== round) return;
    for (const [edgeId, er] of r.edges) {
      if (!er.upload) {
        r.edges.delete(edgeId);
        this.o.log.warn({ edgeId, round }, 'edge timed out: excluded from the round');
      }
    }
    this.maybeFinishRound();
  }

  /**
   * An edge's end-of-round upload (an `update` frame): its edge-side adapter and the adapter of
   * every user that completed its turn. Checked in full before any of it is kept.
   */
  async acceptUpdate(edgeId: string, bytes: Uint8Array): Promise<{ accepted: boolean; round: number }> {
    const e = this.edges.get(edgeId)!;
    this.m.bytes(bytes.byteLength, { direction: 'in' });
    const f = decodeFrame(bytes, { maxBytes: this.o.maxFrameBytes });
    if (f.type !== 'update') throw new ProtocolError('UNEXPECTED_TYPE', `expected an "update" frame, got "${f.type}"`);
    const er = this.edgeRound(e, f);
    const r = this.active!;
    await er.chain; // every step of this edge is applied first
    if (this.active !== r || r.edges.get(edgeId) !== er) throw new ProtocolError('NOT_IN_ROUND', `edge "${edgeId}" is no longer part of round ${r.round}`);
    if (er.upload) throw new ProtocolError('ROUND_UPLOADED', `edge "${edgeId}" already uploaded its round ${r.round} result`);
    if (stringField(f, 'edgeId') !== edgeId) throw new ProtocolError('BAD_FIELD', 'update.edgeId is not the uploading edge');
    if (er.turn) throw new ProtocolError('TURN_OPEN', `user "${er.turn.userId}"'s turn has not ended`);
    try {
      return this.checkUpdate(e, f, r, er, bytes.byteLength);
    } catch (err) {
      // a refused upload takes its edge out of the round: the others need not wait for it
      r.edges.delete(edgeId);
      this.o.log.warn({ edgeId, round: r.round, err: (err as Error).message }, 'edge excluded from the round: its upload was refused');
      this.maybeFinishRound();
      throw err;
    }
  }

  private checkUpdate(e: EdgeInfo, f: Frame, r: ActiveRound, er: EdgeRound, frameBytes: number): { accepted: boolean; round: number } {
    const edgeId = e.edgeId;
    r.bytes += frameBytes + intField(f, 'userBytes');
    const listed = f.fields.users;
    if (!Array.isArray(listed) || !listed.every((u) => typeof u === 'object' && u !== null && typeof (u as { userId?: unknown }).userId === 'string')) {
      throw new ProtocolError('BAD_FIELD', 'update.users must be a list of {userId}');
    }
    const ids = (listed as Array<{ userId: string }>).map((u) => u.userId).sort();
    const expected = er.completed.map((t) => t.userId).sort();
    if (ids.join('\n') !== expected.join('\n')) {
      throw new ProtocolError('UPDATE_MISMATCH', `update lists users [${ids.join(', ')}], the cloud trained [${expected.join(', ')}]`);
    }
    const lora = this.global.config;
    const { lr } = this.o.train.adamw;
    const steps = this.o.train.stepsPerUser;
    const userGlobal = this.adapterPart('user');
    const users = new Map<string, LoraAdapter>();
    for (const t of er.completed) {
      const adapter = adapterFromNamedTensors(lora, f.tensors, `user.${t.userId}.`);
      checkAdamWUpdate(userGlobal, adapter, lr, steps);
      users.set(t.userId, adapter);
    }
    let edge: LoraAdapter | undefined;
    if (er.completed.length > 0) {
      edge = adapterFromNamedTensors(lora, f.tensors, 'edge.');
      checkAdamWUpdate(this.adapterPart('edge'), edge, lr, steps * er.completed.length);
    }
    // every tensor of the frame must belong to one of the adapters just read
    const known = new Set<string>();
    for (const [userId, a] of users) for (const name of adapterToNamedTensors(a, `user.${userId}.`).keys()) known.add(name);
    if (edge) for (const name of adapterToNamedTensors(edge, 'edge.').keys()) known.add(name);
    for (const name of f.tensors.keys()) if (!known.has(name)) throw new ProtocolError('BAD_TENSOR', `update carries an unexpected tensor "${name}"`);
    er.upload = { edge, users };
    this.o.log.info({ edgeId, round: r.round, users: ids }, 'edge update accepted');
    this.maybeFinishRound();
    return { accepted: true, round: r.round };
  }

  private maybeFinishRound(): void {
    const r = this.active;
    if (!r) return;
    if ([...r.edges.values()].some((er) => !er.upload)) return;
    this.active = undefined;
    clearTimeout(r.timer);
    try {
      this.finishRound(r);
    } catch (err) {
      this.o.log.error({ round: r.round, err: (err as Error).message }, 'round could not be recorded; the global adapter is unchanged');
      this.m.rounds(1, { outcome: 'failed' });
    }
    this.scheduleStart(0);
  }

  private finishRound(r: ActiveRound): void {
    const updates: AdapterUpdate[] = [];
    let tokens = 0;
    let lossSum = 0;
    let lossCount = 0;
    const participants: string[] = [];
    for (const er of r.edges.values()) {
      const up = er.upload!;
      const edgeTokens = er.completed.reduce((s, t) => s + t.tokens, 0);
      if (edgeTokens === 0) continue;
      tokens += edgeTokens;
      lossSum += er.lossSum;
      lossCount += er.lossCount;
      participants.push(`edge:${er.edgeId}`);
      updates.push({ from: `edge:${er.edgeId}`, adapter: up.edge!, tokens: edgeTokens });
      updates.push({ from: `cloud:${er.edgeId}`, adapter: er.cloud.copyAdapter(), tokens: edgeTokens });
      for (const t of er.completed) {
        participants.push(`user:${t.userId}`);
        updates.push({ from: `user:${t.userId}`, adapter: up.users.get(t.userId)!, tokens: t.tokens });
      }
    }
    const users = participants.filter((p) => p.startsWith('user:')).length;
    if (tokens === 0) {
      this.o.log.warn({ round: r.round }, 'round ended with no completed user: nothing to aggregate, version unchanged');
      this.m.rounds(1, { outcome: 'empty' });
      // nobody trained: wait a little before trying again rather than spinning
      this.scheduleStart(1000);
      return;
    }
    const next = this.o.strategy.aggregate(this.global, updates);
    const loss = lossCount > 0 ? lossSum / lossCount : null;
    const rec = this.o.store.commitRound(next, {
      round: r.round,
      tokens,
      users,
      edges: participants.length - users,
      loss,
      bytes: r.bytes,
      startedAt: r.startedAt,
      participants,
    });
    // persisted: now it may be told
    this.global = cloneAdapter(next);
    this.latest = rec;
    this.m.rounds(1, { outcome: 'recorded' });
    if (loss !== null) this.m.lastLoss(loss);
    this.o.log.info({ round: r.round, version: rec.version, loss, users, tokens }, 'round recorded');
    const end = encodeFrame('round-end', { round: r.round, version: rec.version });
    for (const e of this.edges.values()) this.sendTo(e, end);
    const turns = [...r.edges.values()].flatMap((er) => er.completed.map((t) => ({ edgeId: er.edgeId, userId: t.userId, tokens: t.tokens, losses: t.losses })));
    this.o.onRound?.({ ...rec, ms: Date.now() - r.startedMs, turns });
  }

  status() {
    const r = this.active;
    return {
      version: this.latest.version,
      round: r
        ? {
            number: r.round,
            startedAt: r.startedAt,
            edges: [...r.edges.values()].map((er) => ({
              edgeId: er.edgeId,
              user: er.turn?.userId ?? null,
              step: er.turn?.steps ?? 0,
              completed: er.completed.map((t) => t.userId),
              uploaded: !!er.upload,
            })),
          }
        : null,
      last: this.latest,
      edges: [...this.edges.values()].map((e) => ({ edgeId: e.edgeId, url: e.url, live: !!e.channel, waiting: e.waiting, assigned: e.assigned, errors: e.errors })),
      settings: { plan: this.o.plan, train: this.o.train, minEdges: this.o.minEdges, minUsers: this.o.minUsers, maxRounds: this.o.maxRounds, strategy: this.o.strategy.name },
    };
  }

  stop(): void {
    this.stopping = true;
    clearTimeout(this.startTimer);
    if (this.active) clearTimeout(this.active.timer);
  }
}
