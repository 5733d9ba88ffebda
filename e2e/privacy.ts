/**
 * The privacy audit: every HTTP request body and every WebSocket frame a tab sends is kept,
 * and searched at every byte offset for the private texts in the three forms they could leave in:
 *
 *  - utf8:   any 16-byte window of a text's UTF-8;
 *  - int32:  any 8 consecutive token ids of a text (the shipped tokenizer's), as int32
 *            little-endian (how the wire carries labels: 32 bytes);
 *  - uint16: the same 8 ids as uint16 little-endian (16 bytes), a packing ids below 65536 allow.
 *
 * A tab trains on windows of its token stream that start anywhere, and a batch's targets are
 * its inputs shifted by one: both are runs of the same stream, so every run of 8 ids of the
 * stream is searched for, not only runs at some alignment of the text.
 *
 * Requests and sockets of the page's dedicated workers are reported through the page by
 * Playwright on Chromium, and the specs check the audit saw the training frames (so an audit
 * that saw nothing cannot pass).
 */
import type { BrowserContext, Page } from '@playwright/test';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SHIPPED_MODEL_DIR } from '../packages/cli/src/io';
import { Gpt2Tokenizer } from '../packages/model/src/formats/tokenizer';

/** Bytes of UTF-8 searched for: long enough that no innocent frame holds one by chance. */
export const CHUNK = 16;
/** Consecutive token ids searched for: 8 ids are about 6 words, and 32 (int32) or 16 (uint16) bytes. */
export const TOKEN_RUN = 8;

export type LeakKind = 'utf8' | 'int32' | 'uint16';

export interface Sent {
  what: string;
  bytes: Buffer;
}

export interface Leak {
  /** the request or socket the bytes were sent on */
  what: string;
  kind: LeakKind;
  /** the byte offset in that body or frame */
  at: number;
  /** the text that was found (token runs decoded with the tokenizer) */
  found: string;
}

/** What the audit needs of a tokenizer: the shipped Gpt2Tokenizer fits. */
export interface AuditTokenizer {
  encode(text: string): number[];
  decode(ids: ArrayLike<number>): string;
}

/** The tokenizer of the model the cloud ships to the tabs (packages/assets/models/moby-tiny). */
export function shippedTokenizer(): Gpt2Tokenizer {
  return Gpt2Tokenizer.fromFiles(
    readFileSync(join(SHIPPED_MODEL_DIR, 'vocab.json'), 'utf8'),
    readFileSync(join(SHIPPED_MODEL_DIR, 'merges.txt'), 'utf8'),
  );
}

/** The 8 bytes at `i` hashed to 32 bits: the first, cheap test at every offset (a hit is then compared whole). */
function prefixHash(b: Uint8Array, i: number): number {
  const lo = (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)) >>> 0;
  const hi = (b[i + 4] | (b[i + 5] << 8) | (b[i + 6] << 16) | (b[i + 7] << 24)) >>> 0;
  return (lo ^ Math.imul(hi, 0x9e3779b1)) >>> 0;
}

/** Every window the audit looks for, of every kind, keyed for one pass over each sent buffer. */
class Needles {
  /** prefix hash -> the kinds having a window with that prefix */
  private readonly prefixes = new Map<number, Set<LeakKind>>();
  /** kind -> window bytes (as a latin1 string) -> what it reads as */
  private readonly windows = new Map<LeakKind, Map<string, string>>();
  private readonly widths = new Map<LeakKind, number>();

  add(kind: LeakKind, bytes: Buffer, reads: () => string): void {
    let m = this.windows.get(kind);
    if (!m) {
      m = new Map();
      this.windows.set(kind, m);
      this.widths.set(kind, bytes.length);
    }
    if (this.widths.get(kind) !== bytes.length) throw new Error(`audit: ${kind} windows must all be one width`);
    const key = bytes.toString('latin1');
    if (m.has(key)) return;
    m.set(key, reads());
    const h = prefixHash(bytes, 0);
    const kinds = this.prefixes.get(h) ?? new Set<LeakKind>();
    kinds.add(kind);
    this.prefixes.set(h, kinds);
  }

  count(kind: LeakKind): number {
    return this.windows.get(kind)?.size ?? 0;
  }

  /** The first hit of each kind in one buffer. */
  scan(s: Sent): Leak[] {
    const b = s.bytes;
    const out: Leak[] = [];
    const done = new Set<LeakKind>();
    for (let i = 0; i + 8 <= b.length; i++) {
      const kinds = this.prefixes.get(prefixHash(b, i));
      if (!kinds) continue;
      for (const kind of kinds) {
        const w = this.widths.get(kind)!;
        if (done.has(kind) || i + w > b.length) continue;
        const found = this.windows.get(kind)!.get(b.toString('latin1', i, i + w));
        if (found === undefined) continue;
        out.push({ what: s.what, kind, at: i, found });
        done.add(kind);
      }
      if (done.size === this.windows.size) break;
    }
    return out;
  }
}

export class PrivacyRecorder {
  readonly sent: Sent[] = [];
  wsFrames = 0;
  wsBytes = 0;
  httpBodies = 0;
  requests = 0;
  /** windows searched for in the last findLeaks, by kind (the specs check none is empty) */
  searched: Record<LeakKind, number> = { utf8: 0, int32: 0, uint16: 0 };

  watchContext(ctx: BrowserContext): void {
    ctx.on('request', (r) => {
      this.requests++;
      const body = r.postDataBuffer();
      if (body && body.length > 0) {
        this.httpBodies++;
        this.sent.push({ what: `${r.method()} ${r.url()}`, bytes: body });
      }
    });
    ctx.on('page', (p) => this.watchPage(p));
    for (const p of ctx.pages()) this.watchPage(p);
  }

  private watchPage(page: Page): void {
    page.on('websocket', (ws) => {
      ws.on('framesent', (f) => {
        const bytes = typeof f.payload === 'string' ? Buffer.from(f.payload, 'utf8') : Buffer.from(f.payload);
        this.wsFrames++;
        this.wsBytes += bytes.length;
        this.sent.push({ what: `ws ${ws.url()}`, bytes });
      });
    });
  }

  /**
   * Every body or frame that holds a 16-byte window of a text's UTF-8 or, given the tokenizer,
   * a run of 8 of its token ids as int32 or uint16 (the first hit of each kind per body or frame).
   */
  findLeaks(texts: string[], tokenizer?: AuditTokenizer): Leak[] {
    const needles = new Needles();
    for (const t of texts) {
      const b = Buffer.from(t, 'utf8');
      for (let i = 0; i + CHUNK <= b.length; i++) {
        const w = b.subarray(i, i + CHUNK);
        needles.add('utf8', w, () => w.toString('utf8'));
      }
      if (!tokenizer) continue;
      const ids = tokenizer.encode(t);
      for (let i = 0; i + TOKEN_RUN <= ids.length; i++) {
        const run = ids.slice(i, i + TOKEN_RUN);
        const reads = () => `${JSON.stringify(tokenizer.decode(run))} = ids [${run.join(',')}]`;
        const i32 = Buffer.alloc(4 * TOKEN_RUN);
        for (const [j, id] of run.entries()) i32.writeInt32LE(id, 4 * j);
        needles.add('int32', i32, reads);
        // ids of 65536 and up do not fit the uint16 form; such a run cannot leak as uint16
        if (run.every((id) => id < 0x10000)) {
          const u16 = Buffer.alloc(2 * TOKEN_RUN);
          for (const [j, id] of run.entries()) u16.writeUInt16LE(id, 2 * j);
          needles.add('uint16', u16, reads);
        }
      }
    }
    this.searched = { utf8: needles.count('utf8'), int32: needles.count('int32'), uint16: needles.count('uint16') };
    return this.sent.flatMap((s) => needles.scan(s));
  }
}
