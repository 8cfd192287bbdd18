/**
 * The KV-cache layout shared by prefill outputs and the running batch: per
 * layer a key and a value tensor [rows, heads, length, headDim] (the optimum
 * `past_key_values`/`present` shape), each row one sequence, right-aligned:
 * a sequence with `cached` tokens owns the last `cached` positions of its row
 * and the positions before them are padding, masked out by attention_mask 0.
 *
 * Right alignment is what lets a decode step's `present` outputs become the
 * next step's `past` inputs without a copy: every sequence grows by exactly
 * one position at the right end. Rows are copied only when the batch's
 * membership changes.
 */
import * as ort from 'onnxruntime-node';

export interface KvShape {
  numLayers: number;
  numHeads: number;
  headDim: number;
}

/** Where one sequence's keys/values are: the last `cached` positions of `row` in these tensors. */
export interface KvPlace {
  /** Per layer key then value: 2 × numLayers tensors. */
  tensors: ort.Tensor[];
  row: number;
}

export interface KvMember {
  kv?: KvPlace;
  cached: number;
}

/** An empty past for `rows` sequences: the first (prefill) run. */
export function emptyPast(shape: KvShape, rows: number): ort.Tensor[] {
  const empty = new Float32Array(0);
  return Array.from(
    { length: 2 * shape.numLayers },
    () => new ort.Tensor('float32', empty, [rows, shape.numHeads, 0, shape.headDim]),
  );
}

/** Positions in a tensor set (its third dimension). */
export const kvLength = (tensors: ort.Tensor[]): number => tensors[0]!.dims[2]!;

/**
 * True when the members already form a batch as they are: all in one tensor
 * set, member i in row i, and no other rows (a prefill group joining an empty
 * batch, or a decode step's outputs).
 */
export function isPacked(members: readonly KvMember[]): boolean {
  const first = members[0]?.kv?.tensors;
  if (!first || first[0]!.dims[0] !== members.length) return false;
  return members.every((m, i) => m.kv?.tensors === first && m.kv.row === i);
}

/**
 * Copies the members' caches into one new batch, member i in row i, padded
 * on the left to the longest; points each member's `kv` at its new row.
 * Whatever the members were in before (the old batch, prefill outputs) is
 * no longer referenced and is freed.
 */
export function packBatch(shape: KvShape, members: readonly KvMember[]): ort.Tensor[] {
  const { numLayers, numHeads, headDim } = shape;
  const length = members.reduce((m, s) => Math.max(m, s.cached), 0);
  const rows = members.length;
  const tensors: ort.Tensor[] = [];
  for (let t = 0; t < 2 * numLayers; t++) {
    const data = new Float32Array(rows * numHeads * length * headDim);
    members.forEach((member, b) => {
      const { tensors: from, row } = member.kv!;
      const src = from[t]!.data as Float32Array;
      const srcLength = kvLength(from);
      const span = member.cached * headDim;
      for (let h = 0; h < numHeads; h++) {
        const start = ((row * numHeads + h) * srcLength + (srcLength - member.cached)) * headDim;
        const to = ((b * numHeads + h) * length + (length - member.cached)) * headDim;
        data.set(src.subarray(start, start + span), to);
      }
    });
    tensors.push(new ort.Tensor('float32', data, [rows, numHeads, length, headDim]));
  }
  members.forEach((member, row) => (member.kv = { tensors, row }));
  return tensors;
}
