/**
 * Generation engines over real onnxruntime sessions, for the generation
 * tests: the tiny GPT-2-style fixture decoder (built in memory) and, when it
 * is in the default repository, the trained austen-gpt.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { Registry } from 'prom-client';
import {
  buildTinyGpt2,
  buildTinyLlama,
  decoderDefaults,
  llamaDefaults,
  makeTempDir,
  type LlamaOptions,
} from '@maas/models';
import {
  createLogger,
  defaultRepositoryPath,
  modelConfigSchema,
  readModelConfig,
  type ModelConfig,
} from '@maas/shared';
import {
  createGenerationMetrics,
  GenerationEngine,
  openDecoderSession,
  type GenerationRequest,
  type GenerationResult,
} from '../src/generation/index';
import { SessionDecoder, type BatchDecoder } from '../src/generation/batch-decoder';

export type GenerationLimits = Partial<
  Pick<
    NonNullable<ModelConfig['generation']>,
    | 'maxConcurrentSequences'
    | 'maxCachedTokens'
    | 'maxQueuedSequences'
    | 'eosTokenId'
    | 'prefillChunkTokens'
    | 'priorityAgingMs'
    | 'prefixCacheTokens'
  >
>;

export interface DecoderModel {
  name: string;
  session: ort.InferenceSession;
  config: ModelConfig;
}

/**
 * The fixture decoder with a 2,048-token vocabulary: the GPT-2 vocabulary
 * makes no difference to the engine, and the fixture builder takes tens of
 * seconds to write its 50k×32 embedding.
 */
export const TINY_VOCAB = 2048;

const tiny = decoderDefaults({ vocab: TINY_VOCAB, seed: 11 });
let tinyBytes: Uint8Array | undefined;
/** The fixture decoder as exported (built once per test file). */
export const tinyModelBytes = () => (tinyBytes ??= buildTinyGpt2(tiny));

/** The test decoders' scheduling limits: 8 sequences at once, room for each to fill the context. */
const testLimits = (maxPositions: number, limits: GenerationLimits) => ({
  defaultMaxNewTokens: 16,
  maxConcurrentSequences: 8,
  maxCachedTokens: 8 * maxPositions,
  maxQueuedSequences: 32,
  ...limits,
});

/** Prompts of different lengths (GPT-2 ids, below every test vocabulary). */
export const TEST_PROMPTS = [
  [464, 1068, 758, 218],
  [1549],
  [40, 1842, 428, 380, 11, 340, 99, 1001, 7],
  [1858, 373],
  [464, 1290, 318, 257, 1332, 286, 262, 5, 6, 7, 8, 9, 10],
  [32, 33, 34],
];

/** The fixture decoder's config.json (as writeFixtureRepository writes it), with these limits. */
function tinyConfigJson(limits: GenerationLimits = {}) {
  const d = tiny;
  return {
    name: 'tiny-gpt2',
    task: 'generation',
    maxBatchSize: 16,
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
      eosTokenId: d.vocab - 1,
      ...testLimits(d.maxPositions, limits),
    },
  };
}

/** A model repository holding only the tiny decoder, as version 1. */
export function writeTinyDecoderRepository(limits: GenerationLimits = {}): string {
  const root = makeTempDir('maas-generation-');
  mkdirSync(join(root, 'tiny-gpt2', '1'), { recursive: true });
  writeFileSync(join(root, 'tiny-gpt2', 'config.json'), JSON.stringify(tinyConfigJson(limits), null, 2));
  writeFileSync(join(root, 'tiny-gpt2', '1', 'model.onnx'), tinyModelBytes());
  return root;
}

/**
 * The fixture decoder as the runner opens it (its graph edited to return only
 * new keys/values), or with `unedited` as exported (the whole `present`).
 */
export async function tinyDecoder({ unedited = false } = {}): Promise<DecoderModel> {
  const config = modelConfigSchema.parse(tinyConfigJson());
  const options = {
    intraOpNumThreads: 1,
    // The failure tests provoke onnxruntime errors on purpose; the engine reports them itself.
    logSeverityLevel: 4 as const,
  };
  const session = unedited
    ? await ort.InferenceSession.create(tinyModelBytes(), options)
    : await openDecoderSession(tinyModelBytes(), config.generation!, options);
  return { name: 'tiny-gpt2', session, config };
}

/**
 * A Llama-family fixture decoder's config.json, as a user would write it from
 * the model's Hugging Face config (numKeyValueHeads = num_key_value_heads).
 */
export function llamaConfigJson(name: string, options: LlamaOptions, limits: GenerationLimits = {}) {
  const o = llamaDefaults(options);
  const fp16 = o.kvType === 'float16';
  return {
    name,
    task: 'generation',
    maxBatchSize: 16,
    inputs: ['input_ids', 'attention_mask', ...(o.positionIds ? ['position_ids'] : [])].map((n) => ({
      name: n,
      datatype: 'INT64',
      dims: [-1],
    })),
    outputs: [{ name: 'logits', datatype: fp16 ? 'FP16' : 'FP32', dims: [-1, o.vocab] }],
    generation: {
      numLayers: o.layers,
      numHeads: o.heads,
      ...(o.kvHeads !== o.heads ? { numKeyValueHeads: o.kvHeads } : {}),
      headDim: o.hidden / o.heads,
      vocabSize: o.vocab,
      maxContextLength: o.maxPositions,
      eosTokenId: o.vocab - 1,
      ...testLimits(o.maxPositions, limits),
    },
  };
}

/** A Llama-family fixture decoder as the runner opens it (graph edited), and as exported. */
export async function llamaDecoder(
  name: string,
  options: LlamaOptions,
): Promise<DecoderModel & { unedited: ort.InferenceSession; bytes: Uint8Array }> {
  const config = modelConfigSchema.parse(llamaConfigJson(name, options));
  const bytes = buildTinyLlama(options);
  const sessionOptions = { intraOpNumThreads: 1 };
  return {
    name,
    config,
    bytes,
    session: await openDecoderSession(bytes, config.generation!, sessionOptions),
    unedited: await ort.InferenceSession.create(bytes, sessionOptions),
  };
}

export const austenDir = join(defaultRepositoryPath(), 'austen-gpt');
export const austenPresent = () =>
  existsSync(join(austenDir, '1', 'model.onnx')) &&
  ['config.json', 'config.yaml'].some((f) => existsSync(join(austenDir, f)));

export async function austenDecoder(): Promise<DecoderModel> {
  const config = readModelConfig(austenDir, 'austen-gpt');
  const session = await openDecoderSession(join(austenDir, '1', 'model.onnx'), config.generation!, {
    intraOpNumThreads: 2,
  });
  return { name: 'austen-gpt', session, config };
}

export interface TestEngine {
  engine: GenerationEngine;
  registry: Registry;
  model: DecoderModel;
}

/** An engine over the model's session in this thread (a SessionDecoder; `session` may wrap it). */
export function startEngine(
  model: DecoderModel,
  limits: GenerationLimits = {},
  session: ort.InferenceSession = model.session,
): TestEngine {
  const config: ModelConfig = { ...model.config, generation: { ...model.config.generation!, ...limits } };
  return startEngineOn(new SessionDecoder(session, config.generation!, model.name), model, limits);
}

/** An engine over a given decoder (a WorkerDecoder, say). */
export function startEngineOn(
  decoder: BatchDecoder,
  model: DecoderModel,
  limits: GenerationLimits = {},
): TestEngine {
  const registry = new Registry();
  const config: ModelConfig = { ...model.config, generation: { ...model.config.generation!, ...limits } };
  const engine = new GenerationEngine({
    modelName: model.name,
    modelVersion: '1',
    decoder,
    config,
    metrics: createGenerationMetrics(registry),
    logger: createLogger({ service: 'generation-test', level: 'silent' }),
  });
  return { engine, registry, model };
}

export type Ask = Partial<Omit<GenerationRequest, 'promptIds'>> & { promptIds: number[] };

export interface Generated {
  tokens: number[];
  result: GenerationResult;
}

/** Runs one sequence; `onToken` sees each token with the count so far. */
export async function generate(
  engine: GenerationEngine,
  ask: Ask,
  onToken?: (token: number, count: number) => void,
): Promise<Generated> {
  const tokens: number[] = [];
  const result = await engine.generate(
    {
      maxNewTokens: 16,
      sampling: {},
      stopTokenIds: [],
      ignoreEos: true,
      signal: new AbortController().signal,
      ...ask,
    },
    (ids) => {
      for (const id of ids) {
        tokens.push(id);
        onToken?.(id, tokens.length);
      }
    },
  );
  return { tokens, result };
}

/** Resolves once `predicate` holds, checking at every event-loop turn (bounded). */
export async function until(predicate: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error('condition not reached in time');
    await new Promise((r) => setImmediate(r));
  }
}

export async function metric(registry: Registry, name: string, labels: Record<string, string> = {}) {
  const found = (await registry.getMetricsAsJSON()).find((m) => m.name === name);
  const values = (found?.values ?? []) as {
    value: number;
    labels: Record<string, unknown>;
    metricName?: string;
  }[];
  return values
    .filter((v) => Object.entries(labels).every(([k, want]) => String(v.labels[k]) === want))
    .reduce((sum, v) => sum + v.value, 0);
}

/** A histogram's count or sum (`part`), all label sets together. */
export async function histogram(registry: Registry, name: string, part: 'count' | 'sum') {
  const found = (await registry.getMetricsAsJSON()).find((m) => m.name === name);
  const values = (found?.values ?? []) as { value: number; metricName?: string }[];
  return values.filter((v) => v.metricName === `${name}_${part}`).reduce((s, v) => s + v.value, 0);
}

/**
 * The session with its `run` replaced (to delay or fail runs); everything
 * else is the session's own.
 */
export function withRun(
  session: ort.InferenceSession,
  run: (
    feeds: Record<string, ort.Tensor>,
    real: (feeds: Record<string, ort.Tensor>) => Promise<ort.InferenceSession.OnnxValueMapType>,
  ) => Promise<ort.InferenceSession.OnnxValueMapType>,
): ort.InferenceSession {
  return new Proxy(session, {
    get(target, key) {
      if (key === 'run') return (feeds: Record<string, ort.Tensor>) => run(feeds, (f) => target.run(f));
      const value = Reflect.get(target, key) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}
