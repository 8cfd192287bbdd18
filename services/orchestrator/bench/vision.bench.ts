/**
 * bench:vision — ReadText (OCR) of a page-like image (the receipt fixture,
 * 7 lines) and of a single text line, three ways:
 *
 *   - through the orchestrator: the three services from dist/, gRPC client in
 *     this process;
 *   - maas in process: the orchestrator's own pipeline (decodeImages, then
 *     vision/pipelines.ts's readText with ocr-det, ocr-cls and ocr-rec, the
 *     direction classifier on as ReadText's default has it) in this process,
 *     its ModelInfer calls answered here by an onnxruntime session per model
 *     opened with the runner's default options — the baseline the target is
 *     defined against;
 *   - @gutenye/ocr-node in a child process: the same PaddleOCR models with
 *     its own pre- and post-processing (informational).
 *
 * Per image: p50/p99 at c=1 and images/s at c=8 of each, in interleaved
 * rounds, the median round reported; the target line, the orchestrator's
 * images/s at c=8 over the in-process pipeline's (issue 14: ≥ 0.80); the
 * same ratio against @gutenye/ocr-node; and the stage split of the
 * in-process c=1 run: image decode, each model's inference (session.run),
 * the rest of the pipeline (resizes, DB post-processing, crops, CTC) and the
 * hops (orchestrator p50 − in-process p50), each as a share of the
 * orchestrator's p50. The load average is printed before and after.
 *
 *   BENCH_MS (default 4000) per point, BENCH_ROUNDS (default 3).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { credentials, type ServiceError } from '@grpc/grpc-js';
import { createSession, loadRunnerConfig } from '@maas/model-runner';
import { inferResponse, parseInferRequest } from '@maas/model-runner/kserve';
import { servedModel } from '@maas/model-runner/best-class-outputs';
import { DATATYPES, datatypeOfOrt, type TensorData } from '@maas/model-runner/tensors';
import {
  createLogger,
  defaultRepositoryPath,
  type ModelConfig,
  readModelConfig,
  selectVersions,
} from '@maas/shared';
import type {
  GRPCInferenceServiceClient,
  ModelInferRequest,
  ModelInferResponse,
} from '@maas/shared/gen/inference/grpc_service';
import { MaasServiceClient, type ReadTextResponse } from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import * as ort from 'onnxruntime-node';
import { type CatalogueModel, toCatalogueModel } from '../src/catalogue.js';
import { loadOrchestratorConfig } from '../src/config.js';
import { decodeImages, type ImageLimits } from '../src/vision/image-input.js';
import { type ReadLine, readText, type ReadTextModels } from '../src/vision/pipelines.js';
import { percentile, startStack, stopAll } from './stack.js';

const MS = Number(process.env.BENCH_MS ?? 4000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const FIXTURES = join(__dirname, '..', '..', 'test', 'fixtures', 'ocr');
const REFERENCE = join(__dirname, '..', '..', 'bench', 'ocr-reference.mjs');
const DETECTOR = 'ocr-det';

/** Per image, in ms: the in-process pipeline's stages measured apart. */
interface Stages {
  decode: number;
  detection: number;
  /** Undefined when the detector names no direction classifier. */
  classification?: number;
  recognition: number;
}

interface Point {
  p50: number;
  p99: number;
  imagesPerSecond: number;
  /** The in-process c=1 point's split. */
  stages?: Stages;
}

const summarize = (latencies: number[], seconds: number): Point => {
  const sorted = [...latencies].sort((a, b) => a - b);
  return {
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    imagesPerSecond: latencies.length / seconds,
  };
};

/** Runs `one` from `concurrency` loops for MS; returns the point and how many calls completed. */
async function measure(
  concurrency: number,
  one: () => Promise<unknown>,
): Promise<{ point: Point; calls: number }> {
  const latencies: number[] = [];
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() - started < MS) {
        const t = performance.now();
        await one();
        latencies.push(performance.now() - t);
      }
    }),
  );
  return { point: summarize(latencies, (performance.now() - started) / 1000), calls: latencies.length };
}

/**
 * Wall time during which at least one timed piece of work was in flight.
 * Pieces that overlap count once: a call's batches of one model are started
 * together and onnxruntime-node runs them one after another on the event
 * loop, so summing each one's await would count the first one's run again
 * in the second's wait.
 */
class BusyTime {
  private pending = 0;
  private since = 0;
  ms = 0;

  async time<T>(work: () => Promise<T>): Promise<T> {
    if (this.pending++ === 0) this.since = performance.now();
    try {
      return await work();
    } finally {
      if (--this.pending === 0) this.ms += performance.now() - this.since;
    }
  }
}

interface LoadedModel {
  config: ModelConfig;
  version: number;
  session: ort.InferenceSession;
  /** Time in this model's session.run. */
  busy: BusyTime;
}

/**
 * The runner's part of ReadText, in this process: ModelInfer answered by an
 * onnxruntime session per model, the request checked and read and the
 * response built by the runner's own kserve.ts (raw contents, as the
 * orchestrator's inferOutput reads them), without the hop, the dynamic
 * batching or the worker threads. Has the one method readText's unaryCall
 * calls, in the shape it calls it.
 */
class InProcessInference {
  private constructor(private readonly models: Map<string, LoadedModel>) {}

  /** Opens the newest version of each model with the runner's defaults (RUNNER_* as the stack's runner reads them). */
  static async open(root: string, names: string[]): Promise<InProcessInference> {
    const runner = loadRunnerConfig(process.env);
    const defaults = {
      intraOpNumThreads: runner.RUNNER_INTRA_OP_THREADS,
      interOpNumThreads: runner.RUNNER_INTER_OP_THREADS,
      executionProviders: runner.RUNNER_EXECUTION_PROVIDERS,
    };
    const logger = createLogger({ service: 'bench-vision', level: 'warn' });
    const models = new Map<string, LoadedModel>();
    for (const name of names) {
      const repositoryConfig = readModelConfig(join(root, name), name);
      const [newest] = selectVersions(join(root, name), repositoryConfig.versionPolicy);
      if (!newest) throw new Error(`${name}: no version in ${root}`);
      // As the runner serves it (a recognizer with its best-class outputs).
      const { config, model } = servedModel(newest.modelPath, repositoryConfig);
      const { session } = await createSession(newest.modelPath, config, defaults, logger, (path, options) =>
        typeof model === 'string'
          ? ort.InferenceSession.create(path, options)
          : ort.InferenceSession.create(model, options),
      );
      models.set(name, { config, version: newest.version, session, busy: new BusyTime() });
    }
    return new InProcessInference(models);
  }

  /** ms spent in each model's session.run since the last reset. */
  inferenceMs(name: string): number | undefined {
    return this.models.get(name)?.busy.ms;
  }

  resetClocks(): void {
    for (const model of this.models.values()) model.busy = new BusyTime();
  }

  modelInfer(
    request: ModelInferRequest,
    _metadata: unknown,
    _options: unknown,
    callback: (error: ServiceError | null, response?: ModelInferResponse) => void,
  ): { cancel(): void } {
    this.infer(request).then(
      (response) => callback(null, response),
      (error: unknown) => callback(error as ServiceError),
    );
    // unaryCall cancels the call when the caller's signal aborts; a run in process cannot be cut short.
    return { cancel: () => undefined };
  }

  async close(): Promise<void> {
    for (const model of this.models.values()) await model.session.release();
  }

  private async infer(request: ModelInferRequest): Promise<ModelInferResponse> {
    const model = this.models.get(request.modelName);
    if (!model) throw new Error(`model '${request.modelName}' is not loaded in process`);
    const { inputs, outputs, raw } = parseInferRequest(request.modelName, model.config, request);
    const feeds = Object.fromEntries(
      inputs.map((t) => [t.name, new ort.Tensor(DATATYPES[t.datatype].ort, t.data as never, t.shape)]),
    );
    const results = await model.busy.time(() => model.session.run(feeds, outputs));
    const tensors = outputs.map((name) => {
      const tensor = results[name]!;
      return {
        name,
        datatype: datatypeOfOrt(tensor.type) ?? 'FP32',
        shape: tensor.dims as number[],
        data: tensor.data as TensorData,
      };
    });
    return inferResponse(request.modelName, model.version, request, tensors, raw);
  }
}

/** The catalogue entry the orchestrator builds for a repository model. */
function catalogueModel(root: string, name: string, maxInputCharacters: number): CatalogueModel {
  const config = readModelConfig(join(root, name), name);
  const entry = toCatalogueModel(
    name,
    config,
    selectVersions(join(root, name), config.versionPolicy),
    maxInputCharacters,
  );
  if (typeof entry === 'string') throw new Error(entry);
  return entry;
}

/** ReadText as maas-core.ts runs it once the call is admitted: decode, then the pipeline, in this process. */
class InProcessPipeline {
  private decodeTime = new BusyTime();

  private constructor(
    private readonly inference: InProcessInference,
    private readonly models: ReadTextModels,
    private readonly limits: ImageLimits,
  ) {}

  static async open(root: string): Promise<InProcessPipeline> {
    // As the stack's orchestrator reads its settings (image limits, input characters).
    const settings = loadOrchestratorConfig({ ...process.env, AUTH_MODE: 'disabled' });
    const detector = catalogueModel(root, DETECTOR, settings.MAX_INPUT_CHARACTERS);
    // The components the detector's config names, as maas-core.ts resolves them.
    const { recognizer, directionClassifier } = detector.config.textDetection!;
    const models: ReadTextModels = {
      detector,
      recognizer: catalogueModel(root, recognizer, settings.MAX_INPUT_CHARACTERS),
      directionClassifier: directionClassifier
        ? catalogueModel(root, directionClassifier, settings.MAX_INPUT_CHARACTERS)
        : undefined,
    };
    const names = [detector.name, models.recognizer.name, models.directionClassifier?.name];
    const inference = await InProcessInference.open(
      root,
      names.filter((n) => n !== undefined),
    );
    return new InProcessPipeline(inference, models, {
      maxBytes: settings.MAX_IMAGE_BYTES,
      maxPixels: settings.MAX_IMAGE_PIXELS,
      maxSide: settings.MAX_IMAGE_SIDE,
    });
  }

  async read(image: Buffer): Promise<ReadLine[][]> {
    const images = await this.decodeTime.time(() =>
      decodeImages([{ source: { $case: 'data', value: image } }], this.limits),
    );
    const ctx = { deadline: new Date(Date.now() + 60_000), signal: new AbortController().signal };
    const { results } = await readText(
      // readText calls nothing of the client but modelInfer.
      this.inference as unknown as GRPCInferenceServiceClient,
      this.models,
      images,
      // ReadText's default when the request leaves classify_direction unset (maas-core.ts).
      this.models.directionClassifier !== undefined,
      ctx,
    );
    return results[0]!;
  }

  resetClocks(): void {
    this.decodeTime = new BusyTime();
    this.inference.resetClocks();
  }

  /** Each stage's ms per image since the last reset, over `calls` calls of one image each. */
  stages(calls: number): Stages {
    const classifier = this.models.directionClassifier?.name;
    const classification = classifier === undefined ? undefined : this.inference.inferenceMs(classifier);
    return {
      decode: this.decodeTime.ms / calls,
      detection: this.inference.inferenceMs(this.models.detector.name)! / calls,
      classification: classification === undefined ? undefined : classification / calls,
      recognition: this.inference.inferenceMs(this.models.recognizer.name)! / calls,
    };
  }

  close(): Promise<void> {
    return this.inference.close();
  }
}

/** The text of a result as the orchestrator's ReadTextResponse has it: a row per line of words. */
const textOf = (rows: ReadLine[][]) => rows.map((row) => row.map((l) => l.text).join(' ')).join('\n');

function readTextCall(client: MaasServiceClient, image: Buffer): Promise<ReadTextResponse> {
  return new Promise((resolve, reject) =>
    client.readText(
      {
        model: DETECTOR,
        images: [{ source: { $case: 'data', value: image } }],
        classifyDirection: undefined,
      },
      (error, response) => (error ? reject(error) : resolve(response)),
    ),
  );
}

async function maasPoint(client: MaasServiceClient, image: Buffer, concurrency: number): Promise<Point> {
  return (await measure(concurrency, () => readTextCall(client, image))).point;
}

async function inProcessPoint(
  pipeline: InProcessPipeline,
  image: Buffer,
  concurrency: number,
): Promise<Point> {
  pipeline.resetClocks();
  const { point, calls } = await measure(concurrency, () => pipeline.read(image));
  // At c=1 the stages run one after another, so their times add up to the call's.
  return concurrency === 1 ? { ...point, stages: pipeline.stages(calls) } : point;
}

function referencePoint(path: string, concurrency: number): Point {
  const out = execFileSync(process.execPath, [REFERENCE, path, String(MS), String(concurrency)], {
    encoding: 'utf8',
  });
  const { latencies, seconds } = JSON.parse(out) as { latencies: number[]; seconds: number };
  return summarize(latencies, seconds);
}

const median = (points: Point[]): Point => {
  const sorted = [...points].sort((a, b) => a.imagesPerSecond - b.imagesPerSecond);
  return sorted[Math.floor(sorted.length / 2)]!;
};

/** The in-process stages, the rest of its p50 and the hops, each as ms and a share of the orchestrator's p50. */
function stageLine(stages: Stages, inProcessP50: number, orchestratorP50: number): string {
  const share = (ms: number) => `${ms.toFixed(1)} ms (${((ms / orchestratorP50) * 100).toFixed(0)}%)`;
  const measured = stages.decode + stages.detection + (stages.classification ?? 0) + stages.recognition;
  const parts = [
    `decode ${share(stages.decode)}`,
    `detection ${share(stages.detection)}`,
    ...(stages.classification === undefined ? [] : [`direction ${share(stages.classification)}`]),
    `recognition ${share(stages.recognition)}`,
    `pre/post ${share(inProcessP50 - measured)}`,
  ];
  return `  stages (c=1, per image): ${parts.join(', ')}; hops (orchestrator p50 − in-process p50) ${share(orchestratorP50 - inProcessP50)}`;
}

const loadAverage = () =>
  loadavg()
    .map((l) => l.toFixed(2))
    .join(' ');

async function main(): Promise<void> {
  const root = defaultRepositoryPath();
  const stack = await startStack(root, { AUTH_MODE: 'disabled' });
  const client = new MaasServiceClient(stack.address, credentials.createInsecure());
  const pipeline = await InProcessPipeline.open(root);
  const images = ['receipt', 'line'].map((name) => ({
    name,
    path: join(FIXTURES, `${name}.png`),
    bytes: readFileSync(join(FIXTURES, `${name}.png`)),
  }));
  for (const image of images) {
    for (let i = 0; i < 5; i++) {
      await readTextCall(client, image.bytes);
      await pipeline.read(image.bytes);
    }
  }
  console.log(
    `bench:vision — ${ROUNDS} interleaved rounds of ${MS} ms per point; load average ${loadAverage()}`,
  );
  for (const image of images) {
    const rounds: Record<string, Point[]> = { maas1: [], own1: [], ref1: [], maas8: [], own8: [], ref8: [] };
    for (let r = 0; r < ROUNDS; r++) {
      rounds.maas1!.push(await maasPoint(client, image.bytes, 1));
      rounds.own1!.push(await inProcessPoint(pipeline, image.bytes, 1));
      rounds.ref1!.push(referencePoint(image.path, 1));
      rounds.maas8!.push(await maasPoint(client, image.bytes, 8));
      rounds.own8!.push(await inProcessPoint(pipeline, image.bytes, 8));
      rounds.ref8!.push(referencePoint(image.path, 8));
    }
    const [m1, o1, r1, m8, o8, r8] = ['maas1', 'own1', 'ref1', 'maas8', 'own8', 'ref8'].map((k) =>
      median(rounds[k]!),
    ) as [Point, Point, Point, Point, Point, Point];
    const response = (await readTextCall(client, image.bytes)).results[0]!;
    // Both sides must do the same work: the same models, the same lines read.
    const same = textOf(await pipeline.read(image.bytes)) === response.text;
    console.log(
      `\n${image.name} (${response.lines.length} lines; in process ${same ? 'reads the same text' : 'READS A DIFFERENT TEXT'})`,
    );
    console.log(
      `  c=1  orchestrator p50 ${m1.p50.toFixed(1)} ms p99 ${m1.p99.toFixed(1)} ms | maas in process p50 ${o1.p50.toFixed(1)} ms p99 ${o1.p99.toFixed(1)} ms | @gutenye/ocr-node p50 ${r1.p50.toFixed(1)} ms p99 ${r1.p99.toFixed(1)} ms`,
    );
    console.log(
      `  c=8  orchestrator ${m8.imagesPerSecond.toFixed(1)} images/s | maas in process ${o8.imagesPerSecond.toFixed(1)} images/s | @gutenye/ocr-node ${r8.imagesPerSecond.toFixed(1)} images/s`,
    );
    console.log(
      `  ratio orchestrator / maas in process at c=8: ${(m8.imagesPerSecond / o8.imagesPerSecond).toFixed(2)} (target ≥ 0.80)`,
    );
    console.log(
      `  ratio orchestrator / @gutenye/ocr-node at c=8: ${(m8.imagesPerSecond / r8.imagesPerSecond).toFixed(2)} (informational: its own pre- and post-processing)`,
    );
    console.log(stageLine(o1.stages!, o1.p50, m1.p50));
  }
  console.log(`\nload average after: ${loadAverage()}`);
  client.close();
  await pipeline.close();
}

main()
  .catch((error) => {
    console.error(error);
    process.exitCode = 1;
  })
  .finally(stopAll);
