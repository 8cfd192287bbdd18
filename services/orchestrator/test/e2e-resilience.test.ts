/**
 * Routing and resilience end to end: tokenizer replicas behind one static
 * address list, one going away during a burst of calls; and one request
 * being one trace across the three services.
 */
import { status } from '@grpc/grpc-js';
import { writeFixtureRepository } from '@maas/models';
import { startTelemetry, type Telemetry } from '@maas/shared';
import { metricValue, scrapeMetrics } from '@maas/shared/testing';
import type { ClassifyResponse } from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import { SpanKind } from '@opentelemetry/api';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import { call, failure, generate, sleep, startStack, tcpProxy, type Stack } from './helpers';

let stack: Stack;
let telemetry: Telemetry;
let proxy: Awaited<ReturnType<typeof tcpProxy>>;
const exporter = new InMemorySpanExporter();

beforeAll(async () => {
  telemetry = startTelemetry({ serviceName: 'e2e', exporter });
  const repo = writeFixtureRepository(undefined, {
    models: ['bert-classifier', 'tiny-gpt2'],
    maxQueueDelayMicroseconds: 200,
    tokenizers: 'tiny',
  });
  stack = await startStack({
    root: repo.root,
    tokenizerReplicas: 3,
    env: { AUTH_MODE: 'disabled' },
    // Replica 1 is reached through a proxy that can make it vanish abruptly.
    tokenizerPort: async (port, index) => (index === 1 ? (proxy = await tcpProxy(port)).port : port),
  });
});
afterAll(async () => {
  proxy?.kill();
  await stack?.close();
  await telemetry?.shutdown();
});

const classify = (text: string) =>
  call<ClassifyResponse>(stack.client, 'classify', { model: 'bert-classifier', texts: [text] }, null);

/** `total` classify calls, `concurrency` at a time; `midway` runs once half of them are done. */
async function burst(total: number, concurrency: number, midway: () => Promise<void>) {
  let started = 0;
  let done = 0;
  let midwayRun: Promise<void> | undefined;
  const failures: unknown[] = [];
  const worker = async () => {
    while (started < total) {
      const i = started++;
      try {
        await classify(`request ${i} of the burst`);
      } catch (error) {
        failures.push(error);
      }
      if (++done === Math.floor(total / 2)) midwayRun = midway();
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  await midwayRun;
  return failures;
}

const encodes = async (port: number) =>
  metricValue(await scrapeMetrics(port), 'grpc_server_handled_total', {
    grpc_method: 'Encode',
    grpc_code: 'OK',
  });

describe('replicas', () => {
  it('spreads calls over every tokenizer replica', async () => {
    // One at a time, so that every call is its own batch and its own Encode.
    for (let i = 0; i < 30; i++) await classify(`spread ${i}`);
    for (const t of stack.tokenizers) expect(await encodes(t.metricsPort!)).toBeGreaterThanOrEqual(5);
  });

  it('loses no call when a replica shuts down during a burst', async () => {
    const failures = await burst(400, 16, () => stack.tokenizers[0]!.stop());
    expect(failures).toEqual([]);
  });

  it('loses no call when a replica dies abruptly with calls in flight', async () => {
    const before = await encodes(stack.tokenizers[2]!.metricsPort!);
    const failures = await burst(400, 16, async () => {
      // Calls routed to replica 1 now hang, then their connection is reset: they must go to another replica.
      proxy.hold();
      // Long enough for round robin to send replica 1 some batches, which then hang there.
      await sleep(200);
      proxy.kill();
    });
    expect(failures).toEqual([]);
    // The survivor took the rest (coalesced: a few requests per Encode).
    expect(await encodes(stack.tokenizers[2]!.metricsPort!)).toBeGreaterThan(before + 5);
  });

  it('generation does not silently restart: a dead runner is UNAVAILABLE', async () => {
    // (Here the runner is healthy; a failure to reach it is reported, not retried: see the unit tests of the
    // retry policy. This checks the healthy path still streams after replicas went away.)
    const { last } = await generate(stack.client, { model: 'tiny-gpt2', prompt: 'Hi', maxNewTokens: 3 }, null)
      .done;
    expect(last.usage!.generatedTokens).toBeGreaterThan(0);
  });
});

describe('tracing', () => {
  it('makes one request one trace across the orchestrator, tokenizer and runner, batches linking requests', async () => {
    exporter.reset();
    await Promise.all([classify('traced one'), classify('traced two'), classify('traced three')]);
    const spans = exporter.getFinishedSpans();
    const servers = spans.filter(
      (s) => s.kind === SpanKind.SERVER && s.name === 'maas.orchestrator.v1.MaasService/Classify',
    );
    expect(servers).toHaveLength(3);
    const batches = spans.filter((s) => s.name === 'batch');
    expect(batches.length).toBeGreaterThan(0);
    for (const batch of batches) {
      const traceId = batch.spanContext().traceId;
      expect(servers.map((s) => s.spanContext().traceId)).toContain(traceId);
      const inTrace = spans.filter((s) => s.spanContext().traceId === traceId && s.kind === SpanKind.SERVER);
      expect(inTrace.map((s) => s.name)).toEqual(
        expect.arrayContaining([
          'maas.orchestrator.v1.MaasService/Classify',
          'maas.tokenizer.v1.TokenizerService/Encode',
          'inference.GRPCInferenceService/ModelInfer',
        ]),
      );
      const linked = batch.links.map((l) => l.context.traceId);
      const requests = batch.attributes['maas.batch.requests'] as number;
      expect(linked).toHaveLength(requests - 1);
      for (const id of linked) expect(servers.map((s) => s.spanContext().traceId)).toContain(id);
    }
  });
});

describe('downstream failures', () => {
  it('maps a runner that is gone to UNAVAILABLE with a clean message, never INTERNAL', async () => {
    await stack.runner.stop();
    const classified = await failure(classify('nobody home'));
    expect(classified.code).toBe(status.UNAVAILABLE);
    expect(classified.details).toMatch(/^model-runner unavailable: /);
    expect(classified.details).not.toMatch(/\n\s+at /);
    const generated = await failure(
      generate(stack.client, { model: 'tiny-gpt2', prompt: 'Hi', maxNewTokens: 3 }, null).done,
    );
    expect(generated.code).toBe(status.UNAVAILABLE);
  });
});
