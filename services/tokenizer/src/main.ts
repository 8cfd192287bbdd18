import { createLogger, exitOnSignals, startTelemetry } from '@maas/shared';
import { loadTokenizerConfig } from './config.js';
import { startTokenizer } from './index.js';

async function main() {
  const config = loadTokenizerConfig();
  startTelemetry({ serviceName: 'maas-tokenizer' });
  const logger = createLogger({ service: 'tokenizer', level: config.LOG_LEVEL });
  const service = await startTokenizer(config, { logger });
  exitOnSignals(logger, () => service.stop());
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error);
  process.exit(1);
});
