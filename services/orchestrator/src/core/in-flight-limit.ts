/**
 * A bound on the unary calls this orchestrator works on at once. The
 * per-model queues bound what waits for a model, but when the orchestrator's
 * own CPU is what runs out (its gRPC work per call is most of a small
 * model's cost), calls pile up in front of its event loop, where nothing can
 * refuse them, until every one has outlived its deadline. Refusing the calls
 * beyond this bound costs a fraction of serving them, so the admitted ones
 * keep being served in time.
 */
import { resourceExhausted } from '@maas/shared';
import { ServiceTimeEstimate } from '../pipelines/micro-batcher.js';

export class InFlightLimit {
  private inFlight = 0;
  private readonly duration = new ServiceTimeEstimate(0.05);

  /** @param limit calls at once; 0: no limit. */
  constructor(
    private readonly limit: number,
    private readonly onRefused?: () => void,
  ) {}

  /** Takes a slot or throws RESOURCE_EXHAUSTED; the returned function gives it back (once). */
  acquire(): () => void {
    if (this.limit > 0 && this.inFlight >= this.limit) {
      this.onRefused?.();
      // A slot frees when a call ends: about the mean call duration divided by the calls at once.
      const retryMs = Math.max(1, Math.ceil((this.duration.ms || 50) / Math.max(1, this.limit / 8)));
      throw resourceExhausted(
        `the orchestrator is overloaded: ${this.inFlight} calls in flight (limit ${this.limit})`,
        retryMs,
      );
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
