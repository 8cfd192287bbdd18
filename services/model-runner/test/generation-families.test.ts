/**
 * Decoder families besides GPT-2, as optimum exports them: Llama/Mistral/Qwen2
 * (grouped-query attention, rotary positions), Phi-3 (fused projections), a
 * graph without position_ids, a float16 cache, the merged decoder
 * (`use_cache_branch`). Each: the engine's cached
 * generation equals full recomputation, sequences batched together (joining
 * and leaving, greedy and seeded sampling) get what they get alone, and the
 * runner loads and serves it over gRPC from its repository.
 */
import { FinishReason } from '@maas/shared/gen/maas/runner/v1/generation';
import type { LlamaOptions } from '@maas/models';
import { makeTempDir } from '@maas/models';
import { SessionDecoder } from '../src/generation/batch-decoder';
import { greedyByRecompute } from '../src/generation/reference';
import {
  generate,
  histogram,
  llamaConfigJson,
  llamaDecoder,
  startEngine,
  TEST_PROMPTS,
  until,
  type Ask,
  type Generated,
} from './generation-harness';
import { generate as generateOverGrpc, startTestRunner } from './helpers';
import { writeModel } from './models';
import type { GenerationEngine } from '../src/generation/index';

const FAMILIES: [string, LlamaOptions][] = [
  ['llama-gqa', { kvHeads: 2 }],
  ['mistral-gqa-4-to-1', { heads: 8, kvHeads: 2, hidden: 64, seed: 5 }],
  ['phi3-fused', { fused: true, kvHeads: 4, seed: 7 }],
  ['no-position-ids', { positionIds: false, kvHeads: 2, seed: 9 }],
  ['fp16-cache', { kvType: 'float16', kvHeads: 2, seed: 13 }],
  ['merged-decoder', { merged: true, kvHeads: 2, seed: 17 }],
];

const PROMPTS = TEST_PROMPTS.slice(0, 5);
const askFor = (i: number): Ask => ({
  promptIds: PROMPTS[i]!,
  maxNewTokens: 10 + 3 * i,
  sampling: i % 2 === 0 ? {} : { temperature: 0.9, topK: 50, topP: 0.95, seed: 1000 + i },
});

/** Each sequence arrives once the one before has two tokens: joins a running batch, leaves it at its own length. */
async function staggered(engine: GenerationEngine, count: number): Promise<Generated[]> {
  const results: Promise<Generated>[] = [];
  const start = (i: number) => {
    results[i] = generate(engine, askFor(i), (_, n) => {
      if (n === 2 && i + 1 < count) start(i + 1);
    });
  };
  start(0);
  await until(() => results.length === count);
  return Promise.all(results);
}

describe.each(FAMILIES)('%s', (name, options) => {
  it('generates with its cache what full recomputation gives, batched what it gives alone', async () => {
    const model = await llamaDecoder(name, options);
    const g = model.config.generation!;
    // The runner's load-time edit applies (each step returns only the new keys/values), also where
    // `present` comes out of the merged decoder's If (both branches edited: merged-kv-outputs.ts).
    expect(new SessionDecoder(model.session, g, name).newPositionsOnly).toBe(true);

    const { engine, registry } = startEngine(model);
    for (const prompt of [PROMPTS[0]!, PROMPTS[2]!]) {
      const { tokens } = await generate(engine, { promptIds: prompt, maxNewTokens: 24 });
      expect(tokens).toEqual(await greedyByRecompute(model.unedited, g, prompt, 24));
    }
    const alone: number[][] = [];
    for (let i = 0; i < PROMPTS.length; i++) alone.push((await generate(engine, askFor(i))).tokens);
    const stepsBefore = await histogram(registry, 'maas_runner_generation_step_batch_size', 'count');
    const rowsBefore = await histogram(registry, 'maas_runner_generation_step_batch_size', 'sum');
    const together = await staggered(engine, PROMPTS.length);
    expect(together.map((r) => r.tokens)).toEqual(alone);
    const steps =
      (await histogram(registry, 'maas_runner_generation_step_batch_size', 'count')) - stepsBefore;
    const rows = (await histogram(registry, 'maas_runner_generation_step_batch_size', 'sum')) - rowsBefore;
    expect(rows / steps).toBeGreaterThan(2);
    expect(engine.stats()).toEqual({ running: 0, waiting: 0, cachedTokens: 0 });
    await engine.close();
    await model.session.release();
    await model.unedited.release();
  });
});

describe('what the cache holds', () => {
  it('holds the key/value heads of grouped-query attention, in the graph element type', async () => {
    const bytesPerToken = async (options: LlamaOptions) => {
      const model = await llamaDecoder('sized', options);
      const { engine } = startEngine(model);
      const { result } = await generate(engine, { promptIds: PROMPTS[0]!, maxNewTokens: 8 });
      expect(result.generatedTokens).toBe(8);
      const { writtenBytes } = engine.cacheStats();
      await engine.close();
      await model.session.release();
      await model.unedited.release();
      return writtenBytes;
    };
    // 2 layers × key and value × kvHeads × headDim 8 × element size, per cached token.
    const full = await bytesPerToken({ kvHeads: 4 });
    const grouped = await bytesPerToken({ kvHeads: 2 });
    const half = await bytesPerToken({ kvHeads: 2, kvType: 'float16' });
    // The prompt's 4 and 7 generated tokens (the 8th is never fed back).
    expect(full).toBe((4 + 8 - 1) * 2 * 2 * 4 * 8 * 4);
    expect(grouped).toBe(full / 2);
    expect(half).toBe(grouped / 2);
  });

  it('refuses a grouped-query graph whose config gives the query heads as the cache heads', async () => {
    const model = await llamaDecoder('gqa', { kvHeads: 2 });
    const g = { ...model.config.generation!, numKeyValueHeads: undefined };
    expect(() => new SessionDecoder(model.session, g, 'gqa')).toThrow(
      "model gqa: input 'past_key_values.0.key' has 2 key/value heads in the graph, the config says 4 " +
        '(generation.numHeads; with grouped-query attention set generation.numKeyValueHeads, as num_key_value_heads in config.json)',
    );
    await model.session.release();
    await model.unedited.release();
  });
});

describe('in the runner', () => {
  it('loads each family from its repository and streams the recomputed greedy tokens over gRPC', async () => {
    const root = makeTempDir('maas-families-');
    const models = await Promise.all(FAMILIES.map(([name, options]) => llamaDecoder(name, options)));
    for (const [i, [name, options]] of FAMILIES.entries())
      writeModel(root, name, llamaConfigJson(name, options), models[i]!.bytes);
    const t = await startTestRunner(root);
    try {
      for (const model of models) {
        const { tokens, last } = await generateOverGrpc(t.generation, {
          modelName: model.name,
          promptIds: PROMPTS[2],
          maxNewTokens: 16,
          ignoreEos: true,
        }).done;
        expect(tokens).toEqual(
          await greedyByRecompute(model.unedited, model.config.generation!, PROMPTS[2]!, 16),
        );
        expect(last.finishReason).toBe(FinishReason.FINISH_REASON_LENGTH);
      }
    } finally {
      await t.close();
      for (const model of models) {
        await model.session.release();
        await model.unedited.release();
      }
    }
  });
});
