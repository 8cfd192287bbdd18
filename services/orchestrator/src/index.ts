import { readFileSync } from 'node:fs';
import {
  createLogger,
  createMetricsRegistry,
  GrpcServiceHost,
  HttpServiceHost,
  type ListeningAddresses,
  type Logger,
} from '@maas/shared';
import { MaasServiceService } from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import { Counter, Histogram, type Registry } from 'prom-client';
import { ApiKeyStore, type Authenticator, openAccess, parseKeysFile } from './access/api-keys.js';
import { QuotaEnforcer } from './access/limits.js';
import { ModelCatalogue } from './catalogue.js';
import type { OrchestratorConfig } from './config.js';
import { createDownstream, type Downstream } from './downstream/clients.js';
import { createUsageMetrics, UsageMeter } from './metering.js';
import { EncoderBatchers } from './pipelines/encoder-batchers.js';
import { GenerationAdmission } from './pipelines/generation-admission.js';
import { InFlightLimit } from './core/in-flight-limit.js';
import { createMaasCore } from './core/maas-core.js';
import { createMaasGrpcService } from './grpc/maas-service.js';
import { formatHttpError, httpRoutes } from './http/routes.js';

export { loadOrchestratorConfig, orchestratorConfigSchema, type OrchestratorConfig } from './config.js';
export { sha256 } from './access/api-keys.js';

export interface RunningOrchestrator extends ListeningAddresses {
  /** The HTTP API's port; undefined when HTTP_PORT=-1. */
  httpPort: number | undefined;
  host: GrpcServiceHost;
  catalogue: ModelCatalogue;
  downstream: Downstream;
  quotas: QuotaEnforcer;
  stop(): Promise<void>;
}

function createAuthenticator(
  config: OrchestratorConfig,
  logger: Logger,
): {
  auth: Authenticator;
  close(): void;
} {
  if (config.AUTH_MODE === 'disabled') {
    logger.warn('AUTH_MODE=disabled: every caller is let in without an API key (development only)');
    return { auth: openAccess, close() {} };
  }
  const path = config.API_KEYS_FILE!;
  const store = ApiKeyStore.fromFile(path);
  logger.info({ keys: store.keyCount, file: path }, 'API keys loaded');
  if (config.API_KEYS_RELOAD_MS <= 0) return { auth: store, close() {} };
  let last = readFileSync(path, 'utf8');
  const timer = setInterval(() => {
    try {
      const text = readFileSync(path, 'utf8');
      if (text === last) return;
      store.replace(parseKeysFile(text, path));
      last = text;
      logger.info({ keys: store.keyCount, file: path }, 'API keys reloaded');
    } catch (error) {
      logger.error(
        { err: { message: (error as Error).message }, file: path },
        'cannot reload API keys; keeping the previous ones',
      );
    }
  }, config.API_KEYS_RELOAD_MS);
  timer.unref();
  return { auth: store, close: () => clearInterval(timer) };
}

/**
 * Starts the public API. Fails at once on a bad keys file or repository;
 * reports SERVING once the catalogue holds a model (downstream outages show
 * as UNAVAILABLE per call, not as this pod leaving the load balancer).
 */
export async function startOrchestrator(
  config: OrchestratorConfig,
  deps: { logger?: Logger; metricsRegistry?: Registry } = {},
): Promise<RunningOrchestrator> {
  const logger = deps.logger ?? createLogger({ service: 'orchestrator', level: config.LOG_LEVEL });
  const metricsRegistry = deps.metricsRegistry ?? createMetricsRegistry();
  const access = createAuthenticator(config, logger);
  const catalogue = new ModelCatalogue({
    root: config.MODEL_REPOSITORY,
    maxInputCharacters: config.MAX_INPUT_CHARACTERS,
    logger,
  });
  catalogue.refresh();
  catalogue.watch(config.CATALOGUE_REFRESH_MS);
  const downstream = createDownstream({
    tokenizerTarget: config.TOKENIZER_ADDRESS,
    runnerTarget: config.RUNNER_ADDRESS,
    maxAttempts: config.DOWNSTREAM_MAX_ATTEMPTS,
    keepaliveMs: config.DOWNSTREAM_KEEPALIVE_MS,
    maxMessageBytes: config.GRPC_MAX_RECEIVE_MESSAGE_BYTES,
  });
  const batchers = new EncoderBatchers(
    downstream,
    {
      windowUs: config.BATCH_WINDOW_US,
      maxInFlight: config.BATCH_MAX_IN_FLIGHT,
      maxQueueRows: config.BATCH_MAX_QUEUE_ROWS,
      maxQueueWaitMs: config.BATCH_MAX_QUEUE_MS,
      overflow: config.INPUT_OVERFLOW,
    },
    {
      batchRows: new Histogram({
        name: 'maas_orchestrator_batch_rows',
        help: 'Texts per coalesced downstream batch (Encode + ModelInfer).',
        labelNames: ['model'],
        buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
        registers: [metricsRegistry],
      }),
      batchRequests: new Histogram({
        name: 'maas_orchestrator_batch_requests',
        help: 'Requests coalesced into one downstream batch.',
        labelNames: ['model'],
        buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
        registers: [metricsRegistry],
      }),
      refused: new Counter({
        name: 'maas_orchestrator_admission_refused_total',
        help: 'Classify/Embed requests refused at admission (RESOURCE_EXHAUSTED), by model and reason.',
        labelNames: ['model', 'reason'],
        registers: [metricsRegistry],
      }),
      expired: new Counter({
        name: 'maas_orchestrator_queue_expired_total',
        help: 'Queued Classify/Embed requests dropped before compute because their deadline had passed.',
        labelNames: ['model'],
        registers: [metricsRegistry],
      }),
    },
  );
  const refusedStreams = new Counter({
    name: 'maas_orchestrator_generation_refused_total',
    help: 'Generate streams refused at admission (RESOURCE_EXHAUSTED) because the model had as many open as it can run and queue.',
    labelNames: ['model'],
    registers: [metricsRegistry],
  });
  const generationAdmission = new GenerationAdmission(config.GENERATION_MAX_STREAMS_PER_MODEL, (model) =>
    refusedStreams.inc({ model }),
  );
  catalogue.onChange(() => {
    const known = (name: string) => catalogue.get(name) !== undefined;
    batchers.retain(known);
    generationAdmission.retain(known);
  });
  const refusedInFlight = new Counter({
    name: 'maas_orchestrator_overload_refused_total',
    help: 'Unary calls refused (RESOURCE_EXHAUSTED) before any work: reason in_flight (MAX_IN_FLIGHT_REQUESTS calls in progress) or event_loop_lag (MAX_EVENT_LOOP_LAG_MS).',
    labelNames: ['reason'],
    registers: [metricsRegistry],
  });
  const inFlight = new InFlightLimit(
    config.MAX_IN_FLIGHT_REQUESTS,
    (reason) => refusedInFlight.inc({ reason }),
    config.MAX_EVENT_LOOP_LAG_MS,
  );
  const quotas = new QuotaEnforcer();
  const audit = logger.child({ component: 'audit' });
  const meter = new UsageMeter(createUsageMetrics(metricsRegistry), audit, config.AUDIT_LOG_TEXT);
  // gRPC unary calls are admitted a first time on their HTTP/2 stream, before grpc-js builds a call:
  // there a refusal costs a fraction of serving one, so under overload refusing the excess leaves
  // the admitted calls their CPU (the core's limit above still bounds every transport's calls).
  const gatedPaths = new Set<string>(
    Object.values(MaasServiceService)
      .filter((method) => !method.responseStream)
      .map((method) => method.path),
  );
  // Refused calls are not authenticated (that costs what the gate saves), so no per-key audit line;
  // operators get the count at most every 10 s.
  let gateRefusals = 0;
  const grpcAdmission = new InFlightLimit(
    config.MAX_IN_FLIGHT_REQUESTS,
    (reason) => {
      refusedInFlight.inc({ reason });
      gateRefusals++;
    },
    config.MAX_EVENT_LOOP_LAG_MS,
  );
  const gateReport = setInterval(() => {
    if (gateRefusals === 0) return;
    logger.warn({ refused: gateRefusals }, 'overloaded: calls refused before any work in the last 10 s');
    gateRefusals = 0;
  }, 10_000).unref();
  const host = new GrpcServiceHost({
    name: 'orchestrator',
    config,
    logger,
    registry: metricsRegistry,
    streamGate: (path) => (gatedPaths.has(path) ? grpcAdmission.tryAcquire() : undefined),
  });
  const core = createMaasCore({
    settings: config,
    auth: access.auth,
    quotas,
    meter,
    catalogue,
    downstream,
    batchers,
    generationAdmission,
    inFlight,
    logger,
  });
  host.addService(MaasServiceService, createMaasGrpcService(core) as never);
  const addresses = await host.start();
  const http =
    config.HTTP_PORT >= 0
      ? new HttpServiceHost({
          service: 'orchestrator',
          host: config.HTTP_HOST,
          port: config.HTTP_PORT,
          maxBodyBytes: config.HTTP_MAX_BODY_BYTES,
          routes: httpRoutes(core, () => host.isReady),
          formatError: formatHttpError,
          logger,
          registry: metricsRegistry,
        })
      : undefined;
  const httpPort = await http?.start();
  const models = catalogue.list();
  host.setReady(models.length > 0);
  if (models.length === 0)
    logger.warn({ root: config.MODEL_REPOSITORY }, 'no servable model; reporting NOT_SERVING');
  return {
    ...addresses,
    httpPort,
    host,
    catalogue,
    downstream,
    quotas,
    async stop() {
      await Promise.all([host.stop(), http?.stop(config.SHUTDOWN_DRAIN_MS)]);
      catalogue.close();
      inFlight.close();
      grpcAdmission.close();
      clearInterval(gateReport);
      access.close();
      downstream.close();
    },
  };
}
