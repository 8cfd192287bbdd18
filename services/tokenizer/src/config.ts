import { baseConfigSchema, defaultRepositoryPath, envBool, envInt, loadConfig } from '@maas/shared';
import { z } from 'zod';

export const tokenizerConfigSchema = baseConfigSchema.extend({
  GRPC_PORT: envInt(50051, 0, 65535),
  METRICS_PORT: envInt(9091, -1, 65535),
  /** The model repository: each model's config names its tokenizer. */
  MODEL_REPOSITORY: z.string().min(1).default(defaultRepositoryPath()),
  /** Extra tokenizers: `<dir>/<name>/tokenizer.json` or `<dir>/<name>.json`. */
  TOKENIZER_DIR: z.string().min(1).optional(),
  /** Longest text (UTF-16 code units, as JavaScript counts) in one request. */
  TOKENIZER_MAX_TEXT_CHARS: envInt(100_000, 1),
  /** Most texts (or id sequences) in one request. */
  TOKENIZER_MAX_BATCH: envInt(1024, 1),
  /** Most characters over all texts (and pairs) of one request. */
  TOKENIZER_MAX_REQUEST_CHARS: envInt(4_000_000, 1),
  /** Most token ids over all sequences of one Decode request, or in one DecodeStream. */
  TOKENIZER_MAX_REQUEST_IDS: envInt(1_000_000, 1),
  /** How often the repository and TOKENIZER_DIR are rescanned; 0 disables the periodic rescan. */
  TOKENIZER_RELOAD_INTERVAL_MS: envInt(30_000, 0),
  /** Also rescan soon after a file changes (inotify through fs.watch). */
  TOKENIZER_WATCH: envBool(true),
});
export type TokenizerConfig = z.infer<typeof tokenizerConfigSchema>;

export const loadTokenizerConfig = (env: NodeJS.ProcessEnv = process.env) =>
  loadConfig(tokenizerConfigSchema, env);
