/**
 * rope: rotary position embedding as Hugging Face's LLaMA and Qwen2 apply it to q and k
 * (`apply_rotary_pos_emb` with `rotate_half`: the pairs are (i, i + hd/2), not interleaved).
 *
 * x is [B*T, nHeads*hd], head h in columns h*hd .. (h+1)*hd (the q_proj / k_proj output as is).
 * Row (b, t) sits at position t (0..T-1 per sequence; padding is on the right). For i < hd/2:
 *   a_i = t * invFreq_i,  invFreq_i = theta^(-2i/hd)
 *   y_i        = x_i cos a_i - x_{i+hd/2} sin a_i
 *   y_{i+hd/2} = x_{i+hd/2} cos a_i + x_i sin a_i
 * A rotation per pair, so the backward is the transposed rotation (the op is linear):
 *   dx_i = dy_i cos a_i + dy_{i+hd/2} sin a_i,  dx_{i+hd/2} = dy_{i+hd/2} cos a_i - dy_i sin a_i
 *
 * Llama 3's `rope_scaling` (rope_type "llama3") rescales invFreq by wavelength w = 2 pi / invFreq,
 * with L = original_max_position_embeddings:
 *   w < L / high_freq_factor  (high frequencies): unchanged
 *   w > L / low_freq_factor   (low frequencies):  invFreq / factor
 *   otherwise (medium): (1 - s) invFreq / factor + s invFreq,
 *                       s = (L / w - low_freq_factor) / (high_freq_factor - low_freq_factor)
 * and leaves cos/sin unscaled (its attention factor is 1), as transformers'
 * `_compute_llama3_parameters` does.
 *
 * Precision, following transformers (which keeps inv_freq as a float32 buffer and forms the
 * angles and cos/sin in float32 even under autocast): invFreq is rounded to float32, each angle
 * is the float32 product t * invFreq, cos and sin of that angle are rounded to float32. The band
 * arithmetic is float64 here and float32 there, so a rescaled invFreq may differ by an ulp.
 * Rounding the angle matters at long context: t = 8000 already carries ~5e-4 rad of float32
 * error, and a float64 angle would disagree with the checkpoints' own behaviour by that much.
 */
import { CodedError } from '../coded-error';
import type { Llama3RopeScaling } from '../llama-config';

export class RopeError extends CodedError<'BAD_ROPE'> {
  constructor(message: string) {
    super('BAD_ROPE', message);
  }
}

/** invFreq [hd/2] for rope_theta and optional Llama 3 rope_scaling, float32 like the HF buffer. */
export function ropeInverseFrequencies(
  headDim: number,
  theta: number,
  scaling: Llama3RopeScaling | null = null,
): Float32Array {
  if (!(Number.isInteger(headDim) && headDim > 0 && headDim % 2 === 0))
    throw new RopeError(`rope: head_dim must be a positive even integer, got ${headDim}`);
  if (!(theta > 0 && Number.isFinite(theta))) throw new RopeError(`rope: rope_theta must be > 0, got ${theta}`);
  const half = headDim / 2;
  const inv = new Float32Array(half);
  for (let i = 0; i < half; i++) inv[i] = theta ** (-(2 * i) / headDim);
  if (!scaling) return inv;
  const { factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings: L } = scaling;
  if (!(factor > 0 && lowFreqFactor > 0 && highFreqFactor > lowFreqFactor && L > 0)) {
    throw new RopeError(
      `rope_scaling (llama3): need factor > 0, 0 < low_freq_factor < high_freq_factor and ` +
        `original_max_position_embeddings > 0; got factor=${factor}, low_freq_factor=${lowFreqFactor}, ` +
        `high_freq_factor=${highFreqFactor}, original_max_position_embeddings=${L}`,
    );
  }
  const lowFreqWavelen = L / lowFreqFactor;
  const highFreqWavelen = L / highFreqFactor;
  for (let i = 0; i < half; i++) {
    const f = inv[i];
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highFreqWavelen) continue;
    if (wavelen > lowFreqWavelen) {
      inv[i] = f / factor;
      continue;
    }
    const s = (L / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
    inv[i] = ((1 - s) * f) / factor + s * f;
  }
  return inv;
}

/** cos and sin of every (position, frequency) pair, [T, hd/2] each, float32. */
export interface RopeTable {
  T: number;
  half: number;
  cos: Float32Array;
  sin: Float32Array;
}

export function ropeTable(invFreq: Float32Array, T: number): RopeTable {
  const half = invFreq.length;
  const cos = new Float32Array(T * half);
  const sin = new Float32Array(T * half);
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < half; i++) {
      const angle = Math.fround(t * invFreq[i]);
      cos[t * half + i] = Math.cos(angle);
      sin[t * half + i] = Math.sin(angle);
    }
  }
  return { T, half, cos, sin };
}

function checkShapes(x: Float32Array, table: RopeTable, B: number, T: number, nHeads: number, headDim: number) {
  if (headDim !== 2 * table.half)
    throw new RangeError(`rope: head_dim ${headDim} but the table has ${table.half} pairs`);
  if (T > table.T) throw new RangeError(`rope: ${T} positions but the table has ${table.T}`);
  if (x.length !== B * T * nHeads * headDim)
    throw new RangeError(
      `rope: input has ${x.length} values, expected B*T*heads*head_dim = ${B * T * nHeads * headDim}`,
    );
}

/** Rotates a direction: +1 applies the embedding, -1 its inverse (= transpose), which is the backward. */
function rotate(
  x: Float32Array,
  table: RopeTable,
  B: number,
  T: number,
  nHeads: number,
  headDim: number,
  sign: 1 | -1,
): Float32Array {
  checkShapes(x, table, B, T, nHeads, headDim);
  const half = table.half;
  const width = nHeads * headDim;
  const y = new Float32Array(x.length);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const row = (b * T + t) * width;
      const tab = t * half;
      for (let h = 0; h < nHeads; h++) {
        const o = row + h * headDim;
        for (let i = 0; i < half; i++) {
          const c = table.cos[tab + i];
          const s = sign * table.sin[tab + i];
          const x1 = x[o + i];
          const x2 = x[o + i + half];
          y[o + i] = x1 * c - x2 * s;
          y[o + i + half] = x2 * c + x1 * s;
        }
      }
    }
  }
  return y;
}

export function ropeForward(
  x: Float32Array,
  table: RopeTable,
  B: number,
  T: number,
  nHeads: number,
  headDim: number,
): Float32Array {
  return rotate(x, table, B, T, nHeads, headDim, 1);
}

export function ropeBackward(
  dy: Float32Array,
  table: RopeTable,
  B: number,
  T: number,
  nHeads: number,
  headDim: number,
): Float32Array {
  return rotate(dy, table, B, T, nHeads, headDim, -1);
}
