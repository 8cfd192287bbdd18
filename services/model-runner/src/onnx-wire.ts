/**
 * Reading and writing ONNX models at the protobuf wire level, for the load-time
 * graph edits (generation/new-kv-outputs.ts, generation/split-attention.ts,
 * best-class-outputs.ts): fields are
 * kept as the bytes they were read, so what an edit does not touch is written
 * back unchanged (weights included) without a full onnx.proto binding.
 */
import { BinaryReader, BinaryWriter, WireType } from '@bufbuild/protobuf/wire';

/** Field numbers of onnx.proto used here. */
export const MODEL_GRAPH = 7;
export const GRAPH_NODE = 1;
export const GRAPH_INITIALIZER = 5;
export const GRAPH_OUTPUT = 12;
export const NODE_INPUT = 1;
export const NODE_OUTPUT = 2;
export const NODE_OP_TYPE = 4;
export const NODE_ATTRIBUTE = 5;
export const NODE_DOMAIN = 7;
export const ATTRIBUTE_NAME = 1;
export const ATTRIBUTE_I = 3;
export const ATTRIBUTE_INTS = 8;
export const ATTRIBUTE_TYPE = 20;
const ATTRIBUTE_TYPE_INT = 2;
const ATTRIBUTE_TYPE_INTS = 7;
const NODE_NAME = 3;
const TENSOR_DIMS = 1;
const TENSOR_DATA_TYPE = 2;
const TENSOR_INT64_DATA = 7;
export const TENSOR_NAME = 8;
const TENSOR_INT64 = 7;
export const VALUE_INFO_NAME = 1;
export const VALUE_INFO_TYPE = 2;
export const TENSOR_EXTERNAL_DATA = 13;

export interface Field {
  no: number;
  /** The whole field, tag included, as it was read. */
  raw: Uint8Array;
  /** For length-delimited fields: the contents. */
  body?: Uint8Array;
  /** For varint fields: the value. */
  varint?: number;
}

export function fields(bytes: Uint8Array): Field[] {
  const reader = new BinaryReader(bytes);
  const out: Field[] = [];
  while (reader.pos < reader.len) {
    const start = reader.pos;
    const [no, wireType] = reader.tag();
    let body: Uint8Array | undefined;
    let varint: number | undefined;
    if (wireType === WireType.LengthDelimited) body = reader.bytes();
    else if (wireType === WireType.Varint) varint = Number(reader.int64());
    else reader.skip(wireType, no);
    out.push({ no, raw: bytes.subarray(start, reader.pos), body, varint });
  }
  return out;
}

const decoder = new TextDecoder();
export const text = (f: Field) => decoder.decode(f.body);

export interface Node {
  opType: string;
  domain: string;
  inputs: string[];
  outputs: string[];
  /** Integer attributes by name. */
  ints: Map<string, number>;
  /** Integer-list attributes (a Transpose's perm) by name. */
  lists: Map<string, number[]>;
}

export function parseNode(body: Uint8Array): Node {
  const node: Node = { opType: '', domain: '', inputs: [], outputs: [], ints: new Map(), lists: new Map() };
  for (const f of fields(body)) {
    if (f.no === NODE_INPUT) node.inputs.push(text(f));
    else if (f.no === NODE_OUTPUT) node.outputs.push(text(f));
    else if (f.no === NODE_OP_TYPE) node.opType = text(f);
    else if (f.no === NODE_DOMAIN) node.domain = text(f);
    else if (f.no === NODE_ATTRIBUTE) {
      let name = '';
      let value: number | undefined;
      const list: number[] = [];
      for (const a of fields(f.body!)) {
        if (a.no === ATTRIBUTE_NAME) name = text(a);
        else if (a.no === ATTRIBUTE_I) value = a.varint;
        else if (a.no === ATTRIBUTE_INTS && a.varint !== undefined) list.push(a.varint);
        else if (a.no === ATTRIBUTE_INTS && a.body) {
          // Packed.
          const reader = new BinaryReader(a.body);
          while (reader.pos < reader.len) list.push(Number(reader.int64()));
        }
      }
      if (value !== undefined) node.ints.set(name, value);
      if (list.length > 0) node.lists.set(name, list);
    }
  }
  return node;
}

/** A node to add to a graph: integer attributes as numbers, integer lists as arrays. */
export interface NewNode {
  opType: string;
  name: string;
  inputs: string[];
  outputs: string[];
  attributes?: Record<string, number | number[]>;
}

/** Writes a NodeProto as a graph's node field. */
export function writeNode(w: BinaryWriter, node: NewNode): void {
  w.tag(GRAPH_NODE, WireType.LengthDelimited).fork();
  for (const input of node.inputs) w.tag(NODE_INPUT, WireType.LengthDelimited).string(input);
  for (const output of node.outputs) w.tag(NODE_OUTPUT, WireType.LengthDelimited).string(output);
  w.tag(NODE_NAME, WireType.LengthDelimited).string(node.name);
  w.tag(NODE_OP_TYPE, WireType.LengthDelimited).string(node.opType);
  for (const [name, value] of Object.entries(node.attributes ?? {})) {
    w.tag(NODE_ATTRIBUTE, WireType.LengthDelimited).fork();
    w.tag(ATTRIBUTE_NAME, WireType.LengthDelimited).string(name);
    if (typeof value === 'number') {
      w.tag(ATTRIBUTE_I, WireType.Varint).int64(value);
      w.tag(ATTRIBUTE_TYPE, WireType.Varint).int32(ATTRIBUTE_TYPE_INT);
    } else {
      for (const v of value) w.tag(ATTRIBUTE_INTS, WireType.Varint).int64(v);
      w.tag(ATTRIBUTE_TYPE, WireType.Varint).int32(ATTRIBUTE_TYPE_INTS);
    }
    w.join();
  }
  w.join();
}

/** Writes a 1-D int64 TensorProto as a graph's initializer field. */
export function writeInt64Initializer(w: BinaryWriter, name: string, values: bigint[]): void {
  w.tag(GRAPH_INITIALIZER, WireType.LengthDelimited).fork();
  w.tag(TENSOR_DIMS, WireType.Varint).int64(values.length);
  w.tag(TENSOR_DATA_TYPE, WireType.Varint).int32(TENSOR_INT64);
  for (const v of values) w.tag(TENSOR_INT64_DATA, WireType.Varint).int64(v);
  w.tag(TENSOR_NAME, WireType.LengthDelimited).string(name);
  w.join();
}

/** Writes a graph output (ValueInfoProto) of a tensor with this element type and an open shape. */
export function writeGraphOutput(w: BinaryWriter, name: string, elemType: number | undefined): void {
  w.tag(GRAPH_OUTPUT, WireType.LengthDelimited).fork();
  w.tag(VALUE_INFO_NAME, WireType.LengthDelimited).string(name);
  if (elemType !== undefined) {
    w.tag(VALUE_INFO_TYPE, WireType.LengthDelimited).fork();
    w.tag(1, WireType.LengthDelimited).fork(); // TypeProto.tensor_type
    w.tag(1, WireType.Varint).int32(elemType); // elem_type
    w.join().join();
  }
  w.join();
}

/** TensorProto.DataType values used here. */
export const ELEM_FLOAT = 1;
export const ELEM_INT64 = 7;

const MODEL_OPSET_IMPORT = 8;

/** The model's opset of the default (ai.onnx) domain. */
export function opsetVersion(model: Uint8Array): number | undefined {
  for (const f of fields(model)) {
    if (f.no !== MODEL_OPSET_IMPORT) continue;
    const parts = fields(f.body!);
    const domain = parts.find((p) => p.no === 1);
    if (!domain || text(domain) === '' || text(domain) === 'ai.onnx')
      return parts.find((p) => p.no === 2)?.varint;
  }
  return undefined;
}

const TENSOR_RAW_DATA = 9;
const ATTRIBUTE_T = 5;

/** A TensorProto's int64 values, when it is a small int64 tensor (constants: shapes, axes). */
function int64Values(tensor: Uint8Array): { name: string; values: number[] } | undefined {
  const parts = fields(tensor);
  if (parts.find((p) => p.no === TENSOR_DATA_TYPE)?.varint !== TENSOR_INT64) return undefined;
  const nameField = parts.find((p) => p.no === TENSOR_NAME);
  const values: number[] = [];
  for (const p of parts) {
    if (p.no === TENSOR_INT64_DATA && p.varint !== undefined) values.push(p.varint);
    else if (p.no === TENSOR_INT64_DATA && p.body) {
      const reader = new BinaryReader(p.body);
      while (reader.pos < reader.len) values.push(Number(reader.int64()));
    } else if (p.no === TENSOR_RAW_DATA && p.body && p.body.length % 8 === 0 && p.body.length <= 64) {
      const view = new DataView(p.body.buffer, p.body.byteOffset, p.body.byteLength);
      for (let i = 0; i < p.body.length; i += 8) values.push(Number(view.getBigInt64(i, true)));
    }
  }
  return { name: nameField ? text(nameField) : '', values };
}

/** The graph's small int64 constants by name: initializers and Constant nodes' values. */
export function int64Constants(graph: Field[], nodes: Node[]): Map<string, number[]> {
  const constants = new Map<string, number[]>();
  for (const f of graph) {
    if (f.no !== GRAPH_INITIALIZER) continue;
    const found = int64Values(f.body!);
    if (found) constants.set(found.name, found.values);
  }
  const constantNodes = graph.filter((f) => f.no === GRAPH_NODE);
  constantNodes.forEach((f, i) => {
    if (nodes[i]?.opType !== 'Constant') return;
    for (const a of fields(f.body!)) {
      if (a.no !== NODE_ATTRIBUTE) continue;
      const tensor = fields(a.body!).find((x) => x.no === ATTRIBUTE_T);
      const found = tensor && int64Values(tensor.body!);
      if (found) constants.set(nodes[i]!.outputs[0]!, found.values);
    }
  });
  return constants;
}

/** TypeProto.tensor_type.elem_type. */
export function tensorElemType(typeProto: Uint8Array): number | undefined {
  const tensorType = fields(typeProto).find((f) => f.no === 1);
  const elem = tensorType && fields(tensorType.body!).find((f) => f.no === 1);
  return elem?.varint;
}

/** A ValueInfoProto's name (a graph input's or output's). */
export const valueInfoName = (f: Field) => text(fields(f.body!).find((i) => i.no === VALUE_INFO_NAME)!);

/** The model with its graph replaced (every other field as it was read). */
export function withGraph(top: Field[], graph: Uint8Array): Uint8Array {
  const out = new BinaryWriter();
  for (const f of top) {
    if (f.no === MODEL_GRAPH) out.tag(MODEL_GRAPH, WireType.LengthDelimited).bytes(graph);
    else out.raw(f.raw);
  }
  return out.finish();
}

/** Where each tensor of these nodes is computed, following Identity nodes back. */
export function identitySource(nodes: Node[]): (name: string) => { name: string; node?: Node } {
  const producer = new Map<string, Node>();
  for (const node of nodes) for (const output of node.outputs) producer.set(output, node);
  return (name) => {
    for (let node = producer.get(name); node?.opType === 'Identity' && node.domain === '';) {
      name = node.inputs[0]!;
      node = producer.get(name);
    }
    return { name, node: producer.get(name) };
  };
}
