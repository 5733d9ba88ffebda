/**
 * The ONNX writer: decode its own output and check every field and attribute type, then run a
 * small hand-built graph in onnxruntime-node.
 */
import { describe, expect, it } from 'vitest';
import { GraphBuilder, ONNX_IR_VERSION, ONNX_OPSET, floatAttr, floatsAttr, tensorAttr } from '../src/graph-builder';
import { AttributeType, TensorDataType, decodeModel, encodeModel, tensorValues, type ModelProto } from '../src/proto';
import { createSession, run } from './helpers';

describe('ONNX protobuf writer', () => {
  it('round-trips every field through its own decoder, with exact attribute types', () => {
    const big = Float32Array.from({ length: 1000 }, (_, i) => Math.sin(i));
    const model: ModelProto = {
      irVersion: 8,
      producerName: 'test',
      opsetImports: [
        { domain: '', version: 18 },
        { domain: 'com.microsoft', version: 1 },
      ],
      graph: {
        name: 'g',
        nodes: [
          {
            opType: 'Custom',
            inputs: ['a', ''],
            outputs: ['b'],
            name: 'n0',
            domain: 'com.microsoft',
            attributes: [
              { name: 'f', type: AttributeType.FLOAT, f: 0.25 },
              { name: 'i', type: AttributeType.INT, i: -3 },
              { name: 'big', type: AttributeType.INT, i: 2 ** 40 },
              { name: 's', type: AttributeType.STRING, s: 'tanh é' },
              { name: 'fs', type: AttributeType.FLOATS, floats: [1.5, -2] },
              { name: 'is', type: AttributeType.INTS, ints: [0, -1, 300] },
              { name: 'ss', type: AttributeType.STRINGS, strings: ['x', 'yz'] },
              {
                name: 't',
                type: AttributeType.TENSOR,
                t: {
                  name: '',
                  dataType: TensorDataType.INT64,
                  dims: [2],
                  rawData: new Uint8Array(BigInt64Array.of(-1n, 7n).buffer),
                },
              },
            ],
          },
        ],
        initializers: [
          { name: 'w', dataType: TensorDataType.FLOAT, dims: [10, 100], rawData: new Uint8Array(big.buffer) },
          { name: 'c', dataType: TensorDataType.INT32, dims: [], rawData: new Uint8Array(Int32Array.of(-100).buffer) },
        ],
        inputs: [{ name: 'a', elemType: TensorDataType.FLOAT, dims: ['batch', 'seq', 64] }],
        outputs: [{ name: 'b', elemType: TensorDataType.FLOAT, dims: [] }],
      },
    };
    const bytes = encodeModel(model);
    const back = decodeModel(bytes);
    expect(back.irVersion).toBe(8);
    expect(back.producerName).toBe('test');
    expect(back.opsetImports).toEqual(model.opsetImports);
    const n = back.graph.nodes[0];
    expect(n).toMatchObject({
      opType: 'Custom',
      inputs: ['a', ''],
      outputs: ['b'],
      name: 'n0',
      domain: 'com.microsoft',
    });
    const attrs = Object.fromEntries(n.attributes.map((a) => [a.name, a]));
    expect(attrs.f).toEqual({ name: 'f', type: AttributeType.FLOAT, f: 0.25 });
    expect(attrs.i).toEqual({ name: 'i', type: AttributeType.INT, i: -3 });
    expect(attrs.big.i).toBe(2 ** 40);
    expect(attrs.s).toEqual({ name: 's', type: AttributeType.STRING, s: 'tanh é' });
    expect(attrs.fs).toEqual({ name: 'fs', type: AttributeType.FLOATS, floats: [1.5, -2] });
    expect(attrs.is).toEqual({ name: 'is', type: AttributeType.INTS, ints: [0, -1, 300] });
    expect(attrs.ss).toEqual({ name: 'ss', type: AttributeType.STRINGS, strings: ['x', 'yz'] });
    expect(attrs.t.type).toBe(AttributeType.TENSOR);
    expect(attrs.t.t!.dims).toEqual([2]);
    expect(Array.from(tensorValues(attrs.t.t!) as BigInt64Array)).toEqual([-1n, 7n]);
    const [w, c] = back.graph.initializers;
    expect(w).toMatchObject({ name: 'w', dataType: TensorDataType.FLOAT, dims: [10, 100] });
    expect(tensorValues(w)).toEqual(big);
    expect(c.dims).toEqual([]);
    expect(Array.from(tensorValues(c) as Int32Array)).toEqual([-100]);
    expect(back.graph.inputs).toEqual(model.graph.inputs);
    expect(back.graph.outputs).toEqual(model.graph.outputs); // rank 0 stays rank 0
    // one copy of the initializer data, plus small framing
    expect(bytes.length).toBeLessThan(big.byteLength + 400);
  });

  it('the builder types attributes strictly and renames outputs without copies', () => {
    const g = new GraphBuilder('b');
    const x = g.input('x', 'float32', ['n', 3]);
    expect(() => g.op('Gemm', [x, x], { alpha: 0.5 })).toThrow(/floatAttr\(0.5\)/);
    expect(() => g.op('Add', [x, 'nope'])).toThrow(/not defined/);
    const y = g.op('Gemm', [x, x], { transB: 1, alpha: floatAttr(0.5) });
    g.output('y', y, 'float32', ['n', 'n']);
    g.output('x_again', x, 'float32', ['n', 3]);
    g.op('Custom', [x], { fs: floatsAttr([1, 2.5]), is: [1, -2], s: 'str', ss: ['a', 'b'] });
    expect(g.scalar(2)).toBe(g.scalar(2));
    const m = decodeModel(g.toModel());
    expect(m.irVersion).toBe(ONNX_IR_VERSION);
    expect(m.opsetImports).toEqual([{ domain: '', version: ONNX_OPSET }]);
    const gemm = m.graph.nodes.find((nd) => nd.opType === 'Gemm')!;
    expect(gemm.outputs).toEqual(['y']); // renamed, no Identity
    expect(gemm.attributes).toEqual([
      { name: 'transB', type: AttributeType.INT, i: 1 },
      { name: 'alpha', type: AttributeType.FLOAT, f: 0.5 },
    ]);
    const custom = m.graph.nodes.find((nd) => nd.opType === 'Custom')!;
    expect(custom.attributes.map((a) => a.type)).toEqual([
      AttributeType.FLOATS,
      AttributeType.INTS,
      AttributeType.STRING,
      AttributeType.STRINGS,
    ]);
    expect(custom.attributes[0].floats).toEqual([1, 2.5]);
    const ident = m.graph.nodes.filter((nd) => nd.opType === 'Identity');
    expect(ident.map((nd) => [nd.inputs, nd.outputs])).toEqual([[['x'], ['x_again']]]); // a graph input needs one
  });

  it('keeps initializer data by reference until serialization (one copy in the model)', () => {
    const g = new GraphBuilder();
    const data = new Float32Array(1 << 18); // 1 MiB
    g.initializer('w', 'float32', [512, 512], data);
    data[7] = 42; // a later change is what gets written: the builder held a view, not a copy
    const proto = g.toProto();
    expect(proto.graph.initializers[0].rawData.buffer).toBe(data.buffer);
    const bytes = g.toModel();
    expect(bytes.length).toBeLessThan(data.byteLength + 100);
    expect((tensorValues(decodeModel(bytes).graph.initializers[0]) as Float32Array)[7]).toBe(42);
  });

  it('a small hand graph runs in onnxruntime-node', async () => {
    // y = Softmax(x W + b, axis -1) * s, plus a shape-driven mask and an int32 path
    const g = new GraphBuilder('hand');
    const x = g.input('x', 'float32', ['n', 4]);
    const ids = g.input('ids', 'int32', ['n']);
    const W = g.initializer('W', 'float32', [4, 3], Float32Array.from([1, 0, -1, 0.5, 2, 0, 0, 0, 1, -1, 1, 1]));
    const b = g.initializer('b', 'float32', [3], Float32Array.from([0.1, -0.2, 0.3]));
    const z = g.op('Gemm', [x, W, b], { alpha: floatAttr(1), beta: floatAttr(1) });
    const p = g.op('Softmax', [z], { axis: -1 });
    g.output('p', g.op('Mul', [p, g.scalar(2)]), 'float32', ['n', 3]);
    const ones = g.op('ConstantOfShape', [g.op('Shape', [x], { start: 0, end: 1 })], {
      value: tensorAttr('float32', [1], Float32Array.of(1)),
    });
    g.output('count', g.op('ReduceSum', [ones], { keepdims: 0 }), 'float32', []);
    const neg = g.op('Cast', [g.op('Equal', [ids, g.int32Scalar(-100)])], { to: 1 });
    g.output('ignored', neg, 'float32', ['n']);
    g.output('lp', g.op('LpNormalization', [x], { axis: 1, p: 2 }), 'float32', ['n', 4]);
    const session = await createSession(g.toModel());
    expect(session.inputNames).toEqual(['x', 'ids']);
    expect(session.outputNames).toEqual(['p', 'count', 'ignored', 'lp']);
    const xv = Float32Array.from([1, 2, 3, 4, -1, 0, 1, 0]);
    const out = await run(session, {
      x: { data: xv, dims: [2, 4] },
      ids: { data: Int32Array.from([5, -100]), dims: [2] },
    });
    for (let r = 0; r < 2; r++) {
      const zr = [0, 1, 2].map((j) =>
        [0, 1, 2, 3].reduce(
          (s, k) => s + xv[r * 4 + k] * [1, 0, -1, 0.5, 2, 0, 0, 0, 1, -1, 1, 1][k * 3 + j],
          [0.1, -0.2, 0.3][j],
        ),
      );
      const m = Math.max(...zr);
      const e = zr.map((v) => Math.exp(v - m));
      const s = e.reduce((a, c) => a + c, 0);
      for (let j = 0; j < 3; j++) expect(out.p[r * 3 + j]).toBeCloseTo((2 * e[j]) / s, 6);
    }
    expect(out.count[0]).toBe(2);
    expect(Array.from(out.ignored)).toEqual([0, 1]);
    expect(out.lp[0]).toBeCloseTo(1 / Math.sqrt(30), 6);
  });
});
