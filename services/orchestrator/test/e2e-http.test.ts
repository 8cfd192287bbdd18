/**
 * The HTTP front door end to end: the real services on loopback, called by
 * the official `openai` SDK (not an imitation of it) and by plain fetch for
 * the JSON routes, with the same keys, limits and models as gRPC — and the
 * answers compared with what the gRPC API gives for the same request.
 */
import OpenAI from 'openai';
import { writeFixtureRepository, type FixtureRepository, FIXTURE_CHAT_TEMPLATE } from '@maas/models';
import { metricValue, scrapeMetrics } from '@maas/shared/testing';
import type { EmbedResponse } from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import { Template } from '@huggingface/jinja';
import type { MaasCore } from '../src/core/maas-core';
import { httpRoutes } from '../src/http/routes';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import { startTelemetry, type Telemetry } from '@maas/shared';
import { call, eventually, generate, KEYS, startStack, writeKeysFile, type Stack } from './helpers';

let repo: FixtureRepository;
let stack: Stack;
let openai: OpenAI;
const spans = new InMemorySpanExporter();
let telemetry: Telemetry;

const client = (apiKey: string) => new OpenAI({ apiKey, baseURL: `${stack.http}/v1`, maxRetries: 0 });

beforeAll(async () => {
  // Spans of every service in this process, recorded: the HTTP request's trace must reach downstream.
  telemetry = startTelemetry({ serviceName: 'e2e-http', exporter: spans });
  repo = writeFixtureRepository(undefined, { maxQueueDelayMicroseconds: 500, tokenizers: 'tiny' });
  stack = await startStack({ root: repo.root, env: { API_KEYS_FILE: writeKeysFile() } });
  openai = client(KEYS.full);
});
afterAll(async () => {
  await stack?.close();
  await telemetry?.shutdown();
});

const post = (
  path: string,
  body: unknown,
  key: string | null = KEYS.full,
  headers: Record<string, string> = {},
) =>
  fetch(`${stack.http}${path}`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      ...(key ? { authorization: `Bearer ${key}` } : {}),
      ...headers,
    },
    body: typeof body === 'string' || body instanceof Uint8Array ? body : JSON.stringify(body),
  });

/** The `data:` payloads of a server-sent event stream. */
async function events(response: Response): Promise<string[]> {
  const text = await response.text();
  return text
    .split('\n\n')
    .filter(Boolean)
    .map((event) => {
      expect(event.startsWith('data: ')).toBe(true);
      return event.slice('data: '.length);
    });
}

describe('health', () => {
  it('answers /healthz and /readyz without a key', async () => {
    for (const path of ['/healthz', '/readyz']) {
      const response = await fetch(`${stack.http}${path}`);
      expect(response.status).toBe(200);
      expect(await response.json()).toEqual({ status: 'ok' });
    }
  });
});

describe('the OpenAPI document', () => {
  it('is served at /openapi.json and describes every route there is, and no other', async () => {
    const response = await fetch(`${stack.http}/openapi.json`);
    expect(response.status).toBe(200);
    const document = (await response.json()) as { openapi: string; paths: Record<string, object> };
    expect(document.openapi).toBe('3.1.0');
    // The route tables themselves: listing them calls nothing.
    const core = {} as MaasCore;
    const routed = httpRoutes(core, () => true).map(
      (r) => `${r.method} ${r.path.replace(/\/\*$/, '/{model}')}`,
    );
    const documented = Object.entries(document.paths).flatMap(([path, item]) =>
      Object.keys(item).map((method) => `${method.toUpperCase()} ${path}`),
    );
    expect(documented.sort()).toEqual(routed.sort());
    expect((await post('/healthz', {})).status).toBe(405);
  });
});

describe('models', () => {
  it('lists and retrieves models as OpenAI model objects', async () => {
    const page = await openai.models.list();
    const ids = page.data.map((m) => m.id).sort();
    expect(ids).toEqual(['bert-classifier', 'sentence-encoder', 'tiny-gpt2']);
    const model = await openai.models.retrieve('tiny-gpt2');
    expect(model).toMatchObject({
      id: 'tiny-gpt2',
      object: 'model',
      owned_by: 'maas',
      task: 'generation',
      ready: true,
    });
    await expect(openai.models.retrieve('no-such-model')).rejects.toBeInstanceOf(OpenAI.NotFoundError);
  });
});

describe('completions', () => {
  const request = { model: 'tiny-gpt2', prompt: 'Hello there', max_tokens: 12, temperature: 0.8, seed: 7 };

  it('generates what gRPC Generate generates for the same seed, with usage and finish_reason', async () => {
    const completion = await openai.completions.create(request);
    const grpc = await generate(stack.client, {
      model: 'tiny-gpt2',
      prompt: 'Hello there',
      maxNewTokens: 12,
      sampling: { temperature: 0.8, seed: '7' },
    }).done;
    expect(completion.object).toBe('text_completion');
    expect(completion.choices).toHaveLength(1);
    expect(completion.choices[0]!.text).toBe(grpc.text);
    expect(completion.choices[0]!.finish_reason).toBe(
      grpc.last.usage!.generatedTokens === 12 ? 'length' : 'stop',
    );
    expect(completion.usage).toEqual({
      prompt_tokens: grpc.last.usage!.promptTokens,
      completion_tokens: grpc.last.usage!.generatedTokens,
      total_tokens: grpc.last.usage!.totalTokens,
      prompt_tokens_details: { cached_tokens: 0 },
    });
  });

  it('streams the same text as server-sent chunks, with a usage chunk when asked', async () => {
    const whole = await openai.completions.create(request);
    const stream = await openai.completions.create({
      ...request,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    expect(chunks.length).toBeGreaterThan(2);
    const text = chunks.flatMap((c) => c.choices.map((choice) => choice.text)).join('');
    expect(text).toBe(whole.choices[0]!.text);
    const last = chunks[chunks.length - 1]!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toEqual(whole.usage);
    const finished = chunks.flatMap((c) => c.choices).filter((choice) => choice.finish_reason);
    expect(finished.map((c) => c.finish_reason)).toEqual([whole.choices[0]!.finish_reason]);
  });

  it('takes a list of prompts, one choice each, and samples by default (temperature 1)', async () => {
    const completion = await openai.completions.create({
      model: 'tiny-gpt2',
      prompt: ['Hello there', 'Good morning'],
      max_tokens: 6,
      seed: 3,
    });
    expect(completion.choices.map((c) => c.index)).toEqual([0, 1]);
    const second = await generate(stack.client, {
      model: 'tiny-gpt2',
      prompt: 'Good morning',
      maxNewTokens: 6,
      sampling: { temperature: 1, seed: '3' },
    }).done;
    expect(completion.choices[1]!.text).toBe(second.text);
  });

  it('honours stop strings', async () => {
    const whole = await openai.completions.create({ ...request, max_tokens: 16 });
    const text = whole.choices[0]!.text;
    expect(text.length).toBeGreaterThanOrEqual(5);
    const stop = text.slice(3, 5);
    const stopped = await openai.completions.create({ ...request, max_tokens: 16, stop: [stop] });
    expect(stopped.choices[0]!.text).toBe(text.slice(0, text.indexOf(stop)));
    expect(stopped.choices[0]!.finish_reason).toBe('stop');
  });

  it('cancelling a stream frees the runner sequence', async () => {
    const engine = stack.runner.repository.resolve('tiny-gpt2').engine!;
    await eventually(() => engine.stats().running === 0 && engine.stats().waiting === 0, 2000);
    const stream = await openai.completions.create({ ...request, max_tokens: 120, stream: true });
    const iterator = stream[Symbol.asyncIterator]();
    await iterator.next();
    expect(engine.stats().running).toBe(1);
    stream.controller.abort();
    await eventually(() => engine.stats().running === 0, 2000);
    const scrape = await scrapeMetrics(stack.runner.metricsPort!);
    expect(metricValue(scrape, 'maas_runner_generation_running_sequences')).toBe(0);
  });
});

describe('chat completions', () => {
  const messages = [
    { role: 'system' as const, content: 'Be brief.' },
    { role: 'user' as const, content: 'Hello there' },
  ];

  it("renders messages with the model's chat template and generates from that prompt", async () => {
    const chat = await openai.chat.completions.create({
      model: 'tiny-gpt2',
      messages,
      max_tokens: 8,
      seed: 11,
    });
    const prompt = new Template(FIXTURE_CHAT_TEMPLATE).render({ messages, add_generation_prompt: true });
    expect(prompt).toBe('Be brief.\n\nUser: Hello there\nAssistant:');
    const completion = await openai.completions.create({
      model: 'tiny-gpt2',
      prompt,
      max_tokens: 8,
      seed: 11,
    });
    expect(chat.object).toBe('chat.completion');
    expect(chat.choices[0]!.message).toMatchObject({
      role: 'assistant',
      content: completion.choices[0]!.text,
    });
    const { prompt_tokens_details: details, ...usage } = completion.usage!;
    expect(chat.usage).toMatchObject(usage);
    // The same prompt: the chat call's prompt was kept, and the completion reused all but its last token.
    expect(chat.usage!.prompt_tokens).toBe(30);
    expect(details).toEqual({ cached_tokens: 29 });
  });

  it("reports the prompt tokens the model's prefix cache held, as OpenAI's cached_tokens", async () => {
    const system = {
      role: 'system' as const,
      content: 'You help at a small bookshop; be kind.',
    };
    const ask = (content: string) =>
      openai.chat.completions.create({
        model: 'tiny-gpt2',
        messages: [system, { role: 'user', content }],
        max_tokens: 4,
        seed: 3,
      });
    const scrape = () => scrapeMetrics(stack.orchestrator.metricsPort!);
    const before = await scrape();
    const first = await ask('When do you open on Sundays?');
    const second = await ask('Do you take returns?');
    // The tokens the two prompts share (the system prompt, "User: ": past the first 16-token block)
    // were not prefilled again.
    const cached = second.usage!.prompt_tokens_details!.cached_tokens!;
    expect(first.usage!.prompt_tokens).toBeGreaterThan(32);
    expect(cached).toBeGreaterThan(16);
    expect(cached).toBeLessThan(second.usage!.prompt_tokens);
    // Sent again, all of it but its last token; the same seed gives the same text.
    const again = await ask('Do you take returns?');
    expect(again.usage!.prompt_tokens_details!.cached_tokens).toBe(second.usage!.prompt_tokens - 1);
    expect(again.choices[0]!.message.content).toBe(second.choices[0]!.message.content);
    // Metered too, beside the prompt tokens (billing may price cached tokens lower).
    const metered = metricValue(await scrape(), 'maas_usage_cached_prompt_tokens_total', {
      model: 'tiny-gpt2',
    });
    expect(
      metered - metricValue(before, 'maas_usage_cached_prompt_tokens_total', { model: 'tiny-gpt2' }),
    ).toBe(
      [first, second, again].reduce((sum, c) => sum + c.usage!.prompt_tokens_details!.cached_tokens!, 0),
    );
  });

  it('streams deltas, the role first', async () => {
    const whole = await openai.chat.completions.create({
      model: 'tiny-gpt2',
      messages,
      max_tokens: 8,
      seed: 11,
    });
    const stream = await openai.chat.completions.create({
      model: 'tiny-gpt2',
      messages,
      max_tokens: 8,
      seed: 11,
      stream: true,
    });
    const deltas = [];
    for await (const chunk of stream) {
      expect(chunk.object).toBe('chat.completion.chunk');
      deltas.push(...chunk.choices);
    }
    expect(deltas[0]!.delta.role).toBe('assistant');
    expect(deltas.map((d) => d.delta.content ?? '').join('')).toBe(whole.choices[0]!.message.content);
    expect(deltas[deltas.length - 1]!.finish_reason).toBe(whole.choices[0]!.finish_reason);
  });

  it('refuses messages it cannot render, naming them', async () => {
    const error = await openai.chat.completions
      .create({ model: 'tiny-gpt2', messages: [{ role: 'wizard', content: 'hi' } as never] })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OpenAI.BadRequestError);
    expect((error as InstanceType<typeof OpenAI.BadRequestError>).param).toBe('messages[0].role');
  });
});

describe('embeddings', () => {
  it('gives the vectors gRPC Embed gives, as floats and as base64', async () => {
    const input = ['the first text', 'and a second one'];
    const grpc = await call<EmbedResponse>(stack.client, 'embed', {
      model: 'sentence-encoder',
      texts: input,
    });
    const floats = await openai.embeddings.create({
      model: 'sentence-encoder',
      input,
      encoding_format: 'float',
    });
    // The SDK asks for base64 when no format is given and decodes it itself.
    const decoded = await openai.embeddings.create({ model: 'sentence-encoder', input });
    expect(floats.data.map((d) => d.index)).toEqual([0, 1]);
    for (const [i, embedding] of grpc.embeddings.entries()) {
      expect(floats.data[i]!.embedding).toEqual(embedding.values);
      expect(decoded.data[i]!.embedding).toEqual(embedding.values);
    }
    expect(floats.usage.prompt_tokens).toBe(grpc.usage!.promptTokens);
    const raw = await post('/v1/embeddings', {
      model: 'sentence-encoder',
      input: 'x',
      encoding_format: 'base64',
    });
    const body = (await raw.json()) as { data: { embedding: string }[] };
    expect(typeof body.data[0]!.embedding).toBe('string');
  });

  it('refuses token arrays and a wrong dimension by name', async () => {
    const tokens = await openai.embeddings
      .create({ model: 'sentence-encoder', input: [1, 2, 3] })
      .catch((e) => e);
    expect(tokens).toBeInstanceOf(OpenAI.BadRequestError);
    expect(tokens.param).toBe('input');
    const dims = await openai.embeddings
      .create({ model: 'sentence-encoder', input: 'x', dimensions: 3 })
      .catch((e) => e);
    expect(dims.param).toBe('dimensions');
  });
});

describe('errors, as the OpenAI SDK types them', () => {
  it('AuthenticationError without a valid key, PermissionDeniedError for a model the key may not use', async () => {
    await expect(client('not-a-key').models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
    const missing = await fetch(`${stack.http}/v1/models`);
    expect(missing.status).toBe(401);
    await expect(
      client(KEYS.classifierOnly).embeddings.create({ model: 'sentence-encoder', input: 'x' }),
    ).rejects.toBeInstanceOf(OpenAI.PermissionDeniedError);
  });

  it('RateLimitError with retry-after when the key is over its limit', async () => {
    const limited = client(KEYS.rps);
    const results = await Promise.allSettled(
      Array.from({ length: 4 }, () => limited.embeddings.create({ model: 'sentence-encoder', input: 'x' })),
    );
    const refused = results
      .filter((r) => r.status === 'rejected')
      .map((r) => (r as PromiseRejectedResult).reason);
    expect(refused.length).toBeGreaterThan(0);
    expect(refused[0]).toBeInstanceOf(OpenAI.RateLimitError);
    expect(Number(refused[0].headers.get('retry-after-ms'))).toBeGreaterThan(0);
    expect(Number(refused[0].headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
  });

  it('BadRequestError naming the OpenAI parameter', async () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ max_tokens: 100_000 }, 'max_tokens'],
      [{ temperature: 5 }, 'temperature'],
      [{ n: 2 }, 'n'],
      [{ frequency_penalty: 0.5 }, 'frequency_penalty'],
      [{ prompt: [] }, 'prompt'],
      [{ prompt: 42 }, 'prompt'],
      [{ stop: ['x'.repeat(100)] }, 'stop[0]'],
      [{ model: 'bert-classifier' }, 'model'],
    ];
    for (const [change, param] of cases) {
      const error = await openai.completions
        .create({ model: 'tiny-gpt2', prompt: 'Hi', ...change } as never)
        .catch((e: unknown) => e);
      expect([param, error]).toEqual([param, expect.any(OpenAI.BadRequestError)]);
      expect((error as InstanceType<typeof OpenAI.BadRequestError>).param).toBe(param);
    }
  });

  it('refuses bodies that are not JSON objects, and unknown routes and methods', async () => {
    const cases: [Promise<Response>, number, RegExp][] = [
      [post('/v1/completions', '{"model":'), 400, /not valid JSON/],
      [post('/v1/completions', new Uint8Array([0x7b, 0xff, 0x7d])), 400, /not valid UTF-8/],
      [post('/v1/completions', '[1,2]'), 400, /JSON object/],
      [post('/v1/completions', '{}', KEYS.full, { 'content-type': 'text/plain' }), 415, /content-type/],
      [
        post('/v1/classify', { model: 'bert-classifier', texts: ['x'.repeat(5 * 1024 * 1024)] }),
        413,
        /exceeds/,
      ],
      [post('/v1/nothing-here', {}), 404, /no route/],
      [fetch(`${stack.http}/v1/completions`), 405, /not allowed/],
    ];
    for (const [response, code, message] of cases) {
      const r = await response;
      const body = (await r.json()) as { error: { message: string } };
      expect([code, r.status, body.error.message]).toEqual([code, code, expect.stringMatching(message)]);
    }
    // The server is still fine.
    expect((await fetch(`${stack.http}/healthz`)).status).toBe(200);
  });
});

describe('tracing', () => {
  it("continues the caller's traceparent, through the tokenizer and runner calls", async () => {
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    spans.reset();
    const response = await post(
      '/v1/embeddings',
      { model: 'sentence-encoder', input: 'traced text' },
      KEYS.full,
      {
        traceparent: `00-${traceId}-00f067aa0ba902b7-01`,
      },
    );
    expect(response.status).toBe(200);
    await eventually(() => spans.getFinishedSpans().some((s) => s.name === 'POST /v1/embeddings'));
    const traced = spans.getFinishedSpans().filter((s) => s.spanContext().traceId === traceId);
    const names = traced.map((s) => s.name);
    expect(names).toContain('POST /v1/embeddings');
    // The orchestrator's downstream calls and the services' own server spans, all in the caller's trace.
    expect(names).toEqual(expect.arrayContaining(['maas.tokenizer.v1.TokenizerService/Encode']));
    expect(names.filter((n) => n.includes('ModelInfer')).length).toBeGreaterThan(0);
    const server = traced.find((s) => s.name === 'POST /v1/embeddings')!;
    expect(server.attributes['http.route']).toBe('/v1/embeddings');
    expect(server.attributes['http.response.status_code']).toBe(200);
  });
});

describe('metering', () => {
  it('meters HTTP calls per key and model as gRPC calls are, and counts them per route', async () => {
    const scrape = () => scrapeMetrics(stack.orchestrator.metricsPort!);
    const usage = { key_id: 'hashed', model: 'sentence-encoder', task: 'embedding' };
    const before = await scrape();
    const sdk = client(KEYS.hashed);
    const embedded = await sdk.embeddings.create({
      model: 'sentence-encoder',
      input: ['one text', 'and two'],
    });
    await expect(
      sdk.embeddings.create({ model: 'sentence-encoder', input: 'x', dimensions: 3 }),
    ).rejects.toThrow();
    const after = await scrape();
    const delta = (name: string, labels: Record<string, string>) =>
      metricValue(after, name, labels) - metricValue(before, name, labels);
    // The refused call (a dimension the model does not give) is refused before any work.
    expect(delta('maas_usage_requests_total', { ...usage, code: 'OK' })).toBe(1);
    expect(delta('maas_usage_prompt_tokens_total', usage)).toBe(embedded.usage.prompt_tokens);
    expect(
      delta('maas_orchestrator_http_requests_total', {
        method: 'POST',
        route: '/v1/embeddings',
        code: '200',
      }),
    ).toBe(1);
    expect(
      delta('maas_orchestrator_http_requests_total', {
        method: 'POST',
        route: '/v1/embeddings',
        code: '400',
      }),
    ).toBe(1);
  });
});

describe('JSON routes mirroring maas.orchestrator.v1', () => {
  it('classify and tokenize in the protobuf JSON mapping', async () => {
    const response = await post('/v1/classify', {
      model: 'bert-classifier',
      texts: ['good', 'bad'],
      top_k: 2,
    });
    expect(response.status).toBe(200);
    const body = (await response.json()) as { results: { labels: { label: string; score: number }[] }[] };
    expect(body.results).toHaveLength(2);
    expect(body.results[0]!.labels).toHaveLength(2);
    expect(repo.labels).toContain(body.results[0]!.labels[0]!.label);
    // lowerCamelCase names are accepted as well, as the protobuf JSON mapping says.
    const tokens = await post('/v1/tokenize', {
      model: 'bert-classifier',
      texts: ['hello'],
      returnOffsets: true,
    });
    const tokenized = (await tokens.json()) as { results: { ids: number[]; offsets: unknown[] }[] };
    expect(tokenized.results[0]!.ids.length).toBeGreaterThan(0);
    expect(tokenized.results[0]!.offsets.length).toBe(tokenized.results[0]!.ids.length);
  });

  it('refuses wrong types and unknown fields, naming them', async () => {
    const cases: [unknown, string][] = [
      [{ model: 'bert-classifier', texts: 'not a list' }, 'texts'],
      [{ model: 'bert-classifier', texts: ['x'], top_k: -1 }, 'top_k'],
      [{ model: 'bert-classifier', texts: ['x'], colour: 'blue' }, 'colour'],
      [{ model: 'bert-classifier', texts: [] }, 'texts'],
    ];
    for (const [body, param] of cases) {
      const response = await post('/v1/classify', body);
      const error = ((await response.json()) as { error: { param: string; message: string } }).error;
      expect([response.status, error.param]).toEqual([400, param]);
      expect(error.message.startsWith(`${param}: `)).toBe(true);
    }
  });

  it('generate streams GenerateResponse messages as server-sent events, then [DONE]', async () => {
    const response = await post('/v1/generate', {
      model: 'tiny-gpt2',
      prompt: 'Hello there',
      max_new_tokens: 5,
      sampling: { temperature: 0.8, seed: '7' },
    });
    expect(response.headers.get('content-type')).toMatch(/text\/event-stream/);
    const data = await events(response);
    expect(data[data.length - 1]).toBe('[DONE]');
    const messages = data.slice(0, -1).map((d) => JSON.parse(d) as Record<string, unknown>);
    const last = messages[messages.length - 1]!;
    expect(last.finish_reason).toMatch(/^FINISH_REASON_(LENGTH|EOS)$/);
    const grpc = await generate(stack.client, {
      model: 'tiny-gpt2',
      prompt: 'Hello there',
      maxNewTokens: 5,
      sampling: { temperature: 0.8, seed: '7' },
    }).done;
    expect(messages.map((m) => m.text ?? '').join('')).toBe(grpc.text);
    const refused = await post('/v1/generate', {
      model: 'tiny-gpt2',
      prompt: 'x',
      sampling: { seed: 'abc' },
    });
    expect(refused.status).toBe(400);
    expect(((await refused.json()) as { error: { param: string } }).error.param).toBe('sampling.seed');
  });
});

describe('a model without a chat template', () => {
  let plain: Stack;
  beforeAll(async () => {
    const root = writeFixtureRepository(undefined, {
      models: ['tiny-gpt2'],
      tokenizers: 'tiny',
      generation: { chatTemplate: null },
    }).root;
    plain = await startStack({ root, env: { AUTH_MODE: 'disabled' } });
  });
  afterAll(async () => {
    await plain?.close();
  });

  it('is refused chat completions with a message pointing at /v1/completions', async () => {
    const sdk = new OpenAI({ apiKey: 'unused', baseURL: `${plain.http}/v1`, maxRetries: 0 });
    const error = await sdk.chat.completions
      .create({ model: 'tiny-gpt2', messages: [{ role: 'user', content: 'hi' }] })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OpenAI.BadRequestError);
    expect((error as Error).message).toMatch(/no chat template.*\/v1\/completions/);
    const completion = await sdk.completions.create({ model: 'tiny-gpt2', prompt: 'hi', max_tokens: 2 });
    expect(completion.choices).toHaveLength(1);
  });
});
