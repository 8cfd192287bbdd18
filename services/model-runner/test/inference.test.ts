import { mkdirSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import {
  buildBertClassifier,
  GraphBuilder,
  writeFixtureRepository,
  type FixtureRepository,
} from '@maas/models';
import { checkHealth, metricValue, scrapeMetrics } from '@maas/shared/testing';
import type {
  ModelInferResponse,
  RepositoryIndexResponse,
  ModelMetadataResponse,
  ModelStreamInferResponse,
} from '@maas/shared/gen/inference/grpc_service';
import { ModelInferRequest } from '@maas/shared/gen/inference/grpc_service';
import { call, encoderInputs, failure, inferRequest, startTestRunner, type TestRunner } from './helpers';

let repo: FixtureRepository;
let t: TestRunner;

beforeAll(async () => {
  repo = writeFixtureRepository(undefined, {
    models: ['bert-classifier', 'sentence-encoder'],
    broken: true,
    maxQueueDelayMicroseconds: 20_000,
  });
  t = await startTestRunner(repo.root);
});
afterAll(async () => {
  await t?.close();
});

const logits = (r: ModelInferResponse) => r.outputs[0]!.contents!.fp32Contents;
const classify = (rows: number[][], raw = false) =>
  call<ModelInferResponse>(
    t.inference,
    'modelInfer',
    inferRequest({ modelName: 'bert-classifier', ...encoderInputs(rows, raw) }),
  );

describe('repository', () => {
  it('loads good models, isolates broken ones with a reason, and is SERVING', async () => {
    const index = await call<RepositoryIndexResponse>(t.inference, 'repositoryIndex', {});
    const byName = new Map(index.models.map((m) => [m.name, m]));
    expect(byName.get('bert-classifier')?.state).toBe('READY');
    expect(byName.get('sentence-encoder')?.state).toBe('READY');
    expect(byName.get('broken-onnx')?.state).toBe('UNAVAILABLE');
    expect(byName.get('broken-onnx')?.reason).toMatch(/protobuf|parse|load|model/i);
    expect(byName.get('broken-config')?.reason).toMatch(/input 'ids' is not in the graph/);
    expect(await checkHealth(t.address)).toBe('SERVING');
    expect(
      (await call<{ ready: boolean }>(t.inference, 'modelReady', { name: 'bert-classifier', version: '' }))
        .ready,
    ).toBe(true);
    expect(
      (await call<{ ready: boolean }>(t.inference, 'modelReady', { name: 'broken-onnx', version: '' })).ready,
    ).toBe(false);
    const failed = await failure(classifyModel('broken-onnx'));
    expect(failed.code).toBe(status.UNAVAILABLE);
  });

  it('describes models in KServe terms', async () => {
    const meta = await call<ModelMetadataResponse>(t.inference, 'modelMetadata', {
      name: 'bert-classifier',
      version: '',
    });
    expect(meta.platform).toBe('onnxruntime_onnx');
    expect(meta.inputs.map((i) => [i.name, i.datatype, i.shape])).toContainEqual([
      'input_ids',
      'INT64',
      [-1, -1],
    ]);
    expect(meta.outputs[0]).toMatchObject({ name: 'logits', datatype: 'FP32', shape: [-1, 3] });
    const server = await call<{ name: string; extensions: string[] }>(t.inference, 'serverMetadata', {});
    expect(server.extensions).toContain('model_repository');
  });
});

function classifyModel(modelName: string) {
  return call<ModelInferResponse>(
    t.inference,
    'modelInfer',
    inferRequest({ modelName, ...encoderInputs([[101, 102]]) }),
  );
}

describe('inference', () => {
  it('typed and raw contents give the same result', async () => {
    const typed = await classify([[101, 7592, 2088, 102]]);
    const raw = await classify([[101, 7592, 2088, 102]], true);
    expect(typed.outputs[0]!.shape).toEqual([1, 3]);
    const rawValues = new Float32Array(new Uint8Array(raw.rawOutputContents[0]!).buffer);
    Array.from(rawValues).forEach((v, i) => expect(v).toBeCloseTo(logits(typed)[i]!, 6));
  });

  it('merges concurrent requests into batches, and padding does not change results', async () => {
    const before = await scrapeMetrics(t.runner.metricsPort!);
    const short = [101, 7592, 102];
    const alone = logits(await classify([short]));
    const requests = Array.from({ length: 16 }, (_, i) =>
      classify([i % 2 === 0 ? short : [101, 7592, 2088, 2003, 2307, 1998, 2062, 102].slice(0, 4 + (i % 5))]),
    );
    const results = await Promise.all(requests);
    const after = await scrapeMetrics(t.runner.metricsPort!);
    const labels = { model: 'bert-classifier', version: '1' };
    const executions =
      metricValue(after, 'maas_runner_executions_total', labels) -
      metricValue(before, 'maas_runner_executions_total', labels);
    const inferences =
      metricValue(after, 'maas_runner_inferences_total', labels) -
      metricValue(before, 'maas_runner_inferences_total', labels);
    expect(inferences).toBe(17);
    expect(executions).toBeLessThan(10);
    results.forEach((r, i) => {
      if (i % 2 === 0) logits(r).forEach((v, k) => expect(v).toBeCloseTo(alone[k]!, 5));
    });
  });

  it('embedding outputs are cut back to each request length', async () => {
    const [a, b] = await Promise.all([
      call<ModelInferResponse>(
        t.inference,
        'modelInfer',
        inferRequest({ modelName: 'sentence-encoder', ...encoderInputs([[101, 102]]) }),
      ),
      call<ModelInferResponse>(
        t.inference,
        'modelInfer',
        inferRequest({ modelName: 'sentence-encoder', ...encoderInputs([[101, 7592, 2088, 2003, 102]]) }),
      ),
    ]);
    expect(a.outputs[0]!.shape).toEqual([1, 2, 32]);
    expect(b.outputs[0]!.shape).toEqual([1, 5, 32]);
  });

  it('refuses bad tensors with INVALID_ARGUMENT naming the tensor', async () => {
    const base = encoderInputs([[101, 102]]);
    const cases: [object, RegExp][] = [
      [
        {
          ...base,
          inputs: base.inputs.map((i) => (i.name === 'input_ids' ? { ...i, datatype: 'FP32' } : i)),
        },
        /input 'input_ids'.*expected datatype INT64, got FP32/,
      ],
      [
        {
          ...base,
          inputs: base.inputs.map((i) => (i.name === 'input_ids' ? { ...i, shape: [1, 2, 1] } : i)),
        },
        /input 'input_ids'.*shape/,
      ],
      [
        { ...base, inputs: base.inputs.map((i) => (i.name === 'input_ids' ? { ...i, shape: [1, 3] } : i)) },
        /input 'input_ids'.*has 2 values, shape needs 3/,
      ],
      [
        { ...base, inputs: base.inputs.filter((i) => i.name !== 'attention_mask') },
        /input 'attention_mask'.*required/,
      ],
      [
        { ...base, inputs: [...base.inputs, { name: 'pixels', datatype: 'FP32', shape: [1] }] },
        /input 'pixels'.*unknown/,
      ],
      [
        {
          ...encoderInputs([[101, 102]], true),
          rawInputContents: [Buffer.alloc(3), Buffer.alloc(16), Buffer.alloc(16)],
        },
        /input 'input_ids'.*raw contents have 3 bytes/,
      ],
      [{ ...base, outputs: [{ name: 'nope' }] }, /output 'nope'/],
    ];
    for (const [partial, pattern] of cases) {
      const error = await failure(
        call(t.inference, 'modelInfer', inferRequest({ modelName: 'bert-classifier', ...partial })),
      );
      expect([error.code, error.details]).toEqual([status.INVALID_ARGUMENT, expect.stringMatching(pattern)]);
    }
    expect(
      (await failure(call(t.inference, 'modelInfer', inferRequest({ modelName: 'nope', ...base })))).code,
    ).toBe(status.NOT_FOUND);
    // The server is unharmed.
    expect(logits(await classify([[101, 102]]))).toHaveLength(3);
  });

  it('answers ModelStreamInfer per request, errors in error_message', async () => {
    const stream = t.inference.modelStreamInfer();
    const responses: ModelStreamInferResponse[] = [];
    const done = new Promise<void>((resolve, reject) => {
      stream.on('data', (r: ModelStreamInferResponse) => responses.push(r));
      stream.on('end', resolve);
      stream.on('error', reject);
    });
    stream.write(
      ModelInferRequest.fromPartial({
        modelName: 'bert-classifier',
        id: 'a',
        ...encoderInputs([[101, 102]]),
      }),
    );
    stream.write(
      ModelInferRequest.fromPartial({ modelName: 'nope', id: 'b', ...encoderInputs([[101, 102]]) }),
    );
    stream.end();
    await done;
    expect(responses).toHaveLength(2);
    expect(responses.find((r) => r.inferResponse?.id === 'a')?.errorMessage).toBe('');
    expect(responses.find((r) => r.inferResponse?.id === 'b')?.errorMessage).toMatch(/not found/);
  });
});

describe('queueing', () => {
  it('drops requests whose deadline passed before compute, and refuses beyond the queue with RESOURCE_EXHAUSTED', async () => {
    const small = writeFixtureRepository(undefined, {
      models: ['bert-classifier'],
      maxQueueSize: 4,
      maxQueueDelayMicroseconds: 200_000,
      maxBatchSize: 64,
    });
    const r = await startTestRunner(small.root, { RUNNER_WARMUP: 'false' });
    try {
      const req = () => inferRequest({ modelName: 'bert-classifier', ...encoderInputs([[101, 102]]) });
      const expired = call(r.inference, 'modelInfer', req(), { deadline: new Date(Date.now() + 50) });
      const queued = [1, 2, 3].map(() => call(r.inference, 'modelInfer', req()));
      await new Promise((res) => setTimeout(res, 20));
      const refused = await failure(call(r.inference, 'modelInfer', req()));
      expect(refused.code).toBe(status.RESOURCE_EXHAUSTED);
      expect((await failure(expired)).code).toBe(status.DEADLINE_EXCEEDED);
      await Promise.all(queued);
      const scrape = await scrapeMetrics(r.runner.metricsPort!);
      expect(
        metricValue(scrape, 'maas_runner_inference_failures_total', {
          model: 'bert-classifier',
          reason: 'queue_full',
        }),
      ).toBe(1);
      expect(metricValue(scrape, 'maas_runner_inferences_total', { model: 'bert-classifier' })).toBe(3);
    } finally {
      await r.close();
    }
  });
});

describe('load and unload at run time', () => {
  it('reloads a new version under traffic without failing requests, then unloads', async () => {
    const root = writeFixtureRepository(undefined, { models: ['bert-classifier'] }).root;
    const r = await startTestRunner(root);
    try {
      let stop = false;
      let ok = 0;
      const traffic = (async () => {
        while (!stop) {
          await call(
            r.inference,
            'modelInfer',
            inferRequest({ modelName: 'bert-classifier', ...encoderInputs([[101, 7592, 102]]) }),
          );
          ok++;
        }
      })();
      mkdirSync(join(root, 'bert-classifier', '2'), { recursive: true });
      writeFileSync(join(root, 'bert-classifier', '2', 'model.onnx'), buildBertClassifier({ seed: 999 }));
      writeFileSync(
        join(root, 'bert-classifier', '2', 'tokenizer.json'),
        readFileSync(join(root, 'bert-classifier', '1', 'tokenizer.json')),
      );
      const config = JSON.parse(readFileSync(join(root, 'bert-classifier', 'config.json'), 'utf8'));
      writeFileSync(
        join(root, 'bert-classifier', 'config.json'),
        JSON.stringify({ ...config, versionPolicy: { latest: 2 } }),
      );
      await call(r.inference, 'repositoryModelLoad', {
        repositoryName: '',
        modelName: 'bert-classifier',
        parameters: {},
      });
      const index = await call<RepositoryIndexResponse>(r.inference, 'repositoryIndex', {
        repositoryName: '',
        ready: true,
      });
      expect(index.models.map((m) => m.version).sort()).toEqual(['1', '2']);
      const v2 = await call<ModelInferResponse>(
        r.inference,
        'modelInfer',
        inferRequest({ modelName: 'bert-classifier', ...encoderInputs([[101, 102]]) }),
      );
      expect(v2.modelVersion).toBe('2');
      const v1 = await call<ModelInferResponse>(
        r.inference,
        'modelInfer',
        inferRequest({ modelName: 'bert-classifier', modelVersion: '1', ...encoderInputs([[101, 102]]) }),
      );
      expect(v1.modelVersion).toBe('1');
      stop = true;
      await traffic;
      expect(ok).toBeGreaterThan(0);
      await call(r.inference, 'repositoryModelUnload', {
        repositoryName: '',
        modelName: 'bert-classifier',
        parameters: {},
      });
      expect(
        (
          await failure(
            call(
              r.inference,
              'modelInfer',
              inferRequest({ modelName: 'bert-classifier', ...encoderInputs([[101, 102]]) }),
            ),
          )
        ).code,
      ).toBe(status.NOT_FOUND);
    } finally {
      await r.close();
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('execution providers', () => {
  function repoWithCuda(allowCpuFallback: boolean) {
    const root = writeFixtureRepository(undefined, { models: ['bert-classifier'] }).root;
    const file = join(root, 'bert-classifier', 'config.json');
    const config = JSON.parse(readFileSync(file, 'utf8'));
    writeFileSync(
      file,
      JSON.stringify({ ...config, executionProviders: [{ name: 'cuda', deviceId: 0 }], allowCpuFallback }),
    );
    return root;
  }

  it('fails the model load clearly when CUDA is requested without its runtime', async () => {
    const r = await startTestRunner(repoWithCuda(false));
    try {
      const index = await call<RepositoryIndexResponse>(r.inference, 'repositoryIndex', {});
      expect(index.models[0]!.state).toBe('UNAVAILABLE');
      expect(index.models[0]!.reason).toMatch(/CUDA execution provider requested .*not installed/);
      expect(await checkHealth(r.address)).toBe('NOT_SERVING');
    } finally {
      await r.close();
    }
  });

  it('runs on CPU when the config allows the fallback', async () => {
    const r = await startTestRunner(repoWithCuda(true));
    try {
      const out = await call<ModelInferResponse>(
        r.inference,
        'modelInfer',
        inferRequest({ modelName: 'bert-classifier', ...encoderInputs([[101, 102]]) }),
      );
      expect(out.outputs[0]!.shape).toEqual([1, 3]);
    } finally {
      await r.close();
    }
  });
});

describe('datatypes', () => {
  it('round-trips every supported datatype through an identity graph', async () => {
    const root = writeFixtureRepository(undefined, { models: [] }).root;
    const types = [
      ['FP32', 'float32'],
      ['FP64', 'float64'],
      ['INT64', 'int64'],
      ['INT32', 'int32'],
      ['INT8', 'int8'],
      ['UINT8', 'uint8'],
      ['BOOL', 'bool'],
      ['FP16', 'float16'],
    ] as const;
    const g = new GraphBuilder('identity');
    for (const [, t] of types) {
      g.input(`in_${t}`, t, ['batch', 2]);
      g.node('Identity', [`in_${t}`], {}, [`out_${t}`]);
      g.output(`out_${t}`, t, ['batch', 2]);
    }
    mkdirSync(join(root, 'identity', '1'), { recursive: true });
    writeFileSync(join(root, 'identity', '1', 'model.onnx'), g.toBytes());
    writeFileSync(
      join(root, 'identity', 'config.json'),
      JSON.stringify({
        task: 'raw',
        maxBatchSize: 4,
        inputs: types.map(([d, t]) => ({ name: `in_${t}`, datatype: d, dims: [2] })),
        outputs: types.map(([d, t]) => ({ name: `out_${t}`, datatype: d, dims: [2] })),
      }),
    );
    const r = await startTestRunner(root);
    try {
      const raw: Record<string, Buffer> = {
        float32: Buffer.from(new Float32Array([1.5, -2]).buffer),
        float64: Buffer.from(new Float64Array([1e300, -0.25]).buffer),
        int64: Buffer.from(new BigInt64Array([2n ** 40n, -3n]).buffer),
        int32: Buffer.from(new Int32Array([7, -7]).buffer),
        int8: Buffer.from(new Int8Array([-128, 127]).buffer),
        uint8: Buffer.from(new Uint8Array([0, 255]).buffer),
        bool: Buffer.from(new Uint8Array([1, 0]).buffer),
        float16: Buffer.from(new Uint16Array([0x3c00, 0xc000]).buffer),
      };
      const out = await call<ModelInferResponse>(
        r.inference,
        'modelInfer',
        inferRequest({
          modelName: 'identity',
          inputs: types.map(([d, t]) => ({ name: `in_${t}`, datatype: d, shape: [1, 2] })),
          rawInputContents: types.map(([, t]) => raw[t]!),
        }),
      );
      out.outputs.forEach((o, i) => {
        const t = o.name.slice(4);
        expect([o.name, o.datatype, Buffer.from(out.rawOutputContents[i]!).equals(raw[t]!)]).toEqual([
          o.name,
          types.find(([, x]) => x === t)![0],
          true,
        ]);
      });
      const typed = await call<ModelInferResponse>(
        r.inference,
        'modelInfer',
        inferRequest({
          modelName: 'identity',
          inputs: types
            .filter(([d]) => d !== 'FP16')
            .map(([d, t]) => ({
              name: `in_${t}`,
              datatype: d,
              shape: [1, 2],
              contents:
                d === 'BOOL'
                  ? { boolContents: [true, false] }
                  : d === 'INT64'
                    ? { int64Contents: [5, -5] }
                    : d === 'UINT8'
                      ? { uintContents: [1, 2] }
                      : d.startsWith('INT')
                        ? { intContents: [3, -3] }
                        : d === 'FP64'
                          ? { fp64Contents: [0.5, 1] }
                          : { fp32Contents: [0.5, 1] },
            })),
        }),
      ).catch((e) => e);
      // FP16 must be sent raw, so a typed request without it is missing an input.
      expect(String(typed.details)).toMatch(/in_float16.*required/);
    } finally {
      await r.close();
    }
  });
});
