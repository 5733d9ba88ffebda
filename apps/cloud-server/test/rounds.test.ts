/**
 * The round lifecycle through its interface (Rounds), with fake edges (an EdgePort that records
 * what it is sent) and a fake tail step (its loss is the first activation, its gradients a
 * constant), over a real RoundStore in a temporary directory and real wire messages.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type AggregationReport, type AggregationStrategy, type EdgeCandidate, FedAvg } from '@splitllm/federation';
import {
  adapterToNamedTensors,
  type Gpt2Config,
  initLoraAdapter,
  type LoraAdapter,
  type LoraGrads,
} from '@splitllm/model';
import {
  decodeExpected,
  decodeMessage,
  encodeMessage,
  type MessageOn,
  type TrainingScheme,
  type TrainSettings,
} from '@splitllm/wire';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { EdgePort } from '../src/edge-registry';
import { createCloudMetrics } from '../src/metrics';
import { Rounds, type RoundSummary } from '../src/rounds';
import { RoundStore } from '../src/store';
import type { TailStepper } from '../src/tail';
import { GlobalVersions } from '../src/versions';

const tiny: Gpt2Config = {
  vocabSize: 16,
  nPositions: 8,
  nEmbd: 4,
  nLayer: 4,
  nHead: 2,
  nInner: 16,
  layerNormEpsilon: 1e-5,
  bosTokenId: 0,
  eosTokenId: 0,
};
const plan = { k: 1, m: 3 };
const B = 1;
const T = 2;
const D = tiny.nEmbd;

/** Edges that record what the cloud sends them; `version` is the store's at the time of sending. */
class FakeEdges implements EdgePort {
  readonly waiting = new Map<string, number>();
  readonly sent: Array<{ to: string; m: MessageOn<'cloudToEdge'>; storedVersion: number }> = [];
  constructor(private readonly store: () => RoundStore) {}
  candidates(): EdgeCandidate[] {
    return [...this.waiting].map(([edgeId, waiting]) => ({ edgeId, waiting }));
  }
  send(edgeId: string, bytes: Uint8Array): void {
    this.sent.push({
      to: edgeId,
      m: decodeMessage('cloudToEdge', bytes),
      storedVersion: this.store().latest().version,
    });
  }
  broadcast(bytes: Uint8Array): void {
    this.send('*', bytes);
  }
  of(type: string, to?: string) {
    return this.sent.filter((s) => s.m.type === type && (to === undefined || s.to === to));
  }
}

/** The tail step's stand-in: loss = h[0], every target counted, a constant gradient. */
const fakeTail: TailStepper = {
  async step(adapter: LoraAdapter, x: Float32Array, _targets: Int32Array, b: number, t: number) {
    const loraGrads: LoraGrads = new Map();
    for (const [path, { A, B: Bm }] of adapter.layers) {
      loraGrads.set(path, {
        A: new Float32Array(A.data.length).fill(0.01),
        B: new Float32Array(Bm.data.length).fill(0.01),
      });
    }
    return { loss: x[0], count: b * t, dx: new Float32Array(b * t * D), loraGrads };
  },
};

interface Setup {
  rounds: Rounds;
  edges: FakeEdges;
  store: RoundStore;
  versions: GlobalVersions;
  summaries: RoundSummary[];
  warnings: string[];
}

const open: Rounds[] = [];
afterEach(() => {
  for (const r of open.splice(0)) r.stop();
});

function setup(o: {
  waiting: Record<string, number>;
  strategy?: AggregationStrategy;
  usersPerEdge?: number;
  scheme?: TrainingScheme;
  stepsPerUser?: number;
  roundTimeoutMs?: number;
  slowAggregationMs?: number;
}): Setup {
  const lora = { r: 2, alpha: 4, targets: ['attn.c_attn' as const] };
  const store = RoundStore.open(mkdtempSync(join(tmpdir(), 'splitllm-rounds-')), {
    baseModel: 'tiny',
    nLayer: tiny.nLayer,
  });
  store.initGlobal(initLoraAdapter(tiny, lora, 1));
  const versions = new GlobalVersions(store, plan, tiny.nLayer);
  const edges = new FakeEdges(() => store);
  for (const [id, w] of Object.entries(o.waiting)) edges.waiting.set(id, w);
  const train: TrainSettings = {
    batch: B,
    seq: T,
    stepsPerUser: o.stepsPerUser ?? 2,
    usersPerEdge: o.usersPerEdge ?? 1,
    codec: 'f32',
    adamw: { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 },
    labels: 'cloud',
    activationNoise: 0,
    scheme: o.scheme ?? 'hierarchical',
  };
  const summaries: RoundSummary[] = [];
  const warnings: string[] = [];
  const log = {
    info: () => undefined,
    warn: (_o: object, msg?: string) => void warnings.push(msg ?? ''),
    error: () => undefined,
  };
  const rounds = new Rounds({
    config: tiny,
    train,
    steps: { labels: 'cloud', tail: fakeTail },
    versions,
    edges,
    strategy: o.strategy ?? new FedAvg(),
    metrics: createCloudMetrics(),
    log,
    minEdges: 1,
    minUsers: 1,
    maxRounds: 0,
    roundTimeoutMs: o.roundTimeoutMs ?? 60_000,
    slowAggregationMs: o.slowAggregationMs,
    onRound: (s) => summaries.push(s),
  });
  open.push(rounds);
  return { rounds, edges, store, versions, summaries, warnings };
}

async function started(s: Setup, round = 1): Promise<void> {
  s.rounds.scheduleStart();
  await vi.waitFor(() => expect(s.rounds.current).toBe(round));
}

/** One user's turn at `edgeId`: user-begin, then `steps` forwards with loss `loss`, in order on the edge's chain. */
async function turn(s: Setup, edgeId: string, userId: string, steps: number, loss: number): Promise<void> {
  const round = s.rounds.current!;
  await s.rounds.enqueue(edgeId, () => s.rounds.userBegin(edgeId, { type: 'user-begin', round, userId }));
  for (let step = 1; step <= steps; step++) {
    const bytes = encodeMessage('edgeToCloud', 'forward', {
      round,
      step,
      userId,
      h: { data: new Float32Array(B * T * D).fill(loss), shape: [B, T, D] },
      targets: { data: new Int32Array(B * T).fill(3), shape: [B, T] },
    });
    const m = decodeMessage('edgeToCloud', bytes);
    if (m.type !== 'forward') throw new Error('not a forward');
    await s.rounds.enqueue(edgeId, () => s.rounds.forward(edgeId, m));
  }
}

/** The edge's upload: the global parts unchanged (norm 0) for the edge and each user listed. */
function upload(s: Setup, edgeId: string, users: string[], o: { extra?: boolean } = {}) {
  const round = s.rounds.current!;
  const tensors = new Map(users.length > 0 ? adapterToNamedTensors(s.versions.part('edge'), 'edge.') : []);
  for (const u of users)
    for (const [n, t] of adapterToNamedTensors(s.versions.part('user'), `user.${u}.`)) tensors.set(n, t);
  if (o.extra) tensors.set('stray', { data: new Float32Array(1), shape: [1] });
  const bytes = encodeMessage('edgeUpload', 'update', {
    round,
    edgeId,
    tokens: 0,
    users: users.map((userId) => ({ userId, tokens: B * T, steps: 2 })),
    userBytes: 0,
    heldPeak: 0,
    tensors,
  });
  return s.rounds.acceptUpdate(edgeId, decodeExpected('edgeUpload', 'update', bytes), bytes.byteLength);
}

describe('the round lifecycle', () => {
  it('starts a round when the strategy selects edges, with its configuration, and only with those edges', async () => {
    const calls: EdgeCandidate[][] = [];
    const onlyE2: AggregationStrategy = {
      name: 'only-e2',
      selectEdges: (_round, edges) => {
        calls.push([...edges]);
        return edges.some((e) => e.edgeId === 'e2' && e.waiting > 0) ? ['e2'] : [];
      },
      configureRound: (_round, settings) => ({ usersPerEdge: 1, stepsPerUser: 3, lr: settings.lr }),
      aggregate: (g, u) => new FedAvg().aggregate(g, u),
    };
    const s = setup({ waiting: { e1: 2, e2: 0 }, strategy: onlyE2, usersPerEdge: 2 });
    s.rounds.scheduleStart();
    await vi.waitFor(() => expect(calls).toHaveLength(1));
    expect(calls[0]).toEqual([
      { edgeId: 'e1', waiting: 2 },
      { edgeId: 'e2', waiting: 0 },
    ]);
    expect(s.rounds.current).toBeUndefined();
    expect(s.edges.sent).toEqual([]);

    s.edges.waiting.set('e2', 1);
    await started(s);
    const starts = s.edges.of('round-start');
    expect(starts.map((x) => x.to)).toEqual(['e2']);
    expect(starts[0].m).toMatchObject({ round: 1, version: 0, usersPerEdge: 1, stepsPerUser: 3 });
    // an edge the strategy left out takes no part
    await expect(
      s.rounds.enqueue('e1', () => s.rounds.userBegin('e1', { type: 'user-begin', round: 1, userId: 'u' })),
    ).rejects.toMatchObject({ code: 'NOT_IN_ROUND' });
  });

  it('completes when every selected edge uploaded, and records the version before round-end goes out', async () => {
    const s = setup({ waiting: { e1: 1, e2: 1 } });
    await started(s);
    expect(s.edges.of('round-start').map((x) => x.to)).toEqual(['e1', 'e2']);
    await turn(s, 'e1', 'a', 2, 3);
    await turn(s, 'e2', 'b', 2, 1);
    expect(s.edges.of('backward', 'e1').map((x) => x.m)).toMatchObject([
      { step: 1, loss: 3 },
      { step: 2, loss: 3 },
    ]);
    expect(await upload(s, 'e1', ['a'])).toEqual({ accepted: true, round: 1 });
    expect(s.rounds.current).toBe(1);
    expect(s.edges.of('round-end')).toEqual([]);
    await upload(s, 'e2', ['b']);
    expect(s.rounds.current).toBeUndefined();
    expect(s.versions.version).toBe(1);
    const rec = s.store.latest();
    expect(rec.participants.sort()).toEqual(['edge:e1', 'edge:e2', 'user:a', 'user:b']);
    expect(rec.tokens).toBe(2 * 2 * B * T);
    expect(rec.loss).toBeCloseTo(2, 6);
    const ends = s.edges.of('round-end');
    expect(ends).toHaveLength(1);
    expect(ends[0].m).toMatchObject({ round: 1, version: 1 });
    // the store already held version 1 when round-end was sent
    expect(ends[0].storedVersion).toBe(1);
    expect(s.summaries.map((x) => x.version)).toEqual([1]);
  });

  it("leaves a dropped user out of the aggregate and out of the round's mean loss", async () => {
    const s = setup({ waiting: { e1: 2 }, usersPerEdge: 2 });
    await started(s);
    await turn(s, 'e1', 'gone', 1, 50);
    await s.rounds.enqueue('e1', () => s.rounds.userDropped('e1', { type: 'user-dropped', round: 1, userId: 'gone' }));
    await turn(s, 'e1', 'stays', 2, 2);
    await upload(s, 'e1', ['stays']);
    const rec = s.store.latest();
    expect(rec.version).toBe(1);
    expect(rec.participants.sort()).toEqual(['edge:e1', 'user:stays']);
    expect(rec.users).toBe(1);
    expect(rec.tokens).toBe(2 * B * T);
    expect(rec.loss).toBeCloseTo(2, 6);
    expect(s.summaries[0].turns).toEqual([{ edgeId: 'e1', userId: 'stays', tokens: 2 * B * T, losses: [2, 2] }]);
  });

  it('excludes an edge whose upload is refused; the round completes with the others', async () => {
    const s = setup({ waiting: { e1: 1, e2: 1 } });
    await started(s);
    await turn(s, 'e1', 'a', 2, 1);
    await turn(s, 'e2', 'b', 2, 1);
    // lists a user the cloud did not train
    await expect(upload(s, 'e1', ['a', 'ghost'])).rejects.toMatchObject({ code: 'UPDATE_MISMATCH' });
    expect(s.warnings).toContain('edge excluded from the round: its upload was refused');
    // out of the round: a second try is refused too
    await expect(upload(s, 'e1', ['a'])).rejects.toMatchObject({ code: 'NOT_IN_ROUND' });
    await expect(upload(s, 'e2', ['b'], { extra: true })).rejects.toMatchObject({ code: 'BAD_TENSOR' });
    // both refused: the round ends with nobody, and no version is recorded
    expect(s.rounds.current).toBeUndefined();
    expect(s.versions.version).toBe(0);
    expect(s.edges.of('round-end')).toEqual([]);
  });

  it('a refused upload does not hold up the round: the other edge completes it', async () => {
    const s = setup({ waiting: { e1: 1, e2: 1 } });
    await started(s);
    await turn(s, 'e1', 'a', 2, 1);
    await turn(s, 'e2', 'b', 2, 1);
    await upload(s, 'e2', ['b']);
    await expect(upload(s, 'e1', [])).rejects.toMatchObject({ code: 'UPDATE_MISMATCH' });
    expect(s.versions.version).toBe(1);
    expect(s.store.latest().participants.sort()).toEqual(['edge:e2', 'user:b']);
  });

  it('ends the round at its deadline without the edges that have not uploaded', async () => {
    const s = setup({ waiting: { e1: 1, e2: 1 }, roundTimeoutMs: 100 });
    await started(s);
    await turn(s, 'e1', 'a', 2, 1);
    await turn(s, 'e2', 'b', 2, 1);
    await upload(s, 'e1', ['a']);
    await vi.waitFor(() => expect(s.versions.version).toBe(1), { timeout: 2000 });
    expect(s.warnings).toContain('edge timed out: excluded from the round');
    expect(s.store.latest().participants.sort()).toEqual(['edge:e1', 'user:a']);
    expect(s.edges.of('round-end').map((x) => x.m)).toMatchObject([{ round: 1, version: 1 }]);
  });

  it('takes an edge whose connection closed out of the round', async () => {
    const s = setup({ waiting: { e1: 1, e2: 1 } });
    await started(s);
    await turn(s, 'e1', 'a', 2, 1);
    s.rounds.excludeEdge('e2', 'edge excluded from the round');
    expect(s.rounds.current).toBe(1);
    await upload(s, 'e1', ['a']);
    expect(s.store.latest().participants.sort()).toEqual(['edge:e1', 'user:a']);
  });

  it("refuses frames out of the round's order with protocol codes", async () => {
    const s = setup({ waiting: { e1: 1 } });
    const begin = (round: number, userId: string) =>
      s.rounds.enqueue('e1', () => s.rounds.userBegin('e1', { type: 'user-begin', round, userId }));
    await expect(begin(1, 'a')).rejects.toMatchObject({ code: 'NO_ROUND' });
    await started(s);
    await expect(begin(2, 'a')).rejects.toMatchObject({ code: 'WRONG_ROUND' });
    await begin(1, 'a');
    await expect(begin(1, 'b')).rejects.toMatchObject({ code: 'TURN_OPEN' });
    // an upload that lists the user whose turn is still open: that turn has not ended
    await expect(upload(s, 'e1', ['a'])).rejects.toMatchObject({ code: 'TURN_OPEN' });
  });

  it("rolls back a turn the edge's upload leaves out, when its user-dropped has not arrived yet", async () => {
    // the edge sends user-dropped on its WebSocket and then POSTs its upload: the two can cross
    const s = setup({ waiting: { e1: 2 }, usersPerEdge: 2 });
    await started(s);
    await turn(s, 'e1', 'stays', 2, 2);
    await turn(s, 'e1', 'gone', 1, 50);
    await upload(s, 'e1', ['stays']);
    const rec = s.store.latest();
    expect(rec.version).toBe(1);
    expect(rec.participants.sort()).toEqual(['edge:e1', 'user:stays']);
    expect(rec.loss).toBeCloseTo(2, 6);
    expect(s.warnings).toContain('user dropped (the upload came before its user-dropped): its steps are rolled back');
    // the user-dropped that comes after finds nothing left to do, and is not an error
    const late = { type: 'user-dropped' as const, round: 1, userId: 'gone' };
    await expect(s.rounds.enqueue('e1', () => s.rounds.userDropped('e1', late))).resolves.toBeUndefined();
  });

  it("records the strategy's refusals with the round and logs each one", async () => {
    // a strategy that refuses user a's update (what the gate does to a poisoned one)
    const inner = new FedAvg();
    const refusing: AggregationStrategy & { lastReport?: AggregationReport } = {
      name: 'refuses-a',
      selectEdges: (r, e, st) => inner.selectEdges(r, e, st),
      configureRound: (r, st) => inner.configureRound(r, st),
      aggregate(g, updates) {
        const out = inner.aggregate(
          g,
          updates.filter((u) => u.from !== 'user:a'),
        );
        this.lastReport = {
          refused: [{ from: 'user:a', code: 'GATE_LOSS', reason: 'raised the loss', globalLoss: 4, loss: 9 }],
          notes: ['one refused'],
        };
        return out;
      },
    };
    const s = setup({ waiting: { e1: 1 }, strategy: refusing });
    await started(s);
    await turn(s, 'e1', 'a', 2, 1);
    await upload(s, 'e1', ['a']);
    const rec = s.store.latest();
    expect(rec.version).toBe(1);
    expect(rec.refused).toEqual([
      { from: 'user:a', code: 'GATE_LOSS', reason: 'raised the loss', globalLoss: 4, loss: 9 },
    ]);
    // it took part: its refusal is what the record says about it
    expect(rec.participants).toContain('user:a');
    expect(s.summaries[0].refused).toHaveLength(1);
    expect(s.warnings).toContain('update refused by the aggregation strategy');
  });

  it('warns when the aggregation holds the event loop past the limit, and not below it', async () => {
    const slowMsg = 'slow aggregation: the cloud answered nothing while it ran';
    // a limit of 0 ms: every aggregation is at least that long
    const slow = setup({ waiting: { e1: 1 }, slowAggregationMs: 0 });
    await started(slow);
    await turn(slow, 'e1', 'a', 2, 1);
    await upload(slow, 'e1', ['a']);
    expect(slow.store.latest().version).toBe(1);
    expect(slow.warnings).toContain(slowMsg);
    // the default limit (10 s): FedAvg of one tiny update is far below it
    const quick = setup({ waiting: { e1: 1 } });
    await started(quick);
    await turn(quick, 'e1', 'a', 2, 1);
    await upload(quick, 'e1', ['a']);
    expect(quick.store.latest().version).toBe(1);
    expect(quick.warnings).not.toContain(slowMsg);
  });
});
