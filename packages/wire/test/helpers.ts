/** Helpers shared by the frame and message tests: coded-error checks and hand-built frames. */
import type { Rng } from '@splitllm/model';
import { expect } from 'vitest';
import { ProtocolError, type ProtocolErrorCode } from '../src/index';

/** Runs fn and returns the ProtocolError it throws (fails if it throws anything else). */
export function protocolError(fn: () => unknown): ProtocolError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ProtocolError);
    return err as ProtocolError;
  }
  throw new Error('expected a ProtocolError, nothing was thrown');
}

export function expectCode(fn: () => unknown, code: ProtocolErrorCode, ...fragments: string[]): ProtocolError {
  const err = protocolError(fn);
  expect(err.code, err.message).toBe(code);
  expect(err.name).toBe('ProtocolError');
  for (const f of fragments) expect(err.message).toContain(f);
  return err;
}

/** A frame assembled by hand, for inputs the encoder would refuse to produce. */
export function rawFrame(header: unknown, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const json = typeof header === 'string' ? header : JSON.stringify(header);
  return rawBytes(new TextEncoder().encode(json), payload);
}

export function rawBytes(headerBytes: Uint8Array, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(4 + headerBytes.length + payload.length);
  new DataView(out.buffer).setUint32(0, headerBytes.length, true);
  out.set(headerBytes, 4);
  out.set(payload, 4 + headerBytes.length);
  return out;
}

export function f32Bytes(values: number[]): Uint8Array {
  const out = new Uint8Array(values.length * 4);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) dv.setFloat32(4 * i, values[i], true);
  return out;
}

export function randn(rng: Rng, n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.normal() * scale;
  return out;
}

/** A forward frame header (round 1, step 0) with the given tensor table, for tensor-table tests. */
export function forwardHeader(tensors: unknown[]): Record<string, unknown> {
  return { type: 'forward', round: 1, step: 0, tensors };
}

/** Table entries of a forward frame: h [1,1,2] f32 at 0 and targets [1,1] i32 at 8, over PAYLOAD12. */
export const H = { name: 'h', dtype: 'f32', shape: [1, 1, 2], codec: 'f32', offset: 0, byteLength: 8 };
export const TARGETS = { name: 'targets', dtype: 'i32', shape: [1, 1], codec: 'i32', offset: 8, byteLength: 4 };
export const PAYLOAD12 = new Uint8Array([...f32Bytes([1, 2]), 7, 0, 0, 0]);
