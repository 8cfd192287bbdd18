import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { LATENCY_BUCKETS_SECONDS } from '@maas/shared';

export type TokenizerOperation = 'encode' | 'decode' | 'count' | 'decode_stream';

export function createTokenizerMetrics(registry: Registry) {
  return {
    texts: new Counter({
      name: 'maas_tokenizer_texts_total',
      help: 'Texts (or sequences, for decode) processed, by tokenizer and operation.',
      labelNames: ['tokenizer', 'operation'],
      registers: [registry],
    }),
    tokens: new Counter({
      name: 'maas_tokenizer_tokens_total',
      help: 'Tokens produced (encode, count) or consumed (decode), by tokenizer and operation.',
      labelNames: ['tokenizer', 'operation'],
      registers: [registry],
    }),
    duration: new Histogram({
      name: 'maas_tokenizer_duration_seconds',
      help: 'Time spent in the tokenizer library per call (a whole batch), by tokenizer and operation.',
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
      help: 'Repository rescans, by result (error: at least one tokenizer failed to load).',
      labelNames: ['result'],
      registers: [registry],
    }),
  };
}
export type TokenizerMetrics = ReturnType<typeof createTokenizerMetrics>;
