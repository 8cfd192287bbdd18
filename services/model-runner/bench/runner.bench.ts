/**
 * npm run bench:runner — raw onnxruntime in-process vs. the model-runner over
 * gRPC on 127.0.0.1 (a separate process), for a ≥2 ms model and the default
 * lang-id model; then generation: tokens/s for 1 and 16 streams, and KV cache
 * vs. recompute per token.
 */
import { execFileSync, spawn } from 'node:child_process';
import { cpSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { buildBertClassifier, makeTempDir, writeFixtureRepository } from '@maas/models';
import { createClient, defaultRepositoryPath } from '@maas/shared';
import { checkHealth } from '@maas/shared/testing';
import { GRPCInferenceServiceClient, ModelInferRequest } from '@maas/shared/gen/inference/grpc_service';
import { GenerationServiceClient, GenerateRequest } from '@maas/shared/gen/maas/runner/v1/generation';

const MS = Number(process.env.BENCH_MS ?? 3000);
const SEQ = 64;
// Fits both the tiny fixture's 128-token context and austen-gpt's 256 with the 16-token prompt.
const NEW_TOKENS = 96;

async function forDuration(concurrency: number, run: () => Promise<number>): Promise<number> {
  let items = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() - start < MS) items += await run();
    }),
  );
  return (items / (performance.now() - start)) * 1000;
}

function feeds(rows: number, seq: number, withTypes: boolean): Record<string, ort.Tensor> {
  const ids = new BigInt64Array(rows * seq).fill(1037n);
  const f: Record<string, ort.Tensor> = {
    input_ids: new ort.Tensor('int64', ids, [rows, seq]),
    attention_mask: new ort.Tensor('int64', new BigInt64Array(rows * seq).fill(1n), [rows, seq]),
  };
  if (withTypes) f.token_type_ids = new ort.Tensor('int64', new BigInt64Array(rows * seq), [rows, seq]);
  return f;
}

async function raw(path: string, seq: number, withTypes: boolean) {
  const session = await ort.InferenceSession.create(path, { intraOpNumThreads: 1, interOpNumThreads: 1 });
  const results: Record<number, number> = {};
  for (const batch of [1, 2, 4, 8, 16, 32, 64]) {
    const f = feeds(batch, seq, withTypes);
    for (let i = 0; i < 3; i++) await session.run(f);
    results[batch] = await forDuration(1, async () => (await session.run(f), batch));
  }
  const oneMs = 1000 / results[1]!;
  const best = Object.entries(results).sort((a, b) => b[1] - a[1])[0]!;
  await session.release();
  return { results, oneMs, bestBatch: Number(best[0]), best: best[1] };
}

async function main() {
  const root = makeTempDir('maas-bench-runner-');
  const big = join(root, 'bert-large-ish');
  mkdirSync(join(big, '1'), { recursive: true });
  writeFileSync(join(big, '1', 'model.onnx'), buildBertClassifier({ hidden: 256, heads: 8, layers: 4, maxPositions: 128 }));
  writeFileSync(
    join(big, 'config.json'),
    JSON.stringify({
      task: 'raw',
      maxBatchSize: 32,
      dynamicBatching: { maxQueueDelayMicroseconds: 2000, maxQueueSize: 1024 },
      inputs: ['input_ids', 'attention_mask', 'token_type_ids'].map((name) => ({ name, datatype: 'INT64', dims: [-1], ragged: true })),
      outputs: [{ name: 'logits', datatype: 'FP32', dims: [3] }],
    }),
  );
  cpSync(join(defaultRepositoryPath(), 'lang-id'), join(root, 'lang-id'), { recursive: true });
  const austen = join(defaultRepositoryPath(), 'austen-gpt');
  let genModel = 'austen-gpt';
  try {
    cpSync(austen, join(root, 'austen-gpt'), { recursive: true });
    require('node:fs').accessSync(join(root, 'austen-gpt', 'config.json'));
  } catch {
    genModel = 'tiny-gpt2';
    writeFixtureRepository(root, { models: ['tiny-gpt2'], generation: { maxConcurrentSequences: 16 } });
  }

  const port = 48000 + Math.floor(Math.random() * 1000);
  const child = spawn(process.execPath, [join(__dirname, '..', 'src', 'main.js')], {
    stdio: 'ignore',
    detached: true,
    env: { ...process.env, GRPC_PORT: String(port), METRICS_PORT: '-1', MODEL_REPOSITORY: root, LOG_LEVEL: 'warn' },
  });
  const address = `127.0.0.1:${port}`;
  for (let i = 0; i < 300; i++) {
    if ((await checkHealth(address).catch(() => 'DOWN')) === 'SERVING') break;
    await new Promise((r) => setTimeout(r, 100));
  }
  await new Promise((r) => setTimeout(r, Number(process.env.SETTLE_MS ?? 0)));
  try {
    console.log(`model-runner benchmark (${MS} ms per point, onnxruntime intra-op threads 1)\n`);
    for (const [name, seq, withTypes] of [['bert-large-ish', SEQ, true], ['lang-id', 12, false]] as const) {
      // Clients run in their own process, as real clients do (and so this process's work does not skew them).
      const rates = load(address, ['infer', name, String(seq), withTypes ? '1' : '0']);
      const r = await raw(join(root, name, '1', 'model.onnx'), seq, withTypes);
      console.log(`${name}: raw batch-1 run ${r.oneMs.toFixed(2)} ms; raw items/s by batch: ${Object.entries(r.results).map(([b, v]) => `${b}:${v.toFixed(0)}`).join(' ')}`);
      const row = [`  runner over gRPC, single-item requests:`];
      for (const c of [1, 8, 32]) {
        const rate = rates[c]!;
        row.push(`c=${c}: ${rate.toFixed(0)}/s (${((rate / r.best) * 100).toFixed(0)}% of raw best batch ${r.bestBatch} ${r.best.toFixed(0)}/s; ${((rate / r.results[1]!) * 100).toFixed(0)}% of raw batch 1)`);
      }
      console.log(row.join('\n    '));
    }

    console.log(`\ngeneration (${genModel}, prompt 16 tokens, ${NEW_TOKENS} new tokens per stream):`);
    const rates = load(address, ['generate', genModel]);
    for (const c of [1, 16]) console.log(`  ${c} stream(s): ${rates[c]!.toFixed(0)} tokens/s total`);
    console.log(`  16 streams / 1 stream: ${(rates[16]! / rates[1]!).toFixed(2)}x (target >= 3x)`);
    await kvVersusRecompute(join(root, genModel, '1', 'model.onnx'), genModel);
  } finally {
    process.kill(-child.pid!, 'SIGTERM');
  }
}

function load(address: string, args: string[]): Record<number, number> {
  const out = execFileSync(process.execPath, [__filename, '--load', address, ...args], { encoding: 'utf8', env: process.env });
  return JSON.parse(out.trim().split('\n').pop()!) as Record<number, number>;
}

/** Client mode: drives the runner and prints {concurrency: rate} as JSON. */
async function clientMode(address: string, mode: string, model: string, seqText?: string, types?: string) {
  const rates: Record<number, number> = {};
  if (mode === 'infer') {
    const seq = Number(seqText);
    const withTypes = types === '1';
    const inference = createClient(GRPCInferenceServiceClient, address);
    const request = ModelInferRequest.fromPartial({
      modelName: model,
      inputs: (withTypes ? ['input_ids', 'attention_mask', 'token_type_ids'] : ['input_ids', 'attention_mask']).map((n) => ({ name: n, datatype: 'INT64', shape: [1, seq] })),
      rawInputContents: (withTypes ? [1037n, 1n, 0n] : [1037n, 1n]).map((v) => Buffer.from(new BigInt64Array(seq).fill(v).buffer)),
    });
    const one = () => new Promise<number>((resolve, reject) => inference.modelInfer(request, (e) => (e ? reject(e) : resolve(1))));
    for (let i = 0; i < 20; i++) await one();
    for (const c of [1, 8, 32]) rates[c] = await forDuration(c, one);
    inference.close();
  } else {
    const generation = createClient(GenerationServiceClient, address);
    const prompt = Array.from({ length: 16 }, (_, i) => 100 + i);
    const stream = (maxNewTokens: number) =>
      new Promise<number>((resolve, reject) => {
        let n = 0;
        const s = generation.generate(GenerateRequest.fromPartial({ modelName: model, promptIds: prompt, maxNewTokens, ignoreEos: true, sampling: { temperature: 0.8, seed: Math.floor(Math.random() * 1e6) } }));
        s.on('data', (m: { tokenIds: number[] }) => (n += m.tokenIds.length));
        s.on('end', () => resolve(n));
        s.on('error', reject);
      });
    await stream(8);
    for (const c of [1, 16]) {
      const start = performance.now();
      const tokens = (await Promise.all(Array.from({ length: c }, () => stream(NEW_TOKENS)))).reduce((a, b) => a + b, 0);
      rates[c] = (tokens / (performance.now() - start)) * 1000;
    }
    generation.close();
  }
  console.log(JSON.stringify(rates));
}

/** Per-token cost with the KV cache vs. re-running the whole sequence, in-process. */
async function kvVersusRecompute(path: string, name: string) {
  const session = await ort.InferenceSession.create(path, { intraOpNumThreads: 1 });
  const pastNames = session.inputNames.filter((n) => n.startsWith('past_key_values'));
  const meta = (session as unknown as { inputMetadata: { name: string; shape: (number | string)[] }[] }).inputMetadata;
  const pastShape = meta.find((m) => m.name === pastNames[0])!.shape;
  const heads = Number(pastShape[1]);
  const headDim = Number(pastShape[3]);
  const empty = () => Object.fromEntries(pastNames.map((n) => [n, new ort.Tensor('float32', new Float32Array(0), [1, heads, 0, headDim])]));
  const ids = (a: number[]) => new ort.Tensor('int64', BigInt64Array.from(a, BigInt), [1, a.length]);
  const N = 96;
  const seq = Array.from({ length: 16 }, (_, i) => 100 + i);
  let start = performance.now();
  let out = await session.run({ input_ids: ids(seq), attention_mask: ids(seq.map(() => 1)), position_ids: ids(seq.map((_, i) => i)), ...empty() });
  for (let k = 0; k < N; k++) {
    const past = Object.fromEntries(pastNames.map((n) => [n, out[n.replace('past_key_values', 'present')]!]));
    const len = seq.length + k + 1;
    out = await session.run({ input_ids: ids([5]), attention_mask: ids(Array(len).fill(1)), position_ids: ids([len - 1]), ...past });
  }
  const cached = (performance.now() - start) / N;
  start = performance.now();
  const full = [...seq];
  for (let k = 0; k < N; k++) {
    full.push(5);
    await session.run({ input_ids: ids(full), attention_mask: ids(full.map(() => 1)), position_ids: ids(full.map((_, i) => i)), ...empty() });
  }
  const recompute = (performance.now() - start) / N;
  console.log(`  ${name} in-process, ${N} new tokens after a 16-token prompt: KV cache ${cached.toFixed(2)} ms/token, recompute ${recompute.toFixed(2)} ms/token (${(recompute / cached).toFixed(1)}x)`);
  await session.release();
}

if (process.argv[2] === '--load') void clientMode(process.argv[3]!, process.argv[4]!, process.argv[5]!, process.argv[6], process.argv[7]);
else void main();
