/**
 * Finite-difference gradient checking for the reference ops.
 *
 * Central differences (f(p+h) - f(p-h)) / 2h on a scalar f (a loss, or sum_i y_i * w_i with
 * fixed random weights w, accumulated in float64). Two errors compete:
 *  - truncation, O(h^2): on the whole tiny GPT-2 it measured 1.6e-2 at h = 3e-2, 1.8e-3 at
 *    1e-2 and 1.9e-4 at 3e-3 (the h^2 law);
 *  - rounding: activations are float32 (2^-24 relative each), which puts ~1e-7..1e-6 of noise
 *    on f and so ~1e-4 on the quotient at h = 3e-3; at h = 1e-3 it takes over (5.8e-4).
 * h = 3e-3 sits at the minimum. Checks compare max |fd - analytic| with max |analytic| and
 * allow 1e-3: about 5x the worst error seen, and far below what a wrong formula gives (O(1)).
 */
import type { Rng } from '../src/rng';

export const FD_STEP = 3e-3;
export const FD_TOLERANCE = 1e-3;

export function randomArray(n: number, rng: Rng, scale = 1): Float32Array {
  return rng.fillNormal(new Float32Array(n), scale);
}

export function weightedSum(y: ArrayLike<number>, w: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < y.length; i++) s += y[i] * w[i];
  return s;
}

/**
 * max over `indices` (all when omitted) of |central difference of f w.r.t. param[i] - analytic[i]|,
 * divided by max |analytic| over the whole tensor.
 */
export function fdRelativeError(
  f: () => number,
  param: Float32Array,
  analytic: ArrayLike<number>,
  indices?: number[],
  h = FD_STEP,
): number {
  const idx = indices ?? [...param.keys()];
  let maxDiff = 0;
  let maxRef = 0;
  for (const i of idx) {
    const orig = param[i];
    // the step actually taken is the float32-rounded one
    param[i] = orig + h;
    const up = param[i] - orig;
    const fp = f();
    param[i] = orig - h;
    const down = orig - param[i];
    const fm = f();
    param[i] = orig;
    const fd = (fp - fm) / (up + down);
    maxDiff = Math.max(maxDiff, Math.abs(fd - analytic[i]));
  }
  // scale of the whole gradient tensor, not only of the sampled entries, so a sample of
  // near-zero entries is not judged on rounding noise alone
  for (let i = 0; i < analytic.length; i++) maxRef = Math.max(maxRef, Math.abs(analytic[i]));
  if (maxRef === 0) throw new Error('analytic gradient is all zero: the check would prove nothing');
  return maxDiff / maxRef;
}

/** `count` distinct indices into an array of length n, deterministic. */
export function sampleIndices(n: number, count: number, rng: Rng): number[] {
  if (count >= n) return [...Array(n).keys()];
  const s = new Set<number>();
  while (s.size < count) s.add(rng.int(n));
  return [...s];
}
