/**
 * loraLinear: y = x W + b + s (x A) B, with s = alpha / r.
 *
 * W [K,N] and b are frozen; A [K,r] and B [r,N] are trained. The backward returns the input
 * gradient and the adapter gradients without ever forming dW (the point of LoRA on a
 * memory-bound tier):
 *   g  = s dy B^T            [M,r]
 *   dx = dy W^T + g A^T      [M,K]
 *   dA = x^T g               [K,r]
 *   dB = s (x A)^T dy        [r,N]
 * Base-weight gradients are available for pre-training (weightGrads = true).
 */
import { linearBackward, matmul, matmulAT, matmulBT } from './matmul';

export interface LoraLinearParams {
  W: Float32Array;
  b?: Float32Array;
  K: number;
  N: number;
  /** Adapter; absent for a non-adapted linear. */
  lora?: { A: Float32Array; B: Float32Array; r: number; scale: number };
}

export interface LoraLinearCache {
  x: Float32Array;
  /** x A, kept because dB needs it. */
  xa?: Float32Array;
}

export function loraLinearForward(
  p: LoraLinearParams,
  x: Float32Array,
  M: number,
): { y: Float32Array; cache: LoraLinearCache } {
  const y = matmul(x, p.W, M, p.K, p.N, p.b);
  if (!p.lora) return { y, cache: { x } };
  const { A, B, r, scale } = p.lora;
  const xa = matmul(x, A, M, p.K, r);
  const low = matmul(xa, B, M, r, p.N);
  for (let i = 0; i < y.length; i++) y[i] += scale * low[i];
  return { y, cache: { x, xa } };
}

export interface LoraLinearGrads {
  dx: Float32Array;
  dA?: Float32Array;
  dB?: Float32Array;
  dW?: Float32Array;
  db?: Float32Array;
}

export function loraLinearBackward(
  p: LoraLinearParams,
  cache: LoraLinearCache,
  dy: Float32Array,
  M: number,
  weightGrads = false,
): LoraLinearGrads {
  const base = linearBackward(dy, cache.x, p.W, M, p.K, p.N, weightGrads);
  const grads: LoraLinearGrads = { dx: base.dx, dW: base.dW, db: base.db };
  if (!p.lora || !cache.xa) return grads;
  const { A, B, r, scale } = p.lora;
  const g = matmulBT(dy, B, M, p.N, r);
  for (let i = 0; i < g.length; i++) g[i] *= scale;
  const gAt = matmulBT(g, A, M, r, p.K);
  for (let i = 0; i < grads.dx.length; i++) grads.dx[i] += gAt[i];
  grads.dA = matmulAT(cache.x, g, M, p.K, r);
  const dB = matmulAT(cache.xa, dy, M, r, p.N);
  for (let i = 0; i < dB.length; i++) dB[i] *= scale;
  grads.dB = dB;
  return grads;
}
