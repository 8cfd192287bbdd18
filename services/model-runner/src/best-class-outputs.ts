/**
 * A load-time edit of text recognizers (task text_recognition): greedy CTC
 * decoding reads only each step's best class and its probability, but the
 * graph's output is the whole distribution, [N, steps, classes] — for
 * PaddleOCR's 6,625 classes 13 MB for a receipt's 7 lines, encoded, sent and
 * decoded on every call. The edit adds two outputs computed from it in the
 * graph, ArgMax and ReduceMax over the last axis ([N, steps] each, named by
 * @maas/shared's bestClassOutputs), and the runner serves them beside the
 * original (which stays: a client may still ask for it).
 */
import { readFileSync } from 'node:fs';
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import { bestClassOutputs, type ModelConfig } from '@maas/shared';
import {
  ELEM_FLOAT,
  ELEM_INT64,
  fields,
  GRAPH_OUTPUT,
  MODEL_GRAPH,
  opsetVersion,
  writeGraphOutput,
  writeInt64Initializer,
  writeNode,
  valueInfoName,
  withGraph,
} from './onnx-wire.js';

/** The recognizer's output the edit reads: its only FP32 output. */
function distributionOutput(config: ModelConfig): string | undefined {
  const fp32 = config.outputs.filter((o) => o.datatype === 'FP32');
  return fp32.length === 1 ? fp32[0]!.name : undefined;
}

/** The config the runner serves for a text recognizer: its outputs and the two derived ones. */
export function withBestClassOutputs(config: ModelConfig): ModelConfig {
  const output = distributionOutput(config);
  if (config.task !== 'text_recognition' || !output) return config;
  const spec = config.outputs.find((o) => o.name === output)!;
  // [steps] per image: the distribution's dims less the class axis.
  const dims = spec.dims.slice(0, -1);
  const { index, probability } = bestClassOutputs(output);
  return {
    ...config,
    outputs: [
      ...config.outputs,
      { ...spec, name: index, datatype: 'INT64', dims },
      { ...spec, name: probability, datatype: 'FP32', dims },
    ],
  };
}

/** The model with the two outputs added, or why not. */
export function addBestClassOutputs(model: Uint8Array, config: ModelConfig): Uint8Array | { reason: string } {
  const output = distributionOutput(config);
  if (!output) return { reason: 'the recognizer has no single FP32 output' };
  const top = fields(model);
  const graphField = top.find((f) => f.no === MODEL_GRAPH);
  if (!graphField) return { reason: 'the model has no graph' };
  const graph = fields(graphField.body!);
  const outputs = graph.filter((f) => f.no === GRAPH_OUTPUT).map(valueInfoName);
  if (!outputs.includes(output)) return { reason: `the graph has no output '${output}'` };
  const opset = opsetVersion(model) ?? 0;
  const { index, probability } = bestClassOutputs(output);
  const out = new BinaryWriter();
  for (const f of graph) out.raw(f.raw);
  writeNode(out, {
    opType: 'ArgMax',
    name: index,
    inputs: [output],
    outputs: [index],
    attributes: { axis: -1, keepdims: 0 },
  });
  // ReduceMax takes its axes as an input from opset 18, as an attribute before.
  if (opset >= 18) {
    const axes = `${probability}/axes`;
    writeInt64Initializer(out, axes, [-1n]);
    writeNode(out, {
      opType: 'ReduceMax',
      name: probability,
      inputs: [output, axes],
      outputs: [probability],
      attributes: { keepdims: 0 },
    });
  } else {
    writeNode(out, {
      opType: 'ReduceMax',
      name: probability,
      inputs: [output],
      outputs: [probability],
      attributes: { axes: [-1], keepdims: 0 },
    });
  }
  writeGraphOutput(out, index, ELEM_INT64);
  writeGraphOutput(out, probability, ELEM_FLOAT);
  return withGraph(top, out.finish());
}

/**
 * What the runner serves for a repository model: its config (a text
 * recognizer's with the best-class outputs) and what to open (the edited
 * graph's bytes, or the file as it is). Throws when a recognizer cannot be edited.
 */
export function servedModel(
  modelPath: string,
  config: ModelConfig,
): { config: ModelConfig; model: string | Uint8Array } {
  const served = withBestClassOutputs(config);
  if (served === config) return { config, model: modelPath };
  const edited = addBestClassOutputs(new Uint8Array(readFileSync(modelPath)), config);
  if ('reason' in edited) throw new Error(`cannot add the best-class outputs: ${edited.reason}`);
  return { config: served, model: edited };
}
