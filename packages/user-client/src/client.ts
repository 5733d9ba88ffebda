/**
 * The user tier's side of the protocol, the same in a browser tab and in a Node process:
 * join through the cloud, download the run's manifest, tokenizer and the frozen user segment
 * from the assigned edge, wait in its queue, and on each turn train blocks [0, k) for the
 * turn's steps with a UserTrainer (WGSL engine or the reference), then send the adapter.
 *
 * What leaves this side depends on the run's `labels` setting. With labels on the device (the
 * default) it is h1 (with Gaussian noise when the run sets some), dL/dhL with the step's loss
 * and count, and the adapter: no token id at all, since the tab runs the head and the loss on the
 * last hidden state the cloud sends back. With labels in the cloud the batch's labels go with h1.
 *
 * Frames are the typed messages of @splitllm/wire: userToEdge out, edgeToUser in, adapterFile
 * for the adapter download. A reply the client waits for goes through one MessageWaiter, and
 * always with request(send, ...), so a failed send leaves no wait behind.
 *
 * Each `step` event says where the step's time went on this side (forward, head, backward with
 * AdamW, and the wait for the edge's answers), so a run can set it against the edge's and the
 * cloud's own records (scripts/device/system.ts).
 */
import {
  addGaussianNoise,
  adapterFromNamedTensors,
  adapterToNamedTensors,
  codeOf,
  decodeSegment,
  modelDims,
  type AnyTokenizer,
  type TokenizerWireFiles,
  tokenizerFromWireFiles,
  tokenizerWireSize,
  Rng,
  sampleBatch,
  type ModelConfig,
  type LoraAdapter,
  type TokenBatch,
} from '@splitllm/model';
import {
  decodeExpected,
  decodeMessage,
  encodeMessage,
  expectRoundStep,
  expectShape,
  MessageWaiter,
  parseRunManifest,
  ProtocolError,
  responseError,
  type DecodeLimits,
  type Incoming,
  type MessageOn,
  type MessageTypeOn,
  type Outgoing,
  type RunManifest,
} from '@splitllm/wire';
import type { GpuContext } from '@splitllm/lora-kernels';
import { createUserTrainer } from './create-trainer';
import { type GenerateOptions, paddedForward } from './generate';
import { ClientError } from './errors';
import type { UserEngineKind, UserTrainer } from './trainer';

export interface JoinCredentials {
  userId: string;
  userToken: string;
  edgeId: string;
  edgeUrl: string;
}

async function readError(res: Response): Promise<ClientError> {
  const e = await responseError(res);
  return ClientError.fromPeer(e.code, e.message);
}

/** Redeems a join token at the cloud; the cloud assigns an edge and a token for it. */
export async function joinRun(cloudUrl: string, joinToken: string): Promise<JoinCredentials> {
  const res = await fetch(`${cloudUrl}/api/join`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ joinToken }),
  });
  if (!res.ok) throw await readError(res);
  return (await res.json()) as JoinCredentials;
}

/**
 * Comes back with the credentials a user already holds (after a reload, or a pause): the cloud
 * checks the token and names a live edge, the same one when it is up.
 */
export async function rejoinRun(cloudUrl: string, c: JoinCredentials): Promise<JoinCredentials> {
  const res = await fetch(`${cloudUrl}/api/rejoin`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ userId: c.userId, userToken: c.userToken, edgeId: c.edgeId }),
  });
  if (!res.ok) throw await readError(res);
  return (await res.json()) as JoinCredentials;
}

/** What an operator's removal means for the person (the servers' own message says the same). */
export const USER_REMOVED_MESSAGE =
  'The operator of this run removed you from it. Ask them to re-admit you if this is a mistake.';

/** How often start() asks for the current version again when the one it was told moved on meanwhile. */
const VERSION_RETRIES = 5;

/**
 * Where the frozen user segment is kept between visits (the page: IndexedDB), keyed by its
 * sha-256 from the manifest. What comes back is checked against that hash before use.
 */
export interface SegmentCache {
  get(sha256: string): Promise<Uint8Array | undefined>;
  put(sha256: string, bytes: Uint8Array, version: number): Promise<void>;
}

async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>));
  return [...d].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/** The body of a response, read in chunks so a progress bar can follow it. */
async function readWithProgress(
  res: Response,
  onProgress: (loaded: number, total: number | null) => void,
): Promise<Uint8Array> {
  const total = Number(res.headers.get('content-length')) || null;
  if (!res.body) return new Uint8Array(await res.arrayBuffer());
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let loaded = 0;
  let lastReport = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.byteLength;
    if (loaded - lastReport >= 256 * 1024 || loaded === total) {
      lastReport = loaded;
      onProgress(loaded, total);
    }
  }
  const out = new Uint8Array(loaded);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  onProgress(loaded, total ?? loaded);
  return out;
}

/** The slice of the WebSocket API both the browser's and the `ws` package's sockets have. */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export type UserEvent =
  | { type: 'engine'; kind: UserEngineKind; reason: string }
  | { type: 'download'; what: 'segment' | 'adapter' | 'tokenizer'; bytes: number; cached?: boolean }
  | { type: 'download-progress'; what: 'segment'; loaded: number; total: number | null }
  | { type: 'welcome'; edgeId: string; version: number; position: number }
  | { type: 'queue'; position: number; waiting: number }
  | { type: 'turn'; round: number; version: number; steps: number }
  | {
      type: 'step';
      round: number;
      step: number;
      steps: number;
      loss: number;
      tokens: number;
      /** the whole step on this side, from the batch to the end of AdamW */
      ms: number;
      /** parts of `ms`: the trainer's forward (with the activation noise on its copy) */
      forwardMs: number;
      /** the trainer's backward and AdamW */
      backwardMs: number;
      /** labels on the device: the head, the loss and dL/dhL on the edge's last hidden state */
      headMs?: number;
      /** awaiting the edge's answers ('hidden' and 'backward'), the encoding of the frame sent included */
      waitMs: number;
      bytesOut: number;
      bytesIn: number;
    }
  | { type: 'turn-end'; round: number; accepted: boolean; reason?: string }
  | { type: 'round-end'; round: number; version: number }
  | { type: 'error'; code: string; message: string }
  | { type: 'reconnecting'; reason: string }
  | { type: 'reassigned'; edgeId: string; edgeUrl: string }
  /** an operator removed this user (USER_REMOVED): the client stops; only the cloud's operator can admit it again */
  | { type: 'removed'; message: string }
  | { type: 'closed'; code: number; reason: string };

export interface UserClientOptions {
  credentials: JoinCredentials;
  /** training batches: the client asks for one per step */
  batches: (B: number, T: number, config: ModelConfig) => TokenBatch;
  engine: UserEngineKind | 'auto';
  getGpu?: () => Promise<GpuContext>;
  /** a WebSocket constructor (the browser's, or `ws` in Node) */
  WebSocket: new (
    url: string,
  ) => WebSocketLike;
  onEvent?: (e: UserEvent) => void;
  /** frames larger than this from the edge are refused */
  maxFrameBytes?: number;
  /** where to ask for another edge when this one goes away (omit: the client just stops) */
  cloudUrl?: string;
  /** how long to keep asking for another edge */
  rejoinForMs?: number;
  /** keeps the frozen user segment between visits (omit: always download) */
  segmentCache?: SegmentCache;
  /**
   * Tests only: draw the activation noise from Rng(noiseSeed), so a run can be repeated. Left out
   * (always, outside tests), the noise comes from crypto.getRandomValues: noise an attacker could
   * regenerate from a guessed 32-bit seed would protect nothing.
   */
  noiseSeed?: number;
}

/**
 * Standard normals from the platform's cryptographic random source (Box-Muller on uniforms in
 * (0, 1), drawn in blocks).
 */
function cryptoNormal(): () => number {
  const block = new Uint32Array(1024);
  let next = block.length;
  const uniform = () => {
    if (next === block.length) {
      crypto.getRandomValues(block);
      next = 0;
    }
    return (block[next++] + 0.5) / 2 ** 32;
  };
  let spare: number | undefined;
  return () => {
    if (spare !== undefined) {
      const s = spare;
      spare = undefined;
      return s;
    }
    const r = Math.sqrt(-2 * Math.log(uniform()));
    const a = 2 * Math.PI * uniform();
    spare = r * Math.sin(a);
    return r * Math.cos(a);
  };
}

/** A batch source over a token stream: random windows from Rng(seed + 1), as train-central draws them. */
export function tokenBatches(
  tokens: ArrayLike<number>,
  seed: number,
): (B: number, T: number, c: ModelConfig) => TokenBatch {
  const rng = new Rng(seed + 1);
  return (B, T, c) => sampleBatch(tokens, B, T, rng, modelDims(c).padId);
}

type FromEdge = MessageOn<'edgeToUser'>;
type Turn = Incoming<'edgeToUser', 'turn'>;

export class UserClient {
  manifest?: RunManifest;
  config?: ModelConfig;
  trainer?: UserTrainer;
  private ws?: WebSocketLike;
  /** the edge's replies a turn waits for (backward, turn-end) */
  private readonly waiter = new MessageWaiter<FromEdge>();
  private turnRunning = false;
  private closed = false;
  /** the adapter versions this client has, by version */
  private readonly adapters = new Map<number, LoraAdapter>();
  bytesOut = 0;
  bytesIn = 0;
  turns = 0;

  private credentials: JoinCredentials;
  private stopping = false;
  /** turns and other uses of the trainer (generation) take turns: one forward/backward pair at a time */
  private trainerQueue: Promise<unknown> = Promise.resolve();

  /** where the activation noise's standard normals come from (see UserClientOptions.noiseSeed) */
  private readonly noiseNormal: () => number;

  constructor(private readonly o: UserClientOptions) {
    this.credentials = { ...o.credentials };
    if (o.noiseSeed === undefined) {
      this.noiseNormal = cryptoNormal();
    } else {
      const rng = new Rng(o.noiseSeed);
      this.noiseNormal = () => rng.normal();
    }
  }

  private emit(e: UserEvent): void {
    this.o.onEvent?.(e);
  }

  private get edge(): string {
    return this.credentials.edgeUrl;
  }

  private get limits(): DecodeLimits {
    return { maxBytes: this.o.maxFrameBytes ?? 256 * 2 ** 20 };
  }

  get userId(): string {
    return this.credentials.userId;
  }

  get edgeUrl(): string {
    return this.credentials.edgeUrl;
  }

  /** the credentials now held (they change when the cloud reassigns this user to another edge) */
  get currentCredentials(): JoinCredentials {
    return { ...this.credentials };
  }

  /**
   * Runs `fn` with the trainer when no turn is using it; a turn that arrives meanwhile waits for
   * it (generation uses the trainer's forward, which must not fall between a turn's forward and
   * backward).
   */
  /**
   * What generation runs here for this run, over `trainer` (inside withTrainer): the forward of
   * a context (padded to the engine's shape) with the run's activation noise, as training sends
   * h1, and with labels on the device the head on the last hidden state the edge answers with.
   */
  generationParts(trainer: UserTrainer): Pick<GenerateOptions, 'forward' | 'head'> {
    const manifest = this.manifest;
    const c = this.config;
    if (!manifest || !c) throw new ClientError('NOT_STARTED', 'generation needs a started client');
    const { batch: B, seq: T, activationNoise, labels } = manifest.train;
    const { width, padId } = modelDims(c);
    const padded = paddedForward((batch) => trainer.forward(batch), B, T, width, padId);
    const forward = async (ids: Int32Array) => {
      const h1 = await padded(ids);
      if (activationNoise > 0) addGaussianNoise(h1, activationNoise, this.noiseNormal);
      return h1;
    };
    return labels === 'device' ? { forward, head: (h) => trainer.headLogits(h) } : { forward };
  }

  withTrainer<R>(fn: (trainer: UserTrainer) => Promise<R>): Promise<R> {
    const run = this.trainerQueue.then(() => {
      if (!this.trainer) throw new ClientError('NOT_STARTED', 'the client has no trainer yet (start it first)');
      return fn(this.trainer);
    });
    this.trainerQueue = run.catch(() => undefined);
    return run;
  }

  private async get(path: string): Promise<Response> {
    const res = await fetch(`${this.edge}${path}`);
    if (!res.ok) throw await readError(res);
    return res;
  }

  /** The run's tokenizer, from the edge (the text is encoded here, never sent). */
  async tokenizer(): Promise<AnyTokenizer> {
    const res = await this.get('/api/tokenizer');
    const files = (await res.json()) as TokenizerWireFiles;
    const tokenizer = tokenizerFromWireFiles(files);
    this.emit({ type: 'download', what: 'tokenizer', bytes: tokenizerWireSize(files) });
    return tokenizer;
  }

  /**
   * The adapter of the version the edge is at: `told` first (the manifest's), and when a round
   * ended meanwhile and the edge no longer serves it, the manifest's current version again, a
   * few times. Rounds change every second or so in a small run; each try takes one round trip.
   */
  private async currentAdapter(told: number): Promise<{ version: number; adapter: LoraAdapter }> {
    let version = told;
    for (let attempt = 1; ; attempt++) {
      try {
        return { version, adapter: await this.adapter(version) };
      } catch (e) {
        if (!(e instanceof ClientError && e.code === 'UNKNOWN_VERSION') || attempt > VERSION_RETRIES) throw e;
        const now = parseRunManifest(await (await this.get('/api/manifest')).json()).manifest.version;
        // the same version again: the edge is between two versions; give it a moment
        if (now === version) await new Promise((r) => setTimeout(r, 200 * attempt));
        version = now;
      }
    }
  }

  private async adapter(version: number): Promise<LoraAdapter> {
    const have = this.adapters.get(version);
    if (have) return have;
    const bytes = new Uint8Array(await (await this.get(`/api/adapters/user?version=${version}`)).arrayBuffer());
    this.emit({ type: 'download', what: 'adapter', bytes: bytes.byteLength });
    const file = decodeExpected('adapterFile', 'adapter', bytes, this.limits);
    const a = adapterFromNamedTensors(this.manifest!.lora, file.tensors);
    this.adapters.clear();
    this.adapters.set(version, a);
    return a;
  }

  /** The frozen user segment: from the cache when its sha-256 matches the manifest's, else downloaded (and cached). */
  private async userSegment(manifest: RunManifest): Promise<Uint8Array> {
    const want = manifest.segments.user.sha256;
    const cached = await this.o.segmentCache?.get(want).catch(() => undefined);
    if (cached && (await sha256Hex(cached)) === want) {
      this.emit({ type: 'download', what: 'segment', bytes: cached.byteLength, cached: true });
      return cached;
    }
    const res = await this.get('/api/segments/user');
    const bytes = await readWithProgress(res, (loaded, total) => {
      this.emit({ type: 'download-progress', what: 'segment', loaded, total });
    });
    const got = await sha256Hex(bytes);
    if (got !== want) {
      throw new ClientError('SEGMENT_CORRUPT', `the user segment's sha-256 is ${got}, the manifest says ${want}`);
    }
    this.emit({ type: 'download', what: 'segment', bytes: bytes.byteLength });
    await this.o.segmentCache?.put(want, bytes, manifest.version);
    return bytes;
  }

  /** Downloads what the user tier needs and builds the trainer; then connects and waits for turns. */
  async start(): Promise<void> {
    const { manifest, config } = parseRunManifest(await (await this.get('/api/manifest')).json());
    this.manifest = manifest;
    this.config = config;
    const segBytes = await this.userSegment(manifest);
    const seg = decodeSegment(segBytes, 'user');
    if (seg.plan.k !== manifest.plan.k) {
      const why = `the segment holds blocks [0, ${seg.plan.k}), the run cuts at k = ${manifest.plan.k}`;
      throw new ClientError('SEGMENT_MISMATCH', why);
    }
    // the segment download can outlast a round: the version the manifest named may have moved on
    const { adapter } = await this.currentAdapter(manifest.version);
    const t = manifest.train;
    const options = { plan: manifest.plan, lora: manifest.lora, batch: t.batch, seq: t.seq, adamw: t.adamw };
    const { trainer, reason } = await createUserTrainer(this.o.engine, seg.model, adapter, options, this.o.getGpu);
    this.trainer = trainer;
    this.emit({ type: 'engine', kind: trainer.kind, reason });
    await this.connect();
  }

  private connect(): Promise<void> {
    const url = `${this.edge.replace(/^http/, 'ws')}/ws/user`;
    const ws = new this.o.WebSocket(url);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    return new Promise((resolve, reject) => {
      ws.onopen = () => {
        this.closed = false;
        this.sendMessage('hello', { userId: this.credentials.userId, token: this.credentials.userToken });
        resolve();
      };
      ws.onerror = () => reject(new ClientError('CONNECT_FAILED', `cannot connect to the edge at ${url}`));
      ws.onmessage = (ev) => this.onMessage(ev.data);
      ws.onclose = (ev) => {
        if (this.ws !== ws) return;
        this.closed = true;
        this.waiter.fail(new ClientError('EDGE_GONE', `the edge closed the connection (${ev.code} ${ev.reason})`));
        // 4003: removed by an operator (a drop, or a hello of a removed user): coming back is refused
        if (ev.code === 4003 && !this.stopping) this.removed();
        // 4001 (a refused token) and 4003 do not come back by themselves
        if (this.stopping || !this.o.cloudUrl || ev.code === 4001 || ev.code === 4003) {
          this.emit({ type: 'closed', code: ev.code, reason: ev.reason });
        } else {
          void this.rejoin(`the edge closed the connection (${ev.code}${ev.reason ? ` ${ev.reason}` : ''})`, ev);
        }
      };
    });
  }

  /**
   * The edge went away: ask the cloud for a live edge (it may be the same one, back again) with
   * the token this user holds, and wait in that edge's queue. The trainer and the downloaded
   * segment stay: every edge of a run serves the same segment.
   */
  private async rejoin(reason: string, ev: { code: number; reason: string }): Promise<void> {
    this.emit({ type: 'reconnecting', reason });
    const deadline = Date.now() + (this.o.rejoinForMs ?? 10 * 60_000);
    while (!this.stopping && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 1000));
      try {
        this.credentials = await rejoinRun(this.o.cloudUrl!, this.credentials);
        await this.connect();
        this.emit({ type: 'reassigned', edgeId: this.credentials.edgeId, edgeUrl: this.credentials.edgeUrl });
        return;
      } catch (e) {
        if (e instanceof ClientError && e.code === 'BAD_USER_TOKEN') break; // will not get better
        if (e instanceof ClientError && e.code === 'USER_REMOVED') {
          // nor will this, until the cloud's operator admits the user: asking again only adds load
          this.removed();
          break;
        }
        /* cloud or edge not reachable yet: try again */
      }
    }
    if (!this.stopping) this.emit({ type: 'closed', code: ev.code, reason: ev.reason });
  }

  /** Said once per removal: an operator removed this user. */
  private removedSaid = false;
  private removed(): void {
    if (this.removedSaid) return;
    this.removedSaid = true;
    this.emit({ type: 'removed', message: USER_REMOVED_MESSAGE });
  }

  /** Sends one message to the edge; throws EDGE_GONE when not connected. */
  private sendMessage<T extends MessageTypeOn<'userToEdge'>>(type: T, message: Outgoing<'userToEdge', T>): void {
    if (!this.ws || this.closed) throw new ClientError('EDGE_GONE', 'not connected to the edge');
    const bytes = encodeMessage('userToEdge', type, message);
    this.bytesOut += bytes.byteLength;
    this.ws.send(bytes);
  }

  private onMessage(data: unknown): void {
    const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : data instanceof Uint8Array ? data : undefined;
    if (!bytes) {
      this.emit({ type: 'error', code: 'BAD_FRAME', message: 'the edge sent a text frame' });
      return;
    }
    this.bytesIn += bytes.byteLength;
    let m: FromEdge;
    try {
      m = decodeMessage('edgeToUser', bytes, this.limits);
    } catch (e) {
      const code = codeOf(e, 'BAD_FRAME');
      const message = `from the edge: ${(e as Error).message}`;
      this.emit({ type: 'error', code, message });
      // a step waiting for this frame ends now instead of at the edge's timeout
      if (this.waiter.waitingFor !== undefined) this.waiter.fail(e as Error);
      return;
    }
    switch (m.type) {
      case 'welcome':
        this.emit({ type: 'welcome', edgeId: m.edgeId, version: m.version, position: m.position });
        return;
      case 'queue':
        this.emit({ type: 'queue', position: m.position, waiting: m.waiting });
        return;
      case 'round-end':
        this.emit({ type: 'round-end', round: m.round, version: m.version });
        return;
      case 'turn':
        if (this.turnRunning) {
          this.emit({ type: 'error', code: 'TURN_OVERLAP', message: 'a turn started while one runs' });
          return;
        }
        // set now, not when the trainer is free: a second turn frame meanwhile is an overlap too
        this.turnRunning = true;
        void this.withTrainer(() => this.runTurn(m))
          .catch((e) => this.emit({ type: 'error', code: codeOf(e, 'TURN_FAILED'), message: (e as Error).message }))
          .finally(() => (this.turnRunning = false));
        return;
      case 'error':
        this.emit({ type: 'error', code: m.code, message: m.message });
        return;
      case 'turn-end':
        if (this.waiter.waitingFor === undefined) {
          this.emit({ type: 'turn-end', round: m.round, accepted: m.accepted, reason: m.reason });
        } else if (!this.waiter.deliver(m)) {
          // the edge ended the turn while a step waited for its backward
          this.waiter.fail(ClientError.fromPeer(m.reason ?? 'DROPPED', 'the edge ended this turn'));
        }
        return;
      case 'backward':
      case 'hidden':
        if (!this.waiter.deliver(m)) {
          this.emit({ type: 'error', code: 'UNEXPECTED_TYPE', message: `unexpected "${m.type}" frame from the edge` });
        }
        return;
    }
  }

  /** One turn: the steps of this round for this user, then the adapter goes to the edge. */
  private async runTurn(turn: Turn): Promise<void> {
    const { round, version, steps, codec } = turn;
    const trainer = this.trainer!;
    const { batch: B, seq: T } = this.manifest!.train;
    const D = modelDims(this.config!).width;
    try {
      if (turn.batch !== B || turn.seq !== T) {
        throw new ProtocolError('BAD_FIELD', `the turn's batch shape is not the manifest's ${B} x ${T}`);
      }
      this.emit({ type: 'turn', round, version, steps });
      // 'sequential': the turn carries the adapter the user before this one left; else the global version's
      const start =
        turn.tensors.size > 0
          ? adapterFromNamedTensors(this.manifest!.lora, turn.tensors)
          : await this.adapter(version);
      await trainer.setAdapter(start);
      let tokens = 0;
      /** awaits `fn`, adding its duration to `into.ms` (the step's phase times) */
      const timed = async <R>(into: { ms: number }, fn: () => Promise<R>): Promise<R> => {
        const start = performance.now();
        try {
          return await fn();
        } finally {
          into.ms += performance.now() - start;
        }
      };
      for (let step = 1; step <= steps; step++) {
        const t0 = performance.now();
        const [fwdTime, bwdTime, headTime, waitTime] = [{ ms: 0 }, { ms: 0 }, { ms: 0 }, { ms: 0 }];
        const out0 = this.bytesOut;
        const in0 = this.bytesIn;
        const batch = this.o.batches(B, T, this.config!);
        const { labels, activationNoise } = this.manifest!.train;
        // additive noise: dL/dh1 at the noisy h1 is what the backward needs (d(h1 + n)/dh1 = 1). On a
        // copy: an engine may keep the array it returned for its own use
        const h1 = await timed(fwdTime, async () => {
          const h = await trainer.forward(batch);
          if (activationNoise <= 0) return h;
          const noisy = h.slice();
          addGaussianNoise(noisy, activationNoise, this.noiseNormal);
          return noisy;
        });
        const accept = (m: { type: string; round: number; step: number }) => expectRoundStep(m, round, step);
        let back: Incoming<'edgeToUser', 'backward'>;
        let loss: number;
        let count: number;
        if (labels === 'cloud') {
          back = await timed(waitTime, () =>
            this.waiter.request(
              () =>
                this.sendMessage('forward', {
                  round,
                  step,
                  h: { data: h1, shape: [B, T, D], codec },
                  targets: { data: batch.targets, shape: [B, T] },
                }),
              'backward',
              { accept },
            ),
          );
          loss = back.loss;
          count = back.count;
        } else {
          // the labels stay here: the cloud sends the last hidden state back, the head runs here
          const hidden = await timed(waitTime, () =>
            this.waiter.request(
              () => this.sendMessage('activations', { round, step, h: { data: h1, shape: [B, T, D], codec } }),
              'hidden',
              { accept },
            ),
          );
          let head: { loss: number; count: number; dh: Float32Array };
          try {
            const hL = expectShape(hidden.h, 'hL', [B, T, D]);
            head = await timed(headTime, () => trainer.headStep(hL, batch.targets));
          } catch (e) {
            if (e instanceof ProtocolError) throw e;
            throw new ClientError(
              'BAD_HIDDEN',
              `the last hidden state from the edge is unusable: ${(e as Error).message}`,
            );
          }
          ({ loss, count } = head);
          const dh = head.dh;
          back = await timed(waitTime, () =>
            this.waiter.request(
              () =>
                this.sendMessage('head-grad', { round, step, loss, count, dh: { data: dh, shape: [B, T, D], codec } }),
              'backward',
              { accept },
            ),
          );
        }
        const dh1 = expectShape(back.dh, 'dh', [B, T, D]);
        await timed(bwdTime, () => trainer.backwardAndStep(dh1));
        tokens += count;
        this.emit({
          type: 'step',
          round,
          step,
          steps,
          loss,
          tokens: count,
          ms: performance.now() - t0,
          forwardMs: fwdTime.ms,
          backwardMs: bwdTime.ms,
          ...(labels === 'device' ? { headMs: headTime.ms } : {}),
          waitMs: waitTime.ms,
          bytesOut: this.bytesOut - out0,
          bytesIn: this.bytesIn - in0,
        });
      }
      const adapter = await trainer.readAdapter();
      const end = await this.waiter.request(
        () => this.sendMessage('adapter', { round, tokens, steps, tensors: adapterToNamedTensors(adapter) }),
        'turn-end',
      );
      this.turns++;
      this.emit({ type: 'turn-end', round, accepted: end.accepted });
    } catch (e) {
      const code = codeOf(e, 'TURN_FAILED');
      this.emit({ type: 'error', code, message: (e as Error).message });
      this.emit({ type: 'turn-end', round, accepted: false, reason: code });
    }
  }

  /** Leaves the edge's queue and closes the connection. */
  stop(reason = 'user stopped'): void {
    this.stopping = true;
    if (this.ws && !this.closed) {
      try {
        this.sendMessage('bye', { reason });
      } catch {
        /* already gone */
      }
      this.ws.close(1000, reason);
    }
    this.trainer?.destroy();
  }
}
