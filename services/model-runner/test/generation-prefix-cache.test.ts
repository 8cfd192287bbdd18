/**
 * Prefix caching: a prompt that starts as an earlier one did (a system
 * prompt, a retry) reuses that prefix's keys/values and prefills only the
 * rest. Its tokens are those of full recomputation (and of the engine with
 * the cache off), on the GPT-2 fixture and every decoder family, whole, in a
 * running batch and as a chunked prefill; the index evicts least recently
 * used within its budget; the hit rate is in the metrics and each result.
 */
import { SessionDecoder } from '../src/generation/batch-decoder';
import { WorkerDecoder } from '../src/generation/worker-decoder';
import { PrefixIndex } from '../src/generation/prefix-index';
import { greedyByRecompute } from '../src/generation/reference';
import {
  generate,
  llamaDecoder,
  metric,
  startEngine,
  startEngineOn,
  tinyDecoder,
  tinyModelBytes,
  until,
  type DecoderModel,
} from './generation-harness';
import type { GenerationEngine } from '../src/generation/index';
import type { LlamaOptions } from '@maas/models';

/** 40 tokens: two whole blocks of 16 and a part of a third. */
const SYSTEM = Array.from({ length: 40 }, (_, i) => 20 + ((i * 53) % 1500));
const ask = (suffix: number[], maxNewTokens = 8) => ({ promptIds: [...SYSTEM, ...suffix], maxNewTokens });
const SUFFIX_A = [301, 302, 303, 304, 305, 306, 307, 308, 309];
const SUFFIX_B = [411, 412, 413];

const counters = async (engine: { registry: Parameters<typeof metric>[0] }) => ({
  queried: await metric(engine.registry, 'maas_runner_generation_prefix_cache_queried_tokens_total'),
  hit: await metric(engine.registry, 'maas_runner_generation_prefix_cache_hit_tokens_total'),
  held: await metric(engine.registry, 'maas_runner_generation_prefix_cache_tokens'),
});

describe('PrefixIndex', () => {
  const seq = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);

  it('finds the longest stored prefix at a block boundary, extended while the tokens agree', () => {
    const index = new PrefixIndex(4, 100);
    expect(index.lookup(seq(10))).toBeUndefined();
    expect(index.insert(seq(10))).toEqual({ entry: 0, count: 10, evicted: [] });
    expect(index.tokens).toBe(10);
    // Shares 6 tokens: found at the boundary after 4, extended to 6.
    expect(index.lookup([...seq(6), 99, 98, 97])).toEqual({ entry: 0, count: 6 });
    // Leaves the last token to run, even for the same prompt.
    expect(index.lookup(seq(10))).toEqual({ entry: 0, count: 9 });
    expect(index.lookup(seq(12))).toEqual({ entry: 0, count: 10 });
    // Less than a whole block shared: nothing.
    expect(index.lookup([0, 1, 2, 50, 4, 5])).toBeUndefined();
    expect(index.lookup(seq(8, 1))).toBeUndefined();
  });

  it('stores a prompt of a whole block or more unless an entry holds all of it; a longer one is a new entry', () => {
    const index = new PrefixIndex(4, 100);
    index.insert(seq(9));
    expect(index.insert(seq(9))).toBeUndefined();
    expect(index.insert(seq(6))).toBeUndefined();
    expect(index.insert(seq(3, 50))).toBeUndefined();
    expect(index.insert(seq(12))).toEqual({ entry: 1, count: 12, evicted: [] });
    expect(index.lookup(seq(13))).toEqual({ entry: 1, count: 12 });
  });

  it('evicts least recently used entries to stay within its budget', () => {
    const index = new PrefixIndex(4, 16);
    index.insert(seq(8, 0));
    index.insert(seq(8, 100));
    expect(index.lookup(seq(9, 0))).toEqual({ entry: 0, count: 8 }); // 0 is now the most recent
    expect(index.insert(seq(8, 200))).toEqual({ entry: 2, count: 8, evicted: [1] });
    expect(index.lookup(seq(9, 100))).toBeUndefined();
    expect(index.lookup(seq(9, 0))).toEqual({ entry: 0, count: 8 });
    expect(index.tokens).toBe(16);
    // Larger than the whole budget: not stored.
    expect(index.insert(seq(20, 300))).toBeUndefined();
    index.clear();
    expect(index.tokens).toBe(0);
    expect(index.lookup(seq(9, 0))).toBeUndefined();
  });

  it('is off when its budget holds no whole block', () => {
    const index = new PrefixIndex(16, 0);
    expect(index.enabled).toBe(false);
    expect(index.insert(seq(40))).toBeUndefined();
    expect(index.lookup(seq(40))).toBeUndefined();
  });
});

describe('prefix caching in the engine', () => {
  let model: DecoderModel;
  beforeAll(async () => {
    model = await tinyDecoder();
  });
  afterAll(async () => {
    await model?.session.release();
  });

  it('a second prompt with the same system prompt prefills only its own part; tokens unchanged', async () => {
    const g = model.config.generation!;
    const off = startEngine(model, { prefixCacheTokens: 0 });
    const aloneA = (await generate(off.engine, ask(SUFFIX_A))).tokens;
    const aloneB = await generate(off.engine, ask(SUFFIX_B));
    expect((await counters(off)).queried).toBe(0);
    await off.engine.close();
    expect(aloneB.result.cachedPromptTokens).toBe(0);
    expect(aloneB.tokens).toEqual(await greedyByRecompute(model.session, g, ask(SUFFIX_B).promptIds, 8));

    const on = startEngine(model);
    const a = await generate(on.engine, ask(SUFFIX_A));
    expect(a.tokens).toEqual(aloneA);
    expect(a.result.cachedPromptTokens).toBe(0);
    // A's 49 prompt tokens are kept when it joins, and its turn (49 + the 7 tokens fed back) when it ends.
    expect(await counters(on)).toEqual({ queried: 49, hit: 0, held: 49 + 56 });
    const b = await generate(on.engine, ask(SUFFIX_B));
    expect(b.tokens).toEqual(aloneB.tokens);
    // The whole system prompt (40 tokens: past the last shared block boundary, 32).
    expect(b.result.cachedPromptTokens).toBe(40);
    // The same prompt again: all of it but its last token.
    const again = await generate(on.engine, ask(SUFFIX_A));
    expect(again.tokens).toEqual(aloneA);
    expect(again.result.cachedPromptTokens).toBe(48);
    // Kept: each prompt when it joined (A 49, B 43 tokens) and each finished turn, prompt and
    // generated tokens with keys/values (A 49 + 7, B 43 + 7); A again added nothing new.
    expect(await counters(on)).toEqual({ queried: 49 + 43 + 49, hit: 40 + 48, held: 49 + 56 + 43 + 50 });
    expect(on.engine.stats()).toEqual({ running: 0, waiting: 0, cachedTokens: 0 });
    await on.engine.close();
  });

  it('reuses a prefix in a running batch, for a whole rest and for a chunked one', async () => {
    const off = startEngine(model, { prefixCacheTokens: 0 });
    const longSuffix = Array.from({ length: 50 }, (_, i) => 600 + i);
    const wantRunning = (await generate(off.engine, { promptIds: [464, 1068], maxNewTokens: 30 })).tokens;
    const wantB = (await generate(off.engine, ask(SUFFIX_B))).tokens;
    const wantLong = (await generate(off.engine, ask(longSuffix))).tokens;
    await off.engine.close();

    const on = startEngine(model, { prefillChunkTokens: 16 });
    await generate(on.engine, ask(SUFFIX_A, 1));
    const later: Promise<{ tokens: number[]; result: { cachedPromptTokens: number } }>[] = [];
    const running = generate(on.engine, { promptIds: [464, 1068], maxNewTokens: 30 }, (_, n) => {
      // Arrive while it decodes: B's rest (3 tokens) fits a turn; the long one's (50) takes chunks.
      if (n === 2) later.push(generate(on.engine, ask(SUFFIX_B)));
      if (n === 4) later.push(generate(on.engine, ask(longSuffix)));
    });
    expect((await running).tokens).toEqual(wantRunning);
    await until(() => later.length === 2);
    const [b, long] = await Promise.all(later);
    expect(b!.tokens).toEqual(wantB);
    expect(b!.result.cachedPromptTokens).toBe(40);
    expect(long!.tokens).toEqual(wantLong);
    expect(long!.result.cachedPromptTokens).toBe(40);
    // The long one's 50-token rest: chunks of 16.
    expect(await metric(on.registry, 'maas_runner_generation_prefill_chunks_total')).toBe(4);
    expect(on.engine.stats()).toEqual({ running: 0, waiting: 0, cachedTokens: 0 });
    await on.engine.close();
  });

  it('evicts the least recently used prefix within prefixCacheTokens; evicted, a prompt is prefilled whole', async () => {
    // One token each: only the prompts are kept (a sequence ending at its first token has no turn).
    const on = startEngine(model, { prefixCacheTokens: 80 });
    const other = Array.from({ length: 40 }, (_, i) => 1600 + i);
    const a = await generate(on.engine, ask(SUFFIX_A, 1));
    expect((await counters(on)).held).toBe(49);
    // 40 more tokens do not fit beside A's 49: A is evicted.
    await generate(on.engine, { promptIds: other, maxNewTokens: 1 });
    expect((await counters(on)).held).toBe(40);
    const again = await generate(on.engine, ask(SUFFIX_A, 1));
    expect(again.result.cachedPromptTokens).toBe(0);
    expect(again.tokens).toEqual(a.tokens);
    const otherAgain = await generate(on.engine, { promptIds: [...other, 5], maxNewTokens: 1 });
    expect(otherAgain.result.cachedPromptTokens).toBe(0); // evicted in turn by A's return
    await on.engine.close();
  });

  it("keeps, reuses and evicts entries the same in the runner's worker-thread decoder", async () => {
    const g = { ...model.config.generation!, prefixCacheTokens: 80 };
    const worker = await WorkerDecoder.create(tinyModelBytes(), g, { intraOpNumThreads: 1 }, model.name);
    const on = startEngineOn(worker, model, { prefixCacheTokens: 80 });
    const off = startEngine(model, { prefixCacheTokens: 0 });
    const other = Array.from({ length: 40 }, (_, i) => 1600 + i);
    const asks = [ask(SUFFIX_A), ask(SUFFIX_B), { promptIds: other, maxNewTokens: 4 }, ask(SUFFIX_B)];
    const cached: number[] = [];
    for (const a of asks) {
      const got = await generate(on.engine, a);
      cached.push(got.result.cachedPromptTokens);
      expect(got.tokens).toEqual((await generate(off.engine, a)).tokens);
    }
    // B reuses A's system prompt; 80 tokens hold one kept prompt or turn at a time, so each evicts
    // the one before and B again (after the other prompt) is prefilled whole.
    expect(cached).toEqual([0, 40, 0, 0]);
    await on.engine.close();
    await off.engine.close();
    await worker.release();
  });

  it("a conversation's next turn reuses the last turn's prompt and answer", async () => {
    const off = startEngine(model, { prefixCacheTokens: 0 });
    const on = startEngine(model);
    const first = await generate(on.engine, ask(SUFFIX_A));
    expect(first.tokens).toEqual((await generate(off.engine, ask(SUFFIX_A))).tokens);
    // The next turn: the conversation so far and a new message.
    const next = { promptIds: [...ask(SUFFIX_A).promptIds, ...first.tokens, 77, 78, 79], maxNewTokens: 8 };
    const second = await generate(on.engine, next);
    // The prompt (49) and the 7 generated tokens fed back (the 8th never was) came from the cache.
    expect(second.result.cachedPromptTokens).toBe(49 + 7);
    expect(second.tokens).toEqual((await generate(off.engine, next)).tokens);
    // A cancelled turn is not kept.
    const controller = new AbortController();
    const cancelled = await generate(
      on.engine,
      { ...ask([501, 502, 503]), signal: controller.signal },
      (_, n) => {
        if (n === 3) controller.abort();
      },
    );
    expect(cancelled.result.finishReason).toBe('cancelled');
    const after = await generate(on.engine, {
      promptIds: [...ask([501, 502, 503]).promptIds, ...cancelled.tokens, 9],
    });
    expect(after.result.cachedPromptTokens).toBe(43); // its prompt, kept when it joined; not its tokens
    await Promise.all([on.engine.close(), off.engine.close()]);
  });

  it('a prefix hit cancelled before its prefill, or failing in it, leaves nothing held', async () => {
    const on = startEngine(model);
    await generate(on.engine, ask(SUFFIX_A, 1));
    const controller = new AbortController();
    controller.abort();
    const cancelled = await generate(on.engine, { ...ask(SUFFIX_B), signal: controller.signal });
    expect(cancelled.result).toMatchObject({ finishReason: 'cancelled', generatedTokens: 0 });
    // Aborted while waiting for its turn.
    const late = new AbortController();
    const both = Promise.all([
      generate(on.engine, { promptIds: [7, 8], maxNewTokens: 3 }),
      generate(on.engine, { ...ask(SUFFIX_B), signal: late.signal }),
    ]);
    late.abort();
    const [, second] = await both;
    expect(second.result.finishReason).toBe('cancelled');
    expect(on.engine.stats()).toEqual({ running: 0, waiting: 0, cachedTokens: 0 });
    const b = await generate(on.engine, ask(SUFFIX_B));
    expect(b.result.cachedPromptTokens).toBe(40);
    await on.engine.close();
  });

  it('works the same through a decoder whose entry is gone: the sequence fails alone, others go on', async () => {
    // A decoder that lost its entries (as after a clear) refuses the hit by name; the engine fails that sequence only.
    const decoder = new SessionDecoder(model.session, model.config.generation!, model.name);
    const engine = startEngineOn(decoder, model);
    await generate(engine.engine, ask(SUFFIX_A, 1));
    // A later sequence's turn: the one that kept A's prefix has finished.
    await generate(engine.engine, { promptIds: [5, 6], maxNewTokens: 1 });
    await decoder.dropPrefixes([0]);
    const other = generate(engine.engine, { promptIds: [7, 8], maxNewTokens: 3 });
    await expect(generate(engine.engine, ask(SUFFIX_B))).rejects.toThrow(/no prefix-cache entry 0/);
    expect((await other).tokens).toHaveLength(3);
    expect(engine.engine.stats()).toEqual({ running: 0, waiting: 0, cachedTokens: 0 });
    await engine.engine.close();
  });
});

const FAMILIES: [string, LlamaOptions][] = [
  ['llama-gqa', { kvHeads: 2 }],
  ['no-position-ids', { positionIds: false, kvHeads: 2, seed: 9 }],
  ['fp16-cache', { kvType: 'float16', kvHeads: 2, seed: 13 }],
  ['merged-decoder', { merged: true, kvHeads: 2, seed: 17 }],
];

describe.each(FAMILIES)('prefix caching on %s', (name, options) => {
  it('a prompt reusing a cached prefix generates what full recomputation gives', async () => {
    const family = await llamaDecoder(name, options);
    const g = family.config.generation!;
    const want = await greedyByRecompute(family.session, g, ask(SUFFIX_B).promptIds, 8);
    const check = async (engine: GenerationEngine) => {
      await generate(engine, ask(SUFFIX_A, 1));
      const b = await generate(engine, ask(SUFFIX_B));
      expect(b.result.cachedPromptTokens).toBe(40);
      expect(b.tokens).toEqual(want);
      await engine.close();
    };
    // As the runner opens it (new keys/values only) and as exported (the whole present).
    await check(startEngine(family).engine);
    await check(startEngine(family, {}, family.unedited).engine);
    await family.session.release();
    await family.unedited.release();
  });
});
