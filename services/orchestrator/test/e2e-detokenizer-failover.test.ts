/**
 * A tokenizer replica that dies while it detokenizes a generation costs the
 * caller nothing: the token ids are known, so the orchestrator feeds them to
 * another replica and skips the text the caller already has.
 */
import { writeFixtureRepository } from '@maas/models';
import type { GenerateResponse } from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import { generate, startStack, tcpProxy, type Stack } from './helpers';

let stack: Stack;
const proxies: Awaited<ReturnType<typeof tcpProxy>>[] = [];

beforeAll(async () => {
  const repo = writeFixtureRepository(undefined, { models: ['tiny-gpt2'], tokenizers: 'tiny' });
  stack = await startStack({
    root: repo.root,
    tokenizerReplicas: 2,
    env: { AUTH_MODE: 'disabled' },
    // Each replica behind a proxy that counts its bytes and can make it vanish abruptly.
    tokenizerPort: async (port) => {
      const proxy = await tcpProxy(port);
      proxies.push(proxy);
      return proxy.port;
    },
  });
});
afterAll(async () => {
  for (const proxy of proxies) proxy.kill();
  await stack?.close();
});

it('resumes detokenization on another replica: the caller gets the whole text, once', async () => {
  const request = { model: 'tiny-gpt2', prompt: 'The weather today', maxNewTokens: 48 };
  const expected = await generate(stack.client, request, null).done;
  expect(expected.last.usage?.generatedTokens).toBe(48);

  const run = generate(stack.client, request, null);
  let before: number[] | undefined;
  let killed = -1;
  run.stream.on('data', (message: GenerateResponse) => {
    if (!message.text) return;
    // The first text: from now on only the decode stream (and pings) cross the tokenizer proxies.
    before ??= proxies.map((p) => p.bytesFromTarget());
    if (killed < 0 && run.messages.filter((m) => m.text).length === 3) {
      const grown = proxies.map((p, i) => p.bytesFromTarget() - before![i]!);
      killed = grown[0]! >= grown[1]! ? 0 : 1;
      expect(grown[killed]).toBeGreaterThan(0);
      proxies[killed]!.kill();
    }
  });
  const resumed = await run.done;
  expect(killed).toBeGreaterThanOrEqual(0);
  expect(resumed.text).toBe(expected.text);
  expect(resumed.last.finishReason).toBe(expected.last.finishReason);
  expect(resumed.last.usage).toEqual(expected.last.usage);
});
