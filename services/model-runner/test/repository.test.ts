/** The model repository through KServe: start-up readiness, broken models, metadata, load/unload, CUDA. */
import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { createSession } from '../src/session';
import { loadRunnerConfig } from '../src/config';
import { checkHealth, metricValue, scrapeMetrics } from '@maas/shared/testing';
import type {
  ModelInferResponse,
  ModelMetadataResponse,
  RepositoryIndexResponse,
} from '@maas/shared/gen/inference/grpc_service';
import {
  call,
  encoderInputs,
  failure,
  inferRequest,
  sleep,
  startTestRunner,
  type TestRunner,
} from './helpers';
import { editConfig, testRepository, writeModel } from './models';

const index = async (r: TestRunner) =>
  new Map(
    (await call<RepositoryIndexResponse>(r.inference, 'repositoryIndex', {})).models.map((m) => [
      `${m.name}/${m.version}`,
      m,
    ]),
  );
const ready = async (r: TestRunner, name: string, version = '') =>
  (await call<{ ready: boolean }>(r.inference, 'modelReady', { name, version })).ready;
const serverReady = async (r: TestRunner) =>
  (await call<{ ready: boolean }>(r.inference, 'serverReady', {})).ready;
const classify = (r: TestRunner, modelName = 'bert-classifier', modelVersion = '') =>
  call<ModelInferResponse>(
    r.inference,
    'modelInfer',
    inferRequest({ modelName, modelVersion, ...encoderInputs([[2, 17, 3]]) }),
  );
const load = (r: TestRunner, modelName: string) =>
  call(r.inference, 'repositoryModelLoad', { repositoryName: '', modelName, parameters: {} });
const unload = (r: TestRunner, modelName: string) =>
  call(r.inference, 'repositoryModelUnload', { repositoryName: '', modelName, parameters: {} });

describe('start-up', () => {
  it('is NOT_SERVING and not ready until every model has finished loading, then SERVING', async () => {
    const root = testRepository(['bert-classifier', 'sentence-encoder']);
    // The real session factory, held back for the second model until the test has looked.
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const r = await startTestRunner(
      root,
      {},
      {
        returnBeforeLoaded: true,
        createSession: async (path, ...rest) => {
          if (path.includes('sentence-encoder')) await gate;
          return createSession(path, ...rest);
        },
      },
    );
    try {
      const until = async (check: () => Promise<boolean>) => {
        for (let i = 0; i < 100 && !(await check()); i++) await sleep(50);
      };
      await until(async () => (await index(r)).get('sentence-encoder/1')?.state === 'LOADING');
      const models = await index(r);
      expect([models.get('bert-classifier/1')?.state, models.get('sentence-encoder/1')?.state]).toEqual([
        'READY',
        'LOADING',
      ]);
      // One model is READY, but start-up has not finished trying the other.
      expect(await checkHealth(r.address)).toBe('NOT_SERVING');
      expect(await checkHealth(r.address, 'inference.GRPCInferenceService')).toBe('NOT_SERVING');
      expect(await serverReady(r)).toBe(false);
      expect([await ready(r, 'bert-classifier'), await ready(r, 'sentence-encoder')]).toEqual([true, false]);
      expect(await call(r.inference, 'serverLive', {})).toEqual({ live: true });
      release();
      await r.runner.loaded;
      expect(await checkHealth(r.address)).toBe('SERVING');
      expect(await checkHealth(r.address, 'maas.runner.v1.GenerationService')).toBe('SERVING');
      expect(await serverReady(r)).toBe(true);
      expect(await ready(r, 'sentence-encoder', '1')).toBe(true);
    } finally {
      release();
      await r.close();
    }
  });

  it('answers UNAVAILABLE (retryable), not NOT_FOUND, for repository models it has not loaded yet', async () => {
    const root = testRepository(['bert-classifier', 'sentence-encoder']);
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const r = await startTestRunner(
      root,
      {},
      {
        returnBeforeLoaded: true,
        createSession: async (path, ...rest) => {
          if (path.includes('bert-classifier')) await gate;
          return createSession(path, ...rest);
        },
      },
    );
    try {
      // bert-classifier is loading; sentence-encoder has not been reached.
      for (const model of ['bert-classifier', 'sentence-encoder']) {
        const error = await failure(classify(r, model));
        expect([model, error.code]).toEqual([model, status.UNAVAILABLE]);
      }
      expect((await failure(classify(r, 'no-such-model'))).code).toBe(status.NOT_FOUND);
      expect(await checkHealth(r.address)).toBe('NOT_SERVING');
      release();
      await r.runner.loaded;
      expect((await classify(r, 'sentence-encoder')).outputs.length).toBeGreaterThan(0);
      expect((await failure(classify(r, 'no-such-model'))).code).toBe(status.NOT_FOUND);
    } finally {
      release();
      await r.close();
    }
  });

  it('isolates broken models, each UNAVAILABLE with its reason, while the others serve', async () => {
    const root = testRepository(['bert-classifier', 'broken-onnx', 'broken-config']);
    const good = JSON.parse(readFileSync(join(root, 'bert-classifier', 'config.json'), 'utf8'));
    const bert = readFileSync(join(root, 'bert-classifier', '1', 'model.onnx'));
    writeModel(
      root,
      'wrong-datatype',
      { ...good, inputs: good.inputs.map((i: object) => ({ ...i, datatype: 'INT32' })) },
      bert,
    );
    writeModel(
      root,
      'wrong-dims',
      { ...good, outputs: [{ name: 'logits', datatype: 'FP32', dims: [5] }] },
      bert,
    );
    writeModel(root, 'bad-json', '{ "task": ', bert);
    writeModel(root, 'missing-file', good, bert);
    rmSync(join(root, 'missing-file', '1', 'model.onnx'));
    const r = await startTestRunner(root);
    try {
      const models = await index(r);
      expect(models.get('bert-classifier/1')?.state).toBe('READY');
      const expected: [string, RegExp][] = [
        ['broken-onnx/1', /protobuf parsing failed|failed/i],
        [
          'broken-config/1',
          /config disagrees with the graph: input 'ids' is not in the graph.*graph input 'input_ids' is missing from the config/,
        ],
        ['wrong-datatype/1', /input 'input_ids' is INT64 in the graph, INT32 in the config/],
        ['wrong-dims/1', /output 'logits' dimension 1 is 3 in the graph, 5 in the config/],
        ['bad-json/', /bad-json: cannot parse .*config\.json/],
        ['missing-file/1', /missing-file\/1\/model\.onnx is missing/],
      ];
      for (const [key, reason] of expected) {
        expect([key, models.get(key)?.state, models.get(key)?.reason]).toEqual([
          key,
          'UNAVAILABLE',
          expect.stringMatching(reason),
        ]);
      }
      expect(await checkHealth(r.address)).toBe('SERVING');
      expect(await serverReady(r)).toBe(true);
      expect([
        await ready(r, 'bert-classifier'),
        await ready(r, 'wrong-dims'),
        await ready(r, 'bad-json'),
      ]).toEqual([true, false, false]);
      const refused = await failure(classify(r, 'wrong-datatype'));
      expect([refused.code, refused.details]).toEqual([
        status.UNAVAILABLE,
        expect.stringMatching(/is not ready: .*INT32 in the config/),
      ]);
      expect((await classify(r)).outputs[0]!.shape).toEqual([1, 3]);
      const metrics = await scrapeMetrics(r.runner.metricsPort!);
      const state = (model: string, s: string) =>
        metricValue(metrics, 'maas_runner_model_state', { model, version: '1', state: s });
      expect([state('bert-classifier', 'READY'), state('bert-classifier', 'LOADING')]).toEqual([1, 0]);
      expect([state('wrong-dims', 'UNAVAILABLE'), state('wrong-dims', 'READY')]).toEqual([1, 0]);
      expect(
        metricValue(metrics, 'maas_runner_model_load_duration_seconds', { model: 'bert-classifier' }),
      ).toBeGreaterThan(0);
    } finally {
      await r.close();
    }
  });

  it('loads only the models named in MODELS', async () => {
    const root = testRepository(['bert-classifier', 'sentence-encoder']);
    const r = await startTestRunner(root, { MODELS: 'sentence-encoder' });
    try {
      const models = await index(r);
      expect(models.get('sentence-encoder/1')?.state).toBe('READY');
      expect(models.get('bert-classifier/')).toMatchObject({ state: 'UNAVAILABLE', reason: 'not loaded' });
      expect((await failure(classify(r))).code).toBe(status.NOT_FOUND);
    } finally {
      await r.close();
    }
  });
});

describe('metadata', () => {
  let r: TestRunner;
  beforeAll(async () => {
    r = await startTestRunner(testRepository(['bert-classifier', 'sentence-encoder']));
  });
  afterAll(async () => {
    await r?.close();
  });

  it('describes the server and the models in KServe terms', async () => {
    const server = await call<{ name: string; version: string; extensions: string[] }>(
      r.inference,
      'serverMetadata',
      {},
    );
    expect(server).toEqual({
      name: 'maas-model-runner',
      version: expect.any(String),
      extensions: ['model_repository', 'binary_tensor_data'],
    });
    const bert = await call<ModelMetadataResponse>(r.inference, 'modelMetadata', {
      name: 'bert-classifier',
      version: '',
    });
    expect(bert).toEqual({
      name: 'bert-classifier',
      versions: ['1'],
      platform: 'onnxruntime_onnx',
      inputs: ['input_ids', 'attention_mask', 'token_type_ids'].map((name) => ({
        name,
        datatype: 'INT64',
        shape: [-1, -1],
      })),
      outputs: [{ name: 'logits', datatype: 'FP32', shape: [-1, 3] }],
    });
    const encoder = await call<ModelMetadataResponse>(r.inference, 'modelMetadata', {
      name: 'sentence-encoder',
      version: '1',
    });
    expect(encoder.outputs).toEqual([{ name: 'last_hidden_state', datatype: 'FP32', shape: [-1, -1, 32] }]);
    expect((await failure(call(r.inference, 'modelMetadata', { name: 'nope', version: '' }))).code).toBe(
      status.NOT_FOUND,
    );
    expect((await failure(call(r.inference, 'modelReady', { name: 'nope', version: '' }))).code).toBe(
      status.NOT_FOUND,
    );
    expect(await ready(r, 'bert-classifier', '2')).toBe(false);
  });
});

describe('load and unload at run time', () => {
  it('reloads with a new version beside the old under traffic, then unloads and loads again', async () => {
    const root = testRepository(['bert-classifier'], { maxQueueDelayMicroseconds: 1000 });
    const r = await startTestRunner(root);
    try {
      let stop = false;
      let ok = 0;
      const failures: string[] = [];
      const versions = new Set<string>();
      const traffic = Array.from({ length: 4 }, async () => {
        while (!stop) {
          await classify(r).then(
            (response) => {
              ok++;
              versions.add(response.modelVersion);
            },
            (error: Error) => failures.push(error.message),
          );
        }
      });
      await sleep(100);
      writeModel(
        root,
        'bert-classifier',
        JSON.parse(readFileSync(join(root, 'bert-classifier', 'config.json'), 'utf8')),
        readFileSync(join(root, 'bert-classifier', '1', 'model.onnx')),
        2,
      );
      writeFileSync(
        join(root, 'bert-classifier', '2', 'tokenizer.json'),
        readFileSync(join(root, 'bert-classifier', '1', 'tokenizer.json')),
      );
      editConfig(root, 'bert-classifier', (c) => ({ ...c, versionPolicy: { latest: 2 } }));
      await load(r, 'bert-classifier');
      const okAtSwitch = ok;
      await sleep(200);
      stop = true;
      await Promise.all(traffic);
      expect(failures).toEqual([]);
      expect(ok).toBeGreaterThan(okAtSwitch);
      expect([...versions].sort()).toEqual(['1', '2']);
      const models = await index(r);
      expect([models.get('bert-classifier/1')?.state, models.get('bert-classifier/2')?.state]).toEqual([
        'READY',
        'READY',
      ]);
      expect((await classify(r)).modelVersion).toBe('2');
      expect((await classify(r, 'bert-classifier', '1')).modelVersion).toBe('1');

      // A reload that fails keeps the versions that serve.
      writeModel(
        root,
        'bert-classifier',
        JSON.parse(readFileSync(join(root, 'bert-classifier', 'config.json'), 'utf8')),
        'not onnx',
        3,
      );
      editConfig(root, 'bert-classifier', (c) => ({ ...c, versionPolicy: { latest: 1 } }));
      const failedReload = await failure(load(r, 'bert-classifier'));
      expect([failedReload.code, failedReload.details]).toEqual([
        status.FAILED_PRECONDITION,
        expect.stringMatching(/reload failed, serving the loaded versions: version 3/),
      ]);
      expect((await classify(r)).modelVersion).toBe('2');

      await unload(r, 'bert-classifier');
      const unloaded = await failure(classify(r));
      expect([unloaded.code, unloaded.details]).toEqual([
        status.NOT_FOUND,
        "model 'bert-classifier' is not loaded (it was unloaded)",
      ]);
      expect((await index(r)).get('bert-classifier/2')).toMatchObject({
        state: 'UNAVAILABLE',
        reason: 'unloaded',
      });
      expect(await checkHealth(r.address)).toBe('NOT_SERVING');
      expect((await failure(unload(r, 'bert-classifier'))).code).toBe(status.NOT_FOUND);

      rmSync(join(root, 'bert-classifier', '3'), { recursive: true });
      await load(r, 'bert-classifier');
      expect((await classify(r)).modelVersion).toBe('2');
      expect(await checkHealth(r.address)).toBe('SERVING');
      expect((await failure(load(r, 'nope'))).code).toBe(status.NOT_FOUND);
    } finally {
      await r.close();
    }
  });

  /** A worker session's thread, terminated behind its back. */
  type Crashable = { channel: { worker: { terminate(): Promise<number> } } };

  it('a session whose worker dies makes its version UNAVAILABLE until the model is loaded again', async () => {
    const r = await startTestRunner(testRepository(['bert-classifier']));
    try {
      const [session] = r.runner.repository.resolve('bert-classifier').sessions;
      // What a native crash in the worker looks like from the main thread.
      await (session as unknown as Crashable).channel.worker.terminate();
      const refused = await failure(classify(r));
      expect([refused.code, refused.details]).toEqual([
        status.UNAVAILABLE,
        expect.stringMatching(/session worker exited.*load the model again/),
      ]);
      expect(await checkHealth(r.address)).toBe('NOT_SERVING');
      await load(r, 'bert-classifier');
      expect((await classify(r)).outputs[0]!.shape).toEqual([1, 3]);
      expect(await checkHealth(r.address)).toBe('SERVING');
    } finally {
      await r.close();
    }
  });

  it('polls the repository for new, changed and removed models when REPOSITORY_POLL_SECONDS is set', async () => {
    const root = testRepository(['bert-classifier']);
    const r = await startTestRunner(root, { REPOSITORY_POLL_SECONDS: '1' });
    try {
      // Copied beside the repository, then moved in: the poller never sees half a model.
      const encoder = testRepository(['sentence-encoder']);
      renameSync(join(encoder, 'sentence-encoder'), join(root, 'sentence-encoder'));
      const until = async (check: () => Promise<boolean>) => {
        for (let i = 0; i < 60 && !(await check()); i++) await sleep(100);
        return check();
      };
      expect(await until(async () => (await index(r)).get('sentence-encoder/1')?.state === 'READY')).toBe(
        true,
      );
      rmSync(join(root, 'bert-classifier'), { recursive: true });
      expect(await until(async () => !(await ready(r, 'bert-classifier').catch(() => false)))).toBe(true);
    } finally {
      await r.close();
    }
  });
});

describe('session options', () => {
  it("keeps onnxruntime's threads from spinning between runs unless the config allows it", async () => {
    const seen: Record<string, unknown>[] = [];
    const root = testRepository(['bert-classifier']);
    const spinning = testRepository(['bert-classifier']);
    editConfig(spinning, 'bert-classifier', (c) => ({ ...c, sessionOptions: { allowSpinning: true } }));
    for (const repo of [root, spinning]) {
      const r = await startTestRunner(
        repo,
        {},
        {
          createSession: async (path, config, defaults, logger, open) =>
            createSession(path, config, defaults, logger, (p, options) => {
              seen.push(options.extra as Record<string, unknown>);
              return open!(p, options);
            }),
        },
      );
      await r.close();
    }
    const flag = (spin: string) => ({
      session: { intra_op: { allow_spinning: spin }, inter_op: { allow_spinning: spin } },
    });
    expect(seen[0]).toEqual(flag('0'));
    expect(seen.at(-1)).toEqual(flag('1'));
  });
});

describe('execution providers', () => {
  function repositoryWithCuda(allowCpuFallback: boolean) {
    const root = testRepository(['bert-classifier']);
    editConfig(root, 'bert-classifier', (c) => ({
      ...c,
      executionProviders: [{ name: 'cuda', deviceId: 0 }],
      allowCpuFallback,
    }));
    return root;
  }

  it('fails the model load with a clear message when CUDA is requested without its runtime', async () => {
    const r = await startTestRunner(repositoryWithCuda(false));
    try {
      const entry = (await index(r)).get('bert-classifier/1');
      expect(entry?.state).toBe('UNAVAILABLE');
      expect(entry?.reason).toMatch(
        /CUDA execution provider requested \(device 0\) but onnxruntime-node's CUDA runtime is not installed/,
      );
      expect(entry?.reason).toMatch(/ONNXRUNTIME_NODE_INSTALL=cuda12/);
      expect(entry?.reason).toMatch(/allowCpuFallback/);
      expect(await checkHealth(r.address)).toBe('NOT_SERVING');
    } finally {
      await r.close();
    }
  });

  it('runs on CPU when the config allows the fallback', async () => {
    const r = await startTestRunner(repositoryWithCuda(true));
    try {
      expect((await classify(r)).outputs[0]!.shape).toEqual([1, 3]);
      expect(await checkHealth(r.address)).toBe('SERVING');
    } finally {
      await r.close();
    }
  });

  function repositoryWith(executionProviders: object[], allowCpuFallback = false) {
    const root = testRepository(['bert-classifier']);
    editConfig(root, 'bert-classifier', (c) => ({ ...c, executionProviders, allowCpuFallback }));
    return root;
  }

  // This machine (and CI) has no GPU and no Vulkan loader: the bundled WebGPU provider finds no adapter.
  it('fails the load with the WebGPU provider’s reason when it finds no GPU adapter', async () => {
    const r = await startTestRunner(repositoryWith([{ name: 'webgpu' }]));
    try {
      const entry = (await index(r)).get('bert-classifier/1');
      expect(entry?.state).toBe('UNAVAILABLE');
      expect(entry?.reason).toMatch(/^WebGPU execution provider requested but could not start: .*adapter/);
      expect(entry?.reason).toMatch(/libvulkan\.so\.1.*NVIDIA_DRIVER_CAPABILITIES.*allowCpuFallback/);
    } finally {
      await r.close();
    }
  });

  it('tries providers in the config’s order and says why it runs on a later one', async () => {
    const r = await startTestRunner(
      repositoryWith([{ name: 'webgpu' }, { name: 'cuda', deviceId: 1 }, { name: 'cpu' }]),
    );
    try {
      expect((await classify(r)).outputs[0]!.shape).toEqual([1, 3]);
      const entry = (await index(r)).get('bert-classifier/1');
      expect(entry?.state).toBe('READY');
      expect(entry?.reason).toMatch(
        /^running on cpu: WebGPU execution provider [\s\S]* CUDA execution provider requested \(device 1\)/,
      );
      const metrics = await scrapeMetrics(r.runner.metricsPort!);
      expect(
        metricValue(metrics, 'maas_runner_model_provider', {
          model: 'bert-classifier',
          version: '1',
          provider: 'cpu',
          device: '',
        }),
      ).toBe(1);
    } finally {
      await r.close();
    }
  });

  it('falls back from WebGPU to CPU only when allowed, and labels the version with its provider', async () => {
    const r = await startTestRunner(repositoryWith([{ name: 'webgpu' }], true));
    try {
      expect((await classify(r)).outputs[0]!.shape).toEqual([1, 3]);
      expect((await index(r)).get('bert-classifier/1')?.reason).toMatch(/^running on cpu: WebGPU/);
      await unload(r, 'bert-classifier');
      const metrics = await scrapeMetrics(r.runner.metricsPort!);
      expect(
        metricValue(metrics, 'maas_runner_model_provider', {
          model: 'bert-classifier',
          version: '1',
          provider: 'cpu',
          device: '',
        }),
      ).toBe(0);
    } finally {
      await r.close();
    }
  });

  it("uses the runner's RUNNER_EXECUTION_PROVIDERS for models whose config lists none", async () => {
    // A config without executionProviders, as the default models ship: the node pool decides.
    const r = await startTestRunner(testRepository(['bert-classifier']), {
      RUNNER_EXECUTION_PROVIDERS: 'webgpu,cuda:1,cpu',
    });
    try {
      expect((await classify(r)).outputs[0]!.shape).toEqual([1, 3]);
      expect((await index(r)).get('bert-classifier/1')?.reason).toMatch(
        /^running on cpu: WebGPU execution provider [\s\S]* CUDA execution provider requested \(device 1\)/,
      );
    } finally {
      await r.close();
    }
    // Without a CPU entry, no fallback: the load fails with the GPU provider's reason.
    const strict = await startTestRunner(testRepository(['bert-classifier']), {
      RUNNER_EXECUTION_PROVIDERS: 'webgpu',
    });
    try {
      const entry = (await index(strict)).get('bert-classifier/1');
      expect(entry?.state).toBe('UNAVAILABLE');
      expect(entry?.reason).toMatch(/^WebGPU execution provider requested but could not start/);
    } finally {
      await strict.close();
    }
  });

  it('refuses a RUNNER_EXECUTION_PROVIDERS entry it does not know, at start', () => {
    expect(() => loadRunnerConfig({ RUNNER_EXECUTION_PROVIDERS: 'webgpu,tensorrt' })).toThrow(
      /RUNNER_EXECUTION_PROVIDERS.*'tensorrt' is not an execution provider/s,
    );
    expect(() => loadRunnerConfig({ RUNNER_EXECUTION_PROVIDERS: 'webgpu:1' })).toThrow(/'webgpu:1'/);
    expect(
      loadRunnerConfig({ RUNNER_EXECUTION_PROVIDERS: 'cuda:2, cpu' }).RUNNER_EXECUTION_PROVIDERS,
    ).toEqual([{ name: 'cuda', deviceId: 2 }, { name: 'cpu' }]);
  });

  it('refuses sessionThread "main" with more than one instance, naming the field', async () => {
    const root = testRepository(['bert-classifier']);
    editConfig(root, 'bert-classifier', (c) => ({ ...c, sessionThread: 'main', instanceCount: 2 }));
    const r = await startTestRunner(root);
    try {
      const entry = (await index(r)).get('bert-classifier/');
      expect(entry?.state).toBe('UNAVAILABLE');
      expect(entry?.reason).toMatch(/instanceCount: must be 1 with sessionThread "main"/);
    } finally {
      await r.close();
    }
  });

  it('refuses a config naming an execution provider it does not know', async () => {
    const r = await startTestRunner(repositoryWith([{ name: 'tensorrt' }]));
    try {
      const entry = (await index(r)).get('bert-classifier/');
      expect(entry?.state).toBe('UNAVAILABLE');
      expect(entry?.reason).toMatch(/executionProviders\.0\.name: .*Expected 'cpu' \| 'cuda' \| 'webgpu'/);
    } finally {
      await r.close();
    }
  });
});
