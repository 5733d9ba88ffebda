/**
 * The round lifecycle: the strategy picks the edges and the configuration of the next round, the
 * edges' frames step their cloud copies (tail.ts), each edge uploads its result (checked here in
 * full before any of it is kept), and once every edge still in the round has uploaded, the
 * strategy aggregates and the new version is persisted before any edge hears of it.
 *
 * An edge leaves a running round when its connection closes, its upload is refused, or the
 * round's deadline passes before it uploaded; the others finish without it.
 */
import {
  adapterFromNamedTensors,
  adapterToNamedTensors,
  type LoraAdapter,
  type ModelConfig,
  modelDims,
} from '@splitllm/model';
import {
  aggregateWithReport,
  checkAdamWUpdate,
  HeldBytes,
  type AdapterUpdate,
  type AggregationStrategy,
  type RoundConfig,
  type RoundSettings,
} from '@splitllm/federation';
import {
  encodeMessage,
  expectRoundStep,
  ProtocolError,
  UPDATE_EDGE_PREFIX,
  updateUserPrefix,
  type Incoming,
  type Outgoing,
  type TrainingScheme,
  type TrainSettings,
} from '@splitllm/wire';
import { peakRssBytes, resetPeakRss } from '@splitllm/onnx-runner';
import type { Registry } from 'prom-client';
import type { EdgePort, Logger } from './edge-registry';
import { CloudConfigError } from './errors';
import { collected, type CloudMetrics } from './metrics';
import type { RoundRecord } from './store';
import { type CloudSteps, EdgeTail } from './tail';
import type { GlobalVersions } from './versions';

interface ActiveRound {
  round: number;
  config: RoundConfig;
  startedAt: string;
  startedMs: number;
  edges: Map<string, EdgeTail>;
  /** accepted uploads, by edge */
  uploads: Map<string, EdgeUpload>;
  /** every byte of the round: the edges' frames and uploads, and what the edges counted on their users' sockets */
  bytes: number;
  /** what the edges counted on their users' sockets */
  userEdgeBytes: number;
  deadline?: ReturnType<typeof setTimeout>;
}

/** An edge's checked upload: its adapter of blocks [k, m) and each trained user's [0, k). */
export interface EdgeUpload {
  edge?: LoraAdapter;
  users: Map<string, LoraAdapter>;
  /** what the edge process held: its high-water RSS (null where the platform does not say) and its HeldBytes peak */
  memory: ProcessMemory;
}

/** A process's memory over a round: see HeldBytes (packages/federation) for what `heldPeak` counts. */
export interface ProcessMemory {
  peakRss: number | null;
  heldPeak: number;
}

export interface RoundSummary extends RoundRecord {
  ms: number;
  /** every aggregated user's step losses, by edge */
  turns: Array<{ edgeId: string; userId: string; tokens: number; losses: number[] }>;
  /** the versions whose adapter directories the retention policy deleted after this one was recorded */
  evicted: number[];
  scheme: TrainingScheme;
  /** the bytes on the users' sockets and on the edges' (frames and uploads); together `bytes` */
  userEdgeBytes: number;
  edgeCloudBytes: number;
  /** the cloud's memory and each uploading edge's, over this round */
  memory: { cloud: ProcessMemory; edges: Record<string, ProcessMemory> };
}

/** The running round as /api/status shows it. */
export interface RoundStatus {
  number: number;
  startedAt: string;
  edges: Array<{ edgeId: string; user: string | null; step: number; completed: string[]; uploaded: boolean }>;
}

export interface RoundsOptions {
  config: ModelConfig;
  train: TrainSettings;
  /** the tail step, by where the labels are */
  steps: CloudSteps;
  versions: GlobalVersions;
  edges: EdgePort;
  strategy: AggregationStrategy;
  metrics: Pick<CloudMetrics, 'steps' | 'tokens' | 'rounds'>;
  /** where the round-active gauge is registered (none in tests) */
  registry?: Registry;
  log: Logger;
  minEdges: number;
  minUsers: number;
  /** no round starts once this version is reached (0: no limit) */
  maxRounds: number;
  /** an edge that has not uploaded this long after the round started is excluded from it */
  roundTimeoutMs: number;
  /** an aggregation that takes at least this long is warned about (default SLOW_AGGREGATION_MS) */
  slowAggregationMs?: number;
  onRound?: (s: RoundSummary) => void;
}

/** Pause before asking again after a round in which nobody trained (rather than spinning). */
const EMPTY_ROUND_BACKOFF_MS = 1000;

/**
 * Aggregation runs on the cloud's event loop, which answers nothing while it runs. The gated
 * strategies score every update with the TypeScript reference model: under 2 s a round on the
 * shipped model, minutes at GPT-2 small's shape (seen on an H200). Past this, the operator is told.
 */
export const SLOW_AGGREGATION_MS = 10_000;

export class Rounds {
  /** what the cloud holds per user: its copies, their snapshots and the steps' saved activations */
  readonly held = new HeldBytes();
  private active?: ActiveRound;
  /**
   * `${round}/${edgeId}/${userId}` of the turns an edge's upload ended (acceptUpdate): their
   * user-dropped, when it comes after, has nothing left to roll back. Kept for the last two rounds.
   */
  private readonly droppedAtUpload = new Set<string>();
  private stopping = false;
  private startTimer?: ReturnType<typeof setTimeout>;

  constructor(private readonly o: RoundsOptions) {
    if (o.registry)
      collected(o.registry, 'splitllm_cloud_round_active', '1 while a round runs', () => (this.active ? 1 : 0));
  }

  /** The number of the running round, if one runs. */
  get current(): number | undefined {
    return this.active?.round;
  }

  /** What the strategy decides from: the run's settings. */
  get settings(): RoundSettings {
    const { minEdges, minUsers, train } = this.o;
    return {
      minEdges,
      minUsers,
      usersPerEdge: train.usersPerEdge,
      stepsPerUser: train.stepsPerUser,
      lr: train.adamw.lr,
    };
  }

  /** Counts traffic of the running round (frames in and out, uploads). */
  countBytes(bytes: number): void {
    if (this.active) this.active.bytes += bytes;
  }

  /**
   * Asks the strategy for a round after `delayMs`. A timer, not a wait for a message: edges'
   * reports arriving in one tick are answered with one decision, and an empty round is followed
   * by a pause.
   */
  scheduleStart(delayMs = 0): void {
    if (this.startTimer || this.active || this.stopping) return;
    this.startTimer = setTimeout(() => {
      this.startTimer = undefined;
      this.maybeStart();
    }, delayMs);
  }

  /**
   * Runs `task` in order with the edge's other frames of the running round (at once when the edge
   * is not in it). The returned promise carries the task's outcome.
   */
  enqueue(edgeId: string, task: () => Promise<void> | void): Promise<void> {
    const t = this.active?.edges.get(edgeId);
    return t ? t.enqueue(task) : Promise.resolve().then(task);
  }

  private maybeStart(): void {
    if (this.active || this.stopping) return;
    const { versions, strategy, maxRounds, log } = this.o;
    if (maxRounds > 0 && versions.version >= maxRounds) return;
    const round = versions.version + 1;
    const settings = this.settings;
    const candidates = this.o.edges.candidates();
    const live = new Set(candidates.map((c) => c.edgeId));
    let chosen = [...new Set(strategy.selectEdges(round, candidates, settings))].filter((id) => live.has(id));
    if (chosen.length === 0) return;
    // 'sequential': one user at a time across the system, so one edge per round, the edges taking turns
    if (this.o.train.scheme === 'sequential') chosen = [chosen.sort()[(round - 1) % chosen.length]];
    let config: RoundConfig;
    try {
      config = checkRoundConfig(strategy.configureRound(round, settings), settings);
    } catch (err) {
      log.error({ round, strategy: strategy.name, err: (err as Error).message }, 'round not started');
      return;
    }
    const cloudPart = versions.part('cloud');
    const shape = {
      batch: this.o.train.batch,
      seq: this.o.train.seq,
      nEmbd: modelDims(this.o.config).width,
      vocabSize: this.o.config.vocabSize,
      codec: this.o.train.codec,
    };
    const edges = new Map<string, EdgeTail>();
    this.held.resetPeak();
    for (const key of this.droppedAtUpload) if (Number(key.split('/')[0]) < round - 1) this.droppedAtUpload.delete(key);
    // the round's own peak: start-up (loading the sessions) sets the lifetime one, which hides what
    // a round holds per user (docs/bench-sweep.md)
    resetPeakRss();
    const { adamw, scheme } = this.o.train;
    for (const id of chosen) {
      edges.set(id, new EdgeTail(id, round, cloudPart, adamw, config, shape, this.o.steps, scheme, this.held));
    }
    const now = Date.now();
    const r: ActiveRound = {
      round,
      config,
      startedAt: new Date(now).toISOString(),
      startedMs: now,
      edges,
      uploads: new Map(),
      bytes: 0,
      userEdgeBytes: 0,
    };
    this.active = r;
    r.deadline = setTimeout(() => this.deadlinePassed(r), this.o.roundTimeoutMs);
    r.deadline.unref?.();
    log.info({ round, edges: chosen }, 'round started');
    const start = encodeMessage('cloudToEdge', 'round-start', {
      round,
      version: versions.version,
      usersPerEdge: config.usersPerEdge,
      stepsPerUser: config.stepsPerUser,
    });
    for (const id of chosen) this.o.edges.send(id, start);
  }

  /** The running round and the edge's part of it, for a message of round `m.round`. */
  private inRound(edgeId: string, m: { type: string; round: number }): { r: ActiveRound; t: EdgeTail } {
    const r = this.active;
    if (!r) throw new ProtocolError('NO_ROUND', 'no round is running');
    expectRoundStep(m, r.round);
    const t = r.edges.get(edgeId);
    if (!t) throw new ProtocolError('NOT_IN_ROUND', `edge "${edgeId}" does not take part in round ${r.round}`);
    if (r.uploads.has(edgeId)) {
      throw new ProtocolError('ROUND_UPLOADED', `edge "${edgeId}" already uploaded its round ${r.round} result`);
    }
    return { r, t };
  }

  private edgeTail(edgeId: string, m: { type: string; round: number }): EdgeTail {
    return this.inRound(edgeId, m).t;
  }

  userBegin(edgeId: string, m: Incoming<'edgeToCloud', 'user-begin'>): void {
    this.edgeTail(edgeId, m).begin(m);
  }

  userDropped(edgeId: string, m: Incoming<'edgeToCloud', 'user-dropped'>): void {
    // already rolled back when the edge's upload came first (acceptUpdate): nothing left to do
    if (this.droppedAtUpload.has(`${m.round}/${edgeId}/${m.userId}`)) return;
    const turn = this.edgeTail(edgeId, m).drop(m);
    this.o.log.warn({ edgeId, userId: turn.userId, steps: turn.steps }, 'user dropped: its steps are rolled back');
  }

  /** Labels in the cloud: one step of the edge's current user; the `backward` goes back to the edge. */
  async forward(edgeId: string, m: Incoming<'edgeToCloud', 'forward'>): Promise<void> {
    this.sendBackward(edgeId, await this.edgeTail(edgeId, m).forward(m));
  }

  /** Labels on the device: the first half of a step; the last hidden state goes back to the edge. */
  async activations(edgeId: string, m: Incoming<'edgeToCloud', 'activations'>): Promise<void> {
    const hidden = await this.edgeTail(edgeId, m).activations(m);
    this.o.edges.send(edgeId, encodeMessage('cloudToEdge', 'hidden', hidden));
  }

  /** Labels on the device: the second half of a step, from the tab's dL/dhL. */
  async headGrad(edgeId: string, m: Incoming<'edgeToCloud', 'head-grad'>): Promise<void> {
    this.sendBackward(edgeId, await this.edgeTail(edgeId, m).headGrad(m));
  }

  private sendBackward(edgeId: string, back: Outgoing<'cloudToEdge', 'backward'>): void {
    this.o.metrics.steps.inc();
    this.o.metrics.tokens.inc(back.count);
    this.o.edges.send(edgeId, encodeMessage('cloudToEdge', 'backward', back));
  }

  /** The edge's connection closed: it leaves the running round. */
  excludeEdge(edgeId: string, why: string): void {
    const r = this.active;
    if (!r?.edges.has(edgeId)) return;
    r.edges.get(edgeId)?.dispose();
    r.edges.delete(edgeId);
    r.uploads.delete(edgeId);
    this.o.log.warn({ edgeId, round: r.round }, why);
    this.maybeFinish();
  }

  private deadlinePassed(r: ActiveRound): void {
    if (this.active !== r) return;
    for (const edgeId of [...r.edges.keys()]) {
      if (!r.uploads.has(edgeId)) {
        r.edges.get(edgeId)?.dispose();
        r.edges.delete(edgeId);
        this.o.log.warn({ edgeId, round: r.round }, 'edge timed out: excluded from the round');
      }
    }
    this.maybeFinish();
  }

  /**
   * An edge's end-of-round upload: its edge-side adapter and the adapter of every user that
   * completed its turn. Checked in full before any of it is kept; a refused upload takes its edge
   * out of the round (the others need not wait for it).
   */
  async acceptUpdate(
    edgeId: string,
    m: Incoming<'edgeUpload', 'update'>,
    frameBytes: number,
  ): Promise<{ accepted: boolean; round: number }> {
    const { r, t } = this.inRound(edgeId, m);
    await t.settled(); // every step of this edge is applied first
    if (this.active !== r || r.edges.get(edgeId) !== t) {
      throw new ProtocolError('NOT_IN_ROUND', `edge "${edgeId}" is no longer part of round ${r.round}`);
    }
    if (r.uploads.has(edgeId)) {
      throw new ProtocolError('ROUND_UPLOADED', `edge "${edgeId}" already uploaded its round ${r.round} result`);
    }
    if (m.edgeId !== edgeId) throw new ProtocolError('BAD_FIELD', 'update.edgeId is not the uploading edge');
    // The edge's upload says which users completed. A turn still open here whose user it does not
    // list was dropped at the edge: its `user-dropped` travels on the WebSocket and can arrive after
    // this HTTP upload, so it is rolled back now (as that frame would) rather than costing the edge
    // the round and its other users' work.
    const listed = new Set(m.users.map((u) => u.userId));
    for (const turn of [...t.turns.values()]) {
      if (listed.has(turn.userId)) continue;
      t.drop({ userId: turn.userId });
      this.droppedAtUpload.add(`${r.round}/${edgeId}/${turn.userId}`);
      this.o.log.warn(
        { edgeId, userId: turn.userId, steps: turn.steps },
        'user dropped (the upload came before its user-dropped): its steps are rolled back',
      );
    }
    const open = t.turns.values().next().value;
    if (open) throw new ProtocolError('TURN_OPEN', `user "${open.userId}"'s turn has not ended`);
    r.bytes += frameBytes + m.userBytes;
    r.userEdgeBytes += m.userBytes;
    let upload: EdgeUpload;
    try {
      upload = checkUpload(m, t, this.o.versions, r.config, this.o.train.scheme);
    } catch (err) {
      t.dispose();
      r.edges.delete(edgeId);
      this.o.log.warn(
        { edgeId, round: r.round, err: (err as Error).message },
        'edge excluded from the round: its upload was refused',
      );
      this.maybeFinish();
      throw err;
    }
    r.uploads.set(edgeId, upload);
    this.o.log.info({ edgeId, round: r.round, users: [...upload.users.keys()].sort() }, 'edge update accepted');
    this.maybeFinish();
    return { accepted: true, round: r.round };
  }

  private maybeFinish(): void {
    const r = this.active;
    if (!r) return;
    for (const edgeId of r.edges.keys()) if (!r.uploads.has(edgeId)) return;
    this.active = undefined;
    clearTimeout(r.deadline);
    try {
      this.finish(r);
    } catch (err) {
      for (const t of r.edges.values()) t.dispose();
      this.o.log.error(
        { round: r.round, err: (err as Error).message },
        'round could not be recorded; the global adapter is unchanged',
      );
      this.o.metrics.rounds.inc({ outcome: 'failed' });
    }
    this.scheduleStart(0);
  }

  private finish(r: ActiveRound): void {
    const updates: AdapterUpdate[] = [];
    let tokens = 0;
    let lossSum = 0;
    let lossCount = 0;
    const participants: string[] = [];
    for (const t of r.edges.values()) {
      const up = r.uploads.get(t.edgeId);
      const edgeTokens = t.tokens();
      // every edge still in the round uploaded, with an edge adapter whenever a turn completed
      if (!up?.edge || edgeTokens === 0) continue;
      tokens += edgeTokens;
      lossSum += t.lossSum;
      lossCount += t.lossCount;
      participants.push(`edge:${t.edgeId}`);
      updates.push({ from: `edge:${t.edgeId}`, adapter: up.edge, tokens: edgeTokens });
      updates.push({ from: `cloud:${t.edgeId}`, adapter: t.cloudPart(), tokens: edgeTokens });
      for (const turn of t.completed) {
        const adapter = up.users.get(turn.userId);
        if (!adapter) continue; // checkUpload read one for every completed turn
        participants.push(`user:${turn.userId}`);
        // 'sequential': each user started from the adapter of the one before, so the last one's is
        // the round's user part (carrying all of them), weighted by the tokens of the whole chain
        if (this.o.train.scheme !== 'sequential')
          updates.push({ from: `user:${turn.userId}`, adapter, tokens: turn.tokens });
        else if (turn === t.completed[t.completed.length - 1])
          updates.push({ from: `user:${turn.userId}`, adapter, tokens: edgeTokens });
      }
    }
    const memory = {
      cloud: { peakRss: peakRssBytes() ?? null, heldPeak: this.held.peak },
      edges: Object.fromEntries([...r.uploads].map(([id, u]) => [id, u.memory])),
    };
    for (const t of r.edges.values()) t.dispose();
    const users = participants.filter((p) => p.startsWith('user:')).length;
    if (tokens === 0) {
      this.o.log.warn(
        { round: r.round },
        'round ended with no completed user: nothing to aggregate, version unchanged',
      );
      this.o.metrics.rounds.inc({ outcome: 'empty' });
      this.scheduleStart(EMPTY_ROUND_BACKOFF_MS);
      return;
    }
    const { versions } = this.o;
    const t0 = performance.now();
    const aggregated = aggregateWithReport(this.o.strategy, versions.adapter, updates);
    const aggregateMs = Math.round(performance.now() - t0);
    if (aggregateMs >= (this.o.slowAggregationMs ?? SLOW_AGGREGATION_MS)) {
      const strategy = this.o.strategy.name;
      this.o.log.warn(
        {
          round: r.round,
          strategy,
          ms: aggregateMs,
          hint: strategy.startsWith('gate-')
            ? 'the gate scores every update with the TypeScript reference model in this process; ' +
              'for a model this size choose a strategy without gate- (--aggregation)'
            : undefined,
        },
        'slow aggregation: the cloud answered nothing while it ran',
      );
    }
    const next = aggregated.adapter;
    // every refusal is logged and recorded with the round (the operator's /api/admin/rounds);
    // the refused participants stay in `participants`: they took part, their update did not count
    for (const x of aggregated.refused) {
      this.o.log.warn(
        { round: r.round, from: x.from, code: x.code, globalLoss: x.globalLoss, loss: x.loss, reason: x.reason },
        'update refused by the aggregation strategy',
      );
    }
    for (const note of aggregated.notes) this.o.log.info({ round: r.round, note }, 'aggregation');
    const loss = lossCount > 0 ? lossSum / lossCount : null;
    const rec = versions.record(next, {
      round: r.round,
      tokens,
      users,
      edges: participants.length - users,
      loss,
      bytes: r.bytes,
      startedAt: r.startedAt,
      participants,
      refused: aggregated.refused,
    });
    // persisted: now it may be told
    this.o.metrics.rounds.inc({ outcome: 'recorded' });
    const evicted = versions.lastEvicted;
    this.o.log.info(
      { round: r.round, version: rec.version, loss, users, tokens, evicted, aggregateMs },
      'round recorded',
    );
    this.o.edges.broadcast(encodeMessage('cloudToEdge', 'round-end', { round: r.round, version: rec.version }));
    const turns = [...r.edges.values()].flatMap((t) =>
      t.completed.map((u) => ({ edgeId: t.edgeId, userId: u.userId, tokens: u.tokens, losses: u.losses })),
    );
    this.o.onRound?.({
      ...rec,
      ms: Date.now() - r.startedMs,
      turns,
      evicted,
      scheme: this.o.train.scheme,
      userEdgeBytes: r.userEdgeBytes,
      edgeCloudBytes: r.bytes - r.userEdgeBytes,
      memory,
    });
  }

  status(): RoundStatus | null {
    const r = this.active;
    if (!r) return null;
    return {
      number: r.round,
      startedAt: r.startedAt,
      edges: [...r.edges.values()].map((t) => {
        // with 'sfl' several turns are open: the status names the first
        const open = t.turns.values().next().value;
        return {
          edgeId: t.edgeId,
          user: open?.userId ?? null,
          step: open?.steps ?? 0,
          completed: t.completed.map((u) => u.userId),
          uploaded: r.uploads.has(t.edgeId),
        };
      }),
    };
  }

  stop(): void {
    this.stopping = true;
    clearTimeout(this.startTimer);
    if (this.active) clearTimeout(this.active.deadline);
  }
}

/**
 * The strategy's configuration, checked against what the other tiers can follow: the edge and
 * the user take the learning rate from the run's manifest (the round-start does not carry one),
 * and the cloud's upload size limit was computed from the run's users per edge.
 */
function checkRoundConfig(c: RoundConfig, s: RoundSettings): RoundConfig {
  const posInt = (v: number) => Number.isSafeInteger(v) && v >= 1;
  if (!posInt(c.usersPerEdge) || !posInt(c.stepsPerUser)) {
    throw new CloudConfigError(
      'BAD_ROUND_CONFIG',
      `usersPerEdge and stepsPerUser must be integers >= 1, got ${JSON.stringify(c)}`,
    );
  }
  if (c.usersPerEdge > s.usersPerEdge) {
    throw new CloudConfigError(
      'BAD_ROUND_CONFIG',
      `usersPerEdge ${c.usersPerEdge} exceeds the run's ${s.usersPerEdge} (the upload limit)`,
    );
  }
  if (c.lr !== s.lr) {
    throw new CloudConfigError(
      'BAD_ROUND_CONFIG',
      `lr ${c.lr} differs from the run's ${s.lr}, which the edges and users train with`,
    );
  }
  return c;
}

/**
 * Reads and checks an edge's upload against what the cloud itself saw: the users listed are
 * exactly the users whose turns it trained; each adapter has the exact modules and shapes, finite
 * values and an update norm within the AdamW bound; no tensor is left over.
 */
export function checkUpload(
  m: Incoming<'edgeUpload', 'update'>,
  t: EdgeTail,
  versions: GlobalVersions,
  config: RoundConfig,
  scheme: TrainingScheme,
): EdgeUpload {
  const ids = m.users.map((u) => u.userId).sort();
  const expected = t.completed.map((u) => u.userId).sort();
  if (ids.join('\n') !== expected.join('\n')) {
    throw new ProtocolError(
      'UPDATE_MISMATCH',
      `update lists users [${ids.join(', ')}], the cloud trained [${expected.join(', ')}]`,
    );
  }
  const lora = versions.adapter.config;
  const { lr, stepsPerUser } = config;
  const userGlobal = versions.part('user');
  const users = new Map<string, LoraAdapter>();
  for (const [i, u] of t.completed.entries()) {
    const adapter = adapterFromNamedTensors(lora, m.tensors, updateUserPrefix(u.userId));
    // 'sequential': the i-th user carried on from the ones before it, so it is (i + 1) turns from the global one
    checkAdamWUpdate(userGlobal, adapter, lr, stepsPerUser * (scheme === 'sequential' ? i + 1 : 1));
    users.set(u.userId, adapter);
  }
  let edge: LoraAdapter | undefined;
  if (t.completed.length > 0) {
    edge = adapterFromNamedTensors(lora, m.tensors, UPDATE_EDGE_PREFIX);
    // 'sfl': the mean of copies that each took one turn's steps; otherwise one copy took them all
    const steps = stepsPerUser * (scheme === 'sfl' ? 1 : t.completed.length);
    checkAdamWUpdate(versions.part('edge'), edge, lr, steps);
  }
  // every tensor of the upload must belong to one of the adapters just read
  const known = new Set<string>();
  for (const [userId, a] of users)
    for (const name of adapterToNamedTensors(a, updateUserPrefix(userId)).keys()) known.add(name);
  if (edge) for (const name of adapterToNamedTensors(edge, UPDATE_EDGE_PREFIX).keys()) known.add(name);
  for (const name of m.tensors.keys()) {
    if (!known.has(name)) throw new ProtocolError('BAD_TENSOR', `update carries an unexpected tensor "${name}"`);
  }
  if (!Number.isSafeInteger(m.heldPeak) || m.heldPeak < 0) {
    throw new ProtocolError('BAD_FIELD', `update.heldPeak must be an integer >= 0, got ${m.heldPeak}`);
  }
  const peakRss = m.peakRss ?? null;
  if (peakRss !== null && !(Number.isSafeInteger(peakRss) && peakRss > 0)) {
    throw new ProtocolError('BAD_FIELD', `update.peakRss must be an integer > 0 when given, got ${peakRss}`);
  }
  return { edge, users, memory: { peakRss, heldPeak: m.heldPeak } };
}
