/**
 * Greedy decoding without a KV cache: every new token re-runs the whole
 * sequence through the model (past of length 0). It is what the cache must
 * reproduce, so tests hold the engine to it, and the benchmark's baseline
 * for what the cache saves.
 */
import * as ort from 'onnxruntime-node';
import type { ModelConfig } from '@maas/shared';
import { decoderFeeds, kvShapeOf, type DecoderSession } from './batch-decoder.js';
import { readDecoderSignature } from './decoder-signature.js';
import { logitsOf } from './logits.js';
import { cacheTensorNames } from './new-kv-outputs.js';
import { emptyPast } from './slot-cache.js';
import { argmax } from './sampling.js';
import type { GenerationRequest } from './engine.js';

type Generation = NonNullable<ModelConfig['generation']>;

/** Runs the full sequence once; returns the last position's logits. */
export async function lastLogitsByRecompute(
  session: DecoderSession,
  g: Generation,
  ids: readonly number[],
): Promise<Float32Array> {
  const n = ids.length;
  const { past } = cacheTensorNames(g);
  const signature = readDecoderSignature(session, g, past, [], 'reference');
  const feeds = decoderFeeds(
    signature,
    BigInt64Array.from(ids, BigInt),
    new BigInt64Array(n).fill(1n),
    BigInt64Array.from(ids, (_, i) => BigInt(i)),
    [1, n, n],
    false,
  );
  emptyPast(kvShapeOf(g, signature), 1).forEach((tensor, i) => (feeds[past[i]!] = tensor));
  const out = await session.run(feeds);
  return logitsOf(out.logits as ort.Tensor, n - 1, g.vocabSize).slice();
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

/** A greedy request for exactly `maxNewTokens` tokens (end of sequence ignored): the benchmarks' and the GPU check's. */
export const greedyRequest = (promptIds: number[], maxNewTokens: number): GenerationRequest => ({
  promptIds,
  maxNewTokens,
  sampling: {},
  stopTokenIds: [],
  ignoreEos: true,
  signal: new AbortController().signal,
});
