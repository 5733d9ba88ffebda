/**
 * The training worker: a dedicated Web Worker the page talks to through comlink. It owns the
 * UserClient (join, segment, queue, turns), the engine (WGSL on WebGPU, or the same segment
 * on onnxruntime-web's wasm provider), the private documents' tokens, and what is persisted
 * about the run in IndexedDB (./store.ts). The page only renders the events it sends.
 *
 * The documents are read from IndexedDB here and tokenized here. What goes out (through the
 * client) follows the run's settings: h1 (noised when the run says so), and with labels on the
 * device the head's gradient and each step's loss, with labels in the cloud the labels; then the
 * adapter; and, when the person asks for a continuation, h1 of the prompt.
 */
import * as Comlink from 'comlink';
import { zipSync } from 'fflate';
import {
  adapterFromNamedTensors,
  adapterToNamedTensors,
  type AnyTokenizer,
  CodedError,
  modelAdapterToPeft,
  tokenizerFromWireFiles,
  codeOf,
  PEFT_CONFIG_FILE,
  PEFT_WEIGHTS_FILE,
  type LoraAdapter,
  type LoraConfig,
} from '@splitllm/model';
import { decodeExpected, encodeMessage } from '@splitllm/wire';
import {
  generateContinuation,
  joinRun,
  rejoinRun,
  tokenBatches,
  UserClient,
  USER_REMOVED_MESSAGE,
  type JoinCredentials,
  type UserEvent,
  type WebSocketLike,
} from '@splitllm/user-client';
import * as store from './store';

export type RunState = 'idle' | 'joining' | 'preparing' | 'connected' | 'training' | 'paused' | 'stopped' | 'error';

export type PageEvent =
  | UserEvent
  | { type: 'state'; state: RunState; code?: string; message?: string }
  | { type: 'session'; userId: string; edgeId: string; edgeUrl: string; cloudUrl: string }
  | { type: 'data'; documents: number; tokens: number }
  | { type: 'progress'; progress: store.StoredProgress }
  | { type: 'adapter-saved'; round: number; version: number };

export interface StartRequest {
  cloudUrl: string;
  /** a join token (first visit); omitted: come back with the stored credentials */
  joinToken?: string;
  engine: store.EngineChoice;
}

export interface GenerateResult {
  text: string;
  tokens: number;
  ms: number;
}

/** What the page's own steps refuse with (the client's refusals are ClientError). */
export type PageErrorCode =
  | 'ALREADY_RUNNING'
  | 'NO_DATA'
  | 'NO_SESSION'
  | 'NOT_READY'
  | 'BAD_TOKENIZER'
  | 'NOT_CONNECTED'
  | 'EMPTY_PROMPT'
  | 'NO_ADAPTER';

export class PageError extends CodedError<PageErrorCode> {}

/** The bytes StoredAdapter.frame holds for `adapter` (kept here: the page's bundle has no wire code). */
function adapterFrame(adapter: LoraAdapter, round: number): Uint8Array {
  const tensors = adapterToNamedTensors(adapter);
  return encodeMessage('adapterFile', 'adapter', { round, tokens: 0, steps: 0, tensors });
}

/** The adapter a StoredAdapter holds; throws ProtocolError when its frame is not an adapter file. */
function storedAdapter(a: store.StoredAdapter): LoraAdapter {
  return adapterFromNamedTensors(a.lora as LoraConfig, decodeExpected('adapterFile', 'adapter', a.frame).tensors);
}

/** The token ids of `docs`, each followed by the end-of-text token (so no window joins two unmarked). */
function tokenize(tok: AnyTokenizer, docs: store.StoredDoc[]): number[] {
  const eos = tok.eotId;
  if (eos === undefined) {
    // either family's end of text: GPT-2's <|endoftext|>, a LLaMA-family model's eos_token_id
    throw new PageError('BAD_TOKENIZER', "the run's tokenizer has no end-of-text token to separate documents with");
  }
  const tokens: number[] = [];
  for (const d of docs) {
    for (const id of tok.encode(d.text)) tokens.push(id);
    tokens.push(eos);
  }
  return tokens;
}

function errorOf(e: unknown): { code: string; message: string } {
  const code = codeOf(e, 'ERROR');
  // the page's own words for a removal, whoever refused (the cloud's rejoin, the edge's hello)
  if (code === 'USER_REMOVED') return { code, message: USER_REMOVED_MESSAGE };
  return { code, message: e instanceof Error ? e.message : String(e) };
}

class TrainingWorker {
  private client?: UserClient;
  private tokenizer?: AnyTokenizer;
  /** the tokenizer countTokens uses before a start, and the cloud it came from */
  private counter?: { cloudUrl: string; tokenizer: Promise<AnyTokenizer> };
  private onEvent: (e: PageEvent) => void = () => {};
  private progress: store.StoredProgress = store.emptyProgress();
  private session?: store.StoredSession;
  private pending: Promise<unknown> = Promise.resolve();
  /** the client said an operator removed this user: its close is told as that */
  private removed = false;

  /** Joins (or comes back), prepares the engine, and waits in the edge's queue for turns. */
  async start(req: StartRequest, onEvent: (e: PageEvent) => void): Promise<void> {
    this.onEvent = onEvent;
    if (this.client) throw new PageError('ALREADY_RUNNING', 'training is already running in this tab');
    this.removed = false;
    try {
      this.emit({ type: 'state', state: 'joining' });
      this.progress = await store.loadProgress();
      const docs = await store.loadDocs();
      if (docs.length === 0) throw new PageError('NO_DATA', 'add some text first: there is nothing to train on');
      let session = await store.loadSession();
      let credentials: JoinCredentials;
      if (req.joinToken) {
        credentials = await joinRun(req.cloudUrl, req.joinToken);
        // a new run: what the last one left (progress, adapter) is not this run's
        if (session && session.cloudUrl !== req.cloudUrl) await store.forgetRun(false);
        if (!session || session.cloudUrl !== req.cloudUrl || session.credentials.userId !== credentials.userId) {
          this.progress = store.emptyProgress();
        }
        session = {
          cloudUrl: req.cloudUrl,
          credentials,
          engine: req.engine,
          seed: (Math.random() * 2 ** 31) >>> 0,
          joinedAt: Date.now(),
          paused: false,
        };
      } else {
        if (!session) {
          throw new PageError(
            'NO_SESSION',
            'no join code, and this browser has not joined a run yet: paste the join link or code',
          );
        }
        credentials = await rejoinRun(session.cloudUrl, session.credentials);
        session = { ...session, credentials, engine: req.engine, paused: false };
      }
      await this.saveSession(session);
      this.emit({ type: 'progress', progress: this.progress });

      this.emit({ type: 'state', state: 'preparing' });
      let batches: ReturnType<typeof tokenBatches> | undefined;
      const client = new UserClient({
        credentials,
        cloudUrl: session.cloudUrl,
        engine: req.engine,
        WebSocket: WebSocket as unknown as new (url: string) => WebSocketLike,
        segmentCache: {
          get: async (sha) => {
            const s = await store.loadSegment();
            return s && s.sha256 === sha ? s.bytes : undefined;
          },
          put: (sha, bytes, version) => store.saveSegment({ sha256: sha, bytes, version, savedAt: Date.now() }),
        },
        batches: (B, T, c) => {
          if (!batches) throw new PageError('NOT_READY', 'the documents are not tokenized yet');
          return batches(B, T, c);
        },
        onEvent: (e) => this.onClientEvent(e),
      });
      this.client = client;
      this.tokenizer = await client.tokenizer();
      const tokens = tokenize(this.tokenizer, docs);
      if (tokens.length < 2 + docs.length) throw new PageError('NO_DATA', 'the documents hold no text to train on');
      // a resumed run draws windows the earlier steps did not
      batches = tokenBatches(tokens, session.seed + this.progress.steps);
      this.emit({ type: 'data', documents: docs.length, tokens: tokens.length - docs.length });
      await client.start();
      this.emit({ type: 'state', state: 'connected' });
    } catch (e) {
      this.client?.stop('failed to start');
      this.client = undefined;
      this.emit({ type: 'state', state: 'error', ...errorOf(e) });
      throw e;
    }
  }

  private async saveSession(s: store.StoredSession): Promise<void> {
    this.session = s;
    await store.saveSession(s);
    this.emit({
      type: 'session',
      userId: s.credentials.userId,
      edgeId: s.credentials.edgeId,
      edgeUrl: s.credentials.edgeUrl,
      cloudUrl: s.cloudUrl,
    });
  }

  private emit(e: PageEvent): void {
    try {
      this.onEvent(e);
    } catch {
      /* the page went away */
    }
  }

  /** Events from the client: passed on to the page, and what must survive a reload is stored (in order). */
  private onClientEvent(e: UserEvent): void {
    // a client let go (closed, removed, paused) may still end its turn with an error: the page
    // keeps what it said about why the client stopped
    if (e.type === 'error' && !this.client) return;
    this.emit(e);
    const persist = (fn: () => Promise<unknown>) => {
      this.pending = this.pending
        .then(fn)
        .catch((err) =>
          this.emit({ type: 'error', code: 'STORAGE', message: `could not save progress: ${(err as Error).message}` }),
        );
    };
    switch (e.type) {
      case 'turn':
        if (this.client) this.emit({ type: 'state', state: 'training' });
        break;
      case 'step':
        this.progress.steps++;
        this.progress.tokens += e.tokens;
        this.progress.losses.push({ round: e.round, step: e.step, loss: e.loss });
        persist(() => store.saveProgress(this.progress));
        this.emit({ type: 'progress', progress: this.progress });
        break;
      case 'turn-end':
        // a turn cut short by a drop ends after the connection closed: the user is not connected
        if (this.client) this.emit({ type: 'state', state: 'connected' });
        if (e.accepted) {
          this.progress.turns++;
          this.emit({ type: 'progress', progress: this.progress });
          persist(() => store.saveProgress(this.progress));
          persist(() => this.saveAdapter(e.round));
        }
        break;
      case 'round-end':
        this.progress.version = Math.max(this.progress.version, e.version);
        persist(() => store.saveProgress(this.progress));
        this.emit({ type: 'progress', progress: this.progress });
        break;
      case 'welcome':
        this.progress.version = Math.max(this.progress.version, e.version);
        this.emit({ type: 'progress', progress: this.progress });
        break;
      case 'reassigned':
        if (this.session && this.client) {
          const s = { ...this.session, credentials: this.client.currentCredentials };
          persist(() => this.saveSession(s));
        }
        break;
      case 'removed':
        this.removed = true;
        break;
      case 'closed':
        // after pause() the client is already let go: its socket closing is expected
        if (!this.client) break;
        this.client = undefined;
        // removed: by a drop (4003), or refused by the cloud when coming back after another close
        this.emit({
          type: 'state',
          state: 'stopped',
          code: this.removed ? 'USER_REMOVED' : String(e.code),
          message: this.removed ? USER_REMOVED_MESSAGE : e.reason || 'the connection closed',
        });
        break;
    }
  }

  private async saveAdapter(round: number): Promise<void> {
    const c = this.client;
    if (!c?.manifest || !c.config) return;
    const adapter = await c.withTrainer((t) => t.readAdapter());
    await store.saveAdapter({
      round,
      version: this.progress.version,
      savedAt: Date.now(),
      frame: adapterFrame(adapter, round),
      lora: c.manifest.lora,
      modelName: c.manifest.modelName,
      nLayer: c.config.nLayer,
    });
    this.emit({ type: 'adapter-saved', round, version: this.progress.version });
  }

  /**
   * How many tokens the stored documents make, with the run's tokenizer from `cloudUrl` (fetched
   * once per cloud, before any join: the page says how much text there is before Start). The same
   * count as the 'data' event's at Start: the separators between documents are not counted.
   */
  async countTokens(cloudUrl: string): Promise<{ documents: number; tokens: number }> {
    let counter = this.counter;
    if (counter?.cloudUrl !== cloudUrl) {
      const tokenizer = fetch(new URL('/api/tokenizer', cloudUrl)).then(async (res) => {
        if (!res.ok) throw new Error(`the run answered ${res.status} for its tokenizer`);
        return tokenizerFromWireFiles(await res.json());
      });
      counter = { cloudUrl, tokenizer };
      this.counter = counter;
      // a failed fetch is not kept: the next count asks again
      tokenizer.catch(() => {
        if (this.counter?.tokenizer === tokenizer) this.counter = undefined;
      });
    }
    const tok = await counter.tokenizer;
    const docs = await store.loadDocs();
    return { documents: docs.length, tokens: tokenize(tok, docs).length - docs.length };
  }

  /** Leaves the queue (a turn in progress is rolled back by the edge); data, adapter and progress stay. */
  async pause(): Promise<void> {
    const c = this.client;
    this.client = undefined;
    c?.stop('paused by the user');
    await this.pending;
    if (this.session) await this.saveSession({ ...this.session, paused: true });
    this.emit({ type: 'state', state: 'paused' });
  }

  /** A continuation of the prompt through the three tiers with the current adapters. */
  async generate(prompt: string, maxNewTokens: number, onToken: (text: string) => void): Promise<GenerateResult> {
    const c = this.client;
    if (!c?.trainer || !c.config || !c.manifest || !this.tokenizer) {
      throw new PageError(
        'NOT_CONNECTED',
        'start or resume training first: the continuation runs through your edge and the cloud',
      );
    }
    const tok = this.tokenizer;
    const config = c.config;
    const promptIds = tok.encode(prompt);
    if (promptIds.length === 0) throw new PageError('EMPTY_PROMPT', 'type a prompt first');
    const t0 = performance.now();
    const credentials = c.currentCredentials;
    const ids = await c.withTrainer((trainer) =>
      generateContinuation({
        edgeUrl: credentials.edgeUrl,
        credentials,
        config,
        ...c.generationParts(trainer),
        promptIds,
        maxNewTokens,
        temperature: 0.8,
        topK: 40,
        seed: (Math.random() * 2 ** 31) >>> 0,
        onToken: (id) => onToken(tok.decode([id])),
      }),
    );
    return { text: tok.decode(ids), tokens: ids.length, ms: performance.now() - t0 };
  }

  /** The adapter of the last accepted turn in PEFT layout, zipped (adapter_config.json + adapter_model.safetensors). */
  async exportAdapter(): Promise<{ filename: string; bytes: Uint8Array }> {
    const a = await store.loadAdapter();
    if (!a) throw new PageError('NO_ADAPTER', 'no adapter yet: it is saved after your first completed turn');
    const peft = modelAdapterToPeft(storedAdapter(a), { baseModel: a.modelName, nLayer: a.nLayer });
    // stored (level 0), as before: float32 weights barely deflate, and the download stays instant
    const bytes = zipSync(
      {
        [PEFT_CONFIG_FILE]: new TextEncoder().encode(JSON.stringify(peft.config, null, 2)),
        [PEFT_WEIGHTS_FILE]: peft.safetensors,
      },
      { level: 0 },
    );
    return Comlink.transfer({ filename: `splitllm-adapter-v${a.version}-round${a.round}.zip`, bytes }, [bytes.buffer]);
  }
}

export type TrainingWorkerApi = TrainingWorker;

// comlink sends a thrown error's message, name and stack only: a coded error's code goes too, so
// the page can say what a refusal (NO_ADAPTER, EMPTY_PROMPT...) means next to the right control
type Thrown = { value: unknown };
const throwHandler = Comlink.transferHandlers.get('throw') as Comlink.TransferHandler<Thrown, unknown>;
const codedThrow: Comlink.TransferHandler<Thrown, unknown> = {
  canHandle: (v): v is Thrown => throwHandler.canHandle(v),
  serialize: (v) => {
    const [out, transfer] = throwHandler.serialize(v);
    const inner = (out as { value?: Record<string, unknown> }).value;
    if (v.value instanceof CodedError && inner) inner.code = v.value.code;
    return [out, transfer];
  },
  deserialize: (v) => throwHandler.deserialize(v),
};
Comlink.transferHandlers.set('throw', codedThrow as Comlink.TransferHandler<unknown, unknown>);

Comlink.expose(new TrainingWorker());
