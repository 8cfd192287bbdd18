import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { LATENCY_BUCKETS_SECONDS } from '@maas/shared';

/** Model executions of small models take tens of microseconds. */
const COMPUTE_BUCKETS_SECONDS = [
  0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
];

export const MODEL_STATES = ['UNAVAILABLE', 'LOADING', 'READY', 'UNLOADING'] as const;
export type ModelState = (typeof MODEL_STATES)[number];

/**
 * The model-runner's inference metrics, after Triton's: requests vs.
 * executions (their ratio is the batching gain), queue vs. compute time,
 * pending requests (the autoscaling signal) and model states. Every series is
 * labelled by model and version. Generation has its own (generation/metrics.ts).
 */
export function createRunnerMetrics(registry: Registry) {
  const labelNames = ['model', 'version'] as const;
  const registers = [registry];
  return {
    requests: new Counter({
      name: 'maas_runner_inference_requests_total',
      help: 'ModelInfer requests that reached a model version, by result (success, failure).',
      labelNames: [...labelNames, 'result'],
      registers,
    }),
    failures: new Counter({
      name: 'maas_runner_inference_failures_total',
      help: 'Failed inference requests by reason: invalid_argument, queue_full, deadline_exceeded, cancelled, execution_error, unavailable.',
      labelNames: [...labelNames, 'reason'],
      registers,
    }),
    executions: new Counter({
      name: 'maas_runner_executions_total',
      help: 'Model executions (one per batch run).',
      labelNames,
      registers,
    }),
    inferences: new Counter({
      name: 'maas_runner_inferences_total',
      help: 'Rows inferred; divided by executions it gives the mean batch size.',
      labelNames,
      registers,
    }),
    queueSeconds: new Histogram({
      name: 'maas_runner_queue_duration_seconds',
      help: 'Time a request waited in the batching queue before its batch started.',
      labelNames,
      buckets: LATENCY_BUCKETS_SECONDS,
      registers,
    }),
    computeSeconds: new Histogram({
      name: 'maas_runner_compute_duration_seconds',
      help: 'Time of one model execution (a whole batch) in onnxruntime.',
      labelNames,
      buckets: COMPUTE_BUCKETS_SECONDS,
      registers,
    }),
    batchSize: new Histogram({
      name: 'maas_runner_batch_size',
      help: 'Rows per model execution.',
      labelNames,
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
      registers,
    }),
    pending: new Gauge({
      name: 'maas_runner_pending_requests',
      help: 'Requests queued or executing (in flight); the model-runner autoscaling signal.',
      labelNames,
      registers,
    }),
    queued: new Gauge({
      name: 'maas_runner_queued_requests',
      help: 'Requests waiting in the batching queue (queue depth).',
      labelNames,
      registers,
    }),
    modelState: new Gauge({
      name: 'maas_runner_model_state',
      help: '1 for the state a model version is in (UNAVAILABLE, LOADING, READY, UNLOADING), 0 for the others.',
      labelNames: [...labelNames, 'state'],
      registers,
    }),
    provider: new Gauge({
      name: 'maas_runner_model_provider',
      help: '1 for each loaded model version, labelled with the execution provider (webgpu, cuda, cpu) and device it runs on.',
      labelNames: [...labelNames, 'provider', 'device'],
      registers,
    }),
    loadSeconds: new Gauge({
      name: 'maas_runner_model_load_duration_seconds',
      help: 'How long the last load of a model version took, sessions and warm-up included.',
      labelNames,
      registers,
    }),
  };
}
export type RunnerMetrics = ReturnType<typeof createRunnerMetrics>;
