/**
 * The engine's batch KV cache: rows join with their own keys/values, leave
 * by moving the last row into their place (one sequence's cache copied, not
 * the batch's), and the capacity grows and shrinks in chunks.
 */
import * as ort from 'onnxruntime-node';
import { CAPACITY_CHUNK, SlotCache, type KvShape } from '../src/generation/slot-cache';

const shape: KvShape = { numLayers: 1, numHeads: 2, headDim: 3, type: 'float32' };
const TENSORS = 2 * shape.numLayers;

/** A prefill output for one sequence: `count` positions whose values encode (tag, tensor, head, position, dim). */
function prefilled(tag: number, count: number): ort.Tensor[] {
  const { numHeads, headDim } = shape;
  return Array.from({ length: TENSORS }, (_, t) => {
    const data = new Float32Array(numHeads * count * headDim);
    for (let h = 0; h < numHeads; h++)
      for (let p = 0; p < count; p++)
        for (let d = 0; d < headDim; d++)
          data[(h * count + p) * headDim + d] = tag * 10_000 + t * 1000 + h * 100 + p * 10 + d;
    return new ort.Tensor('float32', data, [1, numHeads, count, headDim]);
  });
}

/** Row `row`'s cached values as fed to a step, per tensor, head, position. */
function rowValues(cache: SlotCache, row: number): number[][][] {
  const { numHeads, headDim } = shape;
  const n = cache.cachedIn(row);
  return cache.past().map((tensor) => {
    const data = tensor.data as Float32Array;
    return Array.from({ length: numHeads }, (_, h) => {
      const start = (row * numHeads + h) * cache.capacity * headDim;
      return Array.from(data.subarray(start, start + n * headDim));
    });
  });
}

const expected = (tag: number, count: number) => rowValues(fromOnly(tag, count), 0);
function fromOnly(tag: number, count: number): SlotCache {
  const cache = new SlotCache(shape, 1);
  cache.add({ tensors: prefilled(tag, count), row: 0, start: 0, count });
  return cache;
}

const rowBytes = (positions: number) => TENSORS * shape.numHeads * positions * shape.headDim * 4;

describe('SlotCache', () => {
  it('feeds rows as a prefix of its buffers, masks each row to its own positions and the new one', () => {
    const cache = new SlotCache(shape, 4);
    cache.add({ tensors: prefilled(1, 5), row: 0, start: 0, count: 5 });
    // A left-padded prefill row: only its last 2 positions are the sequence's.
    cache.add({ tensors: prefilled(2, 4), row: 0, start: 2, count: 2 });
    expect(cache.rows).toBe(2);
    expect(cache.capacity).toBe(CAPACITY_CHUNK);
    expect(cache.past()[0]!.dims).toEqual([2, shape.numHeads, CAPACITY_CHUNK, shape.headDim]);
    expect(rowValues(cache, 0)).toEqual(expected(1, 5));
    expect(rowValues(cache, 1)[0]![0]).toEqual(expected(2, 4)[0]![0]!.slice(2 * shape.headDim));
    const mask = Array.from(cache.mask(), Number);
    const total = CAPACITY_CHUNK + 1;
    expect(mask.slice(0, total)).toEqual([...Array(5).fill(1), ...Array(total - 6).fill(0), 1]);
    expect(mask.slice(total)).toEqual([...Array(2).fill(1), ...Array(total - 3).fill(0), 1]);
    expect(cache.copiedBytes).toBe(0);
  });

  it('a leaving row is filled by the last row alone: one sequence copied, the others untouched', () => {
    const cache = new SlotCache(shape, 4);
    const lengths = [3, 7, 4, 6];
    lengths.forEach((n, i) => cache.add({ tensors: prefilled(i + 1, n), row: 0, start: 0, count: n }));
    const moves = cache.remove([1]);
    expect(moves).toEqual([{ from: 3, to: 1 }]);
    expect(cache.rows).toBe(3);
    expect(cache.copiedBytes).toBe(rowBytes(6));
    expect(rowValues(cache, 0)).toEqual(expected(1, 3));
    expect(rowValues(cache, 1)).toEqual(expected(4, 6));
    expect(rowValues(cache, 2)).toEqual(expected(3, 4));
    // The last row leaving moves nothing.
    expect(cache.remove([2])).toEqual([]);
    expect(cache.copiedBytes).toBe(rowBytes(6));
    cache.remove([0, 1]);
    expect(cache.rows).toBe(0);
    expect(cache.allocatedBytes).toBe(0);
  });

  it('appends one position per row per step, growing the capacity a chunk at a time', () => {
    const cache = new SlotCache(shape, 2);
    cache.add({ tensors: prefilled(1, 2), row: 0, start: 0, count: 2 });
    cache.add({ tensors: prefilled(2, 1), row: 0, start: 0, count: 1 });
    const steps = CAPACITY_CHUNK + 5;
    for (let s = 0; s < steps; s++) {
      // A step's new keys/values, [rows, heads, 1, headDim]: value = 1e6 + step, per row.
      const fresh = Array.from({ length: TENSORS }, () => {
        const data = new Float32Array(2 * shape.numHeads * shape.headDim);
        data.fill(1e6 + s, 0, shape.numHeads * shape.headDim);
        data.fill(2e6 + s, shape.numHeads * shape.headDim);
        return new ort.Tensor('float32', data, [2, shape.numHeads, 1, shape.headDim]);
      });
      cache.append(fresh, 0);
    }
    expect(cache.cachedIn(0)).toBe(2 + steps);
    expect(cache.cachedIn(1)).toBe(1 + steps);
    expect(cache.capacity).toBe(2 * CAPACITY_CHUNK);
    expect(cache.relayouts).toBe(1);
    const row0 = rowValues(cache, 0)[1]![1]!;
    expect(row0.slice(0, 2 * shape.headDim)).toEqual(expected(1, 2)[1]![1]);
    expect(row0.slice(2 * shape.headDim, 3 * shape.headDim)).toEqual(Array(shape.headDim).fill(1e6));
    expect(row0.slice(-shape.headDim)).toEqual(Array(shape.headDim).fill(1e6 + steps - 1));
    // The long rows leave: the capacity shrinks back to what the row left needs.
    cache.remove([0]);
    expect(cache.capacity).toBe(2 * CAPACITY_CHUNK);
    const short = new SlotCache(shape, 2);
    short.add({ tensors: prefilled(1, 3 * CAPACITY_CHUNK), row: 0, start: 0, count: 3 * CAPACITY_CHUNK });
    short.add({ tensors: prefilled(2, 4), row: 0, start: 0, count: 4 });
    short.remove([0]);
    expect(short.capacity).toBe(CAPACITY_CHUNK);
    expect(rowValues(short, 0)).toEqual(expected(2, 4));
  });
});
