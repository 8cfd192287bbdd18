import type { ServiceError } from '@grpc/grpc-js';
import { createClient, createLogger } from '@maas/shared';
import { metricValue } from '@maas/shared/testing';
import { GRPCInferenceServiceClient, ModelInferRequest } from '@maas/shared/gen/inference/grpc_service';
import {
  GenerationServiceClient,
  GenerateRequest,
  type GenerateResponse,
} from '@maas/shared/gen/maas/runner/v1/generation';
import {
  loadRunnerConfig,
  startModelRunner,
  type ModelRunnerDeps,
  type RunningModelRunner,
} from '../src/index';

export interface TestRunner {
  runner: RunningModelRunner;
  inference: GRPCInferenceServiceClient;
  generation: GenerationServiceClient;
  address: string;
  close(): Promise<void>;
}

export async function startTestRunner(
  root: string,
  env: Record<string, string> = {},
  options: Pick<ModelRunnerDeps, 'returnBeforeLoaded' | 'createSession'> = {},
): Promise<TestRunner> {
  const runner = await startModelRunner(
    loadRunnerConfig({ GRPC_PORT: '0', METRICS_PORT: '0', MODEL_REPOSITORY: root, ...env }),
    {
      logger: createLogger({ service: 'runner-test', level: 'silent' }),
      ...options,
    },
  );
  const address = `127.0.0.1:${runner.grpcPort}`;
  const inference = createClient(GRPCInferenceServiceClient, address);
  const generation = createClient(GenerationServiceClient, address);
  return {
    runner,
    inference,
    generation,
    address,
    async close() {
      inference.close();
      generation.close();
      await runner.stop();
    },
  };
}

/** Calls one unary method; requests are completed with the message type's defaults first (ts-proto needs them). */
export function call<Res>(
  client: object,
  method: string,
  request: object,
  options: { deadline?: Date } = {},
): Promise<Res> {
  return new Promise((resolve, reject) => {
    (client as Record<string, (...args: unknown[]) => void>)[method]!.call(
      client,
      request,
      options,
      (error: ServiceError | null, value: Res) => (error ? reject(error) : resolve(value)),
    );
  });
}

export const inferRequest = (partial: Parameters<typeof ModelInferRequest.fromPartial>[0]) =>
  ModelInferRequest.fromPartial(partial);

/** Tokenised text stand-in: ids with the lengths given, mask 1, types 0. */
export function encoderInputs(rows: number[][], raw = false) {
  const length = rows[0]!.length;
  const flat = rows.flat();
  const tensors = ['input_ids', 'attention_mask', 'token_type_ids'].map((name) => ({
    name,
    datatype: 'INT64',
    shape: [rows.length, length],
    contents: raw
      ? undefined
      : {
          int64Contents:
            name === 'input_ids' ? flat : name === 'attention_mask' ? flat.map(() => 1) : flat.map(() => 0),
        },
  }));
  const rawContents = raw
    ? ['input_ids', 'attention_mask', 'token_type_ids'].map((name) =>
        Buffer.from(
          BigInt64Array.from(flat, (v) =>
            BigInt(name === 'input_ids' ? v : name === 'attention_mask' ? 1 : 0),
          ).buffer,
        ),
      )
    : [];
  return { inputs: tensors, rawInputContents: rawContents };
}

export function generate(
  client: GenerationServiceClient,
  partial: Parameters<typeof GenerateRequest.fromPartial>[0],
  deadline?: Date,
) {
  const stream = client.generate(GenerateRequest.fromPartial(partial), deadline ? { deadline } : {});
  const done = new Promise<{ tokens: number[]; last: GenerateResponse }>((resolve, reject) => {
    const tokens: number[] = [];
    let last: GenerateResponse | undefined;
    stream.on('data', (m: GenerateResponse) => {
      tokens.push(...m.tokenIds);
      last = m;
    });
    stream.on('error', reject);
    stream.on('end', () => resolve({ tokens, last: last! }));
  });
  return { stream, done };
}

export function failure(promise: Promise<unknown>): Promise<ServiceError> {
  return promise.then(
    () => {
      throw new Error('expected failure');
    },
    (e: ServiceError) => e,
  );
}

/** How much a metric grew between two scrapes. */
export function metricDelta(
  before: string,
  after: string,
  name: string,
  labels: Record<string, string> = {},
): number {
  return metricValue(after, name, labels) - metricValue(before, name, labels);
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
