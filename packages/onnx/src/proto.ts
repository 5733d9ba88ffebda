/**
 * The part of ONNX's protobuf schema (onnx/onnx.proto, proto2) that the project writes, as
 * plain objects, with an encoder and a decoder.
 *
 * Only what float32/int graphs need: ModelProto, OperatorSetIdProto, GraphProto, NodeProto,
 * AttributeProto (FLOAT, INT, STRING, TENSOR, FLOATS, INTS, STRINGS), TensorProto (raw_data
 * only) and ValueInfoProto (tensor types, fixed or symbolic dims).
 *
 * The encoder keeps byte fields and nested messages by reference while it builds (every
 * message knows its size as it grows) and writes the whole model into one buffer at the end, so
 * a tensor's raw data is copied exactly once (a GPT-2 segment carries hundreds of MB of weights).
 * Raw data is little-endian, as on every host this runs on. The decoder exists to check the
 * encoder (tests decode its output); it accepts packed and unpacked repeated scalars.
 *
 * Hand-written rather than protobufjs (or onnx-proto, its generated ONNX messages): the tab's
 * wasm engine builds its graphs with this code, and those libraries add 84 to 121 KB of minified
 * JavaScript to that chunk, about doubling it; protobufjs loading the schema at run time also
 * compiles its coders with `new Function`, which a Content-Security-Policy without
 * 'unsafe-eval' forbids. protobufjs's generated coders write the same bytes as this encoder.
 */

/** TensorProto.DataType values used here. */
export const TensorDataType = {
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  INT32: 6,
  INT64: 7,
  BOOL: 9,
  FLOAT16: 10,
  DOUBLE: 11,
} as const;

/** AttributeProto.AttributeType values. */
export const AttributeType = {
  FLOAT: 1,
  INT: 2,
  STRING: 3,
  TENSOR: 4,
  GRAPH: 5,
  FLOATS: 6,
  INTS: 7,
  STRINGS: 8,
} as const;
export type AttributeTypeCode = (typeof AttributeType)[keyof typeof AttributeType];

export interface TensorProto {
  name: string;
  /** a TensorDataType value */
  dataType: number;
  dims: number[];
  /** little-endian element bytes */
  rawData: Uint8Array;
}

export interface AttributeProto {
  name: string;
  type: AttributeTypeCode;
  f?: number;
  i?: number;
  s?: string;
  t?: TensorProto;
  floats?: number[];
  ints?: number[];
  strings?: string[];
}

export interface NodeProto {
  opType: string;
  inputs: string[];
  outputs: string[];
  name: string;
  /** '' is the default ONNX domain */
  domain: string;
  attributes: AttributeProto[];
}

/** A tensor-typed graph input or output; a string dim is symbolic (dim_param). */
export interface ValueInfoProto {
  name: string;
  elemType: number;
  dims: (number | string)[];
}

export interface GraphProto {
  name: string;
  nodes: NodeProto[];
  initializers: TensorProto[];
  inputs: ValueInfoProto[];
  outputs: ValueInfoProto[];
}

export interface OperatorSetId {
  domain: string;
  version: number;
}

export interface ModelProto {
  irVersion: number;
  producerName: string;
  opsetImports: OperatorSetId[];
  graph: GraphProto;
}

// Field numbers, from onnx.proto.
const F = {
  model: { irVersion: 1, producerName: 2, graph: 7, opsetImport: 8 },
  opset: { domain: 1, version: 2 },
  graph: { node: 1, name: 2, initializer: 5, input: 11, output: 12 },
  node: { input: 1, output: 2, name: 3, opType: 4, attribute: 5, domain: 7 },
  attr: { name: 1, f: 2, i: 3, s: 4, t: 5, floats: 7, ints: 8, strings: 9, type: 20 },
  tensor: { dims: 1, dataType: 2, name: 8, rawData: 9 },
  valueInfo: { name: 1, type: 2 },
  typeProto: { tensorType: 1 },
  tensorType: { elemType: 1, shape: 2 },
  shape: { dim: 1 },
  dim: { value: 1, param: 2 },
} as const;

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LEN = 2;
const WIRE_FIXED32 = 5;

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

// ------------------------------------------------------------------------------------ encoder

/**
 * One protobuf message under construction. Small fields go into a byte list; byte fields and
 * nested messages are kept by reference, so nothing large is copied until `encode`.
 */
class PbMessage {
  private readonly parts: Array<Uint8Array | PbMessage> = [];
  private pending: number[] = [];
  private length = 0;

  get size(): number {
    return this.length + this.pending.length;
  }

  private byte(b: number): void {
    this.pending.push(b);
  }

  private varint(v: number | bigint): void {
    if (typeof v === 'number' && v >= 0 && v <= Number.MAX_SAFE_INTEGER) {
      while (v >= 0x80) {
        this.byte((v % 0x80) | 0x80);
        v = Math.floor(v / 0x80);
      }
      this.byte(v);
      return;
    }
    // negative int64: two's complement, always 10 bytes
    let x = BigInt.asUintN(64, BigInt(v));
    while (x >= 0x80n) {
      this.byte(Number(x & 0x7fn) | 0x80);
      x >>= 7n;
    }
    this.byte(Number(x));
  }

  private tag(field: number, wire: number): void {
    this.varint(field * 8 + wire);
  }

  private flush(): void {
    if (this.pending.length === 0) return;
    this.parts.push(Uint8Array.from(this.pending));
    this.length += this.pending.length;
    this.pending = [];
  }

  int(field: number, v: number): this {
    if (!Number.isInteger(v)) throw new Error(`protobuf: integer field ${field} got ${v}`);
    this.tag(field, WIRE_VARINT);
    this.varint(v);
    return this;
  }

  float(field: number, v: number): this {
    this.tag(field, WIRE_FIXED32);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    for (const x of b) this.byte(x);
    return this;
  }

  bytes(field: number, data: Uint8Array): this {
    this.tag(field, WIRE_LEN);
    this.varint(data.length);
    if (data.length < 64) {
      for (const x of data) this.byte(x);
    } else {
      this.flush();
      this.parts.push(data);
      this.length += data.length;
    }
    return this;
  }

  string(field: number, s: string): this {
    return this.bytes(field, utf8.encode(s));
  }

  message(field: number, m: PbMessage): this {
    this.tag(field, WIRE_LEN);
    this.varint(m.size);
    this.flush();
    this.parts.push(m);
    this.length += m.size;
    return this;
  }

  encode(): Uint8Array {
    const out = new Uint8Array(this.size);
    const end = this.writeTo(out, 0);
    if (end !== out.length) throw new Error('protobuf: size mismatch while encoding');
    return out;
  }

  private writeTo(out: Uint8Array, offset: number): number {
    this.flush();
    for (const p of this.parts) {
      if (p instanceof PbMessage) offset = p.writeTo(out, offset);
      else {
        out.set(p, offset);
        offset += p.length;
      }
    }
    return offset;
  }
}

function tensorMessage(t: TensorProto): PbMessage {
  const m = new PbMessage();
  for (const d of t.dims) m.int(F.tensor.dims, d);
  m.int(F.tensor.dataType, t.dataType);
  if (t.name) m.string(F.tensor.name, t.name);
  m.bytes(F.tensor.rawData, t.rawData);
  return m;
}

function attributeMessage(a: AttributeProto): PbMessage {
  const m = new PbMessage().string(F.attr.name, a.name);
  const missing = (): never => {
    throw new Error(`attribute "${a.name}" of type ${a.type} has no value`);
  };
  switch (a.type) {
    case AttributeType.FLOAT:
      m.float(F.attr.f, a.f ?? missing());
      break;
    case AttributeType.INT:
      m.int(F.attr.i, a.i ?? missing());
      break;
    case AttributeType.STRING:
      m.string(F.attr.s, a.s ?? missing());
      break;
    case AttributeType.TENSOR:
      m.message(F.attr.t, tensorMessage(a.t ?? missing()));
      break;
    case AttributeType.FLOATS:
      for (const v of a.floats ?? missing()) m.float(F.attr.floats, v);
      break;
    case AttributeType.INTS:
      for (const v of a.ints ?? missing()) m.int(F.attr.ints, v);
      break;
    case AttributeType.STRINGS:
      for (const v of a.strings ?? missing()) m.string(F.attr.strings, v);
      break;
    default:
      throw new Error(`attribute "${a.name}": type ${a.type as number} is not supported by this writer`);
  }
  m.int(F.attr.type, a.type);
  return m;
}

function nodeMessage(n: NodeProto): PbMessage {
  const m = new PbMessage();
  for (const i of n.inputs) m.string(F.node.input, i);
  for (const o of n.outputs) m.string(F.node.output, o);
  if (n.name) m.string(F.node.name, n.name);
  m.string(F.node.opType, n.opType);
  for (const a of n.attributes) m.message(F.node.attribute, attributeMessage(a));
  if (n.domain) m.string(F.node.domain, n.domain);
  return m;
}

function valueInfoMessage(v: ValueInfoProto): PbMessage {
  const shape = new PbMessage();
  for (const d of v.dims) {
    const dim = new PbMessage();
    if (typeof d === 'number') dim.int(F.dim.value, d);
    else dim.string(F.dim.param, d);
    shape.message(F.shape.dim, dim);
  }
  // the shape is always written, so a scalar ([]) is rank 0 and not "unknown rank"
  const tensorType = new PbMessage().int(F.tensorType.elemType, v.elemType).message(F.tensorType.shape, shape);
  const type = new PbMessage().message(F.typeProto.tensorType, tensorType);
  return new PbMessage().string(F.valueInfo.name, v.name).message(F.valueInfo.type, type);
}

/** Serializes a model; each initializer's raw data is copied once, into the returned buffer. */
export function encodeModel(model: ModelProto): Uint8Array {
  const g = new PbMessage();
  for (const n of model.graph.nodes) g.message(F.graph.node, nodeMessage(n));
  g.string(F.graph.name, model.graph.name);
  for (const t of model.graph.initializers) g.message(F.graph.initializer, tensorMessage(t));
  for (const v of model.graph.inputs) g.message(F.graph.input, valueInfoMessage(v));
  for (const v of model.graph.outputs) g.message(F.graph.output, valueInfoMessage(v));
  const m = new PbMessage().int(F.model.irVersion, model.irVersion);
  if (model.producerName) m.string(F.model.producerName, model.producerName);
  m.message(F.model.graph, g);
  for (const o of model.opsetImports) {
    const op = new PbMessage();
    if (o.domain) op.string(F.opset.domain, o.domain);
    m.message(F.model.opsetImport, op.int(F.opset.version, o.version));
  }
  return m.encode();
}

// ------------------------------------------------------------------------------------ decoder

interface PbField {
  no: number;
  wire: number;
  /** varint value (wire 0) */
  varint: bigint;
  /** the field's bytes: payload of a length-delimited field, or the 4/8 fixed bytes */
  data: Uint8Array;
}

function readFields(buf: Uint8Array): PbField[] {
  const out: PbField[] = [];
  let pos = 0;
  const readVarint = (): bigint => {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      if (pos >= buf.length) throw new Error('protobuf: truncated varint');
      const b = buf[pos++];
      result |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return result;
      shift += 7n;
      if (shift > 63n) throw new Error('protobuf: varint too long');
    }
  };
  const take = (n: number): Uint8Array => {
    if (pos + n > buf.length) throw new Error('protobuf: truncated field');
    const d = buf.subarray(pos, pos + n);
    pos += n;
    return d;
  };
  const empty = new Uint8Array(0);
  while (pos < buf.length) {
    const key = readVarint();
    const no = Number(key >> 3n);
    const wire = Number(key & 7n);
    switch (wire) {
      case WIRE_VARINT:
        out.push({ no, wire, varint: readVarint(), data: empty });
        break;
      case WIRE_FIXED64:
        out.push({ no, wire, varint: 0n, data: take(8) });
        break;
      case WIRE_LEN: {
        const n = Number(readVarint());
        out.push({ no, wire, varint: 0n, data: take(n) });
        break;
      }
      case WIRE_FIXED32:
        out.push({ no, wire, varint: 0n, data: take(4) });
        break;
      default:
        throw new Error(`protobuf: unsupported wire type ${wire} (field ${no})`);
    }
  }
  return out;
}

const int64 = (v: bigint): number => Number(BigInt.asIntN(64, v));
const str = (f: PbField): string => utf8Decoder.decode(f.data);
const f32 = (d: Uint8Array, o = 0): number => new DataView(d.buffer, d.byteOffset + o, 4).getFloat32(0, true);

/** Repeated int64 field values, packed or not. */
function ints(f: PbField): number[] {
  if (f.wire === WIRE_VARINT) return [int64(f.varint)];
  const vals: number[] = [];
  let pos = 0;
  const d = f.data;
  while (pos < d.length) {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      const b = d[pos++];
      result |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) break;
      shift += 7n;
    }
    vals.push(int64(result));
  }
  return vals;
}

/** Repeated float field values, packed or not. */
function floats(f: PbField): number[] {
  const vals: number[] = [];
  for (let o = 0; o + 4 <= f.data.length; o += 4) vals.push(f32(f.data, o));
  return vals;
}

function decodeTensor(buf: Uint8Array): TensorProto {
  const t: TensorProto = { name: '', dataType: 0, dims: [], rawData: new Uint8Array(0) };
  for (const f of readFields(buf)) {
    if (f.no === F.tensor.dims) t.dims.push(...ints(f));
    else if (f.no === F.tensor.dataType) t.dataType = int64(f.varint);
    else if (f.no === F.tensor.name) t.name = str(f);
    else if (f.no === F.tensor.rawData) t.rawData = f.data;
  }
  return t;
}

function decodeAttribute(buf: Uint8Array): AttributeProto {
  const a: AttributeProto = { name: '', type: AttributeType.INT };
  let type = 0;
  for (const f of readFields(buf)) {
    switch (f.no) {
      case F.attr.name:
        a.name = str(f);
        break;
      case F.attr.f:
        a.f = f32(f.data);
        break;
      case F.attr.i:
        a.i = int64(f.varint);
        break;
      case F.attr.s:
        a.s = str(f);
        break;
      case F.attr.t:
        a.t = decodeTensor(f.data);
        break;
      case F.attr.floats:
        a.floats ??= [];
        a.floats.push(...floats(f));
        break;
      case F.attr.ints:
        a.ints ??= [];
        a.ints.push(...ints(f));
        break;
      case F.attr.strings:
        a.strings ??= [];
        a.strings.push(str(f));
        break;
      case F.attr.type:
        type = int64(f.varint);
        break;
    }
  }
  a.type = type as AttributeTypeCode;
  // an empty repeated field is absent on the wire; give the declared type its empty list
  if (a.type === AttributeType.FLOATS) a.floats ??= [];
  if (a.type === AttributeType.INTS) a.ints ??= [];
  if (a.type === AttributeType.STRINGS) a.strings ??= [];
  return a;
}

function decodeNode(buf: Uint8Array): NodeProto {
  const n: NodeProto = { opType: '', inputs: [], outputs: [], name: '', domain: '', attributes: [] };
  for (const f of readFields(buf)) {
    if (f.no === F.node.input) n.inputs.push(str(f));
    else if (f.no === F.node.output) n.outputs.push(str(f));
    else if (f.no === F.node.name) n.name = str(f);
    else if (f.no === F.node.opType) n.opType = str(f);
    else if (f.no === F.node.attribute) n.attributes.push(decodeAttribute(f.data));
    else if (f.no === F.node.domain) n.domain = str(f);
  }
  return n;
}

function decodeValueInfo(buf: Uint8Array): ValueInfoProto {
  const v: ValueInfoProto = { name: '', elemType: 0, dims: [] };
  const sub = (b: Uint8Array, no: number) => readFields(b).filter((f) => f.no === no);
  for (const f of readFields(buf)) {
    if (f.no === F.valueInfo.name) v.name = str(f);
    else if (f.no === F.valueInfo.type) {
      for (const tt of sub(f.data, F.typeProto.tensorType)) {
        for (const g of readFields(tt.data)) {
          if (g.no === F.tensorType.elemType) v.elemType = int64(g.varint);
          else if (g.no === F.tensorType.shape) {
            for (const dim of sub(g.data, F.shape.dim)) {
              for (const d of readFields(dim.data)) {
                if (d.no === F.dim.value) v.dims.push(int64(d.varint));
                else if (d.no === F.dim.param) v.dims.push(str(d));
              }
            }
          }
        }
      }
    }
  }
  return v;
}

function decodeGraph(buf: Uint8Array): GraphProto {
  const g: GraphProto = { name: '', nodes: [], initializers: [], inputs: [], outputs: [] };
  for (const f of readFields(buf)) {
    if (f.no === F.graph.node) g.nodes.push(decodeNode(f.data));
    else if (f.no === F.graph.name) g.name = str(f);
    else if (f.no === F.graph.initializer) g.initializers.push(decodeTensor(f.data));
    else if (f.no === F.graph.input) g.inputs.push(decodeValueInfo(f.data));
    else if (f.no === F.graph.output) g.outputs.push(decodeValueInfo(f.data));
  }
  return g;
}

/** Parses a serialized ModelProto (the fields above; others are skipped). Raw data are views into `bytes`. */
export function decodeModel(bytes: Uint8Array): ModelProto {
  const m: ModelProto = {
    irVersion: 0,
    producerName: '',
    opsetImports: [],
    graph: { name: '', nodes: [], initializers: [], inputs: [], outputs: [] },
  };
  for (const f of readFields(bytes)) {
    if (f.no === F.model.irVersion) m.irVersion = int64(f.varint);
    else if (f.no === F.model.producerName) m.producerName = str(f);
    else if (f.no === F.model.graph) m.graph = decodeGraph(f.data);
    else if (f.no === F.model.opsetImport) {
      const o: OperatorSetId = { domain: '', version: 0 };
      for (const g of readFields(f.data)) {
        if (g.no === F.opset.domain) o.domain = str(g);
        else if (g.no === F.opset.version) o.version = int64(g.varint);
      }
      m.opsetImports.push(o);
    }
  }
  return m;
}

/** A tensor's elements as a typed array (a copy, so it is aligned). */
export function tensorValues(t: TensorProto): Float32Array | Int32Array | BigInt64Array | Uint8Array {
  const copy = t.rawData.slice();
  switch (t.dataType) {
    case TensorDataType.FLOAT:
      return new Float32Array(copy.buffer);
    case TensorDataType.INT32:
      return new Int32Array(copy.buffer);
    case TensorDataType.INT64:
      return new BigInt64Array(copy.buffer);
    case TensorDataType.UINT8:
    case TensorDataType.BOOL:
      return copy;
    default:
      throw new Error(`tensor "${t.name}": data type ${t.dataType} is not supported here`);
  }
}
