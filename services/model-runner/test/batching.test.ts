/** Dynamic batching: merging, padding, splitting, queue limits and deadlines, seen through gRPC and metrics. */
import { status } from '@grpc/grpc-js';
import { metricValue, scrapeMetrics } from '@maas/shared/testing';
import type { ModelInferResponse } from '@maas/shared/gen/inference/grpc_service';
import {
  call,
  encoderInputs,
  failure,
  inferRequest,
  metricDelta,
  sleep,
  startTestRunner,
  type TestRunner,
} from './helpers';
import { editConfig, testRepository, writeDoubler, writeSlowModel } from './models';

let t: TestRunner;

beforeAll(async () => {
  const root = testRepository(['bert-classifier', 'sentence-encoder'], { maxQueueDelayMicroseconds: 20_000 });
  writeDoubler(root, 'doubler', { maxQueueDelayMicroseconds: 50_000 });
  writeSlowModel(root, 'slow', 256, 96);
  writeSlowModel(root, 'slow-inline', 256, 96);
  editConfig(root, 'slow-inline', (c) => ({ ...c, sessionThread: 'main' }));
  // Two sessions: batches go to whichever is idle.
  editConfig(root, 'sentence-encoder', (c) => ({ ...c, instanceCount: 2 }));
  // Without its declared vocabulary an out-of-vocabulary id reaches onnxruntime: a model failure to isolate.
  editConfig(root, 'bert-classifier', (c) => ({
    ...c,
    inputs: (c.inputs as object[]).map((i) => ({ ...i, vocabSize: undefined })),
  }));
  t = await startTestRunner(root);
});
afterAll(async () => {
  await t?.close();
});

const infer = (modelName: string, rows: number[][], options: { deadline?: Date } = {}) =>
  call<ModelInferResponse>(
    t.inference,
    'modelInfer',
    inferRequest({ modelName, ...encoderInputs(rows) }),
    options,
  );
const logits = (r: ModelInferResponse) => r.outputs[0]!.contents!.fp32Contents;
const SHORT = [2, 17, 3];
const LONG = [2, 17, 25, 31, 40, 11, 19, 23, 29, 3];
const labels = (model: string) => ({ model, version: '1' });

function expectClose(actual: number[], expected: number[], tolerance = 1e-5) {
  expect(actual).toHaveLength(expected.length);
  const worst = Math.max(...actual.map((v, i) => Math.abs(v - expected[i]!)));
  expect(worst).toBeLessThan(tolerance);
}

describe('dynamic batching', () => {
  it('merges concurrent requests into fewer executions', async () => {
    const before = await scrapeMetrics(t.runner.metricsPort!);
    const results = await Promise.all(
      Array.from({ length: 16 }, (_, i) => infer('bert-classifier', [LONG.slice(0, 3 + (i % 8))])),
    );
    const after = await scrapeMetrics(t.runner.metricsPort!);
    const l = labels('bert-classifier');
    const executions = metricDelta(before, after, 'maas_runner_executions_total', l);
    expect(results.every((r) => r.outputs[0]!.shape.join() === '1,3')).toBe(true);
    expect(metricDelta(before, after, 'maas_runner_inferences_total', l)).toBe(16);
    expect(
      metricDelta(before, after, 'maas_runner_inference_requests_total', { ...l, result: 'success' }),
    ).toBe(16);
    expect(executions).toBeGreaterThan(0);
    expect(executions).toBeLessThan(8);
    expect(metricDelta(before, after, 'maas_runner_batch_size_count', l)).toBe(executions);
    expect(metricDelta(before, after, 'maas_runner_batch_size_sum', l)).toBe(16);
  });

  it('padding does not change results: a request alone and batched with longer ones agree within 1e-5', async () => {
    const alone = logits(await infer('bert-classifier', [SHORT]));
    const batched = await Promise.all(
      [SHORT, LONG, LONG.slice(0, 7), SHORT].map((ids) => infer('bert-classifier', [ids])),
    );
    expectClose(logits(batched[0]!), alone);
    expectClose(logits(batched[3]!), alone);

    // A sequence output is cut back to each request's own length.
    const hiddenAlone = await infer('sentence-encoder', [SHORT]);
    const [short, long] = await Promise.all([
      infer('sentence-encoder', [SHORT]),
      infer('sentence-encoder', [LONG]),
    ]);
    expect(short!.outputs[0]!.shape).toEqual([1, SHORT.length, 32]);
    expect(long!.outputs[0]!.shape).toEqual([1, LONG.length, 32]);
    expectClose(logits(short!), logits(hiddenAlone));
  });

  it('pads within a multi-row request and across requests the same way', async () => {
    // Rows of one request share a length; the runner pads across requests, the client within its own.
    const [pair, alone] = await Promise.all([
      infer('bert-classifier', [SHORT, SHORT]),
      infer('bert-classifier', [LONG]),
    ]);
    expect(pair!.outputs[0]!.shape).toEqual([2, 3]);
    expectClose(logits(pair!).slice(3), logits(pair!).slice(0, 3));
    expect(alone!.outputs[0]!.shape).toEqual([1, 3]);
  });

  it('never merges requests whose non-ragged shapes differ', async () => {
    const before = await scrapeMetrics(t.runner.metricsPort!);
    const send = (values: number[]) =>
      call<ModelInferResponse>(
        t.inference,
        'modelInfer',
        inferRequest({
          modelName: 'doubler',
          inputs: [
            { name: 'x', datatype: 'FP32', shape: [1, values.length], contents: { fp32Contents: values } },
          ],
        }),
      );
    const results = await Promise.all([send([1, 2]), send([3, 4, 5]), send([6, 7]), send([8, 9, 10])]);
    const after = await scrapeMetrics(t.runner.metricsPort!);
    expect(results.map((r) => r.outputs[0]!.contents!.fp32Contents)).toEqual([
      [2, 4],
      [6, 8, 10],
      [12, 14],
      [16, 18, 20],
    ]);
    // Two shapes, two executions: the equal-shaped pairs were merged.
    expect(metricDelta(before, after, 'maas_runner_executions_total', labels('doubler'))).toBe(2);
  });

  it('spreads batches over the instances and gives the same results', async () => {
    const alone = await infer('sentence-encoder', [LONG]);
    const results = await Promise.all(Array.from({ length: 12 }, () => infer('sentence-encoder', [LONG])));
    for (const r of results) expectClose(logits(r), logits(alone));
  });

  /** Starts a 4-row run of a slow model, then times a health call and a small inference made during it. */
  async function callsDuringSlowRun(modelName: string) {
    const n = 256;
    let inferenceDone = 0;
    const slow = call<ModelInferResponse>(
      t.inference,
      'modelInfer',
      inferRequest({
        modelName,
        inputs: [{ name: 'x', datatype: 'FP32', shape: [4, n, n] }],
        rawInputContents: [Buffer.from(new Float32Array(4 * n * n).fill(0.01).buffer)],
      }),
    ).then(() => (inferenceDone = performance.now()));
    await sleep(50);
    const asked = performance.now();
    await call(t.inference, 'serverLive', {});
    await infer('bert-classifier', [SHORT]);
    const answered = performance.now();
    await slow;
    return { asked, answered, inferenceDone };
  }

  it('keeps serving while a model computes (sessions run in worker threads)', async () => {
    const { asked, answered, inferenceDone } = await callsDuringSlowRun('slow');
    // On the main thread the computation would hold both calls until it ends.
    expect(answered).toBeLessThan(inferenceDone);
    expect(answered - asked).toBeLessThan((inferenceDone - asked) / 2);
  });

  it('runs a model with sessionThread "main" on the event loop, which its computation stops', async () => {
    const { answered, inferenceDone } = await callsDuringSlowRun('slow-inline');
    // The small inference's answer leaves after the slow run's; the 1 ms allows for timer rounding.
    expect(answered).toBeGreaterThan(inferenceDone - 1);
  });

  it('a request that makes the model fail fails alone; the requests batched with it succeed', async () => {
    const before = await scrapeMetrics(t.runner.metricsPort!);
    const outOfVocabulary = [2, 999_999, 3];
    const [bad, ...good] = await Promise.allSettled([
      infer('bert-classifier', [outOfVocabulary]),
      infer('bert-classifier', [SHORT]),
      infer('bert-classifier', [LONG]),
    ]);
    expect(bad!.status).toBe('rejected');
    expect((bad as PromiseRejectedResult).reason.code).toBe(status.INTERNAL);
    expect(good.map((g) => g.status)).toEqual(['fulfilled', 'fulfilled']);
    const after = await scrapeMetrics(t.runner.metricsPort!);
    expect(
      metricDelta(before, after, 'maas_runner_inference_failures_total', {
        ...labels('bert-classifier'),
        reason: 'execution_error',
      }),
    ).toBe(1);
  });
});

describe('queue limits and deadlines', () => {
  let q: TestRunner;
  beforeAll(async () => {
    const root = testRepository(['bert-classifier'], {
      maxQueueSize: 4,
      maxQueueDelayMicroseconds: 300_000,
      maxBatchSize: 16,
    });
    q = await startTestRunner(root);
  });
  afterAll(async () => {
    await q?.close();
  });
  const request = () => inferRequest({ modelName: 'bert-classifier', ...encoderInputs([SHORT]) });

  it('refuses beyond the queue with RESOURCE_EXHAUSTED at once while the queued requests succeed', async () => {
    const before = await scrapeMetrics(q.runner.metricsPort!);
    const queued = [1, 2, 3, 4].map(() => call<ModelInferResponse>(q.inference, 'modelInfer', request()));
    await sleep(50);
    const started = performance.now();
    const refused = await failure(call(q.inference, 'modelInfer', request()));
    expect(performance.now() - started).toBeLessThan(150);
    expect(refused.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(refused.details).toMatch(/queue is full/);
    expect((await Promise.all(queued)).length).toBe(4);
    const after = await scrapeMetrics(q.runner.metricsPort!);
    const l = labels('bert-classifier');
    expect(
      metricDelta(before, after, 'maas_runner_inference_failures_total', { ...l, reason: 'queue_full' }),
    ).toBe(1);
    expect(metricDelta(before, after, 'maas_runner_executions_total', l)).toBe(1);
  });

  it('drops a request whose deadline passed while it queued, before compute', async () => {
    const before = await scrapeMetrics(q.runner.metricsPort!);
    const expired = failure(
      call(q.inference, 'modelInfer', request(), { deadline: new Date(Date.now() + 100) }),
    );
    const live = [1, 2].map(() => call<ModelInferResponse>(q.inference, 'modelInfer', request()));
    expect((await expired).code).toBe(status.DEADLINE_EXCEEDED);
    await Promise.all(live);
    const after = await scrapeMetrics(q.runner.metricsPort!);
    const l = labels('bert-classifier');
    expect(
      metricDelta(before, after, 'maas_runner_inference_failures_total', {
        ...l,
        reason: 'deadline_exceeded',
      }),
    ).toBe(1);
    // One execution, for the two live requests only.
    expect(metricDelta(before, after, 'maas_runner_executions_total', l)).toBe(1);
    expect(metricDelta(before, after, 'maas_runner_inferences_total', l)).toBe(2);
    expect(metricValue(after, 'maas_runner_pending_requests', l)).toBe(0);
  });
});
