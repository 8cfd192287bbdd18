/**
 * A model's config must describe its graph: a disagreement found at load time
 * is a clear load error for that model, instead of a runtime error on the
 * first request (or, worse, wrong results).
 */
import type * as ort from 'onnxruntime-node';
import type { ModelConfig, TensorSpec } from '@maas/shared';
import { datatypeOfOrt } from './tensors.js';
import type { RunnableSession } from './worker-session.js';
import { USE_CACHE_BRANCH } from './generation/decoder-signature.js';

/** Problems of the config on its own (the schema checks the fields; these are relations between them). */
export function checkConfig(config: ModelConfig): string[] {
  const problems: string[] = [];
  const batching = config.maxBatchSize > 0;
  for (const kind of ['inputs', 'outputs'] as const) {
    const names = config[kind].map((t) => t.name);
    for (const name of new Set(names.filter((n, i) => names.indexOf(n) !== i)))
      problems.push(`${kind}: '${name}' is listed twice`);
  }
  for (const spec of config.inputs) {
    if (spec.ragged && !batching)
      problems.push(`input '${spec.name}' is ragged, which needs batching (maxBatchSize > 0)`);
    if (spec.ragged && spec.dims[0] !== -1)
      problems.push(
        `input '${spec.name}' is ragged, so its first dimension must be -1 (it is ${spec.dims[0]})`,
      );
    // Left out by a request, an optional input is filled with padValue: its shape must be known.
    const free = spec.dims.slice(spec.ragged ? 1 : 0);
    if (spec.optional && free.some((d) => d < 0))
      problems.push(
        `input '${spec.name}' is optional, so its dimensions must be fixed${spec.ragged ? ' (besides the ragged one)' : ''}`,
      );
  }
  for (const section of ['classification', 'embedding'] as const) {
    const output = config[section]?.output;
    if (output && !config.outputs.some((o) => o.name === output))
      problems.push(`${section}.output '${output}' is not among the outputs`);
  }
  return problems;
}

/** Disagreements between the config and the graph's inputs and outputs (names, types, ranks, fixed sizes). */
/** What the check reads of a session: its graph's inputs and outputs. */
export type GraphInfo = Pick<
  RunnableSession,
  'inputNames' | 'outputNames' | 'inputMetadata' | 'outputMetadata'
>;

export function checkAgainstGraph(config: ModelConfig, session: GraphInfo): string[] {
  const problems: string[] = [];
  const batching = config.maxBatchSize > 0;
  const cacheInput = cacheInputMatcher(config);
  const compare = (kind: 'input' | 'output', spec: TensorSpec, meta: ort.InferenceSession.ValueMetadata) => {
    if (!meta.isTensor) {
      problems.push(`${kind} '${spec.name}' is not a tensor in the graph`);
      return;
    }
    const graphType = datatypeOfOrt(meta.type);
    if (graphType !== spec.datatype)
      problems.push(
        `${kind} '${spec.name}' is ${graphType ?? meta.type} in the graph, ${spec.datatype} in the config`,
      );
    if (meta.shape.length === 0) return; // a graph without shape information
    const expected = batching ? [-1, ...spec.dims] : spec.dims;
    if (meta.shape.length !== expected.length) {
      problems.push(
        `${kind} '${spec.name}' has ${meta.shape.length} dimensions in the graph [${meta.shape.join(', ')}], ` +
          `the config says ${expected.length} [${expected.join(', ')}]${batching ? ' (batch dimension included)' : ''}`,
      );
      return;
    }
    meta.shape.forEach((graphDim, i) => {
      if (typeof graphDim !== 'number' || graphDim < 0) return;
      if (batching && i === 0) {
        if (!(graphDim === 1 && config.maxBatchSize === 1))
          problems.push(
            `${kind} '${spec.name}' has a fixed batch dimension ${graphDim} in the graph; batching (maxBatchSize ` +
              `${config.maxBatchSize}) needs it variable, or set maxBatchSize 0 and give full shapes`,
          );
        return;
      }
      const configured = expected[i]!;
      if (configured >= 0 && configured !== graphDim)
        problems.push(
          `${kind} '${spec.name}' dimension ${i} is ${graphDim} in the graph, ${configured} in the config`,
        );
    });
  };
  const graphInputs = new Map(session.inputMetadata.map((m) => [m.name, m]));
  const graphOutputs = new Map(session.outputMetadata.map((m) => [m.name, m]));
  for (const spec of config.inputs) {
    const meta = graphInputs.get(spec.name);
    if (meta) compare('input', spec, meta);
    else
      problems.push(
        `input '${spec.name}' is not in the graph (graph inputs: ${session.inputNames.join(', ')})`,
      );
  }
  for (const name of session.inputNames) {
    if (!config.inputs.some((s) => s.name === name) && !cacheInput(name))
      problems.push(`graph input '${name}' is missing from the config`);
  }
  for (const spec of config.outputs) {
    const meta = graphOutputs.get(spec.name);
    if (meta) compare('output', spec, meta);
    else
      problems.push(
        `output '${spec.name}' is not in the graph (graph outputs: ${session.outputNames.join(', ')})`,
      );
  }
  return problems;
}

/**
 * The KV-cache inputs of a generation model, and the merged decoder's branch
 * switch, are the engine's business, not the config's inputs.
 */
function cacheInputMatcher(config: ModelConfig): (name: string) => boolean {
  const g = config.generation;
  if (!g) return () => false;
  const names = new Set<string>([USE_CACHE_BRANCH]);
  for (let layer = 0; layer < g.numLayers; layer++)
    for (const pattern of [g.pastKeyInput, g.pastValueInput])
      names.add(pattern.replace('{layer}', String(layer)));
  return (name) => names.has(name);
}
