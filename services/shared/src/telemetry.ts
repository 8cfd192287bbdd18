import { context, propagation, trace, type TextMapPropagator } from '@opentelemetry/api';
import { W3CTraceContextPropagator, CompositePropagator, W3CBaggagePropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-grpc';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  AlwaysOffSampler,
  BatchSpanProcessor,
  type SpanExporter,
  type SpanProcessor,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION } from '@opentelemetry/semantic-conventions';

export interface TelemetryOptions {
  serviceName: string;
  serviceVersion?: string;
  /** Export to this exporter synchronously (tests use an in-memory exporter). */
  exporter?: SpanExporter;
  env?: NodeJS.ProcessEnv;
}

export interface Telemetry {
  provider: NodeTracerProvider;
  shutdown(): Promise<void>;
}

let started: Telemetry | undefined;

/**
 * Starts tracing once per process. A provider is always registered, so trace
 * context flows through gRPC metadata and into log lines even when no
 * collector is configured; spans leave the process only when an exporter is
 * configured, by the standard variables: OTEL_TRACES_EXPORTER=otlp or an
 * OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT (the OTLP exporter reads the rest:
 * headers, timeout, compression). OTEL_TRACES_SAMPLER[_ARG] choose sampling.
 */
export function startTelemetry(options: TelemetryOptions): Telemetry {
  if (started) return started;
  const env = options.env ?? process.env;
  const processors: SpanProcessor[] = [];
  if (options.exporter) {
    processors.push(new SimpleSpanProcessor(options.exporter));
  } else if (env.OTEL_SDK_DISABLED !== 'true' && wantsOtlp(env)) {
    processors.push(new BatchSpanProcessor(new OTLPTraceExporter()));
  }
  const provider = new NodeTracerProvider({
    resource: resourceFromAttributes({
      [ATTR_SERVICE_NAME]: env.OTEL_SERVICE_NAME ?? options.serviceName,
      ...(options.serviceVersion ? { [ATTR_SERVICE_VERSION]: options.serviceVersion } : {}),
    }),
    spanProcessors: processors,
    // Nothing exports spans: record none. Span contexts (trace ids in logs, traceparent downstream) are
    // still made and propagated; recording spans only to drop them cost CPU on every call.
    ...(processors.length === 0 ? { sampler: new AlwaysOffSampler() } : {}),
  });
  const propagator: TextMapPropagator = new CompositePropagator({
    propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()],
  });
  provider.register({ propagator });
  started = {
    provider,
    async shutdown() {
      await provider.shutdown();
      trace.disable();
      context.disable();
      propagation.disable();
      started = undefined;
    },
  };
  return started;
}

function wantsOtlp(env: NodeJS.ProcessEnv): boolean {
  const exporters = (env.OTEL_TRACES_EXPORTER ?? '').split(',').map((s) => s.trim());
  if (exporters.includes('none')) return false;
  return (
    exporters.includes('otlp') ||
    Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT) ||
    Boolean(env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
  );
}

export const tracer = () => trace.getTracer('maas');
