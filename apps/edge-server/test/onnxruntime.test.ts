/**
 * The edge tier runs its segment through onnxruntime-node. Its install script (CUDA download)
 * is skipped offline; this proves the native binding shipped inside the npm package loads and
 * runs a graph on the CPU provider. (The segment graphs themselves come with the ONNX issue.)
 */
import * as ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';

/** Smallest valid ONNX model by hand (protobuf): y = Relu(x), x float [2]. */
function reluModel(): Uint8Array {
  const bytes: number[] = [];
  const varint = (n: number) => {
    while (n > 127) {
      bytes.push((n & 127) | 128);
      n >>>= 7;
    }
    bytes.push(n);
  };
  const field = (no: number, wire: number) => varint((no << 3) | wire);
  const str = (no: number, s: string | Uint8Array) => {
    const b = typeof s === 'string' ? new TextEncoder().encode(s) : s;
    field(no, 2);
    varint(b.length);
    bytes.push(...b);
  };
  const sub = (build: () => void): Uint8Array => {
    const saved = bytes.splice(0, bytes.length);
    build();
    const out = Uint8Array.from(bytes.splice(0, bytes.length));
    bytes.push(...saved);
    return out;
  };
  const valueInfo = (name: string) =>
    sub(() => {
      str(1, name);
      // TypeProto { tensor_type { elem_type: FLOAT, shape { dim { dim_value: 2 } } } }
      str(2, sub(() => str(1, sub(() => { field(1, 0); varint(1); str(2, sub(() => str(1, sub(() => { field(1, 0); varint(2); })))); }))));
    });
  const node = sub(() => { str(1, 'x'); str(2, 'y'); str(4, 'Relu'); });
  const graph = sub(() => { str(1, node); str(2, 'g'); str(11, valueInfo('x')); str(12, valueInfo('y')); });
  const opset = sub(() => { field(2, 0); varint(17); });
  return Uint8Array.from(sub(() => { field(1, 0); varint(8); str(7, graph); str(8, opset); }));
}

describe('onnxruntime-node', () => {
  it('loads its native binding and runs a graph on the cpu provider', async () => {
    expect(ort.listSupportedBackends().map((b) => b.name)).toContain('cpu');
    const session = await ort.InferenceSession.create(reluModel(), { executionProviders: ['cpu'] });
    const out = await session.run({ x: new ort.Tensor('float32', Float32Array.from([-1.5, 2.5]), [2]) });
    expect(Array.from(out.y.data as Float32Array)).toEqual([0, 2.5]);
  });
});
