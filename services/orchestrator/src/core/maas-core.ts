/**
 * The public API's use cases, one function each, independent of the
 * transport: who is calling, may they, are they within their limits, is the
 * request valid — then the task's pipeline, then usage metering. Every call
 * goes through `serve`, so the audit log and the usage counters see every
 * request, failed ones included. The gRPC service and the HTTP server are
 * adapters that map their wire formats onto these functions.
 */
import { status } from '@grpc/grpc-js';
import { trace } from '@opentelemetry/api';
import {
  downstreamDeadline,
  failedPrecondition,
  invalidArgument,
  type Logger,
  notFound,
  renamingField,
  statusOf,
  StatusError,
} from '@maas/shared';
import {
  type ClassifyImageRequest,
  type ClassifyImageResponse,
  type ClassifyRequest,
  type ClassifyResponse,
  type DetectObjectsRequest,
  type DetectObjectsResponse,
  type CountTokensRequest,
  type CountTokensResponse,
  type EmbedRequest,
  type EmbedResponse,
  FinishReason,
  type GenerateRequest,
  type GenerateResponse,
  type GetModelRequest,
  type GetModelResponse,
  type Image,
  type ListModelsResponse,
  type Model,
  type ReadTextRequest,
  type ReadTextResponse,
  Task as ProtoTask,
  type TokenizeRequest,
  type TokenizeResponse,
  type Usage,
} from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import { type Authenticator, mayUse, type Principal } from '../access/api-keys.js';
import type { QuotaEnforcer } from '../access/limits.js';
import type { CatalogueModel, ModelCatalogue, ModelTask } from '../catalogue.js';
import { type Downstream, unaryCall } from '../downstream/clients.js';
import type { Task, UsageMeter } from '../metering.js';
import type { EncoderBatchers } from '../pipelines/encoder-batchers.js';
import type { GenerationAdmission } from '../pipelines/generation-admission.js';
import { runGeneration } from '../pipelines/generation.js';
import { classifyRows, embedRows } from '../pipelines/tasks.js';
import type { ChatMessage } from '../pipelines/chat-template.js';
import {
  checkDetection,
  checkGenerate,
  checkImageCount,
  checkTexts,
  generationPriority,
} from '../validation.js';
import { decodeImages, type RgbImage } from '../vision/image-input.js';
import { classifyImages, detectObjects, readText } from '../vision/pipelines.js';
import { type Caller, deadlinePassed } from './caller.js';
import type { InFlightLimit } from './in-flight-limit.js';

export interface MaasSettings {
  DOWNSTREAM_TIMEOUT_MS: number;
  MAX_STOP_STRINGS: number;
  MAX_STOP_STRING_CHARACTERS: number;
  MAX_IMAGES_PER_CALL: number;
  MAX_IMAGE_BYTES: number;
  MAX_IMAGE_PIXELS: number;
  MAX_IMAGE_SIDE: number;
}

export interface MaasDeps {
  settings: MaasSettings;
  auth: Authenticator;
  quotas: QuotaEnforcer;
  meter: UsageMeter;
  catalogue: ModelCatalogue;
  downstream: Downstream;
  batchers: EncoderBatchers;
  generationAdmission: GenerationAdmission;
  /** Bounds the unary calls in progress at once (generation streams have their own admission). */
  inFlight: InFlightLimit;
  logger: Logger;
}

/** A chat: as a GenerateRequest, with messages where the prompt would be. */
export interface ChatRequest extends Omit<GenerateRequest, 'prompt'> {
  messages: ChatMessage[];
}

/** Characters of a model name (the repository's directory names are far shorter). */
export const MAX_MODEL_NAME_CHARACTERS = 256;

/** Texts per Tokenize/CountTokens call (these have no model batch size). */
export const MAX_TOKENIZE_TEXTS = 256;

const RPC_OF_TASK: Record<ModelTask, string> = {
  classification: 'Classify',
  embedding: 'Embed',
  generation: 'Generate',
  image_classification: 'ClassifyImage',
  object_detection: 'DetectObjects',
  text_detection: 'ReadText',
  text_recognition: 'ReadText with a text detection model that names it',
};
const PROTO_TASK: Record<ModelTask, ProtoTask> = {
  classification: ProtoTask.TASK_CLASSIFICATION,
  embedding: ProtoTask.TASK_EMBEDDING,
  generation: ProtoTask.TASK_GENERATION,
  image_classification: ProtoTask.TASK_IMAGE_CLASSIFICATION,
  object_detection: ProtoTask.TASK_OBJECT_DETECTION,
  text_detection: ProtoTask.TASK_TEXT_DETECTION,
  text_recognition: ProtoTask.TASK_TEXT_RECOGNITION,
};

interface RequestContext {
  principal: Principal;
  /** Set when the RPC names a model. */
  model: CatalogueModel | undefined;
  deadline: Date;
  signal: AbortSignal;
  startedAt: number;
  usage: {
    promptTokens: number;
    generatedTokens: number;
    /** Generation: of the prompt tokens, those the runner's prefix cache held. */
    cachedPromptTokens?: number;
    images: number;
    pixels: number;
  };
  /** Tokens charged to the key's tokens-per-minute budget (Tokenize/CountTokens are not). */
  chargeTokens: boolean;
  /** The status to meter when the call ends without an error (a generation the caller cancelled). */
  outcome?: status;
}

interface ServeOptions {
  task: Task;
  /** The model the call names and the field it came from, when the RPC names one. */
  model?: { name: string; field: string; task?: ModelTask };
  texts?: readonly string[];
  /** Cap on downstream deadlines when the caller sets none (generation has none: streams are long). */
  capDeadline: boolean;
}

const usageOf = (u: RequestContext['usage']): Usage => ({
  promptTokens: u.promptTokens,
  generatedTokens: u.generatedTokens,
  totalTokens: u.promptTokens + u.generatedTokens,
  cachedPromptTokens: 0,
});

const sum = (values: number[]) => values.reduce((a, b) => a + b, 0);

/** The use cases; `generate` hands each response message to `write` as it is produced. */
export interface MaasCore {
  classify(request: ClassifyRequest, caller: Caller): Promise<ClassifyResponse>;
  embed(request: EmbedRequest, caller: Caller): Promise<EmbedResponse>;
  generate(
    request: GenerateRequest,
    caller: Caller,
    write: (message: GenerateResponse) => void,
  ): Promise<void>;
  /** Generation from chat messages, rendered into a prompt by the model's chat template. */
  chat(request: ChatRequest, caller: Caller, write: (message: GenerateResponse) => void): Promise<void>;
  tokenize(request: TokenizeRequest, caller: Caller): Promise<TokenizeResponse>;
  countTokens(request: CountTokensRequest, caller: Caller): Promise<CountTokensResponse>;
  listModels(caller: Caller): Promise<ListModelsResponse>;
  getModel(request: GetModelRequest, caller: Caller): Promise<GetModelResponse>;
  classifyImage(request: ClassifyImageRequest, caller: Caller): Promise<ClassifyImageResponse>;
  detectObjects(request: DetectObjectsRequest, caller: Caller): Promise<DetectObjectsResponse>;
  readText(request: ReadTextRequest, caller: Caller): Promise<ReadTextResponse>;
}

export function createMaasCore(deps: MaasDeps): MaasCore {
  const {
    settings,
    auth,
    quotas,
    meter,
    catalogue,
    downstream,
    batchers,
    generationAdmission,
    inFlight,
    logger,
  } = deps;

  const resolveModel = (principal: Principal, name: string, field: string, task?: ModelTask) => {
    if (!name) throw invalidArgument(field, 'is required');
    // Checked first, so an oversized name is never echoed into an error message or the audit log.
    if (name.length > MAX_MODEL_NAME_CHARACTERS)
      throw invalidArgument(
        field,
        `is ${name.length} characters; a model name has at most ${MAX_MODEL_NAME_CHARACTERS}`,
      );
    // Checked before existence, so a restricted key learns nothing about other models.
    if (!mayUse(principal, name)) {
      throw new StatusError(status.PERMISSION_DENIED, `key '${principal.id}' may not use model '${name}'`);
    }
    const model = catalogue.get(name);
    if (!model) {
      const problem = catalogue.problem(name);
      if (problem) throw failedPrecondition(`${field}: model '${name}' cannot be served: ${problem}`);
      throw notFound(`${field}: model '${name}' not found`);
    }
    if (task && model.task !== task) {
      throw invalidArgument(
        field,
        `model '${name}' is a ${model.task} model; call ${RPC_OF_TASK[model.task]} with it`,
      );
    }
    return model;
  };

  async function serve<T>(
    caller: Caller,
    options: ServeOptions,
    work: (ctx: RequestContext) => Promise<T>,
  ): Promise<T> {
    const startedAt = performance.now();
    const usage: RequestContext['usage'] = { promptTokens: 0, generatedTokens: 0, images: 0, pixels: 0 };
    let ctx: RequestContext | undefined;
    let principal: Principal | undefined;
    let code = status.OK;
    let error: string | undefined;
    let release: (() => void) | undefined;
    try {
      principal = auth.authenticate(caller.authorization);
      // Before anything costly; a stream is admitted per model by the generation admission instead.
      if (options.task !== 'generation') release = inFlight.acquire();
      const model = options.model
        ? resolveModel(principal, options.model.name, options.model.field, options.model.task)
        : undefined;
      quotas.admit(principal);
      ctx = {
        principal,
        model,
        deadline: downstreamDeadline(
          { getDeadline: () => caller.deadline ?? Infinity },
          options.capDeadline ? settings.DOWNSTREAM_TIMEOUT_MS : undefined,
        ),
        signal: caller.signal,
        startedAt,
        usage,
        chargeTokens: true,
      };
      const result = await work(ctx);
      code = ctx.outcome ?? status.OK;
      return result;
    } catch (caught) {
      // Metered as the caller saw it: a call whose deadline passed is DEADLINE_EXCEEDED, not CANCELLED.
      if (caller.signal.aborted) code = deadlinePassed(caller) ? status.DEADLINE_EXCEEDED : status.CANCELLED;
      else code = statusOf(caught);
      error = caught instanceof Error ? caught.message : String(caught);
      throw caught;
    } finally {
      release?.();
      if (principal && ctx?.chargeTokens)
        quotas.charge(principal, usage.promptTokens + usage.generatedTokens);
      meter.record({
        keyId: principal?.id ?? 'unauthenticated',
        // Only catalogue names become label values: callers cannot mint new series.
        model: ctx?.model?.name ?? '',
        task: options.task,
        code,
        promptTokens: usage.promptTokens,
        cachedPromptTokens: usage.cachedPromptTokens ?? 0,
        generatedTokens: usage.generatedTokens,
        images: usage.images,
        pixels: usage.pixels,
        durationMs: performance.now() - startedAt,
        texts: options.texts,
        error,
      });
    }
  }

  /** Ready model names and versions, as the runner says; undefined when the runner cannot be asked. */
  async function readiness(deadline: Date): Promise<Map<string, Set<string>> | undefined> {
    try {
      const index = await unaryCall(
        'model-runner',
        downstream.inference.repositoryIndex.bind(downstream.inference),
        { repositoryName: '', ready: false },
        { deadline: new Date(Math.min(deadline.getTime(), Date.now() + 2_000)) },
      );
      const ready = new Map<string, Set<string>>();
      for (const entry of index.models) {
        if (entry.state !== 'READY') continue;
        if (!ready.has(entry.name)) ready.set(entry.name, new Set());
        ready.get(entry.name)!.add(entry.version);
      }
      return ready;
    } catch (error) {
      logger.warn({ err: error }, 'cannot ask the model-runner for readiness; reporting models not ready');
      return undefined;
    }
  }

  const describe = (model: CatalogueModel, ready: Map<string, Set<string>> | undefined): Model => ({
    name: model.name,
    task: PROTO_TASK[model.task],
    description: model.description,
    versions: model.versions,
    ready: (ready?.get(model.name)?.size ?? 0) > 0,
    limits: {
      ...model.limits,
      ...(model.vision
        ? {
            maxImages: settings.MAX_IMAGES_PER_CALL,
            maxImageBytes: settings.MAX_IMAGE_BYTES,
            maxImagePixels: settings.MAX_IMAGE_PIXELS,
            maxImageSide: settings.MAX_IMAGE_SIDE,
          }
        : { maxImages: 0, maxImageBytes: 0, maxImagePixels: 0, maxImageSide: 0 }),
    },
    labels: model.versions.map((v) => model.labelsByVersion.get(v)).find(Boolean) ?? [],
    dimensions: model.dimensions,
  });

  /** A prompt's generation, streamed to `write`; the caller's request is admitted already. */
  async function generateText(
    ctx: RequestContext,
    caller: Caller,
    request: GenerateRequest,
    write: (message: GenerateResponse) => void,
  ): Promise<void> {
    const model = ctx.model!;
    checkGenerate(request, model, {
      maxStopStrings: settings.MAX_STOP_STRINGS,
      maxStopStringCharacters: settings.MAX_STOP_STRING_CHARACTERS,
    });
    const priority = generationPriority(request, ctx.principal);
    const closeStream = quotas.openStream(ctx.principal);
    let closeAdmission: () => void;
    try {
      // Before tokenizing: a stream over the model's capacity costs nothing but this refusal.
      closeAdmission = generationAdmission.admit(model);
    } catch (refusal) {
      closeStream();
      throw refusal;
    }
    try {
      const outcome = await runGeneration(
        downstream,
        model,
        {
          prompt: request.prompt,
          sampling: request.sampling,
          maxNewTokens: request.maxNewTokens,
          stop: request.stop,
          priority,
          // The runner logs it: the trace id leads from its log lines to this request.
          requestId: trace.getActiveSpan()?.spanContext().traceId ?? '',
        },
        {
          deadline: ctx.deadline,
          signal: ctx.signal,
          startedAt: ctx.startedAt,
          usage: ctx.usage,
          write,
        },
      );
      if (outcome.finishReason === FinishReason.FINISH_REASON_CANCELLED)
        ctx.outcome = deadlinePassed(caller) ? status.DEADLINE_EXCEEDED : status.CANCELLED;
    } finally {
      closeAdmission();
      closeStream();
    }
  }

  const imageLimits = {
    maxBytes: settings.MAX_IMAGE_BYTES,
    maxPixels: settings.MAX_IMAGE_PIXELS,
    maxSide: settings.MAX_IMAGE_SIDE,
  };

  /** The call's images, decoded and metered (an image counts as much as a text: one row of the call). */
  async function imagesOf(ctx: RequestContext, images: Image[]): Promise<RgbImage[]> {
    checkImageCount(images, settings.MAX_IMAGES_PER_CALL);
    const decoded = await decodeImages(images, imageLimits);
    ctx.usage.images = decoded.length;
    ctx.usage.pixels = sum(decoded.map((i) => i.width * i.height));
    return decoded;
  }

  const imageUsage = (ctx: RequestContext) => ({ images: ctx.usage.images, pixels: ctx.usage.pixels });

  /** A model ReadText's detector names: resolved by name, its task checked (the key's scope is the detector's). */
  const componentOf = (detector: CatalogueModel, name: string, field: string, task: ModelTask) => {
    const model = catalogue.get(name);
    if (!model || model.task !== task) {
      throw failedPrecondition(
        `model '${detector.name}' names ${field} '${name}', which is ${model ? `a ${model.task} model` : (catalogue.problem(name) ?? 'not in the repository')}`,
      );
    }
    return model;
  };

  return {
    classifyImage: (request, caller) =>
      serve(
        caller,
        {
          task: 'image_classification',
          model: { name: request.model, field: 'model', task: 'image_classification' },
          capDeadline: true,
        },
        async (ctx) => {
          const images = await imagesOf(ctx, request.images);
          const { modelVersion, results } = await classifyImages(
            downstream.inference,
            ctx.model!,
            images,
            request.topK || 1,
            ctx,
          );
          return { results: results.map((labels) => ({ labels })), modelVersion, usage: imageUsage(ctx) };
        },
      ),

    detectObjects: (request, caller) =>
      serve(
        caller,
        {
          task: 'object_detection',
          model: { name: request.model, field: 'model', task: 'object_detection' },
          capDeadline: true,
        },
        async (ctx) => {
          const parameters = checkDetection(request, ctx.model!.config.objectDetection!);
          const images = await imagesOf(ctx, request.images);
          const { modelVersion, results } = await detectObjects(
            downstream.inference,
            ctx.model!,
            images,
            parameters,
            ctx,
          );
          return {
            results: results.map((boxes) => ({
              detections: boxes.map((b) => ({
                label: b.label,
                index: b.classIndex,
                score: b.score,
                box: { xMin: b.xMin, yMin: b.yMin, xMax: b.xMax, yMax: b.yMax },
              })),
            })),
            modelVersion,
            usage: imageUsage(ctx),
          };
        },
      ),

    readText: (request, caller) =>
      serve(
        caller,
        {
          task: 'read_text',
          model: { name: request.model, field: 'model', task: 'text_detection' },
          capDeadline: true,
        },
        async (ctx) => {
          const detector = ctx.model!;
          const config = detector.config.textDetection!;
          const recognizer = componentOf(detector, config.recognizer, 'recognizer', 'text_recognition');
          const directionClassifier = config.directionClassifier
            ? componentOf(detector, config.directionClassifier, 'directionClassifier', 'image_classification')
            : undefined;
          if (request.classifyDirection && !directionClassifier) {
            throw invalidArgument(
              'classify_direction',
              `model '${detector.name}' names no direction classifier`,
            );
          }
          const images = await imagesOf(ctx, request.images);
          const { modelVersions, results } = await readText(
            downstream.inference,
            { detector, recognizer, directionClassifier },
            images,
            request.classifyDirection ?? directionClassifier !== undefined,
            ctx,
          );
          return {
            results: results.map((rows) => ({
              lines: rows.flat().map((l) => ({
                text: l.text,
                confidence: l.confidence,
                box: l.quad.map(([x, y]) => ({ x, y })),
                rotated180: l.rotated180,
              })),
              text: rows.map((row) => row.map((l) => l.text).join(' ')).join('\n'),
            })),
            modelVersions,
            usage: imageUsage(ctx),
          };
        },
      ),

    classify: (request, caller) =>
      serve(
        caller,
        {
          task: 'classification',
          model: { name: request.model, field: 'model', task: 'classification' },
          texts: request.texts,
          capDeadline: true,
        },
        async (ctx) => {
          const model = ctx.model!;
          checkTexts(request.texts, model.limits);
          const rows = await batchers.get(model).submit({ texts: request.texts }, request.texts.length, ctx);
          ctx.usage.promptTokens = sum(rows.tokenCounts);
          return {
            results: classifyRows(model, rows, request.topK || 1).map((labels) => ({ labels })),
            modelVersion: rows.modelVersion,
            usage: usageOf(ctx.usage),
          };
        },
      ),

    embed: (request, caller) =>
      serve(
        caller,
        {
          task: 'embedding',
          model: { name: request.model, field: 'model', task: 'embedding' },
          texts: request.texts,
          capDeadline: true,
        },
        async (ctx) => {
          const model = ctx.model!;
          checkTexts(request.texts, model.limits);
          const rows = await batchers.get(model).submit({ texts: request.texts }, request.texts.length, ctx);
          ctx.usage.promptTokens = sum(rows.tokenCounts);
          const { vectors, dimensions } = embedRows(model, rows, request.normalize);
          return {
            embeddings: vectors.map((v) => ({ values: Array.from(v) })),
            dimensions,
            modelVersion: rows.modelVersion,
            usage: usageOf(ctx.usage),
          };
        },
      ),

    generate: (request, caller, write) =>
      serve(
        caller,
        {
          task: 'generation',
          model: { name: request.model, field: 'model', task: 'generation' },
          texts: [request.prompt],
          capDeadline: false,
        },
        (ctx) => generateText(ctx, caller, request, write),
      ),

    chat: (request, caller, write) =>
      serve(
        caller,
        {
          task: 'generation',
          model: { name: request.model, field: 'model', task: 'generation' },
          texts: request.messages.map((m) => m.content),
          capDeadline: false,
        },
        async (ctx) => {
          const model = ctx.model!;
          if (!model.chatTemplate) {
            throw invalidArgument(
              'model',
              `model '${model.name}' declares no chat template: send it a prompt instead (Generate, /v1/completions)`,
            );
          }
          if (request.messages.length === 0) throw invalidArgument('messages', 'must not be empty');
          const prompt = model.chatTemplate.render(request.messages);
          // The limits checked on the rendered prompt are the messages' to the caller.
          await renamingField('prompt', 'messages', () =>
            generateText(ctx, caller, { ...request, prompt }, write),
          );
        },
      ),

    tokenize: (request, caller) =>
      serve(
        caller,
        {
          task: 'tokenize',
          model: { name: request.model, field: 'model' },
          texts: request.texts,
          capDeadline: true,
        },
        async (ctx) => {
          const model = ctx.model!;
          ctx.chargeTokens = false;
          checkTexts(request.texts, model.limits, MAX_TOKENIZE_TEXTS);
          const encoded = await unaryCall(
            'tokenizer',
            downstream.tokenizer.encode.bind(downstream.tokenizer),
            {
              tokenizer: model.tokenizer.name,
              texts: request.texts,
              textPairs: [],
              addSpecialTokens: request.addSpecialTokens ?? true,
              truncation: undefined,
              padding: undefined,
              returnOffsets: request.returnOffsets,
              returnTokens: true,
            },
            ctx,
          );
          ctx.usage.promptTokens = Number(encoded.totalTokens);
          return {
            results: encoded.encodings.map((e) => ({
              ids: e.ids,
              tokens: e.tokens,
              offsets: request.returnOffsets ? e.offsets : [],
            })),
          };
        },
      ),

    countTokens: (request, caller) =>
      serve(
        caller,
        {
          task: 'count_tokens',
          model: { name: request.model, field: 'model' },
          texts: request.texts,
          capDeadline: true,
        },
        async (ctx) => {
          const model = ctx.model!;
          ctx.chargeTokens = false;
          checkTexts(request.texts, model.limits, MAX_TOKENIZE_TEXTS);
          // Counted as the model sees the text: with the special tokens its pipeline adds.
          const counted = await unaryCall(
            'tokenizer',
            downstream.tokenizer.countTokens.bind(downstream.tokenizer),
            {
              tokenizer: model.tokenizer.name,
              texts: request.texts,
              addSpecialTokens: model.tokenizer.addSpecialTokens,
            },
            ctx,
          );
          ctx.usage.promptTokens = Number(counted.total);
          return { counts: counted.counts, total: Number(counted.total) };
        },
      ),

    listModels: (caller) =>
      serve(caller, { task: 'models', capDeadline: true }, async (ctx) => {
        const ready = await readiness(ctx.deadline);
        return {
          models: catalogue
            .list()
            .filter((m) => mayUse(ctx.principal, m.name))
            .map((m) => describe(m, ready)),
        };
      }),

    getModel: (request, caller) =>
      serve(
        caller,
        { task: 'models', model: { name: request.name, field: 'name' }, capDeadline: true },
        async (ctx) => ({ model: describe(ctx.model!, await readiness(ctx.deadline)) }),
      ),
  };
}
