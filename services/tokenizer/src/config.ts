import { baseConfigSchema, defaultRepositoryPath, envInt, loadConfig } from '@maas/shared';
import { z } from 'zod';

export const tokenizerConfigSchema = baseConfigSchema.extend({
  GRPC_PORT: envInt(50051, 0, 65535),
  METRICS_PORT: envInt(9091, -1, 65535),
  MODEL_REPOSITORY: z.string().min(1).default(defaultRepositoryPath()),
  /** Extra tokenizers: `<dir>/<name>/tokenizer.json` or `<dir>/<name>.json`. */
  TOKENIZER_DIR: z.string().optional(),
  TOKENIZER_MAX_TEXT_CHARS: envInt(100_000, 1),
  TOKENIZER_MAX_BATCH: envInt(1024, 1),
  TOKENIZER_MAX_REQUEST_CHARS: envInt(4_000_000, 1),
  /** How often the repository is rescanned for new or changed tokenizers; 0 disables. */
  TOKENIZER_RELOAD_INTERVAL_MS: envInt(10_000, 0),
});
export type TokenizerConfig = z.infer<typeof tokenizerConfigSchema>;

export const loadTokenizerConfig = (env: NodeJS.ProcessEnv = process.env) =>
  loadConfig(tokenizerConfigSchema, env);
