/**
 * What the system tests talk to an edge with: a protocol client with no trainer. It sends
 * whatever a test tells it to (valid, malformed or hostile frames) and records what comes back.
 */
import { decodeMessage, encodeMessage, type MessageOn } from '@splitllm/wire';
import { WebSocket } from 'ws';

/** Labels on the device: a step's activations frame, h1 of `shape` [B, T, D]. */
export function activationsFrame(round: number, step: number, h: Float32Array, shape: number[]): Uint8Array {
  return encodeMessage('userToEdge', 'activations', { round, step, h: { data: h, shape } });
}

/**
 * Labels on the device: the head's answer to a step's last hidden state, as a tab without a
 * model would send it (dh small and random; the loss and count any honest tab could report).
 */
export function headGradFrame(
  round: number,
  step: number,
  dh: Float32Array,
  shape: number[],
  o: { loss?: number; count?: number } = {},
): Uint8Array {
  const count = o.count ?? shape[0] * shape[1];
  return encodeMessage('userToEdge', 'head-grad', { round, step, loss: o.loss ?? 6.9, count, dh: { data: dh, shape } });
}

/** A frame with the float32 at byte `at` of tensor `name`'s data overwritten by NaN (the encoder refuses NaN). */
export function withNaN(frame: Uint8Array, name: string, at = 40): Uint8Array {
  const bytes = frame.slice();
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  const headerLen = view.getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + headerLen))) as {
    tensors: Array<{ name: string; offset: number }>;
  };
  const t = header.tensors.find((x) => x.name === name)!;
  view.setFloat32(4 + headerLen + t.offset + at, Number.NaN, true);
  return bytes;
}

export type EdgeMsg = MessageOn<'edgeToUser'>;
export type EdgeMsgOf<K extends EdgeMsg['type']> = Extract<EdgeMsg, { type: K }>;

export class RawUser {
  /** frames received and not yet taken by next() */
  readonly frames: EdgeMsg[] = [];
  /** every frame received, never taken out (for counting) */
  readonly seen: EdgeMsg[] = [];
  private waiters: Array<{
    pred: (f: EdgeMsg) => boolean;
    resolve: (f: EdgeMsg) => void;
    reject: (e: Error) => void;
  }> = [];
  closed?: { code: number; reason: string };

  private constructor(
    readonly ws: WebSocket,
    readonly userId: string,
  ) {
    ws.on('message', (data: Buffer) => {
      const f = decodeMessage('edgeToUser', new Uint8Array(data));
      this.seen.push(f);
      this.frames.push(f);
      this.waiters = this.waiters.filter((w) => {
        if (!w.pred(f)) return true;
        w.resolve(f);
        return false;
      });
    });
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      // nothing more will come: every wait ends now
      for (const w of this.waiters.splice(0)) w.reject(new Error(`${this.userId}: connection closed (${code})`));
    });
  }

  /** An open socket to the edge's /ws/user, before any frame. */
  static async connect(edgeUrl: string, userId: string): Promise<RawUser> {
    const ws = new WebSocket(`${edgeUrl.replace(/^http/, 'ws')}/ws/user`);
    await new Promise<void>((res, rej) => {
      ws.once('open', () => res());
      ws.once('error', rej);
    });
    return new RawUser(ws, userId);
  }

  send(bytes: Uint8Array | string): void {
    this.ws.send(bytes);
  }

  /** The first message of `type` (that `pred` accepts), taken from those already received or the next to come. */
  next<K extends EdgeMsg['type']>(
    type: K,
    pred: (f: EdgeMsgOf<K>) => boolean = () => true,
    timeoutMs = 60_000,
  ): Promise<EdgeMsgOf<K>> {
    return this.nextWhere((f) => f.type === type && pred(f as EdgeMsgOf<K>), type, timeoutMs) as Promise<EdgeMsgOf<K>>;
  }

  /** The first message `matches` accepts, taken from those already received or the next to come. */
  nextWhere(matches: (f: EdgeMsg) => boolean, what: string, timeoutMs = 60_000): Promise<EdgeMsg> {
    const seen = this.frames.find(matches);
    if (seen) {
      this.frames.splice(this.frames.indexOf(seen), 1);
      return Promise.resolve(seen);
    }
    return new Promise<EdgeMsg>((resolve, reject) => {
      const w = {
        pred: matches,
        resolve: (f: EdgeMsg) => {
          clearTimeout(t);
          this.frames.splice(this.frames.indexOf(f), 1);
          resolve(f);
        },
        reject: (e: Error) => {
          clearTimeout(t);
          reject(e);
        },
      };
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new Error(`${this.userId}: no "${what}" within ${timeoutMs} ms; got ${this.frames.map((f) => f.type)}`));
      }, timeoutMs);
      this.waiters.push(w);
    });
  }

  /** The code of the error frame that answers the next bad frame. */
  async error(): Promise<string> {
    return (await this.next('error')).code;
  }
}
