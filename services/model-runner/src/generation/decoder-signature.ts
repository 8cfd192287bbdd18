/**
 * Which of the optimum decoder signatures a graph has, read from the session
 * once at load: the families Hugging Face optimum exports differ in a few
 * inputs and in the cache's element type, not in how the engine drives them.
 *
 * - `position_ids` [b, s]: GPT-2, Llama/Mistral/Qwen2, Phi-3 take it; some
 *   exports compute positions from `attention_mask` inside the graph and have
 *   no such input.
 * - `use_cache_branch` bool [1]: the merged decoder (`decoder_model_merged.onnx`)
 *   holds the first-run and the with-past graphs behind an If; false on a
 *   prefill (past of length 0), true on a decode step.
 * - past/present element type: float32, or float16 (fp16 exports); the cache
 *   buffers are kept in the graph's type.
 * - key/value heads: with grouped-query attention (Llama 2 70B, Mistral,
 *   Qwen2) fewer than the query heads; the cache holds the key/value heads.
 *
 * A graph the engine cannot drive is refused here, naming what is missing or
 * what disagrees with the config.
 */
import type * as ort from 'onnxruntime-node';
import type { ModelConfig } from '@maas/shared';

type Generation = NonNullable<ModelConfig['generation']>;

export type KvDatatype = 'float32' | 'float16';

export interface DecoderSignature {
  positionIds: boolean;
  useCacheBranch: boolean;
  kvType: KvDatatype;
}

/** What the signature is read from: a session, or a worker's description of one. */
export interface GraphInputs {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  readonly inputMetadata?: readonly ort.InferenceSession.ValueMetadata[];
}

export const USE_CACHE_BRANCH = 'use_cache_branch';

/** Key/value heads the cache holds: the config's numKeyValueHeads, else numHeads. */
export const kvHeads = (g: Generation): number => g.numKeyValueHeads ?? g.numHeads;

export function readDecoderSignature(
  session: GraphInputs,
  g: Generation,
  pastNames: readonly string[],
  kvOutputNames: readonly string[],
  modelName: string,
): DecoderSignature {
  const inputs = new Set(session.inputNames);
  const outputs = new Set(session.outputNames);
  const missingIn = ['input_ids', 'attention_mask', ...pastNames].filter((n) => !inputs.has(n));
  const missingOut = ['logits', ...kvOutputNames].filter((n) => !outputs.has(n));
  const refuse = (what: string) =>
    new Error(`model ${modelName}: not a KV-cache decoder in the optimum signature; ${what}`);
  if (missingIn.length > 0 || missingOut.length > 0) {
    throw refuse(
      `missing ${[...missingIn.map((n) => `input '${n}'`), ...missingOut.map((n) => `output '${n}'`)].join(', ')}`,
    );
  }
  const metadata = new Map((session.inputMetadata ?? []).map((m) => [m.name, m]));
  const types = new Set<string>();
  for (const name of pastNames) {
    const meta = metadata.get(name);
    if (!meta?.isTensor) continue; // no metadata: float32 and the config's shape are assumed
    types.add(meta.type);
    const [, heads, , headDim] = meta.shape;
    if (meta.shape.length !== 4) throw refuse(`input '${name}' has ${meta.shape.length} dimensions, not 4`);
    if (typeof heads === 'number' && heads !== kvHeads(g)) {
      throw new Error(
        `model ${modelName}: input '${name}' has ${heads} key/value heads in the graph, the config says ` +
          `${kvHeads(g)} (generation.${g.numKeyValueHeads === undefined ? 'numHeads' : 'numKeyValueHeads'}; ` +
          'with grouped-query attention set generation.numKeyValueHeads, as num_key_value_heads in config.json)',
      );
    }
    if (typeof headDim === 'number' && headDim !== g.headDim) {
      throw new Error(
        `model ${modelName}: input '${name}' has head size ${headDim} in the graph, the config says ${g.headDim} (generation.headDim)`,
      );
    }
  }
  if (types.size > 1) throw refuse(`the past inputs mix element types (${[...types].join(', ')})`);
  const kvType = ([...types][0] ?? 'float32') as string;
  if (kvType !== 'float32' && kvType !== 'float16') {
    throw refuse(`the past inputs are ${kvType}; the cache is kept as float32 or float16`);
  }
  const branch = metadata.get(USE_CACHE_BRANCH);
  if (branch && (!branch.isTensor || branch.type !== 'bool')) {
    throw refuse(`input '${USE_CACHE_BRANCH}' is not a bool tensor`);
  }
  return { positionIds: inputs.has('position_ids'), useCacheBranch: inputs.has(USE_CACHE_BRANCH), kvType };
}
