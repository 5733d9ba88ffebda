/**
 * The safetensors container (https://huggingface.co/docs/safetensors): an 8-byte little-endian
 * header length N, N bytes of JSON header, then the raw little-endian tensor data. Offsets in
 * the header are relative to the start of the data.
 *
 * Browser-safe: only TextEncoder/TextDecoder, typed arrays and DataView.
 *
 * Reading keeps memory flat: an F32 tensor whose absolute byte offset in the underlying
 * ArrayBuffer is 4-aligned is returned as a Float32Array *view* into `bytes.buffer` (no copy),
 * so a 500 MB checkpoint is held once. Misaligned F32 tensors are copied; F16 and BF16 are
 * converted to new Float32Arrays.
 */
import { CodedError } from '../coded-error';
import { type Tensor, numel } from '../tensor';

export type SafetensorsErrorCode =
  | 'SAFETENSORS_TRUNCATED'
  | 'SAFETENSORS_BAD_HEADER'
  | 'SAFETENSORS_BAD_DTYPE'
  | 'SAFETENSORS_BAD_OFFSETS'
  | 'SAFETENSORS_BAD_TENSOR';

export class SafetensorsError extends CodedError<SafetensorsErrorCode> {}

/** One tensor entry of the header. `dataOffsets` are relative to the data section. */
export interface SafetensorInfo {
  name: string;
  dtype: string;
  shape: number[];
  dataOffsets: [number, number];
}

export interface ParsedSafetensors {
  metadata: Record<string, string> | undefined;
  tensors: Map<string, SafetensorInfo>;
  /** Byte offset of the data section within `bytes` (8 + header length). */
  dataStart: number;
}

/** Element sizes of the dtypes the format defines; used to validate offsets of any tensor. */
const DTYPE_SIZES: Record<string, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  U16: 2,
  I16: 2,
  F16: 2,
  BF16: 2,
  U32: 4,
  I32: 4,
  F32: 4,
  U64: 8,
  I64: 8,
  F64: 8,
};

/** The dtypes `readSafetensors` converts to float32. */
export const SUPPORTED_SAFETENSORS_DTYPES = ['F32', 'F16', 'BF16'] as const;

/** Same limit as the reference implementation: a header above 100 MB is treated as corrupt. */
export const MAX_SAFETENSORS_HEADER_BYTES = 100 * 1024 * 1024;

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isNonNegInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/**
 * Parses and validates the header: structure, dtypes, offsets against the data section and
 * the dtype size, and that no two tensors overlap. Reads no tensor data.
 */
export function parseSafetensors(bytes: Uint8Array): ParsedSafetensors {
  if (bytes.byteLength < 8) {
    throw new SafetensorsError(
      'SAFETENSORS_TRUNCATED',
      `safetensors: file is ${bytes.byteLength} bytes, shorter than the 8-byte header length`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const lo = view.getUint32(0, true);
  const hi = view.getUint32(4, true);
  if (hi !== 0 || lo > MAX_SAFETENSORS_HEADER_BYTES) {
    const n = hi * 4294967296 + lo;
    throw new SafetensorsError(
      'SAFETENSORS_BAD_HEADER',
      `safetensors: header length ${n} is absurdly large ` +
        `(limit ${MAX_SAFETENSORS_HEADER_BYTES} bytes); not a safetensors file?`,
    );
  }
  const headerLen = lo;
  if (8 + headerLen > bytes.byteLength) {
    throw new SafetensorsError(
      'SAFETENSORS_TRUNCATED',
      `safetensors: header length ${headerLen} runs past the end of the ${bytes.byteLength}-byte file`,
    );
  }
  let header: unknown;
  try {
    const text = new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, 8 + headerLen));
    header = JSON.parse(text);
  } catch (e) {
    throw new SafetensorsError(
      'SAFETENSORS_BAD_HEADER',
      `safetensors: header is not valid UTF-8 JSON (${(e as Error).message})`,
    );
  }
  if (!isPlainObject(header)) {
    throw new SafetensorsError('SAFETENSORS_BAD_HEADER', 'safetensors: header is not a JSON object');
  }

  const dataStart = 8 + headerLen;
  const dataLen = bytes.byteLength - dataStart;
  let metadata: Record<string, string> | undefined;
  const tensors = new Map<string, SafetensorInfo>();

  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (!isPlainObject(entry)) {
        throw new SafetensorsError('SAFETENSORS_BAD_HEADER', 'safetensors: "__metadata__" is not an object');
      }
      metadata = {};
      for (const [k, v] of Object.entries(entry)) {
        if (typeof v !== 'string') {
          throw new SafetensorsError('SAFETENSORS_BAD_HEADER', `safetensors: metadata value "${k}" is not a string`);
        }
        metadata[k] = v;
      }
      continue;
    }
    if (!isPlainObject(entry)) {
      throw new SafetensorsError('SAFETENSORS_BAD_HEADER', `safetensors: tensor "${name}": entry is not an object`);
    }
    const { dtype, shape, data_offsets: offsets } = entry;
    if (typeof dtype !== 'string') {
      throw new SafetensorsError('SAFETENSORS_BAD_HEADER', `safetensors: tensor "${name}": missing "dtype"`);
    }
    const size = DTYPE_SIZES[dtype];
    if (size === undefined) {
      throw new SafetensorsError('SAFETENSORS_BAD_DTYPE', `safetensors: tensor "${name}": unknown dtype "${dtype}"`);
    }
    if (!Array.isArray(shape) || !shape.every(isNonNegInt)) {
      throw new SafetensorsError(
        'SAFETENSORS_BAD_HEADER',
        `safetensors: tensor "${name}": "shape" must be an array of non-negative integers, ` +
          `got ${JSON.stringify(shape)}`,
      );
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegInt)) {
      throw new SafetensorsError(
        'SAFETENSORS_BAD_OFFSETS',
        `safetensors: tensor "${name}": "data_offsets" must be [begin, end] non-negative integers, ` +
          `got ${JSON.stringify(offsets)}`,
      );
    }
    const [begin, end] = offsets as [number, number];
    if (begin > end || end > dataLen) {
      throw new SafetensorsError(
        'SAFETENSORS_BAD_OFFSETS',
        `safetensors: tensor "${name}": data_offsets [${begin}, ${end}] lie outside the ${dataLen}-byte data section`,
      );
    }
    const want = numel(shape as number[]) * size;
    if (end - begin !== want) {
      throw new SafetensorsError(
        'SAFETENSORS_BAD_OFFSETS',
        `safetensors: tensor "${name}": data_offsets span ${end - begin} bytes ` +
          `but ${dtype} [${(shape as number[]).join(', ')}] needs ${want}`,
      );
    }
    tensors.set(name, { name, dtype, shape: [...(shape as number[])], dataOffsets: [begin, end] });
  }

  // no two tensors may share bytes (empty tensors occupy nothing)
  const spans = [...tensors.values()]
    .filter((t) => t.dataOffsets[1] > t.dataOffsets[0])
    .sort((a, b) => a.dataOffsets[0] - b.dataOffsets[0]);
  for (let i = 1; i < spans.length; i++) {
    const prev = spans[i - 1];
    const cur = spans[i];
    if (cur.dataOffsets[0] < prev.dataOffsets[1]) {
      throw new SafetensorsError(
        'SAFETENSORS_BAD_OFFSETS',
        `safetensors: tensors "${prev.name}" [${prev.dataOffsets.join(', ')}] ` +
          `and "${cur.name}" [${cur.dataOffsets.join(', ')}] overlap`,
      );
    }
  }
  return { metadata, tensors, dataStart };
}

// ---------------------------------------------------------------- dtype conversion

/** IEEE half -> float32 bit pattern. */
function f16BitsToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0x1f) return sign | 0x7f800000 | (mant << 13); // inf / nan
  if (exp !== 0) return sign | ((exp + 112) << 23) | (mant << 13); // normal: exp - 15 + 127
  if (mant === 0) return sign; // signed zero
  // subnormal: mant * 2^-24; normalize
  let e = 113; // 127 - 15 + 1
  while ((mant & 0x400) === 0) {
    mant <<= 1;
    e--;
  }
  return sign | (e << 23) | ((mant & 0x3ff) << 13);
}

let f16Table: Uint32Array | null = null;
function f16LookupTable(): Uint32Array {
  if (!f16Table) {
    f16Table = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16BitsToF32Bits(h) >>> 0;
  }
  return f16Table;
}

/** float16 bits (as uint16) -> float32 values. */
export function f16ToF32(src: Uint16Array, out = new Float32Array(src.length)): Float32Array {
  const table = f16LookupTable();
  const bits = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < src.length; i++) bits[i] = table[src[i]];
  return out;
}

/** bfloat16 bits (as uint16) -> float32 values (exact: bf16 is the top half of a float32). */
export function bf16ToF32(src: Uint16Array, out = new Float32Array(src.length)): Float32Array {
  const bits = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  return out;
}

/** Reads `count` little-endian uint16 starting at absolute byte `abs` of `buffer`. */
function readU16(buffer: ArrayBufferLike, abs: number, count: number): Uint16Array {
  if (LITTLE_ENDIAN_HOST && abs % 2 === 0) return new Uint16Array(buffer, abs, count);
  const out = new Uint16Array(count);
  const dv = new DataView(buffer, abs, count * 2);
  for (let i = 0; i < count; i++) out[i] = dv.getUint16(2 * i, true);
  return out;
}

function readTensor(bytes: Uint8Array, dataStart: number, info: SafetensorInfo): Tensor {
  const count = numel(info.shape);
  const abs = bytes.byteOffset + dataStart + info.dataOffsets[0];
  const shape = [...info.shape];
  switch (info.dtype) {
    case 'F32': {
      if (LITTLE_ENDIAN_HOST && abs % 4 === 0) {
        return { shape, data: new Float32Array(bytes.buffer, abs, count) }; // zero-copy view
      }
      const data = new Float32Array(count);
      if (LITTLE_ENDIAN_HOST) {
        new Uint8Array(data.buffer).set(new Uint8Array(bytes.buffer, abs, count * 4));
      } else {
        const dv = new DataView(bytes.buffer, abs, count * 4);
        for (let i = 0; i < count; i++) data[i] = dv.getFloat32(4 * i, true);
      }
      return { shape, data };
    }
    case 'F16':
      return { shape, data: f16ToF32(readU16(bytes.buffer, abs, count)) };
    case 'BF16':
      return { shape, data: bf16ToF32(readU16(bytes.buffer, abs, count)) };
    default:
      throw new SafetensorsError(
        'SAFETENSORS_BAD_DTYPE',
        `safetensors: tensor "${info.name}" has dtype ${info.dtype}; ` +
          `only ${SUPPORTED_SAFETENSORS_DTYPES.join(', ')} can be read as float32`,
      );
  }
}

export interface ReadSafetensorsOptions {
  /** Return only the tensors for which this is true (others are neither decoded nor dtype-checked). */
  filter?: (name: string, info: SafetensorInfo) => boolean;
}

/** Tensors (as float32) plus the header's `__metadata__`. */
export function readSafetensorsWithMetadata(
  bytes: Uint8Array,
  opts: ReadSafetensorsOptions = {},
): { metadata: Record<string, string> | undefined; tensors: Map<string, Tensor> } {
  const parsed = parseSafetensors(bytes);
  const tensors = new Map<string, Tensor>();
  for (const [name, info] of parsed.tensors) {
    if (opts.filter && !opts.filter(name, info)) continue;
    tensors.set(name, readTensor(bytes, parsed.dataStart, info));
  }
  return { metadata: parsed.metadata, tensors };
}

/**
 * All tensors as float32, in header order. F32 tensors at 4-aligned absolute offsets are
 * views sharing `bytes.buffer`: keep `bytes` unmodified while they are in use.
 */
export function readSafetensors(bytes: Uint8Array, opts: ReadSafetensorsOptions = {}): Map<string, Tensor> {
  return readSafetensorsWithMetadata(bytes, opts).tensors;
}

// ---------------------------------------------------------------- writing

/**
 * Serializes float32 tensors, in the given order, contiguously. The header is padded with
 * spaces so its length is a multiple of 8, which keeps every tensor 4-aligned in the file
 * (and in the buffer, for readers that load it at an aligned address).
 */
export function writeSafetensors(
  tensors: Map<string, Tensor> | Array<[string, Tensor]>,
  metadata?: Record<string, string>,
): Uint8Array {
  const entries = tensors instanceof Map ? [...tensors.entries()] : tensors;
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') {
        throw new SafetensorsError('SAFETENSORS_BAD_HEADER', `safetensors: metadata value "${k}" is not a string`);
      }
    }
    header.__metadata__ = { ...metadata };
  }
  let offset = 0;
  const seen = new Set<string>();
  for (const [name, t] of entries) {
    if (name === '__metadata__') {
      throw new SafetensorsError('SAFETENSORS_BAD_TENSOR', 'safetensors: "__metadata__" cannot be a tensor name');
    }
    if (seen.has(name)) {
      throw new SafetensorsError('SAFETENSORS_BAD_TENSOR', `safetensors: tensor "${name}" appears twice`);
    }
    seen.add(name);
    if (!t.shape.every((d) => isNonNegInt(d))) {
      throw new SafetensorsError(
        'SAFETENSORS_BAD_TENSOR',
        `safetensors: tensor "${name}": bad shape [${t.shape.join(', ')}]`,
      );
    }
    const n = numel(t.shape);
    if (t.data.length !== n) {
      throw new SafetensorsError(
        'SAFETENSORS_BAD_TENSOR',
        `safetensors: tensor "${name}" has ${t.data.length} elements, shape [${t.shape.join(', ')}] needs ${n}`,
      );
    }
    header[name] = { dtype: 'F32', shape: [...t.shape], data_offsets: [offset, offset + 4 * n] };
    offset += 4 * n;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const headerLen = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + headerLen + offset);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, headerLen, true);
  dv.setUint32(4, 0, true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + headerLen);
  let pos = 8 + headerLen;
  for (const [, t] of entries) {
    if (LITTLE_ENDIAN_HOST) {
      out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), pos);
    } else {
      for (let i = 0; i < t.data.length; i++) dv.setFloat32(pos + 4 * i, t.data[i], true);
    }
    pos += t.data.byteLength;
  }
  return out;
}
