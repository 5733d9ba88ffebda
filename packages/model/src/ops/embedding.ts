/**
 * embedding: h[b,t] = wte[ids[b,t]] + wpe[t].
 * Backward scatter-adds into the tables (only pre-training trains them; LoRA leaves them frozen).
 */

export function embeddingForward(
  ids: Int32Array,
  wte: Float32Array,
  wpe: Float32Array,
  B: number,
  T: number,
  D: number,
  vocabSize: number,
): Float32Array {
  const h = new Float32Array(B * T * D);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const id = ids[b * T + t];
      if (!(id >= 0 && id < vocabSize))
        throw new RangeError(`token id ${id} at [${b}, ${t}] is outside the vocabulary (${vocabSize})`);
      const o = (b * T + t) * D;
      const e = id * D;
      const p = t * D;
      for (let c = 0; c < D; c++) h[o + c] = wte[e + c] + wpe[p + c];
    }
  }
  return h;
}

export function embeddingBackward(
  ids: Int32Array,
  dh: Float32Array,
  B: number,
  T: number,
  D: number,
  vocabSize: number,
  nPositions: number,
): { dwte: Float32Array; dwpe: Float32Array } {
  const dwte = new Float32Array(vocabSize * D);
  const dwpe = new Float32Array(nPositions * D);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const o = (b * T + t) * D;
      const e = ids[b * T + t] * D;
      const p = t * D;
      for (let c = 0; c < D; c++) {
        dwte[e + c] += dh[o + c];
        dwpe[p + c] += dh[o + c];
      }
    }
  }
  return { dwte, dwpe };
}
