/**
 * bench:vision — ReadText (OCR) of a page-like image (the receipt fixture,
 * 7 lines) and of a single text line through the orchestrator (three
 * services from dist/, gRPC client in this process), beside the same
 * PaddleOCR models run in process by @gutenye/ocr-node: p50/p99 at c=1 and
 * images/s at c=8, interleaved rounds, median round reported, load average
 * printed. Target (issue 14): through the orchestrator at c=8 ≥ 80% of the
 * in-process pipeline's images/s.
 *
 *   BENCH_MS (default 4000) per point, BENCH_ROUNDS (default 3).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { defaultRepositoryPath } from '@maas/shared';
import { MaasServiceClient, type ReadTextResponse } from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import { percentile, startStack, stopAll } from './stack.js';

const MS = Number(process.env.BENCH_MS ?? 4000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const FIXTURES = join(__dirname, '..', '..', 'test', 'fixtures', 'ocr');
const REFERENCE = join(__dirname, '..', '..', 'bench', 'ocr-reference.mjs');

interface Point {
  p50: number;
  p99: number;
  imagesPerSecond: number;
}

const summarize = (latencies: number[], seconds: number): Point => {
  const sorted = [...latencies].sort((a, b) => a - b);
  return {
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    imagesPerSecond: latencies.length / seconds,
  };
};

function readText(client: MaasServiceClient, image: Buffer): Promise<ReadTextResponse> {
  return new Promise((resolve, reject) =>
    client.readText(
      {
        model: 'ocr-det',
        images: [{ source: { $case: 'data', value: image } }],
        classifyDirection: undefined,
      },
      (error, response) => (error ? reject(error) : resolve(response)),
    ),
  );
}

async function maasPoint(client: MaasServiceClient, image: Buffer, concurrency: number): Promise<Point> {
  const latencies: number[] = [];
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() - started < MS) {
        const t = performance.now();
        await readText(client, image);
        latencies.push(performance.now() - t);
      }
    }),
  );
  return summarize(latencies, (performance.now() - started) / 1000);
}

function referencePoint(path: string, concurrency: number): Point {
  const out = execFileSync(process.execPath, [REFERENCE, path, String(MS), String(concurrency)], {
    encoding: 'utf8',
  });
  const { latencies, seconds } = JSON.parse(out) as { latencies: number[]; seconds: number };
  return summarize(latencies, seconds);
}

const median = (points: Point[]): Point => {
  const sorted = [...points].sort((a, b) => a.imagesPerSecond - b.imagesPerSecond);
  return sorted[Math.floor(sorted.length / 2)]!;
};

async function main(): Promise<void> {
  const stack = await startStack(defaultRepositoryPath(), { AUTH_MODE: 'disabled' });
  const client = new MaasServiceClient(stack.address, credentials.createInsecure());
  const images = ['receipt', 'line'].map((name) => ({
    name,
    path: join(FIXTURES, `${name}.png`),
    bytes: readFileSync(join(FIXTURES, `${name}.png`)),
  }));
  for (const image of images) for (let i = 0; i < 5; i++) await readText(client, image.bytes);
  console.log(
    `bench:vision — ${ROUNDS} interleaved rounds of ${MS} ms per point; load average ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
  );
  for (const image of images) {
    const rounds: Record<string, Point[]> = { maas1: [], ref1: [], maas8: [], ref8: [] };
    for (let r = 0; r < ROUNDS; r++) {
      rounds.maas1!.push(await maasPoint(client, image.bytes, 1));
      rounds.ref1!.push(referencePoint(image.path, 1));
      rounds.maas8!.push(await maasPoint(client, image.bytes, 8));
      rounds.ref8!.push(referencePoint(image.path, 8));
    }
    const [m1, r1, m8, r8] = ['maas1', 'ref1', 'maas8', 'ref8'].map((k) => median(rounds[k]!)) as [
      Point,
      Point,
      Point,
      Point,
    ];
    const lines = (await readText(client, image.bytes)).results[0]!.lines.length;
    console.log(`\n${image.name} (${lines} lines)`);
    console.log(
      `  c=1  maas p50 ${m1.p50.toFixed(1)} ms p99 ${m1.p99.toFixed(1)} ms | in process (@gutenye/ocr-node) p50 ${r1.p50.toFixed(1)} ms p99 ${r1.p99.toFixed(1)} ms`,
    );
    console.log(
      `  c=8  maas ${m8.imagesPerSecond.toFixed(1)} images/s | in process ${r8.imagesPerSecond.toFixed(1)} images/s | ratio ${(m8.imagesPerSecond / r8.imagesPerSecond).toFixed(2)} (target ≥ 0.80)`,
    );
  }
  console.log(
    `\nload average after: ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
  );
  client.close();
}

main()
  .catch((error) => {
    console.error(error);
    process.exitCode = 1;
  })
  .finally(stopAll);
