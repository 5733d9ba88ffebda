/**
 * adamw: decoupled weight decay Adam, as torch.optim.AdamW:
 *   p -= lr * wd * p
 *   m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2
 *   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
 * t is the 1-based step count after this update.
 */
export interface AdamWOptions {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export const DEFAULT_ADAMW: AdamWOptions = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 };

export interface AdamWState {
  m: Float32Array;
  v: Float32Array;
}

export function adamwInit(n: number): AdamWState {
  return { m: new Float32Array(n), v: new Float32Array(n) };
}

export function adamwStep(p: Float32Array, g: Float32Array, s: AdamWState, t: number, o: AdamWOptions): void {
  const bc1 = 1 - o.beta1 ** t;
  const bc2 = 1 - o.beta2 ** t;
  const decay = 1 - o.lr * o.weightDecay;
  for (let i = 0; i < p.length; i++) {
    const gi = g[i];
    const m = o.beta1 * s.m[i] + (1 - o.beta1) * gi;
    const v = o.beta2 * s.v[i] + (1 - o.beta2) * gi * gi;
    s.m[i] = m;
    s.v[i] = v;
    p[i] = p[i] * decay - (o.lr * (m / bc1)) / (Math.sqrt(v / bc2) + o.eps);
  }
}
