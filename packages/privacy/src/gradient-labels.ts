/**
 * Attack (c, labels): with labels on the device the tab runs the head and sends dL/dhL back to
 * the cloud. The cloud computed hL itself and holds ln_f and wte (public), so it knows the
 * softmax p of every row; the only unknown in the gradient is the label:
 *   dlogits = (p - onehot(y)) / count,   dnormed = dlogits wte = (p wte - wte_y) / count
 *   dhL     = rstd * Pi(gamma . dnormed),  Pi(z) = z - mean(z) - xhat mean(z . xhat)
 * (the LayerNorm backward; Pi is linear and known from hL). So per counted row
 *   r = Pi(gamma . (p wte)) - count * dhL / rstd = Pi(gamma . wte_y)
 * and y is the vocabulary entry whose Pi(gamma . wte_v) is nearest to r. count is the number
 * of non-zero rows (ignored positions get an exact zero gradient). Noise on h1 does not help:
 * the gradient is computed from the hL the cloud itself sent.
 */
import { type Gpt2Model, IGNORE_INDEX, getWeight, layerNormForward, matmulBT } from '@splitllm/model';

/**
 * The label of every row of dhL [B*T, D] the cloud received for its hL [B*T, D]; IGNORE_INDEX
 * where the row is all zeros (a position the tab did not count).
 */
export function recoverLabelsFromGradient(
  model: Gpt2Model,
  hL: Float32Array,
  dhL: Float32Array,
  B: number,
  T: number,
): Int32Array {
  const c = model.config;
  const D = c.nEmbd;
  const V = c.vocabSize;
  const M = B * T;
  if (!(Number.isInteger(B) && Number.isInteger(T) && B >= 1 && T >= 1)) throw new RangeError('labels: bad B or T');
  if (hL.length !== M * D || dhL.length !== M * D) throw new RangeError(`labels: hL and dhL must be [${M}, ${D}]`);
  const gamma = getWeight(model.weights, 'ln_f.weight').data;
  const wte = getWeight(model.weights, 'wte.weight').data;
  const ln = layerNormForward(hL, gamma, getWeight(model.weights, 'ln_f.bias').data, M, D, c.layerNormEpsilon);
  const counted: number[] = [];
  for (let i = 0; i < M; i++) {
    let nz = false;
    for (let e = 0; e < D && !nz; e++) nz = dhL[i * D + e] !== 0;
    if (nz) counted.push(i);
  }
  const labels = new Int32Array(M).fill(IGNORE_INDEX);
  if (counted.length === 0) return labels;
  const count = counted.length;
  // gamma . wte_v for every v: the candidates before the per-row projection
  const G = new Float32Array(V * D);
  for (let v = 0; v < V; v++) for (let e = 0; e < D; e++) G[v * D + e] = gamma[e] * wte[v * D + e];
  const Gmean = new Float64Array(V);
  for (let v = 0; v < V; v++) {
    let s = 0;
    for (let e = 0; e < D; e++) s += G[v * D + e];
    Gmean[v] = s / D;
  }
  const xhat = new Float64Array(D);
  const pw = new Float64Array(D);
  const r = new Float64Array(D);
  for (const i of counted) {
    const mu = ln.cache.mean[i];
    const rs = ln.cache.rstd[i];
    for (let e = 0; e < D; e++) xhat[e] = (hL[i * D + e] - mu) * rs;
    const logits = matmulBT(ln.y.subarray(i * D, (i + 1) * D), wte, 1, D, V);
    let max = -Infinity;
    for (let v = 0; v < V; v++) if (logits[v] > max) max = logits[v];
    let sum = 0;
    const p = new Float64Array(V);
    for (let v = 0; v < V; v++) {
      p[v] = Math.exp(logits[v] - max);
      sum += p[v];
    }
    pw.fill(0);
    for (let v = 0; v < V; v++) {
      const pv = p[v] / sum;
      if (pv === 0) continue;
      for (let e = 0; e < D; e++) pw[e] += pv * G[v * D + e];
    }
    // r = Pi(gamma . p wte) - count * dhL / rstd
    project(pw, xhat, D);
    for (let e = 0; e < D; e++) r[e] = pw[e] - (count * dhL[i * D + e]) / rs;
    // nearest Pi(G_v): ||r - Pi G_v||^2 with Pi G_v = G_v - mean(G_v) - xhat mean(G_v . xhat)
    let best = -1;
    let bestD = Infinity;
    for (let v = 0; v < V; v++) {
      let gx = 0;
      for (let e = 0; e < D; e++) gx += G[v * D + e] * xhat[e];
      gx /= D;
      let d = 0;
      for (let e = 0; e < D; e++) {
        const diff = r[e] - (G[v * D + e] - Gmean[v] - xhat[e] * gx);
        d += diff * diff;
      }
      if (d < bestD) {
        bestD = d;
        best = v;
      }
    }
    labels[i] = best;
  }
  return labels;
}

/** In place: z <- z - mean(z) - xhat mean(z . xhat) (the LayerNorm backward's projection). */
function project(z: Float64Array, xhat: Float64Array, D: number): void {
  let m = 0;
  let mx = 0;
  for (let e = 0; e < D; e++) {
    m += z[e];
    mx += z[e] * xhat[e];
  }
  m /= D;
  mx /= D;
  for (let e = 0; e < D; e++) z[e] -= m + xhat[e] * mx;
}
