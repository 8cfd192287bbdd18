/**
 * npm run bench:tokenizer — tokens/s in-process vs. through the gRPC service on
 * 127.0.0.1 (a separate process, as in production), batch 64 and single texts.
 */
import { fork } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient } from '@maas/shared';
import { checkHealth } from '@maas/shared/testing';
import { writeParityTokenizers } from '@maas/models';
import { TokenizerServiceClient, type EncodeResponse } from '@maas/shared/gen/maas/tokenizer/v1/tokenizer';
import { HuggingFaceTokenizer } from '../src/huggingface-tokenizer.js';

const SENTENCES = [
  'The quick brown fox jumps over the lazy dog near the riverbank.',
  'It is a truth universally acknowledged, that a single man in possession of a good fortune must be in want of a wife.',
  'Models as a service put ONNX models behind a fast, metered, observable gRPC API.',
  'Numbers like 3.14159 and dates like 2024-11-24 tokenize into several pieces.',
  'Emoji 🙂 and accents like café and naïve are handled as bytes.',
  'function add(a, b) { return a + b; }',
  'She walked to the station, bought a ticket, and waited for the evening train.',
  'The committee postponed its decision until the next quarterly meeting.',
];
const BATCH = Array.from({ length: 64 }, (_, i) => SENTENCES[i % SENTENCES.length]!);
const SHORT = 'Hello, world!';
const DURATION_MS = Number(process.env.BENCH_MS ?? 3000);

/** Tokens/s with `concurrency` calls in flight (each loop issues its next call when the last returns). */
async function timed(
  run: () => Promise<number>,
  concurrency = 1,
): Promise<{ tokensPerSecond: number; calls: number }> {
  for (let i = 0; i < 20; i++) await run();
  let tokens = 0;
  let calls = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() - start < DURATION_MS) {
        tokens += await run();
        calls++;
      }
    }),
  );
  return { tokensPerSecond: (tokens / (performance.now() - start)) * 1000, calls };
}

async function latencies(run: () => Promise<unknown>, n = 2000): Promise<{ p50: number; p99: number }> {
  for (let i = 0; i < 100; i++) await run();
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    const start = performance.now();
    await run();
    samples.push(performance.now() - start);
  }
  samples.sort((a, b) => a - b);
  return { p50: samples[Math.floor(n * 0.5)]!, p99: samples[Math.floor(n * 0.99)]! };
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'maas-bench-'));
  const files = writeParityTokenizers(dir);
  const tokenizer = await HuggingFaceTokenizer.load({ name: 'gpt2', path: files.gpt2 });
  const options = { addSpecialTokens: true, offsets: false, tokens: false };
  const inProcessBatch = await timed(async () =>
    (await tokenizer.encodeBatch(BATCH, undefined, options)).reduce((n, e) => n + e.length, 0),
  );
  const inProcessSingle = await timed(
    async () => (await tokenizer.encodeBatch([SHORT], undefined, options))[0]!.length,
  );
  const inProcessLatency = await latencies(() => tokenizer.encodeBatch([SHORT], undefined, options));

  const port = 47000 + Math.floor(Math.random() * 1000);
  const child = fork(join(__dirname, '..', 'src', 'main.js'), [], {
    env: {
      ...process.env,
      GRPC_PORT: String(port),
      METRICS_PORT: '-1',
      TOKENIZER_DIR: dir,
      LOG_LEVEL: 'warn',
    },
  });
  try {
    const address = `127.0.0.1:${port}`;
    for (let i = 0; i < 100; i++) {
      if ((await checkHealth(address).catch(() => 'DOWN')) === 'SERVING') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const client = createClient(TokenizerServiceClient, address);
    const encode = (texts: string[]) =>
      new Promise<EncodeResponse>((resolve, reject) =>
        client.encode({ tokenizer: 'gpt2', texts, textPairs: [] } as never, (e, r) =>
          e ? reject(e) : resolve(r),
        ),
      );
    const grpcBatch = await timed(async () => (await encode(BATCH)).totalTokens);
    const grpcBatch4 = await timed(async () => (await encode(BATCH)).totalTokens, 4);
    const grpcSingle = await timed(async () => (await encode([SHORT])).totalTokens);
    const grpcLatency = await latencies(() => encode([SHORT]));
    client.close();

    const row = (label: string, a: number, b: number) =>
      console.log(
        `${label.padEnd(34)} ${a.toFixed(0).padStart(12)} ${b.toFixed(0).padStart(12)} ${((b / a) * 100).toFixed(1).padStart(8)}%`,
      );
    console.log(
      `tokenizer: gpt2 (Rust tokenizers via @anush008/tokenizers), ${DURATION_MS} ms per measurement`,
    );
    console.log(
      `${'tokens/s'.padEnd(34)} ${'in-process'.padStart(12)} ${'gRPC'.padStart(12)} ${'ratio'.padStart(9)}`,
    );
    row('batch of 64 sentences', inProcessBatch.tokensPerSecond, grpcBatch.tokensPerSecond);
    row('batch of 64, 4 calls in flight', inProcessBatch.tokensPerSecond, grpcBatch4.tokensPerSecond);
    row('single short text', inProcessSingle.tokensPerSecond, grpcSingle.tokensPerSecond);
    console.log(
      `single short text latency: in-process p50 ${inProcessLatency.p50.toFixed(3)} ms p99 ${inProcessLatency.p99.toFixed(3)} ms; ` +
        `gRPC loopback p50 ${grpcLatency.p50.toFixed(3)} ms p99 ${grpcLatency.p99.toFixed(3)} ms`,
    );
    console.log(
      `target: batch-64 ratio >= 80% (${((grpcBatch.tokensPerSecond / inProcessBatch.tokensPerSecond) * 100).toFixed(1)}%), gRPC p50 < 1 ms (${grpcLatency.p50.toFixed(3)} ms)`,
    );
  } finally {
    child.kill('SIGTERM');
  }
}

void main();
