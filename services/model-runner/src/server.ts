/**
 * The model-runner's gRPC surface: KServe v2 `inference.GRPCInferenceService`
 * and `maas.runner.v1.GenerationService`. Requests are validated and mapped
 * here; the repository, the batchers and the generation engines do the work.
 */
import { status, type ServerDuplexStream, type ServerWritableStream } from '@grpc/grpc-js';
import {
  failedPrecondition,
  checkGenerationPriority,
  invalidArgument,
  isServiceError,
  parseUint64Field,
  serverStream,
  StatusError,
  statusOf,
  unary,
} from '@maas/shared';
import type {
  GRPCInferenceServiceServer,
  ModelInferRequest,
  ModelInferResponse,
  ModelMetadataResponse,
  ModelStreamInferResponse,
} from '@maas/shared/gen/inference/grpc_service';
import {
  FinishReason,
  type GenerateRequest,
  type GenerateResponse,
  type GenerateStreamRequest,
  type GenerationServiceServer,
} from '@maas/shared/gen/maas/runner/v1/generation';
import type { CancelReason } from './batcher.js';
import type { FinishReason as EngineFinishReason, GenerationRequest } from './generation/index.js';
import { inferResponse, modelMetadata, parseInferRequest } from './kserve.js';
import type { RunnerMetrics } from './metrics.js';
import type { ModelRepository, ModelVersion } from './repository.js';

export const SERVER_NAME = 'maas-model-runner';
export const SERVER_VERSION = '0.1.0';
/**
 * model_repository: RepositoryIndex/ModelLoad/ModelUnload. binary_tensor_data:
 * raw_input_contents/raw_output_contents and the `binary_data_output` request parameter.
 */
export const SERVER_EXTENSIONS = ['model_repository', 'binary_tensor_data'];

type CancellableCall = { cancelled: boolean; getDeadline(): Date | number };

const deadlineMs = (call: CancellableCall) => {
  const deadline = call.getDeadline();
  return deadline instanceof Date ? deadline.getTime() : deadline;
};

function cancellation(call: CancellableCall): () => CancelReason | false {
  const deadline = deadlineMs(call);
  // grpc-js also marks a call cancelled when its deadline passes: the deadline is the real reason then.
  return () => {
    if (Number.isFinite(deadline) && deadline <= Date.now()) return 'deadline';
    return call.cancelled ? 'cancelled' : false;
  };
}

const FAILURE_REASONS: Partial<Record<status, string>> = {
  [status.INVALID_ARGUMENT]: 'invalid_argument',
  [status.UNAVAILABLE]: 'unavailable',
};

/** What the runner answers, whatever the transport (gRPC here, KServe v2 REST in kserve-rest.ts). */
export interface Inference {
  /** `isCancelled` says why the caller has gone, or false while it waits. */
  infer(request: ModelInferRequest, isCancelled: () => CancelReason | false): Promise<ModelInferResponse>;
  /** Whether a model (version) is ready; throws NOT_FOUND for a model the repository does not know. */
  modelReady(name: string, version: string | undefined): boolean;
  modelMetadata(name: string, version: string | undefined): ModelMetadataResponse;
}

export function createInference(repository: ModelRepository, metrics: RunnerMetrics): Inference {
  async function infer(
    request: ModelInferRequest,
    isCancelled: () => CancelReason | false,
  ): Promise<ModelInferResponse> {
    if (!request.modelName) throw invalidArgument('model_name', 'is required');
    const mv = repository.resolve(request.modelName, request.modelVersion || undefined);
    if (!mv.batcher) {
      throw failedPrecondition(
        `model '${mv.name}' is a generation model: use maas.runner.v1.GenerationService/Generate`,
      );
    }
    const labels = { model: mv.name, version: String(mv.version) };
    try {
      const parsed = parseInferRequest(mv.name, mv.config, request);
      const results = await mv.batcher.submit({
        inputs: parsed.inputs,
        outputs: parsed.outputs,
        isCancelled,
      });
      metrics.requests.inc({ ...labels, result: 'success' });
      return inferResponse(mv.name, mv.version, request, results, parsed.raw);
    } catch (error) {
      metrics.requests.inc({ ...labels, result: 'failure' });
      // The batcher counts its own failures (queue_full, deadline_exceeded, cancelled, execution_error).
      const reason = FAILURE_REASONS[statusOf(error)];
      if (reason) metrics.failures.inc({ ...labels, reason });
      throw error;
    }
  }

  return {
    infer,
    modelReady(name, version) {
      if (!name) throw invalidArgument('name', 'is required');
      try {
        repository.resolve(name, version);
        return true;
      } catch (error) {
        if (!repository.knows(name)) throw error;
        return false;
      }
    },
    modelMetadata(name, version) {
      if (!name) throw invalidArgument('name', 'is required');
      const mv = repository.resolve(name, version);
      return modelMetadata(
        mv.name,
        mv.config,
        repository.readyVersions(mv.name).map((v) => v.version),
      );
    },
  };
}

export function createInferenceService(
  repository: ModelRepository,
  inference: Inference,
): GRPCInferenceServiceServer {
  const { infer } = inference;
  return {
    serverLive: unary(async () => ({ live: true })),
    serverReady: unary(async () => ({ ready: repository.isReady() })),
    modelReady: unary(async (request) => ({
      ready: inference.modelReady(request.name, request.version || undefined),
    })),
    serverMetadata: unary(async () => ({
      name: SERVER_NAME,
      version: SERVER_VERSION,
      extensions: SERVER_EXTENSIONS,
    })),
    modelMetadata: unary(async (request) =>
      inference.modelMetadata(request.name, request.version || undefined),
    ),
    modelInfer: unary(async (request, call) => infer(request, cancellation(call))),
    modelStreamInfer: (call: ServerDuplexStream<ModelInferRequest, ModelStreamInferResponse>) => {
      // Each request is answered on its own as soon as it is done (matched by id); a failure is an
      // error_message on the stream, which stays open.
      let pending = 0;
      let ended = false;
      const isCancelled = cancellation(call);
      const finish = () => {
        if (ended && pending === 0) call.end();
      };
      call.on('data', (request: ModelInferRequest) => {
        pending++;
        infer(request, isCancelled)
          .then(
            (response) => call.write({ errorMessage: '', inferResponse: response }),
            (error: unknown) =>
              call.write({
                errorMessage:
                  error instanceof StatusError || isServiceError(error)
                    ? (error as Error).message
                    : 'internal error',
                inferResponse: {
                  modelName: request.modelName,
                  modelVersion: request.modelVersion,
                  id: request.id,
                  parameters: {},
                  outputs: [],
                  rawOutputContents: [],
                },
              }),
          )
          .finally(() => {
            pending--;
            finish();
          });
      });
      call.on('end', () => {
        ended = true;
        finish();
      });
      call.on('error', () => undefined);
    },
    repositoryIndex: unary(async (request) => ({
      models: repository.index().filter((m) => !request.ready || m.state === 'READY'),
    })),
    repositoryModelLoad: unary(async (request) => {
      if (!request.modelName) throw invalidArgument('model_name', 'is required');
      const outcome = await repository.load(request.modelName);
      if (!outcome.ready)
        throw failedPrecondition(`failed to load model '${request.modelName}': ${outcome.reason}`);
      return {};
    }),
    repositoryModelUnload: unary(async (request) => {
      if (!request.modelName) throw invalidArgument('model_name', 'is required');
      await repository.unload(request.modelName);
      return {};
    }),
  };
}

const FINISH: Record<EngineFinishReason, FinishReason> = {
  length: FinishReason.FINISH_REASON_LENGTH,
  eos: FinishReason.FINISH_REASON_EOS,
  stop: FinishReason.FINISH_REASON_STOP,
  cancelled: FinishReason.FINISH_REASON_CANCELLED,
};

/** Checks a Generate request against the model and resolves its defaults, in the engine's terms. */
function generationRequest(
  mv: ModelVersion,
  request: GenerateRequest,
  signal: AbortSignal,
): GenerationRequest {
  const g = mv.config.generation!;
  if (request.promptIds.length === 0) throw invalidArgument('prompt_ids', 'must not be empty');
  request.promptIds.forEach((id, i) => {
    if (id >= g.vocabSize)
      throw invalidArgument(`prompt_ids[${i}]`, `id ${id} is outside the vocabulary (size ${g.vocabSize})`);
  });
  if (request.promptIds.length >= g.maxContextLength) {
    throw invalidArgument(
      'prompt_ids',
      `has ${request.promptIds.length} tokens; the context holds ${g.maxContextLength}, so at most ${g.maxContextLength - 1} leave room to generate`,
    );
  }
  const s = request.sampling;
  if (s?.temperature !== undefined && !(s.temperature >= 0 && s.temperature <= 2))
    throw invalidArgument('sampling.temperature', `${s.temperature} is outside [0, 2]`);
  if (s?.topP !== undefined && !(s.topP > 0 && s.topP <= 1))
    throw invalidArgument('sampling.top_p', `${s.topP} is outside (0, 1]`);
  if (s?.repetitionPenalty !== undefined && !(s.repetitionPenalty > 0 && s.repetitionPenalty <= 2))
    throw invalidArgument('sampling.repetition_penalty', `${s.repetitionPenalty} is outside (0, 2]`);
  if (s && s.topK > g.vocabSize)
    throw invalidArgument('sampling.top_k', `${s.topK} is over the vocabulary size ${g.vocabSize}`);
  if (request.maxNewTokens > g.maxContextLength)
    throw invalidArgument(
      'max_new_tokens',
      `${request.maxNewTokens} is over the context length ${g.maxContextLength}`,
    );
  request.stopTokenIds.forEach((id, i) => {
    if (id >= g.vocabSize)
      throw invalidArgument(
        `stop_token_ids[${i}]`,
        `id ${id} is outside the vocabulary (size ${g.vocabSize})`,
      );
  });
  const room = g.maxContextLength - request.promptIds.length;
  return {
    promptIds: request.promptIds,
    // 0 means the model's default, shortened to what the context leaves; an explicit value that
    // does not fit is the engine's INVALID_ARGUMENT.
    maxNewTokens: request.maxNewTokens || Math.min(g.defaultMaxNewTokens, room),
    sampling: {
      temperature: s?.temperature,
      topK: s?.topK || undefined,
      topP: s?.topP,
      repetitionPenalty: s?.repetitionPenalty,
      seed: s?.seed === undefined ? undefined : parseUint64Field(s.seed, 'sampling.seed'),
    },
    stopTokenIds: request.stopTokenIds,
    ignoreEos: request.ignoreEos,
    priority: checkGenerationPriority(request.priority),
    signal,
    requestId: request.requestId || undefined,
  };
}

/** Where one sequence's responses go, whichever RPC carries them. */
interface SequenceCall {
  /** The caller has gone (cancelled, deadline, connection): write nothing more. */
  gone(): boolean;
  write(response: GenerateResponse): void;
}

/**
 * Runs one sequence to its end. `signal` stops it (caller cancel, deadline,
 * a GenerateStream `stop`), which frees its cache slot at once.
 */
async function runSequence(
  repository: ModelRepository,
  request: GenerateRequest,
  deadline: number,
  signal: AbortSignal,
  abort: () => void,
  call: SequenceCall,
): Promise<void> {
  if (!request.modelName) throw invalidArgument('model_name', 'is required');
  const mv = repository.resolve(request.modelName, request.modelVersion || undefined);
  if (!mv.engine) {
    throw failedPrecondition(
      `model '${mv.name}' is not a generation model (task ${mv.config.task}): use inference.GRPCInferenceService/ModelInfer`,
    );
  }
  const timer = Number.isFinite(deadline) ? setTimeout(abort, Math.max(0, deadline - Date.now())) : undefined;
  const modelVersion = String(mv.version);
  let generated = 0;
  try {
    const result = await mv.engine.generate(generationRequest(mv, request, signal), (ids) => {
      generated += ids.length;
      if (!call.gone())
        call.write({
          tokenIds: ids,
          finishReason: FinishReason.FINISH_REASON_UNSPECIFIED,
          promptTokens: 0,
          generatedTokens: generated,
          timing: undefined,
          modelVersion,
          cachedPromptTokens: 0,
        });
    });
    if (call.gone()) return;
    if (result.finishReason === 'cancelled' && Number.isFinite(deadline) && deadline <= Date.now()) {
      throw new StatusError(
        status.DEADLINE_EXCEEDED,
        `deadline exceeded after ${result.generatedTokens} generated tokens`,
      );
    }
    call.write({
      tokenIds: [],
      finishReason: FINISH[result.finishReason],
      promptTokens: result.promptTokens,
      cachedPromptTokens: result.cachedPromptTokens,
      generatedTokens: result.generatedTokens,
      timing: {
        queueMs: result.queueMs,
        timeToFirstTokenMs: result.timeToFirstTokenMs,
        totalMs: result.totalMs,
        decodeTokensPerSecond: result.decodeTokensPerSecond,
      },
      modelVersion,
    });
  } finally {
    if (timer) clearTimeout(timer);
  }
}

export function createGenerationService(repository: ModelRepository): GenerationServiceServer {
  return {
    generate: serverStream(
      async (request: GenerateRequest, call: ServerWritableStream<GenerateRequest, GenerateResponse>) => {
        // Client cancel or deadline aborts the sequence, which frees its cache slot at once.
        const controller = new AbortController();
        const abort = () => controller.abort();
        call.on('cancelled', abort);
        try {
          await runSequence(repository, request, deadlineMs(call), controller.signal, abort, {
            gone: () => call.cancelled,
            write: (response) => call.write(response),
          });
        } finally {
          call.off('cancelled', abort);
        }
      },
    ),
    generateStream: async (call: ServerDuplexStream<GenerateStreamRequest, GenerateResponse>) => {
      // Stopped by a `stop` message (no reset), by cancelling the call, or by its deadline.
      const controller = new AbortController();
      const abort = () => controller.abort();
      call.on('cancelled', abort);
      try {
        const request = await new Promise<GenerateRequest>((resolve, reject) => {
          call.once('data', (message: GenerateStreamRequest) => {
            if (message.action?.$case === 'start') resolve(message.action.value);
            else reject(invalidArgument('start', 'the first message must start a sequence'));
          });
          // A client that half-closes without starting gets an answer, not a hung call.
          call.once('end', () =>
            reject(invalidArgument('start', 'the stream ended before a sequence was started')),
          );
        });
        call.on('data', (message: GenerateStreamRequest) => {
          if (message.action?.$case === 'stop') abort();
        });
        await runSequence(repository, request, deadlineMs(call), controller.signal, abort, {
          gone: () => call.cancelled,
          write: (response) => call.write(response),
        });
        if (!call.cancelled) call.end();
      } finally {
        call.off('cancelled', abort);
      }
    },
  };
}
