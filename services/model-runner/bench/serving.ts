/**
 * bench:generation's serving phase, in the shape of `vllm bench serve`: a
 * client process (this file, run as `node serving.js --client …`) sends
 * Generate streams to the runner over gRPC at a fixed concurrency or at a
 * Poisson request rate and reports, per request, time to first token (TTFT),
 * time per output token after the first (TPOT), the gaps between tokens
 * (ITL) and end-to-end latency (E2E); for the run, output tokens/s,
 * requests/s and goodput: requests/s that met the SLO (TTFT ≤ 500 ms and
 * TPOT ≤ 50 ms by default, as the issue suggests for this machine).
 */
import { execFile } from 'node:child_process';
import { createClient } from '@maas/shared';
import {
  GenerateRequest,
  GenerationServiceClient,
  type GenerateResponse,
} from '@maas/shared/gen/maas/runner/v1/generation';
import { SequenceRandom } from '../src/generation/sampling.js';

export interface ServingLoad {
  /** Streams in flight at once, or (with `rate`) unbounded. */
  concurrency?: number;
  /** Poisson arrivals, requests per second. */
  rate?: number;
  requests: number;
  newTokens: number;
}

export interface ServingStats {
  ttft: [number, number];
  tpot: [number, number];
  itl: [number, number];
  e2e: [number, number];
  outputTokensPerSecond: number;
  requestsPerSecond: number;
  goodput: number;
}

export const SLO = { ttftMs: 500, tpotMs: 50 };

/** p50 and p99 of `values`. */
export const percentiles = (values: number[]): [number, number] => {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
  return [at(50), at(99)];
};

/** Prompts of 16–48 seeded pseudo-random ids (the same ones each run). */
function promptsFor(count: number, vocab: number): number[][] {
  const random = new SequenceRandom(12345);
  return Array.from({ length: count }, () =>
    Array.from(
      { length: 16 + Math.floor(random.next() * 33) },
      () => 10 + Math.floor(random.next() * (vocab - 10)),
    ),
  );
}

/** In the client process: runs the load, returns the figures. */
async function runLoad(
  address: string,
  model: string,
  vocab: number,
  load: ServingLoad,
): Promise<ServingStats> {
  const client = createClient(GenerationServiceClient, address);
  const prompts = promptsFor(load.requests, vocab);
  const stream = (promptIds: number[], maxNewTokens: number) =>
    new Promise<{ ttft: number; e2e: number; gaps: number[]; tokens: number }>((resolve, reject) => {
      const sent = performance.now();
      let last = -1;
      let ttft = 0;
      let tokens = 0;
      const gaps: number[] = [];
      const call = client.generate(
        GenerateRequest.fromPartial({ modelName: model, promptIds, maxNewTokens, ignoreEos: true }),
      );
      call.on('data', (m: GenerateResponse) => {
        if (m.tokenIds.length === 0) return;
        const now = performance.now();
        if (last < 0) ttft = now - sent;
        else gaps.push(now - last);
        last = now;
        tokens += m.tokenIds.length;
      });
      call.on('error', reject);
      call.on('end', () => resolve({ ttft, e2e: performance.now() - sent, gaps, tokens }));
    });
  // Warm: the channel connected and this process's gRPC code compiled, as a long-running client's.
  await Promise.all(prompts.slice(0, 4).map((p) => stream(p, 8)));
  const results: Awaited<ReturnType<typeof stream>>[] = [];
  const started = performance.now();
  if (load.rate) {
    // Poisson arrivals: exponential gaps of mean 1 / rate, seeded (1 − next() is in (0, 1]).
    const random = new SequenceRandom(777);
    const uniform = () => 1 - random.next();
    const pending: Promise<void>[] = [];
    for (const prompt of prompts) {
      pending.push(stream(prompt, load.newTokens).then((r) => void results.push(r)));
      await new Promise((r) => setTimeout(r, (-Math.log(uniform()) / load.rate!) * 1000));
    }
    await Promise.all(pending);
  } else {
    let next = 0;
    await Promise.all(
      Array.from({ length: load.concurrency ?? 1 }, async () => {
        while (next < prompts.length) results.push(await stream(prompts[next++]!, load.newTokens));
      }),
    );
  }
  const seconds = (performance.now() - started) / 1000;
  client.close();
  const tpots = results.map((r) => (r.tokens > 1 ? (r.e2e - r.ttft) / (r.tokens - 1) : 0));
  const good = results.filter((r, i) => r.ttft <= SLO.ttftMs && tpots[i]! <= SLO.tpotMs).length;
  return {
    ttft: percentiles(results.map((r) => r.ttft)),
    tpot: percentiles(tpots),
    itl: percentiles(results.flatMap((r) => r.gaps)),
    e2e: percentiles(results.map((r) => r.e2e)),
    outputTokensPerSecond: results.reduce((a, r) => a + r.tokens, 0) / seconds,
    requestsPerSecond: results.length / seconds,
    goodput: good / seconds,
  };
}

/** In the bench process: runs one load in a client process of its own. */
export function servingRun(
  address: string,
  model: string,
  vocab: number,
  load: ServingLoad,
): Promise<ServingStats> {
  const args = [__filename, '--client', address, model, String(vocab), JSON.stringify(load)];
  return new Promise((resolve, reject) => {
    execFile(process.execPath, args, { env: process.env }, (error, stdout) => {
      if (error) reject(error);
      else resolve(JSON.parse(stdout.trim().split('\n').at(-1)!) as ServingStats);
    });
  });
}

const f = (n: number) => n.toFixed(1);

/** The loads `vllm bench serve` is usually run at: concurrency 1, 4, 16, and a Poisson rate. */
export async function servingPhase(
  address: string,
  model: string,
  vocab: number,
  summary: string[],
  threads: number,
): Promise<void> {
  const newTokens = 64;
  const loads: [string, ServingLoad][] = [
    ['concurrency 1', { concurrency: 1, requests: 8, newTokens }],
    ['concurrency 4', { concurrency: 4, requests: 16, newTokens }],
    ['concurrency 16', { concurrency: 16, requests: 48, newTokens }],
    ['Poisson 10 requests/s', { rate: 10, requests: 40, newTokens }],
  ];
  const lines: string[] = [];
  for (const [name, load] of loads) {
    const s = await servingRun(address, model, vocab, load);
    const line =
      `${name}, ${load.requests} requests of 16–48 prompt and ${newTokens} new tokens: ` +
      `TTFT p50 ${f(s.ttft[0])} / p99 ${f(s.ttft[1])} ms, TPOT ${f(s.tpot[0])} / ${f(s.tpot[1])} ms, ` +
      `ITL ${f(s.itl[0])} / ${f(s.itl[1])} ms, E2E ${f(s.e2e[0])} / ${f(s.e2e[1])} ms; ` +
      `${f(s.outputTokensPerSecond)} output tokens/s, ${s.requestsPerSecond.toFixed(2)} requests/s, ` +
      `goodput ${s.goodput.toFixed(2)} requests/s (TTFT ≤ ${SLO.ttftMs} ms, TPOT ≤ ${SLO.tpotMs} ms)`;
    console.log(`  serving over gRPC, ${line}`);
    lines.push(line);
  }
  summary.push(
    `  threads ${threads}: serving over gRPC (as vllm bench serve reports it):\n    ${lines.join('\n    ')}`,
  );
}

if (require.main === module && process.argv[2] === '--client') {
  const [address, model, vocab, load] = process.argv.slice(3);
  runLoad(address!, model!, Number(vocab), JSON.parse(load!) as ServingLoad).then(
    (stats) => console.log(JSON.stringify(stats)),
    (error: unknown) => {
      console.error(error);
      process.exit(1);
    },
  );
}
