/**
 * npm run bench:tokenizer — (1) the two candidate libraries in process;
 * (2) tokens/s of the chosen one in process vs. through the gRPC service on
 * 127.0.0.1 (in a child process, as in production), for a batch of 64
 * sentences and for single short texts, plus single-text latency.
 * BENCH_MS sets the time per measurement (default 3000).
 */
import { fork } from 'node:child_process';
import { join } from 'node:path';
import { cpus, loadavg } from 'node:os';
import { createClient, defaultRepositoryPath } from '@maas/shared';
import { checkHealth } from '@maas/shared/testing';
import { prepareParityTokenizers } from '@maas/models';
import {
  type EncodeRequest,
  type EncodeResponse,
  TokenizerServiceClient,
} from '@maas/shared/gen/maas/tokenizer/v1/tokenizer';
import { Tokenizer as RustTokenizer } from '@anush008/tokenizers';
import { readFileSync } from 'node:fs';
import { HuggingFaceTokenizer } from '../src/huggingface-tokenizer.js';
import { compareLibraries, probeFeatures } from './libraries.js';
import { BATCH, fmt, latencies, pct, SHORT, tokensPerSecond } from './measure.js';

const MS = Number(process.env.BENCH_MS ?? 3000);
const NAME = process.env.BENCH_TOKENIZER ?? 'gpt2';

async function startService(tokenizerDir: string): Promise<{ address: string; stop(): void }> {
  const port = 47000 + Math.floor(Math.random() * 1000);
  const child = fork(join(__dirname, '..', 'src', 'main.js'), [], {
    env: {
      ...process.env,
      GRPC_PORT: String(port),
      METRICS_PORT: '-1',
      TOKENIZER_DIR: tokenizerDir,
      TOKENIZER_WATCH: 'false',
      LOG_LEVEL: 'warn',
    },
  });
  const address = `127.0.0.1:${port}`;
  for (let i = 0; i < 300; i++) {
    if ((await checkHealth(address).catch(() => 'DOWN')) === 'SERVING') break;
    await new Promise((r) => setTimeout(r, 100));
  }
  return { address, stop: () => child.kill('SIGTERM') };
}

async function main() {
  const files = prepareParityTokenizers();
  console.log(
    `tokenizer benchmark: ${MS} ms per measurement, ${cpus().length} CPUs, load average ${loadavg()[0]!.toFixed(1)}\n`,
  );

  console.log('1. Libraries in process (tokens/s; TypeScript encodes one text at a time)');
  console.log(
    `${'tokenizer'.padEnd(20)}${'batch 64: Rust'.padStart(16)}${'TS'.padStart(12)}${'single: Rust'.padStart(16)}${'TS'.padStart(12)}`,
  );
  for (const row of await compareLibraries(files, MS / 2)) {
    console.log(
      `${row.tokenizer.padEnd(20)}${fmt(row.rustBatch).padStart(16)}${fmt(row.tsBatch).padStart(12)}${fmt(row.rustSingle).padStart(16)}${fmt(row.tsSingle).padStart(12)}`,
    );
  }
  console.log(
    '\nfeatures the service needs            Rust (@anush008/tokenizers)    TS (@huggingface/tokenizers)',
  );
  const glove = join(defaultRepositoryPath(), 'glove-embed', '1', 'tokenizer.json');
  for (const [feature, rust, ts] of await probeFeatures(files, glove)) {
    console.log(`${feature.padEnd(38)}${rust.padEnd(31)}${ts}`);
  }

  console.log(
    `\n2. The service (${NAME}, Rust library): in process vs. gRPC on 127.0.0.1 (server in a child process)`,
  );
  const path = files[NAME as keyof typeof files];
  const raw = RustTokenizer.fromString(readFileSync(path, 'utf8'));
  const tokenizer = await HuggingFaceTokenizer.load({ name: NAME, path });
  const options = { addSpecialTokens: true, offsets: false, tokens: false };
  const count = (encodings: { length: number }[]) => encodings.reduce((n, e) => n + e.length, 0);
  const library = {
    batch: await tokensPerSecond(async () => {
      let n = 0;
      for (const e of await raw.encodeBatch(BATCH)) n += e.getIds().length;
      return n;
    }, MS),
    single: await tokensPerSecond(async () => (await raw.encode(SHORT)).getIds().length, MS),
  };
  const inProcess = {
    batch: await tokensPerSecond(
      async () => count(await tokenizer.encodeBatch(BATCH, undefined, options)),
      MS,
    ),
    single: await tokensPerSecond(
      async () => count(await tokenizer.encodeBatch([SHORT], undefined, options)),
      MS,
    ),
    latency: await latencies(() => tokenizer.encodeBatch([SHORT], undefined, options), 3000),
  };

  const service = await startService(join(path, '..', '..'));
  try {
    const client = createClient(TokenizerServiceClient, service.address);
    const encode = (texts: string[], extra: Partial<EncodeRequest> = {}) =>
      new Promise<EncodeResponse>((resolve, reject) =>
        client.encode({ tokenizer: NAME, texts, textPairs: [], ...extra } as EncodeRequest, (e, r) =>
          e ? reject(e) : resolve(r),
        ),
      );
    const grpc = {
      batch: await tokensPerSecond(async () => (await encode(BATCH)).totalTokens, MS),
      batchOffsets: await tokensPerSecond(
        async () => (await encode(BATCH, { returnOffsets: true })).totalTokens,
        MS,
      ),
      batch4: await tokensPerSecond(async () => (await encode(BATCH)).totalTokens, MS, 4),
      single: await tokensPerSecond(async () => (await encode([SHORT])).totalTokens, MS),
      single8: await tokensPerSecond(async () => (await encode([SHORT])).totalTokens, MS, 8),
      latency: await latencies(() => encode([SHORT]), 3000),
    };
    client.close();

    const row = (label: string, a: number, b: number) =>
      console.log(`${label.padEnd(44)}${fmt(a).padStart(14)}${fmt(b).padStart(14)}${pct(b, a).padStart(9)}`);
    console.log(
      `${'tokens/s'.padEnd(44)}${'in process'.padStart(14)}${'gRPC'.padStart(14)}${'ratio'.padStart(9)}`,
    );
    row('batch of 64 sentences (vs. library call)', library.batch, grpc.batch);
    row('batch of 64 sentences (vs. service domain)', inProcess.batch, grpc.batch);
    row('batch of 64, with offsets', inProcess.batch, grpc.batchOffsets);
    row('batch of 64, 4 calls in flight', inProcess.batch, grpc.batch4);
    row('single short text (vs. library call)', library.single, grpc.single);
    row('single short text, 8 calls in flight', library.single, grpc.single8);
    console.log(
      `\nsingle short text latency: in process p50 ${inProcess.latency.p50.toFixed(3)} ms, p99 ${inProcess.latency.p99.toFixed(3)} ms; ` +
        `gRPC loopback p50 ${grpc.latency.p50.toFixed(3)} ms, p99 ${grpc.latency.p99.toFixed(3)} ms`,
    );
    console.log(
      `targets: gRPC batch-64 ≥ 80% of in process: ${pct(grpc.batch, library.batch)} of the library call; ` +
        `single short text p50 < 1 ms: ${grpc.latency.p50.toFixed(3)} ms`,
    );
  } finally {
    service.stop();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
