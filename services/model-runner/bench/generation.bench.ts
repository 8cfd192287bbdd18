/**
 * npm run bench:generation — KV-cache generation with continuous batching.
 *
 * Model: austen-gpt from the default repository when it is there, else the
 * tiny fixture decoder (random weights). Session as the runner creates it
 * (session.ts).
 * Prints, side by side in one run:
 *  - recompute baseline: greedy decoding that re-runs the whole sequence for
 *    every token (no cache), ms/token;
 *  - the engine in-process, 1 stream and 16 concurrent streams: tokens/s
 *    (wall clock from submission to the last token, prefill included),
 *    mean decode step and batch size, with its decoder in a worker thread as
 *    the runner runs it (and, for comparison, in this thread);
 *  - the same through gRPC (the runner in this process, the clients in a
 *    child process);
 *  - the batch cache's copies: bytes of cached keys/values moved per
 *    generated token (re-layouts, rows moved on leaving) beside the new
 *    keys/values written, and 16 streams with the graph unedited (the whole
 *    `present` returned every step) for comparison;
 *  - chunked prefill: 8 streams decoding while 200-token prompts arrive,
 *    inter-token latency and the long prompts' TTFT, chunked and whole;
 *  - prefix caching: TTFT of prompts sharing a 192-token system prompt, one
 *    at a time and while 8 streams decode, with the cache on and off;
 *  - the targets: KV cache vs recompute per token, 16 streams / 1 stream
 *    total tokens/s (≥ 5×), a batch-16 decode step / a batch-1 step (≤ 3×),
 *    gRPC / in-process (≥ 85%), event-loop delay p99 while 16 streams decode
 *    (≤ 5 ms).
 * Env: BENCH_NEW_TOKENS (new tokens per stream, a list, default 64,200),
 * BENCH_THREADS (intra-op threads of the session, a list, default 1,2: the
 * runner's default is 1), BENCH_REPEATS (rounds, default 3: the engine and
 * gRPC points are the median of interleaved rounds, the side comparisons best of),
 * BENCH_MODEL=fixture to force the fixture; BENCH_CHUNKED_ONLY=1 (chunked
 * prefill and prefix caching only), BENCH_PREFIX_ONLY=1 (prefix caching
 * only), BENCH_SCHEDULING=0 (neither), BENCH_PREFILL_CHUNK (the chunked
 * prefill phase's budget), BENCH_SERVING=0 (skips serving.ts's phase: TTFT,
 * TPOT, ITL, E2E, throughput and goodput at concurrency 1, 4, 16 and a
 * Poisson rate, as vllm bench serve reports them).
 */
import { execFile } from 'node:child_process';
import { loadavg } from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { Registry } from 'prom-client';
import { buildTinyGpt2, decoderDefaults, makeTempDir } from '@maas/models';
import {
  createClient,
  createLogger,
  defaultRepositoryPath,
  readModelConfig,
  type ModelConfig,
} from '@maas/shared';
import {
  GenerateRequest,
  GenerationServiceClient,
  type GenerateResponse,
} from '@maas/shared/gen/maas/runner/v1/generation';
import { loadRunnerConfig, startModelRunner } from '../src/index.js';
import { createSession, type SessionOpener } from '../src/session.js';
import {
  createGenerationMetrics,
  GenerationEngine,
  type BatchDecoder,
  openDecoderSession,
  SessionDecoder,
  WorkerDecoder,
  SequenceRandom,
} from '../src/generation/index.js';
import { greedyByRecompute, greedyRequest } from '../src/generation/reference.js';
import { percentiles, servingPhase } from './serving.js';
import { cacheTensorNames, decoderForEngine, exposeNewKeyValues } from '../src/generation/new-kv-outputs.js';

const list = (value: string) => value.split(',').map(Number);
const LENGTHS = list(process.env.BENCH_NEW_TOKENS ?? '64,200');
const REPEATS = Number(process.env.BENCH_REPEATS ?? 3);
const THREADS = list(process.env.BENCH_THREADS ?? '1,2');
const STREAMS = [1, 16];
const logger = createLogger({ service: 'generation-bench', level: 'warn' });

interface BenchModel {
  name: string;
  /** A repository holding only this model. */
  repository: string;
  modelPath: string;
  config: ModelConfig;
}

function benchModel(): BenchModel {
  const austen = join(defaultRepositoryPath(), 'austen-gpt');
  const repository = makeTempDir('maas-generation-bench-');
  if (process.env.BENCH_MODEL !== 'fixture' && existsSync(join(austen, '1', 'model.onnx'))) {
    symlinkSync(austen, join(repository, 'austen-gpt'));
    const config = readModelConfig(austen, 'austen-gpt');
    return { name: 'austen-gpt', repository, modelPath: join(austen, '1', 'model.onnx'), config };
  }
  // The fixture decoder, wider than the tests' so a step costs something.
  const d = decoderDefaults({ vocab: 4096, hidden: 128, heads: 4, layers: 4, maxPositions: 256, seed: 5 });
  const dir = join(repository, 'tiny-gpt2');
  mkdirSync(join(dir, '1'), { recursive: true });
  writeFileSync(join(dir, '1', 'model.onnx'), buildTinyGpt2(d));
  const raw = {
    task: 'generation',
    inputs: ['input_ids', 'attention_mask', 'position_ids'].map((name) => ({
      name,
      datatype: 'INT64',
      dims: [-1],
    })),
    outputs: [{ name: 'logits', datatype: 'FP32', dims: [-1, d.vocab] }],
    generation: {
      numLayers: d.layers,
      numHeads: d.heads,
      headDim: d.hidden / d.heads,
      vocabSize: d.vocab,
      maxContextLength: d.maxPositions,
      maxConcurrentSequences: 16,
      maxCachedTokens: 16 * d.maxPositions,
    },
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(raw));
  return {
    name: 'tiny-gpt2',
    repository,
    modelPath: join(dir, '1', 'model.onnx'),
    config: readModelConfig(dir, 'tiny-gpt2'),
  };
}

/** Prompts of 16–31 pseudo-random ids: speed does not depend on the text. */
function prompts(count: number, vocab: number): number[][] {
  const tokens = tokenSource(2024, vocab);
  return Array.from({ length: count }, (_, i) => tokens(16 + ((i * 7) % 16)));
}

interface Phase {
  tokensPerSecond: number;
  padding?: number;
  repacks?: number;
  repackMs?: number;
  /** Bytes of cached keys/values moved, and new ones written, per generated token. */
  copiedPerToken?: number;
  writtenPerToken?: number;
  /** Tokens per second of this process's CPU time: what a shared, busy machine distorts least. */
  tokensPerCpuSecond?: number;
  stepMs?: number;
  batch?: number;
  /** Event-loop delay while the engine ran: p99 and max, ms (onnxruntime-node runs sessions on the JS thread). */
  loopP99Ms?: number;
  loopMaxMs?: number;
}

const histogramCount = async (registry: Registry, name: string) => {
  const values = ((await registry.getMetricsAsJSON()).find((m) => m.name === name)?.values ?? []) as {
    value: number;
    metricName?: string;
  }[];
  return values.filter((v) => v.metricName === `${name}_count`).reduce((s, v) => s + v.value, 0);
};

const histogramMean = async (registry: Registry, name: string) => {
  const values = ((await registry.getMetricsAsJSON()).find((m) => m.name === name)?.values ?? []) as {
    value: number;
    metricName?: string;
  }[];
  const part = (p: string) =>
    values.filter((v) => v.metricName === `${name}_${p}`).reduce((s, v) => s + v.value, 0);
  return part('sum') / Math.max(1, part('count'));
};

/** A counter's value, all label sets together. */
const counterValue = async (registry: Registry, name: string) =>
  (
    ((await registry.getMetricsAsJSON()).find((m) => m.name === name)?.values ?? []) as { value: number }[]
  ).reduce((sum, v) => sum + v.value, 0);

/** An engine over `decoder` for one phase, its generation config overridden, with metrics of its own. */
function benchEngine(
  decoder: BatchDecoder,
  model: BenchModel,
  overrides: Partial<NonNullable<ModelConfig['generation']>> = {},
) {
  const registry = new Registry();
  const g = { ...model.config.generation!, ...overrides };
  const engine = new GenerationEngine({
    modelName: model.name,
    modelVersion: '1',
    decoder,
    config: { ...model.config, generation: g },
    metrics: createGenerationMetrics(registry),
    logger,
  });
  return { engine, registry, g };
}

/** Pseudo-random ids below `vocab` (10 and up), seeded: speed does not depend on the text. */
function tokenSource(seed: number, vocab: number): (n: number) => number[] {
  const random = new SequenceRandom(seed);
  return (n) => Array.from({ length: n }, () => 10 + Math.floor(random.next() * (vocab - 10)));
}

async function engineRun(
  decoder: BatchDecoder,
  model: BenchModel,
  streams: number,
  newTokens: number | ((stream: number) => number),
  arrivalGapMs = 0,
): Promise<Phase> {
  const { engine, registry } = benchEngine(decoder, model);
  const asks = prompts(streams, model.config.generation!.vocabSize);
  const loop = monitorEventLoopDelay({ resolution: 1 });
  loop.enable();
  const cpu = process.cpuUsage();
  const started = performance.now();
  const cacheBefore = engine.cacheStats();
  const results = await Promise.all(
    asks.map(async (promptIds, i) => {
      if (arrivalGapMs > 0) await new Promise((r) => setTimeout(r, i * arrivalGapMs));
      return engine.generate(
        greedyRequest(promptIds, typeof newTokens === 'number' ? newTokens : newTokens(i)),
        () => undefined,
      );
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  const used = process.cpuUsage(cpu);
  loop.disable();
  const cacheAfter = engine.cacheStats();
  await engine.close();
  const tokens = results.reduce((n, r) => n + r.generatedTokens, 0);
  return {
    copiedPerToken: (cacheAfter.copiedBytes - cacheBefore.copiedBytes) / tokens,
    writtenPerToken: (cacheAfter.writtenBytes - cacheBefore.writtenBytes) / tokens,
    tokensPerSecond: tokens / seconds,
    tokensPerCpuSecond: tokens / ((used.user + used.system) / 1e6),
    loopP99Ms: loop.percentile(99) / 1e6,
    loopMaxMs: loop.max / 1e6,
    stepMs: 1000 * (await histogramMean(registry, 'maas_runner_generation_step_duration_seconds')),
    batch: await histogramMean(registry, 'maas_runner_generation_step_batch_size'),
    padding: await histogramMean(registry, 'maas_runner_generation_step_padding_ratio'),
    repacks: await histogramCount(registry, 'maas_runner_generation_repack_duration_seconds'),
    repackMs: 1000 * (await histogramMean(registry, 'maas_runner_generation_repack_duration_seconds')),
  };
}

interface LongPromptPhase {
  itlP50Ms: number;
  itlP99Ms: number;
  itlMaxMs: number;
  /** The long prompts' mean time to first token, ms (0 when none came). */
  longTtftMs: number;
  chunks: number;
}

const LONG_PROMPT_TOKENS = 200;
const LONG_PROMPTS = 3;
/** Prefix caching's phases: prompts of LONG_PROMPT_TOKENS whose first this many are a shared system prompt. */
const SYSTEM_PROMPT_TOKENS = 192;

/**
 * Chunked prefill as a running batch meets it: 8 streams decode (120 new
 * tokens each) and, with `longPrompts`, 200-token prompts arrive while they
 * do (after the first stream's 10th, 40th and 70th token). Inter-token
 * latency of the 8 running streams, and the long prompts' time to first
 * token, with the model's prefill budget per turn set to `chunkTokens`.
 */
async function longPromptRun(
  decoder: BatchDecoder,
  model: BenchModel,
  chunkTokens: number,
  longPrompts: boolean,
  /** The long prompts share their first SYSTEM_PROMPT_TOKENS (sent once before, as a system prompt in use is). */
  shared?: { prefixCacheTokens: number },
): Promise<LongPromptPhase> {
  const { engine, registry, g } = benchEngine(decoder, model, {
    prefillChunkTokens: chunkTokens,
    ...(shared ? { prefixCacheTokens: shared.prefixCacheTokens } : {}),
  });
  const ask = (promptIds: number[], maxNewTokens: number, onToken: () => void) =>
    engine.generate(greedyRequest(promptIds, maxNewTokens), onToken);
  const tokens = tokenSource(7, g.vocabSize);
  const system = tokens(SYSTEM_PROMPT_TOKENS);
  const longPrompt = () =>
    shared ? [...system, ...tokens(LONG_PROMPT_TOKENS - SYSTEM_PROMPT_TOKENS)] : tokens(LONG_PROMPT_TOKENS);
  if (shared) await ask(longPrompt(), 1, () => undefined);
  const gaps: number[] = [];
  const ttfts: number[] = [];
  const longRuns: Promise<unknown>[] = [];
  await Promise.all(
    prompts(8, g.vocabSize).map((promptIds, stream) => {
      let last = -1;
      let count = 0;
      return ask(promptIds, 120, () => {
        const now = performance.now();
        if (last >= 0) gaps.push(now - last);
        last = now;
        count++;
        if (longPrompts && stream === 0 && (count === 10 || count === 40 || count === 70)) {
          const sent = performance.now();
          let first = true;
          longRuns.push(
            ask(longPrompt(), 8, () => {
              if (first) ttfts.push(performance.now() - sent);
              first = false;
            }),
          );
        }
      });
    }),
  );
  await Promise.all(longRuns);
  await engine.close();
  const [itlP50Ms, itlP99Ms] = percentiles(gaps);
  return {
    itlP50Ms,
    itlP99Ms,
    itlMaxMs: Math.max(...gaps),
    longTtftMs: ttfts.length ? ttfts.reduce((a, b) => a + b, 0) / ttfts.length : 0,
    chunks: await counterValue(registry, 'maas_runner_generation_prefill_chunks_total'),
  };
}

/** Interleaved rounds of the three ways; the median of each figure. */
async function chunkedPrefill(decoder: BatchDecoder, model: BenchModel, summary: string[], threads: number) {
  const chunk = Number(process.env.BENCH_PREFILL_CHUNK ?? model.config.generation!.prefillChunkTokens);
  const ways = {
    'no long prompts': () => longPromptRun(decoder, model, chunk, false),
    [`long prompts, prefilled whole`]: () => longPromptRun(decoder, model, 1_000_000, true),
    [`long prompts, chunked by ${chunk}`]: () => longPromptRun(decoder, model, chunk, true),
  };
  const rounds = new Map<string, LongPromptPhase[]>();
  for (let round = 0; round < REPEATS; round++) {
    for (const [name, run] of Object.entries(ways))
      rounds.set(name, [...(rounds.get(name) ?? []), await run()]);
  }
  const median = (phases: LongPromptPhase[], key: keyof LongPromptPhase) => {
    const sorted = phases.map((p) => p[key]).sort((a, b) => a - b);
    return sorted[Math.floor(sorted.length / 2)]!;
  };
  const figures = new Map<string, LongPromptPhase>();
  for (const [name, phases] of rounds) {
    const m = {
      itlP50Ms: median(phases, 'itlP50Ms'),
      itlP99Ms: median(phases, 'itlP99Ms'),
      itlMaxMs: median(phases, 'itlMaxMs'),
      longTtftMs: median(phases, 'longTtftMs'),
      chunks: median(phases, 'chunks'),
    };
    figures.set(name, m);
    console.log(
      `  8 streams decoding, ${name}: inter-token latency p50 ${f(m.itlP50Ms, 2)} ms, p99 ${f(m.itlP99Ms, 2)} ms, max ${f(m.itlMaxMs, 2)} ms` +
        (m.longTtftMs
          ? `; ${LONG_PROMPTS} prompts of ${LONG_PROMPT_TOKENS} tokens: TTFT ${f(m.longTtftMs)} ms, ${m.chunks} chunks`
          : ''),
    );
  }
  const [quiet, whole, chunked] = [...figures.values()];
  summary.push(
    `  threads ${threads}: ITL p99 of 8 running streams while ${LONG_PROMPT_TOKENS}-token prompts arrive: ` +
      `chunked ${f(chunked!.itlP99Ms, 2)} ms vs whole ${f(whole!.itlP99Ms, 2)} ms (${f(whole!.itlP99Ms / chunked!.itlP99Ms, 2)}× lower), ` +
      `no long prompts ${f(quiet!.itlP99Ms, 2)} ms; the long prompts' TTFT chunked ${f(chunked!.longTtftMs)} ms vs whole ${f(whole!.longTtftMs)} ms (median of ${REPEATS} interleaved rounds)`,
  );
}

interface PrefixPhase {
  /** Median time to first token of the requests after the first, ms. */
  ttftMs: number;
  /** Prompt tokens found in the prefix cache / prompt tokens looked up. */
  hitRate: number;
}

/**
 * Requests one at a time, each a shared SYSTEM_PROMPT_TOKENS-token system
 * prompt and 8 tokens of its own, 4 new tokens: the time to first token of
 * all but the first (which stores the system prompt) with prefix caching on
 * and off (prefixCacheTokens 0).
 */
async function sharedPrefixRun(
  decoder: BatchDecoder,
  model: BenchModel,
  prefixCacheTokens: number,
): Promise<PrefixPhase> {
  const { engine, registry, g } = benchEngine(decoder, model, { prefixCacheTokens });
  const tokens = tokenSource(11, g.vocabSize);
  const system = tokens(SYSTEM_PROMPT_TOKENS);
  const ttfts: number[] = [];
  for (let i = 0; i < 9; i++) {
    const sent = performance.now();
    let first = -1;
    await engine.generate(greedyRequest([...system, ...tokens(8)], 4), () => {
      if (first < 0) first = performance.now() - sent;
    });
    if (i > 0) ttfts.push(first);
  }
  await engine.close();
  const queried = await counterValue(registry, 'maas_runner_generation_prefix_cache_queried_tokens_total');
  const hit = await counterValue(registry, 'maas_runner_generation_prefix_cache_hit_tokens_total');
  ttfts.sort((a, b) => a - b);
  return { ttftMs: ttfts[Math.floor(ttfts.length / 2)]!, hitRate: queried ? hit / queried : 0 };
}

/**
 * A conversation: a 64-token first prompt, then 5 turns, each prompt the one
 * before, its 16-token answer and an 8-token message; the median time to
 * first token of turns 2–6, with prefix caching on and off.
 */
async function conversationRun(
  decoder: BatchDecoder,
  model: BenchModel,
  prefixCacheTokens: number,
): Promise<number> {
  const { engine, g } = benchEngine(decoder, model, { prefixCacheTokens });
  const tokens = tokenSource(13, g.vocabSize);
  let prompt = tokens(64);
  const ttfts: number[] = [];
  for (let turn = 0; turn < 6; turn++) {
    const sent = performance.now();
    let first = -1;
    const answer: number[] = [];
    await engine.generate(greedyRequest(prompt, 16), (ids) => {
      if (first < 0) first = performance.now() - sent;
      answer.push(...ids);
    });
    if (turn > 0) ttfts.push(first);
    prompt = [...prompt, ...answer, ...tokens(8)];
  }
  await engine.close();
  return ttfts.sort((a, b) => a - b)[Math.floor(ttfts.length / 2)]!;
}

/** Prefix caching: TTFT with a shared system prompt, alone and while 8 streams decode; interleaved rounds, medians. */
async function prefixCaching(decoder: BatchDecoder, model: BenchModel, summary: string[], threads: number) {
  const budget = model.config.generation!.prefixCacheTokens || 2048;
  const chunk = model.config.generation!.prefillChunkTokens;
  const alone = { off: [] as PrefixPhase[], on: [] as PrefixPhase[] };
  const busy = { off: [] as LongPromptPhase[], on: [] as LongPromptPhase[] };
  const turns = { off: [] as number[], on: [] as number[] };
  for (let round = 0; round < REPEATS; round++) {
    turns.off.push(await conversationRun(decoder, model, 0));
    turns.on.push(await conversationRun(decoder, model, budget));
    alone.off.push(await sharedPrefixRun(decoder, model, 0));
    alone.on.push(await sharedPrefixRun(decoder, model, budget));
    busy.off.push(await longPromptRun(decoder, model, chunk, true, { prefixCacheTokens: 0 }));
    busy.on.push(await longPromptRun(decoder, model, chunk, true, { prefixCacheTokens: budget }));
  }
  const median = (values: number[]) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
  const ttft = { off: median(alone.off.map((p) => p.ttftMs)), on: median(alone.on.map((p) => p.ttftMs)) };
  const hitRate = median(alone.on.map((p) => p.hitRate));
  const longTtft = {
    off: median(busy.off.map((p) => p.longTtftMs)),
    on: median(busy.on.map((p) => p.longTtftMs)),
  };
  const itl = { off: median(busy.off.map((p) => p.itlP99Ms)), on: median(busy.on.map((p) => p.itlP99Ms)) };
  const turn = { off: median(turns.off), on: median(turns.on) };
  console.log(
    `  prefix caching, a conversation's turns 2–6 (each prompt the last, its 16-token answer and 8 new tokens; 88–208 tokens): TTFT ${f(turn.on, 2)} ms with, ${f(turn.off, 2)} ms without`,
  );
  console.log(
    `  prefix caching, one request at a time (${SYSTEM_PROMPT_TOKENS}-token system prompt + 8 tokens): TTFT ${f(ttft.on, 2)} ms with, ${f(ttft.off, 2)} ms without; hit rate ${f(100 * hitRate)}% of prompt tokens`,
  );
  console.log(
    `  prefix caching, ${LONG_PROMPTS} such ${LONG_PROMPT_TOKENS}-token prompts arriving while 8 streams decode: TTFT ${f(longTtft.on, 2)} ms with, ${f(longTtft.off, 2)} ms without; ` +
      `running streams' ITL p99 ${f(itl.on, 2)} ms with, ${f(itl.off, 2)} ms without`,
  );
  summary.push(
    `  threads ${threads}: prefix caching, TTFT of a prompt sharing a ${SYSTEM_PROMPT_TOKENS}-token system prompt: ${f(ttft.off / ttft.on, 2)}× lower alone ` +
      `(${f(ttft.on, 2)} vs ${f(ttft.off, 2)} ms, hit rate ${f(100 * hitRate)}%), ${f(longTtft.off / longTtft.on, 2)}× lower while 8 streams decode ` +
      `(${f(longTtft.on, 2)} vs ${f(longTtft.off, 2)} ms; their ITL p99 ${f(itl.on, 2)} vs ${f(itl.off, 2)} ms); ` +
      `a conversation's next turn ${f(turn.off / turn.on, 2)}× lower (${f(turn.on, 2)} vs ${f(turn.off, 2)} ms) (median of ${REPEATS} interleaved rounds)`,
  );
}

/**
 * One decode step in process (session.run), with each layer attending over
 * its past concatenated with the new position (the graph as new-kv-outputs.ts
 * leaves it) and split in two (split-attention.ts, what the engine runs):
 * batch 1 and 16, 96 and 224 positions of past; median of interleaved rounds.
 */
async function attentionSplit(model: BenchModel, threads: number, summary: string[]): Promise<void> {
  const g = model.config.generation!;
  const bytes = new Uint8Array(readFileSync(model.modelPath));
  const { past, present } = cacheTensorNames(g);
  const concatenated = exposeNewKeyValues(
    bytes,
    past.map((p, i) => ({ past: p, present: present[i]! })),
  );
  const split = decoderForEngine(bytes, g);
  if ('reason' in concatenated || !split.edited || split.attention !== 'split') {
    console.log(`  attention split: not applicable to ${model.name}`);
    return;
  }
  const options = { intraOpNumThreads: threads, interOpNumThreads: 1 };
  const sessions = {
    concatenated: await ort.InferenceSession.create(concatenated.model, options),
    split: await ort.InferenceSession.create(split.model, options),
  };
  const figures: string[] = [];
  for (const [rows, positions] of [
    [1, 96],
    [16, 96],
    [1, 224],
    [16, 224],
  ] as const) {
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor(
        'int64',
        BigInt64Array.from({ length: rows }, (_, i) => BigInt(5 + i)),
        [rows, 1],
      ),
      attention_mask: new ort.Tensor('int64', new BigInt64Array(rows * (positions + 1)).fill(1n), [
        rows,
        positions + 1,
      ]),
      position_ids: new ort.Tensor('int64', new BigInt64Array(rows).fill(BigInt(positions)), [rows, 1]),
    };
    const size = rows * g.numHeads * positions * g.headDim;
    for (const name of past)
      feeds[name] = new ort.Tensor(
        'float32',
        Float32Array.from({ length: size }, (_, i) => Math.sin(i) / 2),
        [rows, g.numHeads, positions, g.headDim],
      );
    const time = async (session: ort.InferenceSession) => {
      const started = performance.now();
      for (let i = 0; i < 100; i++) await session.run(feeds);
      return (performance.now() - started) / 100;
    };
    for (let i = 0; i < 20; i++) for (const s of Object.values(sessions)) await s.run(feeds);
    const rounds = { concatenated: [] as number[], split: [] as number[] };
    for (let r = 0; r < 5; r++) {
      rounds.concatenated.push(await time(sessions.concatenated));
      rounds.split.push(await time(sessions.split));
    }
    const median = (v: number[]) => v.sort((a, b) => a - b)[2]!;
    const [c, s] = [median(rounds.concatenated), median(rounds.split)];
    console.log(
      `  decode step in process (session.run), batch ${rows}, ${positions} positions: attention over the concatenated cache ${f(c, 3)} ms, split ${f(s, 3)} ms (${f(c / s, 2)}× faster)`,
    );
    figures.push(`b${rows}/${positions}: ${f(c, 2)} → ${f(s, 2)} ms (${f(c / s, 2)}×)`);
  }
  await Promise.all(Object.values(sessions).map((s) => s.release()));
  summary.push(
    `  threads ${threads}: decode step, cache concatenated → attention split: ${figures.join(', ')} (median of 5 interleaved rounds)`,
  );
}

/** Runs in the client process: `streams` concurrent Generate calls; total tokens/s. */
async function grpcStreams(
  address: string,
  modelName: string,
  vocab: number,
  streams: number,
  newTokens: number,
): Promise<number> {
  const client = createClient(GenerationServiceClient, address);
  const asks = prompts(streams, vocab);
  const round = (maxNewTokens: number) =>
    Promise.all(
      asks.map(
        (promptIds) =>
          new Promise<number>((resolve, reject) => {
            let tokens = 0;
            const call = client.generate(
              GenerateRequest.fromPartial({ modelName, promptIds, maxNewTokens, ignoreEos: true }),
            );
            call.on('data', (m: GenerateResponse) => (tokens += m.tokenIds.length));
            call.on('error', reject);
            call.on('end', () => resolve(tokens));
          }),
      ),
    );
  // An untimed round first, as a long-running client has: the channel connected, and this
  // process's gRPC and protobuf code compiled (a fresh process runs it interpreted at first).
  await round(newTokens);
  const started = performance.now();
  const counts = await round(newTokens);
  const seconds = (performance.now() - started) / 1000;
  client.close();
  return counts.reduce((a, b) => a + b, 0) / seconds;
}

/** The gRPC clients run in a child process, as real clients would: they do not share the runner's event loop. */
function grpcRun(address: string, model: BenchModel, streams: number, newTokens: number): Promise<Phase> {
  const args = [
    __filename,
    '--client',
    address,
    model.name,
    String(model.config.generation!.vocabSize),
    String(streams),
    String(newTokens),
  ];
  return new Promise((resolve, reject) => {
    execFile(process.execPath, args, { env: process.env }, (error, stdout) => {
      if (error) reject(error);
      else resolve({ tokensPerSecond: Number(stdout.trim().split('\n').at(-1)) });
    });
  });
}

/** The round with the median tokens/s (its other figures with it). */
function medianPhase(phases: Phase[]): Phase {
  return [...phases].sort((a, b) => a.tokensPerSecond - b.tokensPerSecond)[Math.floor(phases.length / 2)]!;
}

async function best(run: () => Promise<Phase>): Promise<Phase> {
  let top: Phase | undefined;
  for (let i = 0; i < REPEATS; i++) {
    const phase = await run();
    if (!top || phase.tokensPerSecond > top.tokensPerSecond) top = phase;
  }
  return top!;
}

const f = (n: number, digits = 1) => n.toFixed(digits);

async function main(): Promise<void> {
  const model = benchModel();
  const g = model.config.generation!;
  console.log(
    `load average ${loadavg()
      .map((l) => l.toFixed(2))
      .join(
        ' ',
      )}; generation benchmark: ${model.name} (${g.numLayers} layers, ${g.numHeads}×${g.headDim} heads, vocab ${g.vocabSize}, context ${g.maxContextLength}); ` +
      `greedy, prompts of 16–31 tokens, ${LENGTHS.join(' and ')} new tokens per stream; engine and gRPC points: median of ${REPEATS} interleaved rounds`,
  );
  const summary: string[] = [];
  try {
    for (const threads of THREADS) await benchThreads(model, threads, summary);
  } finally {
    rmSync(model.repository, { recursive: true, force: true });
  }
  console.log(`\nsummary\n${summary.join('\n')}`);
}

/** Everything for one intra-op thread count: recompute, engine, gRPC. */
async function benchThreads(model: BenchModel, threads: number, summary: string[]): Promise<void> {
  const g = model.config.generation!;
  console.log(`\nintra-op threads ${threads}`);
  const open = <S>(opener: SessionOpener<S>) =>
    createSession(
      model.modelPath,
      model.config,
      { intraOpNumThreads: threads, interOpNumThreads: 1 },
      logger,
      opener,
    );
  // As the runner opens a decoder: in a worker, its graph edited to return only new keys/values.
  const { session: decoder } = await open((path, options) =>
    WorkerDecoder.create(path, g, options, model.name, logger),
  );
  // The same edited graph in this thread (also the recompute baseline's session).
  const { session } = await open((path, options) => openDecoderSession(path, g, options, logger, model.name));
  const inThread = new SessionDecoder(session, g, model.name);
  await engineRun(decoder, model, 2, 16); // warm-up
  await engineRun(inThread, model, 2, 16);
  const scheduling = process.env.BENCH_SCHEDULING !== '0';
  if (scheduling && process.env.BENCH_PREFIX_ONLY !== '1')
    await chunkedPrefill(decoder, model, summary, threads);
  if (scheduling) await prefixCaching(decoder, model, summary, threads);
  if (process.env.BENCH_CHUNKED_ONLY === '1' || process.env.BENCH_PREFIX_ONLY === '1') {
    await Promise.all([session.release(), decoder.release()]);
    return;
  }

  await attentionSplit(model, threads, summary);
  const prompt = prompts(1, g.vocabSize)[0]!;
  const recomputeTokens = 100;
  const recomputeStarted = performance.now();
  await greedyByRecompute(session, g, prompt, recomputeTokens);
  const recomputeMs = (performance.now() - recomputeStarted) / recomputeTokens;
  console.log(
    `  recompute (no cache), 1 stream: ${f(recomputeMs, 2)} ms/token (${recomputeTokens} tokens after ${prompt.length})`,
  );

  // The runner over gRPC (clients in a child process), measured in the same interleaved rounds as
  // the engine in process: the ratios compare figures taken minutes apart on a drifting machine
  // otherwise.
  const runner = await startModelRunner(
    loadRunnerConfig({
      GRPC_PORT: '0',
      METRICS_PORT: '0',
      MODEL_REPOSITORY: model.repository,
      RUNNER_INTRA_OP_THREADS: String(threads),
      LOG_LEVEL: 'warn',
    }),
    { logger },
  );
  const address = `127.0.0.1:${runner.grpcPort}`;
  const engine = new Map<string, Phase>();
  const grpc = new Map<string, Phase>();
  try {
    await grpcRun(address, model, 2, 16); // warm-up
    for (const newTokens of LENGTHS) {
      const rounds = new Map<string, Phase[]>();
      const add = (key: string, phase: Phase) => rounds.set(key, [...(rounds.get(key) ?? []), phase]);
      for (let round = 0; round < REPEATS; round++) {
        for (const streams of STREAMS) {
          add(`engine ${streams}`, await engineRun(decoder, model, streams, newTokens));
          add(`grpc ${streams}`, await grpcRun(address, model, streams, newTokens));
        }
      }
      for (const streams of STREAMS) {
        engine.set(`${newTokens}/${streams}`, medianPhase(rounds.get(`engine ${streams}`)!));
        grpc.set(`${newTokens}/${streams}`, medianPhase(rounds.get(`grpc ${streams}`)!));
      }
    }
    if (process.env.BENCH_SERVING !== '0')
      await servingPhase(address, model.name, g.vocabSize, summary, threads);
  } finally {
    await runner.stop();
  }
  for (const newTokens of LENGTHS) {
    for (const streams of STREAMS) {
      const p = engine.get(`${newTokens}/${streams}`)!;
      console.log(
        `  engine in-process, ${newTokens} tokens × ${streams} stream(s): ${f(p.tokensPerSecond)} tokens/s total ` +
          `(${f(p.tokensPerCpuSecond!)} per CPU-second), ` +
          `${f(1000 / (p.tokensPerSecond / streams), 2)} ms/token per stream; decode step ${f(p.stepMs!, 2)} ms at mean batch ${f(p.batch!)}; ` +
          `event-loop delay p99 ${f(p.loopP99Ms!)} ms, max ${f(p.loopMaxMs!)} ms; ` +
          `cache bytes per token: ${f(p.copiedPerToken! / 1024)} KiB moved, ${f(p.writtenPerToken! / 1024)} KiB new`,
      );
      console.log(
        `  runner over gRPC (clients in another process), ${newTokens} tokens × ${streams} stream(s): ${f(grpc.get(`${newTokens}/${streams}`)!.tokensPerSecond)} tokens/s total`,
      );
    }
  }
  const last = LENGTHS.at(-1)!;
  // The decoder in this thread: steps block the event loop.
  for (const streams of STREAMS) {
    const p = await best(() => engineRun(inThread, model, streams, last));
    console.log(
      `  engine in-process, decoder in this thread, ${last} tokens × ${streams} stream(s): ${f(p.tokensPerSecond)} tokens/s total; ` +
        `decode step ${f(p.stepMs!, 2)} ms; event-loop delay p99 ${f(p.loopP99Ms!)} ms`,
    );
  }
  // The same 16 streams with the graph as exported: the whole present copied out every step.
  // (in this thread: compare with the row above).
  const { session: unedited } = await open((path, options) => ort.InferenceSession.create(path, options));
  const uneditedDecoder = new SessionDecoder(unedited, g, model.name);
  await engineRun(uneditedDecoder, model, 2, 16); // warm-up
  const whole = await best(() => engineRun(uneditedDecoder, model, 16, last));
  await unedited.release();
  console.log(
    `  engine in-process, decoder in this thread, graph unedited (whole present returned), ${last} tokens × 16 streams: ${f(whole.tokensPerSecond)} tokens/s total; ` +
      `decode step ${f(whole.stepMs!, 2)} ms`,
  );
  // Continuous batching as traffic brings it: arrivals 25 ms apart, 64 or 200 new tokens.
  const mixed = await engineRun(decoder, model, 16, (i) => (i % 2 === 0 ? 200 : 64), 25);
  console.log(
    `  engine in-process, 16 streams arriving 25 ms apart, 64 or 200 tokens: ${f(mixed.tokensPerSecond)} tokens/s total; ` +
      `decode step ${f(mixed.stepMs!, 2)} ms at mean batch ${f(mixed.batch!)}, ${f(100 * mixed.padding!)}% of cache positions padding; ` +
      `${mixed.repacks} joins/leaves of the batch cache, ${f(mixed.repackMs!, 2)} ms each; ` +
      `cache bytes per token: ${f(mixed.copiedPerToken! / 1024)} KiB moved, ${f(mixed.writtenPerToken! / 1024)} KiB new`,
  );
  await Promise.all([session.release(), decoder.release()]);

  const first = LENGTHS[0]!;
  const kvMs = 1000 / engine.get(`${first}/1`)!.tokensPerSecond;
  summary.push(
    `  threads ${threads}: KV cache vs recompute, 1 stream: ${f(kvMs, 2)} vs ${f(recomputeMs, 2)} ms/token = ${f(recomputeMs / kvMs)}× faster`,
  );
  for (const newTokens of LENGTHS) {
    const ratio = (m: Map<string, Phase>) =>
      m.get(`${newTokens}/16`)!.tokensPerSecond / m.get(`${newTokens}/1`)!.tokensPerSecond;
    const e = ratio(engine);
    const one = engine.get(`${newTokens}/1`)!;
    const sixteen = engine.get(`${newTokens}/16`)!;
    const stepRatio = sixteen.stepMs! / one.stepMs!;
    const grpcShare = (streams: number) =>
      grpc.get(`${newTokens}/${streams}`)!.tokensPerSecond /
      engine.get(`${newTokens}/${streams}`)!.tokensPerSecond;
    const cpuRatio =
      engine.get(`${newTokens}/16`)!.tokensPerCpuSecond! / engine.get(`${newTokens}/1`)!.tokensPerCpuSecond!;
    summary.push(
      `  threads ${threads}, ${newTokens} tokens: 16 streams / 1 stream = ${f(e, 2)}× in-process ` +
        `(${f(engine.get(`${newTokens}/16`)!.tokensPerSecond)} / ${f(engine.get(`${newTokens}/1`)!.tokensPerSecond)} tokens/s; target ≥ 5×: ${e >= 5 ? 'met' : 'NOT met'}), ` +
        `${f(ratio(grpc), 2)}× over gRPC (${f(grpc.get(`${newTokens}/16`)!.tokensPerSecond)} / ${f(grpc.get(`${newTokens}/1`)!.tokensPerSecond)}); ` +
        `gRPC / in-process at 16 streams ${f((100 * grpc.get(`${newTokens}/16`)!.tokensPerSecond) / engine.get(`${newTokens}/16`)!.tokensPerSecond)}%; ` +
        `per CPU-second 16 / 1 = ${f(cpuRatio, 2)}×`,
    );
    summary.push(
      `  threads ${threads}, ${newTokens} tokens: decode step batch 16 / batch 1 = ${f(stepRatio, 2)}× ` +
        `(${f(sixteen.stepMs!, 2)} / ${f(one.stepMs!, 2)} ms; target ≤ 3×: ${stepRatio <= 3 ? 'met' : 'NOT met'}); ` +
        `gRPC / in-process ${f(100 * grpcShare(1))}% (1 stream), ${f(100 * grpcShare(16))}% (16) (target ≥ 85%: ` +
        `${grpcShare(1) >= 0.85 && grpcShare(16) >= 0.85 ? 'met' : 'NOT met'}); event-loop delay p99 at 16 streams ` +
        `${f(sixteen.loopP99Ms!)} ms (target ≤ 5 ms: ${sixteen.loopP99Ms! <= 5 ? 'met' : 'NOT met'})`,
    );
  }
}

if (process.argv[2] === '--client') {
  const [address, modelName, vocab, streams, newTokens] = process.argv.slice(3);
  grpcStreams(address!, modelName!, Number(vocab), Number(streams), Number(newTokens)).then(
    (rate) => console.log(rate),
    (error: unknown) => {
      console.error(error);
      process.exit(1);
    },
  );
} else {
  main().catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}
