/**
 * A decoder session together with the running batch's KV cache: what the
 * engine's scheduler drives. The scheduler decides (who is admitted, joins,
 * leaves, what token each row feeds); a BatchDecoder runs the model and keeps
 * the cache, so that the cache never has to cross a thread boundary.
 *
 * SessionDecoder does it in the calling thread; WorkerDecoder
 * (worker-decoder.ts) runs a SessionDecoder in a worker thread, so that
 * decode steps leave the runner's event loop free.
 */
import * as ort from 'onnxruntime-node';
import type { ModelConfig } from '@maas/shared';
import { cacheTensorNames, newPositionsOutput } from './new-kv-outputs.js';
import { emptyPast, SlotCache, type KvShape, type KvSource } from './slot-cache.js';
import {
  kvHeads,
  readDecoderSignature,
  USE_CACHE_BRANCH,
  type DecoderSignature,
  type GraphInputs,
} from './decoder-signature.js';
import { logitsOf } from './logits.js';

type Generation = NonNullable<ModelConfig['generation']>;

/** What a decoder needs of an onnxruntime session. */
export interface DecoderSession extends GraphInputs {
  run(feeds: Record<string, ort.Tensor>): Promise<Record<string, ort.OnnxValue>>;
}

/** The inputs every run feeds besides the cache: positions and the merged decoder's branch, where the graph takes them. */
export function decoderFeeds(
  signature: DecoderSignature,
  ids: BigInt64Array,
  mask: BigInt64Array,
  positions: BigInt64Array,
  [rows, length, total]: [number, number, number],
  withPast: boolean,
): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {
    input_ids: new ort.Tensor('int64', ids, [rows, length]),
    attention_mask: new ort.Tensor('int64', mask, [rows, total]),
  };
  if (signature.positionIds) feeds.position_ids = new ort.Tensor('int64', positions, [rows, length]);
  if (signature.useCacheBranch)
    feeds[USE_CACHE_BRANCH] = new ort.Tensor('bool', Uint8Array.of(withPast ? 1 : 0), [1]);
  return feeds;
}

/** The cache's shape and element type for this graph. */
export const kvShapeOf = (g: Generation, signature: DecoderSignature): KvShape => ({
  numLayers: g.numLayers,
  numHeads: kvHeads(g),
  headDim: g.headDim,
  type: signature.kvType,
});

/** A prefill run over left-padded prompts: [rows, length] each. */
export interface PrefillInput {
  ids: BigInt64Array;
  mask: BigInt64Array;
  positions: BigInt64Array;
  rows: number;
  length: number;
}

/** A decode step over rows 0..rows-1 of the batch: each row's input token and position. */
export interface StepInput {
  ids: BigInt64Array;
  positions: BigInt64Array;
}

/**
 * A piece of one long prompt (chunked prefill): run with the keys/values of
 * the pieces before it, which the decoder holds under `sequence` until the
 * sequence joins the batch or is dropped.
 */
export interface ChunkInput {
  sequence: number;
  ids: BigInt64Array;
  positions: BigInt64Array;
  /**
   * On a sequence's first piece: the cached prefix (prefix caching) whose
   * keys/values are its past — the first `count` positions of that entry.
   */
  prefix?: { entry: number; count: number };
}

/** Keys/values to keep as a prefix-cache entry: the first `count` positions of a joining prompt or a finished turn's row. */
export interface KeepPrefix {
  entry: number;
  count: number;
}

/**
 * A prefilled prompt to add to the batch: row `row` of prefill `group`, its
 * last `count` positions; or the `count` positions held for a chunked
 * prefill's `sequence`.
 */
export type JoinEntry = (
  { group: number; row: number; count: number } | { sequence: number; count: number }
) & {
  /** Prefix caching: also keep the prompt's first positions under a new entry. */
  keep?: KeepPrefix;
  /** The sequence ended at its first token: only keep its prefix (if `keep`), and drop what is held of it. */
  keepOnly?: boolean;
};

/** What the batch cache has cost and holds. */
export interface CacheCounters {
  /** Bytes of existing keys/values moved (re-layouts, rows filling a leaver's place). */
  copiedBytes: number;
  /** Bytes of new keys/values written (prompts and generated tokens). */
  writtenBytes: number;
  relayouts: number;
  /** Positions per row that a step attends over (masked beyond each row's own). */
  capacity: number;
}

export interface DecoderOutput {
  /** Per row, the logits of its last position: [rows × vocab]. */
  logits: Float32Array;
  cache: CacheCounters;
}

export interface BatchDecoder {
  /** True when the graph returns only each step's new keys/values (new-kv-outputs.ts), not the whole `present`. */
  readonly newPositionsOnly: boolean;
  /** Runs a prefill; its keys/values are held as `group` until the next join(). */
  prefill(input: PrefillInput): Promise<DecoderOutput & { group: number }>;
  /** Runs a chunk of a long prompt after its earlier chunks; the logits are the chunk's last position's. */
  prefillChunk(input: ChunkInput): Promise<DecoderOutput>;
  /** Drops what a chunked prefill holds (the sequence ended before joining). */
  dropChunked(sequence: number): Promise<void>;
  /** Drops prefix-cache entries (evicted by the engine's PrefixIndex). */
  dropPrefixes(entries: number[]): Promise<void>;
  /** Adds prefilled prompts to the batch, in order (rows rows..rows+n-1; keepOnly ones not), and drops every held prefill run. */
  join(entries: JoinEntry[]): Promise<CacheCounters>;
  /** Removes rows from the batch; the last rows move into their places (returned, as the cache moved them). */
  /** `keep`: rows whose first positions to keep as prefix-cache entries first (a finished conversation turn). */
  leave(
    rows: number[],
    keep?: (KeepPrefix & { row: number })[],
  ): Promise<{ moves: { from: number; to: number }[]; cache: CacheCounters }>;
  /** One decode step over the whole batch; the new keys/values are appended to each row. */
  step(input: StepInput): Promise<DecoderOutput>;
  /** Drops the batch, held prefills and prefix-cache entries (after a failed run). */
  clear(): Promise<void>;
}

export class SessionDecoder implements BatchDecoder {
  readonly newPositionsOnly: boolean;
  private readonly signature: DecoderSignature;
  private readonly kvShape: KvShape;
  private readonly cache: SlotCache;
  private readonly pastNames: string[];
  /** The outputs that carry new keys/values, per layer key then value. */
  private readonly kvOutputNames: string[];
  private readonly prefills = new Map<number, ort.Tensor[]>();
  /** Chunked prefills in progress: each sequence's prompt keys/values so far, in a one-row cache. */
  private readonly chunked = new Map<number, SlotCache>();
  /** Prefix caching: each entry's keys/values, in a one-row cache. */
  private readonly prefixes = new Map<number, SlotCache>();
  private nextGroup = 0;

  constructor(
    private readonly session: DecoderSession,
    private readonly g: Generation,
    modelName: string,
  ) {
    const { past, present } = cacheTensorNames(g);
    this.pastNames = past;
    const outputs = new Set(session.outputNames);
    this.newPositionsOnly = present.every((n) => outputs.has(newPositionsOutput(n)));
    this.kvOutputNames = this.newPositionsOnly ? present.map(newPositionsOutput) : present;
    this.signature = readDecoderSignature(session, g, past, this.kvOutputNames, modelName);
    this.kvShape = kvShapeOf(g, this.signature);
    this.cache = new SlotCache(this.kvShape, g.maxConcurrentSequences);
  }

  async prefill({ ids, mask, positions, rows, length }: PrefillInput) {
    const feeds = decoderFeeds(this.signature, ids, mask, positions, [rows, length, length], false);
    emptyPast(this.kvShape, rows).forEach((t, i) => (feeds[this.pastNames[i]!] = t));
    const out = await this.session.run(feeds);
    // Past of length 0: the new positions and `present` are the same.
    const group = this.nextGroup++;
    this.prefills.set(
      group,
      this.kvOutputNames.map((n) => out[n] as ort.Tensor),
    );
    const vocab = this.g.vocabSize;
    const all = out.logits as ort.Tensor;
    const logits = new Float32Array(rows * vocab);
    for (let b = 0; b < rows; b++) logits.set(logitsOf(all, b * length + length - 1, vocab), b * vocab);
    return { logits, group, cache: this.counters() };
  }

  async prefillChunk({ sequence, ids, positions, prefix }: ChunkInput): Promise<DecoderOutput> {
    const length = ids.length;
    let held = this.chunked.get(sequence);
    if (!held && prefix) {
      const stored = this.prefixes.get(prefix.entry);
      if (!stored) throw new Error(`no prefix-cache entry ${prefix.entry} is held`);
      held = new SlotCache(this.kvShape, 1);
      held.add({ tensors: stored.past(), row: 0, start: 0, count: prefix.count });
    }
    const first = !held;
    held ??= new SlotCache(this.kvShape, 1);
    // After the first chunk the held positions are the past, masked beyond what they hold.
    const capacity = first ? 0 : held.capacity;
    const mask = first ? new BigInt64Array(length).fill(1n) : held.mask(length);
    const feeds = decoderFeeds(this.signature, ids, mask, positions, [1, length, capacity + length], !first);
    (first ? emptyPast(this.kvShape, 1) : held.past()).forEach((t, i) => (feeds[this.pastNames[i]!] = t));
    const out = await this.session.run(feeds);
    const kv = this.kvOutputNames.map((n) => out[n] as ort.Tensor);
    if (first) held.add({ tensors: kv, row: 0, start: 0, count: length });
    else held.append(kv, this.newPositionsOnly ? 0 : capacity, length);
    this.chunked.set(sequence, held);
    const logits = logitsOf(out.logits as ort.Tensor, length - 1, this.g.vocabSize).slice();
    return { logits, cache: this.counters() };
  }

  async dropChunked(sequence: number): Promise<void> {
    this.chunked.delete(sequence);
  }

  async dropPrefixes(entries: number[]): Promise<void> {
    for (const entry of entries) this.prefixes.delete(entry);
  }

  /** Keeps a joining prompt's first positions as a prefix-cache entry. */
  private keepPrefix(keep: KeepPrefix, source: KvSource): void {
    const stored = new SlotCache(this.kvShape, 1);
    stored.add({ ...source, count: keep.count });
    this.prefixes.set(keep.entry, stored);
  }

  async join(entries: JoinEntry[]): Promise<CacheCounters> {
    try {
      for (const entry of entries) {
        if ('sequence' in entry) {
          const held = this.chunked.get(entry.sequence);
          if (!held) throw new Error(`no chunked prefill of sequence ${entry.sequence} is held`);
          this.chunked.delete(entry.sequence);
          const source: KvSource = { tensors: held.past(), row: 0, start: 0, count: entry.count };
          if (entry.keep) this.keepPrefix(entry.keep, source);
          if (!entry.keepOnly) this.cache.add(source);
          continue;
        }
        const { group, row, count } = entry;
        const tensors = this.prefills.get(group);
        if (!tensors) throw new Error(`no prefill ${group} is held`);
        // Left-padded: the prompt is the last `count` positions of its row.
        const source: KvSource = { tensors, row, start: tensors[0]!.dims[2]! - count, count };
        if (entry.keep) this.keepPrefix(entry.keep, source);
        if (!entry.keepOnly) this.cache.add(source);
      }
    } finally {
      this.prefills.clear();
    }
    return this.counters();
  }

  async leave(rows: number[], keep: (KeepPrefix & { row: number })[] = []) {
    if (keep.length > 0) {
      const tensors = this.cache.past();
      for (const k of keep) this.keepPrefix(k, { tensors, row: k.row, start: 0, count: k.count });
    }
    const moves = this.cache.remove(rows);
    return { moves, cache: this.counters() };
  }

  async step({ ids, positions }: StepInput): Promise<DecoderOutput> {
    const rows = this.cache.rows;
    const capacity = this.cache.capacity;
    const feeds = decoderFeeds(
      this.signature,
      ids,
      this.cache.mask(),
      positions,
      [rows, 1, capacity + 1],
      true,
    );
    this.cache.past().forEach((t, i) => (feeds[this.pastNames[i]!] = t));
    const out = await this.session.run(feeds);
    // The new position: the only one of the new-positions outputs, the last of `present`.
    this.cache.append(
      this.kvOutputNames.map((n) => out[n] as ort.Tensor),
      this.newPositionsOnly ? 0 : capacity,
    );
    return { logits: logitsOf(out.logits as ort.Tensor), cache: this.counters() };
  }

  async clear(): Promise<void> {
    this.cache.clear();
    this.prefills.clear();
    this.chunked.clear();
    this.prefixes.clear();
  }

  private counters(): CacheCounters {
    const { copiedBytes, writtenBytes, relayouts, capacity } = this.cache;
    return { copiedBytes, writtenBytes, relayouts, capacity };
  }
}
