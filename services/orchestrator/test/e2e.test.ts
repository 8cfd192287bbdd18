/**
 * The public API end to end: the real tokenizer, model-runner and
 * orchestrator in this process on loopback, the fixture models, and a client
 * that knows nothing but the proto and an API key.
 */
import { type ServiceError, status } from '@grpc/grpc-js';
import { writeFixtureRepository, type FixtureRepository } from '@maas/models';
import { createClient, decodeRetryDelayMs } from '@maas/shared';
import { checkHealth, listServicesByReflection, metricValue, scrapeMetrics } from '@maas/shared/testing';
import {
  type ClassifyResponse,
  type CountTokensResponse,
  type EmbedResponse,
  FinishReason,
  type GetModelResponse,
  type ListModelsResponse,
  Task,
  type TokenizeResponse,
} from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import {
  GenerationServiceClient,
  type GenerateResponse as RunnerResponse,
} from '@maas/shared/gen/maas/runner/v1/generation';
import { EncodeRequest, TokenizerServiceClient } from '@maas/shared/gen/maas/tokenizer/v1/tokenizer';
import { main as cli } from '../src/cli/main';
import {
  call,
  capturingLogger,
  eventually,
  failure,
  generate,
  KEYS,
  sleep,
  startStack,
  writeKeysFile,
  type Stack,
} from './helpers';

let repo: FixtureRepository;
let stack: Stack;
const audit = capturingLogger('orchestrator');

beforeAll(async () => {
  repo = writeFixtureRepository(undefined, { maxQueueDelayMicroseconds: 500, tokenizers: 'tiny' });
  stack = await startStack({
    root: repo.root,
    env: { API_KEYS_FILE: writeKeysFile(), MAX_INPUT_CHARACTERS: '2000' },
    orchestratorLogger: audit.logger,
  });
});
afterAll(async () => {
  await stack?.close();
});

const classify = (texts: string[], topK = 1, key: string | null = KEYS.full) =>
  call<ClassifyResponse>(stack.client, 'classify', { model: 'bert-classifier', texts, topK }, key);

describe('serving', () => {
  it('is SERVING, lists its API by reflection, and health needs no key', async () => {
    expect(await checkHealth(stack.address)).toBe('SERVING');
    expect(await checkHealth(stack.address, 'maas.orchestrator.v1.MaasService')).toBe('SERVING');
    expect(await listServicesByReflection(stack.address)).toContain('maas.orchestrator.v1.MaasService');
  });

  it('lists and describes models with task, readiness, limits, labels and dimensions', async () => {
    const { models } = await call<ListModelsResponse>(stack.client, 'listModels', {});
    expect(models.map((m) => m.name)).toEqual(['bert-classifier', 'sentence-encoder', 'tiny-gpt2']);
    const byName = Object.fromEntries(models.map((m) => [m.name, m]));
    expect(byName['bert-classifier']).toMatchObject({
      task: Task.TASK_CLASSIFICATION,
      ready: true,
      versions: ['1'],
      labels: repo.labels,
      limits: { maxBatchSize: 16, maxInputTokens: 128, maxInputCharacters: 2000 },
    });
    expect(byName['sentence-encoder']).toMatchObject({
      task: Task.TASK_EMBEDDING,
      dimensions: 32,
      ready: true,
    });
    expect(byName['tiny-gpt2']).toMatchObject({ task: Task.TASK_GENERATION, ready: true });
    expect(byName['tiny-gpt2']!.limits!.maxNewTokens).toBe(repo.decoder.maxPositions - 1);
    const one = await call<GetModelResponse>(stack.client, 'getModel', { name: 'sentence-encoder' });
    expect(one.model?.dimensions).toBe(32);
    const missing = await failure(call(stack.client, 'getModel', { name: 'nope' }));
    expect(missing.code).toBe(status.NOT_FOUND);
    expect(missing.details).toMatch(/^name: model 'nope'/);
  });
});

describe('access', () => {
  it('refuses calls without a valid key, and accepts a key stored only as its hash', async () => {
    const none = await failure(classify(['hi'], 1, null));
    expect(none.code).toBe(status.UNAUTHENTICATED);
    const wrong = await failure(classify(['hi'], 1, 'not-a-key-0123456789'));
    expect(wrong.code).toBe(status.UNAUTHENTICATED);
    expect(wrong.details).toBe('invalid API key');
    expect((await classify(['hi'], 1, KEYS.hashed)).results).toHaveLength(1);
  });

  it('limits a key to its models, in calls and in the model list', async () => {
    expect((await classify(['fine'], 1, KEYS.classifierOnly)).results).toHaveLength(1);
    const denied = await failure(
      call(stack.client, 'embed', { model: 'sentence-encoder', texts: ['x'] }, KEYS.classifierOnly),
    );
    expect(denied.code).toBe(status.PERMISSION_DENIED);
    const { models } = await call<ListModelsResponse>(stack.client, 'listModels', {}, KEYS.classifierOnly);
    expect(models.map((m) => m.name)).toEqual(['bert-classifier']);
  });

  it('over requests per second: RESOURCE_EXHAUSTED with the retry delay as RetryInfo and metadata', async () => {
    // Sent together, so that however slow the machine, the bucket (2, refilled at 2/s) cannot keep up.
    const settled = await Promise.allSettled(
      ['a', 'b', 'c', 'd', 'e'].map((t) => classify([t], 1, KEYS.rps)),
    );
    expect(settled.filter((r) => r.status === 'fulfilled').length).toBeGreaterThanOrEqual(2);
    const refused = settled.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(refused.length).toBeGreaterThanOrEqual(1);
    const over = refused[0]!.reason as ServiceError;
    expect(over.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(over.details).toMatch(/requests per second/);
    const delay = decodeRetryDelayMs(over.metadata);
    expect(delay).toBeGreaterThan(0);
    expect(delay).toBeLessThanOrEqual(500);
    expect(Number(over.metadata.get('retry-after-ms')[0])).toBe(delay);
    await sleep(delay!);
    expect((await classify(['d'], 1, KEYS.rps)).results).toHaveLength(1);
  });

  it('over tokens per minute: the request that crosses the budget passes, the next waits for the refill', async () => {
    const long = Array.from({ length: 40 }, (_, i) => `word${i}`).join(' ');
    const first = await classify([long], 1, KEYS.tokens);
    expect(first.usage!.promptTokens).toBeGreaterThan(30);
    const over = await failure(classify(['short'], 1, KEYS.tokens));
    expect(over.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(over.details).toMatch(/tokens per minute/);
    // 30 tokens/min refill at 0.5 token/s: the debt takes seconds to repay.
    expect(decodeRetryDelayMs(over.metadata)).toBeGreaterThan(1000);
  });

  it('over concurrent streams: the second stream is refused until the first ends', async () => {
    const first = generate(
      stack.client,
      { model: 'tiny-gpt2', prompt: 'Hello', maxNewTokens: 100 },
      KEYS.streams,
    );
    await new Promise<void>((resolve) => first.stream.once('data', () => resolve()));
    const second = await failure(
      generate(stack.client, { model: 'tiny-gpt2', prompt: 'Hi', maxNewTokens: 2 }, KEYS.streams).done,
    );
    expect(second.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(decodeRetryDelayMs(second.metadata)).toBeGreaterThan(0);
    first.stream.cancel();
    await first.done.catch(() => undefined);
    await sleep(20);
    const third = await generate(
      stack.client,
      { model: 'tiny-gpt2', prompt: 'Hi', maxNewTokens: 2 },
      KEYS.streams,
    ).done;
    expect(third.last.finishReason).not.toBe(FinishReason.FINISH_REASON_UNSPECIFIED);
  });
});

describe('classify', () => {
  it('returns top-k labels with softmax scores, best first, and token usage', async () => {
    const texts = ['a wonderful, heartfelt film', 'boring and far too long'];
    const response = await classify(texts, 2);
    expect(response.modelVersion).toBe('1');
    expect(response.results).toHaveLength(2);
    for (const result of response.results) {
      expect(result.labels).toHaveLength(2);
      expect(repo.labels).toContain(result.labels[0]!.label);
      expect(result.labels[0]!.score).toBeGreaterThanOrEqual(result.labels[1]!.score);
      expect(repo.labels[result.labels[0]!.index]).toBe(result.labels[0]!.label);
    }
    const all = await classify(texts, 3);
    for (const result of all.results) {
      expect(result.labels.reduce((s, l) => s + l.score, 0)).toBeCloseTo(1, 5);
    }
    const counts = await call<CountTokensResponse>(stack.client, 'countTokens', {
      model: 'bert-classifier',
      texts,
    });
    expect(response.usage).toEqual({
      promptTokens: counts.total,
      generatedTokens: 0,
      totalTokens: counts.total,
      cachedPromptTokens: 0,
    });
  });

  it('gives each request the same answer whether it was coalesced with others or not', async () => {
    const texts = Array.from({ length: 24 }, (_, i) => `review number ${i} ${'very '.repeat(i % 7)}good`);
    const alone: ClassifyResponse[] = [];
    for (const text of texts) alone.push(await classify([text], 3));
    const together = await Promise.all(texts.map((text) => classify([text], 3)));
    together.forEach((response, i) => {
      const expected = alone[i]!.results[0]!.labels;
      response.results[0]!.labels.forEach((label, j) => {
        expect(label.label).toBe(expected[j]!.label);
        expect(label.score).toBeCloseTo(expected[j]!.score, 4);
      });
    });
    const scrape = await scrapeMetrics(stack.orchestrator.metricsPort!);
    // Coalescing happened: fewer batches than requests.
    const batches = metricValue(scrape, 'maas_orchestrator_batch_requests_count', {
      model: 'bert-classifier',
    });
    const requests = metricValue(scrape, 'maas_orchestrator_batch_requests_sum', {
      model: 'bert-classifier',
    });
    expect(batches).toBeLessThan(requests);
  });

  it('refuses bad input before calling downstream, naming the field', async () => {
    const bad = async (request: object, method: 'classify' | 'embed' = 'classify') =>
      failure(call(stack.client, method, request));
    const empty = await bad({ model: 'bert-classifier', texts: [] });
    expect([empty.code, empty.details]).toEqual([status.INVALID_ARGUMENT, 'texts: must not be empty']);
    const many = await bad({ model: 'bert-classifier', texts: Array(17).fill('x') });
    expect(many.details).toMatch(/^texts: 17 texts exceed the limit of 16/);
    const long = await bad({ model: 'bert-classifier', texts: ['ok', 'x'.repeat(2001)] });
    expect(long.details).toMatch(/^texts\[1\]: 2001 characters/);
    const tokens = await bad({ model: 'bert-classifier', texts: ['ok', 'word '.repeat(300)] });
    expect([tokens.code, tokens.details]).toEqual([
      status.INVALID_ARGUMENT,
      expect.stringMatching(/^texts\[1\]: \d+ tokens exceed the model's limit of 128/),
    ]);
    const unknown = await bad({ model: 'nope', texts: ['x'] });
    expect([unknown.code, unknown.details]).toEqual([status.NOT_FOUND, "model: model 'nope' not found"]);
    const wrongTask = await bad({ model: 'sentence-encoder', texts: ['x'] });
    expect([wrongTask.code, wrongTask.details]).toEqual([
      status.INVALID_ARGUMENT,
      "model: model 'sentence-encoder' is a embedding model; call Embed with it",
    ]);
    const noModel = await bad({ model: '', texts: ['x'] }, 'embed');
    expect(noModel.details).toBe('model: is required');
  });

  it('an over-long text fails only its own request when coalesced with others', async () => {
    const results = await Promise.allSettled([
      classify(['fine']),
      classify(['word '.repeat(300)]),
      classify(['also fine']),
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
  });
});

describe('embed', () => {
  it('mean-pools and normalises as the model says, or as the request says', async () => {
    const texts = ['the cat sat on the mat', 'a dog'];
    const response = await call<EmbedResponse>(stack.client, 'embed', { model: 'sentence-encoder', texts });
    expect(response.dimensions).toBe(32);
    expect(response.embeddings).toHaveLength(2);
    for (const e of response.embeddings) {
      expect(e.values).toHaveLength(32);
      expect(Math.hypot(...e.values)).toBeCloseTo(1, 4);
    }
    const raw = await call<EmbedResponse>(stack.client, 'embed', {
      model: 'sentence-encoder',
      texts,
      normalize: false,
    });
    const norm = Math.hypot(...raw.embeddings[0]!.values);
    expect(norm).not.toBeCloseTo(1, 2);
    raw.embeddings[0]!.values.forEach((v, i) =>
      expect(v / norm).toBeCloseTo(response.embeddings[0]!.values[i]!, 4),
    );
    expect(response.usage!.promptTokens).toBeGreaterThan(4);
  });
});

describe('tokenize', () => {
  it('returns ids, tokens and offsets as the tokenizer service does, and counts', async () => {
    const response = await call<TokenizeResponse>(stack.client, 'tokenize', {
      model: 'bert-classifier',
      texts: ['Hello world'],
      returnOffsets: true,
    });
    const [result] = response.results;
    expect(result!.tokens[0]).toBe('[CLS]');
    expect(result!.tokens[result!.tokens.length - 1]).toBe('[SEP]');
    expect(result!.ids).toHaveLength(result!.tokens.length);
    expect(result!.offsets).toHaveLength(result!.tokens.length);
    expect(result!.offsets[1]!.start).toBe(0);
    const direct = await new Promise<{ encodings: { ids: number[]; tokens: string[] }[] }>(
      (resolve, reject) => {
        const tokenizer = createClient(TokenizerServiceClient, `127.0.0.1:${stack.tokenizers[0]!.grpcPort}`);
        tokenizer.encode(
          EncodeRequest.fromPartial({
            tokenizer: 'bert-classifier',
            texts: ['Hello world'],
            returnTokens: true,
          }),
          (e, r) => (tokenizer.close(), e ? reject(e) : resolve(r)),
        );
      },
    );
    expect(result!.ids).toEqual(direct.encodings[0]!.ids);
    expect(result!.tokens).toEqual(direct.encodings[0]!.tokens);
    const plain = await call<TokenizeResponse>(stack.client, 'tokenize', {
      model: 'bert-classifier',
      texts: ['Hello world'],
      addSpecialTokens: false,
    });
    expect(plain.results[0]!.ids).toEqual(result!.ids.slice(1, -1));
    expect(plain.results[0]!.offsets).toEqual([]);
    const counted = await call<CountTokensResponse>(stack.client, 'countTokens', {
      model: 'bert-classifier',
      texts: ['Hello world', 'a'],
    });
    expect(counted.counts[0]).toBe(result!.ids.length);
    expect(counted.total).toBe(counted.counts[0]! + counted.counts[1]!);
  });
});

describe('generate', () => {
  const runnerDirect = async (prompt: string, maxNewTokens: number) => {
    const tokenizer = createClient(TokenizerServiceClient, `127.0.0.1:${stack.tokenizers[0]!.grpcPort}`);
    const generation = createClient(GenerationServiceClient, `127.0.0.1:${stack.runner.grpcPort}`);
    try {
      const encoded = await new Promise<{ encodings: { ids: number[] }[] }>((resolve, reject) =>
        tokenizer.encode(
          {
            tokenizer: 'tiny-gpt2',
            texts: [prompt],
            textPairs: [],
            addSpecialTokens: false,
            returnOffsets: false,
            returnTokens: false,
            truncation: undefined,
            padding: undefined,
          },
          (e, r) => (e ? reject(e) : resolve(r)),
        ),
      );
      const ids: number[] = [];
      await new Promise<void>((resolve, reject) => {
        const stream = generation.generate({
          modelName: 'tiny-gpt2',
          modelVersion: '',
          promptIds: encoded.encodings[0]!.ids,
          sampling: undefined,
          maxNewTokens,
          stopTokenIds: [],
          ignoreEos: false,
          priority: 0,
          requestId: '',
        });
        stream.on('data', (m: RunnerResponse) => ids.push(...m.tokenIds));
        stream.on('error', reject);
        stream.on('end', resolve);
      });
      const decoded = await new Promise<{ texts: string[] }>((resolve, reject) =>
        tokenizer.decode(
          {
            tokenizer: 'tiny-gpt2',
            sequences: [{ ids }],
            skipSpecialTokens: true,
            cleanUpTokenizationSpaces: false,
          },
          (e, r) => (e ? reject(e) : resolve(r)),
        ),
      );
      return { ids, text: decoded.texts[0]!, promptTokens: encoded.encodings[0]!.ids.length };
    } finally {
      tokenizer.close();
      generation.close();
    }
  };

  it('streams text deltas whose concatenation is the decoded generation, then finish reason and usage', async () => {
    const expected = await runnerDirect('Once upon a time', 12);
    const { text, messages, last } = await generate(stack.client, {
      model: 'tiny-gpt2',
      prompt: 'Once upon a time',
      maxNewTokens: 12,
    }).done;
    expect(text).toBe(expected.text);
    expect(messages.length).toBeGreaterThan(2);
    expect(
      messages.slice(0, -1).every((m) => m.finishReason === FinishReason.FINISH_REASON_UNSPECIFIED),
    ).toBe(true);
    expect([FinishReason.FINISH_REASON_LENGTH, FinishReason.FINISH_REASON_EOS]).toContain(last.finishReason);
    expect(last.usage).toEqual({
      promptTokens: expected.promptTokens,
      generatedTokens: expected.ids.length,
      totalTokens: expected.promptTokens + expected.ids.length,
      cachedPromptTokens: 0,
    });
    expect(last.timeToFirstTokenMs).toBeGreaterThan(0);
    expect(last.modelVersion).toBe('1');
  });

  it('stops at a stop string split across deltas, without returning it', async () => {
    const full = (
      await generate(stack.client, { model: 'tiny-gpt2', prompt: 'The weather', maxNewTokens: 24 }).done
    ).text;
    expect(full.length).toBeGreaterThan(8);
    const stop = full.slice(4, 8);
    const { text, last } = await generate(stack.client, {
      model: 'tiny-gpt2',
      prompt: 'The weather',
      maxNewTokens: 24,
      stop: ['never appears \u0000', stop],
    }).done;
    expect(text).toBe(full.slice(0, full.indexOf(stop)));
    expect(last.finishReason).toBe(FinishReason.FINISH_REASON_STOP);
  });

  it('validates sampling parameters and limits before generating', async () => {
    const bad = async (partial: object) =>
      (await failure(generate(stack.client, { model: 'tiny-gpt2', prompt: 'x', ...partial }).done)).details;
    expect(await bad({ sampling: { temperature: 3 } })).toMatch(
      /^sampling\.temperature: must be in \[0, 2\]/,
    );
    expect(await bad({ sampling: { topP: 0 } })).toMatch(/^sampling\.top_p/);
    expect(await bad({ sampling: { repetitionPenalty: 2.5 } })).toMatch(/^sampling\.repetition_penalty/);
    expect(await bad({ maxNewTokens: 100_000 })).toMatch(/^max_new_tokens: must be at most 127/);
    expect(await bad({ prompt: 'Hello world', maxNewTokens: 127 })).toMatch(
      /^max_new_tokens: the prompt's \d+ tokens \+ 127 exceed the context length 128/,
    );
    expect(await bad({ stop: [''] })).toBe('stop[0]: must not be empty');
    expect(await bad({ prompt: '' })).toBe('prompt: must not be empty');
    expect(await bad({ prompt: 'word '.repeat(300) })).toMatch(/^prompt: \d+ tokens exceed/);
    const wrongTask = await failure(generate(stack.client, { model: 'bert-classifier', prompt: 'x' }).done);
    expect(wrongTask.code).toBe(status.INVALID_ARGUMENT);
  });

  it('samples reproducibly with a seed', async () => {
    const run = () =>
      generate(stack.client, {
        model: 'tiny-gpt2',
        prompt: 'Hello',
        maxNewTokens: 8,
        sampling: { temperature: 1, topK: 50, topP: 0.9, seed: '7' },
      }).done;
    expect((await run()).text).toBe((await run()).text);
  });
});

describe('oversized fields', () => {
  it('a 256 KB model name is INVALID_ARGUMENT naming the field, at once, and the connection keeps working', async () => {
    const name = 'm'.repeat(256 * 1024);
    for (const [method, request, field] of [
      ['getModel', { name }, 'name'],
      ['classify', { model: name, texts: ['x'] }, 'model'],
    ] as const) {
      const error = await failure(
        call(stack.client, method, request, KEYS.full, { deadline: new Date(Date.now() + 5000) }),
      );
      expect(error.code).toBe(status.INVALID_ARGUMENT);
      expect(error.details).toMatch(new RegExp(`^${field}: is 262144 characters`));
    }
    expect((await classify(['still fine'])).results).toHaveLength(1);
  });
});

describe('deadlines and cancellation', () => {
  it('a deadline shorter than the work ends the call with DEADLINE_EXCEEDED', async () => {
    const classified = await failure(
      call(stack.client, 'classify', { model: 'bert-classifier', texts: ['x'] }, KEYS.full, {
        deadline: new Date(Date.now() + 1),
      }),
    );
    expect(classified.code).toBe(status.DEADLINE_EXCEEDED);
    const generated = await failure(
      generate(stack.client, { model: 'tiny-gpt2', prompt: 'Hello', maxNewTokens: 120 }, KEYS.full, {
        deadline: new Date(Date.now() + 40),
      }).done,
    );
    expect(generated.code).toBe(status.DEADLINE_EXCEEDED);
  });

  it('meters and audits a call cut by its deadline as DEADLINE_EXCEEDED, the code the client saw', async () => {
    const before = audit.lines().length;
    const seen = await Promise.all(
      Array.from({ length: 20 }, () =>
        failure(
          call(stack.client, 'classify', { model: 'bert-classifier', texts: ['deadline'] }, KEYS.streams, {
            deadline: new Date(Date.now() + 3),
          }),
        ),
      ),
    );
    expect(new Set(seen.map((e) => e.code))).toEqual(new Set([status.DEADLINE_EXCEEDED]));
    await eventually(
      () =>
        audit
          .lines()
          .slice(before)
          .filter((l) => l.key_id === 'streams').length === 20,
      2000,
    );
    const codes = audit
      .lines()
      .slice(before)
      .filter((l) => l.audit === true && l.key_id === 'streams')
      .map((l) => l.code);
    expect(new Set(codes)).toEqual(new Set(['DeadlineExceeded']));
  });

  it('cancelling a generation stream stops the sequence on the runner at once', async () => {
    const engine = stack.runner.repository.resolve('tiny-gpt2').engine!;
    // The previous test's sequences (cut by their deadline) must have left first.
    await eventually(() => engine.stats().running === 0 && engine.stats().waiting === 0, 2000);
    const before = metricValue(
      await scrapeMetrics(stack.runner.metricsPort!),
      'maas_runner_generation_finished_total',
      { reason: 'cancelled' },
    );
    const running = generate(stack.client, { model: 'tiny-gpt2', prompt: 'Hello there', maxNewTokens: 120 });
    await new Promise<void>((resolve) => running.stream.once('data', () => resolve()));
    expect(engine.stats().running).toBe(1);
    running.stream.cancel();
    await expect(running.done).rejects.toMatchObject({ code: status.CANCELLED });
    // Within a decode step or two (a loaded 2-core machine stretches them), long before the 120 tokens.
    await eventually(() => engine.stats().running === 0, 2000);
    expect(engine.stats().running).toBe(0);
    const scrape = await scrapeMetrics(stack.runner.metricsPort!);
    expect(metricValue(scrape, 'maas_runner_generation_running_sequences')).toBe(0);
    expect(metricValue(scrape, 'maas_runner_generation_finished_total', { reason: 'cancelled' })).toBe(
      before + 1,
    );
  });
});

describe('metering', () => {
  it('counts requests and tokens per key and model, and writes an audit line without the text', async () => {
    await classify(['metered text, please'], 1, KEYS.hashed);
    await generate(stack.client, { model: 'tiny-gpt2', prompt: 'Count me', maxNewTokens: 3 }, KEYS.hashed)
      .done;
    const scrape = await scrapeMetrics(stack.orchestrator.metricsPort!);
    const labels = { key_id: 'hashed', model: 'bert-classifier', task: 'classification' };
    expect(
      metricValue(scrape, 'maas_usage_requests_total', { ...labels, code: 'OK' }),
    ).toBeGreaterThanOrEqual(2);
    expect(metricValue(scrape, 'maas_usage_prompt_tokens_total', labels)).toBeGreaterThan(0);
    expect(
      metricValue(scrape, 'maas_usage_generated_tokens_total', {
        key_id: 'hashed',
        model: 'tiny-gpt2',
        task: 'generation',
      }),
    ).toBeGreaterThan(0);
    expect(
      metricValue(scrape, 'maas_usage_requests_total', {
        key_id: 'unauthenticated',
        code: 'Unauthenticated',
      }),
    ).toBeGreaterThan(0);
    const lines = audit.lines().filter((l) => l.audit === true);
    const line = lines.find((l) => l.key_id === 'hashed' && l.task === 'classification');
    expect(line).toMatchObject({ model: 'bert-classifier', code: 'OK', generated_tokens: 0 });
    expect(line!.prompt_tokens).toBeGreaterThan(0);
    expect(typeof line!.duration_ms).toBe('number');
    expect(JSON.stringify(lines)).not.toContain('metered text');
    expect(JSON.stringify(audit.lines())).not.toContain(KEYS.full);
  });
});

describe('CLI', () => {
  const run = async (args: string[], env: Record<string, string> = {}) => {
    let out = '';
    let err = '';
    const code = await cli(['--address', stack.address, ...args], {
      out: (t) => (out += t),
      err: (t) => (err += t),
      stdin: async () => 'from stdin\n',
      env,
      cwd: '/nonexistent',
    });
    return { code, out, err };
  };

  it('classifies, embeds, lists and generates with a key', async () => {
    const classified = await run([
      'classify',
      '--key',
      KEYS.full,
      '--model',
      'bert-classifier',
      '--top-k',
      '2',
      'nice',
    ]);
    expect(classified).toMatchObject({ code: 0, err: '' });
    expect(classified.out.split('\n')[0]).toBe('nice');
    expect(classified.out).toMatch(/^ {2}(negative|neutral|positive)\t0\.\d{4}$/m);
    const embedded = await run(['embed', '--model', 'sentence-encoder', '--json'], {
      MAAS_API_KEY: KEYS.full,
    });
    expect(JSON.parse(embedded.out).dimensions).toBe(32);
    const models = await run(['models', '--key', KEYS.classifierOnly]);
    expect(models.out).toMatch(/^bert-classifier {2}classification {2}ready/);
    const generated = await run([
      'generate',
      '--key',
      KEYS.full,
      '--model',
      'tiny-gpt2',
      '--max-new-tokens',
      '4',
      'Hi',
    ]);
    expect(generated.code).toBe(0);
    expect(generated.err).toMatch(/\[(length|eos): \d+ prompt \+ \d generated tokens/);
  });

  it('exits non-zero with the status name and message, no stack', async () => {
    const denied = await run(['classify', '--model', 'bert-classifier', 'x']);
    expect(denied.code).toBe(1);
    expect(denied.err).toBe(
      'maas: UNAUTHENTICATED: missing API key: send "authorization: Bearer <key>" (pass --key or set MAAS_API_KEY)\n',
    );
    const bad = await run(['classify', '--key', KEYS.full, '--model', 'nope', 'x']);
    expect(bad.err).toBe("maas: NOT_FOUND: model: model 'nope' not found\n");
    const usage = await run(['classify', '--key', KEYS.full, 'x']);
    expect(usage.code).toBe(2);
    expect(usage.err).toMatch(/^maas: classify needs --model/);
    expect((await run(['classify', '--bogus'])).code).toBe(2);
  });
});
