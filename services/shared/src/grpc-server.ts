import {
  type ChannelOptions,
  Metadata,
  Server,
  ServerCredentials,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceDefinition,
  type ServiceError,
  type UntypedServiceImplementation,
  type sendUnaryData,
  status,
} from '@grpc/grpc-js';
import { ReflectionService } from '@grpc/reflection';
import { context } from '@opentelemetry/api';
import { HealthImplementation } from 'grpc-health-check';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { BaseConfig } from './config.js';
import { loadApiDescriptors } from './descriptors.js';
import { StatusError, isServiceError } from './errors.js';
import { undecodableRequestInterceptor, withStrictDeserializers } from './request-decoding.js';
import { contextOfCall, createServerObservability } from './grpc-observability.js';
import { type MetricsEndpoint, startMetricsServer } from './metrics.js';
import { GatedServer, type StreamGate } from './stream-gate.js';

type ServerSettings = Pick<
  BaseConfig,
  | 'GRPC_HOST'
  | 'GRPC_PORT'
  | 'METRICS_HOST'
  | 'METRICS_PORT'
  | 'SHUTDOWN_DRAIN_MS'
  | 'GRPC_MAX_RECEIVE_MESSAGE_BYTES'
  | 'GRPC_MAX_SEND_MESSAGE_BYTES'
  | 'GRPC_KEEPALIVE_TIME_MS'
  | 'GRPC_KEEPALIVE_TIMEOUT_MS'
  | 'GRPC_REFLECTION'
>;

export interface ServiceHostOptions {
  name: string;
  config: ServerSettings;
  logger: Logger;
  registry: Registry;
  /** Extra grpc-js server options (tests tune keepalive, for example). */
  channelOptions?: ChannelOptions;
  /** Admission on each call's path before grpc-js builds the call (see stream-gate.ts). */
  streamGate?: StreamGate;
}

export interface ListeningAddresses {
  grpcPort: number;
  metricsPort: number | undefined;
}

/**
 * A grpc-js server with what every maas service needs around its own RPCs:
 * metrics and tracing on every call, health that follows real readiness,
 * reflection, explicit message limits and keepalive, and a graceful drain.
 */
export class GrpcServiceHost {
  readonly server: Server;
  private readonly health = new HealthImplementation({ '': 'NOT_SERVING' });
  private readonly serviceNames: string[] = [];
  private metricsEndpoint: MetricsEndpoint | undefined;
  private ready = false;
  private readonly descriptors = loadApiDescriptors();
  /** Each added method's streaming shape by path, for the metrics of calls the stream gate refuses. */
  private readonly methods = new Map<string, { requestStream: boolean; responseStream: boolean }>();

  constructor(private readonly options: ServiceHostOptions) {
    const { config } = options;
    const observability = createServerObservability(options.registry);
    const serverOptions = {
      'grpc.max_receive_message_length': config.GRPC_MAX_RECEIVE_MESSAGE_BYTES,
      'grpc.max_send_message_length': config.GRPC_MAX_SEND_MESSAGE_BYTES,
      'grpc.keepalive_time_ms': config.GRPC_KEEPALIVE_TIME_MS,
      'grpc.keepalive_timeout_ms': config.GRPC_KEEPALIVE_TIMEOUT_MS,
      'grpc.keepalive_permit_without_calls': 1,
      // Connections are recycled so that clients re-resolve and spread over new
      // replicas; the grace period lets long generation streams finish first.
      'grpc.max_connection_age_ms': 5 * 60_000,
      'grpc.max_connection_age_grace_ms': Math.max(config.SHUTDOWN_DRAIN_MS, 60_000),
      ...options.channelOptions,
      // Observability first, so undecodable requests are counted and traced like any other call.
      interceptors: [observability.interceptor, undecodableRequestInterceptor],
    };
    this.server = options.streamGate
      ? new GatedServer(serverOptions, options.streamGate, (path) => {
          const method = this.methods.get(path);
          observability.countRefused(path, method?.requestStream ?? false, method?.responseStream ?? false);
        })
      : new Server(serverOptions);
    this.health.addToServer(this.server);
  }

  /** The request message name of a method path (`/pkg.Service/Method`), for error messages. */
  private requestMessageName(path: string): string {
    const [, service = '', method = ''] = path.split('/');
    const definition = (this.descriptors[service] ?? {}) as Record<
      string,
      { requestType?: { type?: { name?: string } } }
    >;
    return definition[method]?.requestType?.type?.name ?? 'request';
  }

  /**
   * Adds a service. Each handler runs inside its call's trace context, and
   * whatever it throws or rejects with becomes a gRPC status: StatusError
   * keeps its code, anything else is logged and answered INTERNAL without
   * internals on the wire.
   */
  addService(definition: ServiceDefinition, implementation: UntypedServiceImplementation): void {
    const first = Object.values(definition)[0];
    const serviceName = first ? (first.path.split('/')[1] ?? '') : '';
    this.serviceNames.push(serviceName);
    this.health.setStatus(serviceName, this.ready ? 'SERVING' : 'NOT_SERVING');
    const wrapped: UntypedServiceImplementation = {};
    for (const method of Object.values(definition)) this.methods.set(method.path, method);
    for (const [name, handler] of Object.entries(implementation)) {
      const method = definition[name] ?? definition[name.charAt(0).toLowerCase() + name.slice(1)];
      const streaming = method?.responseStream ?? false;
      wrapped[name] = this.wrapHandler(
        `${serviceName}/${name}`,
        handler as (...args: unknown[]) => unknown,
        streaming,
      ) as never;
    }
    this.server.addService(
      withStrictDeserializers(definition, (path) => this.requestMessageName(path)),
      wrapped,
    );
  }

  private wrapHandler(path: string, handler: (...args: unknown[]) => unknown, streaming: boolean) {
    const logger = this.options.logger;
    return (
      call: { metadata: Metadata; emit(event: string, error: unknown): void },
      callback?: sendUnaryData<unknown>,
    ) => {
      const fail = (error: unknown) => {
        const serviceError = toServiceError(error, logger, path);
        if (!streaming && callback) callback(serviceError, null);
        else call.emit('error', serviceError);
      };
      context.with(contextOfCall(call.metadata), () => {
        try {
          const result = handler(call, callback);
          if (result instanceof Promise) result.catch(fail);
        } catch (error) {
          fail(error);
        }
      });
    };
  }

  /** What health reports: SERVING while true. Other transports' readiness follows it. */
  get isReady(): boolean {
    return this.ready;
  }

  /** Health (overall and per service) follows this; call it when the service can do real work. */
  setReady(ready: boolean): void {
    this.ready = ready;
    const state = ready ? 'SERVING' : 'NOT_SERVING';
    this.health.setStatus('', state);
    for (const name of this.serviceNames) this.health.setStatus(name, state);
  }

  async start(): Promise<ListeningAddresses> {
    const { config, registry, logger, name } = this.options;
    if (config.GRPC_REFLECTION) {
      // Only what this server implements: listing another service's RPCs would only lead to UNIMPLEMENTED.
      new ReflectionService(this.descriptors, {
        services: [...this.serviceNames, 'grpc.health.v1.Health'],
      }).addToServer(this.server);
    }
    const grpcPort = await new Promise<number>((resolve, reject) => {
      this.server.bindAsync(
        `${config.GRPC_HOST}:${config.GRPC_PORT}`,
        ServerCredentials.createInsecure(),
        (error, port) => (error ? reject(error) : resolve(port)),
      );
    });
    if (config.METRICS_PORT >= 0) {
      this.metricsEndpoint = await startMetricsServer(registry, config.METRICS_PORT, config.METRICS_HOST);
    }
    const metricsPort = this.metricsEndpoint?.port;
    logger.info({ service: name, grpcPort, metricsPort, host: config.GRPC_HOST }, 'listening');
    return { grpcPort, metricsPort };
  }

  /**
   * Graceful stop: report NOT_SERVING so load balancers move away, stop
   * accepting calls, let in-flight calls finish for up to the drain deadline,
   * then cut whatever is left.
   */
  async stop(drainMs = this.options.config.SHUTDOWN_DRAIN_MS): Promise<void> {
    this.setReady(false);
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.options.logger.warn({ drainMs }, 'drain deadline passed, cancelling remaining calls');
        this.server.forceShutdown();
        resolve();
      }, drainMs);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    await this.metricsEndpoint?.close();
  }
}

function toServiceError(error: unknown, logger: Logger, path: string): Partial<ServiceError> {
  if (error instanceof StatusError) {
    return { code: error.code, details: error.message, metadata: error.metadata ?? new Metadata() };
  }
  if (isServiceError(error)) {
    return { code: error.code, details: error.details, metadata: new Metadata() };
  }
  logger.error({ err: error, method: path }, 'unhandled error in handler');
  return { code: status.INTERNAL, details: 'internal error', metadata: new Metadata() };
}

/** Adapts an async function to a grpc-js unary handler. */
export function unary<Req, Res>(
  fn: (request: Req, call: ServerUnaryCall<Req, Res>) => Promise<Res>,
): (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => Promise<void> {
  return async (call, callback) => {
    const response = await fn(call.request, call);
    callback(null, response);
  };
}

/** Adapts an async function to a grpc-js server-streaming handler; the stream ends when it resolves. */
export function serverStream<Req, Res>(
  fn: (request: Req, call: ServerWritableStream<Req, Res>) => Promise<void>,
): (call: ServerWritableStream<Req, Res>) => Promise<void> {
  return async (call) => {
    await fn(call.request, call);
    if (!call.writableEnded) call.end();
  };
}
