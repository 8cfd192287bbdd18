/**
 * KServe v2 REST (Open Inference Protocol over HTTP) against real onnxruntime
 * sessions, with plain HTTP requests shaped as the protocol's published JSON
 * examples — and the answers compared with ModelInfer over gRPC.
 */
import { ModelInferRequest, type ModelInferResponse } from '@maas/shared/gen/inference/grpc_service';
import { call, encoderInputs, startTestRunner, type TestRunner } from './helpers';
import { DATATYPE_ELEM, testRepository, writeIdentityModel, writeSmallDecoder } from './models';

let t: TestRunner;
let base: string;

beforeAll(async () => {
  const root = testRepository(['bert-classifier']);
  writeSmallDecoder(root, 'tiny-gpt2');
  writeIdentityModel(root, 'identity', { maxBatchSize: 4 });
  t = await startTestRunner(root, { RUNNER_WARMUP: 'false', HTTP_PORT: '0' });
  base = `http://127.0.0.1:${t.runner.httpPort}`;
});
afterAll(async () => {
  await t?.close();
});

const get = (path: string) => fetch(`${base}${path}`);
const post = (path: string, body: unknown) =>
  fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });

describe('health and metadata', () => {
  it('answers live, ready, server and model metadata, and model readiness', async () => {
    expect((await get('/v2/health/live')).status).toBe(200);
    expect((await get('/v2/health/ready')).status).toBe(200);
    expect(await (await get('/v2')).json()).toEqual({
      name: 'maas-model-runner',
      version: '0.1.0',
      extensions: ['model_repository'],
    });
    for (const path of ['/v2/models/identity', '/v2/models/identity/versions/1']) {
      const meta = (await (await get(path)).json()) as {
        name: string;
        versions: string[];
        inputs: unknown[];
      };
      expect(meta.name).toBe('identity');
      expect(meta.versions).toEqual(['1']);
      expect(meta.inputs).toContainEqual({ name: 'in_float32', datatype: 'FP32', shape: [-1, 2] });
    }
    expect((await get('/v2/models/identity/ready')).status).toBe(200);
    expect((await get('/v2/models/identity/versions/1/ready')).status).toBe(200);
    const missing = await get('/v2/models/no-such-model/ready');
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as { error: string }).error).toMatch(/no-such-model/);
    expect((await get('/v2/models/identity/versions/7')).status).toBe(404);
  });
});

describe('infer', () => {
  it("takes the protocol's example request shape: id, typed inputs, requested outputs", async () => {
    const response = await post('/v2/models/identity/infer', {
      id: '42',
      inputs: [
        { name: 'in_uint32', shape: [2, 2], datatype: 'UINT32', data: [1, 2, 3, 4] },
        {
          name: 'in_bool',
          shape: [2, 2],
          datatype: 'BOOL',
          data: [
            [true, false],
            [false, true],
          ],
        },
      ],
      outputs: [{ name: 'out_uint32' }, { name: 'out_bool' }],
    });
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({
      model_name: 'identity',
      model_version: '1',
      id: '42',
      outputs: [
        { name: 'out_uint32', datatype: 'UINT32', shape: [2, 2], data: [1, 2, 3, 4] },
        { name: 'out_bool', datatype: 'BOOL', shape: [2, 2], data: [true, false, false, true] },
      ],
    });
  });

  it('round-trips every JSON datatype; FP16 (raw only) comes back as numbers', async () => {
    const values: Record<string, unknown[]> = {
      BOOL: [true, false],
      UINT8: [0, 255],
      INT8: [-128, 127],
      UINT16: [1, 65535],
      INT16: [-32768, 5],
      UINT32: [4294967295, 7],
      INT32: [-7, 2147483647],
      UINT64: [2 ** 40, 1],
      INT64: [-(2 ** 40), 3],
      FP32: [1.5, -2],
      FP64: [1e300, -0.25],
      BYTES: ['abc', 'ça!'],
    };
    const types = DATATYPE_ELEM.filter(([d]) => d !== 'FP16');
    const response = await post('/v2/models/identity/infer', {
      inputs: types.map(([datatype, elem]) => ({
        name: `in_${elem}`,
        datatype,
        shape: [1, 2],
        data: values[datatype],
      })),
    });
    const body = (await response.json()) as {
      outputs: { name: string; datatype: string; data: unknown[] }[];
    };
    for (const [datatype, elem] of types) {
      const output = body.outputs.find((o) => o.name === `out_${elem}`)!;
      expect([datatype, output.data]).toEqual([datatype, values[datatype]]);
    }
    // Left out, the optional FP16 input is zeros; its output arrives raw and is decoded.
    expect(body.outputs.find((o) => o.name === 'out_float16')!.data).toEqual([0, 0]);
  });

  it('gives the logits ModelInfer gives over gRPC', async () => {
    const rows = [[2, 17, 25, 3]];
    const grpc = await call<ModelInferResponse>(
      t.inference,
      'modelInfer',
      ModelInferRequest.fromPartial({ modelName: 'bert-classifier', ...encoderInputs(rows) }),
    );
    const tensors = encoderInputs(rows).inputs.map((i) => ({
      name: i.name,
      datatype: i.datatype,
      shape: i.shape,
      data: i.contents!.int64Contents,
    }));
    const rest = (await (await post('/v2/models/bert-classifier/infer', { inputs: tensors })).json()) as {
      outputs: { data: number[] }[];
    };
    expect(rest.outputs[0]!.data).toEqual(grpc.outputs[0]!.contents!.fp32Contents);
  });

  it('refuses bad tensors with 400 naming them, never crashing', async () => {
    const one = (input: object) => ({
      inputs: [{ name: 'in_float32', datatype: 'FP32', shape: [1, 2], ...input }],
    });
    const cases: [unknown, number, RegExp][] = [
      [one({ data: [1] }), 400, /inputs\[0\]\.data: has 1 elements, the shape needs 2/],
      [one({ data: [1, 'x'] }), 400, /element 1 must be a number/],
      [one({ datatype: 'FP99', data: [1, 2] }), 400, /inputs\[0\]\.datatype: must be one of/],
      [one({ shape: [1, -2], data: [1, 2] }), 400, /inputs\[0\]\.shape/],
      [one({ name: 'nope', data: [1, 2] }), 400, /input 'nope': unknown/],
      [one({ datatype: 'FP16', name: 'in_float16', data: [1, 2] }), 400, /FP16 has no JSON form/],
      [{ ...one({ data: [1, 2] }), parameters: { binary_data_output: true } }, 400, /binary tensor data/],
      [{ inputs: [] }, 400, /inputs: must be a non-empty array/],
      ['{"inputs": [', 400, /not valid JSON/],
      [
        { inputs: [{ name: 'in_int8', datatype: 'INT8', shape: [1, 2], data: [1, 300] }] },
        400,
        /is not a INT8/,
      ],
    ];
    for (const [body, code, message] of cases) {
      const response = await post('/v2/models/identity/infer', body);
      const error = ((await response.json()) as { error: string }).error;
      expect([response.status, error]).toEqual([code, expect.stringMatching(message)]);
    }
    const generation = await post('/v2/models/tiny-gpt2/infer', {
      inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1], data: [1] }],
    });
    expect(generation.status).toBe(400);
    expect(((await generation.json()) as { error: string }).error).toMatch(/generation model/);
    expect((await post('/v2/models/identity/explode', {})).status).toBe(404);
    expect((await get('/v2/health/live')).status).toBe(200);
  });
});
