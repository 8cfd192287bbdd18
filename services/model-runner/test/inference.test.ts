/** KServe v2 ModelInfer / ModelStreamInfer against real onnxruntime sessions: tensors in and out, and refusals. */
import { status } from '@grpc/grpc-js';
import { scrapeMetrics } from '@maas/shared/testing';
import {
  ModelInferRequest,
  type ModelInferResponse,
  type ModelMetadataResponse,
  type ModelStreamInferResponse,
} from '@maas/shared/gen/inference/grpc_service';
import {
  call,
  encoderInputs,
  failure,
  inferRequest,
  metricDelta,
  startTestRunner,
  type TestRunner,
} from './helpers';
import { DATATYPE_ELEM, testRepository, writeIdentityModel, writeSmallDecoder } from './models';

let t: TestRunner;

beforeAll(async () => {
  const root = testRepository(['bert-classifier']);
  writeSmallDecoder(root, 'tiny-gpt2');
  writeIdentityModel(root, 'identity', { maxBatchSize: 4 });
  writeIdentityModel(root, 'identity-fixed', { maxBatchSize: 0 });
  t = await startTestRunner(root, { RUNNER_WARMUP: 'false' });
});
afterAll(async () => {
  await t?.close();
});

const infer = (partial: Parameters<typeof inferRequest>[0]) =>
  call<ModelInferResponse>(t.inference, 'modelInfer', inferRequest(partial));
const classify = (rows: number[][], raw = false, extra: Parameters<typeof inferRequest>[0] = {}) =>
  infer({ modelName: 'bert-classifier', ...encoderInputs(rows, raw), ...extra });
const f32 = (bytes: Uint8Array) => Array.from(new Float32Array(Uint8Array.from(bytes).buffer));

/** Two values per datatype, as raw bytes and as typed contents. */
const SAMPLES: Record<string, { raw: Buffer; typed: object; values: unknown[] }> = {
  BOOL: { raw: Buffer.from([1, 0]), typed: { boolContents: [true, false] }, values: [true, false] },
  UINT8: { raw: Buffer.from([0, 255]), typed: { uintContents: [0, 255] }, values: [0, 255] },
  INT8: {
    raw: Buffer.from(new Int8Array([-128, 127]).buffer),
    typed: { intContents: [-128, 127] },
    values: [-128, 127],
  },
  UINT16: {
    raw: Buffer.from(new Uint16Array([1, 65535]).buffer),
    typed: { uintContents: [1, 65535] },
    values: [1, 65535],
  },
  INT16: {
    raw: Buffer.from(new Int16Array([-32768, 5]).buffer),
    typed: { intContents: [-32768, 5] },
    values: [-32768, 5],
  },
  UINT32: {
    raw: Buffer.from(new Uint32Array([4294967295, 7]).buffer),
    typed: { uintContents: [4294967295, 7] },
    values: [4294967295, 7],
  },
  INT32: {
    raw: Buffer.from(new Int32Array([-7, 2147483647]).buffer),
    typed: { intContents: [-7, 2147483647] },
    values: [-7, 2147483647],
  },
  UINT64: {
    raw: Buffer.from(new BigUint64Array([2n ** 63n + 5n, 1n]).buffer),
    typed: { uint64Contents: [2 ** 40, 1] },
    values: [2 ** 40, 1],
  },
  INT64: {
    raw: Buffer.from(new BigInt64Array([-(2n ** 62n), 3n]).buffer),
    typed: { int64Contents: [-(2 ** 40), 3] },
    values: [-(2 ** 40), 3],
  },
  FP16: { raw: Buffer.from(new Uint16Array([0x3c00, 0xc000]).buffer), typed: {}, values: [] },
  FP32: {
    raw: Buffer.from(new Float32Array([1.5, -2]).buffer),
    typed: { fp32Contents: [1.5, -2] },
    values: [1.5, -2],
  },
  FP64: {
    raw: Buffer.from(new Float64Array([1e300, -0.25]).buffer),
    typed: { fp64Contents: [1e300, -0.25] },
    values: [1e300, -0.25],
  },
  // BYTES raw: each element is a 4-byte little-endian length, then its bytes ('ça!' is 4 bytes of UTF-8).
  BYTES: {
    raw: Buffer.concat([
      Buffer.from([3, 0, 0, 0]),
      Buffer.from('abc'),
      Buffer.from([4, 0, 0, 0]),
      Buffer.from('ça!'),
    ]),
    typed: { bytesContents: [Buffer.from('abc'), Buffer.from('')] },
    values: ['abc', ''],
  },
};

describe('ModelInfer', () => {
  it('gives the same result for typed and raw contents, echoes the id, and answers in the form asked', async () => {
    const ids = [[2, 17, 25, 3]];
    const typed = await classify(ids, false, { id: 'req-1' });
    const raw = await classify(ids, true);
    const binary = await classify(ids, false, {
      parameters: { binary_data_output: { parameterChoice: { $case: 'boolParam', value: true } } },
    });
    expect([typed.id, typed.modelName, typed.modelVersion]).toEqual(['req-1', 'bert-classifier', '1']);
    expect(typed.outputs[0]).toMatchObject({ name: 'logits', datatype: 'FP32', shape: [1, 3] });
    expect(typed.rawOutputContents).toHaveLength(0);
    const logits = typed.outputs[0]!.contents!.fp32Contents;
    for (const other of [raw, binary]) {
      expect(other.outputs[0]!.contents).toBeUndefined();
      f32(other.rawOutputContents[0]!).forEach((v, i) => expect(v).toBeCloseTo(logits[i]!, 6));
    }
  });

  it('round-trips every datatype raw, and typed where KServe has a field for it', async () => {
    const rawOut = await infer({
      modelName: 'identity',
      inputs: DATATYPE_ELEM.map(([datatype, elem]) => ({ name: `in_${elem}`, datatype, shape: [1, 2] })),
      rawInputContents: DATATYPE_ELEM.map(([datatype]) => SAMPLES[datatype]!.raw),
    });
    expect(rawOut.outputs.map((o) => [o.name, o.datatype, o.shape])).toEqual(
      DATATYPE_ELEM.map(([datatype, elem]) => [`out_${elem}`, datatype, [1, 2]]),
    );
    rawOut.rawOutputContents.forEach((bytes, i) =>
      expect([rawOut.outputs[i]!.datatype, Buffer.from(bytes).toString('hex')]).toEqual([
        DATATYPE_ELEM[i]![0],
        SAMPLES[DATATYPE_ELEM[i]![0]]!.raw.toString('hex'),
      ]),
    );

    const typedTypes = DATATYPE_ELEM.filter(([d]) => d !== 'FP16');
    const typedOut = await infer({
      modelName: 'identity',
      inputs: typedTypes.map(([datatype, elem]) => ({
        name: `in_${elem}`,
        datatype,
        shape: [1, 2],
        contents: SAMPLES[datatype]!.typed,
      })),
      outputs: typedTypes.map(([, elem]) => ({ name: `out_${elem}` })),
    });
    for (const [i, [datatype]] of typedTypes.entries()) {
      const contents = typedOut.outputs[i]!.contents!;
      const values = Object.values(contents).find((v) => (v as unknown[]).length > 0) as unknown[];
      const decoded =
        datatype === 'BYTES' ? (values as Buffer[]).map((b) => Buffer.from(b).toString()) : values;
      expect([datatype, decoded]).toEqual([datatype, SAMPLES[datatype]!.values]);
    }
  });

  it('returns only the outputs asked for, in the order asked', async () => {
    const out = await infer({
      modelName: 'identity',
      inputs: [
        { name: 'in_float32', datatype: 'FP32', shape: [2, 2], contents: { fp32Contents: [1, 2, 3, 4] } },
      ],
      outputs: [{ name: 'out_float32' }, { name: 'out_int8' }],
    });
    expect(out.outputs.map((o) => [o.name, o.shape])).toEqual([
      ['out_float32', [2, 2]],
      ['out_int8', [2, 2]],
    ]);
    expect(out.outputs[0]!.contents!.fp32Contents).toEqual([1, 2, 3, 4]);
    // A left-out optional input is filled with its padValue (0).
    expect(out.outputs[1]!.contents!.intContents).toEqual([0, 0, 0, 0]);
  });

  it('serves a model without batching with its full shapes', async () => {
    const meta = await call<ModelMetadataResponse>(t.inference, 'modelMetadata', {
      name: 'identity-fixed',
      version: '',
    });
    expect(meta.inputs.find((i) => i.name === 'in_float32')?.shape).toEqual([2, 3]);
    const out = await infer({
      modelName: 'identity-fixed',
      inputs: [
        {
          name: 'in_float32',
          datatype: 'FP32',
          shape: [2, 3],
          contents: { fp32Contents: [1, 2, 3, 4, 5, 6] },
        },
      ],
      outputs: [{ name: 'out_float32' }],
    });
    expect([out.outputs[0]!.shape, out.outputs[0]!.contents!.fp32Contents]).toEqual([
      [2, 3],
      [1, 2, 3, 4, 5, 6],
    ]);
    const wrong = await failure(
      infer({
        modelName: 'identity-fixed',
        inputs: [
          {
            name: 'in_float32',
            datatype: 'FP32',
            shape: [1, 2, 3],
            contents: { fp32Contents: [1, 2, 3, 4, 5, 6] },
          },
        ],
      }),
    );
    expect([wrong.code, wrong.details]).toEqual([
      status.INVALID_ARGUMENT,
      expect.stringMatching(/input 'in_float32'.*3 dimensions.*expected \[2, 3\]/),
    ]);
  });

  it('refuses bad tensors with INVALID_ARGUMENT naming the tensor, before they reach the runtime', async () => {
    const before = await scrapeMetrics(t.runner.metricsPort!);
    const base = encoderInputs([[2, 3]]);
    const raw = encoderInputs([[2, 3]], true);
    const withInput = (name: string, change: object) => ({
      ...base,
      inputs: base.inputs.map((i) => (i.name === name ? { ...i, ...change } : i)),
    });
    const cases: [string, object, RegExp][] = [
      [
        'a token id beyond the vocabulary',
        withInput('input_ids', { contents: { int64Contents: [2, 1_000_000_000] } }),
        /^input 'input_ids': element 1 is token id 1000000000, outside the vocabulary \[0, \d+\)$/,
      ],
      [
        'a negative token id (which ONNX Gather would wrap)',
        withInput('input_ids', { contents: { int64Contents: [-1, 3] } }),
        /^input 'input_ids': element 0 is token id -1, outside the vocabulary/,
      ],
      [
        'wrong datatype',
        withInput('input_ids', { datatype: 'FP32' }),
        /^input 'input_ids': expected datatype INT64, got FP32$/,
      ],
      [
        'wrong rank',
        withInput('input_ids', { shape: [1, 2, 1] }),
        /input 'input_ids': shape \[1, 2, 1\] has 3 dimensions/,
      ],
      [
        'too few values',
        withInput('input_ids', { shape: [1, 3] }),
        /input 'input_ids': contents.int64_contents has 2 values, shape needs 3/,
      ],
      [
        'values in the wrong field',
        withInput('input_ids', { contents: { fp32Contents: [1, 2] } }),
        /input 'input_ids'.*sent in fp32_contents, which is not for INT64/,
      ],
      [
        'missing input',
        { ...base, inputs: base.inputs.filter((i) => i.name !== 'attention_mask') },
        /input 'attention_mask': is required/,
      ],
      [
        'unknown input',
        { ...base, inputs: [...base.inputs, { name: 'pixels', datatype: 'FP32', shape: [1] }] },
        /input 'pixels': unknown; model 'bert-classifier' takes input_ids, attention_mask, token_type_ids/,
      ],
      [
        'wrong byte size',
        { ...raw, rawInputContents: [Buffer.alloc(3), Buffer.alloc(16), Buffer.alloc(16)] },
        /input 'input_ids': raw contents have 3 bytes, shape needs 16/,
      ],
      [
        'raw for some inputs only',
        { ...raw, rawInputContents: raw.rawInputContents.slice(1) },
        /raw_input_contents: has 2 entries for 3 inputs/,
      ],
      [
        'batch over maxBatchSize',
        encoderInputs(Array.from({ length: 17 }, () => [2, 3])),
        /input 'input_ids'.*batch 17, over the model's maxBatchSize 16/,
      ],
      [
        'sequence lengths disagree',
        withInput('attention_mask', { shape: [1, 1], contents: { int64Contents: [1] } }),
        /input 'attention_mask': sequence length 1 differs from input 'input_ids' \(2\)/,
      ],
      [
        'batch sizes disagree',
        withInput('attention_mask', { shape: [2, 2], contents: { int64Contents: [1, 1, 1, 1] } }),
        /input 'attention_mask': batch dimension 2 differs/,
      ],
      ['unknown output', { ...base, outputs: [{ name: 'nope' }] }, /output 'nope': unknown/],
    ];
    for (const [what, partial, pattern] of cases) {
      const error = await failure(infer({ modelName: 'bert-classifier', ...partial }));
      expect([what, error.code, error.details]).toEqual([
        what,
        status.INVALID_ARGUMENT,
        expect.stringMatching(pattern),
      ]);
    }
    const outOfRange = await failure(
      infer({
        modelName: 'identity',
        inputs: [{ name: 'in_int8', datatype: 'INT8', shape: [1, 2], contents: { intContents: [1, 300] } }],
      }),
    );
    expect(outOfRange.details).toMatch(/input 'in_int8': value 300 at 1 is out of range for INT8/);
    const fp16Typed = await failure(
      infer({
        modelName: 'identity',
        inputs: [{ name: 'in_float16', datatype: 'FP16', shape: [1, 2], contents: { fp32Contents: [1, 2] } }],
      }),
    );
    expect(fp16Typed.details).toMatch(/input 'in_float16': datatype FP16 must be sent in raw_input_contents/);

    const after = await scrapeMetrics(t.runner.metricsPort!);
    const labels = { model: 'bert-classifier', version: '1' };
    expect(
      metricDelta(before, after, 'maas_runner_inference_failures_total', {
        ...labels,
        reason: 'invalid_argument',
      }),
    ).toBe(cases.length);
    expect(metricDelta(before, after, 'maas_runner_executions_total', labels)).toBe(0);
    // The server is unharmed.
    expect((await classify([[2, 3]])).outputs[0]!.shape).toEqual([1, 3]);
  });

  it('answers NOT_FOUND for unknown models and versions, FAILED_PRECONDITION for a generation model', async () => {
    const base = encoderInputs([[2, 3]]);
    const unknownModel = await failure(infer({ modelName: 'nope', ...base }));
    const unknownVersion = await failure(infer({ modelName: 'bert-classifier', modelVersion: '7', ...base }));
    const generation = await failure(infer({ modelName: 'tiny-gpt2', ...base }));
    expect([unknownModel.code, unknownModel.details]).toEqual([status.NOT_FOUND, "model 'nope' not found"]);
    expect([unknownVersion.code, unknownVersion.details]).toEqual([
      status.NOT_FOUND,
      "model 'bert-classifier' has no version '7'",
    ]);
    expect([generation.code, generation.details]).toEqual([
      status.FAILED_PRECONDITION,
      expect.stringMatching(/GenerationService\/Generate/),
    ]);
  });
});

describe('ModelStreamInfer', () => {
  it('answers each request on the stream, errors in error_message, and stays open after one', async () => {
    const stream = t.inference.modelStreamInfer();
    const responses: ModelStreamInferResponse[] = [];
    const done = new Promise<void>((resolve, reject) => {
      stream.on('data', (r: ModelStreamInferResponse) => responses.push(r));
      stream.on('end', resolve);
      stream.on('error', reject);
    });
    const send = (id: string, modelName: string, rows: number[][]) =>
      stream.write(ModelInferRequest.fromPartial({ modelName, id, ...encoderInputs(rows) }));
    send('a', 'bert-classifier', [[2, 3]]);
    send('b', 'nope', [[2, 3]]);
    await new Promise((resolve) => setTimeout(resolve, 50));
    send('c', 'bert-classifier', [[2, 17, 3]]);
    stream.end();
    await done;
    const byId = new Map(responses.map((r) => [r.inferResponse!.id, r]));
    expect([...byId.keys()].sort()).toEqual(['a', 'b', 'c']);
    expect(byId.get('a')!.errorMessage).toBe('');
    expect(byId.get('a')!.inferResponse!.outputs[0]!.shape).toEqual([1, 3]);
    expect(byId.get('b')!.errorMessage).toBe("model 'nope' not found");
    expect(byId.get('c')!.errorMessage).toBe('');
  });
});
