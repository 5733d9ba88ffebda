import { describe, expect, it } from 'vitest';
import {
  SafetensorsError,
  parseSafetensors,
  readSafetensors,
  readSafetensorsWithMetadata,
  writeSafetensors,
} from '../src/formats/safetensors';
import type { Tensor } from '../src/tensor';

/** Builds a safetensors file by hand from a header object and raw data bytes. */
function build(header: unknown, data: Uint8Array = new Uint8Array(0), pad = 0): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header) + ' '.repeat(pad));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setUint32(0, json.length, true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

function u16le(values: number[]): Uint8Array {
  const out = new Uint8Array(values.length * 2);
  const dv = new DataView(out.buffer);
  for (const [i, v] of values.entries()) dv.setUint16(2 * i, v, true);
  return out;
}

function f32le(values: number[]): Uint8Array {
  const out = new Uint8Array(values.length * 4);
  const dv = new DataView(out.buffer);
  for (const [i, v] of values.entries()) dv.setFloat32(4 * i, v, true);
  return out;
}

function expectCode(fn: () => unknown, code: string, messagePart?: string): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(SafetensorsError);
  expect((err as SafetensorsError).code).toBe(code);
  if (messagePart) expect((err as Error).message).toContain(messagePart);
}

describe('writeSafetensors / readSafetensors', () => {
  it('round-trips tensors in order, with metadata, aligned', () => {
    const tensors: Array<[string, Tensor]> = [
      ['b.weight', { shape: [2, 3], data: Float32Array.from([1, -2, 3.5, 0, 1e-8, -1e30]) }],
      ['a', { shape: [3], data: Float32Array.from([7, 8, 9]) }],
      ['scalar', { shape: [], data: Float32Array.from([42]) }],
      ['empty', { shape: [0, 4], data: new Float32Array(0) }],
      ['ünïcode.name', { shape: [1], data: Float32Array.from([-0]) }],
    ];
    const bytes = writeSafetensors(tensors, { format: 'pt', note: 'hi' });
    const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect(headerLen % 8).toBe(0);
    // padding is spaces
    expect(bytes[8 + headerLen - 1]).toBe(0x20);

    const { metadata, tensors: back } = readSafetensorsWithMetadata(bytes);
    expect(metadata).toEqual({ format: 'pt', note: 'hi' });
    expect([...back.keys()]).toEqual(tensors.map(([n]) => n));
    for (const [name, t] of tensors) {
      const r = back.get(name)!;
      expect(r.shape).toEqual(t.shape);
      expect(Array.from(r.data)).toEqual(Array.from(t.data));
    }
    const parsed = parseSafetensors(bytes);
    expect(parsed.tensors.get('b.weight')).toEqual({
      name: 'b.weight',
      dtype: 'F32',
      shape: [2, 3],
      dataOffsets: [0, 24],
    });
    expect(parsed.tensors.get('a')!.dataOffsets).toEqual([24, 36]);
  });

  it('accepts a Map and works without metadata', () => {
    const m = new Map<string, Tensor>([['x', { shape: [2], data: Float32Array.from([1, 2]) }]]);
    const bytes = writeSafetensors(m);
    const { metadata, tensors } = readSafetensorsWithMetadata(bytes);
    expect(metadata).toBeUndefined();
    expect(Array.from(tensors.get('x')!.data)).toEqual([1, 2]);
  });

  it('returns zero-copy views for aligned F32 data', () => {
    const bytes = writeSafetensors([
      ['a', { shape: [3], data: Float32Array.from([1, 2, 3]) }],
      ['b', { shape: [2, 2], data: Float32Array.from([4, 5, 6, 7]) }],
    ]);
    const t = readSafetensors(bytes);
    expect(t.get('a')!.data.buffer).toBe(bytes.buffer);
    expect(t.get('b')!.data.buffer).toBe(bytes.buffer);
    // a write through the source buffer is visible: it really is a view
    new DataView(bytes.buffer).setFloat32(bytes.length - 4, 99, true);
    expect(t.get('b')!.data[3]).toBe(99);
  });

  it('zero-copy also for a subarray at an aligned absolute offset', () => {
    const inner = writeSafetensors([['a', { shape: [2], data: Float32Array.from([1, 2]) }]]);
    const outer = new Uint8Array(inner.length + 16);
    outer.set(inner, 8);
    const t = readSafetensors(outer.subarray(8, 8 + inner.length)).get('a')!;
    expect(t.data.buffer).toBe(outer.buffer);
    expect(Array.from(t.data)).toEqual([1, 2]);
  });

  it('copies misaligned F32 data and still reads it right', () => {
    const seen = new Set<boolean>();
    for (const pad of [0, 1, 2, 3]) {
      const data = new Uint8Array(3 + 8);
      data.set(f32le([1.5, -2.25]), 3);
      const bytes = build({ x: { dtype: 'F32', shape: [2], data_offsets: [3, 11] } }, data, pad);
      const t = readSafetensors(bytes).get('x')!;
      expect(Array.from(t.data)).toEqual([1.5, -2.25]);
      const abs = bytes.length - data.length + 3;
      const aligned = abs % 4 === 0;
      seen.add(aligned);
      if (aligned) expect(t.data.buffer).toBe(bytes.buffer);
      else expect(t.data.buffer).not.toBe(bytes.buffer);
    }
    expect(seen.size).toBe(2); // both paths exercised
  });

  it('converts F16 to float32 exactly (normals, max, subnormals, zeros, inf, nan)', () => {
    const cases: Array<[number, number]> = [
      [0x3c00, 1.0],
      [0xc100, -2.5],
      [0x7bff, 65504],
      [0xfbff, -65504],
      [0x0001, 2 ** -24], // smallest subnormal
      [0x03ff, 1023 * 2 ** -24], // largest subnormal
      [0x8001, -(2 ** -24)],
      [0x0400, 2 ** -14], // smallest normal
      [0x3555, 0.333251953125],
      [0x0000, 0],
      [0x7c00, Infinity],
      [0xfc00, -Infinity],
    ];
    for (const pad of [0, 1, 2, 3]) {
      const bits = cases.map(([b]) => b).concat([0x7e00]);
      const bytes = build(
        { h: { dtype: 'F16', shape: [bits.length], data_offsets: [0, bits.length * 2] } },
        u16le(bits),
        pad, // also covers odd (misaligned) data starts
      );
      const t = readSafetensors(bytes).get('h')!;
      expect(t.shape).toEqual([bits.length]);
      for (const [i, [, v]] of cases.entries()) expect(t.data[i]).toBe(v);
      expect(Number.isNaN(t.data[cases.length])).toBe(true);
    }
    // negative zero keeps its sign
    const nz = readSafetensors(build({ z: { dtype: 'F16', shape: [1], data_offsets: [0, 2] } }, u16le([0x8000]))).get(
      'z',
    )!;
    expect(Object.is(nz.data[0], -0)).toBe(true);
  });

  it('converts BF16 to float32 exactly', () => {
    const cases: Array<[number, number]> = [
      [0x3f80, 1.0],
      [0xc020, -2.5],
      [0x477f, 65280], // 0x477fe0 would be 65504; bf16 keeps 8 bits of mantissa
      [0x4780, 65536],
      [0x0001, 2 ** -133], // smallest bf16 subnormal (same exponent range as f32)
      [0x8000, -0],
      [0x7f80, Infinity],
      [0x3eab, 0.333984375],
    ];
    for (const pad of [0, 1]) {
      const bytes = build(
        { b: { dtype: 'BF16', shape: [2, 4], data_offsets: [0, 16] } },
        u16le(cases.map(([b]) => b)),
        pad,
      );
      const t = readSafetensors(bytes).get('b')!;
      expect(t.shape).toEqual([2, 4]);
      for (const [i, [, v]] of cases.entries()) expect(Object.is(t.data[i], v)).toBe(true);
    }
  });

  it('reads mixed dtypes and honours a filter (skipping unsupported dtypes)', () => {
    const data = new Uint8Array(4 + 2 + 2 + 8);
    data.set(f32le([3]), 0);
    data.set(u16le([0x3c00]), 4);
    data.set(u16le([0x4000]), 6);
    const bytes = build(
      {
        f: { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
        h: { dtype: 'F16', shape: [1], data_offsets: [4, 6] },
        b: { dtype: 'BF16', shape: [1], data_offsets: [6, 8] },
        i: { dtype: 'I64', shape: [1], data_offsets: [8, 16] },
      },
      data,
    );
    expectCode(() => readSafetensors(bytes), 'SAFETENSORS_BAD_DTYPE', '"i"');
    const t = readSafetensors(bytes, { filter: (name) => name !== 'i' });
    expect([...t.keys()]).toEqual(['f', 'h', 'b']);
    expect([t.get('f')!.data[0], t.get('h')!.data[0], t.get('b')!.data[0]]).toEqual([3, 1, 2]);
    // parse alone accepts known non-float dtypes
    expect(parseSafetensors(bytes).tensors.get('i')!.dtype).toBe('I64');
  });
});

describe('safetensors errors', () => {
  const ok = { t: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };

  it('file shorter than 8 bytes', () => {
    expectCode(() => parseSafetensors(new Uint8Array(5)), 'SAFETENSORS_TRUNCATED');
  });

  it('header length past the end', () => {
    const bytes = build(ok, new Uint8Array(8));
    expectCode(() => parseSafetensors(bytes.subarray(0, 20)), 'SAFETENSORS_TRUNCATED');
  });

  it('absurdly large header length', () => {
    const bytes = new Uint8Array(64);
    const dv = new DataView(bytes.buffer);
    dv.setUint32(0, 0xffffffff, true);
    dv.setUint32(4, 0x7, true);
    expectCode(() => parseSafetensors(bytes), 'SAFETENSORS_BAD_HEADER', 'absurdly large');
    dv.setUint32(0, 200 * 1024 * 1024, true);
    dv.setUint32(4, 0, true);
    expectCode(() => parseSafetensors(bytes), 'SAFETENSORS_BAD_HEADER');
  });

  it('header not JSON / not an object / bad entries', () => {
    const raw = new TextEncoder().encode('{"t": {dtype');
    const bytes = new Uint8Array(8 + raw.length);
    new DataView(bytes.buffer).setUint32(0, raw.length, true);
    bytes.set(raw, 8);
    expectCode(() => parseSafetensors(bytes), 'SAFETENSORS_BAD_HEADER', 'not valid UTF-8 JSON');
    expectCode(() => parseSafetensors(build([1, 2])), 'SAFETENSORS_BAD_HEADER', 'not a JSON object');
    expectCode(() => parseSafetensors(build(null)), 'SAFETENSORS_BAD_HEADER', 'not a JSON object');
    expectCode(() => parseSafetensors(build({ t: 5 })), 'SAFETENSORS_BAD_HEADER', '"t"');
    expectCode(
      () => parseSafetensors(build({ t: { dtype: 'F32', shape: [-1], data_offsets: [0, 0] } })),
      'SAFETENSORS_BAD_HEADER',
      '"t"',
    );
    expectCode(() => parseSafetensors(build({ __metadata__: { a: 1 } })), 'SAFETENSORS_BAD_HEADER', 'metadata');
  });

  it('unsupported / unknown dtype', () => {
    expectCode(
      () => parseSafetensors(build({ w: { dtype: 'Q4', shape: [2], data_offsets: [0, 1] } }, new Uint8Array(1))),
      'SAFETENSORS_BAD_DTYPE',
      '"w"',
    );
    const bytes = build({ w: { dtype: 'F64', shape: [1], data_offsets: [0, 8] } }, new Uint8Array(8));
    expectCode(() => readSafetensors(bytes), 'SAFETENSORS_BAD_DTYPE', 'tensor "w" has dtype F64');
  });

  it('data_offsets outside the data or not matching dtype * numel', () => {
    expectCode(() => parseSafetensors(build(ok, new Uint8Array(4))), 'SAFETENSORS_BAD_OFFSETS', '"t"');
    expectCode(
      () => parseSafetensors(build({ t: { dtype: 'F32', shape: [2], data_offsets: [8, 0] } }, new Uint8Array(8))),
      'SAFETENSORS_BAD_OFFSETS',
      '"t"',
    );
    expectCode(
      () => parseSafetensors(build({ t: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, new Uint8Array(12))),
      'SAFETENSORS_BAD_OFFSETS',
      'needs 12',
    );
    expectCode(
      () => parseSafetensors(build({ t: { dtype: 'F16', shape: [2], data_offsets: [0, 8] } }, new Uint8Array(8))),
      'SAFETENSORS_BAD_OFFSETS',
      '"t"',
    );
    expectCode(
      () => parseSafetensors(build({ t: { dtype: 'F32', shape: [2], data_offsets: [0] } }, new Uint8Array(8))),
      'SAFETENSORS_BAD_OFFSETS',
      '"t"',
    );
  });

  it('overlapping tensors', () => {
    const bytes = build(
      {
        a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
        b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
      },
      new Uint8Array(12),
    );
    expectCode(() => parseSafetensors(bytes), 'SAFETENSORS_BAD_OFFSETS', 'overlap');
    let msg = '';
    try {
      parseSafetensors(bytes);
    } catch (e) {
      msg = (e as Error).message;
    }
    expect(msg).toContain('"a"');
    expect(msg).toContain('"b"');
  });

  it('writer rejects bad input', () => {
    expectCode(
      () => writeSafetensors([['x', { shape: [3], data: new Float32Array(2) }]]),
      'SAFETENSORS_BAD_TENSOR',
      '"x"',
    );
    const t = { shape: [1], data: new Float32Array(1) };
    expectCode(
      () =>
        writeSafetensors([
          ['x', t],
          ['x', t],
        ]),
      'SAFETENSORS_BAD_TENSOR',
      'twice',
    );
    expectCode(() => writeSafetensors([['__metadata__', t]]), 'SAFETENSORS_BAD_TENSOR');
  });
});
