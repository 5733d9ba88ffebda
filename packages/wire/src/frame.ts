/**
 * The binary frame of the wire protocol spoken between user, edge and cloud (over WebSocket, and
 * as HTTP bodies). This file knows frames and message specs, not messages: which messages exist
 * on which hop is messages.ts's registry, which hands its specs to encodeFrameWith/decodeFrameWith.
 *
 * Frame layout (all integers little-endian):
 *
 *   +-----------+---------------------------+--------------------------------------+
 *   | u32 H     | H bytes UTF-8 JSON header | payload (tensor data)                |
 *   +-----------+---------------------------+--------------------------------------+
 *
 *   header = { "type": string, ...fields,
 *              "tensors": [ { "name", "dtype": "f32"|"i32", "shape": number[],
 *                             "codec": "f32"|"f16"|"int8"|"i32",
 *                             "offset": number, "byteLength": number } ] }
 *
 * `offset` is relative to the payload start and always a multiple of 4 (gaps are zero
 * padding), so a receiver could view the data in place. The encoder also pads the header
 * with trailing spaces (still valid JSON) so the payload itself starts 4-aligned in the
 * frame. Per-tensor payload by codec:
 *
 *   f32   count x float32
 *   f16   count x IEEE half (round-to-nearest-even on encode)
 *   int8  rows x float32 scale, then rows*cols x int8; a row is the last dimension,
 *         scale = maxabs(row)/127 (0 for an all-zero row), q = round(x/scale) in [-127,127],
 *         decoded x = q*scale
 *   i32   count x int32 (the only codec for dtype i32)
 *
 * Every frame is validated completely before anything uses it (a peer may be buggy or
 * hostile): the decoder throws only `ProtocolError`, never reads outside the frame, and
 * copies tensor data into fresh typed arrays so the caller may reuse its receive buffer.
 *
 * Browser-safe: only TextEncoder/TextDecoder, DataView and typed arrays. All reads and
 * writes go through DataView, which makes the byte order explicit on any host and removes
 * any alignment requirement on the buffer the caller hands us.
 */
import { f16ToF32 } from '@splitllm/model';
import { CODECS, type Codec, F16_MAX, f32ToF16Bits, isCodec } from './codecs';
import { ProtocolError } from './errors';

// ---------------------------------------------------------------- limits

/** Default frame size limit: comfortably above one GPT-2 activation batch, far below OOM. */
export const DEFAULT_MAX_FRAME_BYTES = 64 * 2 ** 20;
/** Default limit on tensors per frame (a GPT-2 LoRA adapter has well under 100). */
export const DEFAULT_MAX_FRAME_TENSORS = 4096;
/** Elements (and int8 rows) per tensor; bounds allocations before any data is looked at. */
export const MAX_WIRE_TENSOR_ELEMENTS = 2 ** 28;
export const MAX_WIRE_TENSOR_NAME_LENGTH = 200;
export const MAX_STRING_FIELD_LENGTH = 256;
export const MAX_ERROR_MESSAGE_LENGTH = 2000;

// ---------------------------------------------------------------- message specs

/**
 * Field kinds: 'int' safe integer >= 0, 'number' finite, 'string' non-empty <= 256 chars,
 * 'text' non-empty <= 2000 chars (error messages), 'bool', 'codec' one of CODECS, 'users' a list
 * of {userId, tokens, steps} (an update's users). A trailing '?' makes the field optional.
 */
export type WireFieldKind = 'int' | 'number' | 'string' | 'text' | 'bool' | 'codec' | 'users';
export type WireFieldSpec = WireFieldKind | `${WireFieldKind}?`;
export type WireDtype = 'f32' | 'i32';

export interface WireTensorSpec {
  readonly dtype: WireDtype;
  readonly rank: number;
}

export interface WireMessageSpec {
  readonly fields: { readonly [name: string]: WireFieldSpec };
  /** Tensors the message must carry; others may accompany them. */
  readonly tensors?: { readonly [name: string]: WireTensorSpec };
  /** A variable set of tensors (LoRA arrays) that must all have this dtype. */
  readonly anyTensors?: WireDtype;
}

// ---------------------------------------------------------------- public shapes

export interface TensorInput {
  data: Float32Array | Int32Array;
  shape: number[];
  /** Ignored for Int32Array (always 'i32'); default 'f32'. */
  codec?: Codec;
}

export interface DecodedTensor {
  data: Float32Array | Int32Array;
  shape: number[];
  codec: Codec | 'i32';
}

export interface Frame {
  type: string;
  /** Every header key except `type` and `tensors`, including ones the spec doesn't list. */
  fields: Record<string, unknown>;
  tensors: Map<string, DecodedTensor>;
}

export interface DecodeLimits {
  maxBytes: number;
  /** Default DEFAULT_MAX_FRAME_TENSORS. */
  maxTensors?: number;
}

// ---------------------------------------------------------------- small helpers

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isNonNegInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** A short, never-throwing rendering of a value for error messages. */
function describe(v: unknown): string {
  if (v === undefined) return 'undefined';
  if (typeof v === 'number') return String(v); // JSON would print NaN/Infinity as null
  if (typeof v === 'bigint') return `${v}n`;
  let s: string;
  try {
    s = JSON.stringify(v) ?? String(v);
  } catch {
    s = Object.prototype.toString.call(v);
  }
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

function shapeText(shape: readonly (number | null)[]): string {
  return `[${shape.map((d) => (d === null ? '*' : String(d))).join(', ')}]`;
}

/** Own-property lookup, so a field named like an Object.prototype member reads as absent. */
function own(obj: Record<string, unknown>, key: string): unknown {
  return Object.hasOwn(obj, key) ? obj[key] : undefined;
}

/** Defines rather than assigns, so a "__proto__" key from the wire stays an ordinary field. */
function setOwn(obj: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

// ---------------------------------------------------------------- shapes and sizes

/**
 * Checks a shape and returns its [elements, rows] (rows = product of all but the last
 * dimension, the int8 scale count). Rows are bounded separately because a zero-sized last
 * dimension would otherwise let a huge row count through with zero elements.
 */
function checkShape(shape: unknown, what: string): [number, number] {
  if (!Array.isArray(shape) || shape.length < 1 || shape.length > 4) {
    throw new ProtocolError('BAD_TENSOR', `${what}: shape must be an array of rank 1..4, got ${describe(shape)}`);
  }
  let rows = 1;
  for (let i = 0; i < shape.length; i++) {
    const d: unknown = shape[i];
    if (!isNonNegInt(d)) {
      throw new ProtocolError(
        'BAD_TENSOR',
        `${what}: shape ${describe(shape)} has dimension ${i} = ${describe(d)}, not a non-negative integer`,
      );
    }
    if (i < shape.length - 1) rows *= d;
    if (rows > MAX_WIRE_TENSOR_ELEMENTS) break;
  }
  const count = rows * (shape[shape.length - 1] as number);
  if (rows > MAX_WIRE_TENSOR_ELEMENTS || count > MAX_WIRE_TENSOR_ELEMENTS) {
    throw new ProtocolError(
      'BAD_TENSOR',
      `${what}: shape ${describe(shape)} exceeds the limit of ${MAX_WIRE_TENSOR_ELEMENTS} elements`,
    );
  }
  return [count, rows];
}

function wireBytes(count: number, rows: number, codec: Codec | 'i32'): number {
  switch (codec) {
    case 'f32':
    case 'i32':
      return count * 4;
    case 'f16':
      return count * 2;
    case 'int8':
      return rows * 4 + count;
  }
}

/** Payload bytes of one tensor, without alignment padding (for the bytes-per-step report). */
export function tensorWireBytes(shape: number[], codec: Codec | 'i32'): number {
  if (codec !== 'i32' && !CODECS.includes(codec)) {
    throw new ProtocolError('BAD_TENSOR', `tensorWireBytes: unknown codec ${describe(codec)}`);
  }
  const [count, rows] = checkShape(shape, 'tensorWireBytes');
  return wireBytes(count, rows, codec);
}

const align4 = (n: number): number => (n + 3) & ~3;

// ---------------------------------------------------------------- validation shared by both ends

function fieldError(type: string, name: string, want: string, got: unknown): ProtocolError {
  return new ProtocolError('BAD_FIELD', `message "${type}": field "${name}" must be ${want}, got ${describe(got)}`);
}

/** Users one `update` may list. */
export const MAX_UPDATE_USERS = 10_000;

function isUpdateUser(u: unknown): boolean {
  if (!isPlainObject(u)) return false;
  const id = own(u, 'userId');
  return (
    typeof id === 'string' &&
    id.length > 0 &&
    id.length <= MAX_STRING_FIELD_LENGTH &&
    isNonNegInt(own(u, 'tokens')) &&
    isNonNegInt(own(u, 'steps'))
  );
}

function checkFieldKind(type: string, name: string, kind: WireFieldKind, v: unknown): void {
  switch (kind) {
    case 'int':
      if (!isNonNegInt(v)) throw fieldError(type, name, 'a safe integer >= 0', v);
      return;
    case 'number':
      if (typeof v !== 'number' || !Number.isFinite(v)) throw fieldError(type, name, 'a finite number', v);
      return;
    case 'string':
    case 'text': {
      const max = kind === 'string' ? MAX_STRING_FIELD_LENGTH : MAX_ERROR_MESSAGE_LENGTH;
      if (typeof v !== 'string' || v.length === 0 || v.length > max) {
        throw fieldError(type, name, `a non-empty string of at most ${max} chars`, v);
      }
      return;
    }
    case 'bool':
      if (typeof v !== 'boolean') throw fieldError(type, name, 'a boolean', v);
      return;
    case 'codec':
      if (!isCodec(v)) throw fieldError(type, name, `one of ${CODECS.join(', ')}`, v);
      return;
    case 'users':
      if (!Array.isArray(v) || v.length > MAX_UPDATE_USERS || !v.every(isUpdateUser)) {
        throw fieldError(type, name, `a list of at most ${MAX_UPDATE_USERS} {userId, tokens, steps}`, v);
      }
      return;
  }
}

interface TensorMeta {
  dtype: WireDtype;
  shape: readonly number[];
}

/** Registry check: required fields with their kinds, required tensors with dtype and rank. */
function checkMessage(
  spec: WireMessageSpec,
  type: string,
  fields: Record<string, unknown>,
  tensors: ReadonlyMap<string, TensorMeta>,
): void {
  for (const [name, fieldSpec] of Object.entries(spec.fields)) {
    const optional = fieldSpec.endsWith('?');
    const v = own(fields, name);
    if (optional && v === undefined) continue;
    checkFieldKind(type, name, (optional ? fieldSpec.slice(0, -1) : fieldSpec) as WireFieldKind, v);
  }
  if (spec.tensors) {
    for (const [name, want] of Object.entries(spec.tensors)) {
      const t = tensors.get(name);
      if (!t) throw new ProtocolError('BAD_TENSOR', `message "${type}": missing tensor "${name}"`);
      if (t.dtype !== want.dtype) {
        throw new ProtocolError(
          'BAD_TENSOR',
          `message "${type}": tensor "${name}" has dtype ${t.dtype}, expected ${want.dtype}`,
        );
      }
      if (t.shape.length !== want.rank) {
        throw new ProtocolError(
          'BAD_SHAPE',
          `message "${type}": tensor "${name}" has shape ${shapeText(t.shape)} ` +
            `(rank ${t.shape.length}), expected rank ${want.rank}`,
        );
      }
    }
  }
  if (spec.anyTensors) {
    for (const [name, t] of tensors) {
      if (t.dtype !== spec.anyTensors) {
        throw new ProtocolError(
          'BAD_TENSOR',
          `message "${type}": tensor "${name}" has dtype ${t.dtype}, expected ${spec.anyTensors}`,
        );
      }
    }
  }
}

function checkTensorName(name: unknown, index: number): asserts name is string {
  if (typeof name !== 'string' || name.length === 0 || name.length > MAX_WIRE_TENSOR_NAME_LENGTH) {
    throw new ProtocolError(
      'BAD_TENSOR',
      `tensor #${index}: name must be a non-empty string of at most ${MAX_WIRE_TENSOR_NAME_LENGTH} chars, ` +
        `got ${describe(name)}`,
    );
  }
}

// ---------------------------------------------------------------- encode

interface PlannedTensor {
  name: string;
  input: TensorInput;
  dtype: WireDtype;
  codec: Codec | 'i32';
  shape: number[];
  rows: number;
  offset: number;
  byteLength: number;
}

const textEncoder = new TextEncoder();

/**
 * Builds the frame of message `type` as `spec` declares it. Validates like the decoder does
 * (spec, shapes, finiteness, f16 range) so a sender finds its own bug at the source instead of
 * as an error frame from its peer.
 */
export function encodeFrameWith(
  spec: WireMessageSpec,
  type: string,
  fields: Record<string, unknown>,
  tensors?: Record<string, TensorInput> | Map<string, TensorInput>,
): Uint8Array {
  if (!isPlainObject(fields)) throw new ProtocolError('BAD_FIELD', `message "${type}": fields must be an object`);
  for (const reserved of ['type', 'tensors']) {
    if (Object.hasOwn(fields, reserved)) {
      throw new ProtocolError('BAD_FIELD', `message "${type}": "${reserved}" is reserved and cannot be a field`);
    }
  }

  const entries: [string, TensorInput][] =
    tensors === undefined ? [] : tensors instanceof Map ? [...tensors] : Object.entries(tensors);
  const planned: PlannedTensor[] = [];
  const metas = new Map<string, TensorMeta>();
  let payloadBytes = 0;
  entries.forEach(([name, input], index) => {
    checkTensorName(name, index);
    const what = `message "${type}": tensor "${name}"`;
    if (!isPlainObject(input)) throw new ProtocolError('BAD_TENSOR', `${what}: not a tensor`);
    const { data } = input;
    const isF32 = data instanceof Float32Array;
    if (!isF32 && !(data instanceof Int32Array)) {
      throw new ProtocolError('BAD_TENSOR', `${what}: data must be a Float32Array or Int32Array`);
    }
    let codec: Codec | 'i32' = 'i32';
    if (isF32) {
      codec = input.codec ?? 'f32';
      if (!CODECS.includes(codec)) throw new ProtocolError('BAD_TENSOR', `${what}: unknown codec ${describe(codec)}`);
    }
    const [count, rows] = checkShape(input.shape, what);
    if (data.length !== count) {
      throw new ProtocolError(
        'BAD_SHAPE',
        `${what}: shape ${shapeText(input.shape)} needs ${count} elements but data has ${data.length}`,
      );
    }
    if (isF32) checkEncodable(data, codec, what);
    const byteLength = wireBytes(count, rows, codec);
    const dtype: WireDtype = isF32 ? 'f32' : 'i32';
    const shape = [...input.shape];
    planned.push({ name, input, dtype, codec, shape, rows, offset: payloadBytes, byteLength });
    metas.set(name, { dtype, shape });
    payloadBytes = align4(payloadBytes + byteLength);
  });
  checkMessage(spec, type, fields, metas);

  const header: Record<string, unknown> = { type };
  for (const [k, v] of Object.entries(fields)) setOwn(header, k, v);
  header.tensors = planned.map((p) => ({
    name: p.name,
    dtype: p.dtype,
    shape: p.shape,
    codec: p.codec,
    offset: p.offset,
    byteLength: p.byteLength,
  }));
  let json: string;
  try {
    json = JSON.stringify(header);
  } catch (err) {
    throw new ProtocolError('BAD_FIELD', `message "${type}": fields are not JSON-serializable (${String(err)})`);
  }
  const headerBytes = textEncoder.encode(json);
  // trailing spaces are JSON whitespace; they put the payload on a 4-byte boundary
  const headerLength = align4(4 + headerBytes.length) - 4;

  const out = new Uint8Array(4 + headerLength + payloadBytes);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, headerLength, true);
  out.set(headerBytes, 4);
  out.fill(0x20, 4 + headerBytes.length, 4 + headerLength);
  const payloadStart = 4 + headerLength;
  for (const p of planned) writeTensor(dv, payloadStart + p.offset, p);
  return out;
}

/** Rejects what the receiver would reject, and f16/int8 values the codec can't represent. */
function checkEncodable(data: Float32Array, codec: Codec | 'i32', what: string): void {
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (!Number.isFinite(v)) throw new ProtocolError('NOT_FINITE', `${what}: element ${i} is ${v}`);
    if (codec === 'f16' && Math.abs(v) > F16_MAX) {
      // silently sending inf would poison the receiver's step; the caller must pick another codec
      throw new ProtocolError(
        'CODEC_RANGE',
        `${what}: element ${i} = ${v} is outside the f16 range ±${F16_MAX}; use codec f32 or int8`,
      );
    }
  }
}

function writeTensor(dv: DataView, at: number, p: PlannedTensor): void {
  const { data } = p.input;
  switch (p.codec) {
    case 'f32':
      for (let i = 0; i < data.length; i++) dv.setFloat32(at + 4 * i, data[i], true);
      return;
    case 'i32':
      for (let i = 0; i < data.length; i++) dv.setInt32(at + 4 * i, data[i], true);
      return;
    case 'f16':
      for (let i = 0; i < data.length; i++) dv.setUint16(at + 2 * i, f32ToF16Bits(data[i]), true);
      return;
    case 'int8': {
      const rows = p.rows;
      const cols = p.shape[p.shape.length - 1];
      const qStart = at + rows * 4;
      for (let r = 0; r < rows; r++) {
        const base = r * cols;
        let maxAbs = 0;
        for (let c = 0; c < cols; c++) maxAbs = Math.max(maxAbs, Math.abs(data[base + c]));
        // quantize against the float32 scale actually sent, so decode error stays <= scale/2
        const scale = Math.fround(maxAbs / 127);
        if (!Number.isFinite(Math.fround(127 * scale))) {
          throw new ProtocolError(
            'CODEC_RANGE',
            `tensor "${p.name}": row ${r} max |x| = ${maxAbs} would decode past the float32 range; use codec f32`,
          );
        }
        dv.setFloat32(at + r * 4, scale, true);
        for (let c = 0; c < cols; c++) {
          let q = 0;
          if (scale > 0) {
            const x = data[base + c] / scale;
            // round half away from zero, symmetric in sign
            q = x >= 0 ? Math.floor(x + 0.5) : -Math.floor(-x + 0.5);
            q = Math.max(-127, Math.min(127, q));
          }
          dv.setInt8(qStart + base + c, q);
        }
      }
      return;
    }
  }
}

// ---------------------------------------------------------------- decode

const textDecoder = new TextDecoder('utf-8', { fatal: true });

interface WireTensor {
  name: string;
  dtype: WireDtype;
  codec: Codec | 'i32';
  shape: number[];
  count: number;
  rows: number;
  offset: number;
  byteLength: number;
}

/**
 * Parses and fully validates a frame whose message spec `specFor` gives by type (it throws
 * for a type its channel does not carry). Throws ProtocolError only.
 */
export function decodeFrameWith(
  bytes: Uint8Array,
  limits: DecodeLimits | undefined,
  specFor: (type: string) => WireMessageSpec,
): Frame {
  try {
    return decodeUnchecked(bytes, limits, specFor);
  } catch (err) {
    if (err instanceof ProtocolError) throw err;
    // belt and braces: nothing below should throw anything else, but a server must be able
    // to rely on the error type to answer with an error frame instead of crashing
    throw new ProtocolError('BAD_FRAME', `malformed frame: ${err instanceof Error ? err.message : String(err)}`);
  }
}

function decodeUnchecked(
  bytes: Uint8Array,
  limits: DecodeLimits | undefined,
  specFor: (type: string) => WireMessageSpec,
): Frame {
  const maxBytes = limits?.maxBytes ?? DEFAULT_MAX_FRAME_BYTES;
  const maxTensors = limits?.maxTensors ?? DEFAULT_MAX_FRAME_TENSORS;
  if (!(maxBytes >= 0) || !(maxTensors >= 0)) {
    throw new ProtocolError('BAD_FRAME', `decodeFrameWith: invalid limits ${describe(limits)}`);
  }
  if (!(bytes instanceof Uint8Array)) throw new ProtocolError('BAD_FRAME', 'frame is not a Uint8Array');
  if (bytes.length > maxBytes) {
    throw new ProtocolError('FRAME_TOO_LARGE', `frame of ${bytes.length} bytes exceeds the limit of ${maxBytes}`);
  }
  if (bytes.length < 4)
    throw new ProtocolError('BAD_FRAME', `frame of ${bytes.length} bytes is shorter than its length prefix`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = dv.getUint32(0, true);
  if (headerLength > bytes.length - 4) {
    throw new ProtocolError(
      'BAD_FRAME',
      `header length ${headerLength} runs past the end of a ${bytes.length}-byte frame`,
    );
  }
  let header: unknown;
  try {
    header = JSON.parse(textDecoder.decode(bytes.subarray(4, 4 + headerLength)));
  } catch (err) {
    throw new ProtocolError(
      'BAD_FRAME',
      `header is not UTF-8 JSON: ${err instanceof Error ? err.message : String(err)}`,
    );
  }
  if (!isPlainObject(header)) throw new ProtocolError('BAD_FRAME', `header is not a JSON object: ${describe(header)}`);
  const type = own(header, 'type');
  if (typeof type !== 'string' || type.length === 0 || type.length > MAX_STRING_FIELD_LENGTH) {
    throw new ProtocolError('UNKNOWN_TYPE', `unknown message type ${describe(type)}`);
  }
  const spec = specFor(type);
  const table = own(header, 'tensors');
  if (!Array.isArray(table)) throw new ProtocolError('BAD_FRAME', `message "${type}": "tensors" is not an array`);
  if (table.length > maxTensors) {
    throw new ProtocolError(
      'BAD_FRAME',
      `message "${type}": ${table.length} tensors exceed the limit of ${maxTensors}`,
    );
  }

  const fields: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(header)) if (k !== 'type' && k !== 'tensors') setOwn(fields, k, v);

  const payloadStart = 4 + headerLength;
  const payloadLength = bytes.length - payloadStart;
  const wire = new Map<string, WireTensor>();
  table.forEach((entry: unknown, index) => {
    const t = parseTensorEntry(entry, index, payloadLength);
    if (wire.has(t.name)) throw new ProtocolError('BAD_TENSOR', `tensor "${t.name}" appears twice`);
    wire.set(t.name, t);
  });
  checkOverlap([...wire.values()]);
  checkMessage(spec, type, fields, wire);

  const tensors = new Map<string, DecodedTensor>();
  for (const t of wire.values()) {
    tensors.set(t.name, { data: readTensor(dv, payloadStart + t.offset, t), shape: t.shape, codec: t.codec });
  }
  return { type, fields, tensors };
}

function parseTensorEntry(entry: unknown, index: number, payloadLength: number): WireTensor {
  if (!isPlainObject(entry)) throw new ProtocolError('BAD_TENSOR', `tensor #${index}: not an object`);
  const name = own(entry, 'name');
  checkTensorName(name, index);
  const what = `tensor "${name}"`;
  const dtype = own(entry, 'dtype');
  const codec = own(entry, 'codec');
  if (dtype !== 'f32' && dtype !== 'i32')
    throw new ProtocolError('BAD_TENSOR', `${what}: unknown dtype ${describe(dtype)}`);
  if (codec !== 'i32' && !CODECS.includes(codec as Codec)) {
    throw new ProtocolError('BAD_TENSOR', `${what}: unknown codec ${describe(codec)}`);
  }
  if ((dtype === 'i32') !== (codec === 'i32')) {
    throw new ProtocolError('BAD_TENSOR', `${what}: dtype ${dtype} cannot use codec ${String(codec)}`);
  }
  const rawShape = own(entry, 'shape');
  const [count, rows] = checkShape(rawShape, what);
  const shape = [...(rawShape as number[])];
  const offset = own(entry, 'offset');
  const byteLength = own(entry, 'byteLength');
  if (!isNonNegInt(offset) || offset % 4 !== 0) {
    throw new ProtocolError('BAD_TENSOR', `${what}: offset ${describe(offset)} is not a non-negative multiple of 4`);
  }
  const need = wireBytes(count, rows, codec as Codec | 'i32');
  if (byteLength !== need) {
    throw new ProtocolError(
      'BAD_TENSOR',
      `${what}: byteLength ${describe(byteLength)} but ${String(codec)} ${shapeText(shape)} needs ${need}`,
    );
  }
  if (offset > payloadLength || need > payloadLength - offset) {
    throw new ProtocolError(
      'BAD_TENSOR',
      `${what}: bytes [${offset}, ${offset + need}) lie outside the ${payloadLength}-byte payload`,
    );
  }
  return { name, dtype, codec: codec as Codec | 'i32', shape, count, rows, offset, byteLength: need };
}

function checkOverlap(list: WireTensor[]): void {
  // empty tensors occupy no bytes, so they can't collide with anything
  const spans = list.filter((t) => t.byteLength > 0).sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < spans.length; i++) {
    const prev = spans[i - 1];
    const cur = spans[i];
    if (cur.offset < prev.offset + prev.byteLength) {
      throw new ProtocolError(
        'BAD_TENSOR',
        `tensors "${prev.name}" [${prev.offset}, ${prev.offset + prev.byteLength}) and ` +
          `"${cur.name}" [${cur.offset}, ${cur.offset + cur.byteLength}) overlap`,
      );
    }
  }
}

function notFinite(name: string, index: number, v: number, what = 'element'): ProtocolError {
  return new ProtocolError('NOT_FINITE', `tensor "${name}": ${what} ${index} is ${v}`);
}

function readTensor(dv: DataView, at: number, t: WireTensor): Float32Array | Int32Array {
  const n = t.count;
  switch (t.codec) {
    case 'i32': {
      // token ids etc.: range is the caller's business (it knows the vocabulary)
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) out[i] = dv.getInt32(at + 4 * i, true);
      return out;
    }
    case 'f32': {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) {
        const v = dv.getFloat32(at + 4 * i, true);
        if (!Number.isFinite(v)) throw notFinite(t.name, i, v);
        out[i] = v;
      }
      return out;
    }
    case 'f16': {
      const bits = new Uint16Array(n);
      for (let i = 0; i < n; i++) bits[i] = dv.getUint16(at + 2 * i, true);
      const out = f16ToF32(bits);
      for (let i = 0; i < n; i++) if (!Number.isFinite(out[i])) throw notFinite(t.name, i, out[i]);
      return out;
    }
    case 'int8': {
      const rows = t.rows;
      const cols = t.shape[t.shape.length - 1];
      const qStart = at + rows * 4;
      const out = new Float32Array(n);
      for (let r = 0; r < rows; r++) {
        const scale = dv.getFloat32(at + 4 * r, true);
        if (!Number.isFinite(scale)) throw notFinite(t.name, r, scale, 'int8 scale of row');
        if (scale < 0)
          throw new ProtocolError('BAD_TENSOR', `tensor "${t.name}": int8 scale of row ${r} is negative (${scale})`);
        const base = r * cols;
        for (let c = 0; c < cols; c++) {
          const q = dv.getInt8(qStart + base + c);
          if (q === -128)
            throw new ProtocolError(
              'BAD_TENSOR',
              `tensor "${t.name}": int8 element ${base + c} is -128, outside [-127, 127]`,
            );
          out[base + c] = q * scale;
          // q*scale can exceed float32 range when scale is near its top
          if (!Number.isFinite(out[base + c])) throw notFinite(t.name, base + c, out[base + c]);
        }
      }
      return out;
    }
  }
}
