/**
 * KV-cache generation with continuous batching for one decoder model version
 * (design notes: README.md beside this file).
 *
 * One scheduler loop per engine. Between two decode steps it retires finished
 * and cancelled sequences (their cache is dropped at once), admits waiting
 * ones while the concurrency and cache budgets allow, prefills them
 * (left-padded, several per run), and writes their keys/values into the
 * batch cache the engine owns (slot-cache.ts); then one session.run advances
 * every running sequence by one token.
 */
import { status } from '@grpc/grpc-js';
import * as ort from 'onnxruntime-node';
import { invalidArgument, resourceExhausted, StatusError, unavailable } from '@maas/shared';
import type { Logger, ModelConfig } from '@maas/shared';
import type { GenerationMetrics } from './metrics.js';
import { cacheTensorNames, newPositionsOutput } from './new-kv-outputs.js';
import { emptyPast, SlotCache, type KvShape, type KvSource } from './slot-cache.js';
import { randomSeed, SequenceRandom, TokenSampler, type SamplingOptions } from './sampling.js';

export type { SamplingOptions } from './sampling.js';

export interface GenerationRequest {
  promptIds: number[];
  /** Already resolved (0 → the config's default) by the caller. */
  maxNewTokens: number;
  sampling: SamplingOptions;
  stopTokenIds: number[];
  ignoreEos: boolean;
  /** Aborted when the client cancels or the deadline passes. */
  signal: AbortSignal;
  requestId?: string;
}

export type FinishReason = 'length' | 'eos' | 'stop' | 'cancelled';

export interface GenerationResult {
  finishReason: FinishReason;
  promptTokens: number;
  generatedTokens: number;
  queueMs: number;
  timeToFirstTokenMs: number;
  totalMs: number;
  decodeTokensPerSecond: number;
}

/** What the engine needs of a session: onnxruntime's InferenceSession and WorkerSession both have it. */
export interface DecoderSession {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  run(feeds: Record<string, ort.Tensor>): Promise<Record<string, ort.OnnxValue>>;
}

export interface GenerationEngineOptions {
  modelName: string;
  modelVersion: string;
  /** In a worker (WorkerSession, the runner's way: decode steps leave the event loop free) or in this thread. */
  session: DecoderSession;
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

/** What the batch cache has cost: the benchmark's view of it. */
export interface CacheStats {
  /** Bytes of existing keys/values moved (re-layouts as the batch's longest sequence grows, rows filling a leaver's place). */
  copiedBytes: number;
  /** Bytes of new keys/values written (prompts and generated tokens). */
  writtenBytes: number;
  relayouts: number;
  /** True when the graph returns only each step's new keys/values (new-kv-outputs.ts), not the whole `present`. */
  newPositionsOnly: boolean;
}

/**
 * Prompt tokens (padding included) per prefill run. onnxruntime-node runs a
 * session synchronously on the JS thread, so one run stalls the running batch
 * and the whole event loop; 512 tokens already amortise the weights well.
 */
const PREFILL_TOKENS_PER_RUN = 512;
/** Prefill returns logits for every prompt position: keep that tensor under 128 MB. */
const PREFILL_LOGITS_PER_RUN = 2 ** 25;

type SequenceState = 'waiting' | 'prefilling' | 'running' | 'done';

interface Sequence {
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
  /** Between prefill and joining the batch: where its prompt's keys/values are. */
  prefilled?: KvSource;
  /** The last sampled token: the next step's input. */
  next: number;
  generated: number;
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
  private readonly cache: SlotCache;
  /** The outputs that carry new keys/values, per layer key then value. */
  private readonly kvOutputNames: string[];
  /** Whether those outputs hold only the new positions (else `present`: past then new). */
  private readonly newPositionsOnly: boolean;
  private copiedReported = 0;
  /** Admitted and being prefilled: they hold a slot but are not in the batch yet. */
  private joining: Sequence[] = [];
  private reservedTokens = 0;
  private loop: Promise<void> | undefined;
  private closed = false;
  private readonly g: NonNullable<ModelConfig['generation']>;
  private readonly shape: KvShape;
  private readonly sampler: TokenSampler;
  private readonly labels: { model: string; version: string };
  private readonly pastNames: string[];
  private readonly presentNames: string[];
  private readonly prefillTokensPerRun: number;

  constructor(private readonly options: GenerationEngineOptions) {
    const g = options.config.generation;
    if (!g) throw new Error(`model ${options.modelName} has no generation section`);
    this.g = g;
    this.shape = { numLayers: g.numLayers, numHeads: g.numHeads, headDim: g.headDim };
    this.sampler = new TokenSampler(g.vocabSize);
    this.labels = { model: options.modelName, version: options.modelVersion };
    ({ past: this.pastNames, present: this.presentNames } = cacheTensorNames(g));
    this.cache = new SlotCache(this.shape, g.maxConcurrentSequences);
    this.prefillTokensPerRun = Math.max(
      1,
      Math.min(PREFILL_TOKENS_PER_RUN, Math.floor(PREFILL_LOGITS_PER_RUN / g.vocabSize)),
    );
    const inputs = new Set(options.session.inputNames);
    const missingIn = ['input_ids', 'attention_mask', 'position_ids', ...this.pastNames].filter(
      (n) => !inputs.has(n),
    );
    const outputs = new Set(options.session.outputNames);
    this.newPositionsOnly = this.presentNames.every((n) => outputs.has(newPositionsOutput(n)));
    this.kvOutputNames = this.newPositionsOnly
      ? this.presentNames.map(newPositionsOutput)
      : this.presentNames;
    const missingOut = ['logits', ...this.kvOutputNames].filter((n) => !outputs.has(n));
    if (missingIn.length > 0 || missingOut.length > 0) {
      throw new Error(
        `model ${options.modelName}: not a KV-cache decoder in the optimum signature; ` +
          `missing ${[...missingIn.map((n) => `input '${n}'`), ...missingOut.map((n) => `output '${n}'`)].join(', ')}`,
      );
    }
  }

  stats(): GenerationStats {
    let cachedTokens = 0;
    for (const seq of this.running) cachedTokens += seq.cached;
    for (const seq of this.joining) cachedTokens += seq.cached;
    return { running: this.running.length + this.joining.length, waiting: this.waiting.length, cachedTokens };
  }

  cacheStats(): CacheStats {
    const { copiedBytes, writtenBytes, relayouts } = this.cache;
    return { copiedBytes, writtenBytes, relayouts, newPositionsOnly: this.newPositionsOnly };
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
        next: -1,
        generated: 0,
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
    if (options.force) for (const seq of [...this.running, ...this.joining]) seq.finish ??= 'cancelled';
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
    const freeSlots = Math.max(0, this.g.maxConcurrentSequences - this.running.length - this.joining.length);
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
        const inFlight = [...this.running, ...this.joining].filter((s) => s.state !== 'done');
        this.running = [];
        this.cache.clear();
        this.joining = [];
        this.fail(inFlight, error, 'scheduling');
      })
      .finally(() => {
        this.loop = undefined;
        if (this.waiting.length > 0 || this.running.length > 0) this.wake();
      });
  }

  private async schedule(): Promise<void> {
    while (this.waiting.length > 0 || this.running.length > 0) {
      this.retire();
      const { admitted, joined } = await this.admit();
      this.join(joined);
      this.updateGauges();
      if (this.running.length > 0) await this.step();
      else if (admitted === 0 && this.waiting.length > 0) {
        // Cannot happen while generate() refuses what the budget can never hold; never spin on it.
        const seq = this.waiting.shift()!;
        this.release(seq);
        seq.reject(resourceExhausted(`model ${this.labels.model}: sequence does not fit the cache budget`));
      }
    }
  }

  /**
   * Ends the running sequences that finished or were cancelled. The batch's
   * last rows move into their places (the cache moves the same rows).
   */
  private retire(): void {
    const leaving: number[] = [];
    this.running.forEach((seq, row) => {
      if (seq.request.signal.aborted) seq.finish ??= 'cancelled';
      if (seq.finish) leaving.push(row);
    });
    if (leaving.length === 0) return;
    const ended = leaving.map((row) => this.running[row]!);
    const started = performance.now();
    for (const { from, to } of this.cache.remove(leaving)) this.running[to] = this.running[from]!;
    this.running.length = this.cache.rows;
    this.cacheChanged(started);
    for (const seq of ended) this.end(seq, seq.finish!);
  }

  /**
   * Admits waiting sequences in arrival order while the limits allow (no
   * overtaking: a long request at the head is not starved by short ones),
   * prefills them, and returns how many were admitted and those that go on
   * to join the batch.
   */
  private async admit(): Promise<{ admitted: number; joined: Sequence[] }> {
    while (this.waiting.length > 0) {
      const seq = this.waiting[0]!;
      if (this.running.length + this.joining.length >= this.g.maxConcurrentSequences) break;
      if (this.reservedTokens + seq.reserved > this.g.maxCachedTokens) break;
      this.waiting.shift();
      this.reservedTokens += seq.reserved;
      seq.state = 'prefilling';
      seq.admittedAt = performance.now();
      this.options.metrics.queueSeconds.observe(this.labels, (seq.admittedAt - seq.arrivedAt) / 1000);
      this.joining.push(seq);
    }
    if (this.joining.length === 0) return { admitted: 0, joined: [] };
    this.updateGauges();
    // Similar lengths together waste less on padding.
    const admitted = [...this.joining].sort(
      (a, b) => a.request.promptIds.length - b.request.promptIds.length,
    );
    for (let start = 0; start < admitted.length;) {
      let end = start + 1;
      while (
        end < admitted.length &&
        (end - start + 1) * admitted[end]!.request.promptIds.length <= this.prefillTokensPerRun
      )
        end++;
      await this.prefillIsolated(admitted.slice(start, end));
      start = end;
    }
    // In prefill order: a single group joining an empty batch is then already packed.
    const joined: Sequence[] = [];
    for (const seq of admitted) {
      if (seq.state !== 'prefilling') continue; // failed
      if (seq.request.signal.aborted) seq.finish ??= 'cancelled';
      if (seq.finish) this.end(seq, seq.finish);
      else joined.push(seq);
    }
    this.joining = [];
    return { admitted: admitted.length, joined };
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
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', ids, [rows, length]),
      attention_mask: new ort.Tensor('int64', mask, [rows, length]),
      position_ids: new ort.Tensor('int64', positions, [rows, length]),
    };
    emptyPast(this.shape, rows).forEach((t, i) => (feeds[this.pastNames[i]!] = t));
    const started = performance.now();
    const out = await this.options.session.run(feeds);
    this.options.metrics.prefillSeconds.observe(this.labels, (performance.now() - started) / 1000);
    // Past of length 0: the new positions and `present` are the same.
    const tensors = this.kvOutputNames.map((n) => out[n]!);
    const vocab = this.g.vocabSize;
    const logits = out.logits!.data as Float32Array;
    group.forEach((seq, b) => {
      const n = seq.request.promptIds.length;
      seq.cached = n;
      seq.prefilled = { tensors, row: b, start: length - n, count: n };
      const last = (b * length + length - 1) * vocab;
      this.accept(seq, logits.subarray(last, last + vocab));
    });
  }

  /** Prefilled sequences join the batch: each one's prompt keys/values go into a new row. */
  private join(joined: Sequence[]): void {
    if (joined.length === 0) return;
    const started = performance.now();
    for (const seq of joined) {
      seq.state = 'running';
      this.cache.add(seq.prefilled!);
      seq.prefilled = undefined;
      this.running.push(seq);
    }
    this.cacheChanged(started);
  }

  /** After sequences joined or left the batch cache. */
  private cacheChanged(started: number): void {
    const m = this.options.metrics;
    m.repackSeconds.observe(this.labels, (performance.now() - started) / 1000);
    this.reportCopies();
  }

  private reportCopies(): void {
    const copied = this.cache.copiedBytes;
    if (copied > this.copiedReported)
      this.options.metrics.cacheCopiedBytes.inc(this.labels, copied - this.copiedReported);
    this.copiedReported = copied;
  }

  /** One decode step: every running sequence feeds its last token and gets the next. */
  private async step(): Promise<void> {
    const members = this.running;
    const rows = members.length;
    const length = this.cache.capacity;
    const total = length + 1;
    const mask = this.cache.mask();
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor(
        'int64',
        BigInt64Array.from(members, (s) => BigInt(s.next)),
        [rows, 1],
      ),
      attention_mask: new ort.Tensor('int64', mask, [rows, total]),
      position_ids: new ort.Tensor(
        'int64',
        BigInt64Array.from(members, (s) => BigInt(s.cached)),
        [rows, 1],
      ),
    };
    this.cache.past().forEach((t, i) => (feeds[this.pastNames[i]!] = t));
    const started = performance.now();
    let out: Record<string, ort.OnnxValue>;
    try {
      out = await this.options.session.run(feeds);
    } catch (error) {
      this.running = [];
      this.cache.clear();
      this.fail(members, error, 'decode step');
      return;
    }
    this.options.metrics.stepSeconds.observe(this.labels, (performance.now() - started) / 1000);
    this.options.metrics.stepBatchSize.observe(this.labels, rows);
    // Positions a row carries beyond its own (up to the capacity): masked but still computed.
    let real = 0;
    for (const seq of members) real += seq.cached;
    this.options.metrics.stepPadding.observe(this.labels, 1 - real / (rows * length || 1));
    // The new position: the only one of the new-positions outputs, the last of `present`.
    this.cache.append(
      this.kvOutputNames.map((n) => out[n]!),
      this.newPositionsOnly ? 0 : length,
    );
    this.reportCopies();
    const vocab = this.g.vocabSize;
    const logits = out.logits!.data as Float32Array;
    members.forEach((seq, b) => {
      seq.cached++;
      this.accept(seq, logits.subarray(b * vocab, (b + 1) * vocab));
    });
  }

  /** Samples, emits, and sets `finish` when the sequence is done. */
  private accept(seq: Sequence, logits: Float32Array): void {
    if (seq.finish) return;
    if (seq.request.signal.aborted) {
      seq.finish ??= 'cancelled';
      return;
    }
    const { request } = seq;
    const token = this.sampler.sample(logits, request.sampling, seq.seen, seq.random);
    const now = performance.now();
    if (seq.firstTokenAt === undefined) {
      seq.firstTokenAt = now;
      this.options.metrics.timeToFirstToken.observe(this.labels, (now - seq.arrivedAt) / 1000);
    } else {
      this.options.metrics.interTokenLatency.observe(this.labels, (now - seq.lastTokenAt!) / 1000);
    }
    seq.lastTokenAt = now;
    // The end-of-sequence token ends the text; it is not part of it.
    if (token === this.g.eosTokenId && !request.ignoreEos) {
      seq.finish = 'eos';
      return;
    }
    seq.generated++;
    seq.seen.add(token);
    seq.next = token;
    this.options.metrics.generatedTokens.inc(this.labels);
    try {
      seq.onTokens([token]);
    } catch (error) {
      this.options.logger.warn(
        { ...this.labels, requestId: request.requestId, err: error },
        'token consumer failed; cancelling the sequence',
      );
      seq.finish = 'cancelled';
      return;
    }
    if (request.stopTokenIds.includes(token)) seq.finish = 'stop';
    else if (seq.generated >= request.maxNewTokens) seq.finish = 'length';
  }

  private end(seq: Sequence, reason: FinishReason): void {
    this.release(seq);
    const now = performance.now();
    const decodeSeconds = seq.firstTokenAt !== undefined ? (seq.lastTokenAt! - seq.firstTokenAt) / 1000 : 0;
    const m = this.options.metrics;
    m.finished.inc({ ...this.labels, reason });
    m.requestSeconds.observe(this.labels, (now - seq.arrivedAt) / 1000);
    if (seq.generated > 1) m.timePerOutputToken.observe(this.labels, decodeSeconds / (seq.generated - 1));
    const result: GenerationResult = {
      finishReason: reason,
      promptTokens: seq.request.promptIds.length,
      generatedTokens: seq.generated,
      queueMs: (seq.admittedAt ?? now) - seq.arrivedAt,
      timeToFirstTokenMs: seq.firstTokenAt !== undefined ? seq.firstTokenAt - seq.arrivedAt : 0,
      totalMs: now - seq.arrivedAt,
      decodeTokensPerSecond: decodeSeconds > 0 ? (seq.generated - 1) / decodeSeconds : 0,
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
  }
}
