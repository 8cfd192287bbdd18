/**
 * Overload and cancellations end to end. Streams beyond what a model can run
 * and queue are refused at once, before any work is done for them.
 *
 * Stopping generations must not cost other callers anything. Node's HTTP/2
 * layer closes a whole connection (GOAWAY, error code 2) after a burst of
 * about 1,000 stream resets, and the orchestrator's connections to the
 * runner and tokenizer carry every caller's calls. So a stop string, a
 * cancelling caller and a refusal end the downstream calls without a reset.
 */
import { status } from '@grpc/grpc-js';
import { createClient } from '@maas/shared';
import { metricValue, scrapeMetrics } from '@maas/shared/testing';
import { MaasServiceClient } from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import { writeFixtureRepository } from '@maas/models';
import { generate, sleep, startStack, type Stack } from './helpers';

let stack: Stack;

beforeAll(async () => {
  const repo = writeFixtureRepository(undefined, { models: ['tiny-gpt2'], tokenizers: 'tiny' });
  stack = await startStack({ root: repo.root, env: { AUTH_MODE: 'disabled' } });
});
afterAll(async () => {
  await stack?.close();
});

const PROMPT = 'The weather';

/** `total` calls of `one`, `concurrency` at a time; the errors of those that failed. */
async function many(total: number, concurrency: number, one: (i: number) => Promise<unknown>) {
  let next = 0;
  const failures: unknown[] = [];
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < total) {
        const i = next++;
        await one(i).catch((error: unknown) => failures.push(error));
      }
    }),
  );
  return failures;
}

it('thousands of stop-string finishes and cancellations fail no other caller’s streams', async () => {
  const full = (
    await generate(stack.client, { model: 'tiny-gpt2', prompt: PROMPT, maxNewTokens: 24 }, null).done
  ).text;
  const stop = full.slice(2, 5);
  expect(stop).toHaveLength(3);

  // Another caller, on its own connection, generates all along.
  let stopping = false;
  const other = createClient(MaasServiceClient, stack.address);
  const otherFailures: unknown[] = [];
  let otherDone = 0;
  const otherCaller = (async () => {
    while (!stopping) {
      await generate(other, { model: 'tiny-gpt2', prompt: PROMPT, maxNewTokens: 24 }, null)
        .done.then(() => otherDone++)
        .catch((error: unknown) => otherFailures.push(error));
    }
  })();

  // 1,500 stop-string finishes: the runner stops each sequence while it still generates.
  const stopFailures = await many(1500, 8, async () => {
    const { last } = await generate(
      stack.client,
      { model: 'tiny-gpt2', prompt: PROMPT, maxNewTokens: 100, stop: [stop] },
      null,
    ).done;
    if (last.text !== '' || last.finishReason !== 3) throw new Error(`finished ${last.finishReason}`);
  });

  // 300 callers that cancel once their first text arrives, each on its own connection (a caller's
  // own resets are its own connection's business).
  const cancelFailures = await many(300, 8, async () => {
    const client = createClient(MaasServiceClient, stack.address);
    const { stream, done } = generate(
      client,
      { model: 'tiny-gpt2', prompt: PROMPT, maxNewTokens: 100 },
      null,
    );
    stream.once('data', () => stream.cancel());
    const error = await done.then(
      () => undefined,
      (e: { code: number }) => e,
    );
    client.close();
    if (error && error.code !== status.CANCELLED) throw error;
  });

  stopping = true;
  await otherCaller;
  other.close();
  expect(stopFailures).toEqual([]);
  expect(cancelFailures).toEqual([]);
  expect(otherFailures).toEqual([]);
  expect(otherDone).toBeGreaterThan(0);

  // Every sequence was freed on the runner.
  const engine = stack.runner.repository.resolve('tiny-gpt2').engine!;
  for (let i = 0; i < 100 && engine.stats().running > 0; i++) await sleep(10);
  expect(engine.stats().running).toBe(0);
  const scrape = await scrapeMetrics(stack.runner.metricsPort!);
  expect(
    metricValue(scrape, 'maas_runner_generation_finished_total', { reason: 'cancelled' }),
  ).toBeGreaterThanOrEqual(1500);
}, 120_000);

it('refuses streams beyond the model’s running + queued capacity at once, before tokenizing, never INTERNAL', async () => {
  const encodes = async () =>
    metricValue(await scrapeMetrics(stack.tokenizers[0]!.metricsPort!), 'grpc_server_handled_total', {
      grpc_method: 'Encode',
      grpc_code: 'OK',
    }) ?? 0;
  const encodesBefore = await encodes();
  // tiny-gpt2 runs 8 sequences and queues 32: capacity 40.
  const streams = Array.from({ length: 60 }, () =>
    generate(stack.client, { model: 'tiny-gpt2', prompt: PROMPT, maxNewTokens: 120 }, null).done.then(
      () => 'ok',
      (e: { code: number; details: string; metadata: { get(k: string): unknown[] } }) => e,
    ),
  );
  const outcomes = await Promise.all(streams);
  const refused = outcomes.filter((o) => o !== 'ok');
  expect(refused.length).toBeGreaterThanOrEqual(15);
  for (const r of refused) {
    expect(r).toMatchObject({ code: status.RESOURCE_EXHAUSTED });
    if (typeof r === 'string') continue;
    expect(r.details).toMatch(/^model 'tiny-gpt2' is overloaded: 40 generation streams open \(capacity 40\)/);
    expect(r.metadata.get('retry-after-ms')).toHaveLength(1);
  }
  // Only admitted streams were tokenized; the runner refused nothing.
  expect((await encodes()) - encodesBefore).toBe(outcomes.length - refused.length);
  const runner = await scrapeMetrics(stack.runner.metricsPort!);
  expect(metricValue(runner, 'maas_runner_generation_rejected_total', { model: 'tiny-gpt2' }) ?? 0).toBe(0);
  const orchestrator = await scrapeMetrics(stack.orchestrator.metricsPort!);
  expect(
    metricValue(orchestrator, 'maas_orchestrator_generation_refused_total', { model: 'tiny-gpt2' }),
  ).toBe(refused.length);
  // Capacity comes back as streams end.
  const again = await generate(stack.client, { model: 'tiny-gpt2', prompt: PROMPT, maxNewTokens: 4 }, null)
    .done;
  expect(again.last.finishReason).toBeGreaterThan(0);
}, 60_000);
