/**
 * Dynamic batching for one model version. Requests queue; a batch is formed
 * when a session is idle and either the queued rows fill maxBatchSize or the
 * oldest request has waited maxQueueDelay (so while one batch computes, the
 * next one collects). Requests whose shapes differ outside the ragged
 * dimension never share a batch. Ragged inputs (dimension 1 varies per
 * request) are padded with the input's padValue to the longest in the batch,
 * straight into one typed array per input; outputs whose dimension 1 is
 * variable in the config and equals the padded length are cut back to each
 * request's own length, so a request's result does not depend on its
 * neighbours.
 */
import { status } from '@grpc/grpc-js';
import * as ort from 'onnxruntime-node';
import { resourceExhausted, StatusError, unavailable } from '@maas/shared';
import type { Datatype, Logger, ModelConfig, TensorSpec } from '@maas/shared';
import type { RunnerMetrics } from './metrics.js';
import type { RunnableSession } from './worker-session.js';
import {
  allocate,
  DATATYPES,
  datatypeOfOrt,
  elementCount,
  scalarOf,
  type NamedTensor,
  type TensorData,
} from './tensors.js';

export type CancelReason = 'cancelled' | 'deadline';

export interface BatchRequest {
  /** Inputs validated against the config; with batching, dimension 0 of each is the request's row count. */
  inputs: NamedTensor[];
  /** Outputs to return, in this order. */
  outputs: string[];
  /** Why the caller no longer wants the result (checked when a batch is formed), or false. */
  isCancelled(): CancelReason | false;
}

interface Pending {
  inputs: Map<string, NamedTensor>;
  outputs: string[];
  isCancelled(): CancelReason | false;
  rows: number;
  /** This request's length in the ragged dimension; 0 when the model has no ragged input. */
  length: number;
  /** Requests merge only when their keys are equal. */
  key: string;
  enqueuedAt: number;
  resolve(outputs: NamedTensor[]): void;
  reject(error: Error): void;
}

export interface BatcherOptions {
  sessions: RunnableSession[];
  config: ModelConfig;
  version: number;
  metrics: RunnerMetrics;
  logger: Logger;
}

/** Outputs with a variable dimension 1 follow the ragged inputs' length (e.g. last_hidden_state [B, S, H]). */
const followsSequence = (spec: TensorSpec) => spec.dims[0] === -1;

export class DynamicBatcher {
  private readonly queue: Pending[] = [];
  private queuedRows = 0;
  /** Sessions free to run a batch; taken from the front, returned to the back (round-robin). */
  private readonly idle: RunnableSession[];
  /** The pending wake-up: a timer, or an immediate for delays under Node's 1 ms timer resolution. */
  private timer: { timeout: NodeJS.Timeout } | { immediate: NodeJS.Immediate } | undefined;
  private inFlight = 0;
  private closed = false;
  private drainWaiters: (() => void)[] = [];
  private readonly config: ModelConfig;
  private readonly batching: boolean;
  private readonly maxRows: number;
  private readonly delayMs: number;
  private readonly ragged: Set<string>;
  private readonly trimmed: Set<string>;
  private readonly name: string;
  private readonly m: ReturnType<typeof boundMetrics>;
  private readonly logger: Logger;

  constructor(options: BatcherOptions) {
    const { config } = options;
    this.config = config;
    this.idle = [...options.sessions];
    this.batching = config.maxBatchSize > 0;
    this.maxRows = Math.max(1, config.maxBatchSize);
    this.delayMs = config.dynamicBatching.maxQueueDelayMicroseconds / 1000;
    this.ragged = new Set(this.batching ? config.inputs.filter((i) => i.ragged).map((i) => i.name) : []);
    this.trimmed = new Set(
      this.ragged.size > 0 ? config.outputs.filter(followsSequence).map((o) => o.name) : [],
    );
    this.name = config.name!;
    this.m = boundMetrics(options.metrics, { model: this.name, version: String(options.version) });
    this.logger = options.logger.child({ model: this.name, version: options.version });
  }

  /** Queues a request; resolves with its outputs. Refuses at once (RESOURCE_EXHAUSTED) when the queue is full. */
  submit(request: BatchRequest): Promise<NamedTensor[]> {
    if (this.closed) return Promise.reject(unavailable(`model '${this.name}' version is unloading`));
    const { maxQueueSize } = this.config.dynamicBatching;
    if (this.queue.length >= maxQueueSize) {
      this.m.failures.queue_full.inc();
      return Promise.reject(
        resourceExhausted(
          `model '${this.name}' queue is full (${this.queue.length} requests waiting)`,
          Math.max(1, this.delayMs),
        ),
      );
    }
    const inputs = new Map(request.inputs.map((t) => [t.name, t]));
    const rows = this.batching ? (request.inputs[0]?.shape[0] ?? 1) : 1;
    let length = 0;
    for (const name of this.ragged) {
      const t = inputs.get(name);
      if (t) length = t.shape[1] ?? 0;
    }
    return new Promise((resolve, reject) => {
      this.queue.push({
        inputs,
        outputs: request.outputs,
        isCancelled: request.isCancelled,
        rows,
        length,
        key: this.keyOf(request.inputs),
        enqueuedAt: performance.now(),
        resolve,
        reject,
      });
      this.queuedRows += rows;
      this.inFlight++;
      this.m.pending.inc();
      this.m.queued.set(this.queue.length);
      this.schedule();
    });
  }

  /** Requests queued or computing. */
  get pending(): number {
    return this.inFlight;
  }

  /** Stops taking requests; resolves when every queued and computing one has finished. */
  drain(): Promise<void> {
    this.closed = true;
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** Which inputs are present and their shapes outside the batch and ragged dimensions. */
  private keyOf(inputs: NamedTensor[]): string {
    if (!this.batching) return '';
    return inputs
      .map((t) => `${t.name}[${t.shape.slice(this.ragged.has(t.name) ? 2 : 1).join(',')}]`)
      .sort()
      .join(';');
  }

  /**
   * Dispatches batches while a session is idle and a batch is due. Node timers
   * have 1 ms resolution, so delays under 1 ms wait one event-loop turn
   * instead: requests that arrived in the same I/O burst still share a batch.
   */
  private schedule(timerFired = false): void {
    while (this.queue.length > 0 && this.idle.length > 0) {
      const waited = performance.now() - this.queue[0]!.enqueuedAt;
      const due = !this.batching || this.queuedRows >= this.maxRows || waited >= this.delayMs || timerFired;
      if (!due) {
        this.timer ??=
          this.delayMs - waited < 1
            ? { immediate: setImmediate(() => this.onTimer()) }
            : { timeout: setTimeout(() => this.onTimer(), this.delayMs - waited) };
        return;
      }
      timerFired = false;
      this.clearTimer();
      const batch = this.take();
      if (batch.length === 0) continue;
      const session = this.idle.shift()!;
      void this.run(session, batch).finally(() => {
        this.idle.push(session);
        this.schedule();
      });
    }
  }

  private onTimer(): void {
    this.timer = undefined;
    this.schedule(true);
  }

  private clearTimer(): void {
    // Each handle goes to its own clear function: clearImmediate on a Timeout corrupts Node's timer lists.
    if (this.timer && 'timeout' in this.timer) clearTimeout(this.timer.timeout);
    else if (this.timer) clearImmediate(this.timer.immediate);
    this.timer = undefined;
  }

  /** The next batch: the oldest live request and the compatible ones behind it that fit. */
  private take(): Pending[] {
    const batch: Pending[] = [];
    let rows = 0;
    for (let i = 0; i < this.queue.length && rows < this.maxRows;) {
      const p = this.queue[i]!;
      const cancelled = p.isCancelled();
      if (cancelled) {
        this.remove(i);
        this.m.failures[cancelled].inc();
        p.reject(
          cancelled === 'deadline'
            ? new StatusError(status.DEADLINE_EXCEEDED, 'deadline exceeded while queued, before compute')
            : new StatusError(status.CANCELLED, 'cancelled while queued, before compute'),
        );
        this.settle(1);
        continue;
      }
      const fits =
        batch.length === 0 || (this.batching && p.key === batch[0]!.key && rows + p.rows <= this.maxRows);
      if (fits) {
        this.remove(i);
        batch.push(p);
        rows += p.rows;
      } else {
        i++;
      }
    }
    this.m.queued.set(this.queue.length);
    return batch;
  }

  private remove(index: number): void {
    const [p] = this.queue.splice(index, 1);
    this.queuedRows -= p!.rows;
  }

  private settle(count: number): void {
    this.inFlight -= count;
    this.m.pending.dec(count);
    if (this.inFlight === 0) for (const resolve of this.drainWaiters.splice(0)) resolve();
  }

  private async run(session: RunnableSession, batch: Pending[], retry = false): Promise<void> {
    if (!retry) {
      const started = performance.now();
      for (const p of batch) this.m.queueSeconds.observe((started - p.enqueuedAt) / 1000);
    }
    let outputs: NamedTensor[][];
    try {
      outputs = await this.execute(session, batch);
    } catch (error) {
      if (batch.length > 1) {
        // One request's data can make a whole batch fail (an id out of range, say): run each
        // alone so that only the culprit fails.
        this.logger.warn(
          { err: error, requests: batch.length },
          'batch failed; running its requests one by one',
        );
        for (const p of batch) await this.run(session, [p], true);
        return;
      }
      this.logger.error({ err: error }, 'model execution failed');
      this.m.failures.execution_error.inc();
      batch[0]!.reject(
        new StatusError(status.INTERNAL, `model '${this.name}' failed to run: ${(error as Error).message}`),
      );
      this.settle(1);
      return;
    }
    batch.forEach((p, k) => p.resolve(outputs[k]!));
    this.settle(batch.length);
  }

  private async execute(session: RunnableSession, batch: Pending[]): Promise<NamedTensor[][]> {
    const rows = batch.reduce((n, p) => n + p.rows, 0);
    const maxLength = Math.max(...batch.map((p) => p.length));
    const feeds: Record<string, ort.Tensor> = {};
    for (const spec of this.config.inputs) feeds[spec.name] = this.merge(spec, batch, rows, maxLength);
    const wanted = [...new Set(batch.flatMap((p) => p.outputs))];
    const started = performance.now();
    // The batch tensors are this batcher's own (or a lone request's, not read again): moved, not copied.
    const results = await session.run(feeds, wanted, { transferFeeds: true });
    this.m.computeSeconds.observe((performance.now() - started) / 1000);
    this.m.executions.inc();
    this.m.inferences.inc(rows);
    this.m.batchSize.observe(rows);
    let firstRow = 0;
    return batch.map((p) => {
      const outputs = p.outputs.map((name) =>
        this.split(name, results[name] as ort.Tensor, firstRow, p, rows, maxLength, batch.length),
      );
      firstRow += p.rows;
      return outputs;
    });
  }

  /** One input of the batch: the requests' rows concatenated, ragged rows padded to maxLength. */
  private merge(spec: TensorSpec, batch: Pending[], rows: number, maxLength: number): ort.Tensor {
    const { ort: ortType } = DATATYPES[spec.datatype];
    const parts = batch.map((p) => p.inputs.get(spec.name));
    const first = parts.find((t) => t !== undefined);
    // A lone request that sent the input: its data goes to the runtime as it is, no copy.
    if (batch.length === 1 && first) return new ort.Tensor(ortType, first.data as never, first.shape);
    const ragged = this.ragged.has(spec.name);
    // Keys are equal within a batch, so dimensions past the batch (and ragged) one agree.
    const inner = first
      ? first.shape.slice(ragged ? 2 : 1)
      : (ragged ? spec.dims.slice(1) : spec.dims).map((d) => Math.max(d, 1));
    const shape = this.batching ? [rows, ...(ragged ? [maxLength] : []), ...inner] : inner;
    const out = allocate(spec.datatype, elementCount(shape));
    if (spec.padValue !== 0 || spec.datatype === 'BYTES' || !first)
      fill(out, scalarOf(spec.datatype, spec.padValue));
    if (!first) return new ort.Tensor(ortType, out as never, shape);
    const innerCount = elementCount(inner);
    const rowStride = (ragged ? maxLength : 1) * innerCount;
    let row = 0;
    batch.forEach((p, k) => {
      const part = parts[k];
      if (part) {
        const perRow = (ragged ? p.length : 1) * innerCount;
        if (perRow === rowStride) copy(out, part.data, 0, p.rows * perRow, row * rowStride);
        else
          for (let r = 0; r < p.rows; r++)
            copy(out, part.data, r * perRow, (r + 1) * perRow, (row + r) * rowStride);
      }
      row += p.rows;
    });
    return new ort.Tensor(ortType, out as never, shape);
  }

  /** A request's rows of an output; a sequence-following output is cut back to the request's own length. */
  private split(
    name: string,
    tensor: ort.Tensor,
    firstRow: number,
    p: Pending,
    rows: number,
    maxLength: number,
    requests: number,
  ): NamedTensor {
    const datatype: Datatype = datatypeOfOrt(tensor.type) ?? 'FP32';
    const dims = tensor.dims as number[];
    const data = tensor.data as TensorData;
    if (requests === 1) return { name, datatype, shape: dims, data };
    if (dims[0] !== rows) {
      throw new Error(
        `output '${name}' has ${dims[0]} rows for a batch of ${rows}: the graph does not batch`,
      );
    }
    const perRow = elementCount(dims.slice(1));
    if (!(this.trimmed.has(name) && dims[1] === maxLength && p.length < maxLength)) {
      return {
        name,
        datatype,
        shape: [p.rows, ...dims.slice(1)],
        data: view(data, firstRow * perRow, (firstRow + p.rows) * perRow),
      };
    }
    const innerCount = elementCount(dims.slice(2));
    const kept = p.length * innerCount;
    const out = allocate(datatype, p.rows * kept);
    for (let r = 0; r < p.rows; r++) {
      const start = (firstRow + r) * perRow;
      copy(out, data, start, start + kept, r * kept);
    }
    return { name, datatype, shape: [p.rows, p.length, ...dims.slice(2)], data: out };
  }
}

function fill(out: TensorData, value: number | bigint | string): void {
  (out as unknown as { fill(v: unknown): void }).fill(value);
}

/** Copies source[from, to) into target at `at`. */
function copy(target: TensorData, source: TensorData, from: number, to: number, at: number): void {
  if (Array.isArray(source)) {
    for (let i = from; i < to; i++) (target as string[])[at + i - from] = source[i]!;
    return;
  }
  (target as Float32Array).set((source as Float32Array).subarray(from, to), at);
}

/** source[from, to) sharing memory when the data is a typed array. */
function view(data: TensorData, from: number, to: number): TensorData {
  return Array.isArray(data) ? data.slice(from, to) : (data as Float32Array).subarray(from, to);
}

/** The batcher's metric children, resolved once: label lookups are not free on the hot path. */
function boundMetrics(metrics: RunnerMetrics, labels: { model: string; version: string }) {
  const failure = (reason: string) => metrics.failures.labels({ ...labels, reason });
  return {
    failures: {
      queue_full: failure('queue_full'),
      cancelled: failure('cancelled'),
      deadline: failure('deadline_exceeded'),
      execution_error: failure('execution_error'),
    },
    executions: metrics.executions.labels(labels),
    inferences: metrics.inferences.labels(labels),
    queueSeconds: metrics.queueSeconds.labels(labels),
    computeSeconds: metrics.computeSeconds.labels(labels),
    batchSize: metrics.batchSize.labels(labels),
    pending: metrics.pending.labels(labels),
    queued: metrics.queued.labels(labels),
  };
}
