import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { LATENCY_BUCKETS_SECONDS } from '@maas/shared';

export function createGenerationMetrics(registry: Registry) {
  const labelNames = ['model', 'version'] as const;
  return {
    timeToFirstToken: new Histogram({
      name: 'maas_runner_generation_time_to_first_token_seconds',
      help: 'From arrival to the first generated token (queue + prefill).',
      labelNames,
      buckets: LATENCY_BUCKETS_SECONDS,
      registers: [registry],
    }),
    interTokenLatency: new Histogram({
      name: 'maas_runner_generation_inter_token_latency_seconds',
      help: 'Time between consecutive tokens of a sequence.',
      labelNames,
      buckets: LATENCY_BUCKETS_SECONDS,
      registers: [registry],
    }),
    queueSeconds: new Histogram({
      name: 'maas_runner_generation_queue_duration_seconds',
      help: 'Time a sequence waits for a slot in the running batch.',
      labelNames,
      buckets: LATENCY_BUCKETS_SECONDS,
      registers: [registry],
    }),
    generatedTokens: new Counter({
      name: 'maas_runner_generation_generated_tokens_total',
      help: 'Tokens generated.',
      labelNames,
      registers: [registry],
    }),
    promptTokens: new Counter({
      name: 'maas_runner_generation_prompt_tokens_total',
      help: 'Prompt tokens received.',
      labelNames,
      registers: [registry],
    }),
    finished: new Counter({
      name: 'maas_runner_generation_finished_total',
      help: 'Sequences finished, by reason (length, eos, stop, cancelled).',
      labelNames: [...labelNames, 'reason'],
      registers: [registry],
    }),
    rejected: new Counter({
      name: 'maas_runner_generation_rejected_total',
      help: 'Sequences refused because the waiting queue was full.',
      labelNames,
      registers: [registry],
    }),
    running: new Gauge({
      name: 'maas_runner_generation_running_sequences',
      help: 'Sequences in the running batch.',
      labelNames,
      registers: [registry],
    }),
    waiting: new Gauge({
      name: 'maas_runner_generation_waiting_sequences',
      help: 'Sequences waiting for a slot.',
      labelNames,
      registers: [registry],
    }),
    cachedTokens: new Gauge({
      name: 'maas_runner_generation_cached_tokens',
      help: 'Tokens held in the KV cache of running sequences.',
      labelNames,
      registers: [registry],
    }),
    stepSeconds: new Histogram({
      name: 'maas_runner_generation_step_duration_seconds',
      help: 'Duration of one decode step (all running sequences).',
      labelNames,
      buckets: LATENCY_BUCKETS_SECONDS,
      registers: [registry],
    }),
    stepBatchSize: new Histogram({
      name: 'maas_runner_generation_step_batch_size',
      help: 'Sequences per decode step.',
      labelNames,
      buckets: [1, 2, 4, 8, 16, 32, 64],
      registers: [registry],
    }),
  };
}
export type GenerationMetrics = ReturnType<typeof createGenerationMetrics>;
