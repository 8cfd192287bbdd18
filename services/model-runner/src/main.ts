import { createLogger, exitOnSignals, startTelemetry } from '@maas/shared';
import { loadRunnerConfig } from './config.js';
import { startModelRunner } from './index.js';

async function main() {
  const config = loadRunnerConfig();
  startTelemetry({ serviceName: 'maas-model-runner' });
  const logger = createLogger({ service: 'model-runner', level: config.LOG_LEVEL });
  const runner = await startModelRunner(config, { logger });
  exitOnSignals(logger, () => runner.stop());
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error);
  process.exit(1);
});
