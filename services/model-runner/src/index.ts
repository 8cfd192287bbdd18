import {
  createLogger,
  createMetricsRegistry,
  GrpcServiceHost,
  HttpServiceHost,
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
import { formatKserveError, kserveRestRoutes } from './kserve-rest.js';
import { createGenerationService, createInference, createInferenceService } from './server.js';
import type { createSession } from './session.js';

export { loadRunnerConfig, runnerConfigSchema, type RunnerConfig } from './config.js';
export { ModelRepository, type IndexEntry, type ModelVersion } from './repository.js';
export {
  createSession,
  ProviderUnavailableError,
  type CreatedSession,
  type SessionOpener,
  type ThreadDefaults,
} from './session.js';
export { WorkerSession, type RunnableSession } from './worker-session.js';
export * from './generation/index.js';

export interface RunningModelRunner extends ListeningAddresses {
  /** KServe v2 REST's port; undefined when HTTP_PORT=-1. */
  httpPort: number | undefined;
  host: GrpcServiceHost;
  repository: ModelRepository;
  /** Resolves when the start-up load has finished trying every model. */
  loaded: Promise<void>;
  stop(): Promise<void>;
}

export interface ModelRunnerDeps {
  logger?: Logger;
  metricsRegistry?: Registry;
  /** Resolve once listening instead of once the models are loaded (health says NOT_SERVING meanwhile). */
  returnBeforeLoaded?: boolean;
  /** Creates onnxruntime sessions (default: session.ts's createSession, which applies execution providers). */
  createSession?: typeof createSession;
}

/**
 * Listens at once with health NOT_SERVING, loads and warms up the models,
 * then reports SERVING (see ModelRepository.isReady for the exact rule).
 */
export async function startModelRunner(
  config: RunnerConfig,
  deps: ModelRunnerDeps = {},
): Promise<RunningModelRunner> {
  const logger = deps.logger ?? createLogger({ service: 'model-runner', level: config.LOG_LEVEL });
  const metricsRegistry = deps.metricsRegistry ?? createMetricsRegistry();
  const metrics = createRunnerMetrics(metricsRegistry);
  const host = new GrpcServiceHost({ name: 'model-runner', config, logger, registry: metricsRegistry });
  let stopping = false;
  const repository = new ModelRepository({
    root: config.MODEL_REPOSITORY,
    threads: {
      intraOpNumThreads: config.RUNNER_INTRA_OP_THREADS,
      interOpNumThreads: config.RUNNER_INTER_OP_THREADS,
      executionProviders: config.RUNNER_EXECUTION_PROVIDERS,
    },
    warmup: config.RUNNER_WARMUP,
    metrics,
    generationMetrics: createGenerationMetrics(metricsRegistry),
    logger,
    createSession: deps.createSession,
    onStateChange: () => {
      if (!stopping) host.setReady(repository.isReady());
    },
  });
  const inference = createInference(repository, metrics);
  host.addService(GRPCInferenceServiceService, createInferenceService(repository, inference) as never);
  host.addService(GenerationServiceService, createGenerationService(repository) as never);
  const addresses = await host.start();
  const http =
    config.HTTP_PORT >= 0
      ? new HttpServiceHost({
          service: 'runner',
          host: config.HTTP_HOST,
          port: config.HTTP_PORT,
          maxBodyBytes: config.HTTP_MAX_BODY_BYTES,
          routes: kserveRestRoutes(repository, inference),
          formatError: formatKserveError,
          logger,
          registry: metricsRegistry,
        })
      : undefined;
  const httpPort = await http?.start();

  let poller: NodeJS.Timeout | undefined;
  const loaded = repository.loadAll(config.MODELS).then(() => {
    if (!repository.isReady())
      logger.warn({ repository: config.MODEL_REPOSITORY }, 'no model is ready; reporting NOT_SERVING');
    if (config.REPOSITORY_POLL_SECONDS > 0 && !stopping) {
      let polling = false;
      poller = setInterval(() => {
        if (polling) return;
        polling = true;
        repository
          .poll(config.MODELS)
          .catch((error: unknown) => logger.error({ err: error }, 'repository poll failed'))
          .finally(() => (polling = false));
      }, config.REPOSITORY_POLL_SECONDS * 1000);
      poller.unref();
    }
  });
  if (!deps.returnBeforeLoaded) await loaded;
  return {
    ...addresses,
    httpPort,
    host,
    repository,
    loaded,
    async stop() {
      stopping = true;
      if (poller) clearInterval(poller);
      await loaded.catch(() => undefined);
      await Promise.all([host.stop(), http?.stop(config.SHUTDOWN_DRAIN_MS)]);
      await repository.close();
    },
  };
}
