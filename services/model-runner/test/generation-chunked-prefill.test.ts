/**
 * Chunked prefill: a prompt longer than a turn's prefill budget
 * (prefillChunkTokens) that arrives while others decode is prefilled a chunk
 * per scheduler turn, between decode steps. Its tokens are what it gets
 * alone (and what recomputation gives); the running sequences keep getting a
 * token every turn; it can be cancelled part-way; it works on graphs the
 * engine edits and on those it runs as exported.
 */
import { status } from '@grpc/grpc-js';
import type * as ort from 'onnxruntime-node';
import type { LlamaOptions } from '@maas/models';
import { StatusError } from '@maas/shared';
import { greedyByRecompute } from '../src/generation/reference';
import {
  generate,
  llamaDecoder,
  metric,
  startEngine,
  tinyDecoder,
  until,
  withRun,
  type DecoderModel,
} from './generation-harness';

const CHUNK = 16;
/** 70 tokens: five chunks of 16 and one of 6. */
const LONG = Array.from({ length: 70 }, (_, i) => 10 + ((i * 37) % 1900));

let model: DecoderModel;
beforeAll(async () => {
  model = await tinyDecoder();
});
afterAll(async () => {
  await model?.session.release();
});

/**
 * One sequence decoding, then LONG arriving: returns what each generated and
 * how many tokens the running one got between LONG's arrival and its first token.
 */
async function longPromptDuringDecode(m: DecoderModel, session: ort.InferenceSession = m.session) {
  const { engine, registry } = startEngine(m, { prefillChunkTokens: CHUNK }, session);
  let long: Promise<{ tokens: number[] }> | undefined;
  let arrivedAt = -1;
  let firstLongToken = -1;
  const runningTokens: number[] = [];
  const running = generate(engine, { promptIds: [464, 1068], maxNewTokens: 40 }, (token, count) => {
    runningTokens.push(token);
    if (count === 3) {
      arrivedAt = count;
      long = generate(engine, { promptIds: LONG, maxNewTokens: 12 }, (_, n) => {
        if (n === 1) firstLongToken = runningTokens.length;
      });
    }
  });
  const done = await running;
  await until(() => long !== undefined);
  const longDone = await long!;
  const chunks = await metric(registry, 'maas_runner_generation_prefill_chunks_total');
  expect(engine.stats()).toEqual({ running: 0, waiting: 0, cachedTokens: 0 });
  await engine.close();
  return { running: done.tokens, long: longDone.tokens, between: firstLongToken - arrivedAt, chunks };
}

describe('chunked prefill', () => {
  it('prefills a long prompt a chunk per turn while the batch keeps decoding; tokens unchanged', async () => {
    const { engine } = startEngine(model, { prefillChunkTokens: CHUNK });
    const runningAlone = (await generate(engine, { promptIds: [464, 1068], maxNewTokens: 40 })).tokens;
    const longAlone = (await generate(engine, { promptIds: LONG, maxNewTokens: 12 })).tokens;
    await engine.close();
    expect(longAlone).toEqual(await greedyByRecompute(model.session, model.config.generation!, LONG, 12));

    const { running, long, between, chunks } = await longPromptDuringDecode(model);
    expect(running).toEqual(runningAlone);
    expect(long).toEqual(longAlone);
    expect(chunks).toBe(Math.ceil(LONG.length / CHUNK));
    // A decode step after each chunk but the last (whose turn also gives LONG its first token).
    expect(between).toBeGreaterThanOrEqual(chunks - 1);
  });

  it('prefills a long prompt whole when nothing decodes', async () => {
    const { engine, registry } = startEngine(model, { prefillChunkTokens: CHUNK });
    await generate(engine, { promptIds: LONG, maxNewTokens: 4 });
    expect(await metric(registry, 'maas_runner_generation_prefill_chunks_total')).toBe(0);
    await engine.close();
  });

  it('drops a chunked prefill cancelled part-way; the running sequences go on', async () => {
    const { engine, registry } = startEngine(model, { prefillChunkTokens: CHUNK });
    const controller = new AbortController();
    let cancelled: Promise<unknown> | undefined;
    const running = generate(engine, { promptIds: [1549], maxNewTokens: 30 }, (_, count) => {
      if (count === 2) {
        cancelled = engine.generate(
          {
            promptIds: LONG,
            maxNewTokens: 8,
            sampling: {},
            stopTokenIds: [],
            ignoreEos: true,
            signal: controller.signal,
          },
          () => undefined,
        );
      }
      if (count === 4) controller.abort();
    });
    const done = await running;
    expect(done.tokens).toHaveLength(30);
    await until(() => cancelled !== undefined);
    expect(await cancelled).toMatchObject({ finishReason: 'cancelled', generatedTokens: 0 });
    const chunks = await metric(registry, 'maas_runner_generation_prefill_chunks_total');
    expect(chunks).toBeGreaterThan(0);
    expect(chunks).toBeLessThan(Math.ceil(LONG.length / CHUNK));
    expect(engine.stats()).toEqual({ running: 0, waiting: 0, cachedTokens: 0 });
    expect(await metric(registry, 'maas_runner_generation_reserved_tokens')).toBe(0);
    await engine.close();
  });

  it('fails only the chunked sequence when one of its runs fails', async () => {
    let failChunk = false;
    const faulty = withRun(model.session, (feeds, run) => {
      // A chunk run: one row, more than one new token.
      if (failChunk && feeds.input_ids!.dims[0] === 1 && feeds.input_ids!.dims[1]! > 1) {
        failChunk = false;
        return Promise.reject(new Error('injected chunk failure'));
      }
      return run(feeds);
    });
    const { engine } = startEngine(model, { prefillChunkTokens: CHUNK }, faulty);
    let failed: Promise<unknown> | undefined;
    const running = generate(engine, { promptIds: [1549], maxNewTokens: 20 }, (_, count) => {
      if (count === 2) {
        failed = generate(engine, { promptIds: LONG, maxNewTokens: 8 }).catch((e: unknown) => e);
        // Its first chunk runs; the second fails.
        setImmediate(() => (failChunk = true));
      }
    });
    expect((await running).tokens).toHaveLength(20);
    await until(() => failed !== undefined);
    const error = (await failed) as StatusError;
    expect(error.code).toBe(status.INTERNAL);
    expect(error.message).toContain('injected chunk failure');
    expect(engine.stats()).toEqual({ running: 0, waiting: 0, cachedTokens: 0 });
    await engine.close();
  });

  it.each<[string, LlamaOptions]>([
    ['grouped-query, float16 cache (edited graph)', { kvHeads: 2, kvType: 'float16' }],
    ['merged decoder (run as exported: present is the whole cache)', { kvHeads: 2, merged: true }],
  ])('gives the same tokens on a %s', async (name, options) => {
    const family = await llamaDecoder('chunked', options);
    const { engine } = startEngine(family, { prefillChunkTokens: CHUNK });
    const runningAlone = (await generate(engine, { promptIds: [464, 1068], maxNewTokens: 40 })).tokens;
    await engine.close();
    const { running, long, chunks } = await longPromptDuringDecode(family);
    expect(running).toEqual(runningAlone);
    expect(long).toEqual(await greedyByRecompute(family.unedited, family.config.generation!, LONG, 12));
    expect(chunks).toBe(Math.ceil(LONG.length / CHUNK));
    await family.session.release();
    await family.unedited.release();
  });
});
