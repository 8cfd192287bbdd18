import {
  createLogger,
  createMetricsRegistry,
  GrpcServiceHost,
  type ListeningAddresses,
  type Logger,
} from '@maas/shared';
import { GRPCInferenceServiceService } from '@maas/shared/gen/inference/grpc_service';
import { GenerationServiceService } from '@maas/shared/gen/maas/runner/v1/generation';
import type { Registry } from 'prom-client';
import type { RunnerConfig } from './config.js';
import { createGenerationMetrics } from './generation/index.js';
import { createRunnerMetrics } from './metrics.js';
import { ModelRepository } from './repository.js';
import { createGenerationService, createInferenceService } from './server.js';

export { loadRunnerConfig, runnerConfigSchema, type RunnerConfig } from './config.js';
export { ModelRepository } from './repository.js';
export * from './generation/index.js';

export interface RunningModelRunner extends ListeningAddresses {
  host: GrpcServiceHost;
  repository: ModelRepository;
  stop(): Promise<void>;
}

/** Serves at once (health NOT_SERVING), loads and warms the models, then reports SERVING. */
export async function startModelRunner(
  config: RunnerConfig,
  deps: { logger?: Logger; metricsRegistry?: Registry } = {},
): Promise<RunningModelRunner> {
  const logger = deps.logger ?? createLogger({ service: 'model-runner', level: config.LOG_LEVEL });
  const metricsRegistry = deps.metricsRegistry ?? createMetricsRegistry();
  const repository = new ModelRepository({
    root: config.MODEL_REPOSITORY,
    threads: {
      intraOpNumThreads: config.RUNNER_INTRA_OP_THREADS,
      interOpNumThreads: config.RUNNER_INTER_OP_THREADS,
    },
    warmup: config.RUNNER_WARMUP,
    metrics: createRunnerMetrics(metricsRegistry),
    generationMetrics: createGenerationMetrics(metricsRegistry),
    logger,
  });
  const host = new GrpcServiceHost({ name: 'model-runner', config, logger, registry: metricsRegistry });
  host.addService(GRPCInferenceServiceService, createInferenceService(repository) as never);
  host.addService(GenerationServiceService, createGenerationService(repository) as never);
  const addresses = await host.start();
  await repository.loadAll(config.MODELS);
  host.setReady(repository.isReady());
  if (!repository.isReady()) logger.warn('no model is ready; reporting NOT_SERVING');
  return {
    ...addresses,
    host,
    repository,
    async stop() {
      await host.stop();
      await repository.close();
    },
  };
}
