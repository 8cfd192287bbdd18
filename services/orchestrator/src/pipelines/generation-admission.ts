/**
 * Admission of generation streams, per model, before any work is done for
 * them. A model's runner holds `maxConcurrentSequences` running and
 * `maxQueuedSequences` waiting sequences; a stream beyond that would only be
 * tokenized, sent, and refused by the runner (hundreds of milliseconds under
 * load), so this orchestrator refuses it at once with RESOURCE_EXHAUSTED and
 * a retry delay estimated from how long streams of that model last.
 */
import { resourceExhausted, type StatusError } from '@maas/shared';
import type { CatalogueModel } from '../catalogue.js';
import { ServiceTimeEstimate } from './micro-batcher.js';

/** The delay suggested before any stream of a model has finished. */
const FIRST_RETRY_MS = 250;

export class GenerationAdmission {
  private readonly open = new Map<string, number>();
  private readonly durations = new Map<string, ServiceTimeEstimate>();

  /**
   * @param streamsPerModel streams each model may have open through this
   *   orchestrator; 0 means the model's running + queued sequences on one runner.
   */
  constructor(
    private readonly streamsPerModel: number,
    private readonly onRefused?: (model: string) => void,
  ) {}

  capacity(model: CatalogueModel): number {
    if (this.streamsPerModel > 0) return this.streamsPerModel;
    const g = model.config.generation;
    return g ? g.maxConcurrentSequences + g.maxQueuedSequences : Infinity;
  }

  /** Opens a stream for the model or throws RESOURCE_EXHAUSTED; the returned function closes it (idempotent). */
  admit(model: CatalogueModel): () => void {
    const name = model.name;
    const current = this.open.get(name) ?? 0;
    const capacity = this.capacity(model);
    if (current >= capacity) {
      this.onRefused?.(name);
      throw this.refusal(model, current, capacity);
    }
    this.open.set(name, current + 1);
    const openedAt = performance.now();
    let closed = false;
    return () => {
      if (closed) return;
      closed = true;
      this.open.set(name, (this.open.get(name) ?? 1) - 1);
      let estimate = this.durations.get(name);
      if (!estimate) this.durations.set(name, (estimate = new ServiceTimeEstimate()));
      estimate.observe(performance.now() - openedAt);
    };
  }

  openStreams(model: string): number {
    return this.open.get(model) ?? 0;
  }

  /** Forgets models that are gone. */
  retain(keep: (model: string) => boolean): void {
    for (const name of [...this.open.keys()]) if (!keep(name) && !this.open.get(name)) this.open.delete(name);
    for (const name of [...this.durations.keys()]) if (!keep(name)) this.durations.delete(name);
  }

  private refusal(model: CatalogueModel, current: number, capacity: number): StatusError {
    // A slot frees when one of the running streams ends: on average a stream's duration divided by
    // the streams that run at once.
    const running = Math.max(1, model.config.generation?.maxConcurrentSequences ?? 1);
    const mean = this.durations.get(model.name)?.ms ?? 0;
    const retryMs = mean === 0 ? FIRST_RETRY_MS : Math.max(10, Math.ceil(mean / running));
    return resourceExhausted(
      `model '${model.name}' is overloaded: ${current} generation streams open (capacity ${capacity})`,
      retryMs,
    );
  }
}
