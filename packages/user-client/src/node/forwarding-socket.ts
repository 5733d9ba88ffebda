/**
 * A WebSocketLike that forwards everything to the socket it wraps: what the headless user's socket
 * wrappers (a modelled wireless link, the demo user's pacing) build on, each overriding only the
 * events and calls it changes.
 */
import type { WebSocketLike } from '../client';

export class ForwardingSocket implements WebSocketLike {
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;

  constructor(protected readonly ws: WebSocketLike) {
    ws.onopen = (ev) => this.onopen?.(ev);
    ws.onerror = (ev) => this.onerror?.(ev);
    ws.onmessage = (ev) => this.onmessage?.(ev);
    ws.onclose = (ev) => this.onclose?.(ev);
  }

  get binaryType(): string {
    return this.ws.binaryType;
  }
  set binaryType(t: string) {
    this.ws.binaryType = t;
  }
  get readyState(): number {
    return this.ws.readyState;
  }

  send(data: Uint8Array): void {
    this.ws.send(data);
  }

  close(code?: number, reason?: string): void {
    this.ws.close(code, reason);
  }
}
