import {
  InterceptingCall,
  type Interceptor,
  Metadata,
  ResponderBuilder,
  ServerInterceptingCall,
  type ServerInterceptor,
  ServerListenerBuilder,
  status,
} from '@grpc/grpc-js';
import {
  context,
  type Context,
  propagation,
  SpanKind,
  SpanStatusCode,
  trace,
  type TextMapGetter,
  type TextMapSetter,
} from '@opentelemetry/api';
import { Counter, Histogram, type Registry } from 'prom-client';
import { LATENCY_BUCKETS_SECONDS } from './metrics.js';

/** Status code names as go-grpc-prometheus writes them, which dashboards already query. */
const CODE_NAMES: Record<number, string> = {
  0: 'OK',
  1: 'Canceled',
  2: 'Unknown',
  3: 'InvalidArgument',
  4: 'DeadlineExceeded',
  5: 'NotFound',
  6: 'AlreadyExists',
  7: 'PermissionDenied',
  8: 'ResourceExhausted',
  9: 'FailedPrecondition',
  10: 'Aborted',
  11: 'OutOfRange',
  12: 'Unimplemented',
  13: 'Internal',
  14: 'Unavailable',
  15: 'DataLoss',
  16: 'Unauthenticated',
};
export const codeName = (code: number) => CODE_NAMES[code] ?? String(code);

const metadataGetter: TextMapGetter<Metadata> = {
  keys: (carrier) => Object.keys(carrier.getMap()),
  get: (carrier, key) => {
    const values = carrier.get(key);
    return values.length === 0 ? undefined : values.map(String);
  },
};
const metadataSetter: TextMapSetter<Metadata> = {
  set: (carrier, key, value) => carrier.set(key, value),
};

/** The trace context of each incoming call, found by its metadata object. */
const callContexts = new WeakMap<Metadata, Context>();

/** The trace context the server interceptor opened for a call (for handlers to run in). */
export function contextOfCall(metadata: Metadata): Context {
  return callContexts.get(metadata) ?? context.active();
}

function splitPath(path: string): { service: string; method: string } {
  const [, service = 'unknown', method = 'unknown'] = path.split('/');
  return { service, method };
}

function grpcType(requestStream: boolean, responseStream: boolean): string {
  if (requestStream && responseStream) return 'bidi_stream';
  if (requestStream) return 'client_stream';
  if (responseStream) return 'server_stream';
  return 'unary';
}

export interface ServerObservability {
  interceptor: ServerInterceptor;
  handled: Counter<'grpc_service' | 'grpc_method' | 'grpc_type' | 'grpc_code'>;
  handlingSeconds: Histogram<'grpc_service' | 'grpc_method' | 'grpc_type'>;
  /** Counts a call refused before grpc-js built it (the stream gate) as started and handled. */
  countRefused(path: string, requestStream: boolean, responseStream: boolean): void;
}

/**
 * One server interceptor for both metrics and tracing, because both need the
 * same two moments of every call whatever its type: metadata arriving and the
 * final status leaving (including statuses grpc-js sends itself).
 */
export function createServerObservability(registry: Registry): ServerObservability {
  const labelNames = ['grpc_service', 'grpc_method', 'grpc_type'] as const;
  const started = new Counter({
    name: 'grpc_server_started_total',
    help: 'Total number of RPCs started on the server.',
    labelNames,
    registers: [registry],
  });
  const handled = new Counter({
    name: 'grpc_server_handled_total',
    help: 'Total number of RPCs completed on the server, regardless of success or failure.',
    labelNames: [...labelNames, 'grpc_code'],
    registers: [registry],
  });
  const handlingSeconds = new Histogram({
    name: 'grpc_server_handling_seconds',
    help: 'Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.',
    labelNames,
    buckets: LATENCY_BUCKETS_SECONDS,
    registers: [registry],
  });
  const tracer = trace.getTracer('maas-grpc-server');

  const interceptor: ServerInterceptor = (descriptor, call) => {
    const { service, method } = splitPath(descriptor.path);
    const labels = {
      grpc_service: service,
      grpc_method: method,
      grpc_type: grpcType(descriptor.requestStream, descriptor.responseStream),
    };
    // Health checks and reflection are polled constantly; tracing them would drown real traces.
    const traced = !service.startsWith('grpc.');
    let startedAt = 0n;
    let span: ReturnType<typeof tracer.startSpan> | undefined;
    let done = false;
    const finish = (code: number, details: string) => {
      if (done) return;
      done = true;
      handled.inc({ ...labels, grpc_code: codeName(code) });
      handlingSeconds.observe(labels, Number(process.hrtime.bigint() - startedAt) / 1e9);
      if (span) {
        span.setAttribute('rpc.grpc.status_code', code);
        if (code !== status.OK) span.setStatus({ code: SpanStatusCode.ERROR, message: details });
        span.end();
      }
    };
    const listener = new ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        startedAt = process.hrtime.bigint();
        started.inc(labels);
        if (traced) {
          const parent = propagation.extract(context.active(), metadata, metadataGetter);
          span = tracer.startSpan(
            `${service}/${method}`,
            {
              kind: SpanKind.SERVER,
              attributes: { 'rpc.system': 'grpc', 'rpc.service': service, 'rpc.method': method },
            },
            parent,
          );
          callContexts.set(metadata, trace.setSpan(parent, span));
        }
        next(metadata);
      })
      .withOnCancel(() => {
        const deadline = call.getDeadline();
        const expired = deadline instanceof Date ? deadline.getTime() <= Date.now() : deadline <= Date.now();
        finish(expired ? status.DEADLINE_EXCEEDED : status.CANCELLED, 'cancelled');
      })
      .build();
    const responder = new ResponderBuilder()
      .withStart((next) => next(listener))
      .withSendStatus((statusObject, next) => {
        finish(statusObject.code, statusObject.details);
        next(statusObject);
      })
      .build();
    return new ServerInterceptingCall(call, responder);
  };
  const countRefused = (path: string, requestStream: boolean, responseStream: boolean) => {
    const { service, method } = splitPath(path);
    const labels = {
      grpc_service: service,
      grpc_method: method,
      grpc_type: grpcType(requestStream, responseStream),
    };
    started.inc(labels);
    handled.inc({ ...labels, grpc_code: codeName(status.RESOURCE_EXHAUSTED) });
  };
  return { interceptor, handled, handlingSeconds, countRefused };
}

/**
 * Client interceptor: a CLIENT span per call, child of whatever is active
 * (the server call being handled), with its context injected as W3C
 * `traceparent` metadata so the next service continues the same trace.
 */
export const clientTracingInterceptor: Interceptor = (options, nextCall) => {
  const tracer = trace.getTracer('maas-grpc-client');
  const path = options.method_definition.path;
  const { service, method } = splitPath(path);
  return new InterceptingCall(nextCall(options), {
    start(metadata, _listener, next) {
      const span = tracer.startSpan(`${service}/${method}`, {
        kind: SpanKind.CLIENT,
        attributes: { 'rpc.system': 'grpc', 'rpc.service': service, 'rpc.method': method },
      });
      propagation.inject(trace.setSpan(context.active(), span), metadata, metadataSetter);
      next(metadata, {
        onReceiveStatus(statusObject, nextStatus) {
          span.setAttribute('rpc.grpc.status_code', statusObject.code);
          if (statusObject.code !== status.OK) {
            span.setStatus({ code: SpanStatusCode.ERROR, message: statusObject.details });
          }
          span.end();
          nextStatus(statusObject);
        },
      });
    },
  });
};
