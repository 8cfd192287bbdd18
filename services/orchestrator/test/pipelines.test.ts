import { status } from '@grpc/grpc-js';
import { decodeRetryDelayMs, invalidArgument, StatusError } from '@maas/shared';
import { MicroBatcher } from '../src/pipelines/micro-batcher';
import {
  activate,
  float32FromBytes,
  integerTensorBytes,
  l2normalize,
  pool,
  topK,
} from '../src/pipelines/postprocess';
import { StopStringMatcher } from '../src/pipelines/stop-strings';

describe('post-processing', () => {
  it('softmax is stable and sums to 1; sigmoid and none as configured', () => {
    const p = activate([1000, 1001, 999], 'softmax');
    expect(p.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
    expect(p[1]).toBeGreaterThan(p[0]!);
    expect(Array.from(activate([0, 2], 'sigmoid'))).toEqual([0.5, 1 / (1 + Math.exp(-2))]);
    expect(Array.from(activate([0.2, 0.8], 'none'))).toEqual([0.2, 0.8]);
  });

  it('top-k: best first, ties by index, k clamped', () => {
    expect(topK([0.1, 0.5, 0.5, 0.2], 3)).toEqual([1, 2, 3]);
    expect(topK([0.1, 0.9], 1)).toEqual([1]);
    expect(topK([0.1, 0.9], 10)).toEqual([1, 0]);
  });

  it('mean pooling counts only real tokens; cls takes the first real token, also with left padding', () => {
    // 2 rows × 3 positions × 2 dims; row 0 right-padded (1,1,0), row 1 left-padded (0,1,1).
    const hidden = Float32Array.from([1, 2, 3, 4, 100, 100, 100, 100, 5, 6, 7, 8]);
    const mask = [1, 1, 0, 0, 1, 1];
    expect(Array.from(pool(hidden, 3, 2, mask, 0, 'mean'))).toEqual([2, 3]);
    expect(Array.from(pool(hidden, 3, 2, mask, 1, 'mean'))).toEqual([6, 7]);
    expect(Array.from(pool(hidden, 3, 2, mask, 1, 'cls'))).toEqual([5, 6]);
    expect(Array.from(l2normalize(Float32Array.from([3, 4])))).toEqual([
      0.6000000238418579, 0.800000011920929,
    ]);
    expect(Array.from(l2normalize(new Float32Array(2)))).toEqual([0, 0]);
  });

  it('writes INT64 and INT32 little-endian tensors and reads unaligned FP32 bytes', () => {
    const bytes = integerTensorBytes([1, 30522, 0], 'INT64');
    expect(Array.from(new BigInt64Array(bytes.buffer, bytes.byteOffset, 3))).toEqual([1n, 30522n, 0n]);
    expect(bytes.readBigInt64LE(8)).toBe(30522n);
    expect(integerTensorBytes([7, 8], 'INT32').readInt32LE(4)).toBe(8);
    const floats = Buffer.alloc(9);
    floats.writeFloatLE(1.5, 1);
    floats.writeFloatLE(-2, 5);
    expect(Array.from(float32FromBytes(floats.subarray(1)))).toEqual([1.5, -2]);
  });
});

describe('stop strings', () => {
  const run = (stops: string[], deltas: string[]) => {
    const matcher = new StopStringMatcher(stops);
    let out = '';
    for (const delta of deltas) {
      const { text, stopped } = matcher.push(delta);
      out += text;
      if (stopped) return { out, stopped };
    }
    return { out: out + matcher.flush(), stopped: false };
  };

  it('finds a stop string split across deltas and returns the text before it', () => {
    expect(run(['END'], ['Hello E', 'N', 'D and more'])).toEqual({ out: 'Hello ', stopped: true });
    expect(run(['\n\n'], ['a\n', '\nb'])).toEqual({ out: 'a', stopped: true });
  });

  it('releases held-back text as soon as it cannot be a stop string, and at the end', () => {
    const matcher = new StopStringMatcher(['STOP']);
    expect(matcher.push('ab ST')).toEqual({ text: 'ab ', stopped: false });
    expect(matcher.push('x')).toEqual({ text: 'STx', stopped: false });
    expect(matcher.push('S')).toEqual({ text: '', stopped: false });
    expect(matcher.flush()).toBe('S');
  });

  it('the earliest of several stop strings wins; without stop strings text passes through', () => {
    expect(run(['world', 'lo w'], ['hello world'])).toEqual({ out: 'hel', stopped: true });
    expect(run([], ['a', 'b'])).toEqual({ out: 'ab', stopped: false });
    expect(run(['zzz'], ['no stop here'])).toEqual({ out: 'no stop here', stopped: false });
  });
});

describe('micro-batcher', () => {
  const deadline = () => new Date(Date.now() + 5000);

  const unbounded = { maxQueueRows: 1_000_000, maxQueueWaitMs: 1_000_000 };

  function recorder(
    options: {
      maxBatchSize?: number;
      maxInFlight?: number;
      delayMs?: number;
      maxQueueRows?: number;
      maxQueueWaitMs?: number;
    } = {},
  ) {
    const batches: string[][] = [];
    const batcher = new MicroBatcher<string[], string>({
      maxBatchSize: options.maxBatchSize ?? 8,
      windowUs: 0,
      maxInFlight: options.maxInFlight ?? 1,
      maxQueueRows: options.maxQueueRows ?? unbounded.maxQueueRows,
      maxQueueWaitMs: options.maxQueueWaitMs ?? unbounded.maxQueueWaitMs,
      run: async (inputs, batch) => {
        batches.push(inputs.flat());
        await new Promise((r) => setTimeout(r, options.delayMs ?? 5));
        if (batch.signal.aborted) throw new StatusError(status.CANCELLED, 'aborted');
        return inputs.map((texts) =>
          texts[0] === 'bad' ? invalidArgument('texts[0]', 'bad') : texts.join('+'),
        );
      },
      isolate: (error) => error instanceof StatusError && error.code === status.INVALID_ARGUMENT,
    });
    return { batches, batcher };
  }

  it('coalesces requests that arrive together, answers each its own, never splits a request', async () => {
    const { batches, batcher } = recorder({ maxBatchSize: 4 });
    const results = await Promise.all([
      batcher.submit(['a'], 1, { deadline: deadline() }),
      batcher.submit(['b', 'c'], 2, { deadline: deadline() }),
      batcher.submit(['d', 'e'], 2, { deadline: deadline() }),
      batcher.submit(['f'], 1, { deadline: deadline() }),
    ]);
    expect(results).toEqual(['a', 'b+c', 'd+e', 'f']);
    expect(batches).toEqual([
      ['a', 'b', 'c'],
      ['d', 'e', 'f'],
    ]);
  });

  it('queues while the in-flight limit is reached and sends the queue as one batch', async () => {
    const { batches, batcher } = recorder({ maxInFlight: 1, delayMs: 20 });
    const first = batcher.submit(['1'], 1, { deadline: deadline() });
    await new Promise((r) => setImmediate(r));
    const rest = ['2', '3', '4'].map((t) => batcher.submit([t], 1, { deadline: deadline() }));
    expect(batcher.pending).toBe(3);
    await Promise.all([first, ...rest]);
    expect(batches).toEqual([['1'], ['2', '3', '4']]);
  });

  it('a per-item error fails only that request', async () => {
    const { batcher } = recorder();
    const results = await Promise.allSettled([
      batcher.submit(['ok'], 1, { deadline: deadline() }),
      batcher.submit(['bad'], 1, { deadline: deadline() }),
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected']);
  });

  it('re-runs members alone when a whole batch fails on input, so only the culprit fails', async () => {
    const seen: string[][] = [];
    const batcher = new MicroBatcher<string, string>({
      maxBatchSize: 8,
      windowUs: 0,
      maxInFlight: 1,
      ...unbounded,
      run: async (inputs) => {
        seen.push(inputs);
        if (inputs.includes('poison')) throw invalidArgument('texts', 'poison');
        return inputs.map((i) => i.toUpperCase());
      },
      isolate: (error) => error instanceof StatusError && error.code === status.INVALID_ARGUMENT,
    });
    const results = await Promise.allSettled(
      ['x', 'poison', 'y'].map((i) => batcher.submit(i, 1, { deadline: deadline() })),
    );
    expect(results.map((r) => (r.status === 'fulfilled' ? r.value : 'failed'))).toEqual(['X', 'failed', 'Y']);
    expect(seen).toEqual([['x', 'poison', 'y'], ['x'], ['poison'], ['y']]);
  });

  it('a cancelled request leaves the queue; a batch whose requests all left is aborted', async () => {
    const { batches, batcher } = recorder({ maxInFlight: 1, delayMs: 30 });
    const first = new AbortController();
    const inFlight = batcher.submit(['1'], 1, { deadline: deadline(), signal: first.signal });
    await new Promise((r) => setImmediate(r));
    const queued = new AbortController();
    const waiting = batcher.submit(['2'], 1, { deadline: deadline(), signal: queued.signal });
    queued.abort();
    await expect(waiting).rejects.toMatchObject({ code: status.CANCELLED });
    first.abort();
    await expect(inFlight).rejects.toMatchObject({ code: status.CANCELLED });
    await new Promise((r) => setTimeout(r, 40));
    expect(batches).toEqual([['1']]);
  });

  const refusedWith = async (promise: Promise<unknown>) => {
    const error = (await promise.then(
      () => {
        throw new Error('expected a refusal');
      },
      (e: unknown) => e,
    )) as StatusError;
    expect(error.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(decodeRetryDelayMs(error.metadata!)).toBeGreaterThan(0);
    return error;
  };

  it('bounds the queue by rows: the excess is refused at once with a retry delay', async () => {
    const { batches, batcher } = recorder({ maxInFlight: 1, delayMs: 30, maxQueueRows: 3 });
    const first = batcher.submit(['1'], 1, { deadline: deadline() });
    await new Promise((r) => setImmediate(r));
    const queued = [batcher.submit(['2', '3'], 2, { deadline: deadline() })];
    queued.push(batcher.submit(['4'], 1, { deadline: deadline() }));
    let settledFirst = false;
    void first.then(() => (settledFirst = true));
    const error = await refusedWith(batcher.submit(['5'], 1, { deadline: deadline() }));
    // Refused while the first batch is still running: nothing waited for a slot.
    expect(settledFirst).toBe(false);
    expect(error.message).toMatch(/overloaded/);
    await Promise.all([first, ...queued]);
    expect(batches).toEqual([['1'], ['2', '3', '4']]);
  });

  it('refuses a request that could not start before its deadline, estimated from measured batch times', async () => {
    const { batches, batcher } = recorder({ maxInFlight: 1, delayMs: 40 });
    await batcher.submit(['warm'], 1, { deadline: deadline() });
    expect(batcher.serviceTime.ms).toBeGreaterThanOrEqual(30);
    const running = batcher.submit(['1'], 1, { deadline: deadline() });
    await new Promise((r) => setImmediate(r));
    // One batch ahead of it (~40 ms) and its own (~40 ms): a 20 ms deadline cannot be met.
    await refusedWith(batcher.submit(['hopeless'], 1, { deadline: new Date(Date.now() + 20) }));
    await running;
    expect(batches.flat()).not.toContain('hopeless');
  });

  it('refuses requests whose estimated wait exceeds the queue wait bound', async () => {
    const { batcher } = recorder({ maxInFlight: 1, maxBatchSize: 1, delayMs: 20, maxQueueWaitMs: 50 });
    await batcher.submit(['warm'], 1, { deadline: deadline() });
    const outcomes = await Promise.allSettled(
      Array.from({ length: 12 }, (_, i) => batcher.submit([String(i)], 1, { deadline: deadline() })),
    );
    // Single-row batches of ~20 ms each: the first few fit in 50 ms of waiting, the rest are refused.
    const pattern = outcomes.map((o) => (o.status === 'fulfilled' ? 'ok' : 'refused')).join(' ');
    expect(pattern).toMatch(/^(ok )+(refused ?)+$/);
    for (const o of outcomes)
      if (o.status === 'rejected') expect((o.reason as StatusError).code).toBe(status.RESOURCE_EXHAUSTED);
  });

  it('drops a queued request whose deadline passed before its batch left, without computing it', async () => {
    const { batches, batcher } = recorder({ maxInFlight: 1, delayMs: 40 });
    const first = batcher.submit(['1'], 1, { deadline: deadline() });
    await new Promise((r) => setImmediate(r));
    // No signal: only the deadline says its caller has gone (as with a transport that cannot tell).
    const expired = batcher.submit(['late'], 1, { deadline: new Date(Date.now() + 10) });
    const alive = batcher.submit(['2'], 1, { deadline: deadline() });
    await expect(expired).rejects.toMatchObject({ code: status.DEADLINE_EXCEEDED });
    await Promise.all([first, alive]);
    expect(batches).toEqual([['1'], ['2']]);
  });
});
