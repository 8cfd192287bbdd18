/**
 * KServe v2 tensors ⇄ onnxruntime tensors: datatypes, typed contents, raw
 * little-endian bytes. Knows nothing of models; validation against a model's
 * declared inputs is in inference-request.ts.
 */
import type { Tensor } from 'onnxruntime-node';
import { invalidArgument } from '@maas/shared';
import type { Datatype } from '@maas/shared';
import { InferTensorContents } from '@maas/shared/gen/inference/grpc_service';

/** Flat tensor data: a typed array, or strings for BYTES (onnxruntime string tensors). */
export type TensorData =
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | BigUint64Array
  | BigInt64Array
  | Float32Array
  | Float64Array
  | string[];

type TypedArrayConstructor = {
  new (length: number): TensorData;
  new (buffer: ArrayBufferLike, byteOffset: number, length: number): TensorData;
};

export interface DatatypeInfo {
  datatype: Datatype;
  ort: Tensor.Type;
  /** Bytes per element in raw form; 0 for BYTES (each element is length-prefixed). */
  bytes: number;
  /** The typed array onnxruntime takes for this type; undefined for BYTES. */
  array?: TypedArrayConstructor;
  /** The InferTensorContents field this type's values travel in; undefined when raw only (FP16). */
  contentsField?: keyof InferTensorContents;
}

const info = (
  datatype: Datatype,
  ort: Tensor.Type,
  bytes: number,
  array: unknown,
  contentsField?: keyof InferTensorContents,
): DatatypeInfo => ({ datatype, ort, bytes, array: array as TypedArrayConstructor, contentsField });

export const DATATYPES: Record<Datatype, DatatypeInfo> = {
  BOOL: info('BOOL', 'bool', 1, Uint8Array, 'boolContents'),
  UINT8: info('UINT8', 'uint8', 1, Uint8Array, 'uintContents'),
  INT8: info('INT8', 'int8', 1, Int8Array, 'intContents'),
  UINT16: info('UINT16', 'uint16', 2, Uint16Array, 'uintContents'),
  INT16: info('INT16', 'int16', 2, Int16Array, 'intContents'),
  UINT32: info('UINT32', 'uint32', 4, Uint32Array, 'uintContents'),
  INT32: info('INT32', 'int32', 4, Int32Array, 'intContents'),
  UINT64: info('UINT64', 'uint64', 8, BigUint64Array, 'uint64Contents'),
  INT64: info('INT64', 'int64', 8, BigInt64Array, 'int64Contents'),
  // No typed-contents field carries half floats: FP16 travels raw only, as in Triton.
  FP16: info('FP16', 'float16', 2, Uint16Array),
  FP32: info('FP32', 'float32', 4, Float32Array, 'fp32Contents'),
  FP64: info('FP64', 'float64', 8, Float64Array, 'fp64Contents'),
  BYTES: info('BYTES', 'string', 0, undefined, 'bytesContents'),
};

const CONTENTS_FIELD_NAMES: Record<keyof InferTensorContents, string> = {
  boolContents: 'bool_contents',
  intContents: 'int_contents',
  int64Contents: 'int64_contents',
  uintContents: 'uint_contents',
  uint64Contents: 'uint64_contents',
  fp32Contents: 'fp32_contents',
  fp64Contents: 'fp64_contents',
  bytesContents: 'bytes_contents',
};

const ORT_TO_DATATYPE = new Map<string, Datatype>(
  Object.values(DATATYPES).map((d) => [d.ort, d.datatype] as const),
);
export const datatypeOfOrt = (type: string): Datatype | undefined => ORT_TO_DATATYPE.get(type);

export const elementCount = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** A new zeroed (or empty-string) array of `count` elements of the datatype. */
export function allocate(datatype: Datatype, count: number): TensorData {
  const { array } = DATATYPES[datatype];
  return array ? new array(count) : new Array<string>(count).fill('');
}

/** The datatype's representation of a number, for padding and warm-up inputs. */
export function scalarOf(datatype: Datatype, value: number): number | bigint | string {
  if (datatype === 'BYTES') return '';
  if (datatype === 'INT64' || datatype === 'UINT64') return BigInt(Math.trunc(value));
  if (datatype === 'BOOL') return value ? 1 : 0;
  return value;
}

/**
 * Raw bytes → tensor data. Numeric data is viewed in place when the bytes are
 * aligned for the element size (gRPC message buffers usually are not, and then
 * one copy is made). BYTES elements are each a 4-byte little-endian length
 * followed by that many bytes, as in KServe/Triton.
 */
export function fromRaw(name: string, datatype: Datatype, bytes: Uint8Array, count: number): TensorData {
  const d = DATATYPES[datatype];
  if (datatype === 'BYTES') return bytesFromRaw(name, bytes, count);
  if (bytes.byteLength !== count * d.bytes) {
    throw invalidArgument(
      `input '${name}'`,
      `raw contents have ${bytes.byteLength} bytes, shape needs ${count * d.bytes} (${count} × ${d.bytes}-byte ${datatype})`,
    );
  }
  // Uint8Array's slice copies (Buffer's would not).
  const aligned = bytes.byteOffset % d.bytes === 0 ? bytes : Uint8Array.prototype.slice.call(bytes);
  return new d.array!(aligned.buffer, aligned.byteOffset, count);
}

function bytesFromRaw(name: string, bytes: Uint8Array, count: number): string[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const decoder = new TextDecoder();
  const out: string[] = [];
  let at = 0;
  while (at < bytes.byteLength) {
    if (at + 4 > bytes.byteLength)
      throw invalidArgument(
        `input '${name}'`,
        `raw BYTES element ${out.length} has a truncated length prefix`,
      );
    const length = view.getUint32(at, true);
    at += 4;
    if (at + length > bytes.byteLength)
      throw invalidArgument(
        `input '${name}'`,
        `raw BYTES element ${out.length} runs past the end of the data`,
      );
    out.push(decoder.decode(bytes.subarray(at, at + length)));
    at += length;
  }
  if (out.length !== count)
    throw invalidArgument(
      `input '${name}'`,
      `raw contents hold ${out.length} BYTES elements, shape needs ${count}`,
    );
  return out;
}

/** Typed contents (the field of the datatype's family) → tensor data of the datatype. */
export function fromContents(
  name: string,
  datatype: Datatype,
  contents: InferTensorContents | undefined,
  count: number,
): TensorData {
  const d = DATATYPES[datatype];
  if (!d.contentsField) {
    throw invalidArgument(`input '${name}'`, `datatype ${datatype} must be sent in raw_input_contents`);
  }
  const values = (contents?.[d.contentsField] ?? []) as unknown[];
  if (values.length !== count) {
    const elsewhere = contents
      ? (Object.keys(CONTENTS_FIELD_NAMES) as (keyof InferTensorContents)[]).find(
          (f) => f !== d.contentsField && (contents[f]?.length ?? 0) > 0,
        )
      : undefined;
    throw invalidArgument(
      `input '${name}'`,
      `contents.${CONTENTS_FIELD_NAMES[d.contentsField]} has ${values.length} values, shape needs ${count}` +
        (elsewhere
          ? ` (values were sent in ${CONTENTS_FIELD_NAMES[elsewhere]}, which is not for ${datatype})`
          : ''),
    );
  }
  switch (datatype) {
    case 'BOOL':
      return Uint8Array.from(values as boolean[], (b) => (b ? 1 : 0));
    case 'INT64':
    case 'UINT64': {
      const out = datatype === 'INT64' ? new BigInt64Array(count) : new BigUint64Array(count);
      (values as number[]).forEach((v, i) => (out[i] = BigInt(v)));
      return out;
    }
    case 'BYTES': {
      const decoder = new TextDecoder();
      return (values as Uint8Array[]).map((b) => decoder.decode(b));
    }
    default: {
      // Typed arrays wrap out-of-range values silently; a client that sends 300 as INT8 made a mistake.
      const out = (d.array as unknown as { from(v: ArrayLike<number>): TensorData }).from(values as number[]);
      if (datatype !== 'FP32' && datatype !== 'FP64') {
        const at = (values as number[]).findIndex((v, i) => v !== Number((out as ArrayLike<number>)[i]));
        if (at >= 0)
          throw invalidArgument(
            `input '${name}'`,
            `value ${String(values[at])} at ${at} is out of range for ${datatype}`,
          );
      }
      return out;
    }
  }
}

/** Typed contents with every field empty, to fill one of (the generated message's defaults). */
export const emptyContents = (): InferTensorContents => InferTensorContents.fromPartial({});

/** Tensor data → typed contents for a response; undefined for FP16, which has no typed field. */
export function toContents(datatype: Datatype, data: TensorData): InferTensorContents | undefined {
  const d = DATATYPES[datatype];
  if (!d.contentsField) return undefined;
  const contents = emptyContents();
  switch (datatype) {
    case 'BOOL':
      contents.boolContents = Array.from(data as Uint8Array, Boolean);
      break;
    case 'INT64':
    case 'UINT64':
      // forceLong=number in the generated code: beyond 2^53 only raw contents are exact.
      contents[d.contentsField] = Array.from(data as BigInt64Array, (v) => Number(v)) as never;
      break;
    case 'BYTES':
      contents.bytesContents = (data as string[]).map((s) => Buffer.from(s, 'utf8'));
      break;
    default:
      contents[d.contentsField] = Array.from(data as Float32Array) as never;
  }
  return contents;
}

/** Tensor data → raw little-endian bytes, without a copy for numeric data. */
export function toRaw(datatype: Datatype, data: TensorData): Buffer {
  if (datatype === 'BYTES') {
    const parts = (data as string[]).flatMap((s) => {
      const bytes = Buffer.from(s, 'utf8');
      const length = Buffer.alloc(4);
      length.writeUInt32LE(bytes.byteLength);
      return [length, bytes];
    });
    return Buffer.concat(parts);
  }
  const view = data as Exclude<TensorData, string[]>;
  return Buffer.from(view.buffer, view.byteOffset, view.byteLength);
}

/** A tensor of a request or a result: flat row-major data and its full shape. */
export interface NamedTensor {
  name: string;
  datatype: Datatype;
  shape: number[];
  data: TensorData;
}
