/**
 * Logits as float32, whatever the graph returns: float16 exports (optimum's
 * `--dtype fp16`) return float16 logits, which onnxruntime-node hands over as
 * their bits in a Uint16Array (Node 20 has no Float16Array). Sampling works
 * on float32.
 */
import type * as ort from 'onnxruntime-node';

/**
 * Positions [position, position + 1) × vocab of a [.., vocab] logits tensor
 * (all of it when `vocab` is left out): a view for float32, a converted copy
 * for float16.
 */
export function logitsOf(tensor: ort.Tensor, position = 0, vocab?: number): Float32Array {
  const start = position * (vocab ?? 0);
  const end = vocab === undefined ? tensor.size : start + vocab;
  if (tensor.type === 'float32') return (tensor.data as Float32Array).subarray(start, end);
  if (tensor.type === 'float16') return float16ToFloat32((tensor.data as Uint16Array).subarray(start, end));
  throw new Error(`logits are ${tensor.type}; float32 or float16 expected`);
}

/** IEEE 754 half-precision bits to float32 values. */
export function float16ToFloat32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) {
    const h = bits[i]!;
    const sign = h & 0x8000 ? -1 : 1;
    const exponent = (h >> 10) & 0x1f;
    const fraction = h & 0x3ff;
    out[i] =
      exponent === 0
        ? sign * 2 ** -14 * (fraction / 1024) // subnormal
        : exponent === 0x1f
          ? fraction
            ? NaN
            : sign * Infinity
          : sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
  }
  return out;
}
