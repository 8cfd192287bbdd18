/**
 * The runner's generation decoder in a worker thread (WorkerDecoder): the
 * session and the batch KV cache live in the worker, so prefill runs and
 * decode steps leave the event loop free; the tokens are those of the same
 * decoder in this thread.
 */
import { GraphBuilder } from '@maas/models';
import { SessionDecoder, WorkerDecoder, type BatchDecoder } from '../src/generation/index';
import type { Logger } from '@maas/shared';
import {
  generate,
  llamaDecoder,
  startEngineOn,
  tinyDecoder,
  tinyModelBytes,
  TINY_VOCAB,
  until,
  type DecoderModel,
  type Generated,
} from './generation-harness';

let model: DecoderModel;
let worker: WorkerDecoder;
beforeAll(async () => {
  model = await tinyDecoder();
  worker = await WorkerDecoder.create(
    tinyModelBytes(),
    model.config.generation!,
    { intraOpNumThreads: 1 },
    model.name,
  );
});
afterAll(async () => {
  await Promise.all([model?.session.release(), worker?.release()]);
});

const PROMPTS = [[464, 1068, 758, 218], [1549], [40, 1842, 428, 380, 11, 340, 99, 1001, 7], [1858, 373]];

/** Staggered arrivals with mixed lengths and sampling: sequences join and leave a running batch. */
async function staggered(decoder: BatchDecoder): Promise<number[][]> {
  const { engine } = startEngineOn(decoder, model);
  const results: Promise<Generated>[] = [];
  const start = (i: number) => {
    results[i] = generate(
      engine,
      {
        promptIds: PROMPTS[i]!,
        maxNewTokens: 8 + 5 * i,
        sampling: i % 2 ? { temperature: 0.9, topK: 40, seed: 7 + i } : {},
      },
      (_, count) => {
        if (count === 2 && i + 1 < PROMPTS.length) start(i + 1);
      },
    );
  };
  start(0);
  await until(() => results.length === PROMPTS.length);
  const tokens = (await Promise.all(results)).map((r) => r.tokens);
  expect(engine.cacheStats().newPositionsOnly).toBe(true);
  await engine.close();
  return tokens;
}

/** A big prefill (64 prompts of the whole context), and when a 5 ms timer fired relative to its end. */
async function timerDuringPrefill(decoder: BatchDecoder): Promise<{ timer: number; done: number }> {
  const rows = 64;
  const length = model.config.generation!.maxContextLength;
  const ids = BigInt64Array.from({ length: rows * length }, (_, i) => BigInt(i % TINY_VOCAB));
  const positions = BigInt64Array.from({ length: rows * length }, (_, i) => BigInt(i % length));
  const mask = new BigInt64Array(rows * length).fill(1n);
  let timer = 0;
  const fired = new Promise<void>((resolve) =>
    setTimeout(() => {
      timer = performance.now();
      resolve();
    }, 5),
  );
  const out = await decoder.prefill({ ids, mask, positions, rows, length });
  const done = performance.now();
  expect(out.logits.length).toBe(rows * TINY_VOCAB);
  await fired;
  await decoder.join([]);
  return { timer, done };
}

describe('WorkerDecoder', () => {
  it('gives the tokens of the same decoder in this thread (continuous batching, seeded sampling)', async () => {
    const here = await staggered(new SessionDecoder(model.session, model.config.generation!, model.name));
    expect(await staggered(worker)).toEqual(here);
    expect(worker.newPositionsOnly).toBe(true);
  });

  it('computes off the event loop: a timer fires during a prefill in the worker, not in this thread', async () => {
    const inThread = await timerDuringPrefill(
      new SessionDecoder(model.session, model.config.generation!, model.name),
    );
    // In this thread the run blocks the loop: the timer can only fire after it.
    expect(inThread.timer).toBeGreaterThan(inThread.done);
    const inWorker = await timerDuringPrefill(worker);
    expect(inWorker.timer).toBeLessThan(inWorker.done);
  });

  it("says at creation when a decoder's attention still copies its cache, and nothing when the edits apply", async () => {
    const notes: { level: string; fields: object; message: string }[] = [];
    const logger = Object.fromEntries(
      ['warn', 'info'].map((level) => [
        level,
        (fields: object, message: string) => notes.push({ level, fields, message }),
      ]),
    ) as unknown as Logger;
    const family = await llamaDecoder('fp16-cache', { kvType: 'float16', kvHeads: 2, seed: 13 });
    const g = family.config.generation!;
    const edited = await WorkerDecoder.create(
      tinyModelBytes(),
      model.config.generation!,
      {},
      model.name,
      logger,
    );
    expect(notes).toEqual([]);
    const unsplit = await WorkerDecoder.create(family.bytes, g, {}, 'fp16-cache', logger);
    expect(notes).toEqual([
      {
        level: 'info',
        fields: { model: 'fp16-cache', reason: expect.stringContaining('not read by one Transpose') },
        message: expect.stringContaining('concatenates its whole cache every step'),
      },
    ]);
    await Promise.all([
      edited.release(),
      unsplit.release(),
      family.session.release(),
      family.unedited.release(),
    ]);
  });

  it('refuses at creation a graph that is not a KV-cache decoder, naming what is missing', async () => {
    const b = new GraphBuilder('not-a-decoder');
    b.node('Identity', [b.input('input_ids', 'int64', ['batch', 'seq'])], {}, ['logits']);
    b.output('logits', 'int64', ['batch', 'seq']);
    await expect(WorkerDecoder.create(b.toBytes(), model.config.generation!, {}, 'broken')).rejects.toThrow(
      /model broken: not a KV-cache decoder.*missing input 'attention_mask'/,
    );
  });

  it('a worker that dies fails the calls in flight and later ones with why, and says so once', async () => {
    const doomed = await WorkerDecoder.create(tinyModelBytes(), model.config.generation!, {}, model.name);
    const failures: Error[] = [];
    doomed.onFailure = (error) => failures.push(error);
    // What a native crash in the worker looks like from this thread.
    await (
      doomed as unknown as { channel: { worker: { terminate(): Promise<number> } } }
    ).channel.worker.terminate();
    await expect(doomed.join([])).rejects.toThrow(/generation decoder worker exited/);
    expect(failures.map((e) => e.message)).toEqual([
      expect.stringMatching(/generation decoder worker exited/),
    ]);
    await doomed.release();
  });
});
