import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { LATENCY_BUCKETS_SECONDS } from '@maas/shared';

/** Generation metrics, created once per process and labelled by model and version. */
export function createGenerationMetrics(registry: Registry) {
  const labelNames = ['model', 'version'] as const;
  const histogram = (name: string, help: string, buckets = LATENCY_BUCKETS_SECONDS) =>
    new Histogram({
      name: `maas_runner_generation_${name}`,
      help,
      labelNames,
      buckets,
      registers: [registry],
    });
  const counter = (name: string, help: string) =>
    new Counter({ name: `maas_runner_generation_${name}`, help, labelNames, registers: [registry] });
  const gauge = (name: string, help: string) =>
    new Gauge({ name: `maas_runner_generation_${name}`, help, labelNames, registers: [registry] });
  return {
    timeToFirstToken: histogram(
      'time_to_first_token_seconds',
      'From arrival to the first generated token (queue + prefill).',
    ),
    interTokenLatency: histogram(
      'inter_token_latency_seconds',
      'Time between consecutive tokens of a sequence.',
    ),
    timePerOutputToken: histogram(
      'time_per_output_token_seconds',
      "A finished sequence's mean time per token after its first ((end - first token) / (tokens - 1)); sequences of one token are not observed.",
    ),
    requestSeconds: histogram(
      'e2e_request_latency_seconds',
      'From arrival to the end of a sequence, whatever its finish reason.',
    ),
    queueSeconds: histogram(
      'queue_duration_seconds',
      'Time a sequence waits for a slot in the running batch.',
    ),
    prefillSeconds: histogram(
      'prefill_duration_seconds',
      'Duration of one prefill run (one or more prompts).',
    ),
    stepSeconds: histogram('step_duration_seconds', 'Duration of one decode step (all running sequences).'),
    repackSeconds: histogram(
      'repack_duration_seconds',
      "Time to update the batch KV cache when sequences join (their prompt's keys/values written) or leave (the last rows moved into their places).",
    ),
    stepBatchSize: histogram('step_batch_size', 'Sequences per decode step.', [1, 2, 4, 8, 16, 32, 64]),
    stepPadding: histogram(
      'step_padding_ratio',
      "Share of a decode step's cache positions that are left padding (sequences shorter than the longest).",
      [0, 0.1, 0.25, 0.5, 0.75, 0.9],
    ),
    prefillChunks: counter(
      'prefill_chunks_total',
      'Chunks of long prompts prefilled between decode steps (chunked prefill), so running sequences keep their inter-token latency.',
    ),
    prefixCacheQueriedTokens: counter(
      'prefix_cache_queried_tokens_total',
      'Prompt tokens of admitted sequences looked up in the prefix cache (with prefix caching on): the hit rate is hit_tokens / queried_tokens.',
    ),
    prefixCacheHitTokens: counter(
      'prefix_cache_hit_tokens_total',
      'Prompt tokens whose keys/values came from the prefix cache instead of a prefill.',
    ),
    prefixCacheTokens: gauge(
      'prefix_cache_tokens',
      'Prompt tokens whose keys/values the prefix cache holds (at most generation.prefixCacheTokens).',
    ),
    generatedTokens: counter('generated_tokens_total', 'Tokens generated.'),
    promptTokens: counter('prompt_tokens_total', 'Prompt tokens received.'),
    finished: new Counter({
      name: 'maas_runner_generation_finished_total',
      help: 'Sequences finished, by reason (length, eos, stop, cancelled).',
      labelNames: [...labelNames, 'reason'],
      registers: [registry],
    }),
    rejected: counter('rejected_total', 'Sequences refused because the waiting queue was full.'),
    failed: counter(
      'failed_total',
      'Sequences failed by an onnxruntime error in their prefill or decode step.',
    ),
    running: gauge('running_sequences', 'Sequences holding a slot (running batch and prefill).'),
    waiting: gauge('waiting_sequences', 'Sequences waiting for a slot.'),
    cachedTokens: gauge(
      'cached_tokens',
      'Tokens held in the KV cache of running sequences (padding not counted).',
    ),
    cacheUsage: gauge(
      'kv_cache_usage_ratio',
      'Tokens held in the KV cache over maxCachedTokens (0-1): the KV-cache utilisation the inference gateway reads.',
    ),
    cacheCopiedBytes: counter(
      'kv_cache_copied_bytes_total',
      "Bytes of cached keys/values moved within the batch cache (re-layouts as the longest sequence grows, rows filling a leaver's place); new keys/values are not counted.",
    ),
    reservedTokens: gauge(
      'reserved_tokens',
      'Cache tokens reserved by admitted sequences (prompt + max_new_tokens each), against maxCachedTokens.',
    ),
  };
}
export type GenerationMetrics = ReturnType<typeof createGenerationMetrics>;
