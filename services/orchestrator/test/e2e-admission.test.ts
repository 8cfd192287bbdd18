/**
 * Admission on the HTTP/2 stream: once MAX_IN_FLIGHT_REQUESTS gRPC calls are
 * in progress, the next one is refused before grpc-js builds a call — before
 * its request is even read — because under overload a refusal that costs as
 * much as a served call starves the calls that were admitted (bench:overload).
 */
import { Client, credentials, Metadata, type ServiceError, status } from '@grpc/grpc-js';
import { decodeRetryDelayMs } from '@maas/shared';
import { metricValue, scrapeMetrics } from '@maas/shared/testing';
import { writeFixtureRepository } from '@maas/models';
import type { ClassifyResponse } from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import { call, eventually, failure, startStack, tcpProxy, type Stack } from './helpers';

let stack: Stack;
let proxy: Awaited<ReturnType<typeof tcpProxy>>;

beforeAll(async () => {
  const repo = writeFixtureRepository(undefined, { models: ['bert-classifier'], tokenizers: 'tiny' });
  stack = await startStack({
    root: repo.root,
    env: { AUTH_MODE: 'disabled', MAX_IN_FLIGHT_REQUESTS: '2' },
    // The tokenizer is reached through a proxy that can hold its answers, so calls stay in flight.
    tokenizerPort: async (port) => (proxy = await tcpProxy(port)).port,
  });
});
afterAll(async () => {
  proxy?.kill();
  await stack?.close();
});

const classify = (text: string) =>
  call<ClassifyResponse>(stack.client, 'classify', { model: 'bert-classifier', texts: [text] }, null);

/** A Classify whose request bytes are not a ClassifyRequest at all. */
function undecodableClassify(): Promise<{ error: ServiceError | null }> {
  const client = new Client(stack.address, credentials.createInsecure());
  const identity = (bytes: Buffer) => bytes;
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      '/maas.orchestrator.v1.MaasService/Classify',
      identity,
      identity,
      Buffer.from([0xff, 0xff, 0xff]),
      new Metadata(),
      { deadline: Date.now() + 5000 },
      (error: ServiceError | null) => {
        client.close();
        resolve({ error });
      },
    );
  });
}

it('refuses calls beyond MAX_IN_FLIGHT_REQUESTS on the stream, before reading them, with RetryInfo; admits again once calls end', async () => {
  await classify('warm up');
  const gateRefusals = async () =>
    metricValue(await scrapeMetrics(stack.orchestrator.metricsPort!), 'grpc_server_handled_total', {
      grpc_method: 'Classify',
      grpc_code: 'ResourceExhausted',
    }) ?? 0;
  const before = await gateRefusals();

  proxy.hold();
  const held = [classify('one'), classify('two')].map((p) => p.catch((e: unknown) => e));
  await eventually(async () => {
    const refused = await failure(classify('three'));
    return refused.code === status.RESOURCE_EXHAUSTED;
  });

  // Refused before its bytes were decoded: an undecodable request would otherwise be INVALID_ARGUMENT.
  const { error } = await undecodableClassify();
  expect(error?.code).toBe(status.RESOURCE_EXHAUSTED);
  expect(error?.details).toMatch(/2 calls in flight \(limit 2\)/);
  expect(decodeRetryDelayMs(error!.metadata)).toBeGreaterThan(0);
  expect(error!.metadata.get('retry-after-ms')).toHaveLength(1);
  // Counted like any other call's status, and as an overload refusal.
  const metrics = await scrapeMetrics(stack.orchestrator.metricsPort!);
  expect(await gateRefusals()).toBeGreaterThanOrEqual(before + 2);
  expect(
    metricValue(metrics, 'maas_orchestrator_overload_refused_total', { reason: 'in_flight' }),
  ).toBeGreaterThanOrEqual(2);

  // The held calls end (their deadline passes downstream or the proxy lets go): slots come back.
  proxy.kill();
  await Promise.allSettled(held);
  const { error: undecodable } = await undecodableClassify();
  expect(undecodable?.code).toBe(status.INVALID_ARGUMENT);
}, 30_000);
