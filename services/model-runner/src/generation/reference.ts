/**
 * Greedy decoding without a KV cache: every new token re-runs the whole
 * sequence through the model (past of length 0). It is what the cache must
 * reproduce, so tests hold the engine to it, and the benchmark's baseline
 * for what the cache saves.
 */
import * as ort from 'onnxruntime-node';
import type { ModelConfig } from '@maas/shared';
import type { DecoderSession } from './batch-decoder.js';
import { emptyPast } from './slot-cache.js';
import { argmax } from './sampling.js';

type Generation = NonNullable<ModelConfig['generation']>;

/** Runs the full sequence once; returns the last position's logits. */
export async function lastLogitsByRecompute(
  session: DecoderSession,
  g: Generation,
  ids: readonly number[],
): Promise<Float32Array> {
  const n = ids.length;
  const feeds: Record<string, ort.Tensor> = {
    input_ids: new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [1, n]),
    attention_mask: new ort.Tensor('int64', new BigInt64Array(n).fill(1n), [1, n]),
    position_ids: new ort.Tensor(
      'int64',
      BigInt64Array.from(ids, (_, i) => BigInt(i)),
      [1, n],
    ),
  };
  emptyPast(g, 1).forEach((tensor, i) => {
    const layer = String(i >> 1);
    const pattern = i % 2 === 0 ? g.pastKeyInput : g.pastValueInput;
    feeds[pattern.replaceAll('{layer}', layer)] = tensor;
  });
  const out = await session.run(feeds);
  const logits = (out.logits as ort.Tensor).data as Float32Array;
  return logits.slice((n - 1) * g.vocabSize, n * g.vocabSize);
}

/** `count` greedy tokens after the prompt (no end-of-sequence handling). */
export async function greedyByRecompute(
  session: DecoderSession,
  g: Generation,
  prompt: readonly number[],
  count: number,
): Promise<number[]> {
  const ids = [...prompt];
  for (let k = 0; k < count; k++) ids.push(argmax(await lastLogitsByRecompute(session, g, ids)));
  return ids.slice(prompt.length);
}
