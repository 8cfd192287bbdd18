import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { once } from 'node:events';
import { status, type ServiceError } from '@grpc/grpc-js';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import { SpanKind } from '@opentelemetry/api';
import { TokenizerServiceClient, type EncodeResponse } from '../src/gen/maas/tokenizer/v1/tokenizer';
import { baseConfigSchema, ConfigError, envInt, loadConfig } from '../src/config';
import { decodeRetryDelayMs, resourceExhausted } from '../src/errors';
import { createClient } from '../src/grpc-client';
import { GrpcServiceHost } from '../src/grpc-server';
import { createLogger } from '../src/logger';
import { createMetricsRegistry } from '../src/metrics';
import { startTelemetry, type Telemetry } from '../src/telemetry';
import { checkHealth, listServicesByReflection, metricValue, scrapeMetrics } from '../src/testing';
import { addEchoService } from './fixtures/echo-service';

function encode(client: TokenizerServiceClient, texts: string[]): Promise<EncodeResponse> {
  return new Promise((resolve, reject) =>
    client.encode({ tokenizer: 't', texts, textPairs: [] } as never, (error, response) =>
      error ? reject(error) : resolve(response),
    ),
  );
}

describe('shared service runtime on a real gRPC server', () => {
  const exporter = new InMemorySpanExporter();
  let telemetry: Telemetry;
  let host: GrpcServiceHost;
  let address: string;
  let metricsPort: number;
  let client: TokenizerServiceClient;

  beforeAll(async () => {
    telemetry = startTelemetry({ serviceName: 'runtime-test', exporter });
    const config = loadConfig(baseConfigSchema, { GRPC_PORT: '0', METRICS_PORT: '0' });
    host = new GrpcServiceHost({
      name: 'runtime-test',
      config,
      logger: createLogger({ service: 'runtime-test', level: 'silent' }),
      registry: createMetricsRegistry(),
    });
    addEchoService(host);
    const ports = await host.start();
    address = `127.0.0.1:${ports.grpcPort}`;
    metricsPort = ports.metricsPort!;
    client = createClient(TokenizerServiceClient, address);
  });

  afterAll(async () => {
    client.close();
    await host.stop(1000);
    await telemetry.shutdown();
  });

  it('reports NOT_SERVING until ready, then SERVING, overall and per service', async () => {
    expect(await checkHealth(address)).toBe('NOT_SERVING');
    expect(await checkHealth(address, 'maas.tokenizer.v1.TokenizerService')).toBe('NOT_SERVING');
    host.setReady(true);
    expect(await checkHealth(address)).toBe('SERVING');
    expect(await checkHealth(address, 'maas.tokenizer.v1.TokenizerService')).toBe('SERVING');
  });

  it('lists its services over reflection', async () => {
    const services = await listServicesByReflection(address);
    expect(services).toEqual(
      expect.arrayContaining(['grpc.health.v1.Health', 'maas.tokenizer.v1.TokenizerService']),
    );
  });

  it('counts handled calls by code in grpc_server_handled_total', async () => {
    const labels = {
      grpc_service: 'maas.tokenizer.v1.TokenizerService',
      grpc_method: 'Encode',
      grpc_type: 'unary',
    };
    const before = await scrapeMetrics(metricsPort);
    await encode(client, ['hello']);
    const failure = await encode(client, []).catch((e: ServiceError) => e);
    expect((failure as ServiceError).code).toBe(status.INVALID_ARGUMENT);
    expect((failure as ServiceError).details).toContain('texts');
    const after = await scrapeMetrics(metricsPort);
    const delta = (code: string) =>
      metricValue(after, 'grpc_server_handled_total', { ...labels, grpc_code: code }) -
      metricValue(before, 'grpc_server_handled_total', { ...labels, grpc_code: code });
    expect(delta('OK')).toBe(1);
    expect(delta('InvalidArgument')).toBe(1);
    expect(metricValue(after, 'grpc_server_handling_seconds_count', labels)).toBeGreaterThanOrEqual(2);
    expect(after).toContain('grpc_server_handling_seconds_bucket{le="0.0001"');
    expect(after).toContain('process_cpu_seconds_total');
  });

  it('makes one trace of a call: client span, and the server span as its child', async () => {
    exporter.reset();
    await encode(client, ['trace me']);
    await new Promise((r) => setTimeout(r, 50));
    const spans = exporter.getFinishedSpans().filter((s) => s.name.endsWith('TokenizerService/Encode'));
    const clientSpan = spans.find((s) => s.kind === SpanKind.CLIENT);
    const serverSpan = spans.find((s) => s.kind === SpanKind.SERVER);
    expect(clientSpan).toBeDefined();
    expect(serverSpan).toBeDefined();
    expect(serverSpan!.spanContext().traceId).toBe(clientSpan!.spanContext().traceId);
    expect(serverSpan!.parentSpanContext?.spanId).toBe(clientSpan!.spanContext().spanId);
    expect(serverSpan!.attributes['rpc.grpc.status_code']).toBe(0);
  });
});

describe('reflection', () => {
  it('is off with GRPC_REFLECTION=false: the reflection service is UNIMPLEMENTED', async () => {
    const host = new GrpcServiceHost({
      name: 'no-reflection',
      config: loadConfig(baseConfigSchema, { GRPC_PORT: '0', METRICS_PORT: '-1', GRPC_REFLECTION: 'false' }),
      logger: createLogger({ service: 'no-reflection', level: 'silent' }),
      registry: createMetricsRegistry(),
    });
    addEchoService(host);
    const { grpcPort } = await host.start();
    try {
      await expect(listServicesByReflection(`127.0.0.1:${grpcPort}`)).rejects.toMatchObject({
        code: status.UNIMPLEMENTED,
      });
    } finally {
      await host.stop(100);
    }
  });
});

describe('configuration', () => {
  it('fails fast naming every bad variable', () => {
    expect(() => loadConfig(baseConfigSchema, { GRPC_PORT: 'abc', LOG_LEVEL: 'loud' })).toThrow(ConfigError);
    const load = () =>
      loadConfig(baseConfigSchema.extend({ MAX_BATCH: envInt(8, 1, 64) }), {
        GRPC_PORT: '70000',
        MAX_BATCH: '0',
      });
    expect(load).toThrow(/GRPC_PORT:.*"70000"/);
    expect(load).toThrow(/MAX_BATCH:.*"0"/);
  });
});

describe('graceful shutdown', () => {
  it('drains an in-flight call after SIGTERM, refuses new ones, and exits 0', async () => {
    const script = join(__dirname, '..', 'dist', 'test', 'fixtures', 'drain-server.js');
    const child = spawn(process.execPath, [script], {
      env: {
        ...process.env,
        GRPC_PORT: '0',
        METRICS_PORT: '-1',
        LOG_LEVEL: 'silent',
        SHUTDOWN_DRAIN_MS: '5000',
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const [line] = (await once(child.stdout!, 'data')) as [Buffer];
    const { grpcPort } = JSON.parse(line.toString().split('\n')[0]!) as { grpcPort: number };
    const client = createClient(TokenizerServiceClient, `127.0.0.1:${grpcPort}`);
    try {
      await encode(client, ['warm']);
      const inFlight = encode(client, ['slow:700']);
      await new Promise((r) => setTimeout(r, 150));
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      await new Promise((r) => setTimeout(r, 100));
      const refused = await encode(client, ['late']).catch((e: ServiceError) => e);
      expect((refused as ServiceError).code).toBe(status.UNAVAILABLE);
      const response = await inFlight;
      expect(response.totalTokens).toBe('slow:700'.length);
      const [code] = (await exited) as [number];
      expect(code).toBe(0);
    } finally {
      client.close();
      child.kill('SIGKILL');
    }
  });
});

describe('rich error details', () => {
  it('carries the retry delay of RESOURCE_EXHAUSTED as google.rpc.RetryInfo', () => {
    const error = resourceExhausted('over the limit', 1500);
    expect(error.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(error.metadata!.get('retry-after-ms')).toEqual(['1500']);
    expect(decodeRetryDelayMs(error.metadata!)).toBe(1500);
  });
});
