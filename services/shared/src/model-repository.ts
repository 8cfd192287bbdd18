import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import {
  IMAGE_TASKS,
  imagePreprocessSchema,
  objectDetectionSchema,
  textDetectionSchema,
  textRecognitionSchema,
} from './image-config.js';
import { packageRoot } from './paths.js';

/**
 * The model repository: `<root>/<model>/config.{json,yaml,yml}` and
 * `<root>/<model>/<version>/model.onnx`, side files (tokenizer, labels) in the
 * version folder. Every service reads it through this module, so the runner,
 * the tokenizer and the orchestrator agree on what a model is.
 */

export const DATATYPES = [
  'BOOL',
  'UINT8',
  'INT8',
  'UINT16',
  'INT16',
  'UINT32',
  'INT32',
  'UINT64',
  'INT64',
  'FP16',
  'FP32',
  'FP64',
  'BYTES',
] as const;
export type Datatype = (typeof DATATYPES)[number];

const int = (min = 0) => z.number().int().min(min);

export const tensorSpecSchema = z.object({
  name: z.string().min(1),
  datatype: z.enum(DATATYPES),
  /** Shape without the batch dimension when maxBatchSize > 0; -1 for a variable size. */
  dims: z.array(z.number().int().min(-1)),
  /** A variable-length sequence: requests of different lengths are padded to the longest when batched. */
  ragged: z.boolean().default(false),
  /** Value used for padding a ragged input. */
  padValue: z.number().default(0),
  /** The input may be left out (e.g. token_type_ids); it is then filled with padValue. */
  optional: z.boolean().default(false),
  /**
   * The input holds token ids for an embedding lookup: each must be in [0, vocabSize). Checked
   * before the runtime, whose Gather fails the whole batch on an id beyond the table and
   * silently wraps negative ones.
   */
  vocabSize: z.number().int().min(1).optional(),
});
export type TensorSpec = z.infer<typeof tensorSpecSchema>;

export const executionProviderSchema = z.discriminatedUnion('name', [
  z.object({ name: z.literal('cpu') }),
  z.object({ name: z.literal('cuda'), deviceId: int().default(0) }),
  /** Bundled with onnxruntime-node (Dawn on Vulkan); Dawn picks the adapter, so there is no device id. */
  z.object({ name: z.literal('webgpu') }),
]);
export type ExecutionProvider = z.infer<typeof executionProviderSchema>;

export const modelConfigSchema = z
  .object({
    /** Defaults to the folder name. */
    name: z
      .string()
      .regex(/^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$/)
      .optional(),
    task: z.enum(['classification', 'embedding', 'generation', 'raw', ...IMAGE_TASKS]),
    description: z.string().default(''),
    platform: z.literal('onnxruntime_onnx').default('onnxruntime_onnx'),
    /** 0 disables batching: the inputs' dims are then the full shapes. */
    maxBatchSize: int().max(4096).default(8),
    versionPolicy: z
      .union([
        z.object({ latest: int(1) }).strict(),
        z.object({ specific: z.array(int(1)).min(1) }).strict(),
        z.object({ all: z.literal(true) }).strict(),
      ])
      .default({ latest: 1 }),
    dynamicBatching: z
      .object({
        maxQueueDelayMicroseconds: int().max(10_000_000).default(500),
        maxQueueSize: int(1).default(1024),
      })
      .prefault({}),
    instanceCount: int(1).max(64).default(1),
    /**
     * Where the sessions run. 'worker': each in its own worker thread, so the event loop keeps
     * reading, batching and answering while a batch computes. 'main': on the event loop, for models
     * whose largest batch computes in well under a millisecond, where the hop to a worker and back
     * (~0.4 ms measured on a 2-core VM) costs more than the computation it takes off the loop.
     */
    sessionThread: z.enum(['worker', 'main']).default('worker'),
    /**
     * Tried in order: the first that starts runs the model. When none starts, the model fails to
     * load, or runs on CPU when allowCpuFallback is true (the reason is logged, kept in the
     * version's RepositoryIndex reason and visible in maas_runner_model_provider). Unset: the
     * runner's RUNNER_EXECUTION_PROVIDERS (the node pool's choice; cpu by default).
     */
    executionProviders: z.array(executionProviderSchema).min(1).optional(),
    /** When no listed provider can start, run on CPU instead of failing to load. */
    allowCpuFallback: z.boolean().default(false),
    sessionOptions: z
      .object({
        /** 0: the runner's default (RUNNER_INTRA_OP_THREADS). */
        intraOpNumThreads: int().max(256).default(0),
        /** 0: the runner's default (RUNNER_INTER_OP_THREADS). */
        interOpNumThreads: int().max(256).default(0),
        graphOptimizationLevel: z.enum(['disabled', 'basic', 'extended', 'all']).default('all'),
        enableCpuMemArena: z.boolean().default(true),
        /**
         * Whether onnxruntime's intra-op threads spin, waiting for work, after each run (its own
         * default). Off by default here: the runner's sessions share the node's cores with each
         * other, the runner's event loop and other processes, and a spinning thread takes a core
         * they need — ReadText at 8 calls through the services gave 10% (receipt) and 21% (line)
         * more images/s with it off in an A/B run of bench:vision, c=1 latency no worse. Worth
         * turning on only for a model with dedicated cores.
         */
        allowSpinning: z.boolean().default(false),
      })
      .prefault({}),
    inputs: z.array(tensorSpecSchema).min(1),
    outputs: z.array(tensorSpecSchema).min(1),
    tokenizer: z
      .object({
        /** Name the tokenizer service knows it by; defaults to the model's name. */
        name: z.string().optional(),
        file: z.string().default('tokenizer.json'),
        kind: z.enum(['huggingface', 'fasttext']).default('huggingface'),
        /** Longest input in tokens, special tokens included. */
        maxLength: int(1).default(512),
        addSpecialTokens: z.boolean().default(true),
        paddingSide: z.enum(['right', 'left']).default('right'),
      })
      .optional(),
    /** A file in the version folder (one label per line) or the labels inline. */
    labels: z.union([z.string(), z.array(z.string())]).optional(),
    classification: z
      .object({
        output: z.string().optional(),
        /** What turns the output into scores; 'none' when the model outputs probabilities. */
        activation: z.enum(['softmax', 'sigmoid', 'none']).default('softmax'),
      })
      .optional(),
    embedding: z
      .object({
        output: z.string().optional(),
        /** 'none' when the model outputs one vector per input already. */
        pooling: z.enum(['none', 'mean', 'cls']).default('mean'),
        normalize: z.boolean().default(true),
      })
      .optional(),
    generation: z
      .object({
        numLayers: int(1),
        numHeads: int(1),
        /**
         * Key/value heads, where fewer than numHeads (grouped-query attention: Llama, Mistral,
         * Qwen2 — num_key_value_heads in Hugging Face's config.json). The cache holds these.
         */
        numKeyValueHeads: int(1).optional(),
        headDim: int(1),
        vocabSize: int(1),
        maxContextLength: int(1),
        eosTokenId: int().optional(),
        pastKeyInput: z.string().default('past_key_values.{layer}.key'),
        pastValueInput: z.string().default('past_key_values.{layer}.value'),
        presentKeyOutput: z.string().default('present.{layer}.key'),
        presentValueOutput: z.string().default('present.{layer}.value'),
        defaultMaxNewTokens: int(1).default(64),
        maxConcurrentSequences: int(1).default(16),
        maxCachedTokens: int(1).default(16_384),
        maxQueuedSequences: int().default(64),
        /**
         * Prompt tokens prefilled per scheduler turn while other sequences decode: a longer prompt
         * is prefilled in chunks of this size between decode steps (chunked prefill), so running
         * sequences wait at most one chunk's prefill for their next token.
         */
        prefillChunkTokens: int(1).default(64),
        /**
         * Prefix caching: prompt tokens whose keys/values are kept after their sequence joins the
         * batch, so that a later prompt starting the same way (a system prompt, a conversation's
         * earlier turns, a retry) prefills only the rest. Memory beside maxCachedTokens: this many
         * tokens × the model's cache bytes per token. 0 turns it off.
         */
        prefixCacheTokens: int().default(2048),
        /** Prefixes are matched and stored in whole blocks of this many tokens (vLLM's default: 16). */
        prefixBlockTokens: int(1).default(16),
        /**
         * Waiting sequences are admitted by priority (lower first); each gains a level per this
         * many milliseconds waited, so a low-priority one is admitted within 200 × this of
         * arriving however much higher-priority traffic keeps coming.
         */
        priorityAgingMs: z.number().positive().default(100),
        /**
         * A Jinja chat template (as `chat_template` in Hugging Face's tokenizer_config.json): lets
         * the HTTP API's /v1/chat/completions render messages into a prompt for this model.
         */
        chatTemplate: z.string().min(1).optional(),
        /** What the chat template's `bos_token` and `eos_token` variables hold. */
        bosToken: z.string().default(''),
        eosToken: z.string().default(''),
      })
      .optional(),
    /** Image models: how an image becomes the input tensor. */
    image: imagePreprocessSchema.optional(),
    objectDetection: objectDetectionSchema.optional(),
    textDetection: textDetectionSchema.optional(),
    textRecognition: textRecognitionSchema.optional(),
  })
  .superRefine((config, ctx) => {
    if ((IMAGE_TASKS as readonly string[]).includes(config.task) && !config.image) {
      ctx.addIssue({ code: 'custom', path: ['image'], message: `required for task "${config.task}"` });
    }
    const sections = {
      object_detection: 'objectDetection',
      text_detection: 'textDetection',
      text_recognition: 'textRecognition',
    } as const;
    for (const [task, section] of Object.entries(sections)) {
      if (config.task === task && !config[section]) {
        ctx.addIssue({ code: 'custom', path: [section], message: `required for task "${task}"` });
      }
    }
    if (config.task === 'generation' && !config.generation) {
      ctx.addIssue({ code: 'custom', path: ['generation'], message: 'required for task "generation"' });
    }
    if ((config.task === 'classification' || config.task === 'embedding') && !config.tokenizer) {
      ctx.addIssue({ code: 'custom', path: ['tokenizer'], message: `required for task "${config.task}"` });
    }
    if (config.sessionThread === 'main' && config.task === 'generation') {
      ctx.addIssue({
        code: 'custom',
        path: ['sessionThread'],
        message:
          'a generation model always runs in its own worker (its decode loop would stop the event loop)',
      });
    }
    if (config.sessionThread === 'main' && config.instanceCount > 1) {
      ctx.addIssue({
        code: 'custom',
        path: ['instanceCount'],
        message: 'must be 1 with sessionThread "main": sessions on one event loop cannot run side by side',
      });
    }
  });
export type ModelConfig = z.infer<typeof modelConfigSchema>;

export interface ModelVersionFiles {
  version: number;
  dir: string;
  modelPath: string;
}

export interface RepositoryModel {
  name: string;
  dir: string;
  /** Set when the config is valid. */
  config?: ModelConfig;
  /** Versions the policy selects, newest first. */
  versions: ModelVersionFiles[];
  /** Why the model cannot be served, when it cannot. */
  error?: string;
}

const CONFIG_FILES = ['config.json', 'config.yaml', 'config.yml'];

/** Reads and validates `<dir>/config.*`; throws with a message naming the file and field. */
export function readModelConfig(dir: string, name: string): ModelConfig {
  const file = CONFIG_FILES.map((f) => join(dir, f)).find((f) => existsSync(f));
  if (!file) throw new Error(`${name}: no config.json or config.yaml in ${dir}`);
  let raw: unknown;
  try {
    const text = readFileSync(file, 'utf8');
    raw = file.endsWith('.json') ? JSON.parse(text) : parseYaml(text);
  } catch (error) {
    throw new Error(`${name}: cannot parse ${file}: ${(error as Error).message}`);
  }
  const parsed = modelConfigSchema.safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`);
    throw new Error(`${name}: invalid ${file}: ${issues.join('; ')}`);
  }
  return { ...parsed.data, name: parsed.data.name ?? name };
}

/** The version folders present, selected by the model's version policy, newest first. */
export function selectVersions(dir: string, policy: ModelConfig['versionPolicy']): ModelVersionFiles[] {
  const present = readdirSync(dir)
    .filter((entry) => /^[1-9][0-9]*$/.test(entry) && statSync(join(dir, entry)).isDirectory())
    .map(Number)
    .sort((a, b) => b - a);
  const chosen =
    'latest' in policy
      ? present.slice(0, policy.latest)
      : 'specific' in policy
        ? present.filter((v) => policy.specific.includes(v))
        : present;
  return chosen.map((version) => ({
    version,
    dir: join(dir, String(version)),
    modelPath: join(dir, String(version), 'model.onnx'),
  }));
}

/** One model of the repository; its problems are reported in `error`, never thrown. */
export function scanModel(root: string, name: string): RepositoryModel {
  const dir = join(root, name);
  try {
    if (!existsSync(dir) || !statSync(dir).isDirectory()) {
      return { name, dir, versions: [], error: `${name}: no such model in ${root}` };
    }
    const config = readModelConfig(dir, name);
    const versions = selectVersions(dir, config.versionPolicy);
    if (versions.length === 0) {
      return { name, dir, config, versions, error: `${name}: no version folder matches the version policy` };
    }
    return { name, dir, config, versions };
  } catch (error) {
    return { name, dir, versions: [], error: (error as Error).message };
  }
}

/** Every model folder under the root (folders whose name starts with '.' or '_' are skipped). */
export function scanRepository(root: string): RepositoryModel[] {
  if (!existsSync(root)) throw new Error(`model repository ${root} does not exist`);
  return readdirSync(root)
    .filter((entry) => !entry.startsWith('.') && !entry.startsWith('_'))
    .filter((entry) => statSync(join(root, entry)).isDirectory())
    .sort()
    .map((entry) => scanModel(root, entry));
}

/** The labels of a classification model version: inline, or one per line from a file. */
export function readLabels(config: ModelConfig, versionDir: string): string[] | undefined {
  if (config.labels === undefined) return undefined;
  if (Array.isArray(config.labels)) return config.labels;
  return readFileSync(join(versionDir, config.labels), 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.length > 0);
}

/** The default repository shipped with maas (services/models/repository). */
export function defaultRepositoryPath(): string {
  return join(packageRoot(__dirname), '..', 'models', 'repository');
}
