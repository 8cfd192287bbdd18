/**
 * A bound on the unary calls this orchestrator works on at once. The
 * per-model queues bound what waits for a model, but when the orchestrator's
 * own CPU is what runs out (its gRPC work per call is most of a small
 * model's cost), calls pile up in front of its event loop, where nothing can
 * refuse them, until every one has outlived its deadline. Refusing the calls
 * beyond this bound costs a fraction of serving them, so the admitted ones
 * keep being served in time.
 */
import { type Refusal, resourceExhausted } from '@maas/shared';
import { ServiceTimeEstimate } from '../pipelines/micro-batcher.js';

/** How often the event loop's lateness is sampled. */
const LAG_SAMPLE_MS = 20;

export class InFlightLimit {
  private inFlight = 0;
  private readonly duration = new ServiceTimeEstimate(0.05);
  /** How late the last lag sample fired: what a call arriving now waited before its handler ran. */
  private lagMs = 0;
  private readonly sampler: NodeJS.Timeout | undefined;

  /**
   * @param limit calls at once; 0: no limit.
   * @param maxLagMs event-loop lateness beyond which new calls are refused; 0: not checked. When the
   *   orchestrator's CPU is short, calls queue in front of its event loop, where no limit on calls
   *   in progress sees them: the loop's lateness does.
   */
  constructor(
    private readonly limit: number,
    private readonly onRefused?: (reason: 'in_flight' | 'event_loop_lag') => void,
    private readonly maxLagMs = 0,
  ) {
    if (maxLagMs > 0) {
      let expected = performance.now() + LAG_SAMPLE_MS;
      this.sampler = setInterval(() => {
        const now = performance.now();
        this.lagMs = Math.max(0, now - expected);
        expected = now + LAG_SAMPLE_MS;
      }, LAG_SAMPLE_MS);
      this.sampler.unref();
    }
  }

  close(): void {
    if (this.sampler) clearInterval(this.sampler);
  }

  /** Takes a slot or throws RESOURCE_EXHAUSTED; the returned function gives it back (once). */
  acquire(): () => void {
    const taken = this.tryAcquire();
    if (typeof taken === 'function') return taken;
    throw resourceExhausted(taken.message, taken.retryAfterMs);
  }

  /**
   * Takes a slot, returning the function that gives it back (once), or says why not without
   * building an error: the gRPC stream gate refuses with this before grpc-js has built a call,
   * and under overload that path runs thousands of times a second.
   */
  tryAcquire(): (() => void) | Refusal {
    if (this.maxLagMs > 0 && this.lagMs > this.maxLagMs) {
      this.onRefused?.('event_loop_lag');
      return {
        message: `the orchestrator is overloaded: its event loop runs ${Math.round(this.lagMs)} ms late`,
        retryAfterMs: Math.ceil(this.lagMs),
      };
    }
    if (this.limit > 0 && this.inFlight >= this.limit) {
      this.onRefused?.('in_flight');
      // A slot frees when a call ends: about the mean call duration divided by the calls at once.
      return {
        message: `the orchestrator is overloaded: ${this.inFlight} calls in flight (limit ${this.limit})`,
        retryAfterMs: Math.max(1, Math.ceil((this.duration.ms || 50) / Math.max(1, this.limit / 8))),
      };
    }
    this.inFlight++;
    const started = performance.now();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.inFlight--;
      this.duration.observe(performance.now() - started);
    };
  }

  get current(): number {
    return this.inFlight;
  }
}
