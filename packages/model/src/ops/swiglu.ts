/**
 * swiglu: the activation core of LLaMA's MLP, down_proj(silu(gate_proj(x)) * up_proj(x)); the
 * three projections are (LoRA) linears around it, so this op sees only their outputs:
 *   h = silu(g) * u,  silu(g) = g sigmoid(g)
 * Backward, with s = sigmoid(g):
 *   dg = dh u s (1 + g (1 - s)),  du = dh silu(g)
 * Elementwise in float64 (Math.exp), rounded to float32 once. sigmoid is written as
 * 1 / (1 + exp(-g)): for very negative g exp(-g) is Infinity and s is exactly 0, no NaN.
 */

function sigmoid(v: number): number {
  return 1 / (1 + Math.exp(-v));
}

export function swigluForward(gate: Float32Array, up: Float32Array): Float32Array {
  if (gate.length !== up.length) throw new RangeError(`swiglu: gate has ${gate.length} values, up ${up.length}`);
  const h = new Float32Array(gate.length);
  for (let i = 0; i < gate.length; i++) {
    const g = gate[i];
    h[i] = g * sigmoid(g) * up[i];
  }
  return h;
}

export function swigluBackward(
  gate: Float32Array,
  up: Float32Array,
  dh: Float32Array,
): { dgate: Float32Array; dup: Float32Array } {
  const dgate = new Float32Array(gate.length);
  const dup = new Float32Array(gate.length);
  for (let i = 0; i < gate.length; i++) {
    const g = gate[i];
    const s = sigmoid(g);
    dgate[i] = dh[i] * up[i] * s * (1 + g * (1 - s));
    dup[i] = dh[i] * g * s;
  }
  return { dgate, dup };
}
