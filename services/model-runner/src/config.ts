import {
  baseConfigSchema,
  defaultRepositoryPath,
  envBool,
  envInt,
  type ExecutionProvider,
  loadConfig,
} from '@maas/shared';
import { z } from 'zod';

export const runnerConfigSchema = baseConfigSchema.extend({
  GRPC_PORT: envInt(50052, 0, 65535),
  METRICS_PORT: envInt(9092, -1, 65535),
  /** KServe v2 REST (kserve-rest.ts) beside gRPC: -1 (the default) leaves it off, 0 picks a free port. */
  HTTP_HOST: z.string().min(1).default('127.0.0.1'),
  HTTP_PORT: envInt(-1, -1, 65535),
  /** Bytes per REST request body (JSON tensors); larger bodies are refused with 413. */
  HTTP_MAX_BODY_BYTES: envInt(64 * 1024 * 1024, 1024, 1024 * 1024 * 1024),
  /** The model repository (layout: @maas/shared model-repository.ts). */
  MODEL_REPOSITORY: z.string().min(1).default(defaultRepositoryPath()),
  /** Comma-separated model names to load at start; every model of the repository when unset. */
  MODELS: z
    .string()
    .optional()
    .transform((v) => {
      const names = (v ?? '')
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
      return names.length > 0 ? names : undefined;
    }),
  /**
   * onnxruntime threads per session when a model's config leaves them at 0.
   * One intra-op thread per session suits a 2-core pod: batching gives the
   * throughput, and the other core is left to gRPC and the event loop.
   */
  RUNNER_INTRA_OP_THREADS: envInt(1, 1, 256),
  RUNNER_INTER_OP_THREADS: envInt(1, 1, 256),
  /**
   * Execution providers, in order of preference, for models whose config lists none: the node pool's
   * choice (the chart sets it for the GPU pool), e.g. `webgpu,cpu` or `cuda:0,cpu`. Unset: cpu.
   */
  RUNNER_EXECUTION_PROVIDERS: z
    .string()
    .optional()
    .transform((value, ctx) => {
      if (value === undefined || value.trim() === '') return undefined;
      const providers: ExecutionProvider[] = [];
      for (const entry of value.split(',').map((s) => s.trim())) {
        const match = /^(cpu|webgpu|cuda)(?::(\d+))?$/.exec(entry);
        if (!match || (match[2] !== undefined && match[1] !== 'cuda')) {
          ctx.addIssue({
            code: 'custom',
            message: `'${entry}' is not an execution provider: cpu, webgpu, cuda or cuda:<device id>`,
          });
          return z.NEVER;
        }
        providers.push(
          match[1] === 'cuda'
            ? { name: 'cuda', deviceId: Number(match[2] ?? 0) }
            : { name: match[1] as 'cpu' | 'webgpu' },
        );
      }
      return providers;
    }),
  /** Run sample inputs through each model version before reporting it READY. */
  RUNNER_WARMUP: envBool(true),
  /** Poll the repository this often for new, changed and removed models (Triton's poll mode); 0: never. */
  REPOSITORY_POLL_SECONDS: envInt(0, 0, 86_400),
});
export type RunnerConfig = z.infer<typeof runnerConfigSchema>;

export const loadRunnerConfig = (env: NodeJS.ProcessEnv = process.env) => loadConfig(runnerConfigSchema, env);
