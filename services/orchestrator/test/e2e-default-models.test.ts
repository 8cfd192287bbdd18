/**
 * The default models (services/models/repository) through the public API:
 * what `npm start` serves.
 */
import { defaultRepositoryPath } from '@maas/shared';
import {
  type ClassifyResponse,
  type EmbedResponse,
  FinishReason,
} from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import { call, generate, startStack, type Stack } from './helpers';

const root = defaultRepositoryPath();
let stack: Stack;

beforeAll(async () => {
  stack = await startStack({ root, env: { AUTH_MODE: 'disabled' } });
});
afterAll(async () => {
  await stack?.close();
});

it('lang-id: "Bonjour tout le monde" is French', async () => {
  const response = await call<ClassifyResponse>(
    stack.client,
    'classify',
    {
      model: 'lang-id',
      texts: ['Bonjour tout le monde', 'The weather is lovely today', 'Wie geht es dir?'],
      topK: 3,
    },
    null,
  );
  expect(response.results.map((r) => r.labels[0]!.label)).toEqual(['fr', 'en', 'de']);
  expect(response.results[0]!.labels[0]!.score).toBeGreaterThan(0.5);
});

it('glove-embed: 100 dimensions, related sentences closer than unrelated ones', async () => {
  const response = await call<EmbedResponse>(
    stack.client,
    'embed',
    {
      model: 'glove-embed',
      texts: ['the king and the queen', 'a prince and a princess', 'stock markets fell sharply'],
      normalize: true,
    },
    null,
  );
  expect(response.dimensions).toBe(100);
  const [a, b, c] = response.embeddings.map((e) => e.values);
  const cosine = (x: number[], y: number[]) => x.reduce((s, v, i) => s + v * y[i]!, 0);
  expect(cosine(a!, b!)).toBeGreaterThan(cosine(a!, c!));
});

it('austen-gpt: generates text, and stops at a stop string', async () => {
  const prompt = 'It is a truth universally acknowledged';
  const full = await generate(stack.client, { model: 'austen-gpt', prompt, maxNewTokens: 24 }, null).done;
  expect(full.text.length).toBeGreaterThan(10);
  expect([FinishReason.FINISH_REASON_LENGTH, FinishReason.FINISH_REASON_EOS]).toContain(
    full.last.finishReason,
  );
  expect(full.last.usage!.generatedTokens).toBeGreaterThan(0);
  const stop = full.text.slice(6, 10);
  const stopped = await generate(
    stack.client,
    { model: 'austen-gpt', prompt, maxNewTokens: 24, stop: [stop] },
    null,
  ).done;
  expect(stopped.text).toBe(full.text.slice(0, full.text.indexOf(stop)));
  expect(stopped.last.finishReason).toBe(FinishReason.FINISH_REASON_STOP);
});

it('over HTTP as the README shows it: classify, embeddings, and chat with austen-gpt', async () => {
  const post = async (path: string, body: unknown) => {
    const response = await fetch(`${stack.http}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    expect(response.status).toBe(200);
    return (await response.json()) as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  };
  const classified = await post('/v1/classify', {
    model: 'lang-id',
    texts: ['Bonjour tout le monde'],
    top_k: 3,
  });
  expect(classified.results[0].labels[0].label).toBe('fr');
  const embedded = await post('/v1/embeddings', { model: 'glove-embed', input: ['the king', 'a queen'] });
  expect(embedded.data.map((d: { embedding: number[] }) => d.embedding.length)).toEqual([100, 100]);
  const chat = await post('/v1/chat/completions', {
    model: 'austen-gpt',
    messages: [{ role: 'user', content: 'What do you think of Mr. Darcy?' }],
    max_tokens: 20,
    seed: 1,
  });
  expect(chat.choices[0].message.content.length).toBeGreaterThan(10);
  expect(chat.usage.completion_tokens).toBeGreaterThan(0);
});
