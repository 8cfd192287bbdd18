import { createLogger, exitOnSignals, startTelemetry } from '@maas/shared';
import { loadOrchestratorConfig } from './config.js';
import { startOrchestrator } from './index.js';

async function main() {
  const config = loadOrchestratorConfig();
  startTelemetry({ serviceName: 'maas-orchestrator' });
  const logger = createLogger({ service: 'orchestrator', level: config.LOG_LEVEL });
  const service = await startOrchestrator(config, { logger });
  exitOnSignals(logger, () => service.stop());
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error);
  process.exit(1);
});
