/**
 * rmsNorm over the last dimension (LLaMA's `LlamaRMSNorm`, Qwen2's `Qwen2RMSNorm`):
 *   r = 1 / sqrt(mean(x^2) + eps),  xhat = x r,  y = xhat * weight
 * There is no mean subtraction and no bias (unlike layerNorm). Hugging Face upcasts to float32
 * for the statistics; here the sum of squares and r are float64 and y is rounded to float32
 * once, so the reference is at least as exact as the models it is compared with.
 * Backward, with g = dy * weight:
 *   dx = r (g - xhat mean(g xhat)),  dweight = sum_rows dy xhat
 * (d r / d x_k = -r^3 x_k / D, so the second term is -r^3 x_k / D sum_j g_j x_j.)
 */

export interface RmsNormCache {
  x: Float32Array;
  /** r per row, float64 (M values: cheap, and keeps the backward as exact as the forward) */
  rstd: Float64Array;
}

export function rmsNormForward(
  x: Float32Array,
  weight: Float32Array,
  M: number,
  D: number,
  eps: number,
): { y: Float32Array; cache: RmsNormCache } {
  const y = new Float32Array(M * D);
  const rstd = new Float64Array(M);
  for (let i = 0; i < M; i++) {
    const row = i * D;
    let ss = 0;
    for (let j = 0; j < D; j++) ss += x[row + j] * x[row + j];
    const r = 1 / Math.sqrt(ss / D + eps);
    for (let j = 0; j < D; j++) y[row + j] = x[row + j] * r * weight[j];
    rstd[i] = r;
  }
  return { y, cache: { x, rstd } };
}

export function rmsNormBackward(
  cache: RmsNormCache,
  weight: Float32Array,
  dy: Float32Array,
  M: number,
  D: number,
  paramGrads = false,
): { dx: Float32Array; dweight?: Float32Array } {
  const { x, rstd } = cache;
  const dx = new Float32Array(M * D);
  const dweight = paramGrads ? new Float64Array(D) : undefined;
  for (let i = 0; i < M; i++) {
    const row = i * D;
    const r = rstd[i];
    let sumGX = 0;
    for (let j = 0; j < D; j++) {
      const xhat = x[row + j] * r;
      sumGX += dy[row + j] * weight[j] * xhat;
      if (dweight) dweight[j] += dy[row + j] * xhat;
    }
    const mGX = sumGX / D;
    for (let j = 0; j < D; j++) dx[row + j] = r * (dy[row + j] * weight[j] - x[row + j] * r * mGX);
  }
  return { dx, dweight: dweight ? Float32Array.from(dweight) : undefined };
}
