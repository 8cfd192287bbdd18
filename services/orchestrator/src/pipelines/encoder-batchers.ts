/**
 * One micro-batcher per classification/embedding model, rebuilt when the
 * model's catalogue entry changes and dropped when the model leaves the
 * catalogue (a dropped batcher's queued and in-flight work still completes).
 */
import { status } from '@grpc/grpc-js';
import { StatusError } from '@maas/shared';
import type { Counter, Histogram } from 'prom-client';
import type { CatalogueModel } from '../catalogue.js';
import type { Downstream } from '../downstream/clients.js';
import {
  type EncoderInput,
  type EncoderPipelineSettings,
  type EncoderRows,
  runEncoderBatch,
} from './encoder.js';
import { MicroBatcher } from './micro-batcher.js';

export interface BatchingSettings extends EncoderPipelineSettings {
  windowUs: number;
  maxInFlight: number;
  maxQueueRows: number;
  maxQueueWaitMs: number;
}

export interface BatchMetrics {
  batchRows: Histogram<'model'>;
  batchRequests: Histogram<'model'>;
  refused: Counter<'model' | 'reason'>;
  expired: Counter<'model'>;
}

export class EncoderBatchers {
  private readonly batchers = new Map<
    string,
    { model: CatalogueModel; batcher: MicroBatcher<EncoderInput, EncoderRows> }
  >();

  constructor(
    private readonly downstream: Downstream,
    private readonly settings: BatchingSettings,
    private readonly metrics?: BatchMetrics,
  ) {}

  get size(): number {
    return this.batchers.size;
  }

  /** Drops the batchers of models no longer in the catalogue. */
  retain(isCurrent: (name: string) => boolean): void {
    for (const name of this.batchers.keys()) if (!isCurrent(name)) this.batchers.delete(name);
  }

  get(model: CatalogueModel): MicroBatcher<EncoderInput, EncoderRows> {
    const current = this.batchers.get(model.name);
    if (current?.model === model) return current.batcher;
    const batcher = new MicroBatcher<EncoderInput, EncoderRows>({
      maxBatchSize: model.limits.maxBatchSize,
      windowUs: this.settings.windowUs,
      maxInFlight: this.settings.maxInFlight,
      maxQueueRows: this.settings.maxQueueRows,
      maxQueueWaitMs: this.settings.maxQueueWaitMs,
      run: (inputs, batch) => runEncoderBatch(this.downstream, model, this.settings, inputs, batch),
      // One request's bad input must not fail the requests it was batched with.
      isolate: (error) => error instanceof StatusError && error.code === status.INVALID_ARGUMENT,
      onBatch: (rows, requests) => {
        this.metrics?.batchRows.observe({ model: model.name }, rows);
        this.metrics?.batchRequests.observe({ model: model.name }, requests);
      },
      onRefused: (reason) => this.metrics?.refused.inc({ model: model.name, reason }),
      onExpired: () => this.metrics?.expired.inc({ model: model.name }),
    });
    this.batchers.set(model.name, { model, batcher });
    return batcher;
  }
}
