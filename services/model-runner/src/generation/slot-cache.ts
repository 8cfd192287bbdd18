/**
 * The running batch's KV cache, owned by its decoder (batch-decoder.ts): per layer a key and a
 * value buffer laid out as the graph's `past` inputs, [rows, heads,
 * capacity, headDim]. Sequence i of the batch lives in row i; its cached
 * tokens fill positions 0..cached-1 of its row and `attention_mask` marks
 * them, so a row's unused positions are masked like padding. Attention gives
 * masked keys no weight, and each key already carries its position (from
 * `position_ids`), so where in the row a key sits does not matter.
 *
 * What this buys over feeding `present` back as the next `past`:
 * - a decode step writes only its new position per row (a few KB), instead
 *   of onnxruntime-node copying the whole cache into fresh JS memory as an
 *   output (with the graph edit of new-kv-outputs.ts);
 * - a sequence joining writes only its own prompt's keys/values; one leaving
 *   moves the last row into its place (one sequence's cache), never the whole
 *   batch;
 * - the rows fed to a step are a prefix of the buffers: no copy to form it.
 *
 * The buffers hold a row for every sequence the batch may hold (memory:
 * rows × capacity × bytes per token of cache), so a join never re-lays them
 * out. The capacity grows in chunks of positions as the longest sequence grows
 * and shrinks when it leaves (the only copies of the whole cache: once per
 * chunk of steps, counted in `copiedBytes`). A step attends over the
 * capacity, so a chunk bounds the masked positions computed per row.
 */
import * as ort from 'onnxruntime-node';
import type { KvDatatype } from './decoder-signature.js';

export interface KvShape {
  numLayers: number;
  /** Key/value heads (fewer than the query heads under grouped-query attention). */
  numHeads: number;
  headDim: number;
  /** The graph's past/present element type; float16 is held as its bits, in a Uint16Array. */
  type: KvDatatype;
}

/** A cache buffer: float32 values, or float16 bits (what onnxruntime-node takes and returns for float16). */
type KvBuffer = Float32Array | Uint16Array;

const allocate = (type: KvDatatype, length: number): KvBuffer =>
  type === 'float16' ? new Uint16Array(length) : new Float32Array(length);

/** Positions added or dropped at a time: re-layouts stay rare, masked positions per row stay few. */
export const CAPACITY_CHUNK = 32;

/** An empty past for `rows` sequences: the first (prefill) run. */
export function emptyPast(shape: KvShape, rows: number): ort.Tensor[] {
  const empty = allocate(shape.type, 0);
  return Array.from(
    { length: 2 * shape.numLayers },
    () => new ort.Tensor(shape.type, empty, [rows, shape.numHeads, 0, shape.headDim]),
  );
}

/** Where to read new keys/values: positions [start, start + count) of a row of these tensors. */
export interface KvSource {
  /** Per layer key then value, [rows, heads, length, headDim]. */
  tensors: ort.Tensor[];
  row: number;
  start: number;
  count: number;
}

export class SlotCache {
  /** Per layer key then value. */
  private buffers: KvBuffer[] = [];
  /** Positions per row in the buffers: the past length a step feeds. */
  capacity = 0;
  /** Tokens cached per row (rows 0..rows-1 are in use). */
  private readonly cached: number[] = [];
  /** Bytes moved within the cache (re-layouts, rows moved into a leaver's place): not new keys/values. */
  copiedBytes = 0;
  /** Bytes of new keys/values written (prompts and generated tokens). */
  writtenBytes = 0;
  relayouts = 0;

  constructor(
    private readonly shape: KvShape,
    private readonly maxRows: number,
  ) {
    this.elementBytes = shape.type === 'float16' ? 2 : 4;
  }

  private readonly elementBytes: number;

  get rows(): number {
    return this.cached.length;
  }

  cachedIn(row: number): number {
    return this.cached[row]!;
  }

  /** Bytes the buffers hold. */
  get allocatedBytes(): number {
    return this.buffers.reduce((sum, b) => sum + b.byteLength, 0);
  }

  /** The past inputs of a decode step over rows 0..rows-1 (views of the buffers, no copy). */
  past(): ort.Tensor[] {
    const { numHeads, headDim } = this.shape;
    const size = this.rows * numHeads * this.capacity * headDim;
    return this.buffers.map(
      (b) =>
        new ort.Tensor(this.shape.type, b.subarray(0, size), [this.rows, numHeads, this.capacity, headDim]),
    );
  }

  /**
   * attention_mask of a run over these rows: each row's cached positions and
   * `added` new ones (positions `capacity`..; one for a decode step, a chunk
   * of prompt for a chunked prefill).
   */
  mask(added = 1): BigInt64Array {
    const total = this.capacity + added;
    const mask = new BigInt64Array(this.rows * total);
    this.cached.forEach((n, b) => {
      mask.fill(1n, b * total, b * total + n);
      mask.fill(1n, b * total + this.capacity, (b + 1) * total);
    });
    return mask;
  }

  /** Adds a row holding a prefilled sequence's keys/values; returns its row. */
  add(from: KvSource): number {
    const row = this.rows;
    this.cached.push(0);
    this.fit(row + 1, from.count);
    this.write(row, from);
    return row;
  }

  /** After a run: appends each row's `count` new positions (one per decode step), read from position `at` of `tensors`' row. */
  append(tensors: ort.Tensor[], at: number, count = 1): void {
    this.fit(this.rows, Math.max(...this.cached) + count);
    for (let row = 0; row < this.rows; row++) this.write(row, { tensors, row, start: at, count });
  }

  /**
   * Removes rows (sequences that left): the last rows move into their places,
   * so the rows in use stay a prefix. Returns, for each row that moved, its
   * old and new row.
   */
  remove(rows: number[]): { from: number; to: number }[] {
    const moves: { from: number; to: number }[] = [];
    for (const row of [...rows].sort((a, b) => b - a)) {
      const last = this.rows - 1;
      if (row !== last) {
        this.moveRow(last, row);
        moves.push({ from: last, to: row });
      }
      this.cached.pop();
    }
    if (this.rows === 0) this.clear();
    else this.fit(this.rows, 0);
    return moves;
  }

  /** Drops every row (the batch failed). */
  clear(): void {
    this.cached.length = 0;
    this.buffers = [];
    this.capacity = 0;
  }

  /** Copies `from`'s positions onto the end of `row`'s cached positions. */
  private write(row: number, from: KvSource): void {
    const { numHeads, headDim } = this.shape;
    const length = from.tensors[0]!.dims[2]!;
    const at = this.cached[row]!;
    const span = from.count * headDim;
    for (let t = 0; t < this.buffers.length; t++) {
      const src = from.tensors[t]!.data as KvBuffer;
      const dst = this.buffers[t]!;
      for (let h = 0; h < numHeads; h++) {
        const s = ((from.row * numHeads + h) * length + from.start) * headDim;
        dst.set(src.subarray(s, s + span), ((row * numHeads + h) * this.capacity + at) * headDim);
      }
    }
    this.cached[row] = at + from.count;
    this.writtenBytes += this.buffers.length * numHeads * span * this.elementBytes;
  }

  private moveRow(from: number, to: number): void {
    const { numHeads, headDim } = this.shape;
    const span = this.cached[from]! * headDim;
    for (const b of this.buffers) {
      for (let h = 0; h < numHeads; h++) {
        const s = (from * numHeads + h) * this.capacity * headDim;
        b.copyWithin((to * numHeads + h) * this.capacity * headDim, s, s + span);
      }
    }
    this.cached[to] = this.cached[from]!;
    this.copiedBytes += this.buffers.length * numHeads * span * this.elementBytes;
  }

  /**
   * Re-lays the buffers out when `positions` positions per row (at least
   * what every row holds) do not fit, or when the capacity exceeds what is
   * needed by two chunks or more.
   */
  private fit(rows: number, positions: number): void {
    positions = Math.max(positions, ...this.cached, 1);
    const wanted = Math.ceil(positions / CAPACITY_CHUNK) * CAPACITY_CHUNK;
    const capacity =
      positions > this.capacity || this.capacity - wanted >= 2 * CAPACITY_CHUNK ? wanted : this.capacity;
    // Rows for every sequence the batch may hold, from the start: growing
    // them would re-lay the whole cache out while the batch fills.
    if (rows > this.maxRows) throw new Error(`the batch cache holds at most ${this.maxRows} rows`);
    // After clear() the capacity is 0, below any wanted one: the buffers are allocated again.
    if (capacity === this.capacity) return;
    const { numHeads, headDim } = this.shape;
    const buffers = Array.from({ length: 2 * this.shape.numLayers }, () =>
      allocate(this.shape.type, this.maxRows * numHeads * capacity * headDim),
    );
    let copied = 0;
    for (let t = 0; t < buffers.length && this.buffers.length > 0; t++) {
      const src = this.buffers[t]!;
      this.cached.forEach((n, row) => {
        for (let h = 0; h < numHeads; h++) {
          const s = (row * numHeads + h) * this.capacity * headDim;
          buffers[t]!.set(src.subarray(s, s + n * headDim), (row * numHeads + h) * capacity * headDim);
          copied += n * headDim * this.elementBytes;
        }
      });
    }
    if (this.buffers.length > 0) this.relayouts++;
    this.copiedBytes += copied;
    this.buffers = buffers;
    this.capacity = capacity;
  }
}
