import {
  createLogger,
  createMetricsRegistry,
  GrpcServiceHost,
  type ListeningAddresses,
  type Logger,
} from '@maas/shared';
import { TokenizerServiceService } from '@maas/shared/gen/maas/tokenizer/v1/tokenizer';
import type { Registry } from 'prom-client';
import type { TokenizerConfig } from './config.js';
import { createTokenizerMetrics } from './metrics.js';
import { TokenizerRegistry } from './registry.js';
import { createTokenizerService } from './server.js';

export { loadTokenizerConfig, tokenizerConfigSchema, type TokenizerConfig } from './config.js';
export { IncrementalDetokenizer, type BatchDecode } from './detokenizer.js';
export { FastTextTextTokenizer } from './fasttext-text-tokenizer.js';
export { cleanUpTokenizationSpaces, HuggingFaceTokenizer } from './huggingface-tokenizer.js';
export { loadTokenizer, TokenizerRegistry, type TokenizerSource } from './registry.js';
export * from './text-tokenizer.js';

export interface RunningTokenizer extends ListeningAddresses {
  host: GrpcServiceHost;
  registry: TokenizerRegistry;
  stop(): Promise<void>;
}

/**
 * Listens at once (health NOT_SERVING), loads the tokenizers, then reports
 * SERVING; health follows later rescans (NOT_SERVING while none is loaded).
 */
export async function startTokenizer(
  config: TokenizerConfig,
  deps: { logger?: Logger; metricsRegistry?: Registry } = {},
): Promise<RunningTokenizer> {
  const logger = deps.logger ?? createLogger({ service: 'tokenizer', level: config.LOG_LEVEL });
  const metricsRegistry = deps.metricsRegistry ?? createMetricsRegistry();
  const metrics = createTokenizerMetrics(metricsRegistry);
  const host = new GrpcServiceHost({ name: 'tokenizer', config, logger, registry: metricsRegistry });
  const registry = new TokenizerRegistry({
    repository: config.MODEL_REPOSITORY,
    extraDir: config.TOKENIZER_DIR,
    logger,
    onReload(result, loaded) {
      metrics.reloads.inc({ result });
      metrics.loaded.set(loaded);
      host.setReady(loaded > 0);
      if (loaded === 0) logger.warn('no tokenizer loaded; NOT_SERVING until one is');
    },
    onLoadFailure(name) {
      metrics.loadFailures.inc({ tokenizer: name });
    },
  });
  host.addService(TokenizerServiceService, createTokenizerService(registry, config, metrics) as never);
  const addresses = await host.start();
  try {
    await registry.reload();
  } catch (error) {
    await host.stop(0);
    throw error;
  }
  registry.watch(config.TOKENIZER_RELOAD_INTERVAL_MS, config.TOKENIZER_WATCH);
  return {
    ...addresses,
    host,
    registry,
    async stop() {
      registry.close();
      await host.stop();
    },
  };
}
