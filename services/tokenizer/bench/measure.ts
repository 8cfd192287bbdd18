/** Shared workload and timing helpers of the tokenizer benchmarks. */

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

/** A batch of 64 sentences (8 distinct, as a real batch repeats little but caches nothing here). */
export const BATCH = Array.from({ length: 64 }, (_, i) => `${SENTENCES[i % SENTENCES.length]!} (${i})`);
export const SHORT = 'Hello, world!';

/** Tokens/s with `concurrency` loops, each issuing its next call when the last returns. */
export async function tokensPerSecond(
  run: () => Promise<number>,
  ms: number,
  concurrency = 1,
): Promise<number> {
  for (let i = 0; i < 20; i++) await run();
  let tokens = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() - start < ms) {
        // Not `tokens += await run()`: that reads `tokens` before the await, so concurrent loops
        // overwrote each other's counts and N calls in flight looked N times slower.
        const done = await run();
        tokens += done;
      }
    }),
  );
  return (tokens / (performance.now() - start)) * 1000;
}

export async function latencies(
  run: () => Promise<unknown>,
  n: number,
): Promise<{ p50: number; p99: number }> {
  for (let i = 0; i < 200; i++) await run();
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    const start = performance.now();
    await run();
    samples.push(performance.now() - start);
  }
  samples.sort((a, b) => a - b);
  return { p50: samples[Math.floor(n * 0.5)]!, p99: samples[Math.floor(n * 0.99)]! };
}

export const fmt = (n: number) => Math.round(n).toLocaleString('en-US');
export const pct = (a: number, b: number) => `${((a / b) * 100).toFixed(1)}%`;
