/**
 * A load-time edit of a decoder graph in the optimum signature: the engine
 * keeps every sequence's keys/values in its own buffers (slot-cache.ts), so
 * of each layer's `present` output (past ⊕ new, the whole cache again) it
 * needs only the new positions. Returned as a graph output, `present` costs
 * a copy of the whole cache into fresh JS memory every step (onnxruntime-node
 * copies every output) and the garbage it leaves; the tensor that the graph
 * concatenates onto the past is the same information, a few KB.
 *
 * The edit follows each `present` output back (through Identity nodes) to the
 * Concat that joins the past input with the new keys/values on the sequence
 * axis, and exposes that second input as an extra graph output, named
 * `<present>.new`, in place of `present`. Nothing inside the graph changes.
 * A graph where the pattern is not found is left as it is, with the reason:
 * the engine then reads the new position out of `present`.
 */
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import { readFileSync } from 'node:fs';
import * as ort from 'onnxruntime-node';
import type { Logger, ModelConfig } from '@maas/shared';
import {
  fields,
  GRAPH_INITIALIZER,
  GRAPH_NODE,
  GRAPH_OUTPUT,
  MODEL_GRAPH,
  parseNode,
  TENSOR_EXTERNAL_DATA,
  tensorElemType,
  VALUE_INFO_TYPE,
  writeGraphOutput,
  identitySource,
  valueInfoName,
  withGraph,
  writeNode,
} from '../onnx-wire.js';
import { splitAttention } from './split-attention.js';
import { exposeMergedNewKeyValues } from './merged-kv-outputs.js';
import { kvHeads } from './decoder-signature.js';

export interface KvOutputEdit {
  /** `present` output name → the name of the output that carries only its new positions. */
  newOutputs: Map<string, string>;
  /** The edited model. */
  model: Uint8Array;
}

/** Name of the output carrying the new keys/values of a `present` output. */
export const newPositionsOutput = (present: string) => `${present}.new`;

/**
 * The edited model, or why the graph cannot be edited. `pairs` lists each
 * cache tensor as its past input and its present output.
 */
export function exposeNewKeyValues(
  model: Uint8Array,
  pairs: { past: string; present: string }[],
): KvOutputEdit | { reason: string } {
  const top = fields(model);
  const graphField = top.find((f) => f.no === MODEL_GRAPH);
  if (!graphField) return { reason: 'the model has no graph' };
  const graph = fields(graphField.body!);
  const external = graph.some(
    (f) => f.no === GRAPH_INITIALIZER && fields(f.body!).some((t) => t.no === TENSOR_EXTERNAL_DATA),
  );
  // A model loaded from memory cannot find weights kept in files beside it.
  if (external) return { reason: 'its weights are external data' };
  const source = identitySource(graph.filter((f) => f.no === GRAPH_NODE).map((f) => parseNode(f.body!)));
  // The merged decoder: present comes out of an If on use_cache_branch (merged-kv-outputs.ts).
  if (source(pairs[0]?.present ?? '').node?.opType === 'If') {
    return exposeMergedNewKeyValues(model, pairs, newPositionsOutput) ?? { reason: 'no If found' };
  }
  const newOutputs = new Map<string, string>();
  const newTensors = new Map<string, string>();
  for (const { past, present } of pairs) {
    const { node } = source(present);
    const axis = node?.ints.get('axis');
    if (!node || node.opType !== 'Concat' || node.domain !== '' || node.inputs.length !== 2) {
      return { reason: `output '${present}' is not a Concat of the past and the new keys/values` };
    }
    if (source(node.inputs[0]!).name !== past || (axis !== 2 && axis !== -2)) {
      return { reason: `output '${present}' does not concatenate '${past}' on the sequence axis` };
    }
    newOutputs.set(present, newPositionsOutput(present));
    newTensors.set(newPositionsOutput(present), node.inputs[1]!);
  }
  const presentNames = new Set(newOutputs.keys());
  const graphOut = new BinaryWriter();
  for (const f of graph) {
    if (f.no === GRAPH_OUTPUT) {
      const info = fields(f.body!);
      const name = valueInfoName(f);
      if (presentNames.has(name)) {
        // Same element type; the shape is left open ([rows, heads, new positions, headDim]).
        const type = info.find((i) => i.no === VALUE_INFO_TYPE);
        const elemType = type && tensorElemType(type.body!);
        writeGraphOutput(graphOut, newOutputs.get(name)!, elemType);
        continue;
      }
    }
    graphOut.raw(f.raw);
  }
  // The new output as an Identity of the tensor the Concat appends.
  for (const [output, tensor] of newTensors)
    writeNode(graphOut, { opType: 'Identity', name: output, inputs: [tensor], outputs: [output] });
  return { newOutputs, model: withGraph(top, graphOut.finish()) };
}

type Generation = NonNullable<ModelConfig['generation']>;

/** The cache tensors' names, per layer key then value (the order of the cache buffers). */
export function cacheTensorNames(g: Generation): { past: string[]; present: string[] } {
  const names = (key: string, value: string) =>
    Array.from({ length: g.numLayers }, (_, l) =>
      [key, value].map((p) => p.replaceAll('{layer}', String(l))),
    ).flat();
  return {
    past: names(g.pastKeyInput, g.pastValueInput),
    present: names(g.presentKeyOutput, g.presentValueOutput),
  };
}

/**
 * The decoder the engine runs: `model` with each `present` output replaced by
 * its new positions (exposeNewKeyValues), or as it is, with the reason; once
 * edited, also attending without concatenating the cache where the graph
 * allows (split-attention.ts; `attention` says whether it did, or why not).
 */
export function decoderForEngine(
  model: Uint8Array,
  g: Generation,
):
  | { model: Uint8Array; edited: true; attention: 'split' | { reason: string } }
  | { model: Uint8Array; edited: false; reason: string } {
  const { past, present } = cacheTensorNames(g);
  const edit = exposeNewKeyValues(
    model,
    past.map((p, i) => ({ past: p, present: present[i]! })),
  );
  if ('reason' in edit) return { model, edited: false, reason: edit.reason };
  const layers = Array.from({ length: g.numLayers }, (_, l) => ({
    pastKey: past[2 * l]!,
    pastValue: past[2 * l + 1]!,
  }));
  const split = splitAttention(edit.model, layers, {
    query: g.numHeads,
    keyValue: kvHeads(g),
    headDim: g.headDim,
  });
  return 'reason' in split
    ? { model: edit.model, edited: true, attention: split }
    : { model: split.model, edited: true, attention: 'split' };
}

/** Why decoderForEngine left a graph as it was (''), in a form that crosses a thread boundary. */
export interface DecoderEditReasons {
  /** `present` is still returned whole every step. */
  uneditedReason: string;
  /** Attention still concatenates (copies) the cache every step. */
  unsplitReason: string;
}

export const editReasons = (d: ReturnType<typeof decoderForEngine>): DecoderEditReasons => ({
  uneditedReason: d.edited ? '' : d.reason,
  unsplitReason: d.edited && d.attention !== 'split' ? d.attention.reason : '',
});

/** A warning for a decoder whose graph could not be edited, a note for one whose attention still copies its cache. */
export function logDecoderEdit(logger: Logger, modelName: string, reasons: DecoderEditReasons): void {
  if (reasons.uneditedReason) {
    logger.warn(
      { model: modelName, reason: reasons.uneditedReason },
      'decoder returns the whole cache as present every step; the engine reads its new positions from it',
    );
  } else if (reasons.unsplitReason) {
    logger.info(
      { model: modelName, reason: reasons.unsplitReason },
      "decoder's attention concatenates its whole cache every step (the attention split does not apply)",
    );
  }
}

/**
 * Opens a decoder in this thread for a SessionDecoder (edited as
 * decoderForEngine says), logging why when the graph cannot be edited. The
 * runner opens its decoders in a worker instead (WorkerDecoder).
 */
export async function openDecoderSession(
  model: string | Uint8Array,
  g: Generation,
  options: ort.InferenceSession.SessionOptions,
  logger?: Logger,
  modelName = '',
): Promise<ort.InferenceSession> {
  const decoder = decoderForEngine(typeof model === 'string' ? readFileSync(model) : model, g);
  if (logger) logDecoderEdit(logger, modelName, editReasons(decoder));
  return ort.InferenceSession.create(decoder.model, options);
}
