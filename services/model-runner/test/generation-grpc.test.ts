/**
 * Generation through the runner's gRPC surface (maas.runner.v1.GenerationService):
 * the engine behind the real server, on the tiny fixture decoder. The engine's
 * own behaviour is covered in generation-engine.test.ts; here: the stream, the
 * mapping of results and errors to the wire, cancellation and deadlines.
 */
import { status } from '@grpc/grpc-js';
import * as ort from 'onnxruntime-node';
import { join } from 'node:path';
import {
  FinishReason,
  GenerateRequest,
  type GenerateResponse,
  GenerateStreamRequest,
} from '@maas/shared/gen/maas/runner/v1/generation';
import { metricValue, scrapeMetrics } from '@maas/shared/testing';
import { readModelConfig } from '@maas/shared';
import { greedyByRecompute } from '../src/generation/reference';
import { writeTinyDecoderRepository } from './generation-harness';
import { failure, generate, startTestRunner, type TestRunner } from './helpers';

let root: string;
let t: TestRunner;

beforeAll(async () => {
  root = writeTinyDecoderRepository();
  t = await startTestRunner(root);
});
afterAll(async () => {
  await t?.close();
});

const PROMPTS = [
  [464, 1068, 758, 218],
  [1549],
  [40, 1842, 428, 380, 11, 340],
  [1858, 373],
  [464, 1290, 318, 257, 1332, 286, 262],
  [32],
];
const sampling = (i: number) =>
  i % 2 === 0 ? {} : { temperature: 0.9, topK: 50, topP: 0.95, seed: String(1000 + i) };

describe('Generate', () => {
  it('streams the greedy tokens a full recomputation gives, then the finish reason and timing', async () => {
    const { tokens, last } = await generate(t.generation, {
      modelName: 'tiny-gpt2',
      promptIds: PROMPTS[0],
      maxNewTokens: 20,
      ignoreEos: true,
    }).done;
    const session = await ort.InferenceSession.create(join(root, 'tiny-gpt2', '1', 'model.onnx'));
    const config = readModelConfig(join(root, 'tiny-gpt2'), 'tiny-gpt2');
    expect(tokens).toEqual(await greedyByRecompute(session, config.generation!, PROMPTS[0]!, 20));
    await session.release();
    expect(last).toMatchObject({
      finishReason: FinishReason.FINISH_REASON_LENGTH,
      promptTokens: 4,
      generatedTokens: 20,
      modelVersion: '1',
    });
    expect(last.timing!.timeToFirstTokenMs).toBeGreaterThan(0);
    expect(last.timing!.totalMs).toBeGreaterThanOrEqual(last.timing!.timeToFirstTokenMs);
  });

  it('concurrent streams each get the tokens they get alone (greedy and seeded sampling)', async () => {
    const request = (i: number) => ({
      modelName: 'tiny-gpt2',
      promptIds: PROMPTS[i],
      maxNewTokens: 12 + i,
      ignoreEos: true,
      sampling: sampling(i),
    });
    const alone: number[][] = [];
    for (let i = 0; i < PROMPTS.length; i++)
      alone.push((await generate(t.generation, request(i)).done).tokens);
    const staggered = await Promise.all(
      PROMPTS.map(async (_, i) => {
        await new Promise((r) => setTimeout(r, i * 5)); // staggered arrivals join a running batch
        return (await generate(t.generation, request(i)).done).tokens;
      }),
    );
    expect(staggered).toEqual(alone);
    // Whether a staggered stream still finds the others running depends on the
    // machine's speed (a fast one finishes 12 tiny steps inside the 5 ms gap),
    // so the batching itself is asserted on streams that arrive together.
    const before = await scrapeMetrics(t.runner.metricsPort!);
    const together = await Promise.all(
      PROMPTS.map(async (_, i) => (await generate(t.generation, request(i)).done).tokens),
    );
    expect(together).toEqual(alone);
    const after = await scrapeMetrics(t.runner.metricsPort!);
    const delta = (name: string) => metricValue(after, name) - metricValue(before, name);
    const rows = delta('maas_runner_generation_step_batch_size_sum');
    const steps = delta('maas_runner_generation_step_batch_size_count');
    expect(rows / steps).toBeGreaterThan(1.5);
    expect(
      metricValue(after, 'maas_runner_generation_generated_tokens_total', {
        model: 'tiny-gpt2',
        version: '1',
      }),
    ).toBeGreaterThanOrEqual(3 * (12 + 13 + 14 + 15 + 16 + 17));
  });

  it('ends with STOP on a stop token id', async () => {
    const greedy = (
      await generate(t.generation, {
        modelName: 'tiny-gpt2',
        promptIds: PROMPTS[1],
        maxNewTokens: 10,
        ignoreEos: true,
      }).done
    ).tokens;
    const stopped = await generate(t.generation, {
      modelName: 'tiny-gpt2',
      promptIds: PROMPTS[1],
      maxNewTokens: 10,
      ignoreEos: true,
      stopTokenIds: [greedy[4]!],
    }).done;
    expect(stopped.last.finishReason).toBe(FinishReason.FINISH_REASON_STOP);
    expect(stopped.tokens).toEqual(greedy.slice(0, greedy.indexOf(greedy[4]!) + 1));
  });

  it('refuses bad requests with INVALID_ARGUMENT naming the field, or NOT_FOUND', async () => {
    const bad = async (partial: object) =>
      (await failure(generate(t.generation, { modelName: 'tiny-gpt2', promptIds: [1], ...partial }).done))
        .details;
    expect(await bad({ promptIds: [] })).toContain('prompt_ids');
    expect(await bad({ promptIds: [1, 5000] })).toContain('prompt_ids[1]');
    expect(await bad({ maxNewTokens: 1000 })).toContain('max_new_tokens');
    expect(await bad({ promptIds: new Array(100).fill(1), maxNewTokens: 29 })).toContain('max_new_tokens');
    expect(await bad({ sampling: { temperature: 3 } })).toContain('sampling.temperature');
    expect(await bad({ sampling: { topP: 0 } })).toContain('sampling.top_p');
    expect((await failure(generate(t.generation, { modelName: 'nope', promptIds: [1] }).done)).code).toBe(
      status.NOT_FOUND,
    );
  });
});

describe('limits and cancellation over gRPC', () => {
  let small: TestRunner;
  beforeAll(async () => {
    small = await startTestRunner(
      writeTinyDecoderRepository({ maxConcurrentSequences: 1, maxQueuedSequences: 1 }),
    );
  });
  afterAll(async () => {
    await small?.close();
  });

  it('cancelling a stream frees its slot for a waiting one; beyond the queue RESOURCE_EXHAUSTED', async () => {
    const engine = small.runner.repository.resolve('tiny-gpt2').engine!;
    const long = generate(small.generation, {
      modelName: 'tiny-gpt2',
      promptIds: [1549],
      maxNewTokens: 120,
      ignoreEos: true,
    });
    await new Promise<void>((resolve) => long.stream.once('data', () => resolve()));
    const waiting = generate(small.generation, {
      modelName: 'tiny-gpt2',
      promptIds: [1549],
      maxNewTokens: 3,
      ignoreEos: true,
    });
    for (let i = 0; i < 100 && engine.stats().waiting === 0; i++) await new Promise((r) => setTimeout(r, 5));
    expect(engine.stats()).toMatchObject({ running: 1, waiting: 1 });
    const refused = await failure(
      generate(small.generation, { modelName: 'tiny-gpt2', promptIds: [1549], maxNewTokens: 3 }).done,
    );
    expect(refused.code).toBe(status.RESOURCE_EXHAUSTED);
    long.stream.cancel();
    await expect(long.done).rejects.toMatchObject({ code: status.CANCELLED });
    expect((await waiting.done).tokens).toHaveLength(3);
    for (let i = 0; i < 100 && engine.stats().running > 0; i++) await new Promise((r) => setTimeout(r, 5));
    expect(engine.stats()).toEqual({ running: 0, waiting: 0, cachedTokens: 0 });
    const scrape = await scrapeMetrics(small.runner.metricsPort!);
    expect(metricValue(scrape, 'maas_runner_generation_finished_total', { reason: 'cancelled' })).toBe(1);
  });

  it('a deadline ends the stream with DEADLINE_EXCEEDED and frees the slot', async () => {
    const engine = small.runner.repository.resolve('tiny-gpt2').engine!;
    const timed = generate(
      small.generation,
      { modelName: 'tiny-gpt2', promptIds: [1549], maxNewTokens: 126, ignoreEos: true },
      new Date(Date.now() + 30),
    );
    expect((await failure(timed.done)).code).toBe(status.DEADLINE_EXCEEDED);
    for (let i = 0; i < 100 && engine.stats().running > 0; i++) await new Promise((r) => setTimeout(r, 5));
    expect(engine.stats().running).toBe(0);
  });
});

describe('GenerateStream', () => {
  const start = (partial: Parameters<typeof GenerateRequest.fromPartial>[0]) =>
    GenerateStreamRequest.fromPartial({
      action: { $case: 'start', value: GenerateRequest.fromPartial(partial) },
    });
  const collect = (stream: ReturnType<typeof t.generation.generateStream>) =>
    new Promise<{ tokens: number[]; last: GenerateResponse }>((resolve, reject) => {
      const tokens: number[] = [];
      let last: GenerateResponse | undefined;
      stream.on('data', (m: GenerateResponse) => {
        tokens.push(...m.tokenIds);
        last = m;
      });
      stream.on('error', reject);
      stream.on('end', () => resolve({ tokens, last: last! }));
    });

  it('gives the tokens Generate gives', async () => {
    const request = { modelName: 'tiny-gpt2', promptIds: PROMPTS[2], maxNewTokens: 10, ignoreEos: true };
    const expected = (await generate(t.generation, request).done).tokens;
    const stream = t.generation.generateStream();
    stream.write(start(request));
    stream.end(); // half-closing changes nothing
    const { tokens, last } = await collect(stream);
    expect(tokens).toEqual(expected);
    expect(last.finishReason).toBe(FinishReason.FINISH_REASON_LENGTH);
  });

  it('a stop message ends the sequence with CANCELLED and status OK, freeing its slot', async () => {
    const engine = t.runner.repository.resolve('tiny-gpt2').engine!;
    const stream = t.generation.generateStream();
    const statuses: number[] = [];
    stream.on('status', (s: { code: number }) => statuses.push(s.code));
    const done = collect(stream);
    stream.write(start({ modelName: 'tiny-gpt2', promptIds: [1549], maxNewTokens: 120, ignoreEos: true }));
    await new Promise<void>((resolve) => stream.once('data', () => resolve()));
    stream.write(GenerateStreamRequest.fromPartial({ action: { $case: 'stop', value: {} } }));
    stream.end();
    const { tokens, last } = await done;
    expect(last.finishReason).toBe(FinishReason.FINISH_REASON_CANCELLED);
    expect(tokens.length).toBeLessThan(120);
    expect(statuses).toEqual([status.OK]);
    for (let i = 0; i < 100 && engine.stats().running > 0; i++) await new Promise((r) => setTimeout(r, 5));
    expect(engine.stats().running).toBe(0);
  });

  it('refuses a stream that does not start with a sequence, naming the field', async () => {
    const noStart = t.generation.generateStream();
    noStart.write(GenerateStreamRequest.fromPartial({ action: { $case: 'stop', value: {} } }));
    expect(await failure(collect(noStart))).toMatchObject({
      code: status.INVALID_ARGUMENT,
      details: 'start: the first message must start a sequence',
    });
    const empty = t.generation.generateStream();
    empty.end();
    expect(await failure(collect(empty))).toMatchObject({
      code: status.INVALID_ARGUMENT,
      details: 'start: the stream ended before a sequence was started',
    });
    const unknown = t.generation.generateStream();
    unknown.write(start({ modelName: 'no-such-model', promptIds: [1] }));
    expect((await failure(collect(unknown))).code).toBe(status.NOT_FOUND);
  });
});
