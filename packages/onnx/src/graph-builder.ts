/**
 * A small builder for ONNX graphs: declare inputs, initializers and outputs, append nodes by
 * op type, get fresh value names, then serialize.
 *
 *   const g = new GraphBuilder('lora');
 *   const x = g.input('x', 'float32', ['n', 16]);
 *   const W = g.initializer('W', 'float32', [16, 8], weights);   // kept by reference
 *   const y = g.op('Gemm', [x, W], { transB: 0, alpha: floatAttr(1) });
 *   g.output('y', y, 'float32', ['n', 8]);
 *   const bytes = g.toModel();
 *
 * Attributes are typed strictly (onnxruntime rejects a float attribute written as an int): a
 * plain number is an INT (and must be an integer), a number[] is INTS, a string is STRING;
 * floats, float lists and tensors are tagged with `floatAttr()`, `floatsAttr()`, `tensorAttr()`.
 *
 * Initializer data is held by reference and copied once, when the model is serialized.
 */
import {
  AttributeType,
  TensorDataType,
  encodeModel,
  type AttributeProto,
  type ModelProto,
  type NodeProto,
  type TensorProto,
  type ValueInfoProto,
} from './proto';

/** Opset of the default ONNX domain the project's graphs use (ReduceMean takes axes as an input from 18). */
export const ONNX_OPSET = 18;
/** IR version 8 goes with opsets 17-18 and is accepted by onnxruntime 1.30 (node and web). */
export const ONNX_IR_VERSION = 8;

export type DType = 'float32' | 'int32' | 'int64' | 'bool' | 'uint8';
export type Dims = (number | string)[];
export type TensorData = Float32Array | Int32Array | BigInt64Array | Uint8Array;

export const DTYPE_CODE: Record<DType, number> = {
  float32: TensorDataType.FLOAT,
  int32: TensorDataType.INT32,
  int64: TensorDataType.INT64,
  bool: TensorDataType.BOOL,
  uint8: TensorDataType.UINT8,
};

interface TaggedFloat {
  kind: 'float';
  value: number;
}
interface TaggedFloats {
  kind: 'floats';
  values: number[];
}
interface TaggedTensor {
  kind: 'tensor';
  dtype: DType;
  dims: number[];
  data: TensorData;
}
export type AttrValue = number | number[] | string | string[] | TaggedFloat | TaggedFloats | TaggedTensor;
export type Attrs = Record<string, AttrValue>;

export const floatAttr = (value: number): TaggedFloat => ({ kind: 'float', value });
export const floatsAttr = (values: number[]): TaggedFloats => ({ kind: 'floats', values });
export const tensorAttr = (dtype: DType, dims: number[], data: TensorData): TaggedTensor => ({
  kind: 'tensor',
  dtype,
  dims,
  data,
});

function bytesOf(data: TensorData): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function checkData(what: string, dtype: DType, dims: number[], data: TensorData): void {
  const ok =
    (dtype === 'float32' && data instanceof Float32Array) ||
    (dtype === 'int32' && data instanceof Int32Array) ||
    (dtype === 'int64' && data instanceof BigInt64Array) ||
    ((dtype === 'bool' || dtype === 'uint8') && data instanceof Uint8Array);
  if (!ok) throw new Error(`${what}: data is not a typed array of ${dtype}`);
  const n = dims.reduce((a, b) => a * b, 1);
  if (n !== data.length)
    throw new Error(`${what}: dims [${dims.join(', ')}] need ${n} elements, data has ${data.length}`);
}

function toAttribute(name: string, v: AttrValue): AttributeProto {
  if (typeof v === 'number') {
    if (!Number.isInteger(v))
      throw new Error(`attribute "${name}": ${v} is not an integer; use floatAttr(${v}) for a FLOAT attribute`);
    return { name, type: AttributeType.INT, i: v };
  }
  if (typeof v === 'string') return { name, type: AttributeType.STRING, s: v };
  if (Array.isArray(v)) {
    if (v.length > 0 && v.every((x) => typeof x === 'string'))
      return { name, type: AttributeType.STRINGS, strings: v as string[] };
    const ints = v as number[];
    if (!ints.every((x) => Number.isInteger(x)))
      throw new Error(`attribute "${name}": INTS must be integers; use floatsAttr([...])`);
    return { name, type: AttributeType.INTS, ints };
  }
  switch (v.kind) {
    case 'float':
      return { name, type: AttributeType.FLOAT, f: v.value };
    case 'floats':
      return { name, type: AttributeType.FLOATS, floats: v.values };
    case 'tensor':
      checkData(`attribute "${name}"`, v.dtype, v.dims, v.data);
      return {
        name,
        type: AttributeType.TENSOR,
        t: { name: '', dataType: DTYPE_CODE[v.dtype], dims: v.dims, rawData: bytesOf(v.data) },
      };
  }
}

export class GraphBuilder {
  private readonly nodes: NodeProto[] = [];
  private readonly initializers: TensorProto[] = [];
  private readonly inputs: ValueInfoProto[] = [];
  private readonly outputs: Array<ValueInfoProto & { value: string }> = [];
  /** every value name in use: inputs, initializers, node outputs */
  private readonly names = new Set<string>();
  /** values produced by a node, with the node that produces them */
  private readonly producers = new Map<string, NodeProto>();
  private readonly memo = new Map<string, unknown>();
  private counter = 0;

  constructor(readonly name = 'graph') {}

  /** A value name not used yet, built from a hint. */
  fresh(hint = 't'): string {
    let n: string;
    do n = `${hint}_${this.counter++}`;
    while (this.names.has(n));
    return n;
  }

  has(name: string): boolean {
    return this.names.has(name);
  }

  private claim(name: string): string {
    if (this.names.has(name)) throw new Error(`graph "${this.name}": value name "${name}" is already used`);
    this.names.add(name);
    return name;
  }

  input(name: string, dtype: DType, dims: Dims): string {
    this.inputs.push({ name: this.claim(name), elemType: DTYPE_CODE[dtype], dims: [...dims] });
    return name;
  }

  /** A constant tensor stored in the model. The data is kept by reference until serialization. */
  initializer(name: string, dtype: DType, dims: number[], data: TensorData): string {
    checkData(`initializer "${name}"`, dtype, dims, data);
    this.initializers.push({
      name: this.claim(name),
      dataType: DTYPE_CODE[dtype],
      dims: [...dims],
      rawData: bytesOf(data),
    });
    return name;
  }

  /**
   * Declares graph output `name` with the contents of `value`. The producing node's output is
   * renamed when the model is serialized (no copy); an Identity is added only when the value
   * is a graph input, an initializer or already another output.
   */
  output(name: string, value: string, dtype: DType, dims: Dims): void {
    if (!this.names.has(value))
      throw new Error(`graph "${this.name}": output "${name}" refers to unknown value "${value}"`);
    if (this.outputs.some((o) => o.name === name))
      throw new Error(`graph "${this.name}": output "${name}" declared twice`);
    if (name !== value) this.claim(name);
    this.outputs.push({ name, value, elemType: DTYPE_CODE[dtype], dims: [...dims] });
  }

  /** Appends a node with one output; returns the output's name. */
  op(opType: string, inputs: string[], attrs: Attrs = {}, hint?: string): string {
    return this.node(opType, inputs, 1, attrs, hint)[0];
  }

  /** Appends a node with `nOutputs` outputs; returns their names. */
  node(opType: string, inputs: string[], nOutputs: number, attrs: Attrs = {}, hint?: string): string[] {
    for (const i of inputs) {
      if (i !== '' && !this.names.has(i))
        throw new Error(`graph "${this.name}": ${opType} input "${i}" is not defined`);
    }
    const outputs = Array.from({ length: nOutputs }, () => this.claim(this.fresh(hint ?? opType.toLowerCase())));
    const node: NodeProto = {
      opType,
      inputs: [...inputs],
      outputs,
      name: `${opType}_${this.nodes.length}`,
      domain: '',
      attributes: Object.entries(attrs).map(([k, v]) => toAttribute(k, v)),
    };
    this.nodes.push(node);
    for (const o of outputs) this.producers.set(o, node);
    return outputs;
  }

  /** Builds a value once per key (constants, shared masks, shapes) and returns the cached one after. */
  cached<T>(key: string, make: () => T): T {
    if (!this.memo.has(key)) this.memo.set(key, make());
    return this.memo.get(key) as T;
  }

  /** float32 scalar constant (rank 0), shared by value. */
  scalar(v: number): string {
    return this.cached(`f32:${Object.is(v, -0) ? '-0' : v}`, () =>
      this.initializer(this.fresh('c'), 'float32', [], Float32Array.of(v)),
    );
  }

  /** int32 scalar constant (rank 0), shared by value. */
  int32Scalar(v: number): string {
    return this.cached(`i32:${v}`, () => this.initializer(this.fresh('c_i32'), 'int32', [], Int32Array.of(v)));
  }

  /** 1-D int64 constant (shapes, axes, splits), shared by value. */
  int64s(values: number[]): string {
    return this.cached(`i64:[${values.join(',')}]`, () =>
      this.initializer(this.fresh('c_i64'), 'int64', [values.length], BigInt64Array.from(values.map((v) => BigInt(v)))),
    );
  }

  /** The model as plain protobuf objects (initializer bytes are views of the caller's arrays). */
  toProto(opts: { opset?: number; producerName?: string } = {}): ModelProto {
    // graph outputs take over the names of the values they expose where possible
    const rename = new Map<string, string>();
    const extra: NodeProto[] = [];
    for (const o of this.outputs) {
      const producer = this.producers.get(o.value);
      if (o.name === o.value) continue;
      if (producer && !rename.has(o.value) && !this.outputs.some((p) => p.name === o.value))
        rename.set(o.value, o.name);
      else
        extra.push({
          opType: 'Identity',
          inputs: [o.value],
          outputs: [o.name],
          name: `Identity_out_${o.name}`,
          domain: '',
          attributes: [],
        });
    }
    const r = (n: string) => rename.get(n) ?? n;
    const nodes = this.nodes.map((n) => ({ ...n, inputs: n.inputs.map(r), outputs: n.outputs.map(r) }));
    for (const e of extra) nodes.push({ ...e, inputs: e.inputs.map(r) });
    return {
      irVersion: ONNX_IR_VERSION,
      producerName: opts.producerName ?? 'splitllm',
      opsetImports: [{ domain: '', version: opts.opset ?? ONNX_OPSET }],
      graph: {
        name: this.name,
        nodes,
        initializers: this.initializers,
        inputs: this.inputs,
        outputs: this.outputs.map(({ name, elemType, dims }) => ({ name, elemType, dims })),
      },
    };
  }

  /** Serialized ModelProto bytes, ready for `InferenceSession.create`. */
  toModel(opts: { opset?: number; producerName?: string } = {}): Uint8Array {
    return encodeModel(this.toProto(opts));
  }
}
