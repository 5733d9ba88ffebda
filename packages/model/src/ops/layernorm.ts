/**
 * layerNorm over the last dimension: y = (x - mean) / sqrt(var + eps) * gamma + beta,
 * with the biased variance (as PyTorch). Statistics in float64.
 * Backward, with xhat = (x - mean) * rstd and dxhat = dy * gamma:
 *   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
 *   dgamma = sum_rows dy * xhat, dbeta = sum_rows dy
 */

export interface LayerNormCache {
  x: Float32Array;
  mean: Float32Array;
  rstd: Float32Array;
}

export function layerNormForward(
  x: Float32Array,
  gamma: Float32Array,
  beta: Float32Array,
  M: number,
  D: number,
  eps: number,
): { y: Float32Array; cache: LayerNormCache } {
  const y = new Float32Array(M * D);
  const mean = new Float32Array(M);
  const rstd = new Float32Array(M);
  for (let i = 0; i < M; i++) {
    const row = i * D;
    let s = 0;
    for (let j = 0; j < D; j++) s += x[row + j];
    const mu = s / D;
    let v = 0;
    for (let j = 0; j < D; j++) {
      const d = x[row + j] - mu;
      v += d * d;
    }
    const rs = 1 / Math.sqrt(v / D + eps);
    for (let j = 0; j < D; j++) y[row + j] = (x[row + j] - mu) * rs * gamma[j] + beta[j];
    mean[i] = mu;
    rstd[i] = rs;
  }
  return { y, cache: { x, mean, rstd } };
}

export function layerNormBackward(
  cache: LayerNormCache,
  gamma: Float32Array,
  dy: Float32Array,
  M: number,
  D: number,
  paramGrads = false,
): { dx: Float32Array; dgamma?: Float32Array; dbeta?: Float32Array } {
  const { x, mean, rstd } = cache;
  const dx = new Float32Array(M * D);
  const dgamma = paramGrads ? new Float64Array(D) : undefined;
  const dbeta = paramGrads ? new Float64Array(D) : undefined;
  for (let i = 0; i < M; i++) {
    const row = i * D;
    const mu = mean[i];
    const rs = rstd[i];
    let sumD = 0;
    let sumDX = 0;
    for (let j = 0; j < D; j++) {
      const xhat = (x[row + j] - mu) * rs;
      const dxhat = dy[row + j] * gamma[j];
      sumD += dxhat;
      sumDX += dxhat * xhat;
      if (dgamma && dbeta) {
        dgamma[j] += dy[row + j] * xhat;
        dbeta[j] += dy[row + j];
      }
    }
    const mD = sumD / D;
    const mDX = sumDX / D;
    for (let j = 0; j < D; j++) {
      const xhat = (x[row + j] - mu) * rs;
      dx[row + j] = rs * (dy[row + j] * gamma[j] - mD - xhat * mDX);
    }
  }
  return {
    dx,
    dgamma: dgamma ? Float32Array.from(dgamma) : undefined,
    dbeta: dbeta ? Float32Array.from(dbeta) : undefined,
  };
}
