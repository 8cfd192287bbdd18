/**
 * npm run bench:generation — KV-cache generation with continuous batching.
 *
 * Model: austen-gpt from the default repository when it is there, else the
 * tiny fixture decoder (random weights). Session as the runner creates it
 * (session.ts, RUNNER_INTRA_OP_THREADS default 1 unless BENCH_THREADS).
 * Prints, side by side in one run:
 *  - recompute baseline: greedy decoding that re-runs the whole sequence for
 *    every token (no cache), ms/token;
 *  - the engine in-process, 1 stream and 16 concurrent streams: tokens/s
 *    (wall clock from submission to the last token, prefill included),
 *    mean decode step and batch size;
 *  - the same through gRPC (the runner in this process, the clients in a
 *    child process);
 *  - ratios: KV cache vs recompute per token, 16 streams / 1 stream total
 *    tokens/s (target ≥ 3×).
 * Env: BENCH_NEW_TOKENS (per stream, default 200), BENCH_REPEATS (best of,
 * default 3), BENCH_THREADS, BENCH_MODEL=fixture to force the fixture.
 */
import { execFile } from 'node:child_process';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { existsSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type * as ort from 'onnxruntime-node';
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
import { createSession } from '../src/session.js';
import { createGenerationMetrics, GenerationEngine, SequenceRandom } from '../src/generation/index.js';
import { greedyByRecompute } from '../src/generation/reference.js';

const NEW_TOKENS = Number(process.env.BENCH_NEW_TOKENS ?? 200);
const REPEATS = Number(process.env.BENCH_REPEATS ?? 3);
const THREADS = Number(process.env.BENCH_THREADS ?? 1);
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
  const random = new SequenceRandom(2024);
  return Array.from({ length: count }, (_, i) =>
    Array.from({ length: 16 + ((i * 7) % 16) }, () => 10 + Math.floor(random.next() * (vocab - 10))),
  );
}

interface Phase {
  tokensPerSecond: number;
  stepMs?: number;
  batch?: number;
  /** Event-loop delay while the engine ran: p99 and max, ms (onnxruntime-node runs sessions on the JS thread). */
  loopP99Ms?: number;
  loopMaxMs?: number;
}

const histogramMean = async (registry: Registry, name: string) => {
  const values = ((await registry.getMetricsAsJSON()).find((m) => m.name === name)?.values ?? []) as {
    value: number;
    metricName?: string;
  }[];
  const part = (p: string) =>
    values.filter((v) => v.metricName === `${name}_${p}`).reduce((s, v) => s + v.value, 0);
  return part('sum') / Math.max(1, part('count'));
};

async function engineRun(session: ort.InferenceSession, model: BenchModel, streams: number): Promise<Phase> {
  const registry = new Registry();
  const engine = new GenerationEngine({
    modelName: model.name,
    modelVersion: '1',
    session,
    config: model.config,
    metrics: createGenerationMetrics(registry),
    logger,
  });
  const asks = prompts(streams, model.config.generation!.vocabSize);
  const loop = monitorEventLoopDelay({ resolution: 1 });
  loop.enable();
  const started = performance.now();
  const results = await Promise.all(
    asks.map((promptIds) =>
      engine.generate(
        {
          promptIds,
          maxNewTokens: NEW_TOKENS,
          sampling: {},
          stopTokenIds: [],
          ignoreEos: true,
          signal: new AbortController().signal,
        },
        () => undefined,
      ),
    ),
  );
  const seconds = (performance.now() - started) / 1000;
  loop.disable();
  await engine.close();
  const tokens = results.reduce((n, r) => n + r.generatedTokens, 0);
  return {
    tokensPerSecond: tokens / seconds,
    loopP99Ms: loop.percentile(99) / 1e6,
    loopMaxMs: loop.max / 1e6,
    stepMs: 1000 * (await histogramMean(registry, 'maas_runner_generation_step_duration_seconds')),
    batch: await histogramMean(registry, 'maas_runner_generation_step_batch_size'),
  };
}

/** Runs in the client process: `streams` concurrent Generate calls; total tokens/s. */
async function grpcStreams(
  address: string,
  modelName: string,
  vocab: number,
  streams: number,
): Promise<number> {
  const client = createClient(GenerationServiceClient, address);
  const asks = prompts(streams, vocab);
  const started = performance.now();
  const counts = await Promise.all(
    asks.map(
      (promptIds) =>
        new Promise<number>((resolve, reject) => {
          let tokens = 0;
          const call = client.generate(
            GenerateRequest.fromPartial({
              modelName,
              promptIds,
              maxNewTokens: NEW_TOKENS,
              ignoreEos: true,
            }),
          );
          call.on('data', (m: GenerateResponse) => (tokens += m.tokenIds.length));
          call.on('error', reject);
          call.on('end', () => resolve(tokens));
        }),
    ),
  );
  const seconds = (performance.now() - started) / 1000;
  client.close();
  return counts.reduce((a, b) => a + b, 0) / seconds;
}

/** The gRPC clients run in a child process, as real clients would: they do not share the runner's event loop. */
function grpcRun(address: string, model: BenchModel, streams: number): Promise<Phase> {
  const args = [
    __filename,
    '--client',
    address,
    model.name,
    String(model.config.generation!.vocabSize),
    String(streams),
  ];
  return new Promise((resolve, reject) => {
    execFile(process.execPath, args, { env: process.env }, (error, stdout) => {
      if (error) reject(error);
      else resolve({ tokensPerSecond: Number(stdout.trim().split('\n').at(-1)) });
    });
  });
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
    `generation benchmark: ${model.name} (${g.numLayers} layers, ${g.numHeads}×${g.headDim} heads, vocab ${g.vocabSize}, context ${g.maxContextLength}); ` +
      `${NEW_TOKENS} new tokens per stream, greedy, prompts of 16–31 tokens; intra-op threads ${THREADS}; best of ${REPEATS}`,
  );
  const { session } = await createSession(
    model.modelPath,
    model.config,
    { intraOpNumThreads: THREADS, interOpNumThreads: 1 },
    logger,
  );
  await engineRun(session, model, 2); // warm-up

  const prompt = prompts(1, g.vocabSize)[0]!;
  const recomputeStarted = performance.now();
  const recomputeTokens = Math.min(NEW_TOKENS, 100);
  await greedyByRecompute(session, g, prompt, recomputeTokens);
  const recomputeMs = (performance.now() - recomputeStarted) / recomputeTokens;
  console.log(
    `recompute (no cache), 1 stream: ${f(recomputeMs, 2)} ms/token, ${f(1000 / recomputeMs)} tokens/s (${recomputeTokens} tokens after ${prompt.length})`,
  );

  const engine: Record<number, Phase> = {};
  for (const streams of STREAMS) {
    engine[streams] = await best(() => engineRun(session, model, streams));
    const p = engine[streams];
    console.log(
      `engine in-process, ${streams} stream(s): ${f(p.tokensPerSecond)} tokens/s total, ${f(p.tokensPerSecond / streams)} per stream, ` +
        `${f(1000 / (p.tokensPerSecond / streams), 2)} ms/token per stream; decode step ${f(p.stepMs!, 2)} ms at mean batch ${f(p.batch!)}; ` +
        `event-loop delay p99 ${f(p.loopP99Ms!)} ms, max ${f(p.loopMaxMs!)} ms`,
    );
  }
  await session.release();

  const grpc: Record<number, Phase> = {};
  const runner = await startModelRunner(
    loadRunnerConfig({
      GRPC_PORT: '0',
      METRICS_PORT: '0',
      MODEL_REPOSITORY: model.repository,
      RUNNER_INTRA_OP_THREADS: String(THREADS),
      LOG_LEVEL: 'warn',
    }),
    { logger },
  );
  const address = `127.0.0.1:${runner.grpcPort}`;
  try {
    await grpcRun(address, model, 2); // warm-up
    for (const streams of STREAMS) {
      grpc[streams] = await best(() => grpcRun(address, model, streams));
      console.log(
        `runner over gRPC (runner in this process, clients in another), ${streams} stream(s): ${f(grpc[streams].tokensPerSecond)} tokens/s total`,
      );
    }
  } finally {
    await runner.stop();
    rmSync(model.repository, { recursive: true, force: true });
  }

  const one = engine[1]!.tokensPerSecond;
  const sixteen = engine[16]!.tokensPerSecond;
  console.log('\nsummary');
  console.log(
    `  KV cache vs recompute, 1 stream:     ${f(1000 / one, 2)} vs ${f(recomputeMs, 2)} ms/token = ${f(recomputeMs / (1000 / one))}× faster`,
  );
  console.log(
    `  engine 16 streams / 1 stream:        ${f(sixteen)} / ${f(one)} tokens/s = ${f(sixteen / one, 2)}× (target ≥ 3×) ${sixteen / one >= 3 ? 'MET' : 'NOT MET'}`,
  );
  console.log(
    `  gRPC 16 streams / 1 stream:          ${f(grpc[16]!.tokensPerSecond)} / ${f(grpc[1]!.tokensPerSecond)} tokens/s = ${f(grpc[16]!.tokensPerSecond / grpc[1]!.tokensPerSecond, 2)}×`,
  );
  console.log(`  gRPC / in-process, 16 streams:       ${f((100 * grpc[16]!.tokensPerSecond) / sixteen)}%`);
}

if (process.argv[2] === '--client') {
  const [address, modelName, vocab, streams] = process.argv.slice(3);
  grpcStreams(address!, modelName!, Number(vocab), Number(streams)).then(
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
