import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import * as ort from 'onnxruntime-node';
import { writeFixtureRepository, type FixtureRepository } from '@maas/models';
import { FinishReason } from '@maas/shared/gen/maas/runner/v1/generation';
import { metricValue, scrapeMetrics } from '@maas/shared/testing';
import { failure, generate, startTestRunner, type TestRunner } from './helpers';

let repo: FixtureRepository;
let t: TestRunner;

beforeAll(async () => {
  repo = writeFixtureRepository(undefined, { models: ['tiny-gpt2'] });
  t = await startTestRunner(repo.root);
});
afterAll(async () => {
  await t?.close();
});

/** Greedy decoding recomputing the whole sequence every step: the reference for the KV cache. */
async function greedyRecompute(prompt: number[], n: number): Promise<number[]> {
  const session = await ort.InferenceSession.create(join(repo.root, 'tiny-gpt2', '1', 'model.onnx'));
  const { layers, heads, hidden, vocab } = repo.decoder;
  const seq = [...prompt];
  for (let k = 0; k < n; k++) {
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', BigInt64Array.from(seq, BigInt), [1, seq.length]),
      attention_mask: new ort.Tensor('int64', new BigInt64Array(seq.length).fill(1n), [1, seq.length]),
      position_ids: new ort.Tensor(
        'int64',
        BigInt64Array.from(seq, (_, i) => BigInt(i)),
        [1, seq.length],
      ),
    };
    for (let l = 0; l < layers; l++) {
      for (const kind of ['key', 'value']) {
        feeds[`past_key_values.${l}.${kind}`] = new ort.Tensor('float32', new Float32Array(0), [
          1,
          heads,
          0,
          hidden / heads,
        ]);
      }
    }
    const logits = (await session.run(feeds)).logits!.data as Float32Array;
    const last = logits.subarray((seq.length - 1) * vocab, seq.length * vocab);
    let best = 0;
    for (let i = 1; i < vocab; i++) if (last[i]! > last[best]!) best = i;
    seq.push(best);
  }
  await session.release();
  return seq.slice(prompt.length);
}

const PROMPTS = [
  [464, 2068, 7586, 21831],
  [15496],
  [40, 1842, 428, 3807, 11, 340],
  [1858, 373],
  [464, 3290, 318, 257, 1332, 286, 262],
  [32],
];

describe('KV-cache generation', () => {
  it('gives the same greedy tokens as recomputing the full sequence', async () => {
    const { tokens, last } = await generate(t.generation, {
      modelName: 'tiny-gpt2',
      promptIds: PROMPTS[0],
      maxNewTokens: 20,
      ignoreEos: true,
    }).done;
    expect(tokens).toEqual(await greedyRecompute(PROMPTS[0]!, 20));
    expect(new Set(tokens).size).toBeGreaterThanOrEqual(3);
    expect(last.finishReason).toBe(FinishReason.FINISH_REASON_LENGTH);
    expect(last.promptTokens).toBe(4);
    expect(last.generatedTokens).toBe(20);
    expect(last.timing!.timeToFirstTokenMs).toBeGreaterThan(0);
  });

  it('continuous batching gives each sequence the tokens it gets alone (greedy and seeded sampling)', async () => {
    const alone: number[][] = [];
    for (const [i, prompt] of PROMPTS.entries()) {
      const sampling = i % 2 === 0 ? {} : { temperature: 0.9, topK: 50, topP: 0.95, seed: 1000 + i };
      alone.push(
        (
          await generate(t.generation, {
            modelName: 'tiny-gpt2',
            promptIds: prompt,
            maxNewTokens: 12 + i,
            ignoreEos: true,
            sampling,
          }).done
        ).tokens,
      );
    }
    const before = await scrapeMetrics(t.runner.metricsPort!);
    const together = await Promise.all(
      PROMPTS.map(async (prompt, i) => {
        await new Promise((r) => setTimeout(r, i * 7)); // staggered arrivals join a running batch
        const sampling = i % 2 === 0 ? {} : { temperature: 0.9, topK: 50, topP: 0.95, seed: 1000 + i };
        return (
          await generate(t.generation, {
            modelName: 'tiny-gpt2',
            promptIds: prompt,
            maxNewTokens: 12 + i,
            ignoreEos: true,
            sampling,
          }).done
        ).tokens;
      }),
    );
    expect(together).toEqual(alone);
    const after = await scrapeMetrics(t.runner.metricsPort!);
    // Batched steps happened: some decode step ran more than one sequence.
    const steps =
      metricValue(after, 'maas_runner_generation_step_batch_size_count') -
      metricValue(before, 'maas_runner_generation_step_batch_size_count');
    const rows =
      metricValue(after, 'maas_runner_generation_step_batch_size_sum') -
      metricValue(before, 'maas_runner_generation_step_batch_size_sum');
    expect(rows / steps).toBeGreaterThan(1.5);
  });

  it('is reproducible for a seed, differs across seeds, and top_k=1 is greedy', async () => {
    const run = (sampling: object) =>
      generate(t.generation, {
        modelName: 'tiny-gpt2',
        promptIds: PROMPTS[2],
        maxNewTokens: 16,
        ignoreEos: true,
        sampling,
      }).done;
    const a = (await run({ temperature: 1.5, seed: 7 })).tokens;
    const b = (await run({ temperature: 1.5, seed: 7 })).tokens;
    const c = (await run({ temperature: 1.5, seed: 8 })).tokens;
    expect(a).toEqual(b);
    expect(a).not.toEqual(c);
    expect((await run({ temperature: 1, topK: 1, seed: 3 })).tokens).toEqual((await run({})).tokens);
  });

  it('stops on stop token ids and on max_new_tokens with the right finish reason', async () => {
    const greedy = (
      await generate(t.generation, {
        modelName: 'tiny-gpt2',
        promptIds: PROMPTS[1],
        maxNewTokens: 10,
        ignoreEos: true,
      }).done
    ).tokens;
    const stopId = greedy[4]!;
    const stopped = await generate(t.generation, {
      modelName: 'tiny-gpt2',
      promptIds: PROMPTS[1],
      maxNewTokens: 10,
      ignoreEos: true,
      stopTokenIds: [stopId],
    }).done;
    expect(stopped.last.finishReason).toBe(FinishReason.FINISH_REASON_STOP);
    expect(stopped.tokens.at(-1)).toBe(stopId);
    expect(stopped.tokens.length).toBeLessThanOrEqual(5);
    const eos = await generate(t.generation, {
      modelName: 'tiny-gpt2',
      promptIds: PROMPTS[1],
      maxNewTokens: 10,
      stopTokenIds: [],
    }).done;
    expect([FinishReason.FINISH_REASON_LENGTH, FinishReason.FINISH_REASON_EOS]).toContain(
      eos.last.finishReason,
    );
  });

  it('refuses bad requests with INVALID_ARGUMENT or NOT_FOUND', async () => {
    const bad = async (partial: object) =>
      (await failure(generate(t.generation, { modelName: 'tiny-gpt2', promptIds: [1], ...partial }).done))
        .details;
    expect(await bad({ promptIds: [] })).toContain('prompt_ids');
    expect(await bad({ promptIds: [1, 60000] })).toContain('prompt_ids[1]');
    expect(await bad({ maxNewTokens: 1000 })).toContain('max_new_tokens');
    expect(await bad({ sampling: { temperature: 3 } })).toContain('sampling.temperature');
    expect(await bad({ sampling: { topP: 0 } })).toContain('sampling.top_p');
    expect((await failure(generate(t.generation, { modelName: 'nope', promptIds: [1] }).done)).code).toBe(
      status.NOT_FOUND,
    );
  });
});

describe('limits and cancellation', () => {
  let small: TestRunner;
  beforeAll(async () => {
    const root = writeFixtureRepository(undefined, {
      models: ['tiny-gpt2'],
      generation: { maxConcurrentSequences: 1, maxQueuedSequences: 1 },
    }).root;
    small = await startTestRunner(root);
  });
  afterAll(async () => {
    await small?.close();
  });

  it('cancelling frees the slot at once for a waiting sequence, and the queue is bounded', async () => {
    const engine = small.runner.repository.resolve('tiny-gpt2').engine!;
    const long = generate(small.generation, {
      modelName: 'tiny-gpt2',
      promptIds: [15496],
      maxNewTokens: 120,
      ignoreEos: true,
    });
    await new Promise<void>((resolve) => long.stream.once('data', () => resolve()));
    const waiting = generate(small.generation, {
      modelName: 'tiny-gpt2',
      promptIds: [15496],
      maxNewTokens: 3,
      ignoreEos: true,
    });
    await new Promise((r) => setTimeout(r, 20));
    expect(engine.stats()).toMatchObject({ running: 1, waiting: 1 });
    const refused = await failure(
      generate(small.generation, { modelName: 'tiny-gpt2', promptIds: [15496], maxNewTokens: 3 }).done,
    );
    expect(refused.code).toBe(status.RESOURCE_EXHAUSTED);
    long.stream.cancel();
    await expect(long.done).rejects.toMatchObject({ code: status.CANCELLED });
    const second = await waiting.done;
    expect(second.tokens).toHaveLength(3);
    await new Promise((r) => setTimeout(r, 20));
    expect(engine.stats()).toEqual({ running: 0, waiting: 0, cachedTokens: 0 });
    const scrape = await scrapeMetrics(small.runner.metricsPort!);
    expect(metricValue(scrape, 'maas_runner_generation_finished_total', { reason: 'cancelled' })).toBe(1);
  });

  it('a deadline ends the stream with DEADLINE_EXCEEDED and frees the slot', async () => {
    const engine = small.runner.repository.resolve('tiny-gpt2').engine!;
    const timed = generate(
      small.generation,
      { modelName: 'tiny-gpt2', promptIds: [15496], maxNewTokens: 126, ignoreEos: true },
      new Date(Date.now() + 30),
    );
    expect((await failure(timed.done)).code).toBe(status.DEADLINE_EXCEEDED);
    await new Promise((r) => setTimeout(r, 50));
    expect(engine.stats().running).toBe(0);
  });
});
