/**
 * A headless user: a Node process that plays a browser user with the same protocol and the
 * same client, training on a local text file. The engine is a setting ('auto': WGSL on a
 * hardware WebGPU adapter, onnxruntime-web's wasm without an adapter, the faster of the two,
 * timed, on a software adapter; see createUserTrainer) and is reported when it starts.
 *
 * With `pauseMs` it paces itself: a turn that comes less than pauseMs after its previous turn
 * ended waits out the rest, unless another user is waiting at the edge (then it trains at once,
 * so nobody waits on it). A demo user alone on an idle system then makes one version per pause,
 * not one a second. The pause is taken inside the turn (the client's socket holds the `turn`
 * frame), so it must stay under the edge's turn deadline (--step-budget-ms per step).
 *
 * With `link` its edge socket behaves as a modelled wireless link (./link.ts), so its turns take
 * the time that network would add.
 */
import { readFileSync } from 'node:fs';
import { decodeMessage } from '@splitllm/wire';
import { WebSocket } from 'ws';
import { joinRun, tokenBatches, UserClient, type JoinCredentials, type UserEvent, type WebSocketLike } from '../client';
import { ForwardingSocket } from './forwarding-socket';
import type { UserEngineKind } from '../trainer';
import { nodeGpu } from './gpu';
import { linkedWebSocket, type UserLink } from './link';

export interface HeadlessUserOptions {
  /** join through the cloud with a token, or reuse credentials */
  cloudUrl?: string;
  joinToken?: string;
  credentials?: JoinCredentials;
  dataFile: string;
  seed: number;
  engine: UserEngineKind | 'auto';
  onEvent?: (e: UserEvent) => void;
  /** the least time from the end of one turn to the start of the next while nobody else waits (0: none) */
  pauseMs?: number;
  /** a modelled wireless link on the edge socket (see ./link.ts); omit: loopback as it is */
  link?: UserLink;
}

/** How often a paused user asks its edge whether someone else is waiting. */
const WAITING_POLL_MS = 1000;
/** A `turn` frame is a few hundred bytes; larger frames (steps' backward) are not looked into. */
const SMALL_FRAME = 4096;

function isTurnFrame(data: unknown): boolean {
  const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : data instanceof Uint8Array ? data : undefined;
  if (!bytes || bytes.byteLength > SMALL_FRAME) return false;
  try {
    return decodeMessage('edgeToUser', bytes, { maxBytes: SMALL_FRAME }).type === 'turn';
  } catch {
    return false; // the client reports a bad frame itself
  }
}

/** Users waiting at the edge (the paused user itself is training, so not counted); 0 when unknown. */
async function othersWaiting(edgeHttpUrl: string): Promise<number> {
  try {
    const res = await fetch(`${edgeHttpUrl}/api/status`, { signal: AbortSignal.timeout(WAITING_POLL_MS * 5) });
    if (!res.ok) return 0;
    return Number(((await res.json()) as { users?: { waiting?: number } }).users?.waiting ?? 0);
  } catch {
    return 0;
  }
}

/**
 * `Base` (ws's WebSocket, or it behind a modelled link), holding back a `turn` frame (and whatever
 * follows it, in order) until `releaseAt()` has passed or another user waits at the edge.
 */
function pacedWebSocket(
  releaseAt: () => number,
  Base: new (url: string) => WebSocketLike,
): new (
  url: string,
) => WebSocketLike {
  return class PacedWebSocket extends ForwardingSocket {
    private held: Array<{ data: unknown }> | undefined;

    constructor(url: string) {
      super(new Base(url));
      const edgeHttpUrl = url.replace(/^ws/, 'http').replace(/\/ws\/user$/, '');
      this.ws.onclose = (ev) => {
        this.held = undefined; // the client starts over (rejoin) or stops; a held turn is void
        this.onclose?.(ev);
      };
      this.ws.onmessage = (ev) => {
        if (this.held) this.held.push(ev);
        else if (releaseAt() > Date.now() && isTurnFrame(ev.data)) {
          this.held = [ev];
          void this.release(edgeHttpUrl);
        } else this.onmessage?.(ev);
      };
    }

    private async release(edgeHttpUrl: string): Promise<void> {
      while (this.held && Date.now() < releaseAt()) {
        if ((await othersWaiting(edgeHttpUrl)) > 0) break;
        await new Promise((r) => setTimeout(r, Math.min(WAITING_POLL_MS, Math.max(0, releaseAt() - Date.now()))));
      }
      const frames = this.held ?? [];
      this.held = undefined;
      for (const ev of frames) this.onmessage?.(ev);
    }
  };
}

export async function startHeadlessUser(o: HeadlessUserOptions): Promise<UserClient> {
  let text: string;
  try {
    text = readFileSync(o.dataFile, 'utf8');
  } catch (e) {
    throw new Error(
      `cannot read the training text "${o.dataFile}": ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
    );
  }
  let credentials = o.credentials;
  if (!credentials) {
    if (!o.cloudUrl || !o.joinToken) throw new Error('a headless user needs --cloud and --join-token (or credentials)');
    credentials = await joinRun(o.cloudUrl, o.joinToken);
  }
  let tokens: number[] | undefined;
  const pauseMs = o.pauseMs ?? 0;
  /** when the last turn ended (accepted or not): the next waits until then + pauseMs */
  let lastTurnEnd = Number.NEGATIVE_INFINITY;
  const wsSocket = WebSocket as unknown as new (url: string) => WebSocketLike;
  // the link sits under the pacing: a held turn frame has already come over the link
  const socket = o.link ? linkedWebSocket(wsSocket, o.link) : wsSocket;
  const client: UserClient = new UserClient({
    credentials,
    cloudUrl: o.cloudUrl,
    engine: o.engine,
    getGpu: nodeGpu,
    WebSocket: pauseMs > 0 ? pacedWebSocket(() => lastTurnEnd + pauseMs, socket) : socket,
    onEvent: (e) => {
      if (e.type === 'turn-end') lastTurnEnd = Date.now();
      o.onEvent?.(e);
    },
    batches: (B, T, c) => {
      if (!tokens) throw new Error('the text is not tokenized yet');
      return batchesOf(B, T, c);
    },
  });
  // tokenize with the run's own tokenizer (served by the edge) before the first turn can come
  const tokenizer = await client.tokenizer();
  tokens = tokenizer.encode(text);
  if (tokens.length < 2) throw new Error(`the training text "${o.dataFile}" has fewer than 2 tokens`);
  const batchesOf = tokenBatches(tokens, o.seed);
  await client.start();
  return client;
}
