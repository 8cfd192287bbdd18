/**
 * Creates onnxruntime sessions as a model's config asks: its execution
 * providers in order of preference (WebGPU, bundled with onnxruntime-node;
 * CUDA, whose libraries onnxruntime-node's install script must fetch; CPU),
 * with explicit thread counts; failing loudly when none starts, unless the
 * config allows falling back to CPU.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import * as ort from 'onnxruntime-node';
import type { ExecutionProvider, Logger, ModelConfig } from '@maas/shared';

/** What a model's config may leave to the runner (RUNNER_* settings). */
export interface ThreadDefaults {
  intraOpNumThreads: number;
  interOpNumThreads: number;
  /** For models whose config lists none; undefined: CPU. */
  executionProviders?: ExecutionProvider[];
}

export interface CreatedSession<S = ort.InferenceSession> {
  session: S;
  provider: ExecutionProvider['name'];
  /** The GPU device, for CUDA. */
  deviceId?: number;
  /** Why an earlier provider in the config's list did not start (empty when the first one did). */
  fallbackReason: string;
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

/** No execution provider of the model's config could start, and it may not fall back to CPU. */
export class ProviderUnavailableError extends Error {}

/** A session on `provider`, or why it cannot start there. */
async function tryProvider<S>(
  provider: ExecutionProvider,
  modelPath: string,
  options: ort.InferenceSession.SessionOptions,
  open: SessionOpener<S>,
): Promise<{ session: S } | { problem: string }> {
  if (provider.name === 'cpu')
    return { session: await open(modelPath, { ...options, executionProviders: ['cpu'] }) };
  if (provider.name === 'cuda') {
    const library = cudaProviderPath();
    if (!existsSync(library)) {
      return {
        problem:
          `CUDA execution provider requested (device ${provider.deviceId}) but onnxruntime-node's CUDA runtime is not installed ` +
          `(${library} is missing). Run the GPU image, or install it with \`ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node\` ` +
          `on a machine with CUDA 12 and cuDNN 9.`,
      };
    }
    try {
      return {
        session: await open(modelPath, {
          ...options,
          executionProviders: [{ name: 'cuda', deviceId: provider.deviceId }],
        }),
      };
    } catch (error) {
      return {
        problem:
          `CUDA execution provider requested (device ${provider.deviceId}) but could not start: ${(error as Error).message}. ` +
          `Check the CUDA 12 and cuDNN 9 libraries and the device.`,
      };
    }
  }
  try {
    return { session: await open(modelPath, { ...options, executionProviders: [{ name: 'webgpu' }] }) };
  } catch (error) {
    return {
      problem:
        `WebGPU execution provider requested but could not start: ${(error as Error).message}. It needs a GPU ` +
        `with a Vulkan driver and the Vulkan loader (libvulkan.so.1; in a container, NVIDIA_DRIVER_CAPABILITIES ` +
        `must include graphics).`,
    };
  }
}

/**
 * Opens the model with the first of the config's execution providers that
 * starts; fails loudly with every provider's reason when none does, unless
 * the config allows running on CPU.
 */
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
    // onnxruntime's config keys session.intra_op.allow_spinning / session.inter_op.allow_spinning.
    extra: {
      session: {
        intra_op: { allow_spinning: config.sessionOptions.allowSpinning ? '1' : '0' },
        inter_op: { allow_spinning: config.sessionOptions.allowSpinning ? '1' : '0' },
      },
    },
  };
  const problems: string[] = [];
  const providers = config.executionProviders ?? defaults.executionProviders ?? [{ name: 'cpu' }];
  for (const provider of providers) {
    const outcome = await tryProvider(provider, modelPath, options, open);
    if ('session' in outcome) {
      const fallbackReason = problems.join(' ');
      if (fallbackReason) {
        logger.warn(
          { model: config.name, provider: provider.name, reason: fallbackReason },
          'preferred execution provider unavailable, using the next one in the config',
        );
      }
      return {
        session: outcome.session,
        provider: provider.name,
        deviceId: provider.name === 'cuda' ? provider.deviceId : undefined,
        fallbackReason,
      };
    }
    problems.push(outcome.problem);
  }
  const reason = problems.join(' ');
  if (!config.allowCpuFallback) {
    throw new ProviderUnavailableError(
      `${reason} Or set "allowCpuFallback": true in the model config to run on CPU.`,
    );
  }
  logger.warn(
    { model: config.name, reason },
    'no execution provider of the config started; running on CPU as the config allows',
  );
  const session = await open(modelPath, { ...options, executionProviders: ['cpu'] });
  return { session, provider: 'cpu', fallbackReason: reason };
}
