/**
 * npm run bench:e2e — the serving path end to end, side by side with what it
 * is measured against, in one run on this machine:
 *
 *  1. raw: the same model in this process, tokenizer library + session.run,
 *     batch 1 (latency) and the best batch (throughput);
 *  2. through the orchestrator (tokenizer, model-runner and orchestrator each
 *     in its own process, an API key on every call), single-text requests at
 *     concurrency 1, 8, 32 and 64, from a client in its own process (with,
 *     for lang-id and glove-embed, right after their orchestrator figures: a
 *     chain of minimal grpc-js pass-through servers with the same hops —
 *     client → front → tokenizer stub, runner stub — at concurrency 64: the
 *     practical limit of this stack);
 *  3. generation through the orchestrator: time to first token and tokens/s
 *     for 1 and 16 concurrent streams;
 *  4. the coalescing window (BATCH_WINDOW_US) at another setting;
 *  5. the HTTP API beside gRPC (same orchestrator, same client process, interleaved rounds):
 *     /v1/classify and /v1/embeddings at c=1 and 64, /v1/completions streaming at 1 and 16 streams.
 *
 * CPU time per request of each server process (from /proc) is printed too:
 * unlike latency, it says little about what else the machine is running.
 *
 * BENCH_MS sets the duration of each point (default 3000).
 */
import { execFileSync } from 'node:child_process';
import { Agent, request as httpRequest } from 'node:http';
import { copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  credentials,
  Metadata,
  Server,
  ServerCredentials,
  type ServiceError,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { BERT_VOCAB, buildBertClassifier, makeTempDir, writeFixtureRepository } from '@maas/models';
import { createLogger, defaultRepositoryPath, readModelConfig } from '@maas/shared';
import {
  GRPCInferenceServiceClient,
  GRPCInferenceServiceService,
  type ModelInferResponse,
} from '@maas/shared/gen/inference/grpc_service';
import {
  ClassifyRequest,
  type ClassifyResponse,
  EmbedRequest,
  type EmbedResponse,
  GenerateRequest,
  type GenerateResponse,
  MaasServiceClient,
  MaasServiceService,
} from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import {
  EncodeRequest,
  type EncodeResponse,
  PaddingStrategy,
  TokenizerServiceClient,
  TokenizerServiceService,
} from '@maas/shared/gen/maas/tokenizer/v1/tokenizer';
import {
  GenerationServiceClient,
  GenerateRequest as RunnerGenerateRequest,
  type GenerateResponse as RunnerGenerateResponse,
} from '@maas/shared/gen/maas/runner/v1/generation';
import { TokenizerRegistry } from '@maas/tokenizer';
import * as ort from 'onnxruntime-node';
import {
  children,
  cpuMs,
  freePort,
  keysFile,
  percentile,
  sentences,
  startProcess,
  startStack,
  stopAll,
  waitServing,
} from './stack.js';

const MS = Number(process.env.BENCH_MS ?? 3000);
const KEY = 'bench-key-0123456789abcdef';
const CONCURRENCY = [1, 8, 32, 64];
const BIG = 'bench-bert';

interface Stats {
  rps: number;
  p50: number;
  p95: number;
  p99: number;
  /** CPU time per request of each server process (µs), which the machine's other load does not inflate much. */
  cpuUs?: number[];
}

/** Runs `one` from `concurrency` loops for MS; `one` returns items done. */
async function measure(concurrency: number, one: () => Promise<number>, ms = MS): Promise<Stats> {
  const latencies: number[] = [];
  let items = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() - start < ms) {
        const t = performance.now();
        // Not `items += await one()`: that reads `items` before the await and loses the other loops' counts.
        const done = await one();
        items += done;
        latencies.push(performance.now() - t);
      }
    }),
  );
  const elapsed = performance.now() - start;
  latencies.sort((a, b) => a - b);
  return {
    rps: (items / elapsed) * 1000,
    p50: percentile(latencies, 50),
    p95: percentile(latencies, 95),
    p99: percentile(latencies, 99),
  };
}

interface BenchModel {
  name: string;
  task: 'classification' | 'embedding';
  words: number;
  passThrough: boolean;
}

const ALL_MODELS: BenchModel[] = [
  { name: BIG, task: 'classification', words: 48, passThrough: false },
  { name: 'lang-id', task: 'classification', words: 10, passThrough: true },
  { name: 'glove-embed', task: 'embedding', words: 10, passThrough: true },
];
/** BENCH_MODELS=lang-id,glove-embed runs a subset; BENCH_GENERATION=0 and BENCH_WINDOW=0 skip those parts. */
const MODELS = ALL_MODELS.filter(
  (m) => !process.env.BENCH_MODELS || process.env.BENCH_MODELS.split(',').includes(m.name),
);

function prepareRepository(): { root: string; generationModel: string } {
  const root = makeTempDir('maas-bench-e2e-');
  // A BERT-style classifier big enough that one run takes milliseconds (the default models take microseconds).
  writeFixtureRepository(root, {
    models: ['bert-classifier'],
    tokenizers: 'pretrained',
    // Up to 16 rows of ~64 tokens. In process its items/s do not grow with the batch on 2 cores (texts
    // pad to the longest of a batch), but served with maxBatchSize 1 it did no better (147/s at c=32
    // against 160/s) and the orchestrator then spent 3.6× the CPU per request: one hop per text.
    maxBatchSize: 16,
    maxQueueDelayMicroseconds: 500,
  });
  cpSync(join(root, 'bert-classifier'), join(root, BIG), { recursive: true });
  execFileSync('rm', ['-rf', join(root, 'bert-classifier')]);
  writeFileSync(
    join(root, BIG, '1', 'model.onnx'),
    buildBertClassifier({
      vocab: BERT_VOCAB,
      hidden: 256,
      heads: 8,
      layers: 4,
      intermediate: 1024,
      maxPositions: 128,
    }),
  );
  for (const name of ['lang-id', 'glove-embed']) {
    cpSync(join(defaultRepositoryPath(), name), join(root, name), { recursive: true });
  }
  let generationModel = 'austen-gpt';
  const austen = join(defaultRepositoryPath(), 'austen-gpt');
  if (existsSync(join(austen, 'config.json')) || existsSync(join(austen, 'config.yaml'))) {
    cpSync(austen, join(root, 'austen-gpt'), { recursive: true });
  } else {
    generationModel = 'tiny-gpt2';
    writeFixtureRepository(root, { models: ['tiny-gpt2'], generation: { maxConcurrentSequences: 16 } });
  }
  writeFileSync(keysFile(root), `- id: bench\n  key: ${KEY}\n`);
  return { root, generationModel };
}

// ---------------------------------------------------------------- raw

interface RawResult {
  batch1: Stats;
  byBatch: Record<number, number>;
  bestBatch: number;
  best: number;
}

async function raw(root: string, model: BenchModel, registry: TokenizerRegistry): Promise<RawResult> {
  const config = readModelConfig(join(root, model.name), model.name);
  const tokenizer = registry.get(config.tokenizer?.name ?? model.name)!;
  const session = await ort.InferenceSession.create(join(root, model.name, '1', 'model.onnx'), {
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
  });
  const inputNames = config.inputs.map((i) => i.name);
  const texts = sentences(512, model.words);
  let next = 0;
  const run = async (batch: number) => {
    const chunk = Array.from({ length: batch }, () => texts[next++ % texts.length]!);
    const encodings = await tokenizer.encodeBatch(chunk, undefined, {
      addSpecialTokens: config.tokenizer?.addSpecialTokens ?? true,
      padding: { strategy: 'longest', length: 0, side: 'right', padToMultipleOf: 0 },
      offsets: false,
      tokens: false,
    });
    const seq = encodings[0]!.ids.length;
    const column = (pick: (e: (typeof encodings)[number]) => number[]) =>
      new ort.Tensor('int64', BigInt64Array.from(encodings.flatMap(pick), BigInt), [batch, seq]);
    const feeds: Record<string, ort.Tensor> = {};
    if (inputNames.includes('input_ids')) feeds.input_ids = column((e) => e.ids);
    if (inputNames.includes('attention_mask')) feeds.attention_mask = column((e) => e.attentionMask);
    if (inputNames.includes('token_type_ids')) feeds.token_type_ids = column((e) => e.ids.map(() => 0));
    await session.run(feeds);
    return batch;
  };
  for (let i = 0; i < 20; i++) await run(1);
  const batch1 = await measure(1, () => run(1));
  const byBatch: Record<number, number> = { 1: batch1.rps };
  for (const batch of [8, 16, 32, 64].filter((b) => b <= config.maxBatchSize)) {
    for (let i = 0; i < 3; i++) await run(batch);
    byBatch[batch] = (await measure(1, () => run(batch))).rps;
  }
  await session.release();
  const [bestBatch, best] = Object.entries(byBatch).sort((a, b) => b[1] - a[1])[0]!;
  return { batch1, byBatch, bestBatch: Number(bestBatch), best };
}

// ---------------------------------------------------------------- processes

/** Runs this file in client mode in its own process, as real clients are; returns its JSON. */
/** Runs this file in a client process (`--client` mode unless the arguments name another flag). */
function client<T>(args: string[]): T {
  const flagged = args[0]?.startsWith('--') ? args : ['--client', ...args];
  const out = execFileSync(process.execPath, [__filename, ...flagged], {
    encoding: 'utf8',
    env: process.env,
    maxBuffer: 1 << 24,
  });
  return JSON.parse(out.trim().split('\n').pop()!) as T;
}

// ---------------------------------------------------------------- client mode

async function clientMode(args: string[]): Promise<void> {
  const [mode, address, model, wordsText, concurrencyList, pidList] = args as [
    string,
    string,
    string,
    string,
    string,
    string | undefined,
  ];
  const pids = pidList ? pidList.split(',').map(Number) : [];
  const maas = new MaasServiceClient(address, credentials.createInsecure(), {
    'grpc.max_receive_message_length': 64 << 20,
  });
  const metadata = new Metadata();
  metadata.set('authorization', `Bearer ${KEY}`);
  const concurrencies = concurrencyList.split(',').map(Number);
  const result: Record<number, unknown> = {};
  if (mode === 'classify' || mode === 'embed') {
    const texts = sentences(512, Number(wordsText));
    let next = 0;
    const one = () =>
      new Promise<number>((resolve, reject) => {
        const text = texts[next++ % texts.length]!;
        const done = (error: ServiceError | null) => (error ? reject(error) : resolve(1));
        if (mode === 'classify') {
          maas.classify(
            ClassifyRequest.fromPartial({ model, texts: [text] }),
            metadata,
            (e: ServiceError | null, _r: ClassifyResponse) => done(e),
          );
        } else {
          maas.embed(
            EmbedRequest.fromPartial({ model, texts: [text] }),
            metadata,
            (e: ServiceError | null, _r: EmbedResponse) => done(e),
          );
        }
      });
    for (let i = 0; i < 200; i++) await one();
    for (const c of concurrencies) {
      const before = pids.map(cpuMs);
      const stats = await measure(c, one);
      const requests = (stats.rps * MS) / 1000;
      stats.cpuUs = pids.map((pid, i) => ((cpuMs(pid) - before[i]!) * 1000) / requests);
      result[c] = stats;
    }
  } else {
    const maxNewTokens = Number(wordsText);
    const prompt =
      'It is a truth universally acknowledged, that a single man in possession of a good fortune';
    let seed = 0;
    let one: () => Promise<{ ttft: number; tokens: number }>;
    if (mode === 'generate-direct') {
      // Straight to the runner with pre-tokenized ids: no orchestrator, no detokenization.
      const [runnerAddress, tokenizerAddress] = address.split('|') as [string, string];
      const tokenizer = new TokenizerServiceClient(tokenizerAddress, credentials.createInsecure());
      const generation = new GenerationServiceClient(runnerAddress, credentials.createInsecure());
      const promptIds = await new Promise<number[]>((resolve, reject) =>
        tokenizer.encode(
          EncodeRequest.fromPartial({ tokenizer: model, texts: [prompt], addSpecialTokens: false }),
          (e, r) => (e ? reject(e) : resolve(r.encodings[0]!.ids)),
        ),
      );
      one = () =>
        new Promise((resolve, reject) => {
          const stream = generation.generate(
            RunnerGenerateRequest.fromPartial({
              modelName: model,
              promptIds,
              maxNewTokens,
              sampling: { temperature: 0.8, topK: 40, seed: String(++seed) },
            }),
          );
          let last: RunnerGenerateResponse | undefined;
          stream.on('data', (m: RunnerGenerateResponse) => (last = m));
          stream.on('error', reject);
          stream.on('end', () =>
            resolve({ ttft: last!.timing!.timeToFirstTokenMs, tokens: last!.generatedTokens }),
          );
        });
    } else
      one = () =>
        new Promise<{ ttft: number; tokens: number }>((resolve, reject) => {
          const stream = maas.generate(
            GenerateRequest.fromPartial({
              model,
              prompt,
              maxNewTokens,
              sampling: { temperature: 0.8, topK: 40, seed: String(++seed) },
            }),
            metadata,
          );
          let last: GenerateResponse | undefined;
          stream.on('data', (m: GenerateResponse) => (last = m));
          stream.on('error', reject);
          stream.on('end', () =>
            resolve({ ttft: last!.timeToFirstTokenMs, tokens: last!.usage!.generatedTokens }),
          );
        });
    await one();
    for (const streams of concurrencies) {
      const ttfts: number[] = [];
      let tokens = 0;
      const start = performance.now();
      await Promise.all(
        Array.from({ length: streams }, async () => {
          while (performance.now() - start < MS) {
            const r = await one();
            ttfts.push(r.ttft);
            tokens += r.tokens;
          }
        }),
      );
      const seconds = (performance.now() - start) / 1000;
      ttfts.sort((a, b) => a - b);
      result[streams] = {
        tokensPerSecond: tokens / seconds,
        perStream: tokens / seconds / streams,
        ttftP50: percentile(ttfts, 50),
        ttftP95: percentile(ttfts, 95),
        sequences: ttfts.length,
      };
    }
  }
  maas.close();
  console.log(JSON.stringify(result));
}

// ---------------------------------------------------------------- HTTP beside gRPC

interface TransportPoint {
  grpc: Stats;
  http: Stats;
}

interface StreamPoint {
  tokensPerSecond: number;
  /** Measured by the client: from sending the request to the first text arriving. */
  ttftP50: number;
}

/** One keep-alive POST with a JSON body; resolves with the body (and, for SSE, each `data:` payload). */
function httpPost(agent: Agent, url: URL, body: unknown, onEvent?: (data: string) => void): Promise<string> {
  return new Promise((resolve, reject) => {
    const payload = JSON.stringify(body);
    const request = httpRequest(
      url,
      {
        method: 'POST',
        agent,
        headers: {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(payload),
          authorization: `Bearer ${KEY}`,
        },
      },
      (response) => {
        let text = '';
        let pending = '';
        response.setEncoding('utf8');
        response.on('data', (chunk: string) => {
          if (!onEvent) return void (text += chunk);
          pending += chunk;
          let end;
          while ((end = pending.indexOf('\n\n')) >= 0) {
            onEvent(pending.slice(6, end)); // after 'data: '
            pending = pending.slice(end + 2);
          }
        });
        response.on('end', () =>
          response.statusCode === 200
            ? resolve(text)
            : reject(new Error(`HTTP ${response.statusCode}: ${text}`)),
        );
        response.on('error', reject);
      },
    );
    request.on('error', reject);
    request.end(payload);
  });
}

/**
 * The same requests over gRPC and over HTTP from one client process, in interleaved rounds (gRPC,
 * HTTP, gRPC, …) so that both see the same machine; the median round of each is reported.
 */
async function transportMode(args: string[]): Promise<void> {
  const [kind, grpcAddress, httpBase, model, sizeText, concurrencyList, roundsText] = args as [
    'classify' | 'embed' | 'generate',
    string,
    string,
    string,
    string,
    string,
    string,
  ];
  const rounds = Number(roundsText);
  const maas = new MaasServiceClient(grpcAddress, credentials.createInsecure());
  const metadata = new Metadata();
  metadata.set('authorization', `Bearer ${KEY}`);
  const agent = new Agent({ keepAlive: true, maxSockets: 256 });
  const result: Record<number, unknown> = {};
  const median = <T>(values: T[], key: (v: T) => number) =>
    [...values].sort((a, b) => key(a) - key(b))[Math.floor(values.length / 2)]!;
  if (kind !== 'generate') {
    const texts = sentences(512, Number(sizeText));
    let next = 0;
    const grpcOne = () =>
      new Promise<number>((resolve, reject) => {
        const text = texts[next++ % texts.length]!;
        const done = (error: ServiceError | null) => (error ? reject(error) : resolve(1));
        if (kind === 'classify')
          maas.classify(ClassifyRequest.fromPartial({ model, texts: [text] }), metadata, (e) => done(e));
        else maas.embed(EmbedRequest.fromPartial({ model, texts: [text] }), metadata, (e) => done(e));
      });
    const url = new URL(kind === 'classify' ? '/v1/classify' : '/v1/embeddings', httpBase);
    const httpOne = () => {
      const text = texts[next++ % texts.length]!;
      const body =
        kind === 'classify' ? { model, texts: [text] } : { model, input: text, encoding_format: 'float' };
      return httpPost(agent, url, body).then(() => 1);
    };
    for (let i = 0; i < 300; i++) await Promise.all([grpcOne(), httpOne()]);
    for (const c of concurrencyList.split(',').map(Number)) {
      const grpc: Stats[] = [];
      const http: Stats[] = [];
      for (let r = 0; r < rounds; r++) {
        grpc.push(await measure(c, grpcOne, MS / rounds));
        http.push(await measure(c, httpOne, MS / rounds));
      }
      result[c] = {
        grpc: median(grpc, (s) => s.rps),
        http: median(http, (s) => s.rps),
      } satisfies TransportPoint;
    }
  } else {
    const maxNewTokens = Number(sizeText);
    const prompt =
      'It is a truth universally acknowledged, that a single man in possession of a good fortune';
    let seed = 0;
    const sampling = { temperature: 0.8, topK: 40 };
    const grpcOne = () =>
      new Promise<{ ttft: number; tokens: number }>((resolve, reject) => {
        const sent = performance.now();
        let ttft = 0;
        const stream = maas.generate(
          GenerateRequest.fromPartial({
            model,
            prompt,
            maxNewTokens,
            sampling: { ...sampling, seed: String(++seed) },
          }),
          metadata,
        );
        let last: GenerateResponse | undefined;
        stream.on('data', (m: GenerateResponse) => {
          if (!ttft && m.text) ttft = performance.now() - sent;
          last = m;
        });
        stream.on('error', reject);
        stream.on('end', () => resolve({ ttft, tokens: last!.usage!.generatedTokens }));
      });
    const url = new URL('/v1/completions', httpBase);
    const httpOne = async () => {
      const sent = performance.now();
      let ttft = 0;
      let tokens = 0;
      await httpPost(
        agent,
        url,
        {
          model,
          prompt,
          max_tokens: maxNewTokens,
          temperature: sampling.temperature,
          top_k: sampling.topK,
          seed: ++seed,
          stream: true,
          stream_options: { include_usage: true },
        },
        (data) => {
          if (data === '[DONE]') return;
          const chunk = JSON.parse(data) as {
            choices: { text: string }[];
            usage?: { completion_tokens: number };
          };
          if (!ttft && chunk.choices[0]?.text) ttft = performance.now() - sent;
          if (chunk.usage) tokens = chunk.usage.completion_tokens;
        },
      );
      return { ttft, tokens };
    };
    await grpcOne();
    await httpOne();
    const run = async (streams: number, one: typeof grpcOne, ms: number): Promise<StreamPoint> => {
      const ttfts: number[] = [];
      let tokens = 0;
      const start = performance.now();
      await Promise.all(
        Array.from({ length: streams }, async () => {
          while (performance.now() - start < ms) {
            const r = await one();
            ttfts.push(r.ttft);
            tokens += r.tokens;
          }
        }),
      );
      ttfts.sort((a, b) => a - b);
      return {
        tokensPerSecond: tokens / ((performance.now() - start) / 1000),
        ttftP50: percentile(ttfts, 50),
      };
    };
    for (const streams of concurrencyList.split(',').map(Number)) {
      const grpc: StreamPoint[] = [];
      const http: StreamPoint[] = [];
      for (let r = 0; r < rounds; r++) {
        grpc.push(await run(streams, grpcOne, MS / rounds));
        http.push(await run(streams, httpOne, MS / rounds));
      }
      result[streams] = {
        grpc: median(grpc, (p) => p.tokensPerSecond),
        http: median(http, (p) => p.tokensPerSecond),
      };
    }
  }
  agent.destroy();
  maas.close();
  console.log(JSON.stringify(result));
}

// ---------------------------------------------------------------- pass-through chain

/** A stub tokenizer / runner answering at once, or the front that calls both per request (like the real path). */
async function passThroughMode([role, portText, tokenizerAddress, runnerAddress, model]: string[]) {
  const server = new Server({ 'grpc.max_receive_message_length': 64 << 20 });
  if (role === 'tokenizer') {
    const ids = Array.from({ length: 12 }, (_, i) => 100 + i);
    const encoded: EncodeResponse = {
      encodings: [
        {
          ids,
          attentionMask: ids.map(() => 1),
          typeIds: ids.map(() => 0),
          specialTokensMask: [],
          offsets: [],
          tokens: [],
          length: ids.length,
          truncated: false,
        },
      ],
      totalTokens: ids.length,
    };
    server.addService(TokenizerServiceService, {
      encode: (_call: unknown, callback: (e: null, r: EncodeResponse) => void) => callback(null, encoded),
    } as unknown as UntypedServiceImplementation);
  } else if (role === 'runner') {
    const values = Buffer.alloc(176 * 4);
    const inferred: ModelInferResponse = {
      modelName: model!,
      modelVersion: '1',
      id: '',
      parameters: {},
      outputs: [{ name: 'out', datatype: 'FP32', shape: [1, 176], parameters: {}, contents: undefined }],
      rawOutputContents: [values],
    };
    server.addService(GRPCInferenceServiceService, {
      modelInfer: (_call: unknown, callback: (e: null, r: ModelInferResponse) => void) =>
        callback(null, inferred),
    } as unknown as UntypedServiceImplementation);
  } else {
    const tokenizer = new TokenizerServiceClient(tokenizerAddress!, credentials.createInsecure());
    const runner = new GRPCInferenceServiceClient(runnerAddress!, credentials.createInsecure());
    // The echo answers the same Classify/Embed messages at once, calling nothing: the bare grpc-js server.
    const echo = (_texts: string[], respond: (error: ServiceError | null) => void) => respond(null);
    const front = (texts: string[], respond: (error: ServiceError | null) => void) =>
      tokenizer.encode(
        {
          tokenizer: model!,
          texts,
          textPairs: [],
          addSpecialTokens: true,
          truncation: undefined,
          padding: {
            strategy: PaddingStrategy.PADDING_STRATEGY_LONGEST,
            length: 0,
            side: 0,
            padToMultipleOf: 0,
          },
          returnOffsets: false,
          returnTokens: false,
        },
        (error, encoded) => {
          if (error) return respond(error);
          const ids = encoded.encodings[0]!.ids;
          runner.modelInfer(
            {
              modelName: model!,
              modelVersion: '',
              id: '',
              parameters: {},
              inputs: [
                {
                  name: 'input_ids',
                  datatype: 'INT64',
                  shape: [1, ids.length],
                  parameters: {},
                  contents: undefined,
                },
              ],
              outputs: [],
              rawInputContents: [Buffer.from(BigInt64Array.from(ids, BigInt).buffer)],
            },
            (e) => respond(e),
          );
        },
      );
    const pass = role === 'echo' ? echo : front;
    server.addService(MaasServiceService, {
      classify: (
        call: { request: ClassifyRequest },
        callback: (e: ServiceError | null, r?: ClassifyResponse) => void,
      ) =>
        pass(call.request.texts, (e) =>
          e
            ? callback(e)
            : callback(null, {
                results: [{ labels: [{ label: 'en', score: 0.9, index: 0 }] }],
                modelVersion: '1',
                usage: { promptTokens: 12, generatedTokens: 0, totalTokens: 12, cachedPromptTokens: 0 },
              }),
        ),
      embed: (
        call: { request: EmbedRequest },
        callback: (e: ServiceError | null, r?: EmbedResponse) => void,
      ) =>
        pass(call.request.texts, (e) =>
          e
            ? callback(e)
            : callback(null, {
                embeddings: [{ values: new Array(100).fill(0.1) }],
                dimensions: 100,
                modelVersion: '1',
                usage: { promptTokens: 12, generatedTokens: 0, totalTokens: 12, cachedPromptTokens: 0 },
              }),
        ),
    } as unknown as UntypedServiceImplementation);
  }
  // Health, so that the same readiness wait applies.
  const { HealthImplementation } = require('grpc-health-check') as typeof import('grpc-health-check');
  new HealthImplementation({ '': 'SERVING' }).addToServer(server);
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`127.0.0.1:${portText}`, ServerCredentials.createInsecure(), (e) =>
      e ? reject(e) : resolve(),
    ),
  );
}

/** The bare stack beside the orchestrator: the pass-through chain, and an echo of the same messages. */
async function passThroughChain(
  model: BenchModel,
): Promise<{ chain: Record<number, Stats>; echo: Record<number, Stats> }> {
  const [front, tok, run, echo] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const tokAddress = `127.0.0.1:${tok}`;
  const runAddress = `127.0.0.1:${run}`;
  const chain = [
    startProcess(
      __filename,
      ['--pass-through', 'front', String(front), tokAddress, runAddress, model.name],
      {},
    ),
    startProcess(__filename, ['--pass-through', 'tokenizer', String(tok), '-', '-', model.name], {}),
    startProcess(__filename, ['--pass-through', 'runner', String(run), '-', '-', model.name], {}),
  ];
  const echoServer = startProcess(
    __filename,
    ['--pass-through', 'echo', String(echo), '-', '-', model.name],
    {},
  );
  await Promise.all([front, tok, run, echo].map(waitServing));
  const mode = model.task === 'classification' ? 'classify' : 'embed';
  /** The same client load on `port`, with the CPU per request of `servers`. */
  const load = (port: number, servers: typeof chain) =>
    client<Record<number, Stats>>([
      mode,
      `127.0.0.1:${port}`,
      model.name,
      String(model.words),
      '1,64',
      servers.map((c) => c.pid).join(','),
    ]);
  const result = { chain: load(front, chain), echo: load(echo, [echoServer]) };
  for (const child of [...chain, echoServer]) {
    process.kill(-child.pid!, 'SIGKILL');
    children.splice(children.indexOf(child), 1);
  }
  return result;
}

// ---------------------------------------------------------------- peer: transformers.js in process

/**
 * The same BERT-style model laid out as transformers.js reads a local model (config.json with the
 * labels, the tokenizer files, onnx/model.onnx), under `<root>/peer/<name>`.
 */
function preparePeer(root: string, name: string): string {
  const peerRoot = join(root, 'peer');
  const dir = join(peerRoot, name);
  mkdirSync(join(dir, 'onnx'), { recursive: true });
  copyFileSync(join(root, name, '1', 'model.onnx'), join(dir, 'onnx', 'model.onnx'));
  for (const file of ['tokenizer.json', 'tokenizer_config.json'])
    copyFileSync(join(root, name, '1', file), join(dir, file));
  const declared = readModelConfig(join(root, name), name).labels ?? [];
  const labels = Array.isArray(declared)
    ? declared
    : readFileSync(join(root, name, '1', declared), 'utf8')
        .trim()
        .split('\n');
  writeFileSync(
    join(dir, 'config.json'),
    JSON.stringify({
      model_type: 'bert',
      architectures: ['BertForSequenceClassification'],
      id2label: Object.fromEntries(labels.map((l, i) => [i, l])),
      label2id: Object.fromEntries(labels.map((l, i) => [l, i])),
    }),
  );
  return peerRoot;
}

/** What a Node.js user would write instead of maas: one transformers.js pipeline call per request. */
async function peerMode([peerRoot, model, wordsText, concurrencyList, threads]: string[]): Promise<void> {
  const { pipeline, env } = await import('@huggingface/transformers');
  env.allowRemoteModels = false;
  env.localModelPath = peerRoot!;
  const classify = await pipeline('text-classification', model!, {
    dtype: 'fp32',
    device: 'cpu',
    // 'default': onnxruntime's own choice (one intra-op thread per core), what a user gets.
    ...(threads === 'default' ? {} : { session_options: { intraOpNumThreads: Number(threads) } }),
  });
  const texts = sentences(512, Number(wordsText));
  let next = 0;
  const one = async () => {
    await classify(texts[next++ % texts.length]!);
    return 1;
  };
  for (let i = 0; i < 20; i++) await one();
  const result: Record<number, Stats> = {};
  for (const c of concurrencyList!.split(',').map(Number)) result[c] = await measure(c, one);
  console.log(JSON.stringify(result));
}

// ---------------------------------------------------------------- report

const f0 = (n: number) => n.toFixed(0);
const f2 = (n: number) => n.toFixed(2);
const pct = (a: number, b: number) => `${((a / b) * 100).toFixed(0)}%`;
const cpu = (s: Stats, names: string[]) =>
  s.cpuUs ? `cpu/request ${names.map((n, i) => `${n} ${f0(s.cpuUs![i]!)} µs`).join(', ')}` : '';

async function main(): Promise<void> {
  const { root, generationModel } = prepareRepository();
  console.log(
    `maas end-to-end benchmark — ${MS} ms per point, ${require('node:os').cpus().length} CPUs, ` +
      `load average ${require('node:os')
        .loadavg()
        .map((l: number) => l.toFixed(1))
        .join(' ')}\n`,
  );

  console.log('1. raw, in this process: tokenizer library + onnxruntime session.run (1 intra-op thread)');
  const registry = new TokenizerRegistry({
    repository: root,
    logger: createLogger({ service: 'bench', level: 'silent' }),
  });
  await registry.reload();
  const raws = new Map<string, RawResult>();
  for (const model of MODELS) {
    const r = await raw(root, model, registry);
    raws.set(model.name, r);
    console.log(
      `  ${model.name.padEnd(12)} batch 1: ${f0(r.batch1.rps)}/s, p50 ${f2(r.batch1.p50)} ms, p95 ${f2(r.batch1.p95)}, p99 ${f2(r.batch1.p99)}` +
        ` | items/s by batch ${Object.entries(r.byBatch)
          .map(([b, v]) => `${b}:${f0(v)}`)
          .join(' ')} | best ${r.bestBatch}: ${f0(r.best)}/s`,
    );
  }
  registry.close();

  console.log(
    '\n2. through the orchestrator (3 processes, API key, audit log), single-text requests, client in its own process',
  );
  const stack = await startStack(root);
  const served = new Map<string, Record<number, Stats>>();
  for (const model of MODELS) {
    const mode = model.task === 'classification' ? 'classify' : 'embed';
    const stats = client<Record<number, Stats>>([
      mode,
      stack.address,
      model.name,
      String(model.words),
      CONCURRENCY.join(','),
      stack.pids.join(','),
    ]);
    served.set(model.name, stats);
    const r = raws.get(model.name)!;
    console.log(`  ${model.name}:`);
    for (const c of CONCURRENCY) {
      const s = stats[c]!;
      console.log(
        `    c=${String(c).padEnd(2)} ${f0(s.rps).padStart(6)}/s  p50 ${f2(s.p50)} ms  p95 ${f2(s.p95)}  p99 ${f2(s.p99)}` +
          `  | ${pct(s.rps, r.best)} of raw best batch, ${pct(s.rps, r.batch1.rps)} of raw batch 1 | ${cpu(s, ['orchestrator', 'tokenizer', 'runner'])}`,
      );
    }
    const extra = stats[1]!.p50 - r.batch1.p50;
    console.log(
      `    → p50 at c=1 is ${f2(extra)} ms above raw batch 1 (target ≤ 1.5 ms: ${extra <= 1.5 ? 'met' : 'NOT met'})` +
        (r.batch1.p50 >= 2
          ? `; c=32 throughput ${pct(stats[32]!.rps, r.best)} of raw best batch (target ≥ 70%: ${stats[32]!.rps >= 0.7 * r.best ? 'met' : 'NOT met'})`
          : ''),
    );
    if (model.passThrough) {
      // Measured right after, with the (idle) stack still up, so both see the same machine.
      const { chain, echo } = await passThroughChain(model);
      const ours = stats[64]!.rps;
      /** CPU per request of the first process at c=1 over that at c=64. */
      const cpuGrowth = (points: Record<number, Stats>) => points[1]!.cpuUs![0]! / points[64]!.cpuUs![0]!;
      const ourGrowth = cpuGrowth(stats);
      console.log(
        `    pass-through chain (client → front → tokenizer stub + runner stub, minimal grpc-js): ` +
          `c=1 p50 ${f2(chain[1]!.p50)} ms (the hops alone; orchestrator p50 is ${f2(stats[1]!.p50 - chain[1]!.p50)} ms above it), ` +
          `c=64 ${f0(chain[64]!.rps)}/s, p50 ${f2(chain[64]!.p50)} ms | ${cpu(chain[64]!, ['front', 'tokenizer stub', 'runner stub'])}\n` +
          `    → orchestrator ${f0(ours)}/s at c=64 is ${pct(ours, chain[64]!.rps)} of the chain (target ≥ 50%: ${ours >= 0.5 * chain[64]!.rps ? 'met' : 'NOT met'})\n` +
          `    bare grpc-js echo of the same messages: c=1 p50 ${f2(echo[1]!.p50)} ms, c=64 ${f0(echo[64]!.rps)}/s | cpu/request c=1 ${f0(echo[1]!.cpuUs![0]!)} µs, c=64 ${f0(echo[64]!.cpuUs![0]!)} µs\n` +
          `    → orchestrator at c=64 is ${pct(ours, echo[64]!.rps)} of the echo (target ≥ 70%: ${ours >= 0.7 * echo[64]!.rps ? 'met' : 'NOT met'}); ` +
          `p50 at c=1 ${f2(stats[1]!.p50 - chain[1]!.p50)} ms above the chain's (target ≤ 1.0 ms: ${stats[1]!.p50 - chain[1]!.p50 <= 1 ? 'met' : 'NOT met'}); ` +
          `orchestrator CPU per request at c=1 is ${ourGrowth.toFixed(1)}× that at c=64 (target ≤ 2.5×: ${ourGrowth <= 2.5 ? 'met' : 'NOT met'}; ` +
          `the chain's front ${cpuGrowth(chain).toFixed(1)}×, the echo ${cpuGrowth(echo).toFixed(1)}×)`,
      );
    }
  }

  const big = served.get(BIG);
  if (big) {
    // After the stack's section, so the two never share the cores.
    const peerRoot = preparePeer(root, BIG);
    const peer = client<Record<number, Stats>>(['--peer', peerRoot, BIG, '48', '1,32', 'default']);
    // The runner's sessions use one intra-op thread (the other core serves the hops): the same here.
    const peerOne = client<Record<number, Stats>>(['--peer', peerRoot, BIG, '48', '32', '1']);
    console.log(
      `  ${BIG} in transformers.js (@huggingface/transformers, in process, one pipeline call per request): ` +
        `onnxruntime's default threads c=1 ${f0(peer[1]!.rps)}/s p50 ${f2(peer[1]!.p50)} ms, c=32 ${f0(peer[32]!.rps)}/s p50 ${f2(peer[32]!.p50)} ms; ` +
        `1 intra-op thread c=32 ${f0(peerOne[32]!.rps)}/s\n` +
        `    → maas at c=32 (${f0(big[32]!.rps)}/s) is ${(big[32]!.rps / peer[32]!.rps).toFixed(2)}× transformers.js (target ≥ 1.2×: ${big[32]!.rps >= 1.2 * peer[32]!.rps ? 'met' : 'NOT met'}); ` +
        `${(big[32]!.rps / peerOne[32]!.rps).toFixed(2)}× transformers.js on one thread`,
    );
  }

  if (process.env.BENCH_GENERATION === '0') {
    stopAll();
    return;
  }
  console.log(
    `\n3. generation through the orchestrator (${generationModel}, 48 new tokens per sequence, sampled)`,
  );
  const generation = client<
    Record<
      number,
      { tokensPerSecond: number; perStream: number; ttftP50: number; ttftP95: number; sequences: number }
    >
  >(['generate', stack.address, generationModel, '48', '1,16']);
  const direct = client<typeof generation>(['generate-direct', stack.direct, generationModel, '48', '1,16']);
  for (const streams of [1, 16]) {
    const g = generation[streams]!;
    const d = direct[streams]!;
    console.log(
      `  ${String(streams).padStart(2)} stream(s): ${f0(g.tokensPerSecond)} tokens/s total, ${f0(g.perStream)} per stream, ` +
        `time to first token p50 ${f2(g.ttftP50)} ms, p95 ${f2(g.ttftP95)} ms (${g.sequences} sequences)` +
        ` | runner direct (token ids, no detokenization): ${f0(d.tokensPerSecond)} tokens/s, ttft p50 ${f2(d.ttftP50)} ms` +
        ` → ${pct(g.tokensPerSecond, d.tokensPerSecond)}`,
    );
  }
  stopAll();

  if (process.env.BENCH_HTTP !== '0') {
    // BENCH_MS per point, split into interleaved rounds.
    const rounds = Number(process.env.BENCH_HTTP_ROUNDS ?? 3);
    console.log(
      `\n5. HTTP beside gRPC, same orchestrator, same client process, ${rounds} interleaved rounds per point (median round)`,
    );
    const httpStack = await startStack(root);
    for (const [kind, model, route] of [
      ['classify', 'lang-id', '/v1/classify'],
      ['embed', 'glove-embed', '/v1/embeddings'],
    ] as const) {
      const points = client<Record<number, TransportPoint>>([
        '--transport',
        kind,
        httpStack.address,
        httpStack.http,
        model,
        '10',
        '1,64',
        String(rounds),
      ]);
      for (const c of [1, 64]) {
        const { grpc, http } = points[c]!;
        console.log(
          `  ${kind.padEnd(8)} ${model.padEnd(11)} c=${String(c).padEnd(2)} gRPC ${f0(grpc.rps)}/s p50 ${f2(grpc.p50)} ms p99 ${f2(grpc.p99)}` +
            ` | HTTP ${route} ${f0(http.rps)}/s p50 ${f2(http.p50)} ms p99 ${f2(http.p99)} → ${pct(http.rps, grpc.rps)} of gRPC` +
            (c === 64 ? ` (target ≥ 80%: ${http.rps >= 0.8 * grpc.rps ? 'met' : 'NOT met'})` : ''),
        );
      }
    }
    const streams = client<Record<number, { grpc: StreamPoint; http: StreamPoint }>>([
      '--transport',
      'generate',
      httpStack.address,
      httpStack.http,
      generationModel,
      '48',
      '1,16',
      String(rounds),
    ]);
    for (const n of [1, 16]) {
      const { grpc, http } = streams[n]!;
      console.log(
        `  completions ${generationModel} ${String(n).padStart(2)} stream(s): gRPC Generate ${f0(grpc.tokensPerSecond)} tokens/s, ttft p50 ${f2(grpc.ttftP50)} ms` +
          ` | HTTP /v1/completions (SSE) ${f0(http.tokensPerSecond)} tokens/s, ttft p50 ${f2(http.ttftP50)} ms` +
          ` → ${pct(http.tokensPerSecond, grpc.tokensPerSecond)} of gRPC (target ≥ 90%: ${http.tokensPerSecond >= 0.9 * grpc.tokensPerSecond ? 'met' : 'NOT met'})`,
      );
    }
    stopAll();
  }

  if (process.env.BENCH_WINDOW === '0') return;
  const windowUs = Number(process.env.BENCH_WINDOW_US ?? 1000);
  console.log(`\n4. coalescing window BATCH_WINDOW_US=${windowUs} instead of 0 (lang-id)`);
  const windowed = await startStack(root, { BATCH_WINDOW_US: String(windowUs) });
  const w = client<Record<number, Stats>>(['classify', windowed.address, 'lang-id', '10', '1,64']);
  console.log(
    `    c=1 ${f0(w[1]!.rps)}/s p50 ${f2(w[1]!.p50)} ms; c=64 ${f0(w[64]!.rps)}/s p50 ${f2(w[64]!.p50)} ms` +
      ` (window 0: c=1 p50 ${f2(served.get('lang-id')![1]!.p50)} ms, c=64 ${f0(served.get('lang-id')![64]!.rps)}/s)`,
  );
  stopAll();
}

process.on('exit', stopAll);
process.on('SIGINT', () => process.exit(130));
const [flag, ...rest] = process.argv.slice(2);
if (flag === '--transport') {
  transportMode(rest).catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
} else if (flag === '--client') {
  clientMode(rest).catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
} else if (flag === '--peer') {
  peerMode(rest).catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
} else if (flag === '--pass-through') {
  passThroughMode(rest).catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
} else {
  main().then(
    () => process.exit(0),
    (error: unknown) => {
      console.error(error);
      process.exit(1);
    },
  );
}
