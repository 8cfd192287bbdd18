/**
 * npm run bench:tokenizer — (1) the two candidate libraries in process;
 * (2) tokens/s of the chosen one in process vs. through the gRPC service on
 * 127.0.0.1 (in a child process, as in production), for a batch of 64
 * sentences and for single short texts, plus single-text latency.
 * BENCH_MS sets the time per measurement (default 3000), split over
 * BENCH_ROUNDS alternating rounds (default 5; the median is printed).
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
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);

async function startService(tokenizerDir: string): Promise<{ address: string; pid: number; stop(): void }> {
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
  return { address, pid: child.pid!, stop: () => child.kill('SIGTERM') };
}

/** CPU time (user + system, all threads) of a process so far, in ms; undefined where /proc is missing. */
function cpuMs(pid: number): number | undefined {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // USER_HZ is 100 on Linux
  } catch {
    return undefined;
  }
}

/** Mean CPU ms per call of each process in `pids`: unlike wall time, it does not depend on the machine's load. */
async function cpuPerCall(
  pids: number[],
  calls: number,
  run: () => Promise<unknown>,
): Promise<number[] | undefined> {
  for (let i = 0; i < 20; i++) await run();
  const before = pids.map(cpuMs);
  for (let i = 0; i < calls; i++) await run();
  const after = pids.map(cpuMs);
  if (before.includes(undefined) || after.includes(undefined)) return undefined;
  return pids.map((_, i) => (after[i]! - before[i]!) / calls);
}

interface ClientWorkload {
  batch: boolean;
  offsets: boolean;
  concurrency: number;
  ms: number;
}

/**
 * The gRPC clients of the throughput rows run in a process of their own, as
 * real callers would: this process also runs the library, and its threads and
 * heap would slow the client down and count against the service.
 */
async function startClientProcess(address: string) {
  const child = fork(__filename, ['--client', address]);
  await new Promise((resolve) => child.once('message', resolve));
  return {
    measure(workload: ClientWorkload): Promise<number> {
      return new Promise((resolve) => {
        child.once('message', (value) => resolve(value as number));
        child.send(workload);
      });
    },
    stop: () => child.kill('SIGTERM'),
  };
}

function clientProcess(address: string): void {
  const client = createClient(TokenizerServiceClient, address);
  const encode = (texts: string[], returnOffsets: boolean) =>
    new Promise<EncodeResponse>((resolve, reject) =>
      client.encode(
        { tokenizer: NAME, texts, textPairs: [], returnOffsets } as Partial<EncodeRequest> as EncodeRequest,
        (e, r) => (e ? reject(e) : resolve(r)),
      ),
    );
  process.on('message', (w: ClientWorkload) => {
    const texts = w.batch ? BATCH : [SHORT];
    void tokensPerSecond(async () => (await encode(texts, w.offsets)).totalTokens, w.ms, w.concurrency).then(
      (value) => process.send!(value),
    );
  });
  process.send!('ready');
}

/** Section 1 runs in a child process: the TypeScript tokenizers' large heaps would slow the gRPC client's GC. */
function runLibrariesInChild(): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = fork(__filename, ['--libraries'], { stdio: 'inherit' });
    child.on('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`libraries benchmark exited with ${code}`)),
    );
  });
}

async function libraries() {
  const files = prepareParityTokenizers();

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
}

async function main() {
  const files = prepareParityTokenizers();
  console.log(
    `tokenizer benchmark: ${MS} ms per measurement, ${cpus().length} CPUs, load average ${loadavg()[0]!.toFixed(1)}\n`,
  );
  await runLibrariesInChild();
  console.log(
    `\n2. The service (${NAME}, Rust library): in process vs. gRPC on 127.0.0.1 (server in a child process)`,
  );
  const path = files[NAME as keyof typeof files];
  const raw = RustTokenizer.fromString(readFileSync(path, 'utf8'));
  const tokenizer = await HuggingFaceTokenizer.load({ name: NAME, path });
  const options = { addSpecialTokens: true, offsets: false, tokens: false };
  const count = (encodings: { length: number }[]) => encodings.reduce((n, e) => n + e.length, 0);
  const service = await startService(join(path, '..', '..'));
  const client = createClient(TokenizerServiceClient, service.address);
  const encode = (texts: string[], extra: Partial<EncodeRequest> = {}) =>
    new Promise<EncodeResponse>((resolve, reject) =>
      client.encode({ tokenizer: NAME, texts, textPairs: [], ...extra } as EncodeRequest, (e, r) =>
        e ? reject(e) : resolve(r),
      ),
    );
  const clients = await startClientProcess(service.address);
  const local =
    (run: () => Promise<number>) =>
    (ms: number): Promise<number> =>
      tokensPerSecond(run, ms);
  const workloads: Record<string, (ms: number) => Promise<number>> = {
    'library batch': local(async () => {
      let n = 0;
      for (const e of await raw.encodeBatch(BATCH)) n += e.getIds().length;
      return n;
    }),
    'domain batch': local(async () => count(await tokenizer.encodeBatch(BATCH, undefined, options))),
    'gRPC batch': (ms) => clients.measure({ batch: true, offsets: false, concurrency: 1, ms }),
    'gRPC batch offsets': (ms) => clients.measure({ batch: true, offsets: true, concurrency: 1, ms }),
    'gRPC batch x4': (ms) => clients.measure({ batch: true, offsets: false, concurrency: 4, ms }),
    'library single': local(async () => (await raw.encode(SHORT)).getIds().length),
    'gRPC single': (ms) => clients.measure({ batch: false, offsets: false, concurrency: 1, ms }),
    'gRPC single x8': (ms) => clients.measure({ batch: false, offsets: false, concurrency: 8, ms }),
  };
  // The machine may be shared: measurements alternate over several rounds and the median is kept.
  const samples = new Map<string, number[]>();
  for (let round = 0; round < ROUNDS; round++) {
    for (const [label, measure] of Object.entries(workloads)) {
      samples.set(label, [...(samples.get(label) ?? []), await measure(MS / ROUNDS)]);
    }
  }
  clients.stop();
  const median = (label: string) => {
    const values = [...samples.get(label)!].sort((a, b) => a - b);
    return values[Math.floor(values.length / 2)]!;
  };
  const cpu = {
    library: await cpuPerCall([process.pid], 300, async () => {
      for (const e of await raw.encodeBatch(BATCH)) e.getIds();
    }),
    batch: await cpuPerCall([service.pid, process.pid], 300, () => encode(BATCH)),
    single: await cpuPerCall([service.pid, process.pid], 1000, () => encode([SHORT])),
  };
  const inProcessLatency = await latencies(() => tokenizer.encodeBatch([SHORT], undefined, options), 3000);
  const grpcLatency = await latencies(() => encode([SHORT]), 3000);
  client.close();
  service.stop();

  const row = (label: string, a: string, b: string) =>
    console.log(
      `${label.padEnd(44)}${fmt(median(a)).padStart(14)}${fmt(median(b)).padStart(14)}${pct(median(b), median(a)).padStart(9)}`,
    );
  console.log(
    `${'tokens/s (median of rounds)'.padEnd(44)}${'in process'.padStart(14)}${'gRPC'.padStart(14)}${'ratio'.padStart(9)}`,
  );
  row('batch of 64 sentences (vs. library call)', 'library batch', 'gRPC batch');
  row('batch of 64 sentences (vs. service domain)', 'domain batch', 'gRPC batch');
  row('batch of 64, with offsets', 'library batch', 'gRPC batch offsets');
  row('batch of 64, 4 calls in flight', 'library batch', 'gRPC batch x4');
  row('single short text', 'library single', 'gRPC single');
  row('single short text, 8 calls in flight', 'library single', 'gRPC single x8');
  const perCall = (label: string, tokens: number) => ((tokens / median(label)) * 1000).toFixed(3);
  const batchTokens = count(await tokenizer.encodeBatch(BATCH, undefined, options));
  console.log(
    `\nper batch of 64 (${batchTokens} tokens): library ${perCall('library batch', batchTokens)} ms, ` +
      `service domain ${perCall('domain batch', batchTokens)} ms, gRPC round trip ${perCall('gRPC batch', batchTokens)} ms`,
  );
  if (cpu.library && cpu.batch && cpu.single) {
    console.log(
      `CPU per batch of 64 (all threads, whatever the load): library in process ${cpu.library[0]!.toFixed(2)} ms; ` +
        `through gRPC server ${cpu.batch[0]!.toFixed(2)} ms + client ${cpu.batch[1]!.toFixed(2)} ms; ` +
        `single short text through gRPC: server ${cpu.single[0]!.toFixed(2)} ms + client ${cpu.single[1]!.toFixed(2)} ms`,
    );
  }
  console.log(
    `single short text latency: in process p50 ${inProcessLatency.p50.toFixed(3)} ms, p99 ${inProcessLatency.p99.toFixed(3)} ms; ` +
      `gRPC loopback p50 ${grpcLatency.p50.toFixed(3)} ms, p99 ${grpcLatency.p99.toFixed(3)} ms`,
  );
  console.log(
    `targets: gRPC batch-64 ≥ 80% of in process: ${pct(median('gRPC batch'), median('library batch'))} of the library call; ` +
      `single short text p50 < 1 ms: ${grpcLatency.p50.toFixed(3)} ms (load average now ${loadavg()[0]!.toFixed(1)})`,
  );
  const scaling = (many: string, one: string, target: number, what: string) => {
    const ratio = median(many) / median(one);
    return `${what}: ${ratio.toFixed(2)}× (target ≥ ${target}×: ${ratio >= target ? 'met' : 'NOT met'})`;
  };
  console.log(
    `         throughput with calls in flight, over gRPC: ${scaling('gRPC single x8', 'gRPC single', 3, '8 single texts vs 1')}; ` +
      scaling('gRPC batch x4', 'gRPC batch', 1, '4 batches vs 1'),
  );
}

const clientAt = process.argv.indexOf('--client');
if (clientAt >= 0) clientProcess(process.argv[clientAt + 1]!);
else
  (process.argv.includes('--libraries') ? libraries() : main()).catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
