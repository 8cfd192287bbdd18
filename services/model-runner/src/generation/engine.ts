/**
 * KV-cache generation with continuous batching for one decoder model version
 * (design notes: README.md beside this file).
 *
 * One scheduler loop per engine. Between two decode steps it retires finished
 * and cancelled sequences (their cache is dropped at once), admits waiting
 * ones while the concurrency and cache budgets allow, prefills them
 * (left-padded, several per run) and adds them to the batch; then one decode
 * step advances every running sequence by one token. The model and the batch
 * KV cache are a BatchDecoder's (batch-decoder.ts): in this thread, or in a
 * worker (worker-decoder.ts, the runner's way).
 */
import { status } from '@grpc/grpc-js';
import { invalidArgument, resourceExhausted, StatusError, unavailable } from '@maas/shared';
import type { Logger, ModelConfig } from '@maas/shared';
import type { GenerationMetrics } from './metrics.js';
import type { BatchDecoder, CacheCounters, JoinEntry } from './batch-decoder.js';
import { PrefixIndex, type PrefixHit } from './prefix-index.js';
import { randomSeed, SequenceRandom, TokenSampler, type SamplingOptions } from './sampling.js';

export type { SamplingOptions } from './sampling.js';

export interface GenerationRequest {
  promptIds: number[];
  /** Already resolved (0 → the config's default) by the caller. */
  maxNewTokens: number;
  sampling: SamplingOptions;
  stopTokenIds: number[];
  ignoreEos: boolean;
  /** Lower is admitted first (-100..100, checked by the caller); 0 when left out. */
  priority?: number;
  /** Aborted when the client cancels or the deadline passes. */
  signal: AbortSignal;
  requestId?: string;
}

export type FinishReason = 'length' | 'eos' | 'stop' | 'cancelled';

export interface GenerationResult {
  finishReason: FinishReason;
  promptTokens: number;
  /** Leading prompt tokens whose keys/values came from the prefix cache (not prefilled). */
  cachedPromptTokens: number;
  generatedTokens: number;
  queueMs: number;
  timeToFirstTokenMs: number;
  totalMs: number;
  decodeTokensPerSecond: number;
}

export interface GenerationEngineOptions {
  modelName: string;
  modelVersion: string;
  /** The model and the batch cache: a WorkerDecoder (the runner's way: steps leave the event loop free) or a SessionDecoder. */
  decoder: BatchDecoder;
  config: ModelConfig;
  metrics: GenerationMetrics;
  logger: Logger;
}

export interface GenerationStats {
  /** Sequences holding a slot: in the running batch or being prefilled to join it. */
  running: number;
  waiting: number;
  /** Tokens whose keys/values are held for those sequences (padding not counted). */
  cachedTokens: number;
}

/** What the batch cache has cost (as of the decoder's last answer): the benchmark's view of it. */
export interface CacheStats extends CacheCounters {
  /** True when the graph returns only each step's new keys/values (new-kv-outputs.ts), not the whole `present`. */
  newPositionsOnly: boolean;
}

/**
 * Prompt tokens (padding included) per prefill run. A prefill stalls the
 * running batch (and, with a decoder in this thread, the event loop); 512
 * tokens already amortise the weights well.
 */
const PREFILL_TOKENS_PER_RUN = 512;
/** Prefill returns logits for every prompt position: keep that tensor under 128 MB. */
const PREFILL_LOGITS_PER_RUN = 2 ** 25;

type SequenceState = 'waiting' | 'prefilling' | 'running' | 'done';

/** A turn's prefilled sequences: those joining the batch, and what the decoder holds of those that ended at their first token. */
interface Prefilled {
  joining: Sequence[];
  ended: JoinEntry[];
}

interface Sequence {
  /** The engine's id: what the decoder holds a chunked prefill under. */
  id: number;
  request: GenerationRequest;
  onTokens(ids: number[]): void;
  resolve(result: GenerationResult): void;
  reject(error: Error): void;
  onAbort(): void;
  state: SequenceState;
  random: SequenceRandom;
  /** Prompt and generated ids, for the repetition penalty. */
  seen: Set<number>;
  /** Cached tokens reserved against maxCachedTokens from admission to the end: prompt + maxNewTokens. */
  reserved: number;
  /** Tokens whose keys/values are in the cache. */
  cached: number;
  /** Between prefill and joining the batch: its prefill run and row there. */
  prefilled?: { group: number; row: number };
  /** Prefix caching: the cached prefix its first prompt piece runs after (until that piece runs). */
  prefix?: PrefixHit;
  /** Prompt tokens the prefix cache gave it. */
  cachedPromptTokens: number;
  /** Prefilled piece by piece: the decoder holds its prompt's keys/values so far under its id. */
  pieceHeld?: boolean;
  /** The last sampled token: the next step's input. */
  next: number;
  /** Sampled, not yet handed to onTokens (send() does, while the next step computes). */
  unsent: number[];
  /** Every generated token, in order (their count: the tokens generated); with the prompt, what a conversation's next turn starts with. */
  generatedIds: number[];
  finish?: FinishReason;
  arrivedAt: number;
  admittedAt?: number;
  firstTokenAt?: number;
  lastTokenAt?: number;
}

export class GenerationEngine {
  private readonly waiting: Sequence[] = [];
  /** The running batch, member i in row i of the batch cache. */
  private running: Sequence[] = [];
  private readonly decoder: BatchDecoder;
  /** The batch cache as of the decoder's last answer. */
  private cache: CacheCounters = { copiedBytes: 0, writtenBytes: 0, relayouts: 0, capacity: 0 };
  private copiedReported = 0;
  /** The decoder holds prefill runs that the next join() adds to the batch (or drops). */
  private prefillsHeld = false;
  /** Admitted and being prefilled: they hold a slot but are not in the batch yet. */
  private joining: Sequence[] = [];
  /**
   * A prompt longer than a turn's prefill budget, prefilled a chunk per turn
   * between decode steps (one at a time): it holds a slot, and the decoder
   * holds its keys/values so far.
   */
  private chunking: Sequence | undefined;
  private nextId = 0;
  /** Prefix caching: which prompt prefixes the decoder keeps keys/values of. */
  private readonly prefixes: PrefixIndex;
  /** Entries the index evicted that the decoder still holds: dropped after the next join or leave. */
  private readonly evicted: number[] = [];
  private reservedTokens = 0;
  private loop: Promise<void> | undefined;
  private closed = false;
  private readonly g: NonNullable<ModelConfig['generation']>;
  private readonly sampler: TokenSampler;
  private readonly labels: { model: string; version: string };
  private readonly prefillTokensPerRun: number;

  constructor(private readonly options: GenerationEngineOptions) {
    const g = options.config.generation;
    if (!g) throw new Error(`model ${options.modelName} has no generation section`);
    this.g = g;
    this.sampler = new TokenSampler(g.vocabSize);
    this.labels = { model: options.modelName, version: options.modelVersion };
    this.decoder = options.decoder;
    this.prefixes = new PrefixIndex(g.prefixBlockTokens, g.prefixCacheTokens);
    this.prefillTokensPerRun = Math.max(
      1,
      Math.min(PREFILL_TOKENS_PER_RUN, Math.floor(PREFILL_LOGITS_PER_RUN / g.vocabSize)),
    );
  }

  stats(): GenerationStats {
    let cachedTokens = 0;
    for (const seq of this.running) cachedTokens += seq.cached;
    for (const seq of this.joining) cachedTokens += seq.cached;
    cachedTokens += this.chunking?.cached ?? 0;
    return { running: this.slotsHeld(), waiting: this.waiting.length, cachedTokens };
  }

  /** Sequences holding a slot: running, being prefilled, or part-way through a chunked prefill. */
  private slotsHeld(): number {
    return this.running.length + this.joining.length + (this.chunking ? 1 : 0);
  }

  cacheStats(): CacheStats {
    return { ...this.cache, newPositionsOnly: this.decoder.newPositionsOnly };
  }

  /**
   * Resolves when the sequence ends; onTokens gets the tokens as they come.
   * Rejects at once with INVALID_ARGUMENT when prompt + maxNewTokens cannot
   * fit the context or the cache budget, RESOURCE_EXHAUSTED when the waiting
   * queue is full, UNAVAILABLE once closing; later with INTERNAL when
   * onnxruntime fails on this sequence's run.
   */
  generate(request: GenerationRequest, onTokens: (ids: number[]) => void): Promise<GenerationResult> {
    const refusal = this.refusal(request);
    if (refusal) return Promise.reject(refusal);
    return new Promise((resolve, reject) => {
      const seq: Sequence = {
        id: this.nextId++,
        request,
        onTokens,
        resolve,
        reject,
        onAbort: () => this.abort(seq),
        state: 'waiting',
        random: new SequenceRandom(request.sampling.seed ?? randomSeed()),
        seen: new Set(request.promptIds),
        reserved: request.promptIds.length + request.maxNewTokens,
        cached: 0,
        cachedPromptTokens: 0,
        next: -1,
        unsent: [],
        generatedIds: [],
        arrivedAt: performance.now(),
      };
      this.options.metrics.promptTokens.inc(this.labels, request.promptIds.length);
      // An aborted signal fires no more 'abort' events: such a request ends before it queues.
      if (request.signal.aborted) {
        this.end(seq, 'cancelled');
        return;
      }
      this.waiting.push(seq);
      request.signal.addEventListener('abort', seq.onAbort, { once: true });
      this.updateGauges();
      this.wake();
    });
  }

  /** Stops taking work: waiting sequences are refused (UNAVAILABLE); running ones finish, or are cancelled when forced. */
  async close(options: { force?: boolean } = {}): Promise<void> {
    this.closed = true;
    for (const seq of this.waiting.splice(0)) {
      this.release(seq);
      seq.reject(unavailable(`model ${this.labels.model} version ${this.labels.version} is unloading`));
    }
    if (options.force) for (const seq of this.inFlight()) seq.finish ??= 'cancelled';
    this.updateGauges();
    await this.loop;
  }

  private refusal(request: GenerationRequest): StatusError | undefined {
    const { model, version } = this.labels;
    if (this.closed) return unavailable(`model ${model} version ${version} is unloading`);
    const { promptIds, maxNewTokens } = request;
    if (promptIds.length === 0) return invalidArgument('prompt_ids', 'must not be empty');
    if (!(Number.isInteger(maxNewTokens) && maxNewTokens >= 1))
      return invalidArgument('max_new_tokens', `must be a positive integer, got ${maxNewTokens}`);
    const needed = promptIds.length + maxNewTokens;
    if (needed > this.g.maxContextLength) {
      return invalidArgument(
        'max_new_tokens',
        `prompt (${promptIds.length}) + max_new_tokens (${maxNewTokens}) exceeds the context length ${this.g.maxContextLength}`,
      );
    }
    if (needed > this.g.maxCachedTokens) {
      return invalidArgument(
        'max_new_tokens',
        `prompt (${promptIds.length}) + max_new_tokens (${maxNewTokens}) exceeds the KV-cache budget ${this.g.maxCachedTokens} of model ${model}`,
      );
    }
    // Sequences that arrived since the scheduler last ran wait here too, though free slots will take
    // them at its next turn: count against the queue only those the free slots cannot.
    const freeSlots = Math.max(0, this.g.maxConcurrentSequences - this.slotsHeld());
    if (this.waiting.length >= this.g.maxQueuedSequences + freeSlots) {
      this.options.metrics.rejected.inc(this.labels);
      return resourceExhausted(
        `model ${model}: ${this.waiting.length} sequences already wait for a slot (limit ${this.g.maxQueuedSequences})`,
        100,
      );
    }
    return undefined;
  }

  /** A waiting sequence leaves the queue at once; a running one at the next step boundary. */
  private abort(seq: Sequence): void {
    if (seq.state === 'waiting') {
      this.waiting.splice(this.waiting.indexOf(seq), 1);
      this.end(seq, 'cancelled');
      this.updateGauges();
    } else {
      seq.finish ??= 'cancelled';
    }
  }

  /**
   * Starts the scheduler unless it runs. It starts one event-loop turn later,
   * so that requests arriving together are prefilled together.
   */
  private wake(): void {
    this.loop ??= new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => this.schedule())
      .catch((error: unknown) => {
        // A bug, not a model error (those fail their run's sequences): fail what is in flight
        // rather than spin on it; waiting sequences get a fresh start.
        const inFlight = this.inFlight().filter((s) => s.state !== 'done');
        this.running = [];
        this.joining = [];
        this.chunking = undefined;
        void this.clearDecoder();
        this.fail(inFlight, error, 'scheduling');
      })
      .finally(() => {
        this.loop = undefined;
        if (this.hasWork()) this.wake();
      });
  }

  private inFlight(): Sequence[] {
    return [...this.running, ...this.joining, ...(this.chunking ? [this.chunking] : [])];
  }

  private hasWork(): boolean {
    return this.waiting.length > 0 || this.running.length > 0 || this.chunking !== undefined;
  }

  private async schedule(): Promise<void> {
    while (this.hasWork()) {
      await this.retire();
      await this.join(await this.admit());
      this.updateGauges();
      if (this.running.length > 0) {
        await this.step();
        continue;
      }
      // Cannot happen while generate() refuses what the budget can never hold; never spin on it.
      // (Any other sequence waiting with nothing running is admitted at the next turn: it may
      // have arrived while this one awaited the decoder.)
      const seq = this.waiting.length > 0 ? this.nextWaiting() : undefined;
      if (seq && seq.reserved > this.g.maxCachedTokens) {
        this.waiting.splice(this.waiting.indexOf(seq), 1);
        this.release(seq);
        seq.reject(resourceExhausted(`model ${this.labels.model}: sequence does not fit the cache budget`));
      }
    }
  }

  /**
   * Ends the running sequences that finished or were cancelled. The batch's
   * last rows move into their places (the cache moves the same rows).
   */
  private async retire(): Promise<void> {
    const leaving: number[] = [];
    this.running.forEach((seq, row) => {
      if (seq.request.signal.aborted) seq.finish ??= 'cancelled';
      if (seq.finish) leaving.push(row);
    });
    if (leaving.length === 0) return;
    const ended = leaving.map((row) => this.running[row]!);
    // Prefix caching: a finished sequence's prompt and generated tokens are kept, so that a
    // conversation's next turn (this prompt, this answer, a new message) prefills only the message.
    const keep = leaving.flatMap((row) => {
      const seq = this.running[row]!;
      if (seq.finish === 'cancelled') return [];
      // The cache holds the prompt and the generated tokens fed back so far (the last one is not).
      const tokens = [...seq.request.promptIds, ...seq.generatedIds].slice(0, seq.cached);
      const kept = this.prefixes.insert(tokens);
      if (!kept) return [];
      this.evicted.push(...kept.evicted);
      return [{ row, entry: kept.entry, count: kept.count }];
    });
    const started = performance.now();
    const { moves, cache } = await this.decoder.leave(leaving, keep);
    for (const { from, to } of moves) this.running[to] = this.running[from]!;
    this.running.length -= leaving.length;
    this.cacheChanged(started, cache);
    for (const seq of ended) this.end(seq, seq.finish!);
    this.updateGauges();
    await this.dropEvicted();
  }

  /** After the cache is cleared (a failed run): nothing the decoder held is known to be there. */
  private async clearDecoder(): Promise<void> {
    this.prefillsHeld = false;
    this.prefixes.clear();
    this.evicted.length = 0;
    await this.decoder.clear().catch(() => undefined);
  }

  /** Drops the entries the index evicted, once the decoder no longer needs them (after a join or leave that kept others). */
  private async dropEvicted(): Promise<void> {
    const evicted = this.evicted.splice(0);
    if (evicted.length > 0) await this.decoder.dropPrefixes(evicted);
  }

  /**
   * Admits waiting sequences, the first by priority (nextWaiting) each time,
   * while the limits allow (no overtaking: when that one does not fit, none
   * behind it is admitted, so a long request is not starved by short ones),
   * prefills them, and returns those that go on to join the batch.
   *
   * While a batch decodes, a turn prefills at most prefillChunkTokens prompt
   * tokens, so running sequences wait at most that much prefill for their
   * next token: the chunked prefill goes on first, then whole prompts that fit
   * what is left; a prompt longer than a whole turn's budget becomes the
   * chunked prefill. With nothing decoding nobody waits on a prefill, and
   * prompts are prefilled whole.
   */
  private async admit(): Promise<Prefilled> {
    const budget = this.running.length > 0 ? this.g.prefillChunkTokens : Infinity;
    const done: Prefilled = { joining: [], ended: [] };
    let used = this.chunking ? await this.prefillChunked(budget, done) : 0;
    while (this.waiting.length > 0) {
      const seq = this.nextWaiting();
      if (this.slotsHeld() >= this.g.maxConcurrentSequences) break;
      if (this.reservedTokens + seq.reserved > this.g.maxCachedTokens) break;
      // A cached prefix is not prefilled again: only the rest counts against the turn's budget.
      const hit = this.prefixes.lookup(seq.request.promptIds);
      const length = seq.request.promptIds.length - (hit?.count ?? 0);
      if (used + length > budget) {
        if (length > budget && !this.chunking && used <= budget / 2) {
          this.take(seq, hit);
          this.chunking = seq;
          used += await this.prefillChunked(budget - used, done);
        }
        break;
      }
      this.take(seq, hit);
      this.joining.push(seq);
      used += length;
    }
    if (this.joining.length === 0) return done;
    this.updateGauges();
    // Similar lengths together waste less on padding.
    const whole = this.joining
      .filter((s) => !s.prefix)
      .sort((a, b) => a.request.promptIds.length - b.request.promptIds.length);
    for (let start = 0; start < whole.length;) {
      let end = start + 1;
      while (
        end < whole.length &&
        (end - start + 1) * whole[end]!.request.promptIds.length <= this.prefillTokensPerRun
      )
        end++;
      await this.prefillIsolated(whole.slice(start, end));
      start = end;
    }
    // Each prefix hit runs the rest of its prompt after its cached prefix: one run each.
    const resumed = this.joining.filter((s) => s.prefix);
    for (const seq of resumed) await this.prefillPiece(seq, Infinity);
    // In prefill order: a single group joining an empty batch is then already packed.
    for (const seq of [...whole, ...resumed]) this.settle(seq, done);
    this.joining = [];
    return done;
  }

  /**
   * After its prompt is prefilled: the sequence goes on to join the batch,
   * unless it ended meanwhile (its first token ended it, or it was
   * cancelled); its prompt's keys/values may still be kept as a prefix.
   */
  private settle(seq: Sequence, done: Prefilled): void {
    if (seq.state !== 'prefilling') return; // failed, or ended before its prefill
    if (seq.request.signal.aborted) seq.finish ??= 'cancelled';
    if (!seq.finish) {
      done.joining.push(seq);
      return;
    }
    done.ended.push({ ...this.joinEntry(seq), keepOnly: true });
    // Ended: it no longer holds a slot.
    this.joining = this.joining.filter((s) => s !== seq);
    this.end(seq, seq.finish);
  }

  /**
   * What the decoder needs to add a prefilled sequence to the batch (or,
   * keepOnly, to drop what it holds of it) and, with prefix caching, to keep
   * its prompt's keys/values for later prompts that start the same way.
   */
  private joinEntry(seq: Sequence): JoinEntry {
    const entry: JoinEntry = seq.prefilled
      ? { ...seq.prefilled, count: seq.cached }
      : { sequence: seq.id, count: seq.cached };
    const kept = this.prefixes.insert(seq.request.promptIds);
    if (!kept) return entry;
    this.evicted.push(...kept.evicted);
    return { ...entry, keep: { entry: kept.entry, count: kept.count } };
  }

  /**
   * The waiting sequence to admit next: the lowest priority after aging (a
   * level per priorityAgingMs waited), the earliest arrival among equals.
   * With every priority equal, arrival order.
   */
  private nextWaiting(): Sequence {
    const now = performance.now();
    const aging = this.g.priorityAgingMs;
    let best = this.waiting[0]!;
    let bestRank = Infinity;
    for (const seq of this.waiting) {
      const rank = (seq.request.priority ?? 0) - (now - seq.arrivedAt) / aging;
      // The queue is in arrival order: a later one must rank strictly better.
      if (rank < bestRank) [best, bestRank] = [seq, rank];
    }
    return best;
  }

  /**
   * Moves a waiting sequence to the admitted: it holds a slot and its
   * reservation from now. With a prefix hit its cached prefix counts as
   * cached: it prefills only the rest.
   */
  private take(seq: Sequence, hit: PrefixHit | undefined): void {
    this.waiting.splice(this.waiting.indexOf(seq), 1);
    this.reservedTokens += seq.reserved;
    seq.state = 'prefilling';
    seq.admittedAt = performance.now();
    if (this.prefixes.enabled) {
      const m = this.options.metrics;
      m.prefixCacheQueriedTokens.inc(this.labels, seq.request.promptIds.length);
      if (hit) m.prefixCacheHitTokens.inc(this.labels, hit.count);
    }
    if (hit) {
      seq.prefix = hit;
      seq.cached = seq.cachedPromptTokens = hit.count;
    }
    this.options.metrics.queueSeconds.observe(this.labels, (seq.admittedAt - seq.arrivedAt) / 1000);
    this.updateGauges();
  }

  /**
   * The chunked prefill's next chunk, at most `allowance` tokens. After its
   * last chunk the sequence has its first token and goes on to join the
   * batch, unless that ended it. Returns the tokens run.
   */
  private async prefillChunked(allowance: number, done: Prefilled): Promise<number> {
    const seq = this.chunking!;
    const { ran, complete } = await this.prefillPiece(seq, allowance);
    if (ran > 0 && seq.state !== 'done') this.options.metrics.prefillChunks.inc(this.labels);
    if (complete) {
      this.chunking = undefined;
      this.settle(seq, done);
    }
    return ran;
  }

  /**
   * Runs the next piece of a sequence's prompt, at most `allowance` tokens
   * (all the rest when unbounded), with what is cached of it as the past: a
   * cached prefix, then its earlier pieces, which the decoder holds under the
   * sequence's id. After its last piece the sequence has its first token.
   * Returns the tokens run, and whether it is done prefilling (all of it run,
   * or it ended or failed).
   */
  private async prefillPiece(seq: Sequence, allowance: number): Promise<{ ran: number; complete: boolean }> {
    if (seq.request.signal.aborted) seq.finish ??= 'cancelled';
    if (seq.finish) {
      this.end(seq, seq.finish);
      if (seq.pieceHeld) await this.decoder.dropChunked(seq.id);
      return { ran: 0, complete: true };
    }
    const prompt = seq.request.promptIds;
    const start = seq.cached;
    const count = Math.min(allowance, prompt.length - start);
    const started = performance.now();
    let out;
    try {
      out = await this.decoder.prefillChunk({
        sequence: seq.id,
        ids: BigInt64Array.from(prompt.slice(start, start + count), BigInt),
        positions: BigInt64Array.from({ length: count }, (_, i) => BigInt(start + i)),
        prefix: seq.prefix,
      });
    } catch (error) {
      await this.decoder.dropChunked(seq.id).catch(() => undefined);
      this.fail([seq], error, 'prefill');
      return { ran: count, complete: true };
    }
    seq.prefix = undefined;
    seq.pieceHeld = true;
    this.options.metrics.prefillSeconds.observe(this.labels, (performance.now() - started) / 1000);
    this.updateCache(out.cache);
    seq.cached += count;
    if (seq.cached < prompt.length) return { ran: count, complete: false };
    this.accept(seq, out.logits);
    // The first token at once: nothing computes meanwhile to overlap it with.
    this.send(seq);
    return { ran: count, complete: true };
  }

  /** Prefills a group; when the group's run fails, each member alone, so one bad prompt fails only itself. */
  private async prefillIsolated(group: Sequence[]): Promise<void> {
    try {
      await this.prefill(group);
    } catch (error) {
      if (group.length === 1) this.fail(group, error, 'prefill');
      else for (const seq of group) await this.prefillIsolated([seq]);
    }
  }

  /**
   * One run over the group's prompts, left-padded to the longest (mask 0 and
   * position 0 on the padding, positions counted from each prompt's first
   * token), so each row's present is already right-aligned for the batch.
   */
  private async prefill(group: Sequence[]): Promise<void> {
    const rows = group.length;
    const length = Math.max(...group.map((s) => s.request.promptIds.length));
    const ids = new BigInt64Array(rows * length).fill(BigInt(this.g.eosTokenId ?? 0));
    const mask = new BigInt64Array(rows * length);
    const positions = new BigInt64Array(rows * length);
    group.forEach((seq, b) => {
      const prompt = seq.request.promptIds;
      const pad = length - prompt.length;
      for (let i = 0; i < prompt.length; i++) {
        ids[b * length + pad + i] = BigInt(prompt[i]!);
        mask[b * length + pad + i] = 1n;
        positions[b * length + pad + i] = BigInt(i);
      }
    });
    const started = performance.now();
    const { logits, group: run, cache } = await this.decoder.prefill({ ids, mask, positions, rows, length });
    this.options.metrics.prefillSeconds.observe(this.labels, (performance.now() - started) / 1000);
    this.prefillsHeld = true;
    this.updateCache(cache);
    const vocab = this.g.vocabSize;
    group.forEach((seq, b) => {
      seq.cached = seq.request.promptIds.length;
      seq.prefilled = { group: run, row: b };
      this.accept(seq, logits.subarray(b * vocab, (b + 1) * vocab));
      // The first token at once: nothing computes meanwhile to overlap it with.
      this.send(seq);
    });
  }

  /**
   * Prefilled sequences join the batch: each one's prompt keys/values go into
   * a new row. The decoder then drops every prefill it holds (also those of
   * sequences that ended before joining), so it runs after every admission.
   */
  private async join({ joining, ended }: Prefilled): Promise<void> {
    if (!this.prefillsHeld && joining.length === 0 && ended.length === 0) return;
    this.prefillsHeld = false;
    const started = performance.now();
    const entries = [...joining.map((seq) => this.joinEntry(seq)), ...ended];
    for (const seq of joining) {
      seq.state = 'running';
      seq.prefilled = undefined;
      seq.pieceHeld = false;
      this.running.push(seq);
    }
    const cache = await this.decoder.join(entries);
    // After the join: an entry it kept may already be evicted by a later one of it.
    await this.dropEvicted();
    if (joining.length > 0) this.cacheChanged(started, cache);
    else this.updateCache(cache);
  }

  /** After sequences joined or left the batch cache. */
  private cacheChanged(started: number, cache: CacheCounters): void {
    this.options.metrics.repackSeconds.observe(this.labels, (performance.now() - started) / 1000);
    this.updateCache(cache);
  }

  private updateCache(cache: CacheCounters): void {
    this.cache = cache;
    if (cache.copiedBytes > this.copiedReported)
      this.options.metrics.cacheCopiedBytes.inc(this.labels, cache.copiedBytes - this.copiedReported);
    this.copiedReported = cache.copiedBytes;
  }

  /** One decode step: every running sequence feeds its last token and gets the next. */
  private async step(): Promise<void> {
    const members = this.running;
    const rows = members.length;
    // The capacity this step attends over (the cache grows only after a step).
    const capacity = this.cache.capacity;
    const started = performance.now();
    let out;
    try {
      const computing = this.decoder.step({
        ids: BigInt64Array.from(members, (s) => BigInt(s.next)),
        positions: BigInt64Array.from(members, (s) => BigInt(s.cached)),
      });
      // The last tokens go out (over gRPC: encoded and written) while the decoder computes the next.
      for (const seq of members) this.send(seq);
      out = await computing;
    } catch (error) {
      this.running = [];
      await this.clearDecoder();
      this.fail(members, error, 'decode step');
      return;
    }
    this.options.metrics.stepSeconds.observe(this.labels, (performance.now() - started) / 1000);
    this.options.metrics.stepBatchSize.observe(this.labels, rows);
    // Positions a row carries beyond its own (up to the capacity): masked but still computed.
    let real = 0;
    for (const seq of members) real += seq.cached;
    this.options.metrics.stepPadding.observe(this.labels, 1 - real / (rows * capacity || 1));
    this.updateCache(out.cache);
    const vocab = this.g.vocabSize;
    members.forEach((seq, b) => {
      seq.cached++;
      this.accept(seq, out.logits.subarray(b * vocab, (b + 1) * vocab));
    });
  }

  /**
   * Samples the sequence's next token and sets `finish` when that ends it.
   * The token is handed to onTokens by send(): at the next decode step's
   * start (so that delivering it overlaps the step) or when the sequence ends.
   */
  private accept(seq: Sequence, logits: Float32Array): void {
    if (seq.finish) return;
    if (seq.request.signal.aborted) {
      seq.finish ??= 'cancelled';
      return;
    }
    const { request } = seq;
    const token = this.sampler.sample(logits, request.sampling, seq.seen, seq.random);
    // The end-of-sequence token ends the text; it is not part of it.
    if (token === this.g.eosTokenId && !request.ignoreEos) {
      this.delivered(seq, performance.now());
      seq.finish = 'eos';
      return;
    }
    seq.seen.add(token);
    seq.next = token;
    seq.unsent.push(token);
    seq.generatedIds.push(token);
    this.options.metrics.generatedTokens.inc(this.labels);
    if (request.stopTokenIds.includes(token)) seq.finish = 'stop';
    else if (seq.generatedIds.length >= request.maxNewTokens) seq.finish = 'length';
  }

  /** Hands the sequence's sampled tokens to its consumer; one that throws cancels the sequence. */
  private send(seq: Sequence): void {
    if (seq.unsent.length === 0) return;
    const tokens = seq.unsent;
    seq.unsent = [];
    this.delivered(seq, performance.now());
    try {
      seq.onTokens(tokens);
    } catch (error) {
      this.options.logger.warn(
        { ...this.labels, requestId: seq.request.requestId, err: error },
        'token consumer failed; cancelling the sequence',
      );
      seq.finish = 'cancelled';
    }
  }

  /** Time to first token and inter-token latency, as the consumer sees them. */
  private delivered(seq: Sequence, now: number): void {
    if (seq.firstTokenAt === undefined) {
      seq.firstTokenAt = now;
      this.options.metrics.timeToFirstToken.observe(this.labels, (now - seq.arrivedAt) / 1000);
    } else {
      this.options.metrics.interTokenLatency.observe(this.labels, (now - seq.lastTokenAt!) / 1000);
    }
    seq.lastTokenAt = now;
  }

  private end(seq: Sequence, reason: FinishReason): void {
    // Its last tokens before its result (unless cancelled: its consumer is gone).
    if (reason !== 'cancelled') this.send(seq);
    this.release(seq);
    const now = performance.now();
    const decodeSeconds = seq.firstTokenAt !== undefined ? (seq.lastTokenAt! - seq.firstTokenAt) / 1000 : 0;
    const m = this.options.metrics;
    m.finished.inc({ ...this.labels, reason });
    m.requestSeconds.observe(this.labels, (now - seq.arrivedAt) / 1000);
    const generated = seq.generatedIds.length;
    if (generated > 1) m.timePerOutputToken.observe(this.labels, decodeSeconds / (generated - 1));
    const result: GenerationResult = {
      finishReason: reason,
      promptTokens: seq.request.promptIds.length,
      cachedPromptTokens: seq.cachedPromptTokens,
      generatedTokens: generated,
      queueMs: (seq.admittedAt ?? now) - seq.arrivedAt,
      timeToFirstTokenMs: seq.firstTokenAt !== undefined ? seq.firstTokenAt - seq.arrivedAt : 0,
      totalMs: now - seq.arrivedAt,
      decodeTokensPerSecond: decodeSeconds > 0 ? (generated - 1) / decodeSeconds : 0,
    };
    this.options.logger.debug(
      { ...this.labels, requestId: seq.request.requestId, ...result },
      'sequence finished',
    );
    seq.resolve(result);
  }

  private fail(seqs: Sequence[], error: unknown, during: string): void {
    const message = error instanceof Error ? error.message : String(error);
    this.options.logger.error(
      { ...this.labels, err: error, requestIds: seqs.map((s) => s.request.requestId) },
      `generation ${during} failed`,
    );
    for (const seq of seqs) {
      this.release(seq);
      this.options.metrics.failed.inc(this.labels);
      seq.reject(new StatusError(status.INTERNAL, `generation ${during} failed: ${message}`));
    }
  }

  /** Frees the sequence's cache and reservation; it no longer counts anywhere. */
  private release(seq: Sequence): void {
    if (seq.state === 'prefilling' || seq.state === 'running') this.reservedTokens -= seq.reserved;
    seq.state = 'done';
    seq.prefilled = undefined;
    seq.cached = 0;
    seq.request.signal.removeEventListener('abort', seq.onAbort);
  }

  private updateGauges(): void {
    const s = this.stats();
    const m = this.options.metrics;
    m.running.set(this.labels, s.running);
    m.waiting.set(this.labels, s.waiting);
    m.cachedTokens.set(this.labels, s.cachedTokens);
    m.reservedTokens.set(this.labels, this.reservedTokens);
    m.cacheUsage.set(this.labels, s.cachedTokens / this.g.maxCachedTokens);
    m.prefixCacheTokens.set(this.labels, this.prefixes.tokens);
  }
}
