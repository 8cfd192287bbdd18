/**
 * KV-cache generation with continuous batching for one decoder model version.
 *
 * Every running sequence advances one token per decode step, all of them in
 * one session.run. The batch's past keys/values are one tensor per layer,
 * [batch, heads, past, headDim], each sequence right-aligned and left-padded
 * (attention_mask 0 on the padding). Because every sequence grows by exactly
 * one token per step, a step's `present` outputs are the next step's `past`
 * inputs as they are: caches are copied only when the batch's membership
 * changes (a sequence joins after its prefill, or leaves when it finishes or
 * is cancelled, which frees its cache at once).
 *
 * Admission reserves prompt + max_new_tokens against maxCachedTokens, so a
 * running sequence can never be starved of cache; the rest wait in a bounded
 * queue and beyond it are refused with RESOURCE_EXHAUSTED.
 */
import { status } from '@grpc/grpc-js';
import * as ort from 'onnxruntime-node';
import { invalidArgument, resourceExhausted, StatusError, unavailable } from '@maas/shared';
import type { Logger, ModelConfig } from '@maas/shared';
import type { GenerationMetrics } from './metrics.js';
import { SequenceRandom, sampleToken, type SamplingOptions } from './sampling.js';

export type { SamplingOptions } from './sampling.js';

export interface GenerationRequest {
  promptIds: number[];
  maxNewTokens: number;
  sampling: SamplingOptions;
  stopTokenIds: number[];
  ignoreEos: boolean;
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

export interface GenerationEngineOptions {
  modelName: string;
  modelVersion: string;
  session: ort.InferenceSession;
  config: ModelConfig;
  metrics: GenerationMetrics;
  logger: Logger;
}

interface Sequence {
  request: GenerationRequest;
  onTokens(ids: number[]): void;
  resolve(result: GenerationResult): void;
  reject(error: Error): void;
  random: SequenceRandom;
  seen: Set<number>;
  /** Tokens whose keys/values are in the cache. */
  cached: number;
  /** The last sampled token, to be fed at the next step. */
  next: number;
  generated: number;
  reserved: number;
  /** Holds a reservation of `reserved` cached tokens. */
  admitted: boolean;
  arrivedAt: number;
  admittedAt: number;
  firstTokenAt: number;
  lastTokenAt: number;
  finish?: FinishReason;
  /** Own cache between prefill and joining the batch: per layer [key, value], [1, heads, cached, headDim]. */
  prefillCache?: ort.Tensor[];
}

export class GenerationEngine {
  private readonly waiting: Sequence[] = [];
  private running: Sequence[] = [];
  /** The batch cache, per layer key then value; undefined when no sequence runs. */
  private past: ort.Tensor[] | undefined;
  private pastLength = 0;
  /** The sequence in each row of `past`, in row order (running may have dropped some since). */
  private pastRows: Sequence[] = [];
  private reservedTokens = 0;
  private loop: Promise<void> | undefined;
  private closed = false;
  private readonly g: NonNullable<ModelConfig['generation']>;
  private readonly labels: { model: string; version: string };
  private readonly names: {
    pastKey: string[];
    pastValue: string[];
    presentKey: string[];
    presentValue: string[];
  };

  constructor(private readonly options: GenerationEngineOptions) {
    const g = options.config.generation;
    if (!g) throw new Error(`model ${options.modelName} has no generation section`);
    this.g = g;
    this.labels = { model: options.modelName, version: options.modelVersion };
    const layers = Array.from({ length: g.numLayers }, (_, i) => String(i));
    const fill = (pattern: string) => layers.map((l) => pattern.replace('{layer}', l));
    this.names = {
      pastKey: fill(g.pastKeyInput),
      pastValue: fill(g.pastValueInput),
      presentKey: fill(g.presentKeyOutput),
      presentValue: fill(g.presentValueOutput),
    };
    const inputs = new Set(options.session.inputNames);
    for (const name of [
      'input_ids',
      'attention_mask',
      'position_ids',
      ...this.names.pastKey,
      ...this.names.pastValue,
    ]) {
      if (!inputs.has(name))
        throw new Error(
          `model ${options.modelName}: graph has no input '${name}' (KV-cache decoder expected)`,
        );
    }
    const outputs = new Set(options.session.outputNames);
    for (const name of ['logits', ...this.names.presentKey, ...this.names.presentValue]) {
      if (!outputs.has(name)) throw new Error(`model ${options.modelName}: graph has no output '${name}'`);
    }
  }

  stats(): { running: number; waiting: number; cachedTokens: number } {
    return {
      running: this.running.length,
      waiting: this.waiting.length,
      cachedTokens: this.running.reduce((n, s) => n + s.cached, 0),
    };
  }

  generate(request: GenerationRequest, onTokens: (ids: number[]) => void): Promise<GenerationResult> {
    if (this.closed) return Promise.reject(unavailable(`model ${this.labels.model} is unloading`));
    const { promptIds, maxNewTokens } = request;
    if (promptIds.length === 0) return Promise.reject(invalidArgument('prompt_ids', 'must not be empty'));
    if (promptIds.length + maxNewTokens > this.g.maxContextLength) {
      return Promise.reject(
        invalidArgument(
          'max_new_tokens',
          `prompt (${promptIds.length}) + max_new_tokens (${maxNewTokens}) exceeds the context length ${this.g.maxContextLength}`,
        ),
      );
    }
    if (promptIds.length + maxNewTokens > this.g.maxCachedTokens) {
      return Promise.reject(
        invalidArgument('max_new_tokens', `needs more than maxCachedTokens ${this.g.maxCachedTokens}`),
      );
    }
    if (this.waiting.length >= this.g.maxQueuedSequences) {
      this.options.metrics.rejected.inc(this.labels);
      return Promise.reject(
        resourceExhausted(
          `model ${this.labels.model}: ${this.waiting.length} sequences already waiting`,
          100,
        ),
      );
    }
    return new Promise((resolve, reject) => {
      const now = performance.now();
      const seq: Sequence = {
        request,
        onTokens,
        resolve,
        reject,
        random: new SequenceRandom(request.sampling.seed ?? Math.floor(Math.random() * 2 ** 32)),
        seen: new Set(promptIds),
        cached: 0,
        next: -1,
        generated: 0,
        reserved: promptIds.length + maxNewTokens,
        admitted: false,
        arrivedAt: now,
        admittedAt: now,
        firstTokenAt: 0,
        lastTokenAt: 0,
      };
      this.waiting.push(seq);
      this.options.metrics.promptTokens.inc(this.labels, promptIds.length);
      request.signal.addEventListener('abort', () => this.wake(), { once: true });
      this.updateGauges();
      this.wake();
    });
  }

  /** Stops taking work: waiting sequences are refused; running ones finish, or are cancelled when forced. */
  async close(options: { force?: boolean } = {}): Promise<void> {
    this.closed = true;
    for (const seq of this.waiting.splice(0))
      seq.reject(unavailable(`model ${this.labels.model} is unloading`));
    if (options.force) for (const seq of this.running) seq.finish ??= 'cancelled';
    await this.loop;
  }

  private wake(): void {
    this.loop ??= this.schedule()
      .catch((error: unknown) =>
        this.options.logger.error({ ...this.labels, err: error }, 'generation loop failed'),
      )
      .finally(() => {
        this.loop = undefined;
        if (this.waiting.length > 0 || this.running.length > 0) this.wake();
      });
  }

  private async schedule(): Promise<void> {
    while (this.waiting.length > 0 || this.running.length > 0) {
      const left = this.retire();
      const joined = await this.admit();
      if (joined.length > 0 || left) this.repack(joined);
      this.updateGauges();
      if (this.running.length === 0) {
        if (this.waiting.length > 0 && joined.length === 0) {
          // Waiting sequences that cannot be admitted with nothing running would wait forever.
          const seq = this.waiting.shift()!;
          seq.reject(resourceExhausted('sequence does not fit the cache budget'));
        }
        continue;
      }
      await this.step();
    }
  }

  /** Prefills waiting sequences while there is room; returns those that join the batch. */
  private async admit(): Promise<Sequence[]> {
    const joined: Sequence[] = [];
    while (this.waiting.length > 0) {
      const seq = this.waiting[0]!;
      if (seq.request.signal.aborted) {
        this.waiting.shift();
        this.end(seq, 'cancelled');
        continue;
      }
      const active = this.running.length + joined.length;
      if (
        active >= this.g.maxConcurrentSequences ||
        this.reservedTokens + seq.reserved > this.g.maxCachedTokens
      )
        break;
      this.waiting.shift();
      this.reservedTokens += seq.reserved;
      seq.admitted = true;
      seq.admittedAt = performance.now();
      this.options.metrics.queueSeconds.observe(this.labels, (seq.admittedAt - seq.arrivedAt) / 1000);
      try {
        await this.prefill(seq);
      } catch (error) {
        this.release(seq);
        this.options.logger.error({ ...this.labels, err: error }, 'prefill failed');
        seq.reject(new StatusError(status.INTERNAL, `generation failed: ${(error as Error).message}`));
        continue;
      }
      if (seq.finish) this.end(seq, seq.finish);
      else joined.push(seq);
    }
    return joined;
  }

  private async prefill(seq: Sequence): Promise<void> {
    const ids = seq.request.promptIds;
    const n = ids.length;
    const { numLayers, numHeads, headDim } = this.g;
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [1, n]),
      attention_mask: new ort.Tensor('int64', new BigInt64Array(n).fill(1n), [1, n]),
      position_ids: new ort.Tensor(
        'int64',
        BigInt64Array.from(ids, (_, i) => BigInt(i)),
        [1, n],
      ),
    };
    for (let l = 0; l < numLayers; l++) {
      feeds[this.names.pastKey[l]!] = new ort.Tensor('float32', new Float32Array(0), [
        1,
        numHeads,
        0,
        headDim,
      ]);
      feeds[this.names.pastValue[l]!] = new ort.Tensor('float32', new Float32Array(0), [
        1,
        numHeads,
        0,
        headDim,
      ]);
    }
    const out = await this.options.session.run(feeds);
    seq.prefillCache = [];
    for (let l = 0; l < numLayers; l++)
      seq.prefillCache.push(out[this.names.presentKey[l]!]!, out[this.names.presentValue[l]!]!);
    seq.cached = n;
    const vocab = this.g.vocabSize;
    const logits = out.logits!.data as Float32Array;
    this.accept(seq, logits.slice((n - 1) * vocab, n * vocab));
  }

  /** Samples, emits and checks the finish conditions for one sequence. */
  private accept(seq: Sequence, logits: Float32Array): void {
    const token = sampleToken(logits, seq.request.sampling, seq.seen, seq.random);
    const now = performance.now();
    if (seq.generated === 0) {
      seq.firstTokenAt = now;
      this.options.metrics.timeToFirstToken.observe(this.labels, (now - seq.arrivedAt) / 1000);
    } else {
      this.options.metrics.interTokenLatency.observe(this.labels, (now - seq.lastTokenAt) / 1000);
    }
    seq.lastTokenAt = now;
    const eos = !seq.request.ignoreEos && token === this.g.eosTokenId;
    if (eos) {
      seq.finish = 'eos';
      return;
    }
    seq.generated++;
    seq.seen.add(token);
    seq.next = token;
    this.options.metrics.generatedTokens.inc(this.labels);
    seq.onTokens([token]);
    if (seq.request.stopTokenIds.includes(token)) seq.finish = 'stop';
    else if (seq.generated >= seq.request.maxNewTokens || seq.cached + 1 >= this.g.maxContextLength)
      seq.finish = 'length';
  }

  /** Removes finished and cancelled sequences from the batch; true if any left. */
  private retire(): boolean {
    const before = this.running.length;
    this.running = this.running.filter((seq) => {
      if (seq.request.signal.aborted) seq.finish ??= 'cancelled';
      if (!seq.finish) return true;
      this.end(seq, seq.finish);
      return false;
    });
    return this.running.length !== before;
  }

  private end(seq: Sequence, reason: FinishReason): void {
    this.release(seq);
    const now = performance.now();
    const decodeSeconds = (seq.lastTokenAt - seq.firstTokenAt) / 1000;
    this.options.metrics.finished.inc({ ...this.labels, reason });
    seq.resolve({
      finishReason: reason,
      promptTokens: seq.request.promptIds.length,
      generatedTokens: seq.generated,
      queueMs: seq.admittedAt - seq.arrivedAt,
      timeToFirstTokenMs: seq.firstTokenAt ? seq.firstTokenAt - seq.arrivedAt : 0,
      totalMs: now - seq.arrivedAt,
      decodeTokensPerSecond: decodeSeconds > 0 ? (seq.generated - 1) / decodeSeconds : 0,
    });
  }

  private release(seq: Sequence): void {
    if (seq.admitted) this.reservedTokens -= seq.reserved;
    seq.admitted = false;
    seq.prefillCache = undefined;
  }

  /** Rebuilds the batch cache for the current members plus the newly prefilled ones. */
  private repack(joined: Sequence[]): void {
    const members = [...this.running, ...joined];
    const { numLayers, numHeads, headDim } = this.g;
    const length = members.reduce((m, s) => Math.max(m, s.cached), 0);
    const old = this.past;
    const oldLength = this.pastLength;
    const oldRows = new Map(this.pastRows.map((s, i) => [s, i]));
    const past: ort.Tensor[] = [];
    for (let t = 0; t < 2 * numLayers; t++) {
      const data = new Float32Array(members.length * numHeads * length * headDim);
      members.forEach((seq, b) => {
        const row = oldRows.get(seq);
        const src =
          row !== undefined ? (old![t]!.data as Float32Array) : (seq.prefillCache![t]!.data as Float32Array);
        const srcLength = row !== undefined ? oldLength : seq.cached;
        const srcRow = row ?? 0;
        const span = seq.cached * headDim;
        for (let h = 0; h < numHeads; h++) {
          const from = ((srcRow * numHeads + h) * srcLength + (srcLength - seq.cached)) * headDim;
          const to = ((b * numHeads + h) * length + (length - seq.cached)) * headDim;
          data.set(src.subarray(from, from + span), to);
        }
      });
      past.push(new ort.Tensor('float32', data, [members.length, numHeads, length, headDim]));
    }
    for (const seq of joined) seq.prefillCache = undefined;
    this.running = members;
    this.pastRows = members;
    this.past = members.length > 0 ? past : undefined;
    this.pastLength = length;
  }

  /** One decode step for every running sequence. */
  private async step(): Promise<void> {
    const members = this.running;
    const batch = members.length;
    const { numLayers } = this.g;
    const length = this.pastLength;
    const mask = new BigInt64Array(batch * (length + 1));
    members.forEach((seq, b) =>
      mask.fill(1n, b * (length + 1) + (length - seq.cached), (b + 1) * (length + 1)),
    );
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor(
        'int64',
        BigInt64Array.from(members, (s) => BigInt(s.next)),
        [batch, 1],
      ),
      attention_mask: new ort.Tensor('int64', mask, [batch, length + 1]),
      position_ids: new ort.Tensor(
        'int64',
        BigInt64Array.from(members, (s) => BigInt(s.cached)),
        [batch, 1],
      ),
    };
    for (let l = 0; l < numLayers; l++) {
      feeds[this.names.pastKey[l]!] = this.past![2 * l]!;
      feeds[this.names.pastValue[l]!] = this.past![2 * l + 1]!;
    }
    const started = performance.now();
    let out: ort.InferenceSession.OnnxValueMapType;
    try {
      out = await this.options.session.run(feeds);
    } catch (error) {
      this.options.logger.error({ ...this.labels, err: error }, 'decode step failed');
      for (const seq of members) {
        this.release(seq);
        seq.reject(new StatusError(status.INTERNAL, `generation failed: ${(error as Error).message}`));
      }
      this.running = [];
      this.pastRows = [];
      this.past = undefined;
      this.pastLength = 0;
      return;
    }
    this.options.metrics.stepSeconds.observe(this.labels, (performance.now() - started) / 1000);
    this.options.metrics.stepBatchSize.observe(this.labels, batch);
    this.past = [];
    for (let l = 0; l < numLayers; l++)
      this.past.push(out[this.names.presentKey[l]!]!, out[this.names.presentValue[l]!]!);
    this.pastLength = length + 1;
    const vocab = this.g.vocabSize;
    const logits = out.logits!.data as Float32Array;
    members.forEach((seq, b) => {
      seq.cached++;
      if (seq.request.signal.aborted) {
        seq.finish = 'cancelled';
        return;
      }
      this.accept(seq, logits.slice(b * vocab, (b + 1) * vocab));
    });
  }

  private updateGauges(): void {
    const s = this.stats();
    this.options.metrics.running.set(this.labels, s.running);
    this.options.metrics.waiting.set(this.labels, s.waiting);
    this.options.metrics.cachedTokens.set(this.labels, s.cachedTokens);
  }
}
