/**
 * The error measure every engine is checked against the reference with: the largest absolute
 * difference, relative to the reference tensor's own scale (its largest magnitude), so entries
 * near zero do not dominate. A NaN anywhere counts as an infinite error. Where the reference is
 * all zero, any difference is a failure (the scale floor is 1e-30).
 */
export function maxRelErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  if (got.length !== want.length) throw new Error(`length ${got.length} != ${want.length}`);
  let maxDiff = 0;
  let maxRef = 0;
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    maxDiff = Number.isNaN(d) ? Infinity : Math.max(maxDiff, d);
    maxRef = Math.max(maxRef, Math.abs(want[i]));
  }
  return maxDiff / Math.max(maxRef, 1e-30);
}
