/**
 * Priority at admission: waiting sequences are admitted lowest priority
 * first (vLLM's convention), arrival order among equals, and each gains a
 * level per `priorityAgingMs` waited, so a low-priority sequence is admitted
 * within bounded time however much higher-priority traffic arrives after it.
 */
import { status } from '@grpc/grpc-js';
import type * as ort from 'onnxruntime-node';
import { FinishReason } from '@maas/shared/gen/maas/runner/v1/generation';
import {
  generate,
  startEngine,
  tinyDecoder,
  withRun,
  writeTinyDecoderRepository,
  type DecoderModel,
} from './generation-harness';
import { failure, generate as generateOverGrpc, startTestRunner } from './helpers';

let model: DecoderModel;
beforeAll(async () => {
  model = await tinyDecoder();
});
afterAll(async () => {
  await model?.session.release();
});

/** The session, each run `delayMs` slower: a decode step long enough to time waiting against. */
const slowed = (session: ort.InferenceSession, delayMs: number) =>
  withRun(session, async (feeds, run) => {
    await new Promise((r) => setTimeout(r, delayMs));
    return run(feeds);
  });

describe('priority', () => {
  it('admits waiting sequences lowest priority first, in arrival order among equals', async () => {
    const { engine } = startEngine(model, { maxConcurrentSequences: 1 });
    const order: string[] = [];
    const queued: Promise<unknown>[] = [];
    const ask = (name: string, priority: number) =>
      generate(engine, { promptIds: [5, 6], maxNewTokens: 2, priority }, (_, n) => {
        if (n === 1) order.push(name);
      });
    await generate(engine, { promptIds: [1549], maxNewTokens: 20 }, (_, n) => {
      if (n === 1)
        queued.push(ask('batch', 10), ask('normal-1', 0), ask('interactive', -10), ask('normal-2', 0));
    });
    await Promise.all(queued);
    expect(order).toEqual(['interactive', 'normal-1', 'normal-2', 'batch']);
    await engine.close();
  });

  it('ages waiting sequences: one that has waited long goes before later higher-priority ones', async () => {
    // Each run 4 ms: the running sequence's 60 steps take at least 240 ms.
    const run = async (priorityAgingMs: number) => {
      const { engine } = startEngine(
        model,
        { maxConcurrentSequences: 1, priorityAgingMs },
        slowed(model.session, 4),
      );
      const order: string[] = [];
      const queued: Promise<unknown>[] = [];
      const ask = (name: string, priority: number) =>
        generate(engine, { promptIds: [5, 6], maxNewTokens: 2, priority }, (_, n) => {
          if (n === 1) order.push(name);
        });
      await generate(engine, { promptIds: [1549], maxNewTokens: 60 }, (_, n) => {
        if (n === 1) queued.push(ask('low, early', 100));
        // At least 200 ms later (50 steps of 4 ms).
        if (n === 50) queued.push(ask('high, late', -100));
      });
      await Promise.all(queued);
      await engine.close();
      return order;
    };
    // Half a millisecond a level: 200 ms of waiting is worth 400 levels.
    expect(await run(0.5)).toEqual(['low, early', 'high, late']);
    // Aging too slow to matter here: priority alone decides.
    expect(await run(1e9)).toEqual(['high, late', 'low, early']);
  });

  it('reaches the engine over gRPC, and out of range is INVALID_ARGUMENT naming priority', async () => {
    const t = await startTestRunner(writeTinyDecoderRepository());
    try {
      const ok = await generateOverGrpc(t.generation, {
        modelName: 'tiny-gpt2',
        promptIds: [1549],
        maxNewTokens: 3,
        priority: -100,
      }).done;
      expect(ok.last.finishReason).toBe(FinishReason.FINISH_REASON_LENGTH);
      for (const priority of [101, -101]) {
        const error = await failure(
          generateOverGrpc(t.generation, { modelName: 'tiny-gpt2', promptIds: [1549], priority }).done,
        );
        expect(error.code).toBe(status.INVALID_ARGUMENT);
        expect(error.details).toBe(`priority: ${priority} is outside -100..100 (lower is admitted first)`);
      }
    } finally {
      await t.close();
    }
  });
});
