/**
 * The frame codec on its own: layout, codecs, alignment, copies, malformed frames, limits, fuzz.
 * It runs against message specs declared here, not the protocol's registry (messages.test.ts
 * covers that), so a change of a message leaves these tests alone.
 */
import { f16ToF32, Rng } from '@splitllm/model';
import { describe, expect, it } from 'vitest';
import {
  CODECS,
  DEFAULT_MAX_FRAME_BYTES,
  type DecodeLimits,
  decodeFrameWith,
  encodeFrameWith,
  expectShape,
  type Frame,
  f32ToF16Bits,
  ProtocolError,
  type TensorInput,
  tensorWireBytes,
  type WireMessageSpec,
  type WireTensor,
} from '../src/index';
import { expectCode, f32Bytes, forwardHeader, H, PAYLOAD12, rawBytes, rawFrame, randn, TARGETS } from './helpers';

// ---------------------------------------------------------------- specs and helpers

const F32_RANK3 = { dtype: 'f32', rank: 3 } as const;

/** The specs these tests encode and decode with, by type. */
const SPECS: Record<string, WireMessageSpec> = {
  forward: { fields: { round: 'int', step: 'int' }, tensors: { h: F32_RANK3, targets: { dtype: 'i32', rank: 2 } } },
  backward: { fields: { round: 'int', step: 'int', loss: 'number', count: 'int' }, tensors: { dh: F32_RANK3 } },
  adapter: { fields: { round: 'int', tokens: 'int', steps: 'int' }, anyTensors: 'f32' },
  hello: { fields: { userId: 'string', token: 'string' } },
  'edge-status': { fields: { waiting: 'int' } },
  /** a field named like an Object.prototype member */
  proto: { fields: { toString: 'int' as const } },
};

function encode(
  type: string,
  fields: Record<string, unknown>,
  tensors?: Record<string, TensorInput> | Map<string, TensorInput>,
): Uint8Array {
  return encodeFrameWith(SPECS[type], type, fields, tensors);
}

function decode(bytes: Uint8Array, limits?: DecodeLimits): Frame {
  return decodeFrameWith(bytes, limits, (type) => {
    // hasOwn, not `in`: "toString" or "__proto__" must not pass as a type
    if (!Object.hasOwn(SPECS, type)) throw new ProtocolError('UNKNOWN_TYPE', `unknown message type "${type}"`);
    return SPECS[type];
  });
}

/** The f32 tensor `name` of a decoded frame, whose shape must match `shape`. */
function f32Of(frame: Frame, name: string, shape: readonly (number | null)[]): Float32Array {
  const t = frame.tensors.get(name);
  expect(t, `tensor "${name}"`).toBeDefined();
  expect(t!.data).toBeInstanceOf(Float32Array);
  return expectShape(t as WireTensor<Float32Array>, name, shape);
}

function validForward(rng: Rng, codec: 'f32' | 'f16' | 'int8' = 'f32'): Uint8Array {
  return encode(
    'forward',
    { round: 3, step: 1, session: 'abc' },
    {
      h: { data: randn(rng, 2 * 3 * 4), shape: [2, 3, 4], codec },
      targets: { data: new Int32Array([1, 2, 3, 4, 5, 50256]), shape: [2, 3] },
    },
  );
}

// ---------------------------------------------------------------- round trips

describe('frame round trips', () => {
  it('f32 is exact, and extra header fields survive', () => {
    const rng = new Rng(1);
    const data = randn(rng, 2 * 3 * 5);
    data[0] = -0;
    data[1] = 3.4028234663852886e38; // float32 max
    data[2] = 1e-45; // float32 min subnormal
    const frame = decode(
      encode(
        'backward',
        { round: 2, step: 7, loss: 3.25, count: 6, extra: { a: [1, 'x'] } },
        { dh: { data, shape: [2, 3, 5] } },
      ),
    );
    expect(frame.type).toBe('backward');
    expect(frame.fields).toEqual({ round: 2, step: 7, loss: 3.25, count: 6, extra: { a: [1, 'x'] } });
    const dh = frame.tensors.get('dh')!;
    expect(dh.codec).toBe('f32');
    expect(dh.shape).toEqual([2, 3, 5]);
    expect(dh.data).toBeInstanceOf(Float32Array);
    expect(Array.from(dh.data)).toEqual(Array.from(data)); // exact: raw bits go over the wire
    expect(Object.is(dh.data[0], -0)).toBe(true);
  });

  it('i32 is exact (full int32 range; Int32Array ignores the requested codec)', () => {
    const ids = new Int32Array([0, 1, 50256, -1, 2147483647, -2147483648]);
    const h = new Float32Array(6);
    const bytes = encode(
      'forward',
      { round: 0, step: 0 },
      new Map<string, TensorInput>([
        ['h', { data: h, shape: [2, 3, 1] }],
        ['targets', { data: ids, shape: [2, 3], codec: 'f16' }],
      ]),
    );
    const frame = decode(bytes);
    const t = frame.tensors.get('targets')!;
    expect(t.codec).toBe('i32');
    expect(t.data).toBeInstanceOf(Int32Array);
    expect(Array.from(t.data)).toEqual(Array.from(ids));
    expect([...frame.tensors.keys()]).toEqual(['h', 'targets']); // header order kept
  });

  it('f16: relative error <= 2^-11 for normal values (10 mantissa bits, round to nearest)', () => {
    const rng = new Rng(2);
    const n = 4000;
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      // log-uniform over the whole normal half range [2^-14, 65504]
      const mag = Math.min(65504, 2 ** (-14 + rng.uniform() * 30));
      data[i] = rng.uniform() < 0.5 ? -mag : mag;
    }
    const frame = decode(
      encode('adapter', { round: 0, tokens: 1, steps: 1 }, { x: { data, shape: [n], codec: 'f16' } }),
    );
    const out = f32Of(frame, 'x', [n]);
    for (let i = 0; i < n; i++) {
      expect(Math.abs(out[i] - data[i]) / Math.abs(data[i])).toBeLessThanOrEqual(2 ** -11);
    }
  });

  it('f16 rounds ties to even, handles subnormals, signed zero and the largest finite half', () => {
    const cases: [number, number][] = [
      [1 + 2 ** -11, 1], // tie between 1 (even mantissa) and 1+2^-10: stays at 1
      [1 + 3 * 2 ** -11, 1 + 2 ** -9], // tie between 1+2^-10 (odd) and 1+2^-9 (even)
      [1 + 2 ** -11 + 2 ** -20, 1 + 2 ** -10], // just above the tie rounds up
      [2 ** -24, 2 ** -24], // smallest subnormal, exact
      [5 * 2 ** -24, 5 * 2 ** -24], // subnormal, exact
      [2 ** -25, 0], // tie between 0 (even) and 2^-24
      [3 * 2 ** -25, 2 ** -23], // tie between 1*2^-24 (odd) and 2*2^-24 (even)
      [2 ** -26, 0], // underflow
      [1023.5 * 2 ** -24, 2 ** -14], // tie at the top subnormal carries into the smallest normal
      [65504, 65504],
      [-65504, -65504],
      [2047.5, 2048], // tie between 2047 (odd) and 2048 (even) at exponent change
    ];
    const data = Float32Array.from(cases.map((c) => c[0]));
    for (let i = 0; i < cases.length; i++) expect(data[i], `case ${i}`).toBe(cases[i][0]); // representable
    const frame = decode(
      encode('adapter', { round: 0, tokens: 1, steps: 1 }, { x: { data, shape: [data.length], codec: 'f16' } }),
    );
    const out = f32Of(frame, 'x', [null]);
    for (const [i, [x, want]] of cases.entries()) expect(out[i], `case ${i}: ${x}`).toBe(want);
    expect(f32ToF16Bits(-0)).toBe(0x8000);
    expect(f32ToF16Bits(2 ** -24)).toBe(0x0001);
    expect(f32ToF16Bits(65504)).toBe(0x7bff);
    // every finite half survives half -> f32 -> half exactly
    const all = new Uint16Array(65536).map((_, i) => i);
    const back = f16ToF32(all);
    const mismatched: number[] = [];
    for (let h = 0; h < 65536; h++) {
      if ((h & 0x7c00) !== 0x7c00 && f32ToF16Bits(back[h]) !== h) mismatched.push(h);
    }
    expect(mismatched).toEqual([]);
  });

  it('int8: absolute error <= scale/2 = row maxabs/254; all-zero rows decode to zeros', () => {
    const rng = new Rng(3);
    const shape = [2, 5, 33];
    const rows = 10;
    const cols = 33;
    const data = new Float32Array(rows * cols);
    for (let r = 0; r < rows; r++) {
      const mag = 10 ** (rng.uniform() * 8 - 4); // rows of very different magnitude
      for (let c = 0; c < cols; c++) data[r * cols + c] = rng.normal() * mag;
    }
    data.fill(0, 3 * cols, 4 * cols); // all-zero row
    data[7 * cols + 4] = -1e3; // a dominant negative outlier
    const frame = decode(encode('adapter', { round: 1, tokens: 9, steps: 1 }, { w: { data, shape, codec: 'int8' } }));
    const t = frame.tensors.get('w')!;
    expect(t.codec).toBe('int8');
    expect(t.shape).toEqual(shape);
    for (let r = 0; r < rows; r++) {
      let maxAbs = 0;
      for (let c = 0; c < cols; c++) maxAbs = Math.max(maxAbs, Math.abs(data[r * cols + c]));
      const scale = maxAbs / 127;
      for (let c = 0; c < cols; c++) {
        const i = r * cols + c;
        // scale/2 from rounding q, plus float32 rounding of the stored scale and of q*scale
        expect(Math.abs(t.data[i] - data[i])).toBeLessThanOrEqual(scale / 2 + 2 ** -22 * maxAbs);
      }
    }
    for (let c = 0; c < cols; c++) expect(t.data[3 * cols + c]).toBe(0);
    expect(t.data[7 * cols + 4]).toBeCloseTo(-1e3, 3); // the max element is hit exactly (q = -127)
  });

  it('empty tensors and tensorless messages', () => {
    const frame = decode(
      encode(
        'adapter',
        { round: 0, tokens: 0, steps: 0 },
        {
          a: { data: new Float32Array(0), shape: [0, 4], codec: 'int8' },
          b: { data: new Float32Array(0), shape: [3, 0], codec: 'int8' },
        },
      ),
    );
    expect(frame.tensors.get('a')!.data.length).toBe(0);
    expect(frame.tensors.get('b')!.shape).toEqual([3, 0]);
    const hello = decode(encode('hello', { userId: 'u', token: 't' }));
    expect(hello.tensors.size).toBe(0);
  });

  it('lays out 4-aligned offsets, exact byteLengths and an aligned payload', () => {
    const bytes = encode(
      'adapter',
      { round: 0, tokens: 1, steps: 1 },
      {
        a: { data: new Float32Array(3), shape: [3], codec: 'f16' }, // 6 bytes
        b: { data: new Float32Array(5), shape: [5], codec: 'int8' }, // 4 + 5 bytes
        c: { data: new Float32Array(2), shape: [2] },
      },
    );
    const headerLength = new DataView(bytes.buffer).getUint32(0, true);
    expect((4 + headerLength) % 4).toBe(0);
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + headerLength)));
    expect(header.tensors.map((t: { offset: number; byteLength: number }) => [t.offset, t.byteLength])).toEqual([
      [0, 6],
      [8, 9],
      [20, 8],
    ]);
    expect(bytes.length).toBe(4 + headerLength + 28);
  });

  it('decoded data is a copy: reusing the input buffer does not change it', () => {
    const bytes = validForward(new Rng(4));
    const frame = decode(bytes);
    const before = Array.from(frame.tensors.get('h')!.data);
    const targets = Array.from(frame.tensors.get('targets')!.data);
    bytes.fill(0xff);
    expect(Array.from(frame.tensors.get('h')!.data)).toEqual(before);
    expect(Array.from(frame.tensors.get('targets')!.data)).toEqual(targets);
  });

  it('decodes from a view at an odd offset of a larger buffer (e.g. a Node Buffer slice)', () => {
    const bytes = validForward(new Rng(5));
    const big = new Uint8Array(bytes.length + 3);
    big.set(bytes, 1);
    const frame = decode(big.subarray(1, 1 + bytes.length));
    expect(Array.from(frame.tensors.get('h')!.data)).toEqual(Array.from(decode(bytes).tensors.get('h')!.data));
    const buf = Buffer.from(bytes);
    expect(decode(buf).tensors.get('targets')!.data[5]).toBe(50256);
  });
});

// ---------------------------------------------------------------- the spec check

describe('frame spec check', () => {
  it('fields are own properties: a "__proto__" key stays a plain field, prototype members are absent', () => {
    const proto = decode(rawFrame('{"type":"edge-status","waiting":1,"__proto__":{"polluted":1},"tensors":[]}'));
    expect(Object.getPrototypeOf(proto.fields)).toBe(Object.prototype);
    expect(Object.keys(proto.fields)).toEqual(['waiting', '__proto__']);
    // a spec field named like an Object.prototype member is missing unless the header has it
    expectCode(() => decode(rawFrame({ type: 'proto', tensors: [] })), 'BAD_FIELD', '"toString"', 'undefined');
    expect(decode(rawFrame({ type: 'proto', toString: 3, tensors: [] })).fields.toString).toBe(3);
  });

  it('the encoder refuses reserved and non-JSON fields', () => {
    expectCode(() => encode('hello', { userId: 'u', token: 't', tensors: 1 }), 'BAD_FIELD', 'reserved');
    expectCode(() => encode('hello', { userId: 'u', token: 't', type: 'x' }), 'BAD_FIELD', 'reserved');
    expectCode(() => encode('hello', { userId: 'u', token: 't', big: 1n }), 'BAD_FIELD', 'JSON');
  });

  it('the type is looked up through specFor; anything but a ProtocolError from it is BAD_FRAME', () => {
    const bytes = encode('hello', { userId: 'u', token: 't' });
    const seen: string[] = [];
    decodeFrameWith(bytes, undefined, (type) => {
      seen.push(type);
      return SPECS.hello;
    });
    expect(seen).toEqual(['hello']);
    const broken = () => {
      throw new TypeError('boom');
    };
    expectCode(() => decodeFrameWith(bytes, undefined, broken), 'BAD_FRAME', 'boom');
  });
});

// ---------------------------------------------------------------- malformed input

describe('frame rejects malformed input', () => {
  it('frame level: size, truncation, header length, UTF-8, JSON, object, tensors array', () => {
    const good = validForward(new Rng(8));
    expectCode(() => decode(good, { maxBytes: good.length - 1 }), 'FRAME_TOO_LARGE', `${good.length}`);
    expect(() => decode(good, { maxBytes: good.length })).not.toThrow();
    // checked before parsing: garbage that is too big is still FRAME_TOO_LARGE
    expectCode(() => decode(new Uint8Array(DEFAULT_MAX_FRAME_BYTES + 1)), 'FRAME_TOO_LARGE');
    expectCode(() => decode(new Uint8Array([1, 0])), 'BAD_FRAME', 'shorter');
    expectCode(() => decode(new Uint8Array(0)), 'BAD_FRAME');
    expectCode(() => decode(good.subarray(0, 30)), 'BAD_FRAME', 'past the end');
    expectCode(() => decode(good.subarray(0, good.length - 1)), 'BAD_TENSOR', 'outside'); // payload cut
    const huge = good.slice();
    new DataView(huge.buffer).setUint32(0, 0xffffffff, true);
    expectCode(() => decode(huge), 'BAD_FRAME', '4294967295');
    expectCode(() => decode(rawFrame('{"type":"hello",')), 'BAD_FRAME', 'JSON');
    expectCode(() => decode(rawBytes(new Uint8Array([0x22, 0xff, 0xfe, 0x22]))), 'BAD_FRAME', 'UTF-8');
    expectCode(() => decode(rawFrame('[1,2]')), 'BAD_FRAME', 'object');
    expectCode(() => decode(rawFrame('null')), 'BAD_FRAME', 'object');
    expectCode(() => decode(rawFrame({ type: 'hello', userId: 'u', token: 't' })), 'BAD_FRAME', 'tensors');
    expectCode(() => decode(rawFrame({ type: 'hello', userId: 'u', token: 't', tensors: {} })), 'BAD_FRAME', 'tensors');
    const many = Array.from({ length: 3 }, (_, i) => ({
      name: `t${i}`,
      dtype: 'f32',
      shape: [0],
      codec: 'f32',
      offset: 0,
      byteLength: 0,
    }));
    const adapter = rawFrame({ type: 'adapter', round: 0, tokens: 0, steps: 0, tensors: many });
    expectCode(() => decode(adapter, { maxBytes: 1e6, maxTensors: 2 }), 'BAD_FRAME', 'limit of 2');
  });

  it('unknown type', () => {
    expectCode(() => decode(rawFrame({ type: 'pwn', tensors: [] })), 'UNKNOWN_TYPE', '"pwn"');
    expectCode(() => decode(rawFrame({ type: 'toString', tensors: [] })), 'UNKNOWN_TYPE');
    // no type, or one that is not a short string, is refused by the frame itself
    expectCode(() => decode(rawFrame({ tensors: [] })), 'UNKNOWN_TYPE');
    expectCode(() => decode(rawFrame({ type: 7, tensors: [] })), 'UNKNOWN_TYPE');
    expectCode(() => decode(rawFrame({ type: '', tensors: [] })), 'UNKNOWN_TYPE');
    expectCode(() => decode(rawFrame({ type: 't'.repeat(257), tensors: [] })), 'UNKNOWN_TYPE');
  });

  it('tensor table: overlap, bounds, alignment, byteLength, dtype/codec, names, shapes', () => {
    const dec =
      (tensors: unknown[], payload = PAYLOAD12) =>
      () =>
        decode(rawFrame(forwardHeader(tensors), payload));
    expectCode(dec([H, { ...TARGETS, offset: 4 }]), 'BAD_TENSOR', 'overlap');
    expectCode(dec([H, { ...TARGETS, offset: 12 }]), 'BAD_TENSOR', 'outside', '"targets"');
    expectCode(dec([H, { ...TARGETS, offset: 2 ** 40 }]), 'BAD_TENSOR', 'outside');
    expectCode(dec([{ ...H, offset: 2 }, TARGETS]), 'BAD_TENSOR', 'multiple of 4');
    expectCode(dec([{ ...H, offset: -4 }, TARGETS]), 'BAD_TENSOR', 'offset');
    expectCode(dec([{ ...H, offset: '0' }, TARGETS]), 'BAD_TENSOR', 'offset');
    expectCode(dec([{ ...H, byteLength: 12 }, TARGETS]), 'BAD_TENSOR', 'byteLength 12', 'needs 8');
    expectCode(dec([{ ...H, byteLength: 4 }, TARGETS]), 'BAD_TENSOR', 'needs 8');
    expectCode(dec([{ ...H, codec: 'i32' }, TARGETS]), 'BAD_TENSOR', 'codec');
    expectCode(dec([H, { ...TARGETS, codec: 'f32' }]), 'BAD_TENSOR', 'codec');
    expectCode(dec([{ ...H, codec: 'bf16' }, TARGETS]), 'BAD_TENSOR', 'bf16');
    expectCode(dec([{ ...H, dtype: 'f64' }, TARGETS]), 'BAD_TENSOR', 'f64');
    expectCode(dec([H, { ...TARGETS, name: 'h' }]), 'BAD_TENSOR', 'twice');
    expectCode(dec([{ ...H, name: '' }, TARGETS]), 'BAD_TENSOR', 'name');
    expectCode(dec([{ ...H, name: 'n'.repeat(201) }, TARGETS]), 'BAD_TENSOR', 'name');
    expectCode(dec([7, TARGETS]), 'BAD_TENSOR', 'not an object');
    expectCode(dec([{ ...H, shape: [1, 1, 1, 1, 2] }, TARGETS]), 'BAD_TENSOR', 'rank');
    expectCode(dec([{ ...H, shape: [] }, TARGETS]), 'BAD_TENSOR', 'rank');
    expectCode(dec([{ ...H, shape: [1, -1, 2] }, TARGETS]), 'BAD_TENSOR', 'dimension 1');
    expectCode(dec([{ ...H, shape: [1, 1.5, 2] }, TARGETS]), 'BAD_TENSOR', 'dimension 1');
    expectCode(dec([{ ...H, shape: '1,1,2' }, TARGETS]), 'BAD_TENSOR', 'shape');
    expectCode(dec([{ ...H, shape: [2 ** 14, 2 ** 14, 2], byteLength: 2 ** 31 }, TARGETS]), 'BAD_TENSOR', 'limit');
    // a zero last dimension must not let an unbounded int8 row count through
    const z = { name: 'z', dtype: 'f32', shape: [2 ** 20, 2 ** 20, 0], codec: 'int8', offset: 0, byteLength: 2 ** 42 };
    expectCode(dec([H, TARGETS, z]), 'BAD_TENSOR', 'limit');
    // empty tensors may sit anywhere in bounds without overlapping
    const e = { name: 'e', dtype: 'f32', shape: [0], codec: 'f32', offset: 4, byteLength: 0 };
    expect(() => dec([H, TARGETS, e])()).not.toThrow();
  });

  it('non-finite values name the tensor and the first bad index', () => {
    const dec = (h: unknown, payload: Uint8Array) => () =>
      decode(rawFrame(forwardHeader([h, { ...TARGETS, offset: 8 }]), payload));
    const withTargets = (head: Uint8Array) => new Uint8Array([...head, 7, 0, 0, 0]);
    expectCode(dec(H, withTargets(f32Bytes([1, NaN]))), 'NOT_FINITE', '"h"', 'element 1', 'NaN');
    expectCode(dec(H, withTargets(f32Bytes([-Infinity, 1]))), 'NOT_FINITE', 'element 0', '-Infinity');
    const f16H = { ...H, codec: 'f16', byteLength: 4 };
    // 0x3c00 = 1.0, 0x7e00 = NaN
    const f16NaN = withTargets(new Uint8Array([0x00, 0x3c, 0x00, 0x7e, 0, 0, 0, 0]));
    expectCode(dec(f16H, f16NaN), 'NOT_FINITE', '"h"', 'element 1');
    const f16Inf = withTargets(new Uint8Array([0x00, 0x7c, 0x00, 0x3c, 0, 0, 0, 0]));
    expectCode(dec(f16H, f16Inf), 'NOT_FINITE', 'element 0', 'Infinity');
    // int8 [1,1,2]: one row -> 4-byte scale + 2 bytes
    const int8H = { ...H, codec: 'int8', byteLength: 6 };
    const int8 = (scale: number, q: number[]) => withTargets(new Uint8Array([...f32Bytes([scale]), ...q, 0, 0]));
    const ok = decode(rawFrame(forwardHeader([int8H, TARGETS]), int8(0.5, [2, 0xfe])));
    expect(f32Of(ok, 'h', [1, 1, 2])).toEqual(new Float32Array([1, -1]));
    expectCode(dec(int8H, int8(Infinity, [1, 1])), 'NOT_FINITE', '"h"', 'scale of row 0');
    expectCode(dec(int8H, int8(NaN, [1, 1])), 'NOT_FINITE', 'scale');
    expectCode(dec(int8H, int8(-1, [1, 1])), 'BAD_TENSOR', 'negative');
    expectCode(dec(int8H, int8(1, [0x80, 1])), 'BAD_TENSOR', '-128');
    expectCode(dec(int8H, int8(3e38, [127, 1])), 'NOT_FINITE', 'element 0'); // q*scale overflows float32
  });

  it('the encoder refuses what it cannot send faithfully', () => {
    const adapter = (t: TensorInput) => () => encode('adapter', { round: 0, tokens: 0, steps: 0 }, { w: t });
    expectCode(
      adapter({ data: new Float32Array([1, 70000]), shape: [2], codec: 'f16' }),
      'CODEC_RANGE',
      '"w"',
      '70000',
    );
    expectCode(adapter({ data: new Float32Array([-65505]), shape: [1], codec: 'f16' }), 'CODEC_RANGE', '-65505');
    expect(() => adapter({ data: new Float32Array([70000]), shape: [1], codec: 'int8' })()).not.toThrow();
    // float32 max: 127 * fround(max/127) rounds past the float32 range, so it can't round-trip
    const f32Max = new Float32Array([3.4028234663852886e38]);
    expectCode(adapter({ data: f32Max, shape: [1], codec: 'int8' }), 'CODEC_RANGE', '"w"');
    expectCode(adapter({ data: new Float32Array([0, NaN]), shape: [2] }), 'NOT_FINITE', '"w"', 'element 1');
    expectCode(adapter({ data: new Float32Array([Infinity]), shape: [1], codec: 'int8' }), 'NOT_FINITE');
    expectCode(adapter({ data: new Float32Array(5), shape: [2, 3] }), 'BAD_SHAPE', 'needs 6', 'has 5');
    expectCode(adapter({ data: new Float32Array(1), shape: [1], codec: 'bf16' as 'f16' }), 'BAD_TENSOR', 'bf16');
    const f64 = new Float64Array(1) as unknown as Float32Array;
    expectCode(adapter({ data: f64, shape: [1] }), 'BAD_TENSOR', 'Float32Array');
    expectCode(adapter({ data: new Float32Array(1), shape: [1, 1, 1, 1, 1] }), 'BAD_TENSOR', 'rank');
    const unnamed = { '': { data: new Float32Array(1), shape: [1] } };
    expectCode(() => encode('adapter', { round: 0, tokens: 0, steps: 0 }, unnamed), 'BAD_TENSOR', 'name');
  });
});

// ---------------------------------------------------------------- fuzz and sizes

describe('frame robustness', () => {
  it('2000 random mutations and truncations decode or throw ProtocolError, nothing else', () => {
    const rng = new Rng(9);
    const seeds = [validForward(rng, 'f32'), validForward(rng, 'f16'), validForward(rng, 'int8')];
    const codes = new Map<string, number>();
    for (let iter = 0; iter < 2000; iter++) {
      const base = seeds[iter % seeds.length];
      let bytes = base.slice();
      const mode = rng.int(4);
      if (mode === 0) {
        bytes = bytes.slice(0, rng.int(bytes.length + 1)); // truncation
      } else {
        const flips = 1 + rng.int(4);
        for (let k = 0; k < flips; k++) {
          // mode 1: anywhere; mode 2: length prefix and header; mode 3: payload
          const headerEnd = 4 + new DataView(base.buffer).getUint32(0, true);
          const lo = mode === 3 ? headerEnd : 0;
          const hi = mode === 2 ? headerEnd : bytes.length;
          const at = lo + rng.int(hi - lo);
          bytes[at] = rng.uniform() < 0.5 ? rng.int(256) : bytes[at] ^ (1 << rng.int(8));
        }
      }
      try {
        const frame = decode(bytes);
        codes.set('ok', (codes.get('ok') ?? 0) + 1);
        for (const t of frame.tensors.values()) {
          if (t.data instanceof Float32Array) for (const v of t.data) expect(Number.isFinite(v)).toBe(true);
        }
      } catch (err) {
        if (!(err instanceof ProtocolError)) throw new Error(`iteration ${iter}: non-protocol error ${String(err)}`);
        codes.set(String(err.code), (codes.get(String(err.code)) ?? 0) + 1);
      }
    }
    // the mutations reach past the framing into the tensor table and the values
    expect(codes.get('ok')).toBeGreaterThan(0);
    expect(codes.get('BAD_FRAME')).toBeGreaterThan(0);
    expect(codes.get('BAD_TENSOR')).toBeGreaterThan(0);
  });

  it('decodeFrameWith rejects non-Uint8Array input and invalid limits with ProtocolError', () => {
    expectCode(() => decode(new ArrayBuffer(8) as unknown as Uint8Array), 'BAD_FRAME');
    expectCode(() => decode(new Uint8Array(8), { maxBytes: NaN }), 'BAD_FRAME', 'limits');
  });

  it('tensorWireBytes for each codec', () => {
    expect(CODECS).toEqual(['f32', 'f16', 'int8']);
    expect(tensorWireBytes([2, 3, 768], 'f32')).toBe(2 * 3 * 768 * 4);
    expect(tensorWireBytes([2, 3, 768], 'f16')).toBe(2 * 3 * 768 * 2);
    expect(tensorWireBytes([2, 3, 768], 'int8')).toBe(6 * 4 + 6 * 768); // 6 row scales + 1 byte/element
    expect(tensorWireBytes([768], 'int8')).toBe(4 + 768);
    expect(tensorWireBytes([2, 3], 'i32')).toBe(24);
    expect(tensorWireBytes([4, 0], 'int8')).toBe(16);
    expectCode(() => tensorWireBytes([2, -1], 'f32'), 'BAD_TENSOR');
    expectCode(() => tensorWireBytes([2], 'f64' as 'f32'), 'BAD_TENSOR');
    // matches what encodeFrameWith actually writes
    const bytes = encode(
      'backward',
      { round: 0, step: 0, loss: 1, count: 1 },
      { dh: { data: new Float32Array(2 * 3 * 7), shape: [2, 3, 7], codec: 'int8' } },
    );
    const headerLength = new DataView(bytes.buffer).getUint32(0, true);
    expect(bytes.length - 4 - headerLength).toBe(tensorWireBytes([2, 3, 7], 'int8') + 2); // + padding to 4
  });
});
