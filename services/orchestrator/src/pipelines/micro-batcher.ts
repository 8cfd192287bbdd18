/**
 * Coalesces concurrent requests for one model into batched downstream calls,
 * so that each hop (Encode, ModelInfer) is paid once per batch, not once per
 * request. A batch leaves as soon as a downstream slot is free (after the
 * current event-loop turn, which gathers requests that arrived together),
 * or after `windowUs` when set; while `maxInFlight` batches are out,
 * requests queue and leave together when one returns. At concurrency 1 a
 * request thus waits for nothing; under load batches grow by themselves.
 *
 * Admission: the queue is bounded by rows and by the time a request would
 * wait in it, estimated from the measured service time of recent batches.
 * A request that would overflow it, or could not start before its deadline,
 * is refused at once with RESOURCE_EXHAUSTED and a retry delay — under
 * overload the excess is turned away in microseconds while what is admitted
 * is served in time, instead of everything waiting until its deadline.
 * Members whose caller has gone are dropped before their batch is formed.
 *
 * Tracing: a batch's downstream calls run in a `batch` span that is a child
 * of the first request's span and links every other request's span, so each
 * request's trace leads to the calls that served it.
 */
import { status } from '@grpc/grpc-js';
import { resourceExhausted, StatusError } from '@maas/shared';
import { context, type Context, type Link, SpanKind, trace } from '@opentelemetry/api';

export interface BatchContext {
  /** The latest deadline of the members: no request is cut short by another's deadline. */
  deadline: Date;
  /** Aborted when every member has gone (cancelled or past its deadline). */
  signal: AbortSignal;
}

/** One result per input, in order: a value, or an error for that input alone. */
export type BatchRunner<I, O> = (inputs: I[], batch: BatchContext) => Promise<(O | Error)[]>;

export interface MicroBatcherOptions<I, O> {
  /** Rows per batch (a request of n texts is n rows; requests are never split). */
  maxBatchSize: number;
  windowUs: number;
  maxInFlight: number;
  /** Rows that may wait in the queue; a request that would exceed it is refused. */
  maxQueueRows: number;
  /** Longest estimated wait in the queue a request is admitted to (ms). */
  maxQueueWaitMs: number;
  run: BatchRunner<I, O>;
  /**
   * When a whole batch fails with an error this says is about the input (not
   * the downstream), each member is run again alone so that one bad request
   * does not fail the others.
   */
  isolate?: (error: unknown) => boolean;
  /** Called with the size of every batch sent (rows, requests). */
  onBatch?: (rows: number, requests: number) => void;
  /** Called for every request refused at admission, with the reason. */
  onRefused?: (reason: 'queue_full' | 'wait_too_long' | 'deadline') => void;
  /** Called for every queued request dropped because its deadline had passed before its batch left. */
  onExpired?: () => void;
}

/**
 * Mean service time of recent batches (exponentially weighted, so it follows
 * a change of load or model within a few dozen batches).
 */
export class ServiceTimeEstimate {
  private meanMs = 0;

  constructor(private readonly weight = 0.2) {}

  observe(ms: number): void {
    this.meanMs = this.meanMs === 0 ? ms : this.meanMs + this.weight * (ms - this.meanMs);
  }

  /** 0 until the first batch has been measured. */
  get ms(): number {
    return this.meanMs;
  }
}

interface Member<I, O> {
  input: I;
  rows: number;
  deadline: number;
  context: Context;
  signal?: AbortSignal;
  settled: boolean;
  resolve(value: O): void;
  reject(error: unknown): void;
}

export class MicroBatcher<I, O> {
  private queue: Member<I, O>[] = [];
  private queuedRows = 0;
  private inFlight = 0;
  private scheduled: NodeJS.Immediate | NodeJS.Timeout | undefined;
  private readonly tracer = trace.getTracer('maas-orchestrator');
  readonly serviceTime = new ServiceTimeEstimate();

  constructor(private readonly options: MicroBatcherOptions<I, O>) {}

  get pending(): number {
    return this.queue.length;
  }

  /**
   * How long a request arriving now would wait before its batch leaves: the
   * batches queued ahead of it (and the one that must return to free a slot)
   * spread over the in-flight slots.
   */
  estimatedWaitMs(): number {
    const { maxBatchSize, maxInFlight } = this.options;
    if (this.inFlight < maxInFlight && this.queue.length === 0) return 0;
    const batchesAhead = Math.floor(this.queuedRows / maxBatchSize) + (this.inFlight >= maxInFlight ? 1 : 0);
    return (batchesAhead * this.serviceTime.ms) / maxInFlight;
  }

  /** The refusal for a request of `rows` due at `deadline`, or undefined when it is admitted. */
  private refusal(rows: number, deadline: number): StatusError | undefined {
    const { maxQueueRows, maxQueueWaitMs } = this.options;
    const waitMs = this.estimatedWaitMs();
    const retryAfterMs = Math.max(1, waitMs);
    if (this.queuedRows > 0 && this.queuedRows + rows > maxQueueRows) {
      this.options.onRefused?.('queue_full');
      return resourceExhausted(
        `overloaded: ${this.queuedRows} texts are waiting for this model; retry later`,
        retryAfterMs,
      );
    }
    if (waitMs > maxQueueWaitMs) {
      this.options.onRefused?.('wait_too_long');
      return resourceExhausted(
        `overloaded: the wait for this model is about ${Math.round(waitMs)} ms; retry later`,
        retryAfterMs,
      );
    }
    // Only queueing is refused here: a deadline too short for the work itself, on an idle model, ends as
    // DEADLINE_EXCEEDED like any call that runs out of time.
    if (waitMs > 0 && Date.now() + waitMs + this.serviceTime.ms > deadline) {
      this.options.onRefused?.('deadline');
      return resourceExhausted(
        `overloaded: this model cannot answer within the call's deadline (about ${Math.round(
          waitMs + this.serviceTime.ms,
        )} ms needed); retry later or allow more time`,
        retryAfterMs,
      );
    }
    return undefined;
  }

  submit(input: I, rows: number, options: { deadline: Date; signal?: AbortSignal }): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      const member: Member<I, O> = {
        input,
        rows,
        deadline: options.deadline.getTime(),
        context: context.active(),
        signal: options.signal,
        settled: false,
        resolve: (value) => {
          if (!member.settled) {
            member.settled = true;
            resolve(value);
          }
        },
        reject: (error) => {
          if (!member.settled) {
            member.settled = true;
            reject(error);
          }
        },
      };
      if (options.signal?.aborted) {
        reject(new StatusError(status.CANCELLED, 'cancelled'));
        return;
      }
      const refused = this.refusal(rows, member.deadline);
      if (refused) {
        reject(refused);
        return;
      }
      options.signal?.addEventListener(
        'abort',
        () => {
          const at = this.queue.indexOf(member);
          if (at >= 0) {
            this.queue.splice(at, 1);
            this.queuedRows -= member.rows;
          }
          member.reject(new StatusError(status.CANCELLED, 'cancelled'));
        },
        { once: true },
      );
      this.queue.push(member);
      this.queuedRows += rows;
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.queuedRows >= this.options.maxBatchSize) {
      this.dispatch();
      return;
    }
    if (this.scheduled) return;
    const fire = () => {
      this.scheduled = undefined;
      this.dispatch();
    };
    this.scheduled =
      this.options.windowUs > 0 ? setTimeout(fire, this.options.windowUs / 1000) : setImmediate(fire);
  }

  private dispatch(): void {
    while (this.inFlight < this.options.maxInFlight && this.queue.length > 0) {
      const batch: Member<I, O>[] = [];
      let rows = 0;
      const now = Date.now();
      while (this.queue.length > 0) {
        const next = this.queue[0]!;
        if (next.deadline <= now) {
          // Its caller has stopped waiting: computing it would only delay the others.
          this.queue.shift();
          this.queuedRows -= next.rows;
          this.options.onExpired?.();
          next.reject(new StatusError(status.DEADLINE_EXCEEDED, 'deadline exceeded while queued'));
          continue;
        }
        if (batch.length > 0 && rows + next.rows > this.options.maxBatchSize) break;
        this.queue.shift();
        this.queuedRows -= next.rows;
        rows += next.rows;
        batch.push(next);
      }
      if (batch.length === 0) break;
      this.inFlight++;
      this.options.onBatch?.(rows, batch.length);
      void this.execute(batch).finally(() => {
        this.inFlight--;
        if (this.queue.length > 0) this.dispatch();
      });
    }
  }

  private async execute(batch: Member<I, O>[]): Promise<void> {
    const first = batch[0]!;
    const links: Link[] = [];
    for (const member of batch.slice(1)) {
      const spanContext = trace.getSpanContext(member.context);
      if (spanContext) links.push({ context: spanContext });
    }
    const span = this.tracer.startSpan(
      'batch',
      { kind: SpanKind.INTERNAL, links, attributes: { 'maas.batch.requests': batch.length } },
      first.context,
    );
    const controller = new AbortController();
    const stillWanted = () => batch.some((m) => !m.settled);
    const onMemberGone = () => {
      if (!stillWanted()) controller.abort();
    };
    for (const member of batch) member.signal?.addEventListener('abort', onMemberGone, { once: true });
    const deadline = new Date(Math.max(...batch.map((m) => m.deadline)));
    const startedAt = performance.now();
    try {
      await context.with(trace.setSpan(first.context, span), async () => {
        try {
          const results = await this.options.run(
            batch.map((m) => m.input),
            { deadline, signal: controller.signal },
          );
          this.serviceTime.observe(performance.now() - startedAt);
          batch.forEach((member, i) => {
            const result = results[i];
            if (result instanceof Error) member.reject(result);
            else member.resolve(result as O);
          });
        } catch (error) {
          if (batch.length > 1 && this.options.isolate?.(error)) {
            await Promise.all(batch.filter((m) => !m.settled).map((member) => this.execute([member])));
          } else {
            for (const member of batch) member.reject(error);
          }
        }
      });
    } finally {
      for (const member of batch) member.signal?.removeEventListener('abort', onMemberGone);
      span.end();
    }
  }
}
