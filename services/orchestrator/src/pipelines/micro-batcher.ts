/**
 * Coalesces concurrent requests for one model into batched downstream calls,
 * so that each hop (Encode, ModelInfer) is paid once per batch, not once per
 * request. A batch leaves as soon as a downstream slot is free (after the
 * current event-loop turn, which gathers requests that arrived together),
 * or after `windowUs` when set; while `maxInFlight` batches are out,
 * requests queue and leave together when one returns. At concurrency 1 a
 * request thus waits for nothing; under load batches grow by themselves.
 *
 * Tracing: a batch's downstream calls run in a `batch` span that is a child
 * of the first request's span and links every other request's span, so each
 * request's trace leads to the calls that served it.
 */
import { status } from '@grpc/grpc-js';
import { StatusError } from '@maas/shared';
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
  run: BatchRunner<I, O>;
  /**
   * When a whole batch fails with an error this says is about the input (not
   * the downstream), each member is run again alone so that one bad request
   * does not fail the others.
   */
  isolate?: (error: unknown) => boolean;
  /** Called with the size of every batch sent (rows, requests). */
  onBatch?: (rows: number, requests: number) => void;
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

  constructor(private readonly options: MicroBatcherOptions<I, O>) {}

  get pending(): number {
    return this.queue.length;
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
      while (this.queue.length > 0) {
        const next = this.queue[0]!;
        if (batch.length > 0 && rows + next.rows > this.options.maxBatchSize) break;
        this.queue.shift();
        this.queuedRows -= next.rows;
        rows += next.rows;
        batch.push(next);
      }
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
    try {
      await context.with(trace.setSpan(first.context, span), async () => {
        try {
          const results = await this.options.run(
            batch.map((m) => m.input),
            { deadline, signal: controller.signal },
          );
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
