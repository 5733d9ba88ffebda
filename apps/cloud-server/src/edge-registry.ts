/**
 * The edges the cloud knows: registration (an edge id, its public URL and the token it proves
 * itself with), its one socket, what it last reported (waiting users), the users assigned to it,
 * and sending to it. Which edges take part in a round is the strategy's choice (rounds.ts); this
 * file only says who is there.
 */
import { codeOf } from '@splitllm/model';
import type { EdgeCandidate } from '@splitllm/federation';
import { encodeErrorMessage } from '@splitllm/wire';
import type { Registry } from 'prom-client';
import { collected, type CloudMetrics } from './metrics';

/** The socket side the registry needs (a `ws` WebSocket in the server, anything in tests). */
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

/** What the round lifecycle needs of the edges: who is there, and sending to them. */
export interface EdgePort {
  candidates(): EdgeCandidate[];
  send(edgeId: string, bytes: Uint8Array): void;
  /** to every connected edge, in the round or not */
  broadcast(bytes: Uint8Array): void;
}

export class EdgeRegistry implements EdgePort {
  readonly edges = new Map<string, EdgeInfo>();
  private readonly detachedListeners: Array<(edgeId: string) => void> = [];
  private readonly trafficListeners: Array<(bytes: number) => void> = [];

  constructor(
    private readonly log: Logger,
    private readonly metrics: Pick<CloudMetrics, 'bytes' | 'frameErrors'>,
    registry?: Registry,
  ) {
    if (registry) {
      collected(registry, 'splitllm_cloud_edges_live', 'edges with an open connection', () => this.live().length);
    }
  }

  /** `fn` hears of every edge whose connection went away (the round excludes it). */
  onDetached(fn: (edgeId: string) => void): void {
    this.detachedListeners.push(fn);
  }

  /** `fn` hears of every frame's size, in and out (the round counts its bytes). */
  onTraffic(fn: (bytes: number) => void): void {
    this.trafficListeners.push(fn);
  }

  register(edgeId: string, url: string, token: string): EdgeInfo {
    const old = this.edges.get(edgeId);
    if (old?.channel) {
      old.channel.close(4000, 'replaced by a new registration');
      this.detach(edgeId, 'replaced by a new registration');
    }
    const info: EdgeInfo = {
      edgeId,
      url,
      token,
      registeredAt: new Date().toISOString(),
      waiting: 0,
      assigned: old?.assigned ?? 0,
      framesIn: 0,
      errors: 0,
    };
    this.edges.set(edgeId, info);
    this.log.info({ edgeId, url }, 'edge registered');
    return info;
  }

  byToken(token: string): EdgeInfo | undefined {
    for (const e of this.edges.values()) if (e.token === token) return e;
    return undefined;
  }

  /** The edge's socket opened; `welcome` is its first frame. */
  attach(edgeId: string, channel: EdgeChannel, welcome: Uint8Array): void {
    const e = this.edges.get(edgeId);
    if (!e) return;
    e.channel = channel;
    this.log.info({ edgeId }, 'edge connected');
    this.send(edgeId, welcome);
  }

  /** The edge's connection closed: it reports nothing any more, and leaves the running round. */
  detach(edgeId: string, reason: string): void {
    const e = this.edges.get(edgeId);
    if (!e?.channel) return;
    e.channel = undefined;
    e.waiting = 0;
    this.log.warn({ edgeId, reason }, 'edge disconnected');
    for (const fn of this.detachedListeners) fn(edgeId);
  }

  setWaiting(edgeId: string, waiting: number): void {
    const e = this.edges.get(edgeId);
    if (e) e.waiting = waiting;
  }

  live(): EdgeInfo[] {
    return [...this.edges.values()].filter((e) => e.channel);
  }

  /** The connected edges with what they last reported, in registration order. */
  candidates(): EdgeCandidate[] {
    return this.live().map((e) => ({ edgeId: e.edgeId, waiting: e.waiting }));
  }

  /** Least-loaded live edge for a joining user. */
  pickEdge(): EdgeInfo | undefined {
    const live = this.live();
    live.sort((a, b) => a.assigned - b.assigned || a.edgeId.localeCompare(b.edgeId));
    return live[0];
  }

  /** Counts a frame received from an edge (its socket or its upload). */
  received(bytes: number): void {
    this.metrics.bytes.inc({ direction: 'in' }, bytes);
    for (const fn of this.trafficListeners) fn(bytes);
  }

  send(edgeId: string, bytes: Uint8Array): void {
    const e = this.edges.get(edgeId);
    if (!e?.channel) return;
    this.metrics.bytes.inc({ direction: 'out' }, bytes.byteLength);
    for (const fn of this.trafficListeners) fn(bytes.byteLength);
    e.channel.send(bytes);
  }

  broadcast(bytes: Uint8Array): void {
    for (const e of this.edges.values()) this.send(e.edgeId, bytes);
  }

  /**
   * Answers a frame the cloud refused with an error frame, and logs and counts it. The frame's
   * user, when it names one, is named back: an edge with several users in flight ('sfl') ends
   * that user's turn only.
   */
  reject(edgeId: string, err: unknown, type: string, userId?: string): void {
    const e = this.edges.get(edgeId);
    if (!e) return;
    const code = codeOf(err, 'INTERNAL');
    const message = err instanceof Error ? err.message : String(err);
    e.errors++;
    this.metrics.frameErrors.inc({ code });
    this.log.warn({ edgeId, type, code, err: message, userId }, 'frame rejected');
    this.send(edgeId, encodeErrorMessage(code, message, userId));
  }
}
