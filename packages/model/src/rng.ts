/**
 * Deterministic pseudo-random numbers (SplitMix32 state update, Box-Muller normals).
 * Every random choice in the project (initialization, batch sampling) goes through this so a
 * run is reproducible from its seed on every engine.
 */
export class Rng {
  private state: number;
  private spare: number | null = null;

  constructor(seed: number) {
    this.state = (seed >>> 0) ^ 0x9e3779b9;
  }

  /** Uniform 32-bit unsigned integer. */
  nextU32(): number {
    this.state = (this.state + 0x9e3779b9) >>> 0;
    let z = this.state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  }

  /** Uniform in [0, 1). */
  uniform(): number {
    return this.nextU32() / 4294967296;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.uniform() * n);
  }

  /** Standard normal. */
  normal(): number {
    if (this.spare !== null) {
      const s = this.spare;
      this.spare = null;
      return s;
    }
    let u = 0;
    while (u === 0) u = this.uniform();
    const v = this.uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }

  fillNormal(out: Float32Array, std: number): Float32Array {
    for (let i = 0; i < out.length; i++) out[i] = this.normal() * std;
    return out;
  }

  fillUniform(out: Float32Array, lo: number, hi: number): Float32Array {
    for (let i = 0; i < out.length; i++) out[i] = lo + (hi - lo) * this.uniform();
    return out;
  }
}

/**
 * Adds N(0, sigma^2) to every value of h, in place, from a source of standard normals: the tab's
 * activation noise (a cryptographic source there) and the privacy measurement's (a seeded Rng).
 */
export function addGaussianNoise(h: Float32Array, sigma: number, normal: () => number): void {
  if (!(Number.isFinite(sigma) && sigma >= 0)) {
    throw new RangeError(`noise sigma must be a finite number >= 0, got ${sigma}`);
  }
  if (sigma === 0) return;
  for (let i = 0; i < h.length; i++) h[i] += sigma * normal();
}
