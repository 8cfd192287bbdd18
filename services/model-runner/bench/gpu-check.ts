/**
 * The GPU check (scripts/gpu/check.sh runs it on a bare GPU machine, bundled
 * into one file with onnxruntime-node beside it): the default models on the
 * WebGPU execution provider against the CPU provider on the same machine.
 *
 *  1. the adapter: a WebGPU session opens, or the check fails loudly;
 *  2. outputs: lang-id's top label per row equal, glove-embed's embeddings
 *     within 1e-3 cosine, austen-gpt's greedy tokens equal (or the first
 *     divergence reported);
 *  3. speed: batched models' items/s by batch, generation tokens/s for 1 and
 *     16 streams, and the bytes of KV cache that cross host↔device per token
 *     (the engine feeds the cache back from host memory every step).
 *
 * Usage: node gpu-check.js OUT_DIR [REPOSITORY]. Writes OUT_DIR/gpu-check.json
 * and prints each figure; exits 1 when a check fails.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { Registry } from 'prom-client';
import { createLogger, defaultRepositoryPath, type ModelConfig, readModelConfig } from '@maas/shared';
import { createGenerationMetrics, GenerationEngine, SessionDecoder } from '../src/generation/index.js';
import { greedyRequest } from '../src/generation/reference.js';

type Provider = 'cpu' | 'webgpu';
/** GPU_CHECK_ACCELERATOR=cpu runs the whole check CPU against CPU: how the script itself is tried without a GPU. */
const ACCELERATOR = (process.env.GPU_CHECK_ACCELERATOR ?? 'webgpu') as Provider;
const [outDir = 'gpu-check-out', repository = defaultRepositoryPath()] = process.argv.slice(2);
const MEASURE_MS = Number(process.env.GPU_CHECK_MS ?? 1500);
const figures: Record<string, unknown> = {};
const failures: string[] = [];

function log(line: string): void {
  console.log(line);
}

/** mulberry32, so both providers see the same inputs. */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function open(model: string, provider: Provider): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(join(repository, model, '1', 'model.onnx'), {
    executionProviders: [provider],
    intraOpNumThreads: provider === 'cpu' ? 4 : 1,
  });
}

/** A batch of token ids (and mask) in the model's vocabulary. */
function tokenFeeds(config: ModelConfig, rows: number, length: number, seed: number) {
  const vocab = config.inputs.find((i) => i.name === 'input_ids')?.vocabSize ?? 1000;
  const next = random(seed);
  const ids = BigInt64Array.from({ length: rows * length }, () =>
    BigInt(2 + Math.floor(next() * (vocab - 2))),
  );
  return {
    input_ids: new ort.Tensor('int64', ids, [rows, length]),
    attention_mask: new ort.Tensor('int64', new BigInt64Array(rows * length).fill(1n), [rows, length]),
  };
}

async function itemsPerSecond(session: ort.InferenceSession, config: ModelConfig, batch: number) {
  const feeds = tokenFeeds(config, batch, 16, 7);
  for (let i = 0; i < 3; i++) await session.run(feeds);
  let runs = 0;
  const start = performance.now();
  while (performance.now() - start < MEASURE_MS) {
    await session.run(feeds);
    runs++;
  }
  return (runs * batch * 1000) / (performance.now() - start);
}

async function batchedModels(): Promise<void> {
  for (const model of ['lang-id', 'glove-embed']) {
    const config = readModelConfig(join(repository, model), model);
    const sessions = [await open(model, 'cpu'), await open(model, ACCELERATOR)];
    const feeds = tokenFeeds(config, 32, 12, 1);
    const [cpu, gpu] = await Promise.all(sessions.map((session) => session.run(feeds)));
    const output = config.outputs[0]!.name;
    const a = cpu![output]!.data as Float32Array;
    const b = gpu![output]!.data as Float32Array;
    const width = a.length / 32;
    let agree = 0;
    let worstCosine = 1;
    for (let r = 0; r < 32; r++) {
      const ra = a.subarray(r * width, (r + 1) * width);
      const rb = b.subarray(r * width, (r + 1) * width);
      if (ra.indexOf(Math.max(...ra)) === rb.indexOf(Math.max(...rb))) agree++;
      let dot = 0;
      let na = 0;
      let nb = 0;
      for (let i = 0; i < width; i++) {
        dot += ra[i]! * rb[i]!;
        na += ra[i]! ** 2;
        nb += rb[i]! ** 2;
      }
      worstCosine = Math.min(worstCosine, dot / Math.sqrt(na * nb));
    }
    log(
      `${model}: top label equal on ${agree}/32 rows; worst cosine cpu vs ${ACCELERATOR} ${worstCosine.toFixed(6)}`,
    );
    if (model === 'lang-id' && agree !== 32)
      failures.push(`${model}: top labels differ on ${32 - agree} rows`);
    if (worstCosine < 1 - 1e-3) failures.push(`${model}: cosine ${worstCosine} below 1 - 1e-3`);
    const speed: Record<number, number>[] = [{}, {}];
    for (const batch of [1, 8, 64]) {
      for (const i of [0, 1]) speed[i]![batch] = await itemsPerSecond(sessions[i]!, config, batch);
      log(
        `${model} batch ${batch}: cpu ${speed[0]![batch]!.toFixed(0)} items/s, ${ACCELERATOR} ${speed[1]![batch]!.toFixed(0)} items/s ` +
          `(${(speed[1]![batch]! / speed[0]![batch]!).toFixed(2)}×)`,
      );
    }
    figures[model] = { agree, worstCosine, itemsPerSecond: { cpu: speed[0], [ACCELERATOR]: speed[1] } };
    await Promise.all(sessions.map((session) => session.release()));
  }
}

function engineOn(session: ort.InferenceSession, config: ModelConfig): GenerationEngine {
  return new GenerationEngine({
    modelName: 'austen-gpt',
    modelVersion: '1',
    decoder: new SessionDecoder(session, config.generation!, 'austen-gpt'),
    config,
    metrics: createGenerationMetrics(new Registry()),
    logger: createLogger({ service: 'gpu-check', level: 'warn' }),
  });
}

async function generateIds(engine: GenerationEngine, promptIds: number[], maxNewTokens: number) {
  const tokens: number[] = [];
  await engine.generate(greedyRequest(promptIds, maxNewTokens), (ids) => tokens.push(...ids));
  return tokens;
}

async function generation(): Promise<void> {
  const config = readModelConfig(join(repository, 'austen-gpt'), 'austen-gpt');
  const g = config.generation!;
  const next = random(3);
  const prompts = Array.from({ length: 16 }, () =>
    Array.from({ length: 12 }, () => 1 + Math.floor(next() * (g.vocabSize - 1))),
  );
  const engines = [
    engineOn(await open('austen-gpt', 'cpu'), config),
    engineOn(await open('austen-gpt', ACCELERATOR), config),
  ];
  const divergences: (number | null)[] = [];
  for (const prompt of prompts.slice(0, 4)) {
    const [a, b] = await Promise.all(engines.map((engine) => generateIds(engine, prompt, 64)));
    const first = a!.findIndex((t, i) => t !== b![i]);
    divergences.push(first < 0 ? null : first);
  }
  log(
    `austen-gpt greedy, 4 prompts × 64 tokens: first divergence ${JSON.stringify(divergences)} (null: equal)`,
  );
  const tokensPerSecond: Record<number, number>[] = [{}, {}];
  for (const streams of [1, 16]) {
    for (const i of [0, 1]) {
      const engine = engines[i]!;
      await generateIds(engine, prompts[0]!, 8); // warm-up
      const start = performance.now();
      const out = await Promise.all(
        prompts.slice(0, streams).map((prompt) => generateIds(engine, prompt, 64)),
      );
      const tokens = out.reduce((sum, t) => sum + t.length, 0);
      tokensPerSecond[i]![streams] = (tokens * 1000) / (performance.now() - start);
    }
    log(
      `austen-gpt ${streams} stream(s) × 64 tokens: cpu ${tokensPerSecond[0]![streams]!.toFixed(0)} tokens/s, ` +
        `${ACCELERATOR} ${tokensPerSecond[1]![streams]!.toFixed(0)} tokens/s`,
    );
  }
  // Every step feeds the whole cache in and reads the new one out (`present` = past + new): keys and
  // values of every layer, float32, for the context so far. At a mean context of prompt + 32 tokens:
  const perPosition = g.numLayers * 2 * g.numHeads * g.headDim * 4;
  const bytesPerToken = 2 * perPosition * (12 + 32);
  log(
    `KV cache crossing host↔device per generated token (estimated, mean context 44): ${bytesPerToken} bytes`,
  );
  figures['austen-gpt'] = {
    divergences,
    tokensPerSecond: { cpu: tokensPerSecond[0], [ACCELERATOR]: tokensPerSecond[1] },
    kvBytesPerTokenEstimate: bytesPerToken,
  };
  await Promise.all(engines.map((engine) => engine.close()));
}

async function main(): Promise<void> {
  mkdirSync(outDir, { recursive: true });
  figures.backends = ort.listSupportedBackends();
  log(`onnxruntime backends: ${JSON.stringify(figures.backends)}`);
  try {
    await (await open('lang-id', ACCELERATOR)).release();
    log(`${ACCELERATOR}: a session opened`);
  } catch (error) {
    failures.push(`no ${ACCELERATOR} session: ${(error as Error).message}`);
  }
  if (failures.length === 0) {
    await batchedModels();
    await generation();
  }
  figures.failures = failures;
  writeFileSync(join(outDir, 'gpu-check.json'), `${JSON.stringify(figures, null, 2)}\n`);
  for (const failure of failures) console.error(`FAILED: ${failure}`);
  process.exit(failures.length === 0 ? 0 : 1);
}

void main();
