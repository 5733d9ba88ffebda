/**
 * The headless user's modelled wireless link (the model itself: ../link-model.ts): a link spec
 * as the CLI takes it, and a WebSocket wrapper that makes the user's edge socket as slow as the
 * link.
 *
 * A spec is one of
 *   none                         no modelling (the default)
 *   table:FILE.json              a JSON array of links, user i gets entry i mod length; an entry is
 *                                {uplinkBps, downlinkBps, latencyMs, lossRate?, retransmitMs?} (the
 *                                last two default to 0)
 *   random:SEED[:LO-HI]          rates log-uniform in [LO, HI] Mbps (default 1-100), see randomLink
 *   shannon:SEED[:RADIUS]        Shannon capacity at a distance drawn over a disc of RADIUS m
 *                                (default 500), see shannonLink
 * Whatever cannot work (a rate of 0, a latency below 0, a loss rate outside [0, 1), an unknown
 * kind, an unreadable table) is a LinkError, one line, thrown when the spec is parsed.
 *
 * The wrapper delays what the user sends (before the socket's send) and what it receives (before
 * the client sees it) by the link's time for the frame, each direction a LinkLane so frames keep
 * their order. User i's losses are drawn per direction from a seed mixed from the spec's seed (a
 * table's counts as 0) and i, so a run repeats. Only the edge socket is modelled: the HTTP
 * downloads (the segment, the tokenizer, the adapter at each turn) are not, nor is the
 * edge <-> cloud hop (loopback in `simulate`).
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { Rng } from '@splitllm/model';
import type { WebSocketLike } from '../client';
import { ForwardingSocket } from './forwarding-socket';
import {
  checkLink,
  checkRandomLinkOptions,
  checkShannonOptions,
  type Link,
  LinkError,
  LinkLane,
  mixSeed,
  RANDOM_LINK_DEFAULTS,
  randomLink,
  SHANNON_DEFAULTS,
  shannonLink,
} from '../link-model';

export * from '../link-model';

export type LinkSpec =
  | { kind: 'none'; spec: 'none' }
  | { kind: 'table'; spec: string; links: Link[] }
  | { kind: 'random'; spec: string; seed: number; loBps: number; hiBps: number }
  | { kind: 'shannon'; spec: string; seed: number; radiusM: number };

/** A user's link and the seed of its loss draws. */
export interface UserLink {
  link: Link;
  seed: number;
}

function seedOf(spec: string, raw: string | undefined): number {
  const seed = Number(raw);
  if (raw === undefined || raw === '' || !Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
    throw new LinkError(`link "${spec}": the seed must be an integer in [0, 2^32), got "${raw ?? ''}"`);
  }
  return seed;
}

function positiveNumber(spec: string, what: string, raw: string): number {
  const v = raw.trim() === '' ? Number.NaN : Number(raw);
  if (!(Number.isFinite(v) && v > 0)) throw new LinkError(`link "${spec}": ${what} must be a number > 0, got "${raw}"`);
  return v;
}

function tableLinks(spec: string, file: string): Link[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    throw new LinkError(`link "${spec}": cannot read the table "${file}": ${why}`);
  }
  if (!Array.isArray(parsed) || parsed.length === 0) {
    throw new LinkError(`link "${spec}": the table must be a JSON array of at least one link`);
  }
  return parsed.map((entry: unknown, i) => {
    const what = `link "${spec}" entry ${i}`;
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry))
      throw new LinkError(`${what}: not an object`);
    const known = new Set(['uplinkBps', 'downlinkBps', 'latencyMs', 'lossRate', 'retransmitMs']);
    const unknown = Object.keys(entry).find((k) => !known.has(k));
    // a misspelt field would otherwise fall back to a default without a word
    if (unknown) throw new LinkError(`${what}: unknown field "${unknown}"`);
    const e = entry as Partial<Link>;
    return checkLink(
      {
        uplinkBps: e.uplinkBps as number,
        downlinkBps: e.downlinkBps as number,
        latencyMs: e.latencyMs as number,
        lossRate: e.lossRate ?? 0,
        retransmitMs: e.retransmitMs ?? 0,
      },
      what,
    );
  });
}

/**
 * Parses and checks a link spec (see the header); a table is read now. The returned `spec` is
 * what another process can be handed: a table's path made absolute.
 */
export function parseLinkSpec(text: string): LinkSpec {
  const spec = text.trim();
  if (spec === '' || spec === 'none') return { kind: 'none', spec: 'none' };
  const colon = spec.indexOf(':');
  const kind = colon < 0 ? spec : spec.slice(0, colon);
  const rest = colon < 0 ? undefined : spec.slice(colon + 1);
  if (kind === 'none') throw new LinkError(`link "${spec}": none takes no parameters`);
  if (kind === 'table') {
    if (!rest) throw new LinkError(`link "${spec}": say the table's file, table:FILE.json`);
    const file = resolve(rest);
    return { kind: 'table', spec: `table:${file}`, links: tableLinks(spec, file) };
  }
  const parts = rest === undefined ? [] : rest.split(':');
  if (parts.length > 2) throw new LinkError(`link "${spec}": too many ':' parts`);
  if (kind === 'random') {
    const seed = seedOf(spec, parts[0]);
    let { loBps, hiBps } = RANDOM_LINK_DEFAULTS;
    if (parts[1] !== undefined) {
      const m = /^([^-]*)-([^-]*)$/.exec(parts[1]);
      if (!m) throw new LinkError(`link "${spec}": the rates must be LO-HI in Mbps, got "${parts[1]}"`);
      loBps = positiveNumber(spec, 'the lowest rate (Mbps)', m[1]) * 1e6;
      hiBps = positiveNumber(spec, 'the highest rate (Mbps)', m[2]) * 1e6;
    }
    checkRandomLinkOptions({ ...RANDOM_LINK_DEFAULTS, loBps, hiBps });
    return { kind: 'random', spec, seed, loBps, hiBps };
  }
  if (kind === 'shannon') {
    const seed = seedOf(spec, parts[0]);
    const radiusM =
      parts[1] === undefined ? SHANNON_DEFAULTS.radiusM : positiveNumber(spec, 'the radius (m)', parts[1]);
    checkShannonOptions({ ...SHANNON_DEFAULTS, radiusM });
    return { kind: 'shannon', spec, seed, radiusM };
  }
  throw new LinkError(`link "${spec}": unknown kind "${kind}" (none, table:FILE.json, random:SEED, shannon:SEED)`);
}

/** User `index`'s link of a spec, and its loss seed; undefined for `none`. */
export function userLink(spec: LinkSpec, index: number): UserLink | undefined {
  if (!(Number.isInteger(index) && index >= 0))
    throw new LinkError(`a user index must be an integer >= 0, got ${index}`);
  switch (spec.kind) {
    case 'none':
      return undefined;
    case 'table':
      return { link: spec.links[index % spec.links.length], seed: mixSeed(0, index) };
    case 'random':
      return {
        link: randomLink(spec.seed, index, { ...RANDOM_LINK_DEFAULTS, loBps: spec.loBps, hiBps: spec.hiBps }),
        seed: mixSeed(spec.seed, index),
      };
    case 'shannon':
      return {
        link: shannonLink(spec.seed, index, { ...SHANNON_DEFAULTS, radiusM: spec.radiusM }),
        seed: mixSeed(spec.seed, index),
      };
  }
}

/** The size of a received frame, whatever the socket's binaryType made of it. */
function byteLengthOf(data: unknown): number {
  if (data instanceof ArrayBuffer) return data.byteLength;
  if (ArrayBuffer.isView(data)) return data.byteLength;
  if (typeof data === 'string') return new TextEncoder().encode(data).byteLength;
  if (Array.isArray(data)) return data.reduce((n: number, d) => n + byteLengthOf(d), 0); // ws's 'fragments'
  if (data instanceof Blob) return data.size;
  return 0;
}

/**
 * Runs callbacks at their due times, strictly in the order they were queued (a later item never
 * runs before an earlier one, even if its time is earlier). One timer at a time, for the head.
 */
class DueQueue {
  private readonly items: Array<{ at: number; run: () => void }> = [];
  private timer: ReturnType<typeof setTimeout> | undefined;

  push(at: number, run: () => void): void {
    this.items.push({ at, run });
    if (this.items.length === 1) this.arm();
  }

  clear(): void {
    this.items.length = 0;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private arm(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    const head = this.items[0];
    if (!head) return;
    // timers run in whole milliseconds: wait up to the due time, and check again if woken early
    this.timer = setTimeout(() => this.flush(), Math.max(0, Math.ceil(head.at - Date.now())));
  }

  private flush(): void {
    this.timer = undefined;
    const now = Date.now();
    while (this.items.length > 0 && this.items[0].at <= now) this.items.shift()!.run();
    this.arm();
  }
}

const OPEN = 1;

/**
 * A WebSocket constructor like `Base` whose frames take the link's time: send() hands the frame
 * to the socket when the uplink has carried it, a received frame reaches onmessage when the
 * downlink has. A close from the edge reaches onclose after the frames that came before it;
 * close() from the user goes after the frames it sent before. Frames still on the uplink when the
 * socket closes are lost, as on a real link.
 */
export function linkedWebSocket(
  Base: new (url: string) => WebSocketLike,
  userLink: UserLink,
): new (
  url: string,
) => WebSocketLike {
  const link = checkLink({ ...userLink.link });
  // shared by every socket of this user: a reconnect goes on with the draws, it does not repeat them
  const upRng = new Rng(mixSeed(userLink.seed, 1));
  const downRng = new Rng(mixSeed(userLink.seed, 2));
  return class LinkedWebSocket extends ForwardingSocket {
    private readonly up = new LinkLane(link, 'up', upRng);
    private readonly down = new LinkLane(link, 'down', downRng);
    private readonly outbox = new DueQueue();
    private readonly inbox = new DueQueue();

    constructor(url: string) {
      super(new Base(url));
      this.ws.onmessage = (ev) => {
        const at = this.down.arrival(Date.now(), byteLengthOf(ev.data));
        this.inbox.push(at, () => this.onmessage?.(ev));
      };
      this.ws.onclose = (ev) => {
        this.outbox.clear();
        this.inbox.push(Date.now(), () => this.onclose?.(ev));
      };
    }

    override send(data: Uint8Array): void {
      // not open: the socket says what that means (ws throws while connecting, drops when closed)
      if (this.ws.readyState !== OPEN) {
        this.ws.send(data);
        return;
      }
      const at = this.up.arrival(Date.now(), data.byteLength);
      this.outbox.push(at, () => {
        if (this.ws.readyState === OPEN) this.ws.send(data);
      });
    }

    override close(code?: number, reason?: string): void {
      this.outbox.push(Date.now(), () => this.ws.close(code, reason));
    }
  };
}
