import { describe, expect, it } from 'vitest';
import { type Frame, type ProtocolErrorCode, type TensorInput, CODECS, DEFAULT_MAX_FRAME_BYTES, MESSAGE_TYPES, ProtocolError, decodeFrame, encodeErrorFrame, encodeFrame, expectFrameRoundStep, f32Tensor, f32ToF16Bits, i32Tensor, intField, numberField, stringField, tensorWireBytes } from '../src/index';
import { f16ToF32, Rng } from '@splitllm/model';

// ---------------------------------------------------------------- helpers

/** Runs fn and returns the ProtocolError it throws (fails if it throws anything else). */
function protocolError(fn: () => unknown): ProtocolError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ProtocolError);
    return err as ProtocolError;
  }
  throw new Error('expected a ProtocolError, nothing was thrown');
}

function expectCode(fn: () => unknown, code: ProtocolErrorCode, ...fragments: string[]): ProtocolError {
  const err = protocolError(fn);
  expect(err.code, err.message).toBe(code);
  expect(err.name).toBe('ProtocolError');
  for (const f of fragments) expect(err.message).toContain(f);
  return err;
}

/** A frame assembled by hand, for inputs the encoder would refuse to produce. */
function rawFrame(header: unknown, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const json = typeof header === 'string' ? header : JSON.stringify(header);
  return rawBytes(new TextEncoder().encode(json), payload);
}

function rawBytes(headerBytes: Uint8Array, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(4 + headerBytes.length + payload.length);
  new DataView(out.buffer).setUint32(0, headerBytes.length, true);
  out.set(headerBytes, 4);
  out.set(payload, 4 + headerBytes.length);
  return out;
}

function f32Bytes(values: number[]): Uint8Array {
  const out = new Uint8Array(values.length * 4);
  const dv = new DataView(out.buffer);
  values.forEach((v, i) => dv.setFloat32(4 * i, v, true));
  return out;
}

function randn(rng: Rng, n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.normal() * scale;
  return out;
}

/** A forward frame header with one f32 tensor h [1,1,2] at `offset`, for tensor-table tests. */
function forwardHeader(tensors: unknown[]): Record<string, unknown> {
  return { type: 'forward', round: 1, step: 0, tensors };
}

const TARGETS = { name: 'targets', dtype: 'i32', shape: [1, 1], codec: 'i32', offset: 8, byteLength: 4 };
const H = { name: 'h', dtype: 'f32', shape: [1, 1, 2], codec: 'f32', offset: 0, byteLength: 8 };
const PAYLOAD12 = new Uint8Array([...f32Bytes([1, 2]), 7, 0, 0, 0]);

function validForward(rng: Rng, codec: 'f32' | 'f16' | 'int8' = 'f32'): Uint8Array {
  return encodeFrame(
    'forward',
    { round: 3, step: 1, session: 'abc' },
    {
      h: { data: randn(rng, 2 * 3 * 4), shape: [2, 3, 4], codec },
      targets: { data: new Int32Array([1, 2, 3, 4, 5, 50256]), shape: [2, 3] },
    },
  );
}

// ---------------------------------------------------------------- round trips

describe('protocol round trips', () => {
  it('f32 is exact, and extra header fields survive', () => {
    const rng = new Rng(1);
    const data = randn(rng, 2 * 3 * 5);
    data[0] = -0;
    data[1] = 3.4028234663852886e38; // float32 max
    data[2] = 1e-45; // float32 min subnormal
    const frame = decodeFrame(
      encodeFrame('backward', { round: 2, step: 7, loss: 3.25, count: 6, extra: { a: [1, 'x'] } }, {
        dh: { data, shape: [2, 3, 5] },
      }),
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
    const bytes = encodeFrame('forward', { round: 0, step: 0 }, new Map<string, TensorInput>([
      ['h', { data: h, shape: [2, 3, 1] }],
      ['targets', { data: ids, shape: [2, 3], codec: 'f16' }],
    ]));
    const frame = decodeFrame(bytes);
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
    const out = f32Tensor(decodeFrame(encodeFrame('adapter', { round: 0, tokens: 1, steps: 1 }, {
      x: { data, shape: [n], codec: 'f16' },
    })), 'x', [n]);
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
    const out = f32Tensor(decodeFrame(encodeFrame('adapter', { round: 0, tokens: 1, steps: 1 }, {
      x: { data, shape: [data.length], codec: 'f16' },
    })), 'x', [null]);
    cases.forEach(([, want], i) => expect(out[i], `case ${i}: ${cases[i][0]}`).toBe(want));
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
    const t = decodeFrame(encodeFrame('update', { round: 1, edgeId: 'e1', tokens: 9, users: ['u1'], userBytes: 0 }, {
      w: { data, shape, codec: 'int8' },
    })).tensors.get('w')!;
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
    const frame = decodeFrame(encodeFrame('adapter', { round: 0, tokens: 0, steps: 0 }, {
      a: { data: new Float32Array(0), shape: [0, 4], codec: 'int8' },
      b: { data: new Float32Array(0), shape: [3, 0], codec: 'int8' },
    }));
    expect(frame.tensors.get('a')!.data.length).toBe(0);
    expect(frame.tensors.get('b')!.shape).toEqual([3, 0]);
    const hello = decodeFrame(encodeFrame('hello', { userId: 'u', token: 't' }));
    expect(hello.tensors.size).toBe(0);
  });

  it('lays out 4-aligned offsets, exact byteLengths and an aligned payload', () => {
    const bytes = encodeFrame('adapter', { round: 0, tokens: 1, steps: 1 }, {
      a: { data: new Float32Array(3), shape: [3], codec: 'f16' }, // 6 bytes
      b: { data: new Float32Array(5), shape: [5], codec: 'int8' }, // 4 + 5 bytes
      c: { data: new Float32Array(2), shape: [2] },
    });
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
    const frame = decodeFrame(bytes);
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
    const frame = decodeFrame(big.subarray(1, 1 + bytes.length));
    expect(Array.from(frame.tensors.get('h')!.data)).toEqual(Array.from(decodeFrame(bytes).tensors.get('h')!.data));
    const buf = Buffer.from(bytes);
    expect(decodeFrame(buf).tensors.get('targets')!.data[5]).toBe(50256);
  });

  it('error frames: code and message, repaired rather than throwing', () => {
    const f = decodeFrame(encodeErrorFrame('BAD_SHAPE', 'tensor "h" has shape [1], expected [2]'));
    expect(f.type).toBe('error');
    expect(f.fields).toEqual({ code: 'BAD_SHAPE', message: 'tensor "h" has shape [1], expected [2]' });
    const long = decodeFrame(encodeErrorFrame('X'.repeat(300), 'm'.repeat(5000)));
    expect(stringField(long, 'code')).toHaveLength(256);
    expect(stringField(long, 'message', 2000)).toHaveLength(2000);
    expect(decodeFrame(encodeErrorFrame('', '')).fields).toEqual({ code: 'ERROR', message: 'ERROR' });
  });

  it('every registered type round-trips with its required content', () => {
    const rng = new Rng(6);
    const sample: Record<string, unknown> = {
      int: 4,
      number: -1.5,
      string: 'abc',
      text: 'x'.repeat(1500),
      bool: false,
      json: { users: ['a', 'b'] },
    };
    for (const [type, spec] of Object.entries(MESSAGE_TYPES) as [keyof typeof MESSAGE_TYPES, (typeof MESSAGE_TYPES)[keyof typeof MESSAGE_TYPES]][]) {
      const fields: Record<string, unknown> = {};
      for (const [name, kind] of Object.entries(spec.fields)) fields[name] = sample[kind];
      const tensors: Record<string, TensorInput> = {};
      if ('tensors' in spec) {
        for (const [name, t] of Object.entries(spec.tensors)) {
          const shape = Array.from({ length: t.rank }, () => 2);
          tensors[name] = t.dtype === 'i32' ? { data: new Int32Array(2 ** t.rank), shape } : { data: randn(rng, 2 ** t.rank), shape };
        }
      }
      if ('anyTensors' in spec) tensors['h.0.attn.c_attn.lora_A'] = { data: randn(rng, 6), shape: [3, 2], codec: 'f16' };
      const frame = decodeFrame(encodeFrame(type, fields, tensors));
      expect(frame.type).toBe(type);
      expect(frame.fields).toEqual(fields);
      expect([...frame.tensors.keys()]).toEqual(Object.keys(tensors));
    }
  });
});

// ---------------------------------------------------------------- accessors

describe('protocol accessors', () => {
  const frame: Frame = decodeFrame(validForward(new Rng(7)));

  it('tensor accessors check dtype and shape, null matching any size', () => {
    expect(f32Tensor(frame, 'h', [2, 3, 4])).toHaveLength(24);
    expect(f32Tensor(frame, 'h', [null, null, 4])).toHaveLength(24);
    expect(i32Tensor(frame, 'targets', [2, null])[5]).toBe(50256);
    expectCode(() => f32Tensor(frame, 'h', [2, 3, 5]), 'BAD_SHAPE', '"h"', '[2, 3, 4]', '[2, 3, 5]');
    expectCode(() => f32Tensor(frame, 'h', [null, 12]), 'BAD_SHAPE', '[2, 3, 4]', '[*, 12]');
    expectCode(() => f32Tensor(frame, 'targets', [2, 3]), 'BAD_TENSOR', '"targets"', 'i32');
    expectCode(() => i32Tensor(frame, 'h', [2, 3, 4]), 'BAD_TENSOR', '"h"', 'f32');
    expectCode(() => f32Tensor(frame, 'nope', [1]), 'BAD_TENSOR', '"nope"');
  });

  it('field accessors validate kind and range', () => {
    expect(intField(frame, 'round')).toBe(3);
    expect(intField(frame, 'round', 3, 3)).toBe(3);
    expectCode(() => intField(frame, 'round', 4), 'BAD_FIELD', '"round"', '[4,');
    expectCode(() => intField(frame, 'round', 0, 2), 'BAD_FIELD', '"round"');
    expectCode(() => intField(frame, 'session'), 'BAD_FIELD', '"session"', '"abc"');
    expectCode(() => intField(frame, 'missing'), 'BAD_FIELD', '"missing"', 'undefined');
    expectCode(() => intField(frame, 'toString'), 'BAD_FIELD'); // prototype members are not fields
    expect(stringField(frame, 'session')).toBe('abc');
    expectCode(() => stringField(frame, 'session', 2), 'BAD_FIELD', 'at most 2');
    expectCode(() => stringField(frame, 'round'), 'BAD_FIELD', '"round"');
    const b = decodeFrame(encodeFrame('backward', { round: 1, step: 2, loss: -0.5, count: 1, s: '' }, {
      dh: { data: new Float32Array(1), shape: [1, 1, 1] },
    }));
    expect(numberField(b, 'loss')).toBe(-0.5);
    expectCode(() => numberField(b, 's'), 'BAD_FIELD', '"s"');
    expectCode(() => stringField(b, 's'), 'BAD_FIELD', 'non-empty');
  });

  it('expectFrameRoundStep reports both values', () => {
    expect(() => expectFrameRoundStep(frame, 3)).not.toThrow();
    expect(() => expectFrameRoundStep(frame, 3, 1)).not.toThrow();
    expectCode(() => expectFrameRoundStep(frame, 4, 1), 'WRONG_ROUND', 'round 3', 'round 4');
    expectCode(() => expectFrameRoundStep(frame, 3, 2), 'WRONG_STEP', 'step 1', 'step 2');
    const noStep = decodeFrame(encodeFrame('round-end', { round: 3, version: 1 }));
    expectCode(() => expectFrameRoundStep(noStep, 3, 0), 'BAD_FIELD', '"step"');
  });
});

// ---------------------------------------------------------------- malformed input

describe('protocol rejects malformed frames', () => {
  it('frame level: size, truncation, header length, UTF-8, JSON, object, tensors array', () => {
    const good = validForward(new Rng(8));
    expectCode(() => decodeFrame(good, { maxBytes: good.length - 1 }), 'FRAME_TOO_LARGE', `${good.length}`);
    expect(() => decodeFrame(good, { maxBytes: good.length })).not.toThrow();
    // checked before parsing: garbage that is too big is still FRAME_TOO_LARGE
    expectCode(() => decodeFrame(new Uint8Array(DEFAULT_MAX_FRAME_BYTES + 1)), 'FRAME_TOO_LARGE');
    expectCode(() => decodeFrame(new Uint8Array([1, 0])), 'BAD_FRAME', 'shorter');
    expectCode(() => decodeFrame(new Uint8Array(0)), 'BAD_FRAME');
    expectCode(() => decodeFrame(good.subarray(0, 30)), 'BAD_FRAME', 'past the end');
    expectCode(() => decodeFrame(good.subarray(0, good.length - 1)), 'BAD_TENSOR', 'outside'); // payload cut
    const huge = good.slice();
    new DataView(huge.buffer).setUint32(0, 0xffffffff, true);
    expectCode(() => decodeFrame(huge), 'BAD_FRAME', '4294967295');
    expectCode(() => decodeFrame(rawFrame('{"type":"hello",')), 'BAD_FRAME', 'JSON');
    expectCode(() => decodeFrame(rawBytes(new Uint8Array([0x22, 0xff, 0xfe, 0x22]))), 'BAD_FRAME', 'UTF-8');
    expectCode(() => decodeFrame(rawFrame('[1,2]')), 'BAD_FRAME', 'object');
    expectCode(() => decodeFrame(rawFrame('null')), 'BAD_FRAME', 'object');
    expectCode(() => decodeFrame(rawFrame({ type: 'hello', userId: 'u', token: 't' })), 'BAD_FRAME', 'tensors');
    expectCode(() => decodeFrame(rawFrame({ type: 'hello', userId: 'u', token: 't', tensors: {} })), 'BAD_FRAME', 'tensors');
    const many = Array.from({ length: 3 }, (_, i) => ({ name: `t${i}`, dtype: 'f32', shape: [0], codec: 'f32', offset: 0, byteLength: 0 }));
    expectCode(() => decodeFrame(rawFrame({ type: 'adapter', round: 0, tokens: 0, steps: 0, tensors: many }), { maxBytes: 1e6, maxTensors: 2 }), 'BAD_FRAME', 'limit of 2');
  });

  it('unknown type', () => {
    expectCode(() => decodeFrame(rawFrame({ type: 'pwn', tensors: [] })), 'UNKNOWN_TYPE', '"pwn"');
    expectCode(() => decodeFrame(rawFrame({ type: 'toString', tensors: [] })), 'UNKNOWN_TYPE');
    expectCode(() => decodeFrame(rawFrame({ tensors: [] })), 'UNKNOWN_TYPE');
    expectCode(() => encodeFrame('pwn' as 'hello', {}), 'UNKNOWN_TYPE');
  });

  it('missing or wrongly typed fields name the field and the type', () => {
    const hdr = (fields: Record<string, unknown>) => rawFrame({ type: 'turn-end', ...fields, tensors: [] });
    expect(decodeFrame(hdr({ round: 1, accepted: true })).fields.accepted).toBe(true);
    expectCode(() => decodeFrame(hdr({ accepted: true })), 'BAD_FIELD', '"round"', '"turn-end"');
    expectCode(() => decodeFrame(hdr({ round: -1, accepted: true })), 'BAD_FIELD', '"round"');
    expectCode(() => decodeFrame(hdr({ round: 1.5, accepted: true })), 'BAD_FIELD', '"round"');
    expectCode(() => decodeFrame(hdr({ round: '1', accepted: true })), 'BAD_FIELD', '"round"');
    expectCode(() => decodeFrame(hdr({ round: 2 ** 53, accepted: true })), 'BAD_FIELD', '"round"');
    expectCode(() => decodeFrame(hdr({ round: 1, accepted: 1 })), 'BAD_FIELD', '"accepted"');
    const hello = (userId: unknown) => rawFrame({ type: 'hello', userId, token: 't', tensors: [] });
    expectCode(() => decodeFrame(hello('')), 'BAD_FIELD', '"userId"', '"hello"');
    expectCode(() => decodeFrame(hello('u'.repeat(257))), 'BAD_FIELD', '"userId"');
    expect(() => decodeFrame(hello('u'.repeat(256)))).not.toThrow();
    const upd = { type: 'update', round: 0, edgeId: 'e', tokens: 0, userBytes: 0, tensors: [] };
    expectCode(() => decodeFrame(rawFrame(upd)), 'BAD_FIELD', '"users"');
    expect(decodeFrame(rawFrame({ ...upd, users: null })).fields.users).toBeNull(); // any JSON value
    const err = (message: string) => rawFrame({ type: 'error', code: 'X', message, tensors: [] });
    expect(() => decodeFrame(err('m'.repeat(2000)))).not.toThrow();
    expectCode(() => decodeFrame(err('m'.repeat(2001))), 'BAD_FIELD', '"message"');
    // a "__proto__" key stays a plain field instead of replacing the prototype
    const proto = decodeFrame(rawFrame('{"type":"edge-status","waiting":1,"__proto__":{"polluted":1},"tensors":[]}'));
    expect(Object.getPrototypeOf(proto.fields)).toBe(Object.prototype);
    expect(Object.keys(proto.fields)).toEqual(['waiting', '__proto__']);
    // the encoder checks the same registry
    expectCode(() => encodeFrame('backward', { round: 1, step: 1, loss: NaN, count: 1 }, { dh: { data: new Float32Array(1), shape: [1, 1, 1] } }), 'BAD_FIELD', '"loss"', 'NaN');
    expectCode(() => encodeFrame('hello', { userId: 'u' }), 'BAD_FIELD', '"token"');
    expectCode(() => encodeFrame('hello', { userId: 'u', token: 't', tensors: 1 }), 'BAD_FIELD', 'reserved');
    expectCode(() => encodeFrame('hello', { userId: 'u', token: 't', big: 1n }), 'BAD_FIELD', 'JSON');
  });

  it('required tensors: presence, dtype, rank', () => {
    expect(() => decodeFrame(rawFrame(forwardHeader([H, TARGETS]), PAYLOAD12))).not.toThrow();
    expectCode(() => decodeFrame(rawFrame(forwardHeader([H]), PAYLOAD12)), 'BAD_TENSOR', 'missing tensor "targets"');
    expectCode(() => decodeFrame(rawFrame(forwardHeader([{ ...H, shape: [1, 2], }, TARGETS]), PAYLOAD12)), 'BAD_SHAPE', '"h"', 'rank 3');
    expectCode(() => decodeFrame(rawFrame(forwardHeader([H, { ...TARGETS, dtype: 'f32', codec: 'f32' }]), PAYLOAD12)), 'BAD_TENSOR', '"targets"', 'expected i32');
    const adapter = { type: 'adapter', round: 0, tokens: 0, steps: 0 };
    expectCode(() => decodeFrame(rawFrame({ ...adapter, tensors: [H, TARGETS] }, PAYLOAD12)), 'BAD_TENSOR', '"targets"', 'expected f32');
    // the encoder checks them too
    expectCode(() => encodeFrame('forward', { round: 0, step: 0 }, { h: { data: new Float32Array(2), shape: [1, 2] }, targets: { data: new Int32Array(1), shape: [1, 1] } }), 'BAD_SHAPE', '"h"');
    expectCode(() => encodeFrame('adapter', { round: 0, tokens: 0, steps: 0 }, { a: { data: new Int32Array(1), shape: [1] } }), 'BAD_TENSOR', '"a"');
  });

  it('tensor table: overlap, bounds, alignment, byteLength, dtype/codec, names, shapes', () => {
    const dec = (tensors: unknown[], payload = PAYLOAD12) => () => decodeFrame(rawFrame(forwardHeader(tensors), payload));
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
    expectCode(dec([H, TARGETS, { name: 'z', dtype: 'f32', shape: [2 ** 20, 2 ** 20, 0], codec: 'int8', offset: 0, byteLength: 2 ** 42 }]), 'BAD_TENSOR', 'limit');
    // empty tensors may sit anywhere in bounds without overlapping
    expect(() => dec([H, TARGETS, { name: 'e', dtype: 'f32', shape: [0], codec: 'f32', offset: 4, byteLength: 0 }])()).not.toThrow();
  });

  it('non-finite values name the tensor and the first bad index', () => {
    const dec = (h: unknown, payload: Uint8Array) => () => decodeFrame(rawFrame(forwardHeader([h, { ...TARGETS, offset: 8 }]), payload));
    const withTargets = (head: Uint8Array) => new Uint8Array([...head, 7, 0, 0, 0]);
    expectCode(dec(H, withTargets(f32Bytes([1, NaN]))), 'NOT_FINITE', '"h"', 'element 1', 'NaN');
    expectCode(dec(H, withTargets(f32Bytes([-Infinity, 1]))), 'NOT_FINITE', 'element 0', '-Infinity');
    const f16H = { ...H, codec: 'f16', byteLength: 4 };
    // 0x3c00 = 1.0, 0x7e00 = NaN
    expectCode(dec(f16H, withTargets(new Uint8Array([0x00, 0x3c, 0x00, 0x7e, 0, 0, 0, 0]))), 'NOT_FINITE', '"h"', 'element 1');
    expectCode(dec(f16H, withTargets(new Uint8Array([0x00, 0x7c, 0x00, 0x3c, 0, 0, 0, 0]))), 'NOT_FINITE', 'element 0', 'Infinity');
    // int8 [1,1,2]: one row -> 4-byte scale + 2 bytes
    const int8H = { ...H, codec: 'int8', byteLength: 6 };
    const int8 = (scale: number, q: number[]) => withTargets(new Uint8Array([...f32Bytes([scale]), ...q, 0, 0]));
    expect(f32Tensor(decodeFrame(rawFrame(forwardHeader([int8H, TARGETS]), int8(0.5, [2, 0xfe]))), 'h', [1, 1, 2])).toEqual(new Float32Array([1, -1]));
    expectCode(dec(int8H, int8(Infinity, [1, 1])), 'NOT_FINITE', '"h"', 'scale of row 0');
    expectCode(dec(int8H, int8(NaN, [1, 1])), 'NOT_FINITE', 'scale');
    expectCode(dec(int8H, int8(-1, [1, 1])), 'BAD_TENSOR', 'negative');
    expectCode(dec(int8H, int8(1, [0x80, 1])), 'BAD_TENSOR', '-128');
    expectCode(dec(int8H, int8(3e38, [127, 1])), 'NOT_FINITE', 'element 0'); // q*scale overflows float32
  });

  it('the encoder refuses what it cannot send faithfully', () => {
    const adapter = (t: TensorInput) => () => encodeFrame('adapter', { round: 0, tokens: 0, steps: 0 }, { w: t });
    expectCode(adapter({ data: new Float32Array([1, 70000]), shape: [2], codec: 'f16' }), 'CODEC_RANGE', '"w"', '70000');
    expectCode(adapter({ data: new Float32Array([-65505]), shape: [1], codec: 'f16' }), 'CODEC_RANGE', '-65505');
    expect(() => adapter({ data: new Float32Array([70000]), shape: [1], codec: 'int8' })()).not.toThrow();
    // float32 max: 127 * fround(max/127) rounds past the float32 range, so it can't round-trip
    expectCode(adapter({ data: new Float32Array([3.4028234663852886e38]), shape: [1], codec: 'int8' }), 'CODEC_RANGE', '"w"');
    expectCode(adapter({ data: new Float32Array([0, NaN]), shape: [2] }), 'NOT_FINITE', '"w"', 'element 1');
    expectCode(adapter({ data: new Float32Array([Infinity]), shape: [1], codec: 'int8' }), 'NOT_FINITE');
    expectCode(adapter({ data: new Float32Array(5), shape: [2, 3] }), 'BAD_SHAPE', 'needs 6', 'has 5');
    expectCode(adapter({ data: new Float32Array(1), shape: [1], codec: 'bf16' as 'f16' }), 'BAD_TENSOR', 'bf16');
    expectCode(adapter({ data: new Float64Array(1) as unknown as Float32Array, shape: [1] }), 'BAD_TENSOR', 'Float32Array');
    expectCode(adapter({ data: new Float32Array(1), shape: [1, 1, 1, 1, 1] }), 'BAD_TENSOR', 'rank');
    expectCode(() => encodeFrame('adapter', { round: 0, tokens: 0, steps: 0 }, { '': { data: new Float32Array(1), shape: [1] } }), 'BAD_TENSOR', 'name');
  });
});

// ---------------------------------------------------------------- fuzz and sizes

describe('protocol robustness', () => {
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
        const frame = decodeFrame(bytes);
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

  it('decodeFrame rejects non-Uint8Array input and invalid limits with ProtocolError', () => {
    expectCode(() => decodeFrame(new ArrayBuffer(8) as unknown as Uint8Array), 'BAD_FRAME');
    expectCode(() => decodeFrame(new Uint8Array(8), { maxBytes: NaN }), 'BAD_FRAME', 'limits');
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
    // matches what encodeFrame actually writes
    const bytes = encodeFrame('backward', { round: 0, step: 0, loss: 1, count: 1 }, {
      dh: { data: new Float32Array(2 * 3 * 7), shape: [2, 3, 7], codec: 'int8' },
    });
    const headerLength = new DataView(bytes.buffer).getUint32(0, true);
    expect(bytes.length - 4 - headerLength).toBe(tensorWireBytes([2, 3, 7], 'int8') + 2); // + padding to 4
  });
});
