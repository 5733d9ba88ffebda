/**
 * The modelled wireless link (src/link-model.ts, src/node/link.ts): the Shannon math against
 * numbers worked out by hand, seeded links that repeat and stay in range, a table that cycles,
 * the refusal of impossible specs, and the socket wrapper: on fake timers, a frame goes out (or
 * comes in) exactly when the model says and not a millisecond before, in the order it was given.
 * The wrapper on a real edge socket is tested in packages/cli/test/links.test.ts.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { WebSocketLike } from '../src/client';
import {
  checkLink,
  frameDelayMs,
  type Link,
  LinkError,
  linkedWebSocket,
  noiseDbm,
  parseLinkSpec,
  pathLossDb,
  RANDOM_LINK_DEFAULTS,
  randomLink,
  SHANNON_DEFAULTS,
  shannonDistanceM,
  shannonLink,
  shannonLinkAt,
  shannonRateBps,
  snrLinear,
  userLink,
} from '../src/node/link';

const tmp = mkdtempSync(join(tmpdir(), 'splitllm-link-test-'));

/** |got - want| within `rel` of want. */
function near(got: number, want: number, rel = 1e-9): void {
  expect(Math.abs(got - want), `${got} vs ${want}`).toBeLessThanOrEqual(Math.abs(want) * rel);
}

describe('the Shannon-capacity link', () => {
  it('computes path loss, noise, SNR and rate as worked out by hand', () => {
    // PL(100 m) = 40 + 10 * 3 * log10(100 / 1) = 100 dB; below d0 counts as d0
    expect(pathLossDb(100)).toBe(100);
    expect(pathLossDb(0.2)).toBe(40);
    // N = -174 + 10 log10(20e6) + 7 = -174 + 73.0103 + 7 = -93.9897 dBm
    near(noiseDbm(20e6), -93.98970004336019);
    // 23 dBm - 100 dB + 93.9897 dB = 16.9897 dB = 10 log10(50): SNR 50
    near(snrLinear(23, 100, noiseDbm(20e6)), 50);
    // 20 MHz * log2(1 + 15) = 80 Mbps exactly
    expect(shannonRateBps(20e6, 15)).toBe(80e6);
    // the defaults at 100 m: up 20e6 * log2(51) = 113.4485 Mbps; down 30 dBm gives SNR 250.59
    // (23.9897 dB), 20e6 * log2(251.59) = 159.4990 Mbps
    const at100 = shannonLinkAt(100);
    near(at100.uplinkBps, 20e6 * 5.672425341971496, 1e-12);
    near(at100.downlinkBps, 159.499e6, 1e-5);
    expect([at100.latencyMs, at100.lossRate, at100.retransmitMs]).toEqual([10, 0.01, 200]);
  });

  it('uses its own constants: 1 MHz, 0 dB SNR gives 1 Mbps; 10 dB gives log2(11) Mbps', () => {
    // N = -174 + 60 + 4 = -110 dBm; PL(10 m) = 40 + 30 = 70 dB; up -40 dBm: SNR 0 dB = 1
    const o = {
      ...SHANNON_DEFAULTS,
      bandwidthUpHz: 1e6,
      bandwidthDownHz: 1e6,
      noiseFigureDb: 4,
      txPowerUpDbm: -40,
      txPowerDownDbm: -30,
    };
    const l = shannonLinkAt(10, o);
    near(l.uplinkBps, 1e6, 1e-12);
    near(l.downlinkBps, 1e6 * 3.4594316186372973, 1e-12);
  });

  it('draws distances over the disc from the seed: the same seed, the same distances, all within R', () => {
    const o = { ...SHANNON_DEFAULTS, radiusM: 200 };
    const ds = Array.from({ length: 500 }, (_, i) => shannonDistanceM(5, i, o));
    expect(ds).toEqual(Array.from({ length: 500 }, (_, i) => shannonDistanceM(5, i, o)));
    for (const d of ds) expect(d >= 0 && d <= 200).toBe(true);
    // uniform over the area: a quarter of the users within R/2 (0.25 +- 0.05 over 500 draws of this seed)
    const inner = ds.filter((d) => d < 100).length / ds.length;
    expect(inner).toBeGreaterThan(0.2);
    expect(inner).toBeLessThan(0.3);
    // the farther user has the slower link
    const [a, b] = [shannonLink(5, 0, o), shannonLink(5, 1, o)];
    expect(Math.sign(a.uplinkBps - b.uplinkBps)).toBe(Math.sign(ds[1] - ds[0]));
  });
});

describe('random links', () => {
  const o = { ...RANDOM_LINK_DEFAULTS, loBps: 1e6, hiBps: 2e6 };

  it('repeat from the seed, differ between seeds and users, and stay within their ranges', () => {
    const links = Array.from({ length: 300 }, (_, i) => randomLink(11, i, o));
    expect(links).toEqual(Array.from({ length: 300 }, (_, i) => randomLink(11, i, o)));
    expect(randomLink(12, 0, o)).not.toEqual(links[0]);
    expect(links[1]).not.toEqual(links[0]);
    for (const l of links) {
      expect(l.uplinkBps >= 1e6 && l.uplinkBps <= 2e6).toBe(true);
      expect(l.downlinkBps >= 1e6 && l.downlinkBps <= 2e6).toBe(true);
      expect(l.latencyMs >= 5 && l.latencyMs <= 50).toBe(true);
      expect(l.lossRate >= 0 && l.lossRate <= 0.02).toBe(true);
      expect(l.retransmitMs).toBe(200);
    }
    // log-uniform: about half the rates below the geometric middle sqrt(1e6 * 2e6)
    const below = links.filter((l) => l.uplinkBps < Math.SQRT2 * 1e6).length / links.length;
    expect(below).toBeGreaterThan(0.4);
    expect(below).toBeLessThan(0.6);
  });

  it('are what the spec gives user i', () => {
    const spec = parseLinkSpec('random:11:1-2');
    expect(userLink(spec, 7)?.link).toEqual(randomLink(11, 7, o));
    expect(userLink(parseLinkSpec('none'), 3)).toBeUndefined();
  });
});

describe('a table of links', () => {
  it('gives user i entry i mod length, lossRate and retransmitMs defaulting to 0', () => {
    const file = join(tmp, 'links.json');
    const first = { uplinkBps: 1e6, downlinkBps: 5e6, latencyMs: 20 };
    const second = { uplinkBps: 2e6, downlinkBps: 3e6, latencyMs: 0, lossRate: 0.1, retransmitMs: 50 };
    writeFileSync(file, JSON.stringify([first, second]));
    const spec = parseLinkSpec(`table:${file}`);
    expect(spec.spec).toBe(`table:${file}`);
    const got = [0, 1, 2, 3, 4].map((i) => userLink(spec, i)?.link);
    const a = { ...first, lossRate: 0, retransmitMs: 0 };
    expect(got).toEqual([a, second, a, second, a]);
  });
});

describe('impossible links', () => {
  const table = (name: string, body: string) => {
    const file = join(tmp, name);
    writeFileSync(file, body);
    return `table:${file}`;
  };
  const ok = { uplinkBps: 1e6, downlinkBps: 1e6, latencyMs: 1 };
  const refused: Array<[string, RegExp]> = [
    ['random:1:0-0', /lowest rate.*> 0/],
    ['random:1:2-1', /0 < lo <= hi/],
    ['random:1:-1-2', /LO-HI/],
    ['random:1:a-2', /lowest rate/],
    ['random', /seed/],
    ['random:-3', /seed/],
    ['random:1.5', /seed/],
    ['random:1:1-2:3', /too many/],
    ['shannon:1:0', /radius/],
    ['shannon:1:-5', /radius/],
    ['wifi:1', /unknown kind "wifi"/],
    ['none:1', /no parameters/],
    ['table:', /file/],
    [`table:${join(tmp, 'absent.json')}`, /ENOENT/],
    [table('not-json.json', '{'), /cannot read/],
    [table('empty.json', '[]'), /at least one/],
    [table('zero.json', JSON.stringify([{ ...ok, uplinkBps: 0 }])), /uplinkBps must be > 0/],
    [table('late.json', JSON.stringify([ok, { ...ok, latencyMs: -1 }])), /entry 1: latencyMs must be >= 0/],
    [table('loss1.json', JSON.stringify([{ ...ok, lossRate: 1 }])), /lossRate must be in \[0, 1\)/],
    [table('lossneg.json', JSON.stringify([{ ...ok, lossRate: -0.1 }])), /lossRate must be in \[0, 1\)/],
    [table('missing.json', JSON.stringify([{ uplinkBps: 1 }])), /downlinkBps must be a finite number/],
    [table('typo.json', JSON.stringify([{ ...ok, latency: 3 }])), /unknown field "latency"/],
  ];
  for (const [spec, why] of refused) {
    it(`refuses ${spec.replace(tmp, 'TMP')} in one line`, () => {
      let err: unknown;
      try {
        parseLinkSpec(spec);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(LinkError);
      const message = (err as Error).message;
      expect(message).toMatch(why);
      expect(message).not.toContain('\n');
    });
  }

  it('refuses a link with a rate of 0, a negative latency or a loss rate of 1 when checked', () => {
    const l: Link = { uplinkBps: 1, downlinkBps: 1, latencyMs: 0, lossRate: 0, retransmitMs: 0 };
    expect(checkLink(l)).toBe(l);
    expect(() => checkLink({ ...l, downlinkBps: 0 })).toThrow(LinkError);
    expect(() => checkLink({ ...l, latencyMs: -0.5 })).toThrow(LinkError);
    expect(() => checkLink({ ...l, lossRate: 1 })).toThrow(LinkError);
    expect(() => checkLink({ ...l, retransmitMs: Number.NaN })).toThrow(LinkError);
  });
});

/** A socket that only records: what was sent and when, and lets the test play the edge. */
class FakeSocket implements WebSocketLike {
  static last: FakeSocket;
  binaryType = 'blob';
  readyState = 0;
  readonly sent: Array<{ at: number; bytes: number; first: number }> = [];
  closedAt: number | undefined;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  constructor(readonly url: string) {
    FakeSocket.last = this;
  }
  send(data: Uint8Array): void {
    if (this.readyState !== 1) throw new Error('not open');
    this.sent.push({ at: Date.now(), bytes: data.byteLength, first: data[0] });
  }
  close(): void {
    this.closedAt = Date.now();
    this.readyState = 3;
  }
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }
  receive(bytes: number, first: number): void {
    const data = new Uint8Array(bytes);
    data[0] = first;
    this.onmessage?.({ data: data.buffer });
  }
}

describe('the linked socket', () => {
  beforeEach(() => {
    vi.useFakeTimers({ now: 0 });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  // 1 Mbps up, 2 Mbps down, 5 ms latency: 1250 bytes take 10 ms up, 5 ms down
  const link: Link = { uplinkBps: 1e6, downlinkBps: 2e6, latencyMs: 5, lossRate: 0, retransmitMs: 0 };
  const frame = (bytes: number, first: number) => {
    const f = new Uint8Array(bytes);
    f[0] = first;
    return f;
  };

  function connect(l: Link = link, seed = 1) {
    const Linked = linkedWebSocket(FakeSocket, { link: l, seed });
    const ws = new Linked('ws://edge/ws/user');
    const inner = FakeSocket.last;
    const opened = vi.fn();
    ws.onopen = opened;
    inner.open();
    expect(opened).toHaveBeenCalledTimes(1);
    return { ws, inner };
  }

  it('sends a frame when the uplink has carried it, and a small frame never overtakes a large one', () => {
    const { ws, inner } = connect();
    expect(frameDelayMs(link, 'up', 2500, false)).toBe(25);
    ws.send(frame(2500, 1)); // 20 ms on the link + 5: there at 25
    ws.send(frame(125, 2)); // waits for the first, then 1 ms + 5: there at 26, not at 6
    vi.advanceTimersByTime(24);
    expect(inner.sent).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(inner.sent).toEqual([{ at: 25, bytes: 2500, first: 1 }]);
    vi.advanceTimersByTime(1);
    expect(inner.sent).toEqual([
      { at: 25, bytes: 2500, first: 1 },
      { at: 26, bytes: 125, first: 2 },
    ]);
    // an idle link: the next frame takes its own time only, from when it is sent
    vi.advanceTimersByTime(100);
    ws.send(frame(1250, 3));
    vi.advanceTimersByTime(14);
    expect(inner.sent).toHaveLength(2);
    vi.advanceTimersByTime(1);
    expect(inner.sent[2]).toEqual({ at: 141, bytes: 1250, first: 3 });
  });

  it('hands a received frame to the client when the downlink has carried it, in order', () => {
    const { ws, inner } = connect();
    const got: Array<{ at: number; first: number }> = [];
    ws.onmessage = (ev) => got.push({ at: Date.now(), first: new Uint8Array(ev.data as ArrayBuffer)[0] });
    inner.receive(2500, 1); // 10 ms + 5: at 15
    vi.advanceTimersByTime(1);
    inner.receive(250, 2); // comes at 1, waits for the first until 10, 1 ms + 5: at 16
    vi.advanceTimersByTime(13);
    expect(got).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(got).toEqual([{ at: 15, first: 1 }]);
    vi.advanceTimersByTime(1);
    expect(got).toEqual([
      { at: 15, first: 1 },
      { at: 16, first: 2 },
    ]);
  });

  it("delivers the edge's close after the frames that came before it, and closes after the user's frames", () => {
    const { ws, inner } = connect();
    const events: string[] = [];
    ws.onmessage = () => events.push(`message ${Date.now()}`);
    ws.onclose = (ev) => events.push(`close ${ev.code} ${Date.now()}`);
    ws.send(frame(1250, 1)); // there at 15
    ws.close(1000, 'bye');
    vi.advanceTimersByTime(14);
    expect(inner.closedAt).toBeUndefined();
    vi.advanceTimersByTime(1);
    expect(inner.sent.map((s) => s.at)).toEqual([15]);
    expect(inner.closedAt).toBe(15);

    const other = connect();
    other.ws.onmessage = () => events.push(`message ${Date.now()}`);
    other.ws.onclose = (ev) => events.push(`close ${ev.code} ${Date.now()}`);
    other.inner.receive(2500, 1); // at 15 + 15 = 30
    other.inner.onclose?.({ code: 4003, reason: 'removed' });
    vi.advanceTimersByTime(15);
    expect(events).toEqual(['message 30', 'close 4003 30']);
  });

  it('costs retransmitMs for a lost frame, drawn from the seed: the same seed, the same losses', () => {
    const lossy: Link = { ...link, lossRate: 0.5, retransmitMs: 100 };
    function delays(seed: number): number[] {
      const { ws, inner } = connect(lossy, seed);
      const out: number[] = [];
      for (let i = 0; i < 40; i++) {
        const t0 = Date.now();
        ws.send(frame(1250, i)); // alone on the link: 15 ms, or 115 when lost
        vi.advanceTimersByTime(115);
        expect(inner.sent).toHaveLength(i + 1);
        out.push(inner.sent[i].at - t0);
      }
      return out;
    }
    const a = delays(3);
    expect(new Set(a)).toEqual(new Set([15, 115]));
    expect(delays(3)).toEqual(a);
    expect(delays(4)).not.toEqual(a);
  });

  it('leaves a socket that is not open to say what sending means', () => {
    const Linked = linkedWebSocket(FakeSocket, { link, seed: 1 });
    const ws = new Linked('ws://edge/ws/user');
    expect(() => ws.send(frame(10, 0))).toThrow('not open');
    ws.binaryType = 'arraybuffer';
    expect(FakeSocket.last.binaryType).toBe('arraybuffer');
  });
});
