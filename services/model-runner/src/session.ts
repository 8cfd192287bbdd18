/**
 * Creates onnxruntime sessions as a model's config asks: CPU with explicit
 * thread counts, or CUDA — which fails loudly when onnxruntime-node's CUDA
 * binaries are not installed, unless the config allows falling back to CPU.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import * as ort from 'onnxruntime-node';
import type { Logger, ModelConfig } from '@maas/shared';

export interface ThreadDefaults {
  intraOpNumThreads: number;
  interOpNumThreads: number;
}

export interface CreatedSession<S = ort.InferenceSession> {
  session: S;
  provider: 'cpu' | 'cuda';
}

/** Opens a session: in this thread (onnxruntime's own create) or in a worker (WorkerSession.create). */
export type SessionOpener<S> = (path: string, options: ort.InferenceSession.SessionOptions) => Promise<S>;

const inThisThread: SessionOpener<ort.InferenceSession> = (path, options) =>
  ort.InferenceSession.create(path, options);

/** Where onnxruntime-node keeps its native libraries; the CUDA provider is a separate library there. */
export function cudaProviderPath(): string {
  const binding = join(
    dirname(require.resolve('onnxruntime-node')),
    '..',
    'bin',
    'napi-v6',
    process.platform,
    process.arch,
  );
  return join(binding, 'libonnxruntime_providers_cuda.so');
}

export class CudaUnavailableError extends Error {}

export async function createSession<S = ort.InferenceSession>(
  modelPath: string,
  config: ModelConfig,
  defaults: ThreadDefaults,
  logger: Logger,
  open: SessionOpener<S> = inThisThread as unknown as SessionOpener<S>,
): Promise<CreatedSession<S>> {
  const options: ort.InferenceSession.SessionOptions = {
    intraOpNumThreads: config.sessionOptions.intraOpNumThreads || defaults.intraOpNumThreads,
    interOpNumThreads: config.sessionOptions.interOpNumThreads || defaults.interOpNumThreads,
    graphOptimizationLevel: config.sessionOptions.graphOptimizationLevel,
    enableCpuMemArena: config.sessionOptions.enableCpuMemArena,
    executionMode: 'sequential',
  };
  const cuda = config.executionProviders.find((p) => p.name === 'cuda');
  if (cuda && cuda.name === 'cuda') {
    const library = cudaProviderPath();
    let problem: string | undefined;
    if (!existsSync(library)) {
      problem =
        `CUDA execution provider requested (device ${cuda.deviceId}) but onnxruntime-node's CUDA runtime is not installed ` +
        `(${library} is missing). Run the GPU image, or install it with \`ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node\` ` +
        `on a machine with CUDA 12 and cuDNN 9; or set "allowCpuFallback": true in the model config to run on CPU.`;
    } else {
      try {
        const session = await open(modelPath, {
          ...options,
          executionProviders: [{ name: 'cuda', deviceId: cuda.deviceId }],
        });
        return { session, provider: 'cuda' };
      } catch (error) {
        problem =
          `CUDA execution provider requested (device ${cuda.deviceId}) but could not start: ${(error as Error).message}. ` +
          `Check the CUDA 12 and cuDNN 9 libraries and the device; or set "allowCpuFallback": true to run on CPU.`;
      }
    }
    if (!config.allowCpuFallback) throw new CudaUnavailableError(problem);
    logger.warn(
      { model: config.name, reason: problem },
      'CUDA unavailable, falling back to CPU as the config allows',
    );
  }
  const session = await open(modelPath, { ...options, executionProviders: ['cpu'] });
  return { session, provider: 'cpu' };
}
