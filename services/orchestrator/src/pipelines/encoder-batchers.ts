/** One micro-batcher per classification/embedding model, rebuilt when the model's catalogue entry changes. */
import { status } from '@grpc/grpc-js';
import { StatusError } from '@maas/shared';
import type { Histogram } from 'prom-client';
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
}

export interface BatchMetrics {
  batchRows: Histogram<'model'>;
  batchRequests: Histogram<'model'>;
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

  get(model: CatalogueModel): MicroBatcher<EncoderInput, EncoderRows> {
    const current = this.batchers.get(model.name);
    if (current?.model === model) return current.batcher;
    const batcher = new MicroBatcher<EncoderInput, EncoderRows>({
      maxBatchSize: model.limits.maxBatchSize,
      windowUs: this.settings.windowUs,
      maxInFlight: this.settings.maxInFlight,
      run: (inputs, batch) => runEncoderBatch(this.downstream, model, this.settings, inputs, batch),
      // One request's bad input must not fail the requests it was batched with.
      isolate: (error) => error instanceof StatusError && error.code === status.INVALID_ARGUMENT,
      onBatch: (rows, requests) => {
        this.metrics?.batchRows.observe({ model: model.name }, rows);
        this.metrics?.batchRequests.observe({ model: model.name }, requests);
      },
    });
    this.batchers.set(model.name, { model, batcher });
    return batcher;
  }
}
