/**
 * The generation engine on a real onnxruntime session of the tiny GPT-2-style
 * fixture decoder (random weights, optimum KV-cache signature).
 */
import { status } from '@grpc/grpc-js';
import { StatusError } from '@maas/shared';
import { argmax, type GenerationEngine } from '../src/generation/index';
import { greedyByRecompute, lastLogitsByRecompute } from '../src/generation/reference';
import {
  generate,
  histogram,
  metric,
  startEngine,
  TEST_PROMPTS,
  tinyDecoder,
  until,
  withRun,
  type Ask,
  type DecoderModel,
  type Generated,
} from './generation-harness';

let model: DecoderModel;
beforeAll(async () => {
  model = await tinyDecoder();
});
afterAll(async () => {
  await model?.session.release();
});

const PROMPTS = TEST_PROMPTS;
const seeded = (i: number) => ({ temperature: 0.9, topK: 50, topP: 0.95, seed: 1000 + i });
const askFor = (i: number): Ask => ({
  promptIds: PROMPTS[i]!,
  maxNewTokens: 10 + 3 * i,
  sampling: i % 2 === 0 ? {} : seeded(i),
});

async function alone(asks: Ask[]): Promise<number[][]> {
  const { engine } = startEngine(model);
  const out: number[][] = [];
  for (const ask of asks) out.push((await generate(engine, ask)).tokens);
  await engine.close();
  return out;
}

/**
 * Staggered arrivals: each sequence arrives once the one before has two
 * tokens, so sequences join a running batch, and (with different lengths)
 * leave it while others go on.
 */
async function staggered(engine: GenerationEngine, asks: Ask[]): Promise<Generated[]> {
  const results: Promise<Generated>[] = [];
  const start = (i: number) => {
    results[i] = generate(engine, asks[i]!, (_, count) => {
      if (count === 2 && i + 1 < asks.length) start(i + 1);
    });
  };
  start(0);
  await until(() => results.length === asks.length);
  return Promise.all(results);
}

async function refusal(promise: Promise<unknown>): Promise<StatusError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(StatusError);
    return error as StatusError;
  }
  throw new Error('expected a refusal');
}

describe('KV-cache generation', () => {
  it('gives the same greedy tokens as recomputing the whole sequence for every token', async () => {
    const { engine } = startEngine(model);
    for (const prompt of [PROMPTS[0]!, PROMPTS[4]!]) {
      const { tokens, result } = await generate(engine, { promptIds: prompt, maxNewTokens: 24 });
      expect(tokens).toEqual(await greedyByRecompute(model.session, model.config.generation!, prompt, 24));
      expect(new Set(tokens).size).toBeGreaterThanOrEqual(3);
      expect(result).toMatchObject({
        finishReason: 'length',
        promptTokens: prompt.length,
        generatedTokens: 24,
      });
      expect(result.timeToFirstTokenMs).toBeGreaterThan(0);
      expect(result.totalMs).toBeGreaterThanOrEqual(result.timeToFirstTokenMs);
      expect(result.decodeTokensPerSecond).toBeGreaterThan(0);
    }
    await engine.close();
  });

  it('applies the repetition penalty as a recomputed reference does', async () => {
    const { engine } = startEngine(model);
    const prompt = PROMPTS[2]!;
    const penalty = 1.8;
    const { tokens } = await generate(engine, {
      promptIds: prompt,
      maxNewTokens: 16,
      sampling: { repetitionPenalty: penalty },
    });
    const ids = [...prompt];
    for (let k = 0; k < 16; k++) {
      const logits = await lastLogitsByRecompute(model.session, model.config.generation!, ids);
      for (const id of new Set(ids))
        logits[id] = logits[id]! > 0 ? logits[id]! / penalty : logits[id]! * penalty;
      ids.push(argmax(logits));
    }
    expect(tokens).toEqual(ids.slice(prompt.length));
    const plain = (await generate(engine, { promptIds: prompt, maxNewTokens: 16 })).tokens;
    expect(new Set(tokens).size).toBeGreaterThan(new Set(plain).size);
    await engine.close();
  });

  it('continuous batching gives each sequence the tokens it gets alone (greedy and seeded sampling)', async () => {
    const asks = PROMPTS.map((_, i) => askFor(i));
    const expected = await alone(asks);
    const { engine, registry } = startEngine(model);
    const together = await staggered(engine, asks);
    expect(together.map((r) => r.tokens)).toEqual(expected);
    const steps = await histogram(registry, 'maas_runner_generation_step_batch_size', 'count');
    const rows = await histogram(registry, 'maas_runner_generation_step_batch_size', 'sum');
    expect(rows / steps).toBeGreaterThan(2);
    expect(
      await histogram(registry, 'maas_runner_generation_repack_duration_seconds', 'count'),
    ).toBeGreaterThan(4);
    expect(engine.stats()).toEqual({ running: 0, waiting: 0, cachedTokens: 0 });
    await engine.close();
  });

  it('prefills prompts that arrive together in one left-padded run, with the tokens each gets alone', async () => {
    const asks = [0, 1, 2, 3].map(askFor);
    const expected = await alone(asks);
    const { engine, registry } = startEngine(model);
    const together = await Promise.all(asks.map((ask) => generate(engine, ask)));
    expect(together.map((r) => r.tokens)).toEqual(expected);
    expect(await histogram(registry, 'maas_runner_generation_prefill_duration_seconds', 'count')).toBe(1);
    await engine.close();
  });

  it('is reproducible for a seed, differs across seeds, and top_k = 1 is greedy', async () => {
    const { engine } = startEngine(model);
    const run = async (sampling: object) =>
      (await generate(engine, { promptIds: PROMPTS[2]!, maxNewTokens: 16, sampling })).tokens;
    const a = await run({ temperature: 1.5, seed: 7 });
    expect(await run({ temperature: 1.5, seed: 7 })).toEqual(a);
    expect(await run({ temperature: 1.5, seed: 8 })).not.toEqual(a);
    // Unseeded sampling is random.
    expect(await run({ temperature: 1.5 })).not.toEqual(await run({ temperature: 1.5 }));
    expect(await run({ temperature: 1, topK: 1, seed: 3 })).toEqual(await run({}));
    await engine.close();
  });
});

describe('the batch cache', () => {
  it('the edited graph (new keys/values only) gives the tokens of the graph returning the whole present', async () => {
    const unedited = await tinyDecoder({ unedited: true });
    const asks = PROMPTS.map((_, i) => askFor(i));
    const run = async (m: DecoderModel) => {
      const { engine, registry } = startEngine(m);
      const tokens = (await staggered(engine, asks)).map((r) => r.tokens);
      const stats = engine.cacheStats();
      const copied = await metric(registry, 'maas_runner_generation_kv_cache_copied_bytes_total');
      await engine.close();
      return { tokens, stats, copied };
    };
    const edited = await run(model);
    const whole = await run(unedited);
    await unedited.session.release();
    expect(edited.tokens).toEqual(whole.tokens);
    expect(edited.tokens).toEqual(await alone(asks));
    expect(edited.stats.newPositionsOnly).toBe(true);
    expect(whole.stats.newPositionsOnly).toBe(false);
    // Either way only new keys/values are written; moves within the cache are a fraction of them.
    expect(edited.stats.writtenBytes).toBe(whole.stats.writtenBytes);
    expect(edited.stats.copiedBytes).toBeLessThan(edited.stats.writtenBytes);
    expect(edited.copied).toBe(edited.stats.copiedBytes);
  });

  it('reports the cache in use over maxCachedTokens while sequences run, and 0 once they end', async () => {
    const { engine, registry } = startEngine(model);
    const labels = { model: 'tiny-gpt2', version: '1' };
    const g = model.config.generation!;
    const seen: { usage: number; cached: number }[] = [];
    await generate(engine, { promptIds: PROMPTS[4]!, maxNewTokens: 8 }, (_, count) => {
      if (count !== 4) return;
      // Both gauges are set together, once per scheduler step.
      void Promise.all([
        metric(registry, 'maas_runner_generation_kv_cache_usage_ratio', labels),
        metric(registry, 'maas_runner_generation_cached_tokens', labels),
      ]).then(([usage, cached]) => seen.push({ usage, cached }));
    });
    await until(() => seen.length === 1);
    // At least the 13-token prompt is cached by the 4th token.
    expect(seen[0]!.cached).toBeGreaterThanOrEqual(13);
    expect(seen[0]!.usage).toBeCloseTo(seen[0]!.cached / g.maxCachedTokens, 9);
    expect(await metric(registry, 'maas_runner_generation_kv_cache_usage_ratio', labels)).toBe(0);
    await engine.close();
  });
});

describe('metrics', () => {
  it('counts tokens, sequences and latencies, labelled by model and version', async () => {
    const { engine, registry } = startEngine(model);
    await Promise.all([
      generate(engine, { promptIds: PROMPTS[0]!, maxNewTokens: 10 }),
      generate(engine, { promptIds: PROMPTS[2]!, maxNewTokens: 7 }),
    ]);
    const labels = { model: 'tiny-gpt2', version: '1' };
    expect(await metric(registry, 'maas_runner_generation_generated_tokens_total', labels)).toBe(17);
    expect(await metric(registry, 'maas_runner_generation_prompt_tokens_total', labels)).toBe(4 + 9);
    expect(
      await metric(registry, 'maas_runner_generation_finished_total', { ...labels, reason: 'length' }),
    ).toBe(2);
    expect(await histogram(registry, 'maas_runner_generation_time_to_first_token_seconds', 'count')).toBe(2);
    expect(await histogram(registry, 'maas_runner_generation_inter_token_latency_seconds', 'count')).toBe(15);
    expect(await histogram(registry, 'maas_runner_generation_queue_duration_seconds', 'count')).toBe(2);
    // Per request, as vLLM reports them: end-to-end latency and time per output token after the first.
    expect(await histogram(registry, 'maas_runner_generation_e2e_request_latency_seconds', 'count')).toBe(2);
    expect(await histogram(registry, 'maas_runner_generation_time_per_output_token_seconds', 'count')).toBe(
      2,
    );
    const e2e = await histogram(registry, 'maas_runner_generation_e2e_request_latency_seconds', 'sum');
    const ttft = await histogram(registry, 'maas_runner_generation_time_to_first_token_seconds', 'sum');
    const tpot = await histogram(registry, 'maas_runner_generation_time_per_output_token_seconds', 'sum');
    expect(e2e).toBeGreaterThan(ttft);
    // Each sequence's e2e covers its first token and (tokens − 1) × its TPOT.
    expect(tpot).toBeGreaterThan(0);
    expect(tpot * 6).toBeLessThanOrEqual(e2e - ttft + 1e-9);
    // Both prefilled in one run; then 9 steps, the first 6 with both sequences.
    expect(await histogram(registry, 'maas_runner_generation_prefill_duration_seconds', 'count')).toBe(1);
    expect(await histogram(registry, 'maas_runner_generation_step_batch_size', 'count')).toBe(9);
    expect(await histogram(registry, 'maas_runner_generation_step_batch_size', 'sum')).toBe(6 * 2 + 3);
    for (const gauge of ['running_sequences', 'waiting_sequences', 'cached_tokens', 'reserved_tokens'])
      expect(await metric(registry, `maas_runner_generation_${gauge}`, labels)).toBe(0);
    await engine.close();
  });
});

describe('finishing', () => {
  it('finishes with stop on a stop token id (emitted) and length at max_new_tokens', async () => {
    const { engine, registry } = startEngine(model);
    const greedy = (await generate(engine, { promptIds: PROMPTS[1]!, maxNewTokens: 10 })).tokens;
    const stopId = greedy[4]!;
    const stopped = await generate(engine, {
      promptIds: PROMPTS[1]!,
      maxNewTokens: 10,
      stopTokenIds: [stopId],
    });
    expect(stopped.result.finishReason).toBe('stop');
    expect(stopped.tokens).toEqual(greedy.slice(0, greedy.indexOf(stopId) + 1));
    expect(await metric(registry, 'maas_runner_generation_finished_total', { reason: 'stop' })).toBe(1);
    expect(await metric(registry, 'maas_runner_generation_finished_total', { reason: 'length' })).toBe(1);
    await engine.close();
  });

  it('a single new token comes from the prefill alone; the sequence never joins the batch', async () => {
    const { engine, registry } = startEngine(model);
    const greedy = (await generate(engine, { promptIds: PROMPTS[2]!, maxNewTokens: 3 })).tokens;
    const one = await generate(engine, { promptIds: PROMPTS[2]!, maxNewTokens: 1 });
    expect(one).toMatchObject({
      tokens: greedy.slice(0, 1),
      result: { finishReason: 'length', generatedTokens: 1 },
    });
    expect(await histogram(registry, 'maas_runner_generation_step_batch_size', 'count')).toBe(2);
    expect(engine.stats()).toEqual({ running: 0, waiting: 0, cachedTokens: 0 });
    await engine.close();
  });

  it('finishes with eos on the end-of-sequence token (not emitted) unless ignore_eos', async () => {
    const greedy = (await generate(startEngine(model).engine, { promptIds: PROMPTS[0]!, maxNewTokens: 12 }))
      .tokens;
    const eos = greedy[3]!;
    const { engine, registry } = startEngine(model, { eosTokenId: eos });
    const ended = await generate(engine, { promptIds: PROMPTS[0]!, maxNewTokens: 12, ignoreEos: false });
    expect(ended.result.finishReason).toBe('eos');
    expect(ended.tokens).toEqual(greedy.slice(0, greedy.indexOf(eos)));
    expect(ended.result.generatedTokens).toBe(ended.tokens.length);
    const ignored = await generate(engine, { promptIds: PROMPTS[0]!, maxNewTokens: 12, ignoreEos: true });
    expect(ignored).toMatchObject({ tokens: greedy, result: { finishReason: 'length' } });
    expect(await metric(registry, 'maas_runner_generation_finished_total', { reason: 'eos' })).toBe(1);
    await engine.close();
  });
});

describe('limits', () => {
  it('refuses what cannot fit the context or the cache budget with INVALID_ARGUMENT', async () => {
    const { engine } = startEngine(model, { maxCachedTokens: 100 });
    const context = model.config.generation!.maxContextLength;
    const tooLong = await refusal(
      generate(engine, { promptIds: new Array<number>(context - 10).fill(5), maxNewTokens: 11 }),
    );
    expect(tooLong.code).toBe(status.INVALID_ARGUMENT);
    expect(tooLong.message).toMatch(/max_new_tokens.*context length 128/);
    const overBudget = await refusal(generate(engine, { promptIds: [5, 6], maxNewTokens: 99 }));
    expect(overBudget.code).toBe(status.INVALID_ARGUMENT);
    expect(overBudget.message).toContain('KV-cache budget 100');
    expect((await refusal(generate(engine, { promptIds: [] }))).message).toContain('prompt_ids');
    // Exactly the context fits.
    const full = await generate(engine, { promptIds: new Array<number>(90).fill(5), maxNewTokens: 10 });
    expect(full.tokens).toHaveLength(10);
    await engine.close();
  });

  it('runs at most maxConcurrentSequences at once and admits the rest as slots free', async () => {
    const { engine, registry } = startEngine(model, { maxConcurrentSequences: 2 });
    let most = 0;
    const observe = () => (most = Math.max(most, engine.stats().running));
    const runs = PROMPTS.map((_, i) => generate(engine, askFor(i), observe));
    expect(engine.stats()).toMatchObject({ running: 0, waiting: 6 });
    const done = await Promise.all(runs);
    expect(most).toBe(2);
    expect(done.every((d, i) => d.tokens.length === askFor(i).maxNewTokens)).toBe(true);
    const steps = await histogram(registry, 'maas_runner_generation_step_batch_size', 'count');
    const rows = await histogram(registry, 'maas_runner_generation_step_batch_size', 'sum');
    expect(rows / steps).toBeGreaterThan(1.5);
    expect(rows / steps).toBeLessThanOrEqual(2);
    expect(await metric(registry, 'maas_runner_generation_reserved_tokens')).toBe(0);
  });

  it('admits against maxCachedTokens by prompt + max_new_tokens', async () => {
    // Each sequence reserves 5 + 25 = 30 tokens: two fit in 70, the third waits.
    const { engine } = startEngine(model, { maxCachedTokens: 70 });
    let most = 0;
    let mostCached = 0;
    const observe = () => {
      most = Math.max(most, engine.stats().running);
      mostCached = Math.max(mostCached, engine.stats().cachedTokens);
    };
    const ask = { promptIds: [1, 2, 3, 4, 5], maxNewTokens: 25 };
    await Promise.all([0, 1, 2, 3].map(() => generate(engine, ask, observe)));
    expect(most).toBe(2);
    expect(mostCached).toBeLessThanOrEqual(70);
    expect(mostCached).toBeGreaterThan(40);
  });

  it('refuses at once with RESOURCE_EXHAUSTED when the waiting queue is full', async () => {
    const { engine, registry } = startEngine(model, { maxConcurrentSequences: 1, maxQueuedSequences: 2 });
    const controller = new AbortController();
    const running = generate(engine, { promptIds: [1], maxNewTokens: 100, signal: controller.signal });
    await until(() => engine.stats().running === 1);
    const queued = [generate(engine, { promptIds: [2] }), generate(engine, { promptIds: [3] })];
    const refused = await refusal(generate(engine, { promptIds: [4] }));
    expect(refused.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(refused.metadata?.get('retry-after-ms')).toHaveLength(1);
    expect(await metric(registry, 'maas_runner_generation_rejected_total')).toBe(1);
    controller.abort();
    expect((await running).result.finishReason).toBe('cancelled');
    expect((await Promise.all(queued)).map((q) => q.tokens.length)).toEqual([16, 16]);
  });

  it('admits a running + queued capacity that arrives at once, before the scheduler took any', async () => {
    // All six arrive in one tick: the two free slots take two at the next step, so the queue of
    // four is not full. Counting every new arrival as queued refused the last two.
    const { engine, registry } = startEngine(model, { maxConcurrentSequences: 2, maxQueuedSequences: 4 });
    const runs = PROMPTS.map((_, i) => generate(engine, askFor(i)));
    const refused = await refusal(generate(engine, { promptIds: [4] }));
    expect(refused.code).toBe(status.RESOURCE_EXHAUSTED);
    const done = await Promise.all(runs);
    expect(done.map((d) => d.tokens.length)).toEqual(PROMPTS.map((_, i) => askFor(i).maxNewTokens));
    expect(await metric(registry, 'maas_runner_generation_rejected_total')).toBe(1);
    await engine.close();
  });
});

describe('cancellation', () => {
  it('frees the slot and the cache: a running sequence leaves at the next step, a waiting one at once', async () => {
    const { engine, registry } = startEngine(model, { maxConcurrentSequences: 1 });
    const long = new AbortController();
    const queued = new AbortController();
    const running = generate(engine, { promptIds: PROMPTS[4]!, maxNewTokens: 110, signal: long.signal });
    await until(() => engine.stats().cachedTokens >= PROMPTS[4]!.length + 3);
    const next = generate(engine, { promptIds: PROMPTS[1]!, maxNewTokens: 5 });
    const dropped = generate(engine, { promptIds: PROMPTS[0]!, maxNewTokens: 5, signal: queued.signal });
    expect(engine.stats()).toMatchObject({ running: 1, waiting: 2 });

    queued.abort();
    expect(engine.stats()).toMatchObject({ running: 1, waiting: 1 });
    expect((await dropped).result).toMatchObject({ finishReason: 'cancelled', generatedTokens: 0 });

    const before = engine.stats().cachedTokens;
    long.abort();
    const cancelled = await running;
    expect(cancelled.result.finishReason).toBe('cancelled');
    expect(cancelled.tokens.length).toBeLessThan(110);
    // The waiting sequence takes the slot, with its own (smaller) cache.
    await until(() => engine.stats().waiting === 0);
    expect(engine.stats().running).toBe(1);
    expect(engine.stats().cachedTokens).toBeLessThan(before);
    expect((await next).tokens).toHaveLength(5);
    expect(engine.stats()).toEqual({ running: 0, waiting: 0, cachedTokens: 0 });
    expect(await metric(registry, 'maas_runner_generation_finished_total', { reason: 'cancelled' })).toBe(2);
    expect(await metric(registry, 'maas_runner_generation_reserved_tokens')).toBe(0);
  });

  it('a signal aborted before arrival ends at once; a throwing token consumer cancels its sequence', async () => {
    const { engine } = startEngine(model);
    const controller = new AbortController();
    controller.abort();
    const early = generate(engine, { promptIds: [1], signal: controller.signal });
    expect(engine.stats()).toEqual({ running: 0, waiting: 0, cachedTokens: 0 });
    expect((await early).result).toMatchObject({ finishReason: 'cancelled', generatedTokens: 0 });
    const result = await engine.generate(
      {
        promptIds: [1, 2],
        maxNewTokens: 20,
        sampling: {},
        stopTokenIds: [],
        ignoreEos: true,
        signal: new AbortController().signal,
      },
      () => {
        throw new Error('client gone');
      },
    );
    expect(result).toMatchObject({ finishReason: 'cancelled', generatedTokens: 1 });
    expect(engine.stats()).toEqual({ running: 0, waiting: 0, cachedTokens: 0 });
  });

  it("hands a step's tokens to their consumers while the next step computes; the first token at once", async () => {
    let computing = false;
    const timed = withRun(model.session, async (feeds, run) => {
      computing = true;
      try {
        return await run(feeds);
      } finally {
        computing = false;
      }
    });
    const { engine } = startEngine(model, {}, timed);
    const duringRun: boolean[] = [];
    const { tokens } = await generate(engine, { promptIds: [464, 1068], maxNewTokens: 12 }, () =>
      duringRun.push(computing),
    );
    expect(tokens).toEqual(
      (await generate(startEngine(model).engine, { promptIds: [464, 1068], maxNewTokens: 12 })).tokens,
    );
    // The first (from the prefill) and the last (when the sequence ends) have no step to overlap.
    expect(duringRun).toEqual([false, ...new Array<boolean>(10).fill(true), false]);
    await engine.close();
  });
});

describe('failures and closing', () => {
  it('an onnxruntime error fails only the sequences of that run; the engine keeps serving', async () => {
    let failNextRun = false;
    const faulty = withRun(model.session, (feeds, run) => {
      if (failNextRun) {
        failNextRun = false;
        return Promise.reject(new Error('injected failure'));
      }
      return run(feeds);
    });
    const { engine, registry } = startEngine(model, {}, faulty);
    const expected = await alone([askFor(0), askFor(2)]);

    // A prompt id outside the vocabulary fails in Gather; prefilled with others, only it fails.
    const bad = refusal(generate(engine, { promptIds: [5, 1_000_000] }));
    const good = [generate(engine, askFor(0)), generate(engine, askFor(2))];
    expect((await bad).code).toBe(status.INTERNAL);
    expect((await Promise.all(good)).map((g) => g.tokens)).toEqual(expected);

    // A failed decode step fails the sequences in it.
    const inStep = [0, 1].map((i) =>
      refusal(
        generate(engine, { promptIds: PROMPTS[i]!, maxNewTokens: 30 }, (_, count) => {
          if (count === 3) failNextRun = true;
        }),
      ),
    );
    for (const error of await Promise.all(inStep)) {
      expect(error.code).toBe(status.INTERNAL);
      expect(error.message).toContain('injected failure');
    }
    expect(engine.stats()).toEqual({ running: 0, waiting: 0, cachedTokens: 0 });
    expect(await metric(registry, 'maas_runner_generation_failed_total')).toBe(3);
    expect((await generate(engine, askFor(0))).tokens).toEqual(expected[0]);
    await engine.close();
  });

  it('close drains running sequences, refuses waiting ones, and force cancels', async () => {
    const { engine } = startEngine(model, { maxConcurrentSequences: 1 });
    const running = generate(engine, { promptIds: [1], maxNewTokens: 30 });
    const waiting = refusal(generate(engine, { promptIds: [2] }));
    await until(() => engine.stats().cachedTokens > 0);
    await engine.close();
    expect((await running).result).toMatchObject({ finishReason: 'length', generatedTokens: 30 });
    expect((await waiting).code).toBe(status.UNAVAILABLE);
    expect((await refusal(generate(engine, { promptIds: [1] }))).code).toBe(status.UNAVAILABLE);

    const forced = startEngine(model).engine;
    const cut = generate(forced, { promptIds: [1], maxNewTokens: 100 });
    await until(() => forced.stats().cachedTokens > 3);
    await forced.close({ force: true });
    expect((await cut).result.finishReason).toBe('cancelled');
  });
});

export type { GenerationEngine };
