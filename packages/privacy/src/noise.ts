/**
 * The tab's optional defence: i.i.d. Gaussian noise of standard deviation sigma added to h1
 * before it leaves. Drawn with the project's seeded Rng so a run (and a measurement) is
 * reproducible. The attacker knows sigma (it is in the manifest) but not the draw.
 */
import { addGaussianNoise, type Rng } from '@splitllm/model';

/** h + N(0, sigma^2) elementwise, in a new array (the tab's addGaussianNoise on a copy). */
export function noisyCopy(h: Float32Array, sigma: number, rng: Rng): Float32Array {
  const out = Float32Array.from(h);
  addGaussianNoise(out, sigma, () => rng.normal());
  return out;
}
