/**
 * A modelled wireless link between a user and its edge, so that a headless user's round times
 * include the network it would have. Browser-safe: numbers and a seeded Rng, no I/O.
 *
 * A link is { uplinkBps, downlinkBps, latencyMs, lossRate, retransmitMs }. A frame of `bytes`
 * takes, one way,
 *
 *     latencyMs + bytes * 8 / rate * 1000 + (lost ? retransmitMs : 0)    [ms]
 *
 * where `lost` is drawn per frame with probability lossRate from a seeded Rng. Frames on one
 * direction are serialized (LinkLane): a frame starts only when the previous one on the same
 * direction has finished, its retransmission included, so frames never overtake each other; the
 * latency overlaps with the next frame's transmission, as on a real pipe.
 *
 * Three ways to get links (user i gets the i-th link of a sequence):
 *  - a table: one Link per user, cycling (node/link.ts reads it from a JSON file);
 *  - randomLink: both rates log-uniform in [lo, hi] (default 1-100 Mbps), latency uniform in
 *    [5, 50] ms, lossRate uniform in [0, 0.02], retransmitMs 200 (Linux TCP's least RTO);
 *  - shannonLink: rate = B * log2(1 + SNR), SNR (linear) = P_tx * G / N, that is in dB
 *        SNR_dB = P_tx[dBm] - PL(d)[dB] - N[dBm],
 *        PL(d) = PL0 + 10 n log10(d / d0)    (d below d0 counts as d0),
 *        N = -174 dBm/Hz + 10 log10(B) + NF,
 *    with defaults B = 20 MHz each way, P_tx 23 dBm up (a phone's power class 3) and 30 dBm down
 *    (a small cell), NF 7 dB, PL0 = 40 dB at d0 = 1 m (free space at 2.4 GHz), exponent n = 3
 *    (urban, obstructed), latency 10 ms, lossRate 0.01, retransmitMs 200. The distance is drawn
 *    uniformly over the area of a disc of radius R (default 500 m): d = R * sqrt(u). Shannon's
 *    rate is an upper bound a real modem does not reach near the cell (no cap is applied): at
 *    these defaults 100 m gives SNR 50 up, about 113 Mbps (160 down), 500 m about 10 Mbps (32 down).
 * Both seeded kinds draw from Rng(seed) in order, a fixed number of draws per user, so user i's
 * link depends only on the seed and i.
 */
import { CodedError, Rng } from '@splitllm/model';

export interface Link {
  /** user -> edge, bits per second */
  uplinkBps: number;
  /** edge -> user, bits per second */
  downlinkBps: number;
  /** one-way delay added to every frame */
  latencyMs: number;
  /** the probability that a frame needs a retransmission, in [0, 1) */
  lossRate: number;
  /** what a lost frame costs on top (a retransmission timeout and the resend) */
  retransmitMs: number;
}

/** An impossible link or link setting: one line, said before anything starts. */
export class LinkError extends CodedError<'BAD_LINK'> {
  constructor(message: string) {
    super('BAD_LINK', message);
  }
}

const LINK_KEYS = ['uplinkBps', 'downlinkBps', 'latencyMs', 'lossRate', 'retransmitMs'] as const;

/** Returns `l` when every field is possible; throws LinkError naming the first that is not. */
export function checkLink(l: Link, what = 'link'): Link {
  for (const k of LINK_KEYS) {
    if (typeof l[k] !== 'number' || !Number.isFinite(l[k])) {
      throw new LinkError(`${what}: ${k} must be a finite number, got ${String(l[k])}`);
    }
  }
  if (l.uplinkBps <= 0) throw new LinkError(`${what}: uplinkBps must be > 0, got ${l.uplinkBps}`);
  if (l.downlinkBps <= 0) throw new LinkError(`${what}: downlinkBps must be > 0, got ${l.downlinkBps}`);
  if (l.latencyMs < 0) throw new LinkError(`${what}: latencyMs must be >= 0, got ${l.latencyMs}`);
  if (l.lossRate < 0 || l.lossRate >= 1) throw new LinkError(`${what}: lossRate must be in [0, 1), got ${l.lossRate}`);
  if (l.retransmitMs < 0) throw new LinkError(`${what}: retransmitMs must be >= 0, got ${l.retransmitMs}`);
  return l;
}

// ---------------------------------------------------------------- frame timing

/** Milliseconds to put `bytes` on a link of `rateBps`. */
export function transferMs(bytes: number, rateBps: number): number {
  return ((bytes * 8) / rateBps) * 1000;
}

/** One frame alone on the link: latency + transfer + the retransmission when it was lost. */
export function frameDelayMs(link: Link, direction: 'up' | 'down', bytes: number, lost: boolean): number {
  const rate = direction === 'up' ? link.uplinkBps : link.downlinkBps;
  return link.latencyMs + transferMs(bytes, rate) + (lost ? link.retransmitMs : 0);
}

/**
 * One direction of a link: frames go out one after another. `arrival` says when a frame handed
 * to the link at `now` reaches the other side; arrivals never decrease, so order is kept.
 */
export class LinkLane {
  /** when the frame now on the link has left it (its retransmission included) */
  private freeAt = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly link: Link,
    private readonly direction: 'up' | 'down',
    /** draws the losses; shared by a user's sockets so a reconnect does not replay them */
    private readonly rng: Rng,
  ) {}

  arrival(now: number, bytes: number): number {
    // no draw at lossRate 0: a lossless link's timing needs no random source at all
    const lost = this.link.lossRate > 0 && this.rng.uniform() < this.link.lossRate;
    const start = Math.max(now, this.freeAt);
    const busy = frameDelayMs(this.link, this.direction, bytes, lost) - this.link.latencyMs;
    this.freeAt = start + busy;
    return this.freeAt + this.link.latencyMs;
  }
}

/** Two 32-bit seeds into one (murmur3's finalizer), for independent streams of one user. */
export function mixSeed(a: number, b: number): number {
  let h = (a ^ Math.imul(b + 1, 0x9e3779b1)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/** An Rng positioned at user `index`'s draws of a sequence that takes `perUser` draws per user. */
function rngAt(seed: number, index: number, perUser: number): Rng {
  if (!(Number.isInteger(index) && index >= 0))
    throw new LinkError(`a user index must be an integer >= 0, got ${index}`);
  const rng = new Rng(seed);
  for (let i = 0; i < index * perUser; i++) rng.nextU32();
  return rng;
}

// ---------------------------------------------------------------- random links

export interface RandomLinkOptions {
  loBps: number;
  hiBps: number;
  latencyMs: [number, number];
  maxLossRate: number;
  retransmitMs: number;
}

export const RANDOM_LINK_DEFAULTS: RandomLinkOptions = {
  loBps: 1e6,
  hiBps: 100e6,
  latencyMs: [5, 50],
  maxLossRate: 0.02,
  retransmitMs: 200,
};

/** Checks a random-link setting; throws LinkError. */
export function checkRandomLinkOptions(o: RandomLinkOptions): RandomLinkOptions {
  const finite = [o.loBps, o.hiBps, ...o.latencyMs, o.maxLossRate, o.retransmitMs].every(Number.isFinite);
  if (!finite) throw new LinkError('a random link setting must be finite numbers');
  if (!(o.loBps > 0 && o.hiBps >= o.loBps)) {
    throw new LinkError(`random link rates must satisfy 0 < lo <= hi, got ${o.loBps / 1e6}-${o.hiBps / 1e6} Mbps`);
  }
  if (!(o.latencyMs[0] >= 0 && o.latencyMs[1] >= o.latencyMs[0])) {
    throw new LinkError(`random link latency must satisfy 0 <= lo <= hi ms, got ${o.latencyMs.join('-')}`);
  }
  if (!(o.maxLossRate >= 0 && o.maxLossRate < 1)) {
    throw new LinkError(`random link loss rate must be in [0, 1), got ${o.maxLossRate}`);
  }
  if (o.retransmitMs < 0) throw new LinkError(`random link retransmitMs must be >= 0, got ${o.retransmitMs}`);
  return o;
}

/** The draws one random link takes: uplink, downlink, latency, loss. */
const RANDOM_DRAWS = 4;

/** User `index`'s link of the sequence Rng(seed) draws (see the header). */
export function randomLink(seed: number, index: number, o: RandomLinkOptions = RANDOM_LINK_DEFAULTS): Link {
  checkRandomLinkOptions(o);
  const rng = rngAt(seed, index, RANDOM_DRAWS);
  const logUniform = () => o.loBps * (o.hiBps / o.loBps) ** rng.uniform();
  const [latLo, latHi] = o.latencyMs;
  return checkLink({
    uplinkBps: logUniform(),
    downlinkBps: logUniform(),
    latencyMs: latLo + (latHi - latLo) * rng.uniform(),
    lossRate: o.maxLossRate * rng.uniform(),
    retransmitMs: o.retransmitMs,
  });
}

// ---------------------------------------------------------------- Shannon capacity

export interface ShannonOptions {
  bandwidthUpHz: number;
  bandwidthDownHz: number;
  txPowerUpDbm: number;
  txPowerDownDbm: number;
  /** thermal noise density */
  noiseDbmPerHz: number;
  noiseFigureDb: number;
  /** path loss at the reference distance d0 */
  pl0Db: number;
  d0M: number;
  pathLossExponent: number;
  /** users' distances are drawn over a disc of this radius */
  radiusM: number;
  latencyMs: number;
  lossRate: number;
  retransmitMs: number;
}

export const SHANNON_DEFAULTS: ShannonOptions = {
  bandwidthUpHz: 20e6,
  bandwidthDownHz: 20e6,
  txPowerUpDbm: 23,
  txPowerDownDbm: 30,
  noiseDbmPerHz: -174,
  noiseFigureDb: 7,
  pl0Db: 40,
  d0M: 1,
  pathLossExponent: 3,
  radiusM: 500,
  latencyMs: 10,
  lossRate: 0.01,
  retransmitMs: 200,
};

/** PL(d) = PL0 + 10 n log10(d / d0) in dB; a distance below d0 counts as d0 (the model's near limit). */
export function pathLossDb(distanceM: number, o: ShannonOptions = SHANNON_DEFAULTS): number {
  return o.pl0Db + 10 * o.pathLossExponent * Math.log10(Math.max(distanceM, o.d0M) / o.d0M);
}

/** Noise power over `bandwidthHz`: -174 dBm/Hz + 10 log10(B) + NF. */
export function noiseDbm(bandwidthHz: number, o: ShannonOptions = SHANNON_DEFAULTS): number {
  return o.noiseDbmPerHz + 10 * Math.log10(bandwidthHz) + o.noiseFigureDb;
}

/** SNR (linear) = P_tx * G / N, computed in dB: 10^((P_tx - PL - N) / 10). */
export function snrLinear(txPowerDbm: number, pathLoss: number, noise: number): number {
  return 10 ** ((txPowerDbm - pathLoss - noise) / 10);
}

/** Shannon's capacity: B * log2(1 + SNR), bits per second. */
export function shannonRateBps(bandwidthHz: number, snr: number): number {
  return bandwidthHz * Math.log2(1 + snr);
}

/** Checks a Shannon setting; throws LinkError. */
export function checkShannonOptions(o: ShannonOptions): ShannonOptions {
  if (!Object.values(o).every(Number.isFinite)) throw new LinkError('a Shannon link setting must be finite numbers');
  if (!(o.bandwidthUpHz > 0 && o.bandwidthDownHz > 0)) throw new LinkError('Shannon link bandwidths must be > 0 Hz');
  if (!(o.d0M > 0 && o.radiusM > 0)) {
    throw new LinkError(`a Shannon link's radius and reference distance must be > 0 m, got ${o.radiusM} and ${o.d0M}`);
  }
  if (o.pathLossExponent <= 0) throw new LinkError(`the path loss exponent must be > 0, got ${o.pathLossExponent}`);
  checkLink({
    uplinkBps: 1,
    downlinkBps: 1,
    latencyMs: o.latencyMs,
    lossRate: o.lossRate,
    retransmitMs: o.retransmitMs,
  });
  return o;
}

/** The link at `distanceM` from the edge's access point. */
export function shannonLinkAt(distanceM: number, o: ShannonOptions = SHANNON_DEFAULTS): Link {
  const pl = pathLossDb(distanceM, o);
  return checkLink({
    uplinkBps: shannonRateBps(o.bandwidthUpHz, snrLinear(o.txPowerUpDbm, pl, noiseDbm(o.bandwidthUpHz, o))),
    downlinkBps: shannonRateBps(o.bandwidthDownHz, snrLinear(o.txPowerDownDbm, pl, noiseDbm(o.bandwidthDownHz, o))),
    latencyMs: o.latencyMs,
    lossRate: o.lossRate,
    retransmitMs: o.retransmitMs,
  });
}

/** User `index`'s distance: uniform over the disc's area, d = R * sqrt(u), one draw per user. */
export function shannonDistanceM(seed: number, index: number, o: ShannonOptions = SHANNON_DEFAULTS): number {
  return o.radiusM * Math.sqrt(rngAt(seed, index, 1).uniform());
}

/** User `index`'s link of the Shannon sequence of Rng(seed). */
export function shannonLink(seed: number, index: number, o: ShannonOptions = SHANNON_DEFAULTS): Link {
  checkShannonOptions(o);
  return shannonLinkAt(shannonDistanceM(seed, index, o), o);
}
