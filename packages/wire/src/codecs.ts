/**
 * The codecs activations and gradients travel in. One list: adding a codec means adding it here
 * (its name, its byte size, its encoder and decoder in frame.ts's writeTensor/readTensor).
 *
 *   f32   count x float32
 *   f16   count x IEEE half (round-to-nearest-even on encode)
 *   int8  rows x float32 scale, then rows*cols x int8; a row is the last dimension,
 *         scale = maxabs(row)/127 (0 for an all-zero row), q = round(x/scale) in [-127,127],
 *         decoded x = q*scale
 *   i32   count x int32: the only codec of dtype i32 (labels), never chosen by a run
 */
export const CODECS = ['f32', 'f16', 'int8'] as const;
export type Codec = (typeof CODECS)[number];

export function isCodec(v: unknown): v is Codec {
  return typeof v === 'string' && (CODECS as readonly string[]).includes(v);
}

/** Largest finite IEEE half. */
export const F16_MAX = 65504;

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/**
 * float32 value -> IEEE half bits, round-to-nearest-even. Magnitudes that round past 65504
 * give infinity here; encodeFrameWith refuses anything above 65504 before calling this.
 */
export function f32ToF16Bits(value: number): number {
  scratchF32[0] = value;
  const x = scratchU32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0); // inf / quiet nan
  const e = exp - 112; // rebias 127 -> 15
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // half subnormal: value = m * 2^-24 with m = (1.mant * 2^23) >> (14 - e)
    const shift = 14 - e;
    if (shift > 24) return sign; // below half the smallest subnormal: rounds to zero
    const full = mant | 0x800000;
    let m = full >>> shift;
    const rem = full & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (m & 1) !== 0)) m++; // m = 1024 carries into the smallest normal
    return sign | m;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) !== 0)) h++; // a carry bumps the exponent, as it should
  return sign | h;
}

/** float32 values -> half bits (see f32ToF16Bits for range behaviour). */
export function f32ToF16(src: Float32Array, out = new Uint16Array(src.length)): Uint16Array {
  for (let i = 0; i < src.length; i++) out[i] = f32ToF16Bits(src[i]);
  return out;
}
