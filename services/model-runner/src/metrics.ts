import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { LATENCY_BUCKETS_SECONDS } from '@maas/shared';

/** Model-runner metrics, after Triton's: queue vs. compute time, batch sizes, pending requests. */
export function createRunnerMetrics(registry: Registry) {
  const labelNames = ['model', 'version'] as const;
  return {
    requests: new Counter({
      name: 'maas_runner_inference_requests_total',
      help: 'Inference requests, by result (success, failure).',
      labelNames: [...labelNames, 'result'],
      registers: [registry],
    }),
    failures: new Counter({
      name: 'maas_runner_inference_failures_total',
      help: 'Failed inference requests by reason (queue_full, cancelled, deadline, invalid, error).',
      labelNames: [...labelNames, 'reason'],
      registers: [registry],
    }),
    executions: new Counter({
      name: 'maas_runner_executions_total',
      help: 'Model executions (one per batch run).',
      labelNames,
      registers: [registry],
    }),
    inferences: new Counter({
      name: 'maas_runner_inferences_total',
      help: 'Items inferred (batch rows); divided by executions it gives the mean batch size.',
      labelNames,
      registers: [registry],
    }),
    queueSeconds: new Histogram({
      name: 'maas_runner_queue_duration_seconds',
      help: 'Time requests wait in the batching queue.',
      labelNames,
      buckets: LATENCY_BUCKETS_SECONDS,
      registers: [registry],
    }),
    computeSeconds: new Histogram({
      name: 'maas_runner_compute_duration_seconds',
      help: 'Time of one model execution (a whole batch), input assembly to split outputs.',
      labelNames,
      buckets: LATENCY_BUCKETS_SECONDS,
      registers: [registry],
    }),
    batchSize: new Histogram({
      name: 'maas_runner_batch_size',
      help: 'Rows per model execution.',
      labelNames,
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
      registers: [registry],
    }),
    pending: new Gauge({
      name: 'maas_runner_pending_requests',
      help: 'Requests queued or computing; the model-runner autoscaling signal.',
      labelNames,
      registers: [registry],
    }),
    modelState: new Gauge({
      name: 'maas_runner_model_ready',
      help: '1 when the model version is READY, 0 otherwise.',
      labelNames,
      registers: [registry],
    }),
  };
}
export type RunnerMetrics = ReturnType<typeof createRunnerMetrics>;
