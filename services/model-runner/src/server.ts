/** The model-runner's gRPC surface: KServe v2 inference and maas.runner.v1 generation. */
import { status, type ServerDuplexStream, type ServerWritableStream } from '@grpc/grpc-js';
import {
  failedPrecondition,
  invalidArgument,
  isServiceError,
  serverStream,
  StatusError,
  unary,
} from '@maas/shared';
import {
  type GRPCInferenceServiceServer,
  type ModelInferRequest,
  type ModelInferResponse,
  type ModelStreamInferResponse,
} from '@maas/shared/gen/inference/grpc_service';
import {
  FinishReason,
  type GenerateRequest,
  type GenerateResponse,
  type GenerationServiceServer,
} from '@maas/shared/gen/maas/runner/v1/generation';
import type { Datatype } from '@maas/shared';
import type { FinishReason as EngineFinishReason } from './generation/index.js';
import type { ModelRepository, ModelVersion } from './repository.js';
import {
  checkShape,
  DATATYPES,
  elementCount,
  fromContents,
  fromRaw,
  type InputTensor,
  toContents,
  toRaw,
} from './tensors.js';

const SERVER_NAME = 'maas-model-runner';
const SERVER_VERSION = '0.1.0';

type CancellableCall = { cancelled: boolean; getDeadline(): Date | number };

function cancellation(call: CancellableCall): () => 'cancelled' | 'deadline' | false {
  return () => {
    if (call.cancelled) return 'cancelled';
    const deadline = call.getDeadline();
    const ms = deadline instanceof Date ? deadline.getTime() : deadline;
    return Number.isFinite(ms) && ms <= Date.now() ? 'deadline' : false;
  };
}

/** Validates a ModelInfer request against the model and returns its inputs as typed arrays. */
export function readInputs(mv: ModelVersion, request: ModelInferRequest): InputTensor[] {
  const { config } = mv;
  const raw = request.rawInputContents.length > 0;
  if (raw && request.rawInputContents.length !== request.inputs.length) {
    throw invalidArgument(
      'raw_input_contents',
      `has ${request.rawInputContents.length} entries for ${request.inputs.length} inputs`,
    );
  }
  const seen = new Set<string>();
  let rows: number | undefined;
  const inputs = request.inputs.map((input, i) => {
    const spec = config.inputs.find((s) => s.name === input.name);
    if (!spec) {
      throw invalidArgument(
        `input '${input.name}'`,
        `unknown; model '${mv.name}' takes ${config.inputs.map((s) => s.name).join(', ')}`,
      );
    }
    if (seen.has(input.name)) throw invalidArgument(`input '${input.name}'`, 'given twice');
    seen.add(input.name);
    if (input.datatype !== spec.datatype) {
      throw invalidArgument(
        `input '${input.name}'`,
        `expected datatype ${spec.datatype}, got ${input.datatype || '(none)'}`,
      );
    }
    const shape = input.shape.map(Number);
    checkShape(spec, shape, config.maxBatchSize);
    if (config.maxBatchSize > 0) {
      if (rows !== undefined && shape[0] !== rows) {
        throw invalidArgument(
          `input '${input.name}'`,
          `batch dimension ${shape[0]} differs from the other inputs' ${rows}`,
        );
      }
      rows = shape[0];
    }
    const info = DATATYPES[spec.datatype as Datatype];
    if (!info) throw invalidArgument(`input '${input.name}'`, `datatype ${spec.datatype} is not supported`);
    const count = elementCount(shape);
    const data = raw
      ? fromRaw(input.name, info, request.rawInputContents[i]!, count)
      : fromContents(input.name, spec.datatype, input.contents, count);
    return { name: input.name, datatype: spec.datatype, shape, data };
  });
  for (const spec of config.inputs) {
    if (!seen.has(spec.name) && !spec.optional) throw invalidArgument(`input '${spec.name}'`, 'is required');
  }
  // Ragged inputs of one request must agree on their sequence length.
  const lengths = new Set(
    inputs.filter((i) => config.inputs.find((s) => s.name === i.name)?.ragged).map((i) => i.shape[1]),
  );
  if (lengths.size > 1)
    throw invalidArgument('inputs', `sequence inputs have different lengths: ${[...lengths].join(', ')}`);
  return inputs;
}

async function infer(
  repository: ModelRepository,
  request: ModelInferRequest,
  isCancelled: () => 'cancelled' | 'deadline' | false,
): Promise<ModelInferResponse> {
  if (!request.modelName) throw invalidArgument('model_name', 'is required');
  const mv = repository.resolve(request.modelName, request.modelVersion || undefined);
  if (!mv.batcher)
    throw failedPrecondition(
      `model '${mv.name}' is a generation model: use maas.runner.v1.GenerationService/Generate`,
    );
  const inputs = readInputs(mv, request);
  const known = mv.config.outputs.map((o) => o.name);
  const outputs = request.outputs.length > 0 ? request.outputs.map((o) => o.name) : known;
  for (const name of outputs) {
    if (!known.includes(name))
      throw invalidArgument(`output '${name}'`, `unknown; model '${mv.name}' has ${known.join(', ')}`);
  }
  const results = await mv.batcher.submit({ inputs, outputs, isCancelled });
  const raw =
    request.rawInputContents.length > 0 ||
    request.parameters.binary_data_output?.parameterChoice?.value === true;
  return {
    modelName: mv.name,
    modelVersion: String(mv.version),
    id: request.id,
    parameters: {},
    outputs: results.map((r) => ({
      name: r.name,
      datatype: r.datatype,
      shape: r.shape,
      parameters: {},
      contents: raw ? undefined : { ...emptyContents(), ...toContents(r.datatype, r.data) },
    })),
    rawOutputContents: raw ? results.map((r) => toRaw(r.data as never)) : [],
  };
}

const emptyContents = () => ({
  boolContents: [],
  intContents: [],
  int64Contents: [],
  uintContents: [],
  uint64Contents: [],
  fp32Contents: [],
  fp64Contents: [],
  bytesContents: [],
});

export function createInferenceService(repository: ModelRepository): GRPCInferenceServiceServer {
  return {
    serverLive: unary(async () => ({ live: true })),
    serverReady: unary(async () => ({ ready: repository.isReady() })),
    modelReady: unary(async (request) => {
      try {
        repository.resolve(request.name, request.version || undefined);
        return { ready: true };
      } catch (error) {
        if (
          error instanceof StatusError &&
          error.code === status.NOT_FOUND &&
          !repository.versionsOf(request.name).length
        )
          throw error;
        return { ready: false };
      }
    }),
    serverMetadata: unary(async () => ({
      name: SERVER_NAME,
      version: SERVER_VERSION,
      extensions: ['model_repository', 'binary_tensor_data'],
    })),
    modelMetadata: unary(async (request) => {
      const mv = repository.resolve(request.name, request.version || undefined);
      const batchDim = mv.config.maxBatchSize > 0 ? [-1] : [];
      const tensors = (specs: typeof mv.config.inputs) =>
        specs.map((s) => ({ name: s.name, datatype: s.datatype, shape: [...batchDim, ...s.dims] }));
      return {
        name: mv.name,
        versions: repository
          .versionsOf(mv.name)
          .filter((v) => v.state === 'READY')
          .map((v) => String(v.version)),
        platform: mv.config.platform,
        inputs: tensors(mv.config.inputs),
        outputs: tensors(mv.config.outputs),
      };
    }),
    modelInfer: unary(async (request, call) => infer(repository, request, cancellation(call))),
    modelStreamInfer: (call: ServerDuplexStream<ModelInferRequest, ModelStreamInferResponse>) => {
      let pending = 0;
      let ended = false;
      const finish = () => {
        if (ended && pending === 0) call.end();
      };
      call.on('data', (request: ModelInferRequest) => {
        pending++;
        infer(repository, request, cancellation(call))
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
    },
    repositoryIndex: unary(async (request) => ({
      models: repository
        .index()
        .filter((m) => !request.ready || m.state === 'READY')
        .map((m) => ({ name: m.name, version: m.version, state: m.state, reason: m.reason })),
    })),
    repositoryModelLoad: unary(async (request) => {
      if (!request.modelName) throw invalidArgument('model_name', 'is required');
      await repository.load(request.modelName);
      repository.resolve(request.modelName); // surfaces a load failure as UNAVAILABLE with its reason
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

export function createGenerationService(repository: ModelRepository): GenerationServiceServer {
  return {
    generate: serverStream(
      async (request: GenerateRequest, call: ServerWritableStream<GenerateRequest, GenerateResponse>) => {
        if (!request.modelName) throw invalidArgument('model_name', 'is required');
        const mv = repository.resolve(request.modelName, request.modelVersion || undefined);
        if (!mv.engine)
          throw failedPrecondition(`model '${mv.name}' is not a generation model (task ${mv.config.task})`);
        const g = mv.config.generation!;
        if (request.promptIds.length === 0) throw invalidArgument('prompt_ids', 'must not be empty');
        request.promptIds.forEach((id, i) => {
          if (id >= g.vocabSize)
            throw invalidArgument(
              `prompt_ids[${i}]`,
              `id ${id} is outside the vocabulary (size ${g.vocabSize})`,
            );
        });
        const s = request.sampling;
        if (s?.temperature !== undefined && !(s.temperature >= 0 && s.temperature <= 2))
          throw invalidArgument('sampling.temperature', 'must be in [0, 2]');
        if (s?.topP !== undefined && !(s.topP > 0 && s.topP <= 1))
          throw invalidArgument('sampling.top_p', 'must be in (0, 1]');
        if (s?.repetitionPenalty !== undefined && !(s.repetitionPenalty > 0 && s.repetitionPenalty <= 2)) {
          throw invalidArgument('sampling.repetition_penalty', 'must be in (0, 2]');
        }
        if (s && s.topK > g.vocabSize)
          throw invalidArgument('sampling.top_k', `must be at most the vocabulary size ${g.vocabSize}`);
        const maxNewTokens =
          request.maxNewTokens ||
          Math.min(g.defaultMaxNewTokens, g.maxContextLength - request.promptIds.length);
        const controller = new AbortController();
        const abort = () => controller.abort();
        call.on('cancelled', abort);
        const deadline = call.getDeadline();
        const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
        const timer = Number.isFinite(deadlineMs)
          ? setTimeout(abort, Math.max(0, deadlineMs - Date.now()))
          : undefined;
        let generated = 0;
        try {
          const result = await mv.engine.generate(
            {
              promptIds: request.promptIds,
              maxNewTokens,
              sampling: {
                temperature: s?.temperature,
                topK: s?.topK,
                topP: s?.topP,
                repetitionPenalty: s?.repetitionPenalty,
                seed: s?.seed,
              },
              stopTokenIds: request.stopTokenIds,
              ignoreEos: request.ignoreEos,
              signal: controller.signal,
              requestId: request.requestId,
            },
            (ids) => {
              generated += ids.length;
              if (!call.cancelled)
                call.write({
                  tokenIds: ids,
                  finishReason: 0,
                  promptTokens: 0,
                  generatedTokens: generated,
                  timing: undefined,
                  modelVersion: String(mv.version),
                });
            },
          );
          if (call.cancelled) return;
          if (
            result.finishReason === 'cancelled' &&
            Number.isFinite(deadlineMs) &&
            deadlineMs <= Date.now()
          ) {
            throw new StatusError(
              status.DEADLINE_EXCEEDED,
              `deadline exceeded after ${result.generatedTokens} tokens`,
            );
          }
          call.write({
            tokenIds: [],
            finishReason: FINISH[result.finishReason],
            promptTokens: result.promptTokens,
            generatedTokens: result.generatedTokens,
            timing: {
              queueMs: result.queueMs,
              timeToFirstTokenMs: result.timeToFirstTokenMs,
              totalMs: result.totalMs,
              decodeTokensPerSecond: result.decodeTokensPerSecond,
            },
            modelVersion: String(mv.version),
          });
        } finally {
          if (timer) clearTimeout(timer);
          call.off('cancelled', abort);
        }
      },
    ),
  };
}
