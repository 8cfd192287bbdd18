/**
 * Generate priority through the orchestrator: the request's `priority`, else
 * its API key's default from the keys file, else 0, reaches the runner, which
 * admits waiting streams lowest first (the runner's own tests cover its
 * ordering and aging); out of range is INVALID_ARGUMENT naming the field, on
 * gRPC and on the HTTP API.
 */
import { status } from '@grpc/grpc-js';
import { writeFixtureRepository } from '@maas/models';
import { metricValue, scrapeMetrics } from '@maas/shared/testing';
import { failure, generate, KEYS, startStack, writeKeysFile, type Stack } from './helpers';

let stack: Stack;
beforeAll(async () => {
  const repo = writeFixtureRepository(undefined, {
    models: ['tiny-gpt2'],
    tokenizers: 'tiny',
    // One stream at a time: the others wait, and priority orders them.
    generation: { maxConcurrentSequences: 1 },
  });
  stack = await startStack({ root: repo.root, env: { API_KEYS_FILE: writeKeysFile() } });
});
afterAll(async () => {
  await stack?.close();
});

const waitingAtRunner = async () =>
  metricValue(await scrapeMetrics(stack.runner.metricsPort!), 'maas_runner_generation_waiting_sequences', {
    model: 'tiny-gpt2',
    version: '1',
  });

it("admits waiting streams by the request's priority, else the key's default", async () => {
  await generate(stack.client, { model: 'tiny-gpt2', prompt: 'warm up', maxNewTokens: 2 }).done;
  const order: string[] = [];
  const queued: Promise<unknown>[] = [];
  const ask = (name: string, key: string, priority?: number) => {
    const call = generate(stack.client, { model: 'tiny-gpt2', prompt: name, maxNewTokens: 2, priority }, key);
    call.stream.once('data', () => order.push(name));
    queued.push(call.done);
  };
  // Holds the only slot for a few hundred ms (120 tokens).
  const long = generate(stack.client, { model: 'tiny-gpt2', prompt: 'a', maxNewTokens: 120 });
  long.stream.once('data', () => {
    // Sent in the order FIFO admission would get wrong.
    ask('batch key (default 50)', KEYS.batch);
    ask('no priority (0)', KEYS.full);
    ask('priority -20', KEYS.full, -20);
  });
  let allWaiting = false;
  const poll = setInterval(() => {
    void waitingAtRunner().then((n) => (allWaiting ||= n === 3));
  }, 2);
  await long.done;
  clearInterval(poll);
  await Promise.all(queued);
  // The three must have waited together for the order to mean anything.
  expect(allWaiting).toBe(true);
  expect(order).toEqual(['priority -20', 'no priority (0)', 'batch key (default 50)']);
});

it('refuses a priority out of range with INVALID_ARGUMENT naming it, on gRPC and HTTP', async () => {
  const error = await failure(
    generate(stack.client, { model: 'tiny-gpt2', prompt: 'x', priority: 101 }).done,
  );
  expect(error.code).toBe(status.INVALID_ARGUMENT);
  expect(error.details).toBe('priority: 101 is outside -100..100 (lower is admitted first)');

  for (const [path, body] of [
    ['/v1/completions', { model: 'tiny-gpt2', prompt: 'x', max_tokens: 2, priority: -101 }],
    ['/v1/generate', { model: 'tiny-gpt2', prompt: 'x', max_new_tokens: 2, priority: -101 }],
  ] as const) {
    const response = await fetch(`${stack.http}${path}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${KEYS.full}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    expect(response.status).toBe(400);
    expect(JSON.stringify(await response.json())).toContain('priority');
  }
  const ok = await fetch(`${stack.http}/v1/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${KEYS.batch}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'tiny-gpt2', prompt: 'x', max_tokens: 2, priority: -5 }),
  });
  expect(ok.status).toBe(200);
});
