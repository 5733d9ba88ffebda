/**
 * GELU, tanh approximation (GPT-2's "gelu_new"):
 *   y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
 *   dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
 */
const C = Math.sqrt(2 / Math.PI);
const K3 = 0.044715;

export function geluForward(x: Float32Array): Float32Array {
  const y = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    y[i] = 0.5 * v * (1 + Math.tanh(C * (v + K3 * v * v * v)));
  }
  return y;
}

export function geluBackward(x: Float32Array, dy: Float32Array): Float32Array {
  const dx = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    const t = Math.tanh(C * (v + K3 * v * v * v));
    const d = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * C * (1 + 3 * K3 * v * v);
    dx[i] = dy[i] * d;
  }
  return dx;
}
