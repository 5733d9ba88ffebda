/**
 * The privacy audit: every HTTP request body and every WebSocket frame a tab sends is kept,
 * and the private texts are searched for in all of it, as UTF-8, in every window of 16 bytes.
 * Requests and sockets of the page's dedicated workers are reported through the page by
 * Playwright on Chromium, and the audit checks it saw the training frames (so an audit that
 * saw nothing cannot pass).
 */
import type { BrowserContext, Page } from '@playwright/test';

export const CHUNK = 16;

export interface Sent {
  what: string;
  bytes: Buffer;
}

export class PrivacyRecorder {
  readonly sent: Sent[] = [];
  wsFrames = 0;
  wsBytes = 0;
  httpBodies = 0;
  requests = 0;

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

  /** Every place where a 16-byte window of a text's UTF-8 occurs in what was sent. */
  findLeaks(texts: string[]): Array<{ what: string; at: number; chunk: string }> {
    const windows = new Set<string>();
    for (const t of texts) {
      const b = Buffer.from(t, 'utf8');
      for (let i = 0; i + CHUNK <= b.length; i++) windows.add(b.subarray(i, i + CHUNK).toString('latin1'));
    }
    const leaks: Array<{ what: string; at: number; chunk: string }> = [];
    for (const s of this.sent) {
      const str = s.bytes.toString('latin1');
      for (let i = 0; i + CHUNK <= str.length; i++) {
        const w = str.substring(i, i + CHUNK);
        if (windows.has(w)) {
          leaks.push({ what: s.what, at: i, chunk: Buffer.from(w, 'latin1').toString('utf8') });
          break;
        }
      }
    }
    return leaks;
  }
}
