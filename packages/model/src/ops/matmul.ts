/**
 * matmul: the reference for every dense product in the model.
 *
 * Row-major float32 in and out, float64 accumulation (the oracle must be more exact than the
 * engines it checks). Three layouts cover the forward and the backward without materializing
 * a transpose:
 *   matmul       y[M,N] = a[M,K] b[K,N]       (+ bias[N])
 *   matmulBT     y[M,N] = a[M,K] b[N,K]^T     (dx = dy W^T, logits = h wte^T)
 *   matmulAT     y[M,N] = a[K,M]^T b[K,N]     (dW = x^T dy)
 */

// The loops are blocked four rows (or four columns) at a time: each loaded element of the
// shared operand is used four times, which doubles throughput in V8 (1.2 -> 2.5 GFLOP/s on
// this project's CPU machines) without changing the float64 accumulation order per output.

export function matmul(
  a: Float32Array,
  b: Float32Array,
  M: number,
  K: number,
  N: number,
  bias?: Float32Array,
): Float32Array {
  const out = new Float32Array(M * N);
  const acc = new Float64Array(4 * N);
  for (let i = 0; i < M; i += 4) {
    const rows = Math.min(4, M - i);
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < N; j++) acc[r * N + j] = bias ? bias[j] : 0;
    }
    if (rows === 4) {
      const N2 = 2 * N;
      const N3 = 3 * N;
      for (let k = 0; k < K; k++) {
        const a0 = a[i * K + k];
        const a1 = a[(i + 1) * K + k];
        const a2 = a[(i + 2) * K + k];
        const a3 = a[(i + 3) * K + k];
        const bRow = k * N;
        for (let j = 0; j < N; j++) {
          const bv = b[bRow + j];
          acc[j] += a0 * bv;
          acc[N + j] += a1 * bv;
          acc[N2 + j] += a2 * bv;
          acc[N3 + j] += a3 * bv;
        }
      }
    } else {
      for (let r = 0; r < rows; r++) {
        for (let k = 0; k < K; k++) {
          const av = a[(i + r) * K + k];
          const bRow = k * N;
          for (let j = 0; j < N; j++) acc[r * N + j] += av * b[bRow + j];
        }
      }
    }
    const base = i * N;
    for (let j = 0; j < rows * N; j++) out[base + j] = acc[j];
  }
  return out;
}

export function matmulBT(a: Float32Array, b: Float32Array, M: number, K: number, N: number): Float32Array {
  const out = new Float32Array(M * N);
  for (let i = 0; i < M; i++) {
    const aRow = i * K;
    const oRow = i * N;
    let j = 0;
    for (; j + 4 <= N; j += 4) {
      const b0 = j * K;
      const b1 = b0 + K;
      const b2 = b1 + K;
      const b3 = b2 + K;
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      for (let k = 0; k < K; k++) {
        const av = a[aRow + k];
        s0 += av * b[b0 + k];
        s1 += av * b[b1 + k];
        s2 += av * b[b2 + k];
        s3 += av * b[b3 + k];
      }
      out[oRow + j] = s0;
      out[oRow + j + 1] = s1;
      out[oRow + j + 2] = s2;
      out[oRow + j + 3] = s3;
    }
    for (; j < N; j++) {
      const bRow = j * K;
      let s = 0;
      for (let k = 0; k < K; k++) s += a[aRow + k] * b[bRow + k];
      out[oRow + j] = s;
    }
  }
  return out;
}

export function matmulAT(a: Float32Array, b: Float32Array, K: number, M: number, N: number): Float32Array {
  const acc = new Float64Array(M * N);
  for (let k = 0; k < K; k++) {
    const aRow = k * M;
    const bRow = k * N;
    let i = 0;
    for (; i + 4 <= M; i += 4) {
      const a0 = a[aRow + i];
      const a1 = a[aRow + i + 1];
      const a2 = a[aRow + i + 2];
      const a3 = a[aRow + i + 3];
      const o0 = i * N;
      const o1 = o0 + N;
      const o2 = o1 + N;
      const o3 = o2 + N;
      for (let j = 0; j < N; j++) {
        const bv = b[bRow + j];
        acc[o0 + j] += a0 * bv;
        acc[o1 + j] += a1 * bv;
        acc[o2 + j] += a2 * bv;
        acc[o3 + j] += a3 * bv;
      }
    }
    for (; i < M; i++) {
      const av = a[aRow + i];
      const oRow = i * N;
      for (let j = 0; j < N; j++) acc[oRow + j] += av * b[bRow + j];
    }
  }
  return Float32Array.from(acc);
}

/** Sum over rows: db[N] = sum_i dy[i, :]. */
export function sumRows(dy: Float32Array, M: number, N: number): Float32Array {
  const acc = new Float64Array(N);
  for (let i = 0; i < M; i++) {
    const row = i * N;
    for (let j = 0; j < N; j++) acc[j] += dy[row + j];
  }
  return Float32Array.from(acc);
}

export interface LinearGrads {
  dx: Float32Array;
  dW?: Float32Array;
  db?: Float32Array;
}

/** y = x W + b forward; W is [K, N] (GPT-2 Conv1D layout). */
export function linearForward(
  x: Float32Array,
  W: Float32Array,
  b: Float32Array | undefined,
  M: number,
  K: number,
  N: number,
): Float32Array {
  return matmul(x, W, M, K, N, b);
}

/** Backward of linearForward. Weight gradients only when asked (they are frozen under LoRA). */
export function linearBackward(
  dy: Float32Array,
  x: Float32Array,
  W: Float32Array,
  M: number,
  K: number,
  N: number,
  weightGrads: boolean,
): LinearGrads {
  const dx = matmulBT(dy, W, M, N, K);
  if (!weightGrads) return { dx };
  return { dx, dW: matmulAT(x, dy, M, K, N), db: sumRows(dy, M, N) };
}
