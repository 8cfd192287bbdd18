/**
 * Writes ONNX models (ModelProto, protobuf wire format) from TypeScript, so the
 * project can make its default models and test fixtures without Python. Only
 * the parts of onnx.proto a graph of standard operators needs are written.
 */

export type ElemType =
  | 'float32'
  | 'float16'
  | 'int64'
  | 'int32'
  | 'int8'
  | 'uint8'
  | 'bool'
  | 'float64'
  | 'int16'
  | 'uint16'
  | 'uint32'
  | 'uint64'
  /** For graph inputs and outputs only: initializers of strings are not written. */
  | 'string';

const ELEM_TYPE_CODES: Record<ElemType, number> = {
  float32: 1,
  uint8: 2,
  int8: 3,
  uint16: 4,
  int16: 5,
  int32: 6,
  int64: 7,
  string: 8,
  bool: 9,
  float16: 10,
  float64: 11,
  uint32: 12,
  uint64: 13,
};

export type TensorData =
  Float32Array | Float64Array | BigInt64Array | Int32Array | Int8Array | Uint8Array | Uint16Array;

export interface Tensor {
  type: ElemType;
  dims: number[];
  data: TensorData;
}

export type AttributeValue =
  | { f: number }
  | { i: number }
  | { s: string }
  | { t: Tensor }
  | { floats: number[] }
  | { ints: number[] }
  /** A subgraph (If's then_branch / else_branch). */
  | { g: GraphBuilder };

/** Minimal protobuf writer: varints, length-delimited fields, fixed32 floats. */
class ProtoWriter {
  private chunks: Uint8Array[] = [];
  private size = 0;

  private push(bytes: Uint8Array): void {
    this.chunks.push(bytes);
    this.size += bytes.length;
  }

  private varint(value: number | bigint): void {
    let v = BigInt.asUintN(64, BigInt(value));
    const out: number[] = [];
    while (v >= 0x80n) {
      out.push(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    out.push(Number(v));
    this.push(Uint8Array.from(out));
  }

  private tag(field: number, wireType: number): void {
    this.varint((field << 3) | wireType);
  }

  int(field: number, value: number | bigint): this {
    this.tag(field, 0);
    this.varint(value);
    return this;
  }

  float(field: number, value: number): this {
    this.tag(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, value, true);
    this.push(b);
    return this;
  }

  bytes(field: number, value: Uint8Array): this {
    this.tag(field, 2);
    this.varint(value.length);
    this.push(value);
    return this;
  }

  string(field: number, value: string): this {
    return this.bytes(field, new TextEncoder().encode(value));
  }

  message(field: number, build: (w: ProtoWriter) => void): this {
    const inner = new ProtoWriter();
    build(inner);
    return this.bytes(field, inner.finish());
  }

  packedInts(field: number, values: number[]): this {
    const inner = new ProtoWriter();
    for (const v of values) inner.varint(v);
    return this.bytes(field, inner.finish());
  }

  packedFloats(field: number, values: number[]): this {
    const b = new Uint8Array(values.length * 4);
    const view = new DataView(b.buffer);
    values.forEach((v, i) => view.setFloat32(i * 4, v, true));
    return this.bytes(field, b);
  }

  finish(): Uint8Array {
    const out = new Uint8Array(this.size);
    let offset = 0;
    for (const c of this.chunks) {
      out.set(c, offset);
      offset += c.length;
    }
    return out;
  }
}

function writeTensor(w: ProtoWriter, name: string, tensor: Tensor): void {
  const expected = tensor.dims.reduce((a, b) => a * b, 1);
  if (tensor.data.length !== expected) {
    throw new Error(`tensor ${name}: ${tensor.data.length} values for dims [${tensor.dims.join(', ')}]`);
  }
  for (const d of tensor.dims) w.int(1, d);
  w.int(2, ELEM_TYPE_CODES[tensor.type]);
  w.string(8, name);
  // raw_data is little-endian; typed arrays are little-endian on every platform onnxruntime-node supports.
  w.bytes(9, new Uint8Array(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength));
}

function writeValueInfo(w: ProtoWriter, name: string, type: ElemType, shape: (number | string)[]): void {
  w.string(1, name);
  w.message(2, (typeProto) =>
    typeProto.message(1, (tensorType) => {
      tensorType.int(1, ELEM_TYPE_CODES[type]);
      tensorType.message(2, (shapeProto) => {
        for (const d of shape) {
          shapeProto.message(1, (dim) => (typeof d === 'number' ? dim.int(1, d) : dim.string(2, d)));
        }
      });
    }),
  );
}

function writeAttribute(w: ProtoWriter, name: string, value: AttributeValue): void {
  w.string(1, name);
  if ('f' in value) w.float(2, value.f).int(20, 1);
  else if ('i' in value) w.int(3, value.i).int(20, 2);
  else if ('s' in value) w.string(4, value.s).int(20, 3);
  else if ('t' in value) w.message(5, (t) => writeTensor(t, name, value.t)).int(20, 4);
  else if ('floats' in value) w.packedFloats(7, value.floats).int(20, 6);
  else if ('g' in value) w.message(6, (graph) => value.g.writeGraph(graph)).int(20, 5);
  else w.packedInts(8, value.ints).int(20, 7);
}

interface NodeSpec {
  op: string;
  inputs: string[];
  outputs: string[];
  attributes: Record<string, AttributeValue>;
  name: string;
  domain: string;
}

/** Builds one ONNX graph; `toBytes()` gives a model onnxruntime can load. */
export class GraphBuilder {
  private readonly nodes: NodeSpec[] = [];
  private readonly initializers: [string, Tensor][] = [];
  private readonly initializerNames = new Set<string>();
  private readonly inputs: [string, ElemType, (number | string)[]][] = [];
  private readonly outputs: [string, ElemType, (number | string)[]][] = [];
  private counter = 0;

  /**
   * `prefix` starts every generated name: a subgraph's names must not repeat its outer graph's
   * (ONNX names are in one scope with the names a subgraph sees from outside).
   */
  constructor(
    private readonly name: string,
    private readonly prefix = '',
  ) {}

  hasInitializer(name: string): boolean {
    return this.initializerNames.has(name);
  }

  input(name: string, type: ElemType, shape: (number | string)[]): string {
    this.inputs.push([name, type, shape]);
    return name;
  }

  output(name: string, type: ElemType, shape: (number | string)[]): string {
    this.outputs.push([name, type, shape]);
    return name;
  }

  /** A constant tensor stored in the model (weights). */
  initializer(name: string, tensor: Tensor): string {
    this.initializers.push([name, tensor]);
    this.initializerNames.add(name);
    return name;
  }

  /** A fresh intermediate name. */
  tmp(prefix = 't'): string {
    return `${this.prefix}${prefix}_${this.counter++}`;
  }

  constInt64(values: number[], dims: number[] = [values.length]): string {
    return this.initializer(this.tmp('const_i64'), {
      type: 'int64',
      dims,
      data: BigInt64Array.from(values.map(BigInt)),
    });
  }

  constFloat(values: number[], dims: number[] = [values.length]): string {
    return this.initializer(this.tmp('const_f32'), {
      type: 'float32',
      dims,
      data: Float32Array.from(values),
    });
  }

  /** Adds a node; with no output names given, returns one fresh output. */
  node(
    op: string,
    inputs: string[],
    attributes: Record<string, AttributeValue> = {},
    outputs: string[] = [this.tmp(op.toLowerCase())],
    domain = '',
  ): string {
    this.nodes.push({ op, inputs, outputs, attributes, name: this.tmp(`${op}_node`), domain });
    return outputs[0]!;
  }

  /** A node with several outputs. */
  nodeMulti(
    op: string,
    inputs: string[],
    outputCount: number,
    attributes: Record<string, AttributeValue> = {},
  ) {
    const outputs = Array.from({ length: outputCount }, () => this.tmp(op.toLowerCase()));
    this.node(op, inputs, attributes, outputs);
    return outputs;
  }

  toBytes(options: { opset?: number; producer?: string; doc?: string } = {}): Uint8Array {
    const w = new ProtoWriter();
    w.int(1, 8); // ir_version 8 (onnx 1.10+), understood by every onnxruntime release in use
    w.string(2, options.producer ?? 'maas');
    w.string(3, '0.1.0');
    if (options.doc) w.string(6, options.doc);
    w.message(7, (g) => this.writeGraph(g));
    w.message(8, (opset) => opset.string(1, '').int(2, options.opset ?? 17));
    return w.finish();
  }

  /** The GraphProto: as a model's graph, or as a node's subgraph attribute. */
  writeGraph(g: ProtoWriter): void {
    for (const n of this.nodes) {
      g.message(1, (node) => {
        for (const i of n.inputs) node.string(1, i);
        for (const o of n.outputs) node.string(2, o);
        node.string(3, n.name);
        node.string(4, n.op);
        for (const [k, v] of Object.entries(n.attributes)) node.message(5, (a) => writeAttribute(a, k, v));
        if (n.domain) node.string(7, n.domain);
      });
    }
    g.string(2, this.name);
    for (const [name, tensor] of this.initializers) g.message(5, (t) => writeTensor(t, name, tensor));
    for (const [name, type, shape] of this.inputs) g.message(11, (v) => writeValueInfo(v, name, type, shape));
    for (const [name, type, shape] of this.outputs)
      g.message(12, (v) => writeValueInfo(v, name, type, shape));
  }
}

/** Deterministic pseudo-random numbers (mulberry32), so generated models are identical run to run. */
export class SeededRandom {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Normal(0, std) by Box-Muller. */
  normal(std = 1): number {
    const u = Math.max(this.next(), 1e-12);
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next()) * std;
  }
  /** `count` Normal(0, std) values; uses both Box-Muller outputs, as embedding tables can be millions of values. */
  floats(count: number, std: number): Float32Array {
    const out = new Float32Array(count);
    for (let i = 0; i < count; i += 2) {
      const radius = Math.sqrt(-2 * Math.log(Math.max(this.next(), 1e-12))) * std;
      const angle = 2 * Math.PI * this.next();
      out[i] = radius * Math.cos(angle);
      if (i + 1 < count) out[i + 1] = radius * Math.sin(angle);
    }
    return out;
  }
}
