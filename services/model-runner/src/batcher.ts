/**
 * Dynamic batching for one model version: requests queue, are merged up to
 * maxBatchSize or until the oldest has waited maxQueueDelay, run once, and
 * are split back. Ragged inputs (variable sequence length) are padded to the
 * longest in the batch; outputs that carry that length are cut back per
 * request, so a request's result does not depend on its neighbours.
 */
import { status } from '@grpc/grpc-js';
import * as ort from 'onnxruntime-node';
import { resourceExhausted, StatusError } from '@maas/shared';
import type { Datatype, Logger, ModelConfig, TensorSpec } from '@maas/shared';
import type { RunnerMetrics } from './metrics.js';
import { DATATYPES, datatypeOfOrt, elementCount, type InputTensor } from './tensors.js';

export interface OutputTensor {
  name: string;
  datatype: Datatype;
  shape: number[];
  data: ArrayLike<unknown> & { length: number };
}

export interface BatchRequest {
  /** Validated inputs; every one has the request's row count as dimension 0 (when batching). */
  inputs: InputTensor[];
  outputs: string[];
  /** True when the caller has gone or its deadline passed: dropped before compute. */
  isCancelled(): 'cancelled' | 'deadline' | false;
}

interface Pending {
  request: BatchRequest;
  rows: number;
  /** Length of the ragged dimension (1) of this request, 0 if none. */
  raggedLength: number;
  key: string;
  enqueuedAt: number;
  resolve(outputs: OutputTensor[]): void;
  reject(error: Error): void;
}

export class DynamicBatcher {
  private readonly queue: Pending[] = [];
  private readonly idle: ort.InferenceSession[];
  private timer: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;
  private inFlight = 0;
  private drainWaiters: (() => void)[] = [];
  private readonly labels: { model: string; version: string };
  private readonly ragged: Set<string>;
  private readonly maxBatch: number;
  private readonly delayMs: number;

  constructor(
    sessions: ort.InferenceSession[],
    private readonly config: ModelConfig,
    version: number,
    private readonly metrics: RunnerMetrics,
    private readonly logger: Logger,
  ) {
    this.idle = [...sessions];
    this.labels = { model: config.name!, version: String(version) };
    this.ragged = new Set(config.inputs.filter((i) => i.ragged).map((i) => i.name));
    this.maxBatch = Math.max(1, config.maxBatchSize);
    this.delayMs = config.dynamicBatching.maxQueueDelayMicroseconds / 1000;
  }

  submit(request: BatchRequest): Promise<OutputTensor[]> {
    if (this.queue.length >= this.config.dynamicBatching.maxQueueSize) {
      this.metrics.failures.inc({ ...this.labels, reason: 'queue_full' });
      return Promise.reject(
        resourceExhausted(
          `model '${this.labels.model}' queue is full (${this.queue.length} requests)`,
          this.delayMs + 1,
        ),
      );
    }
    const batching = this.config.maxBatchSize > 0;
    const rows = batching ? (request.inputs[0]?.shape[0] ?? 1) : 1;
    const raggedInput = request.inputs.find((i) => this.ragged.has(i.name));
    const raggedLength = batching && raggedInput ? (raggedInput.shape[1] ?? 0) : 0;
    // Requests merge only when every non-batch, non-ragged dimension agrees.
    const key = request.inputs
      .map(
        (i) => `${i.name}:${i.shape.slice(1).map((d, k) => (k === 0 && this.ragged.has(i.name) ? '*' : d))}`,
      )
      .join('|');
    return new Promise((resolve, reject) => {
      this.queue.push({ request, rows, raggedLength, key, enqueuedAt: performance.now(), resolve, reject });
      this.inFlight++;
      this.metrics.pending.inc(this.labels);
      this.schedule();
    });
  }

  /** Resolves when nothing is queued or computing (used before releasing sessions). */
  drain(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /**
   * Dispatches when a session is idle and the batch is full or the oldest request has waited
   * long enough. Node timers have 1 ms resolution, so delays under 1 ms wait one event-loop
   * turn instead: requests that arrived in the same I/O burst still share the batch.
   */
  private schedule(delayElapsed = false): void {
    if (this.queue.length === 0 || this.idle.length === 0) return;
    const oldest = this.queue[0]!;
    const queuedRows = this.queue.reduce((n, p) => n + p.rows, 0);
    const waited = performance.now() - oldest.enqueuedAt;
    if (this.config.maxBatchSize === 0 || queuedRows >= this.maxBatch || waited >= this.delayMs || delayElapsed) {
      if (this.timer) clearTimeout(this.timer);
      if (this.immediate) clearImmediate(this.immediate);
      this.timer = undefined;
      this.immediate = undefined;
      const session = this.idle.pop()!;
      void this.run(session, this.take()).finally(() => {
        this.idle.push(session);
        this.schedule();
      });
      this.schedule();
    } else if (!this.timer && !this.immediate) {
      const remaining = this.delayMs - waited;
      if (remaining < 1) {
        this.immediate = setImmediate(() => {
          this.immediate = undefined;
          this.schedule(true);
        });
      } else {
        this.timer = setTimeout(() => {
          this.timer = undefined;
          this.schedule(true);
        }, remaining);
      }
    }
  }

  /** The next batch: the oldest request and every compatible one behind it that fits. */
  private take(): Pending[] {
    const batch: Pending[] = [];
    let rows = 0;
    const limit = this.config.maxBatchSize === 0 ? 1 : this.maxBatch;
    for (let i = 0; i < this.queue.length && rows < limit;) {
      const p = this.queue[i]!;
      const cancelled = p.request.isCancelled();
      if (cancelled) {
        this.queue.splice(i, 1);
        this.settle();
        this.metrics.failures.inc({ ...this.labels, reason: cancelled });
        p.reject(
          new StatusError(
            cancelled === 'deadline' ? status.DEADLINE_EXCEEDED : status.CANCELLED,
            cancelled === 'deadline' ? 'deadline exceeded while queued' : 'cancelled while queued',
          ),
        );
        continue;
      }
      if (
        (batch.length === 0 || (p.key === batch[0]!.key && rows + p.rows <= limit)) &&
        (batch.length === 0 || this.config.maxBatchSize > 0)
      ) {
        this.queue.splice(i, 1);
        batch.push(p);
        rows += p.rows;
      } else {
        i++;
      }
    }
    return batch;
  }

  private settle(): void {
    this.inFlight--;
    this.metrics.pending.dec(this.labels);
    if (this.inFlight === 0) for (const resolve of this.drainWaiters.splice(0)) resolve();
  }

  private async run(session: ort.InferenceSession, batch: Pending[]): Promise<void> {
    if (batch.length === 0) return;
    const started = performance.now();
    for (const p of batch) this.metrics.queueSeconds.observe(this.labels, (started - p.enqueuedAt) / 1000);
    try {
      const rows = batch.reduce((n, p) => n + p.rows, 0);
      const maxLength = Math.max(...batch.map((p) => p.raggedLength));
      const feeds: Record<string, ort.Tensor> = {};
      for (const spec of this.config.inputs) {
        const parts = batch.map((p) => p.request.inputs.find((i) => i.name === spec.name));
        feeds[spec.name] = this.merge(spec, parts, batch, rows, maxLength);
      }
      const wanted = [...new Set(batch.flatMap((p) => p.request.outputs))];
      const results = await session.run(feeds, wanted);
      this.metrics.executions.inc(this.labels);
      this.metrics.inferences.inc(this.labels, rows);
      this.metrics.batchSize.observe(this.labels, rows);
      let row = 0;
      for (const p of batch) {
        p.resolve(p.request.outputs.map((name) => this.split(name, results[name]!, row, p, rows, maxLength)));
        row += p.rows;
        this.metrics.requests.inc({ ...this.labels, result: 'success' });
      }
    } catch (error) {
      this.logger.error({ ...this.labels, err: error }, 'model execution failed');
      for (const p of batch) {
        this.metrics.requests.inc({ ...this.labels, result: 'failure' });
        this.metrics.failures.inc({ ...this.labels, reason: 'error' });
        p.reject(
          new StatusError(
            status.INTERNAL,
            `model '${this.labels.model}' failed to run: ${(error as Error).message}`,
          ),
        );
      }
    } finally {
      this.metrics.computeSeconds.observe(this.labels, (performance.now() - started) / 1000);
      for (let i = 0; i < batch.length; i++) this.settle();
    }
  }

  /** One batch tensor from the requests' parts: rows concatenated, ragged rows padded to maxLength. */
  private merge(
    spec: TensorSpec,
    parts: (InputTensor | undefined)[],
    batch: Pending[],
    rows: number,
    maxLength: number,
  ): ort.Tensor {
    const { name, datatype, padValue } = spec;
    const info = DATATYPES[datatype]!;
    const first = parts.find((p) => p !== undefined);
    const ragged = this.ragged.has(name) && this.config.maxBatchSize > 0;
    // An optional input left out by every request is all padValue (e.g. token_type_ids of zeros).
    const declared = [rows, ...(ragged ? [maxLength, ...spec.dims.slice(1)] : spec.dims)];
    if (this.config.maxBatchSize === 0) {
      if (first) return new ort.Tensor(info.ort, first.data as never, first.shape);
      return this.filled(
        info,
        spec.dims.map((d) => Math.max(d, 1)),
        padValue,
      );
    }
    if (!first)
      return this.filled(
        info,
        declared.map((d) => Math.max(d, 0)),
        padValue,
      );
    const inner = first.shape.slice(ragged ? 2 : 1);
    const innerCount = elementCount(inner);
    const length = ragged ? maxLength : 1;
    const shape = ragged ? [rows, maxLength, ...inner] : [rows, ...first.shape.slice(1)];
    const total = elementCount(shape);
    const out = new (
      info.array as unknown as new (n: number) => {
        [i: number]: unknown;
        set(a: ArrayLike<unknown>, o: number): void;
        fill(v: unknown): void;
      }
    )(total);
    const pad = info.ort === 'int64' || info.ort === 'uint64' ? BigInt(padValue) : padValue;
    if (padValue !== 0) out.fill(pad);
    let row = 0;
    batch.forEach((p, k) => {
      const part = parts[k];
      const rowLength = ragged ? p.raggedLength : 1;
      const perRow = rowLength * innerCount;
      for (let r = 0; r < p.rows; r++) {
        if (part) {
          const src = (
            part.data as unknown as { subarray(a: number, b: number): ArrayLike<unknown> }
          ).subarray(r * perRow, (r + 1) * perRow);
          out.set(src, (row + r) * length * innerCount);
        }
      }
      row += p.rows;
    });
    return new ort.Tensor(info.ort, out as never, shape);
  }

  private filled(
    info: (typeof DATATYPES)[keyof typeof DATATYPES] & object,
    shape: number[],
    value: number,
  ): ort.Tensor {
    const data = new (info.array as unknown as new (n: number) => { fill(v: unknown): unknown })(
      elementCount(shape),
    );
    data.fill(info.ort === 'int64' || info.ort === 'uint64' ? BigInt(value) : value);
    return new ort.Tensor(info.ort, data as never, shape);
  }

  /** A request's rows of an output; a dimension equal to the padded length is cut back to the request's own. */
  private split(
    name: string,
    tensor: ort.Tensor,
    firstRow: number,
    p: Pending,
    rows: number,
    maxLength: number,
  ): OutputTensor {
    const datatype = datatypeOfOrt(tensor.type) ?? 'FP32';
    const dims = tensor.dims as number[];
    const data = tensor.data as unknown as {
      subarray(a: number, b: number): ArrayLike<unknown> & { length: number };
      slice(a: number, b: number): ArrayLike<unknown> & { length: number };
    };
    if (this.config.maxBatchSize === 0) return { name, datatype, shape: dims, data: tensor.data as never };
    const perRow = elementCount(dims.slice(1));
    const trim =
      maxLength > 0 && dims.length >= 2 && dims[1] === maxLength && p.raggedLength < maxLength && rows > 0;
    if (!trim) {
      return {
        name,
        datatype,
        shape: [p.rows, ...dims.slice(1)],
        data: data.slice(firstRow * perRow, (firstRow + p.rows) * perRow),
      };
    }
    const inner = elementCount(dims.slice(2));
    const info = DATATYPES[datatype]!;
    const out = new (
      info.array as unknown as new (
        n: number,
      ) => ArrayLike<unknown> & { length: number; set(a: ArrayLike<unknown>, o: number): void }
    )(p.rows * p.raggedLength * inner);
    for (let r = 0; r < p.rows; r++) {
      const start = (firstRow + r) * perRow;
      out.set(data.subarray(start, start + p.raggedLength * inner), r * p.raggedLength * inner);
    }
    return { name, datatype, shape: [p.rows, p.raggedLength, ...dims.slice(2)], data: out };
  }
}
