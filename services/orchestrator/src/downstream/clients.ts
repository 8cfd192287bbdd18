/**
 * Clients of the tokenizer and the model-runner: one channel per service
 * that round-robins over every replica the target resolves to, keepalive for
 * long generation streams, and grpc-js's own retry of idempotent calls on
 * UNAVAILABLE (each attempt is picked anew, so it lands on another replica).
 * Generation is not in the retry policy: a sequence is never restarted
 * behind the caller's back.
 */
import { type CallOptions, type ClientUnaryCall, Metadata, type ServiceError, status } from '@grpc/grpc-js';
import { createClient, isServiceError, StatusError } from '@maas/shared';
import { GRPCInferenceServiceClient } from '@maas/shared/gen/inference/grpc_service';
import { GenerationServiceClient } from '@maas/shared/gen/maas/runner/v1/generation';
import { TokenizerServiceClient } from '@maas/shared/gen/maas/tokenizer/v1/tokenizer';

export type DownstreamName = 'tokenizer' | 'model-runner';

export interface DownstreamSettings {
  tokenizerTarget: string;
  runnerTarget: string;
  maxAttempts: number;
  keepaliveMs: number;
  maxMessageBytes?: number;
}

export interface Downstream {
  tokenizer: TokenizerServiceClient;
  inference: GRPCInferenceServiceClient;
  generation: GenerationServiceClient;
  close(): void;
}

/** The service config: round_robin, plus a retry policy for the idempotent methods. */
export function serviceConfig(
  maxAttempts: number,
  idempotent: { service: string; method: string }[],
): string {
  return JSON.stringify({
    loadBalancingConfig: [{ round_robin: {} }],
    methodConfig:
      maxAttempts > 1
        ? [
            {
              name: idempotent,
              retryPolicy: {
                maxAttempts,
                initialBackoff: '0.005s',
                maxBackoff: '0.1s',
                backoffMultiplier: 2,
                retryableStatusCodes: ['UNAVAILABLE'],
              },
            },
          ]
        : [],
  });
}

const TOKENIZER_SERVICE = 'maas.tokenizer.v1.TokenizerService';
const INFERENCE_SERVICE = 'inference.GRPCInferenceService';

export function createDownstream(settings: DownstreamSettings): Downstream {
  const options = (idempotent: { service: string; method: string }[]) => ({
    keepaliveTimeMs: settings.keepaliveMs,
    maxMessageBytes: settings.maxMessageBytes,
    channelOptions: {
      'grpc.service_config': serviceConfig(settings.maxAttempts, idempotent),
      // A failed replica is retried soon: a rolling update brings it back in seconds.
      'grpc.initial_reconnect_backoff_ms': 200,
      'grpc.max_reconnect_backoff_ms': 5_000,
    },
  });
  const tokenizer = createClient(
    TokenizerServiceClient,
    settings.tokenizerTarget,
    options(
      ['Encode', 'Decode', 'CountTokens', 'ListTokenizers'].map((method) => ({
        service: TOKENIZER_SERVICE,
        method,
      })),
    ),
  );
  const inference = createClient(
    GRPCInferenceServiceClient,
    settings.runnerTarget,
    options(
      ['ModelInfer', 'ModelReady', 'ModelMetadata', 'RepositoryIndex', 'ServerReady'].map((method) => ({
        service: INFERENCE_SERVICE,
        method,
      })),
    ),
  );
  const generation = createClient(GenerationServiceClient, settings.runnerTarget, options([]));
  return {
    tokenizer,
    inference,
    generation,
    close() {
      tokenizer.close();
      inference.close();
      generation.close();
    },
  };
}

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

/**
 * One unary downstream call as a promise: it runs in the active trace
 * context (the tracing interceptor reads it when the call starts), with the
 * given deadline, and is cancelled when `signal` aborts.
 */
export function unaryCall<Req, Res>(
  service: DownstreamName,
  method: UnaryMethod<Req, Res>,
  request: Req,
  options: { deadline: Date; signal?: AbortSignal },
): Promise<Res> {
  return new Promise<Res>((resolve, reject) => {
    if (options.signal?.aborted) {
      reject(new StatusError(status.CANCELLED, 'cancelled'));
      return;
    }
    const onAbort = () => call.cancel();
    const call = method(request, new Metadata(), { deadline: options.deadline }, (error, response) => {
      options.signal?.removeEventListener('abort', onAbort);
      if (error) reject(downstreamError(service, error));
      else resolve(response);
    });
    options.signal?.addEventListener('abort', onAbort, { once: true });
  });
}

const PASS_METADATA = ['retry-after-ms', 'grpc-status-details-bin'];

/**
 * A downstream failure as the caller should see it: transient conditions
 * keep their code (so clients retry the right things), input problems stay
 * INVALID_ARGUMENT, and nothing leaks more than the downstream's message.
 */
export function downstreamError(service: DownstreamName, error: unknown): unknown {
  if (error instanceof StatusError || !isServiceError(error)) return error;
  const details = error.details || status[error.code] || 'failed';
  switch (error.code) {
    case status.UNAVAILABLE:
      return new StatusError(status.UNAVAILABLE, `${service} unavailable: ${details}`);
    case status.DEADLINE_EXCEEDED:
      return new StatusError(status.DEADLINE_EXCEEDED, `deadline exceeded waiting for the ${service}`);
    case status.CANCELLED:
      return new StatusError(status.CANCELLED, `${service} call cancelled`);
    case status.RESOURCE_EXHAUSTED: {
      const metadata = new Metadata();
      for (const key of PASS_METADATA) {
        const value = error.metadata?.get(key)[0];
        if (value !== undefined) metadata.set(key, value);
      }
      return new StatusError(status.RESOURCE_EXHAUSTED, `${service} is overloaded: ${details}`, metadata);
    }
    case status.INVALID_ARGUMENT:
    case status.OUT_OF_RANGE:
      return new StatusError(status.INVALID_ARGUMENT, `${service}: ${details}`);
    case status.NOT_FOUND:
    case status.FAILED_PRECONDITION:
      return new StatusError(status.FAILED_PRECONDITION, `${service} cannot serve it: ${details}`);
    default:
      return new StatusError(status.INTERNAL, `${service} failed: ${details}`);
  }
}
