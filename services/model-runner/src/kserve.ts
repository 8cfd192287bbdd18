/**
 * KServe v2 messages ⇄ the runner's tensors. A ModelInferRequest is checked
 * against the model's config here — names, datatypes, shapes, sizes — so that
 * nothing malformed reaches onnxruntime, and every refusal names the tensor.
 */
import { invalidArgument } from '@maas/shared';
import type { ModelConfig, TensorSpec } from '@maas/shared';
import type {
  InferParameter,
  ModelInferRequest,
  ModelInferResponse,
  ModelMetadataResponse,
} from '@maas/shared/gen/inference/grpc_service';
import { elementCount, fromContents, fromRaw, toContents, toRaw, type NamedTensor } from './tensors.js';

export interface ParsedInferRequest {
  inputs: NamedTensor[];
  outputs: string[];
  /** Answer in raw_output_contents (see rawResponse). */
  raw: boolean;
}

const boolParameter = (p: InferParameter | undefined) =>
  p?.parameterChoice?.$case === 'boolParam' && p.parameterChoice.value;

/**
 * Validates a request against a model version's config and returns its inputs as typed arrays.
 * The response is raw when the request was raw, when it sets the parameter `binary_data_output`,
 * or when an output has no typed-contents field (FP16).
 */
export function parseInferRequest(
  modelName: string,
  config: ModelConfig,
  request: ModelInferRequest,
): ParsedInferRequest {
  const rawInput = request.rawInputContents.length > 0;
  if (rawInput && request.rawInputContents.length !== request.inputs.length) {
    throw invalidArgument(
      'raw_input_contents',
      `has ${request.rawInputContents.length} entries for ${request.inputs.length} inputs (when used, every input must use it)`,
    );
  }
  const specs = new Map(config.inputs.map((s) => [s.name, s]));
  const batching = config.maxBatchSize > 0;
  let rows: number | undefined;
  const inputs: NamedTensor[] = [];
  request.inputs.forEach((input, i) => {
    const field = `input '${input.name}'`;
    const spec = specs.get(input.name);
    if (!spec)
      throw invalidArgument(
        field,
        `unknown; model '${modelName}' takes ${config.inputs.map((s) => s.name).join(', ')}`,
      );
    if (inputs.some((t) => t.name === input.name)) throw invalidArgument(field, 'is given twice');
    if (input.datatype !== spec.datatype)
      throw invalidArgument(field, `expected datatype ${spec.datatype}, got ${input.datatype || '(none)'}`);
    const shape = input.shape.map(Number);
    checkShape(spec, shape, config.maxBatchSize);
    if (batching) {
      if (rows !== undefined && shape[0] !== rows)
        throw invalidArgument(field, `batch dimension ${shape[0]} differs from the other inputs' ${rows}`);
      rows = shape[0];
    }
    const count = elementCount(shape);
    const typedValues = input.contents
      ? Object.values(input.contents).some((v) => (v as unknown[]).length > 0)
      : false;
    if (rawInput && typedValues) throw invalidArgument(field, 'has both contents and raw_input_contents');
    const data = rawInput
      ? fromRaw(input.name, spec.datatype, request.rawInputContents[i]!, count)
      : fromContents(input.name, spec.datatype, input.contents, count);
    if (spec.vocabSize !== undefined) checkTokenIds(field, data, spec.vocabSize);
    inputs.push({ name: input.name, datatype: spec.datatype, shape, data });
  });
  for (const spec of config.inputs) {
    if (!spec.optional && !inputs.some((t) => t.name === spec.name))
      throw invalidArgument(`input '${spec.name}'`, 'is required');
  }
  const ragged = inputs.filter((t) => batching && specs.get(t.name)!.ragged);
  const length = ragged[0]?.shape[1];
  const other = ragged.find((t) => t.shape[1] !== length);
  if (other)
    throw invalidArgument(
      `input '${other.name}'`,
      `sequence length ${other.shape[1]} differs from input '${ragged[0]!.name}' (${length}): sequence inputs of one request must agree`,
    );

  const known = config.outputs.map((o) => o.name);
  const outputs = request.outputs.length > 0 ? request.outputs.map((o) => o.name) : known;
  outputs.forEach((name, i) => {
    if (!known.includes(name))
      throw invalidArgument(`output '${name}'`, `unknown; model '${modelName}' has ${known.join(', ')}`);
    if (outputs.indexOf(name) !== i) throw invalidArgument(`output '${name}'`, 'is requested twice');
  });
  const raw =
    rawInput ||
    boolParameter(request.parameters.binary_data_output) ||
    outputs.some((name) => config.outputs.find((o) => o.name === name)!.datatype === 'FP16');
  return { inputs, outputs, raw };
}

/** Checks a request's shape against the declared dims (the batch dimension first when batching). */
/** Token ids must index the model's embedding table; the first one that does not is named. */
function checkTokenIds(field: string, data: NamedTensor['data'], vocabSize: number): void {
  const values = data as ArrayLike<number | bigint>;
  const limit = typeof values[0] === 'bigint' ? BigInt(vocabSize) : vocabSize;
  for (let i = 0; i < values.length; i++) {
    const id = values[i]!;
    if (id < 0 || id >= limit) {
      throw invalidArgument(
        field,
        `element ${i} is token id ${id}, outside the vocabulary [0, ${vocabSize})`,
      );
    }
  }
}

function checkShape(spec: TensorSpec, shape: number[], maxBatchSize: number): void {
  const expected = maxBatchSize > 0 ? [-1, ...spec.dims] : spec.dims;
  const fail = (why: string): never => {
    throw invalidArgument(
      `input '${spec.name}'`,
      `shape [${shape.join(', ')}] ${why}; expected [${expected.join(', ')}]`,
    );
  };
  if (shape.length !== expected.length) fail(`has ${shape.length} dimensions`);
  shape.forEach((d, i) => {
    if (!Number.isSafeInteger(d) || d < 0) fail(`has an invalid dimension ${d}`);
    if (expected[i] !== -1 && expected[i] !== d) fail(`has ${d} at dimension ${i}`);
  });
  if (maxBatchSize > 0) {
    if (shape[0] === 0) fail('has an empty batch');
    if (shape[0]! > maxBatchSize)
      fail(`has batch ${shape[0]}, over the model's maxBatchSize ${maxBatchSize}`);
    if (spec.ragged && shape[1] === 0) fail('has an empty sequence');
  }
}

export function inferResponse(
  modelName: string,
  version: number,
  request: ModelInferRequest,
  results: NamedTensor[],
  raw: boolean,
): ModelInferResponse {
  return {
    modelName,
    modelVersion: String(version),
    id: request.id,
    parameters: {},
    outputs: results.map((r) => ({
      name: r.name,
      datatype: r.datatype,
      shape: r.shape,
      parameters: {},
      contents: raw ? undefined : toContents(r.datatype, r.data),
    })),
    rawOutputContents: raw ? results.map((r) => toRaw(r.datatype, r.data)) : [],
  };
}

export function modelMetadata(
  modelName: string,
  config: ModelConfig,
  versions: number[],
): ModelMetadataResponse {
  // KServe shapes include the batch dimension: -1 when the runner batches.
  const batch = config.maxBatchSize > 0 ? [-1] : [];
  const describe = (specs: TensorSpec[]) =>
    specs.map((s) => ({ name: s.name, datatype: s.datatype, shape: [...batch, ...s.dims] }));
  return {
    name: modelName,
    versions: versions.map(String),
    platform: config.platform,
    inputs: describe(config.inputs),
    outputs: describe(config.outputs),
  };
}
