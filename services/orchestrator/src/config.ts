import { baseConfigSchema, defaultRepositoryPath, envBool, envInt, loadConfig } from '@maas/shared';
import { z } from 'zod';
import { toGrpcTarget } from './downstream/targets.js';

const target = (defaultAddress: string) =>
  z
    .string()
    .min(1)
    .default(defaultAddress)
    .transform((value, ctx) => {
      try {
        return toGrpcTarget(value);
      } catch (error) {
        ctx.addIssue({ code: 'custom', message: (error as Error).message });
        return z.NEVER;
      }
    });

export const orchestratorConfigSchema = baseConfigSchema
  .extend({
    GRPC_PORT: envInt(50050, 0, 65535),
    METRICS_PORT: envInt(9090, -1, 65535),
    /** The HTTP API (OpenAI-compatible and JSON routes; see README): 0 picks a free port, -1 disables it. */
    HTTP_HOST: z.string().min(1).default('127.0.0.1'),
    HTTP_PORT: envInt(8080, -1, 65535),
    /** Bytes per HTTP request body (JSON); larger bodies are refused with 413. */
    HTTP_MAX_BODY_BYTES: envInt(4 * 1024 * 1024, 1024, 1024 * 1024 * 1024),
    MODEL_REPOSITORY: z.string().min(1).default(defaultRepositoryPath()),
    /**
     * `dns:///tokenizer-headless.ns.svc.cluster.local:50051` (every replica,
     * round_robin), `host:port`, or a comma-separated list of `ip:port`.
     */
    TOKENIZER_ADDRESS: target('127.0.0.1:50051'),
    RUNNER_ADDRESS: target('127.0.0.1:50052'),
    /** `api-keys` (the default) needs API_KEYS_FILE; `disabled` lets every call in, for local development only. */
    AUTH_MODE: z.enum(['api-keys', 'disabled']).default('api-keys'),
    /** JSON or YAML list of keys (see README); a mounted Kubernetes Secret in production. */
    API_KEYS_FILE: z.string().min(1).optional(),
    /** How often the keys file is re-read (a rotated Secret applies without a restart); 0 disables. */
    API_KEYS_RELOAD_MS: envInt(30_000, 0),
    /** Write request texts into the audit log. Off by default: texts are users' data. */
    AUDIT_LOG_TEXT: envBool(false),
    /** How often model configs are rescanned. */
    CATALOGUE_REFRESH_MS: envInt(10_000, 0),
    /** Characters per input text (a model's own limit is in tokens). */
    MAX_INPUT_CHARACTERS: envInt(20_000, 1),
    /**
     * Image calls (ClassifyImage, DetectObjects, ReadText): images per call, bytes of one encoded
     * image, its pixels (width × height) and the longer of its sides. An image beyond any of them is
     * refused with INVALID_ARGUMENT naming it, before it is decoded.
     */
    MAX_IMAGES_PER_CALL: envInt(16, 1, 1024),
    MAX_IMAGE_BYTES: envInt(12 * 1024 * 1024, 1024),
    MAX_IMAGE_PIXELS: envInt(25_000_000, 1),
    MAX_IMAGE_SIDE: envInt(10_000, 1),
    /** Stop strings per Generate call, and characters per stop string. */
    MAX_STOP_STRINGS: envInt(8, 0, 64),
    MAX_STOP_STRING_CHARACTERS: envInt(64, 1, 1024),
    /** `refuse` over-long inputs with INVALID_ARGUMENT naming the text, or `truncate` them to the model's maxLength. */
    INPUT_OVERFLOW: z.enum(['refuse', 'truncate']).default('refuse'),
    /**
     * Coalescing of concurrent Classify/Embed calls for one model into one
     * Encode + one ModelInfer: how long a batch may wait for more requests
     * (0: it leaves as soon as a downstream slot is free), and how many
     * batches per model may be in flight at once (requests arriving meanwhile
     * queue up and leave together).
     */
    BATCH_WINDOW_US: envInt(0, 0, 1_000_000),
    BATCH_MAX_IN_FLIGHT: envInt(2, 1, 1024),
    /**
     * Admission to a model's queue: at most this many texts wait, and a
     * request whose estimated wait (from the measured batch service time)
     * is longer than BATCH_MAX_QUEUE_MS, or would not start before its
     * deadline, is refused at once with RESOURCE_EXHAUSTED and a retry delay.
     */
    BATCH_MAX_QUEUE_ROWS: envInt(2048, 1),
    BATCH_MAX_QUEUE_MS: envInt(250, 1),
    /**
     * Generation streams each model may have open through this orchestrator;
     * the ones beyond are refused at once with RESOURCE_EXHAUSTED and a retry
     * delay. 0: the model's running + queued sequences on one runner
     * (maxConcurrentSequences + maxQueuedSequences in its config); with several
     * runner replicas per orchestrator, set it to their sum.
     */
    GENERATION_MAX_STREAMS_PER_MODEL: envInt(0, 0),
    /**
     * Unary calls (Classify, Embed, Tokenize, CountTokens, models) this
     * orchestrator works on at once; beyond it a call is refused at once with
     * RESOURCE_EXHAUSTED (see core/in-flight-limit.ts). 0: no limit.
     */
    MAX_IN_FLIGHT_REQUESTS: envInt(256, 0),
    /**
     * Event-loop lateness (ms) beyond which unary calls are refused at once; 0 (the default): not
     * checked. Off by default since calls are admitted on their HTTP/2 stream, where a refusal is
     * cheap: a late loop then refused every call for a while, admitted ones included, and cost
     * goodput at twice saturation (bench:overload: median OK/s 0.69–0.86 of saturation with 50 ms).
     */
    MAX_EVENT_LOOP_LAG_MS: envInt(0, 0),
    /** Deadline of downstream unary calls when the caller sets none. */
    DOWNSTREAM_TIMEOUT_MS: envInt(30_000, 1),
    /** Attempts (the first included) of idempotent downstream calls that fail UNAVAILABLE. */
    DOWNSTREAM_MAX_ATTEMPTS: envInt(4, 1, 5),
    /** Client keepalive towards the tokenizer and runner: generation streams can be long and quiet. */
    DOWNSTREAM_KEEPALIVE_MS: envInt(20_000, 1_000),
  })
  .superRefine((config, ctx) => {
    if (config.AUTH_MODE === 'api-keys' && !config.API_KEYS_FILE) {
      ctx.addIssue({
        code: 'custom',
        path: ['API_KEYS_FILE'],
        message:
          'is required: set it to an API keys file, or set AUTH_MODE=disabled to run without authentication (development only)',
      });
    }
  });
export type OrchestratorConfig = z.infer<typeof orchestratorConfigSchema>;

export const loadOrchestratorConfig = (env: NodeJS.ProcessEnv = process.env) =>
  loadConfig(orchestratorConfigSchema, env);
