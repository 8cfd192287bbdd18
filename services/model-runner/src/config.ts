import { baseConfigSchema, defaultRepositoryPath, envBool, envInt, loadConfig } from '@maas/shared';
import { z } from 'zod';

export const runnerConfigSchema = baseConfigSchema.extend({
  GRPC_PORT: envInt(50052, 0, 65535),
  METRICS_PORT: envInt(9092, -1, 65535),
  MODEL_REPOSITORY: z.string().min(1).default(defaultRepositoryPath()),
  /** Comma-separated model names to load at start; all models when unset. */
  MODELS: z
    .string()
    .optional()
    .transform((v) =>
      v
        ? v
            .split(',')
            .map((s) => s.trim())
            .filter(Boolean)
        : undefined,
    ),
  /**
   * Threads per session when a model's config leaves them at 0. One intra-op
   * thread per session suits a 2-core pod: batching, not threads, gives throughput.
   */
  RUNNER_INTRA_OP_THREADS: envInt(1, 1, 256),
  RUNNER_INTER_OP_THREADS: envInt(1, 1, 256),
  /** Run sample inputs through each model before reporting it ready. */
  RUNNER_WARMUP: envBool(true),
});
export type RunnerConfig = z.infer<typeof runnerConfigSchema>;

export const loadRunnerConfig = (env: NodeJS.ProcessEnv = process.env) => loadConfig(runnerConfigSchema, env);
