import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { LATENCY_BUCKETS_SECONDS } from '@maas/shared';

export type TokenizerOperation = 'encode' | 'decode' | 'count' | 'decode_stream';

export function createTokenizerMetrics(registry: Registry) {
  return {
    texts: new Counter({
      name: 'maas_tokenizer_texts_total',
      help: 'Texts encoded or counted, and sequences decoded, by tokenizer and operation.',
      labelNames: ['tokenizer', 'operation'],
      registers: [registry],
    }),
    tokens: new Counter({
      name: 'maas_tokenizer_tokens_total',
      help: 'Tokens produced (encode, count; before padding) or decoded (decode, decode_stream), by tokenizer and operation.',
      labelNames: ['tokenizer', 'operation'],
      registers: [registry],
    }),
    duration: new Histogram({
      name: 'maas_tokenizer_duration_seconds',
      help: 'Time in the tokenizer per call (a whole batch; one message for decode_stream), by tokenizer and operation.',
      labelNames: ['tokenizer', 'operation'],
      buckets: LATENCY_BUCKETS_SECONDS,
      registers: [registry],
    }),
    loaded: new Gauge({
      name: 'maas_tokenizer_loaded',
      help: 'Tokenizers currently loaded.',
      registers: [registry],
    }),
    reloads: new Counter({
      name: 'maas_tokenizer_reloads_total',
      help: 'Rescans of the repository and TOKENIZER_DIR, by result (error: at least one tokenizer failed to load).',
      labelNames: ['result'],
      registers: [registry],
    }),
    loadFailures: new Counter({
      name: 'maas_tokenizer_load_failures_total',
      help: 'Tokenizer files that failed to load (counted once per change of the file), by tokenizer.',
      labelNames: ['tokenizer'],
      registers: [registry],
    }),
  };
}
export type TokenizerMetrics = ReturnType<typeof createTokenizerMetrics>;
