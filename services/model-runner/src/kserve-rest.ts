/**
 * KServe v2 / Open Inference Protocol over HTTP/REST, beside the gRPC
 * service: the same inference functions (server.ts), the protocol's JSON.
 *
 *   GET  /v2/health/live, /v2/health/ready        200 when true
 *   GET  /v2                                      server metadata
 *   GET  /v2/models/{name}[/versions/{v}]          model metadata
 *   GET  /v2/models/{name}[/versions/{v}]/ready    200 when ready
 *   POST /v2/models/{name}[/versions/{v}]/infer    inference
 *
 * Tensor `data` is JSON (flat row-major, or nested arrays, which are
 * flattened); BYTES elements are strings. The binary tensor extension is not
 * offered over HTTP (use gRPC's raw contents). Errors are `{"error": "..."}`
 * with the HTTP status of the gRPC code.
 */
import {
  type Datatype,
  type FormattedError,
  HttpRequestError,
  type HttpRoute,
  httpStatusOf,
  invalidArgument,
  StatusError,
} from '@maas/shared';
import type {
  InferTensorContents,
  ModelInferRequest,
  ModelInferResponse,
} from '@maas/shared/gen/inference/grpc_service';
import type { ModelRepository } from './repository.js';
import type { Inference } from './server.js';
import { SERVER_EXTENSIONS, SERVER_NAME, SERVER_VERSION } from './server.js';
import { DATATYPES, elementCount, emptyContents, fromRaw } from './tensors.js';

/** Only what this transport offers: not the binary tensor extension. */
const REST_EXTENSIONS = SERVER_EXTENSIONS.filter((e) => e !== 'binary_tensor_data');

type Json = Record<string, unknown>;

const INTEGER_RANGES: Partial<Record<Datatype, [number, number]>> = {
  UINT8: [0, 255],
  INT8: [-128, 127],
  UINT16: [0, 65535],
  INT16: [-32768, 32767],
  UINT32: [0, 2 ** 32 - 1],
  INT32: [-(2 ** 31), 2 ** 31 - 1],
  UINT64: [0, Number.MAX_SAFE_INTEGER],
  INT64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
};

/** `data` flattened row-major, each element checked against the datatype. */
function tensorContents(
  field: string,
  datatype: Datatype,
  data: unknown,
  count: number,
): InferTensorContents {
  if (!Array.isArray(data)) throw invalidArgument(`${field}.data`, 'must be an array');
  const flat = (data as unknown[]).flat(Infinity);
  if (flat.length !== count)
    throw invalidArgument(`${field}.data`, `has ${flat.length} elements, the shape needs ${count}`);
  const info = DATATYPES[datatype];
  const contents = emptyContents();
  const elementType = datatype === 'BOOL' ? 'boolean' : datatype === 'BYTES' ? 'string' : 'number';
  flat.forEach((value, i) => {
    if (typeof value !== elementType)
      throw invalidArgument(
        `${field}.data`,
        `element ${i} must be a ${elementType} for ${datatype}, got ${JSON.stringify(value)?.slice(0, 32)}`,
      );
    const range = INTEGER_RANGES[datatype];
    if (range && !(Number.isInteger(value) && (value as number) >= range[0] && (value as number) <= range[1]))
      throw invalidArgument(`${field}.data`, `element ${i} (${value}) is not a ${datatype}`);
  });
  if (datatype === 'BYTES') contents.bytesContents = (flat as string[]).map((s) => Buffer.from(s, 'utf8'));
  else (contents[info.contentsField!] as unknown[]) = flat;
  return contents;
}

/** A REST inference request as the gRPC message the inference functions take. */
export function inferRequestOf(body: unknown, modelName: string, modelVersion: string): ModelInferRequest {
  if (body === null || typeof body !== 'object' || Array.isArray(body))
    throw new HttpRequestError(400, 'the body must be a JSON object (an inference request)');
  const request = body as Json;
  if (request.id !== undefined && typeof request.id !== 'string')
    throw invalidArgument('id', 'must be a string');
  if (hasBinaryData(request.parameters))
    throw invalidArgument(
      'parameters',
      'binary tensor data is not offered over HTTP: send JSON data, or use gRPC',
    );
  if (!Array.isArray(request.inputs) || request.inputs.length === 0)
    throw invalidArgument('inputs', 'must be a non-empty array of tensors');
  const inputs = request.inputs.map((entry: unknown, i) => {
    const field = `inputs[${i}]`;
    if (entry === null || typeof entry !== 'object') throw invalidArgument(field, 'must be an object');
    const input = entry as Json;
    if (typeof input.name !== 'string' || input.name === '')
      throw invalidArgument(`${field}.name`, 'is required');
    if (typeof input.datatype !== 'string' || !(input.datatype in DATATYPES))
      throw invalidArgument(`${field}.datatype`, `must be one of ${Object.keys(DATATYPES).join(', ')}`);
    const datatype = input.datatype as Datatype;
    if (datatype === 'FP16')
      throw invalidArgument(`${field}.datatype`, 'FP16 has no JSON form: use gRPC raw contents');
    if (!Array.isArray(input.shape) || !input.shape.every((d) => Number.isSafeInteger(d) && d >= 0))
      throw invalidArgument(`${field}.shape`, 'must be an array of non-negative integers');
    const shape = input.shape as number[];
    if (hasBinaryData(input.parameters))
      throw invalidArgument(
        `${field}.parameters`,
        'binary tensor data is not offered over HTTP: send JSON data',
      );
    return {
      name: input.name,
      datatype,
      shape,
      parameters: {},
      contents: tensorContents(field, datatype, input.data, elementCount(shape)),
    };
  });
  let outputs: ModelInferRequest['outputs'] = [];
  if (request.outputs !== undefined) {
    if (!Array.isArray(request.outputs)) throw invalidArgument('outputs', 'must be an array');
    outputs = request.outputs.map((entry: unknown, i) => {
      const name = (entry as Json | null)?.name;
      if (typeof name !== 'string' || name === '') throw invalidArgument(`outputs[${i}].name`, 'is required');
      if (hasBinaryData((entry as Json).parameters))
        throw invalidArgument(`outputs[${i}].parameters`, 'binary tensor data is not offered over HTTP');
      return { name, parameters: {} };
    });
  }
  return {
    modelName,
    modelVersion,
    id: (request.id as string | undefined) ?? '',
    parameters: {},
    inputs,
    outputs,
    rawInputContents: [],
  };
}

function hasBinaryData(parameters: unknown): boolean {
  if (parameters === null || typeof parameters !== 'object') return false;
  const p = parameters as Json;
  return Boolean(p.binary_data || p.binary_data_output || p.binary_data_size !== undefined);
}

/** IEEE 754 half → number (FP16 outputs arrive raw). */
function halfToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

/** The response's tensors as JSON data. */
export function inferResponseJson(response: ModelInferResponse): Json {
  return {
    model_name: response.modelName,
    model_version: response.modelVersion,
    ...(response.id ? { id: response.id } : {}),
    outputs: response.outputs.map((output, i) => {
      const datatype = output.datatype as Datatype;
      const info = DATATYPES[datatype];
      let data: unknown[];
      if (output.contents && info.contentsField) {
        const values = output.contents[info.contentsField] as unknown[];
        data = datatype === 'BYTES' ? (values as Buffer[]).map((b) => b.toString('utf8')) : values;
      } else {
        const raw = fromRaw(
          output.name,
          datatype,
          response.rawOutputContents[i]!,
          elementCount(output.shape),
        );
        // Raw when any output of the model is FP16 (no typed field carries it): every output then.
        data =
          datatype === 'FP16'
            ? Array.from(raw as Uint16Array, halfToNumber)
            : datatype === 'BOOL'
              ? Array.from(raw as Uint8Array, Boolean)
              : datatype === 'INT64' || datatype === 'UINT64'
                ? Array.from(raw as BigInt64Array, Number)
                : Array.from(raw as ArrayLike<unknown>);
      }
      return { name: output.name, datatype, shape: output.shape, data };
    }),
  };
}

/** `{name}`, `{name}/versions/{v}`, then the rest (`ready`, `infer` or nothing). */
function parseModelPath(rest: string): { name: string; version: string; action: string } {
  const parts = rest.split('/').map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      throw new HttpRequestError(400, 'the path is not valid URL encoding');
    }
  });
  const [name = '', ...tail] = parts;
  let version = '';
  if (tail[0] === 'versions') {
    version = tail[1] ?? '';
    if (!/^\d+$/.test(version))
      throw new HttpRequestError(400, `version '${version.slice(0, 32)}' is not a number`);
    tail.splice(0, 2);
  }
  if (tail.length > 1) throw new HttpRequestError(404, `no route /v2/models/${rest}`);
  return { name, version, action: tail[0] ?? '' };
}

export function kserveRestRoutes(repository: ModelRepository, inference: Inference): HttpRoute[] {
  return [
    {
      method: 'GET',
      path: '/v2/health/live',
      handle: async (exchange) => exchange.json(200, { live: true }),
    },
    {
      method: 'GET',
      path: '/v2/health/ready',
      handle: async (exchange) => {
        const ready = repository.isReady() && !exchange.draining;
        exchange.json(ready ? 200 : 503, { ready });
      },
    },
    {
      method: 'GET',
      path: '/v2',
      handle: async (exchange) =>
        exchange.json(200, { name: SERVER_NAME, version: SERVER_VERSION, extensions: REST_EXTENSIONS }),
    },
    {
      method: 'GET',
      path: '/v2/models/*',
      async handle(exchange) {
        const { name, version, action } = parseModelPath(exchange.rest);
        if (action === 'ready') {
          const ready = inference.modelReady(name, version || undefined);
          return exchange.json(ready ? 200 : 503, { name, ready });
        }
        if (action !== '') throw new HttpRequestError(404, `no route GET /v2/models/${exchange.rest}`);
        exchange.json(200, inference.modelMetadata(name, version || undefined));
      },
    },
    {
      method: 'POST',
      path: '/v2/models/*',
      async handle(exchange) {
        const { name, version, action } = parseModelPath(exchange.rest);
        if (action !== 'infer') throw new HttpRequestError(404, `no route POST /v2/models/${exchange.rest}`);
        const request = inferRequestOf(exchange.body, name, version);
        const response = await inference.infer(request, () =>
          exchange.signal.aborted ? 'cancelled' : false,
        );
        exchange.json(200, inferResponseJson(response));
      },
    },
  ];
}

/** KServe's REST error shape: `{"error": "<message>"}`. */
export function formatKserveError(error: unknown): FormattedError {
  if (error instanceof HttpRequestError)
    return { status: error.status, headers: {}, body: { error: error.message } };
  if (error instanceof StatusError) {
    const headers: Record<string, string> = {};
    const retryAfterMs = error.metadata?.get('retry-after-ms')[0];
    if (retryAfterMs !== undefined) {
      headers['retry-after-ms'] = String(retryAfterMs);
      headers['retry-after'] = String(Math.max(1, Math.ceil(Number(retryAfterMs) / 1000)));
    }
    return { status: httpStatusOf(error.code), headers, body: { error: error.message } };
  }
  return { status: 500, headers: {}, body: { error: 'internal error' } };
}
