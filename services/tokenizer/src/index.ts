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
export { IncrementalDetokenizer } from './detokenizer.js';
export { TokenizerRegistry } from './registry.js';
export * from './text-tokenizer.js';

export interface RunningTokenizer extends ListeningAddresses {
  host: GrpcServiceHost;
  registry: TokenizerRegistry;
  stop(): Promise<void>;
}

/** Loads tokenizers, serves them, and reports SERVING once they are loaded. */
export async function startTokenizer(
  config: TokenizerConfig,
  deps: { logger?: Logger; metricsRegistry?: Registry } = {},
): Promise<RunningTokenizer> {
  const logger = deps.logger ?? createLogger({ service: 'tokenizer', level: config.LOG_LEVEL });
  const metricsRegistry = deps.metricsRegistry ?? createMetricsRegistry();
  const metrics = createTokenizerMetrics(metricsRegistry);
  const registry = new TokenizerRegistry(
    { repository: config.MODEL_REPOSITORY, extraDir: config.TOKENIZER_DIR, logger },
    {
      onReload(result, loaded) {
        metrics.reloads.inc({ result });
        metrics.loaded.set(loaded);
      },
    },
  );
  const host = new GrpcServiceHost({ name: 'tokenizer', config, logger, registry: metricsRegistry });
  host.addService(TokenizerServiceService, createTokenizerService(registry, config, metrics) as never);
  const addresses = await host.start();
  await registry.reload();
  registry.watch(config.TOKENIZER_RELOAD_INTERVAL_MS);
  host.setReady(registry.list().length > 0);
  if (registry.list().length === 0) logger.warn('no tokenizer loaded; reporting NOT_SERVING until one is');
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
