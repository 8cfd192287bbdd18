/** Numeric post-processing of model outputs: activations, top-k, pooling, normalisation. */
import type { ModelInferResponse } from '@maas/shared/gen/inference/grpc_service';

export type Activation = 'softmax' | 'sigmoid' | 'none';
export type Pooling = 'none' | 'mean' | 'cls';

/** Scores from one row of logits (numerically stable softmax). */
export function activate(logits: ArrayLike<number>, activation: Activation): Float64Array {
  const out = Float64Array.from(logits);
  if (activation === 'softmax') {
    let max = -Infinity;
    for (const v of out) if (v > max) max = v;
    let sum = 0;
    for (let i = 0; i < out.length; i++) sum += out[i] = Math.exp(out[i]! - max);
    for (let i = 0; i < out.length; i++) out[i]! /= sum;
  } else if (activation === 'sigmoid') {
    for (let i = 0; i < out.length; i++) out[i] = 1 / (1 + Math.exp(-out[i]!));
  }
  return out;
}

/** Indices of the k largest scores, best first; ties keep the lower index first. */
export function topK(scores: ArrayLike<number>, k: number): number[] {
  const n = scores.length;
  const want = Math.min(Math.max(1, k), n);
  if (want === 1) {
    let best = 0;
    for (let i = 1; i < n; i++) if (scores[i]! > scores[best]!) best = i;
    return n === 0 ? [] : [best];
  }
  const indices = Array.from({ length: n }, (_, i) => i);
  indices.sort((a, b) => scores[b]! - scores[a]! || a - b);
  return indices.slice(0, want);
}

/**
 * One vector per row from a [rows, seq, dim] output: the mean over real
 * tokens (the attention mask says which) or the first real token's vector.
 * `mask` is [rows, seq].
 */
export function pool(
  hidden: Float32Array,
  seq: number,
  dim: number,
  mask: ArrayLike<number>,
  row: number,
  pooling: 'mean' | 'cls',
): Float32Array {
  const out = new Float32Array(dim);
  const base = row * seq * dim;
  if (pooling === 'cls') {
    // With left padding the first real token is not at position 0.
    let t = 0;
    while (t < seq - 1 && mask[row * seq + t] === 0) t++;
    out.set(hidden.subarray(base + t * dim, base + (t + 1) * dim));
    return out;
  }
  let count = 0;
  for (let t = 0; t < seq; t++) {
    if (mask[row * seq + t] === 0) continue;
    count++;
    const offset = base + t * dim;
    for (let d = 0; d < dim; d++) out[d]! += hidden[offset + d]!;
  }
  if (count > 0) for (let d = 0; d < dim; d++) out[d]! /= count;
  return out;
}

/** Scales to unit L2 norm in place (a zero vector stays zero). */
export function l2normalize(vector: Float32Array): Float32Array {
  let sum = 0;
  for (const v of vector) sum += v * v;
  const norm = Math.sqrt(sum);
  if (norm > 0) for (let i = 0; i < vector.length; i++) vector[i]! /= norm;
  return vector;
}

/** A flat little-endian INT64 (or INT32) tensor of ids, the raw_input_contents wire form. */
export function integerTensorBytes(values: ArrayLike<number>, datatype: 'INT64' | 'INT32'): Buffer {
  if (datatype === 'INT32') {
    const out = new Int32Array(values.length);
    for (let i = 0; i < values.length; i++) out[i] = values[i]!;
    return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  }
  // Two int32 words per value (low, then sign), which is little-endian INT64 on every platform Node runs
  // on, without a BigInt per id.
  const out = new Int32Array(values.length * 2);
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    out[2 * i] = v;
    out[2 * i + 1] = v < 0 ? -1 : 0;
  }
  return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
}

/** FP32 raw output bytes as a Float32Array (copied: gRPC buffers are not 4-byte aligned). */
export function float32FromBytes(bytes: Uint8Array): Float32Array {
  const out = new Float32Array(bytes.byteLength >>> 2);
  new Uint8Array(out.buffer).set(bytes.subarray(0, out.byteLength));
  return out;
}

/** An FP32 output of a ModelInfer response by name, with its shape; a missing one is the runner's fault. */
export function inferOutput(
  response: ModelInferResponse,
  name: string,
  model: string,
): { shape: number[]; values: Float32Array } {
  const at = response.outputs.findIndex((o) => o.name === name);
  const tensor = response.outputs[at];
  const raw = response.rawOutputContents[at];
  if (!tensor || !raw) throw new Error(`model-runner returned no output '${name}' for ${model}`);
  const shape = tensor.shape.map(Number);
  if (tensor.datatype === 'INT64') {
    // Class indices (ArgMax outputs): exact as float32 below 2^24.
    const ints = new BigInt64Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
    return { shape, values: Float32Array.from(ints, Number) };
  }
  return { shape, values: float32FromBytes(raw) };
}
