/**
 * npm run bench:runner — what the model-runner costs over calling onnxruntime
 * directly. For each model, in one run and side by side:
 *  - raw in-process onnxruntime throughput (items/s) at every batch size 1..64;
 *  - the runner (its own process, as deployed) over gRPC on 127.0.0.1, at
 *    concurrency 1, 8 and 32 with single-item requests, and at 8 with 32-row
 *    requests, from a client process;
 *  - ratios: runner c=32 / raw best batch (target ≥ 80% for a model whose
 *    batch-1 run takes ≥ 2 ms), runner c=1 / raw batch 1.
 * Models: a BERT-style classifier of hidden 256, 4 layers, 64 tokens
 * (generated here; batch 1 takes a few ms) and the default lang-id model
 * (fastText as ONNX; tens of µs per run). With BENCH_PROFILE=1 the runner runs
 * under --cpu-prof during the lang-id load and the profile is summarised:
 * where a small model's time goes. Then the generation benchmark
 * (bench/generation*.ts) when it exists. Env: BENCH_MS (per point, default 3000),
 * BENCH_PROFILE=1, BENCH_GENERATION=0 (skip generation).
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { availableParallelism, loadavg } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { buildBertClassifier, makeTempDir } from '@maas/models';
import { createClient, defaultRepositoryPath, readModelConfig } from '@maas/shared';
import { checkHealth, metricValue, scrapeMetrics } from '@maas/shared/testing';
import { GRPCInferenceServiceClient, ModelInferRequest } from '@maas/shared/gen/inference/grpc_service';

const MS = Number(process.env.BENCH_MS ?? 3000);
/** Each point is measured this many times (interleaved) and the best kept: other load on the machine only ever slows a run down. */
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const BATCHES = [1, 2, 4, 8, 16, 32, 64];
/** Client loads: single-item requests at concurrency 1, 8, 32, and multi-row requests at 8 (what a batching client sends). */
const LOADS = [
  { label: 'c=1', concurrency: 1, rows: 1 },
  { label: 'c=8', concurrency: 8, rows: 1 },
  { label: 'c=32', concurrency: 32, rows: 1 },
  { label: 'c=8 multi-row', concurrency: 8, rows: 32 },
] as const;
type LoadLabel = (typeof LOADS)[number]['label'];

interface BenchModel {
  name: string;
  inputs: string[];
  /** Tokens per request. */
  seq: number;
  /** A valid token id for the model. */
  token: number;
}

const MODELS: BenchModel[] = [
  { name: 'bert-256x4', inputs: ['input_ids', 'attention_mask', 'token_type_ids'], seq: 64, token: 37 },
  { name: 'lang-id', inputs: ['input_ids', 'attention_mask'], seq: 12, token: 37 },
];

/** Items per second of `concurrency` loops calling `run` (which returns how many items it did) for MS. */
async function rate(concurrency: number, run: () => Promise<number>): Promise<number> {
  let items = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() - start < MS) {
        // Not `items += await run()`: that reads `items` before the await and loses the other loops' counts.
        const done = await run();
        items += done;
      }
    }),
  );
  return (items / (performance.now() - start)) * 1000;
}

const valueOf = (input: string, token: number) =>
  BigInt(input === 'input_ids' ? token : input === 'attention_mask' ? 1 : 0);

/** Raw onnxruntime, this process, one session with the runner's default threads (intra 1, inter 1). */
async function rawThroughput(path: string, model: BenchModel) {
  const session = await ort.InferenceSession.create(path, { intraOpNumThreads: 1, interOpNumThreads: 1 });
  const byBatch: Record<number, number> = {};
  for (let round = 0; round < ROUNDS; round++) {
    for (const batch of BATCHES) {
      const feeds = Object.fromEntries(
        model.inputs.map((input) => [
          input,
          new ort.Tensor('int64', new BigInt64Array(batch * model.seq).fill(valueOf(input, model.token)), [
            batch,
            model.seq,
          ]),
        ]),
      );
      for (let i = 0; i < 3; i++) await session.run(feeds);
      const items = await rate(1, async () => (await session.run(feeds), batch));
      byBatch[batch] = Math.max(byBatch[batch] ?? 0, items);
    }
  }
  await session.release();
  const [bestBatch, best] = Object.entries(byBatch)
    .map(([b, r]) => [Number(b), r] as const)
    .sort((a, b) => b[1] - a[1])[0]!;
  return { byBatch, batch1Ms: 1000 / byBatch[1]!, bestBatch, best };
}

/**
 * Configs of the bench repository. The generated model's maxBatchSize is its raw best batch on this
 * machine (what Triton's model analyzer would pick): bigger batches are not always faster per item.
 */
function writeRepository(root: string, maxBatchSize: number): void {
  writeFileSync(
    join(root, 'bert-256x4', 'config.json'),
    JSON.stringify({
      task: 'raw',
      maxBatchSize,
      // The schema's default delay (500 µs): with sessions in workers the next batch collects while one
      // computes, so the delay only matters when the runner is idle.
      dynamicBatching: { maxQueueSize: 4096 },
      inputs: MODELS[0]!.inputs.map((name) => ({ name, datatype: 'INT64', dims: [-1], ragged: true })),
      outputs: [{ name: 'logits', datatype: 'FP32', dims: [3] }],
    }),
  );
  cpSync(join(defaultRepositoryPath(), 'lang-id'), join(root, 'lang-id'), { recursive: true });
}

async function startRunner(
  root: string,
  port: number,
  metricsPort: number,
  profileDir?: string,
): Promise<ChildProcess> {
  const child = spawn(
    process.execPath,
    [
      ...(profileDir ? ['--cpu-prof', '--cpu-prof-dir', profileDir] : []),
      join(__dirname, '..', 'src', 'main.js'),
    ],
    {
      stdio: ['ignore', 'ignore', 'inherit'],
      env: {
        ...process.env,
        GRPC_PORT: String(port),
        METRICS_PORT: String(metricsPort),
        MODEL_REPOSITORY: root,
        LOG_LEVEL: 'warn',
      },
    },
  );
  const address = `127.0.0.1:${port}`;
  for (let i = 0; i < 600; i++) {
    if ((await checkHealth(address).catch(() => 'DOWN')) === 'SERVING') return child;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  child.kill('SIGKILL');
  throw new Error('the runner did not become SERVING within 60 s');
}

const stopRunner = (child: ChildProcess) =>
  new Promise<void>((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });

/** A port nothing listens on now. */
const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });

interface RunnerPoint {
  rate: number;
  /** Rows per execution, from the runner's metrics. */
  meanBatch: number;
  /** Mean time a request waited for its batch, ms. */
  queueMs: number;
}

/**
 * Drives the runner from a client process (as real clients are) at each concurrency, and reads
 * the runner's own metrics around each point.
 */
async function runnerThroughput(
  address: string,
  metricsPort: number,
  model: BenchModel,
  maxBatchSize: number,
): Promise<Record<LoadLabel, RunnerPoint>> {
  const points: Partial<Record<LoadLabel, RunnerPoint>> = {};
  const labels = { model: model.name, version: '1' };
  // Node's HTTP keep-alive can hand a scrape a socket the server just closed: one retry.
  const scrape = () => scrapeMetrics(metricsPort).catch(() => scrapeMetrics(metricsPort));
  // Warm the connection path up first, outside the measured windows (and their metrics).
  execFileSync(process.execPath, [__filename, '--client', address, JSON.stringify(model), '0', '1'], {
    env: process.env,
  });
  for (let round = 0; round < ROUNDS; round++) {
    for (const load of LOADS) {
      const before = await scrape();
      const out = execFileSync(
        process.execPath,
        [
          __filename,
          '--client',
          address,
          JSON.stringify(model),
          String(load.concurrency),
          String(Math.min(load.rows, maxBatchSize)),
        ],
        {
          encoding: 'utf8',
          env: process.env,
        },
      );
      const after = await scrape();
      const delta = (name: string) => metricValue(after, name, labels) - metricValue(before, name, labels);
      const point = {
        rate: Number(out.trim().split('\n').pop()),
        meanBatch: delta('maas_runner_inferences_total') / delta('maas_runner_executions_total'),
        queueMs:
          (delta('maas_runner_queue_duration_seconds_sum') /
            delta('maas_runner_queue_duration_seconds_count')) *
          1000,
      };
      if (point.rate > (points[load.label]?.rate ?? 0)) points[load.label] = point;
    }
  }
  return points as Record<LoadLabel, RunnerPoint>;
}

/** Client mode: requests of `rows` rows at one concurrency, printing rows/s; concurrency 0 only warms up. */
async function clientMode(
  address: string,
  modelJson: string,
  concurrency: number,
  rows: number,
): Promise<void> {
  const model = JSON.parse(modelJson) as BenchModel;
  const inference = createClient(GRPCInferenceServiceClient, address);
  const request = ModelInferRequest.fromPartial({
    modelName: model.name,
    inputs: model.inputs.map((name) => ({ name, datatype: 'INT64', shape: [rows, model.seq] })),
    rawInputContents: model.inputs.map((name) =>
      Buffer.from(new BigInt64Array(rows * model.seq).fill(valueOf(name, model.token)).buffer),
    ),
  });
  const one = () =>
    new Promise<number>((resolve, reject) =>
      inference.modelInfer(request, (error) => (error ? reject(error) : resolve(rows))),
    );
  if (concurrency === 0) {
    for (let i = 0; i < 100; i++) await one();
    inference.close();
    return;
  }
  const items = await rate(concurrency, one);
  inference.close();
  console.log(items);
}

/** Raw throughput at the measured batch size nearest (on a log scale) to `batch`. */
function rawNear(byBatch: Record<number, number>, batch: number): number {
  const nearest = BATCHES.reduce((a, b) =>
    Math.abs(Math.log(b / batch)) < Math.abs(Math.log(a / batch)) ? b : a,
  );
  return byBatch[nearest]!;
}

/** Self time by area and the top functions of a V8 CPU profile of the runner's main thread. */
function summariseProfile(dir: string): string[] {
  const file = readdirSync(dir).find((f) => f.endsWith('.cpuprofile'));
  if (!file) return ['  (no profile written)'];
  const profile = JSON.parse(readFileSync(join(dir, file), 'utf8')) as {
    nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number } }[];
    samples: number[];
    timeDeltas: number[];
  };
  const byId = new Map(profile.nodes.map((n) => [n.id, n.callFrame]));
  const selfUs = new Map<number, number>();
  profile.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));
  const total = [...selfUs.values()].reduce((a, b) => a + b, 0);
  const area = (url: string, name: string) => {
    if (!url) return name.startsWith('(') ? name : 'native / builtins';
    if (url.includes('@grpc/grpc-js')) return 'grpc-js (calls, http2 framing)';
    if (url.includes('/gen/') || url.includes('@bufbuild/protobuf')) return 'protobuf encode/decode';
    if (url.includes('onnxruntime')) return 'onnxruntime-node binding (JS side)';
    if (url.includes('model-runner')) return 'model-runner (validation, batching)';
    if (url.includes('prom-client')) return 'prom-client metrics';
    if (url.includes('@opentelemetry')) return 'OpenTelemetry context';
    if (url.includes('services/shared')) return 'maas shared runtime (interceptor)';
    if (url.startsWith('node:')) return 'node internals (http2, streams, timers)';
    return 'other JS';
  };
  const areas = new Map<string, number>();
  const functions = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const frame = byId.get(id)!;
    const a = area(frame.url, frame.functionName);
    areas.set(a, (areas.get(a) ?? 0) + us);
    const where = frame.url ? `${frame.url.split('/').slice(-2).join('/')}:${frame.lineNumber + 1}` : '';
    const key = `${frame.functionName || '(anonymous)'} ${where}`;
    functions.set(key, (functions.get(key) ?? 0) + us);
  }
  const pct = (us: number) => `${((us / total) * 100).toFixed(1).padStart(5)}%`;
  return [
    `  runner main thread, ${(total / 1e6).toFixed(1)} s sampled; self time by area:`,
    ...[...areas].sort((a, b) => b[1] - a[1]).map(([name, us]) => `    ${pct(us)}  ${name}`),
    '  top functions by self time:',
    ...[...functions]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 12)
      .map(([name, us]) => `    ${pct(us)}  ${name}`),
  ];
}

async function main(): Promise<void> {
  const root = makeTempDir('maas-bench-runner-');
  mkdirSync(join(root, 'bert-256x4', '1'), { recursive: true });
  writeFileSync(
    join(root, 'bert-256x4', '1', 'model.onnx'),
    buildBertClassifier({ hidden: 256, heads: 4, layers: 4, intermediate: 1024, maxPositions: 128 }),
  );
  cpSync(join(defaultRepositoryPath(), 'lang-id', '1'), join(root, 'lang-id', '1'), { recursive: true });
  const cores = availableParallelism();
  console.log(
    `model-runner benchmark: ${MS} ms per point, best of ${ROUNDS}, ${cores} cores (load average ${loadavg()[0]!.toFixed(1)}), onnxruntime intra-op 1 / inter-op 1 threads\n` +
      `raw = in-process onnxruntime; runner = separate process over gRPC (127.0.0.1), single-item requests from a client process\n`,
  );
  const raw = new Map<string, Awaited<ReturnType<typeof rawThroughput>>>();
  for (const model of MODELS)
    raw.set(model.name, await rawThroughput(join(root, model.name, '1', 'model.onnx'), model));
  writeRepository(root, raw.get(MODELS[0]!.name)!.bestBatch);

  const [port, metricsPort] = [await freePort(), await freePort()];
  const address = `127.0.0.1:${port}`;
  const rows: string[][] = [];
  let runner: ChildProcess | undefined;
  let profile: string[] = [];
  try {
    runner = await startRunner(root, port, metricsPort);
    for (const model of MODELS) {
      const profiling = process.env.BENCH_PROFILE === '1' && model.name === 'lang-id';
      const profileDir = profiling ? makeTempDir('maas-bench-profile-') : undefined;
      if (profileDir) {
        // A fresh runner under the profiler, so the profile holds this model's load only.
        await stopRunner(runner);
        runner = await startRunner(root, port, metricsPort, profileDir);
      }
      // Multi-row requests carry as many rows as the model batches (at most 32).
      const maxBatchSize = readModelConfig(join(root, model.name), model.name).maxBatchSize;
      const points = await runnerThroughput(address, metricsPort, model, maxBatchSize);
      if (profileDir) {
        await stopRunner(runner);
        profile = summariseProfile(profileDir);
        runner = await startRunner(root, port, metricsPort);
      }
      const r = raw.get(model.name)!;
      console.log(
        `${model.name} (${model.seq} tokens): raw items/s by batch  ` +
          BATCHES.map((b) => `${b}: ${r.byBatch[b]!.toFixed(0)}`).join('  ') +
          `\n  runner: ` +
          `(maxBatchSize ${maxBatchSize}) ` +
          LOADS.map(
            ({ label }) =>
              `${label}: mean batch ${points[label].meanBatch.toFixed(1)}, queue ${points[label].queueMs.toFixed(2)} ms`,
          ).join('; '),
      );
      rows.push([
        model.name,
        r.batch1Ms.toFixed(3),
        r.byBatch[1]!.toFixed(0),
        `${r.best.toFixed(0)} (b=${r.bestBatch})`,
        ...LOADS.map(({ label }) => points[label].rate.toFixed(0)),
        `${((points['c=32'].rate / r.best) * 100).toFixed(0)}%`,
        `${((points['c=32'].rate / rawNear(r.byBatch, points['c=32'].meanBatch)) * 100).toFixed(0)}%`,
        `${((points['c=1'].rate / r.byBatch[1]!) * 100).toFixed(0)}%`,
        `${((points['c=8 multi-row'].rate / r.best) * 100).toFixed(0)}%`,
      ]);
    }
  } finally {
    if (runner) await stopRunner(runner);
  }

  const header = [
    'model',
    'raw b=1 ms',
    'raw b=1 /s',
    'raw best /s',
    'runner c=1',
    'c=8',
    'c=32',
    'c=8 multi-row',
    'c=32 / raw best',
    'c=32 / raw at its batch',
    'c=1 / raw b=1',
    'multi-row / raw best',
  ];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padStart(widths[i]!)).join('  ');
  console.log(`\n${line(header)}\n${rows.map(line).join('\n')}`);
  const big = raw.get(MODELS[0]!.name)!;
  console.log(
    `\ntarget: ${MODELS[0]!.name} (raw batch 1: ${big.batch1Ms.toFixed(2)} ms${big.batch1Ms < 2 ? ', under the 2 ms the target is for' : ''}) ` +
      `runner c=32 >= 80% of raw best batch`,
  );
  if (profile.length > 0)
    console.log(`\nwhere lang-id's time goes (BENCH_PROFILE=1):\n${profile.join('\n')}`);

  const generation = readdirSync(__dirname).find((f) => /^generation.*\.js$/.test(f));
  if (process.env.BENCH_GENERATION === '0') {
    console.log('\n(generation benchmark skipped: BENCH_GENERATION=0)');
  } else if (generation) {
    console.log('');
    spawnSync(process.execPath, [join(__dirname, generation)], { stdio: 'inherit', env: process.env });
  } else {
    console.log('\n(generation benchmark: bench/generation*.ts not present)');
  }
}

if (process.argv[2] === '--client')
  void clientMode(process.argv[3]!, process.argv[4]!, Number(process.argv[5]), Number(process.argv[6]));
else
  main().catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
