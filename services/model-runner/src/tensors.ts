/**
 * KServe v2 tensors ⇄ onnxruntime tensors: datatypes, typed contents, raw
 * little-endian bytes, and validation against the model's declared inputs.
 */
import type { Tensor } from 'onnxruntime-node';
import { invalidArgument } from '@maas/shared';
import type { Datatype, TensorSpec } from '@maas/shared';
import type { InferTensorContents } from '@maas/shared/gen/inference/grpc_service';

type OrtType = Tensor.Type;

export interface DatatypeInfo {
  ort: OrtType;
  bytes: number;
  array: new (buffer: ArrayBufferLike, byteOffset: number, length: number) => ArrayLike<unknown>;
}

export const DATATYPES: Partial<Record<Datatype, DatatypeInfo>> = {
  BOOL: { ort: 'bool', bytes: 1, array: Uint8Array },
  UINT8: { ort: 'uint8', bytes: 1, array: Uint8Array },
  INT8: { ort: 'int8', bytes: 1, array: Int8Array },
  UINT16: { ort: 'uint16', bytes: 2, array: Uint16Array },
  INT16: { ort: 'int16', bytes: 2, array: Int16Array },
  UINT32: { ort: 'uint32', bytes: 4, array: Uint32Array },
  INT32: { ort: 'int32', bytes: 4, array: Int32Array },
  UINT64: { ort: 'uint64', bytes: 8, array: BigUint64Array },
  INT64: { ort: 'int64', bytes: 8, array: BigInt64Array },
  FP16: { ort: 'float16', bytes: 2, array: Uint16Array },
  FP32: { ort: 'float32', bytes: 4, array: Float32Array },
  FP64: { ort: 'float64', bytes: 8, array: Float64Array },
};

const ORT_TO_DATATYPE = new Map<string, Datatype>(
  Object.entries(DATATYPES).map(([datatype, info]) => [info.ort, datatype as Datatype]),
);
export const datatypeOfOrt = (type: string): Datatype | undefined => ORT_TO_DATATYPE.get(type);

/** A request tensor after validation: flat data in the model's element type and its full shape. */
export interface InputTensor {
  name: string;
  datatype: Datatype;
  shape: number[];
  data: ArrayLike<unknown> & { length: number };
}

export const elementCount = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/** Raw bytes → a typed array, copying only when the buffer is misaligned for the element size. */
export function fromRaw(
  name: string,
  info: DatatypeInfo,
  bytes: Uint8Array,
  count: number,
): ArrayLike<unknown> & { length: number } {
  if (bytes.byteLength !== count * info.bytes) {
    throw invalidArgument(
      `input '${name}'`,
      `raw contents have ${bytes.byteLength} bytes, shape needs ${count * info.bytes}`,
    );
  }
  const aligned = bytes.byteOffset % info.bytes === 0 ? bytes : bytes.slice();
  return new info.array(aligned.buffer, aligned.byteOffset, count) as ArrayLike<unknown> & { length: number };
}

/** Typed contents (the field for the datatype's family) → a typed array of the datatype. */
export function fromContents(
  name: string,
  datatype: Datatype,
  contents: InferTensorContents | undefined,
  count: number,
): ArrayLike<unknown> & { length: number } {
  const c = contents;
  let values: ArrayLike<unknown> | undefined;
  let out: ArrayLike<unknown> & { length: number };
  switch (datatype) {
    case 'BOOL':
      values = c?.boolContents;
      out = Uint8Array.from((values ?? []) as boolean[], (b) => (b ? 1 : 0));
      break;
    case 'INT8':
    case 'INT16':
    case 'INT32':
      values = c?.intContents;
      out = (datatype === 'INT8' ? Int8Array : datatype === 'INT16' ? Int16Array : Int32Array).from(
        (values ?? []) as number[],
      );
      break;
    case 'UINT8':
    case 'UINT16':
    case 'UINT32':
      values = c?.uintContents;
      out = (datatype === 'UINT8' ? Uint8Array : datatype === 'UINT16' ? Uint16Array : Uint32Array).from(
        (values ?? []) as number[],
      );
      break;
    case 'INT64':
      values = c?.int64Contents;
      out = BigInt64Array.from((values ?? []) as number[], (v) => BigInt(v));
      break;
    case 'UINT64':
      values = c?.uint64Contents;
      out = BigUint64Array.from((values ?? []) as number[], (v) => BigInt(v));
      break;
    case 'FP32':
      values = c?.fp32Contents;
      out = Float32Array.from((values ?? []) as number[]);
      break;
    case 'FP64':
      values = c?.fp64Contents;
      out = Float64Array.from((values ?? []) as number[]);
      break;
    default:
      throw invalidArgument(`input '${name}'`, `datatype ${datatype} must be sent in raw_input_contents`);
  }
  if (out.length !== count) {
    throw invalidArgument(`input '${name}'`, `has ${out.length} values, shape needs ${count}`);
  }
  return out;
}

/** Checks a request's shape against the model's declared dims (with the batch dimension first when batching). */
export function checkShape(spec: TensorSpec, shape: number[], maxBatchSize: number): void {
  const expected = maxBatchSize > 0 ? [-1, ...spec.dims] : spec.dims;
  const fail = (why: string) => {
    throw invalidArgument(
      `input '${spec.name}'`,
      `shape [${shape.join(', ')}] ${why}, expected [${expected.join(', ')}]`,
    );
  };
  if (shape.length !== expected.length) fail(`has ${shape.length} dimensions`);
  shape.forEach((d, i) => {
    if (!Number.isInteger(d) || d < 0) fail(`has an invalid dimension ${d}`);
    if (expected[i] !== -1 && expected[i] !== d) fail(`has ${d} at dimension ${i}`);
  });
  if (maxBatchSize > 0 && shape[0]! > maxBatchSize)
    fail(`has batch ${shape[0]} over maxBatchSize ${maxBatchSize}`);
}

/** Output data → typed contents for the response. */
export function toContents(datatype: Datatype, data: ArrayLike<unknown>): Partial<InferTensorContents> {
  const arr = Array.from(data as ArrayLike<number | bigint>);
  switch (datatype) {
    case 'BOOL':
      return { boolContents: arr.map(Boolean) };
    case 'INT8':
    case 'INT16':
    case 'INT32':
      return { intContents: arr as number[] };
    case 'UINT8':
    case 'UINT16':
    case 'UINT32':
      return { uintContents: arr as number[] };
    case 'INT64':
      return { int64Contents: arr.map(Number) };
    case 'UINT64':
      return { uint64Contents: arr.map(Number) };
    case 'FP32':
      return { fp32Contents: arr as number[] };
    case 'FP64':
      return { fp64Contents: arr as number[] };
    default:
      return {};
  }
}

export function toRaw(
  data: ArrayLike<unknown> & { buffer?: ArrayBufferLike; byteOffset?: number; byteLength?: number },
): Buffer {
  const view = data as unknown as ArrayBufferView;
  return Buffer.from(view.buffer, view.byteOffset, view.byteLength);
}
