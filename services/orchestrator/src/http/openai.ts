/**
 * OpenAI-compatible routes under /v1: models, completions, chat completions
 * and embeddings, as the OpenAI SDKs, LangChain or curl call them. Each body
 * is checked here into the use case's request (parameters maas cannot honour
 * are refused by name, never ignored), and the use case's results are shaped
 * as OpenAI's responses and stream chunks.
 */
import {
  type HttpExchange,
  HttpRequestError,
  type HttpRoute,
  MAX_GENERATION_PRIORITY,
  MIN_GENERATION_PRIORITY,
  renamingField,
} from '@maas/shared';
import { randomUUID } from 'node:crypto';
import {
  FinishReason,
  type GenerateResponse,
  type Model,
  type SamplingParameters,
  Task,
} from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import { CALLER_GONE, type Caller } from '../core/caller.js';
import type { MaasCore } from '../core/maas-core.js';
import type { ChatMessage } from '../pipelines/chat-template.js';
import { callerOf } from './caller.js';

/** Prompts per /v1/completions call (each is its own generation stream). */
export const MAX_PROMPTS = 16;
/** Messages per chat. */
export const MAX_MESSAGES = 256;

type Json = Record<string, unknown>;

const bad = (param: string, problem: string) => new HttpRequestError(400, `${param}: ${problem}`, param);

/** A lone surrogate cannot be encoded as UTF-8: it would reach the model as U+FFFD. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function text(value: unknown, param: string): string {
  if (typeof value !== 'string') throw bad(param, `must be a string, got ${typeName(value)}`);
  if (LONE_SURROGATE.test(value)) throw bad(param, 'is not valid Unicode (it holds a lone surrogate)');
  return value;
}

const typeName = (value: unknown) =>
  value === null ? 'null' : Array.isArray(value) ? 'an array' : `a ${typeof value}`;

function objectBody(body: unknown): Json {
  if (body === null || typeof body !== 'object' || Array.isArray(body))
    throw new HttpRequestError(400, 'the body must be a JSON object');
  return body as Json;
}

/** Absent and null are the same to OpenAI's API. */
const given = (body: Json, key: string) => body[key] !== undefined && body[key] !== null;

function optionalNumber(body: Json, key: string): number | undefined {
  if (!given(body, key)) return undefined;
  const value = body[key];
  if (typeof value !== 'number' || !Number.isFinite(value))
    throw bad(key, `must be a number, got ${typeName(value)}`);
  return value;
}

function optionalInteger(body: Json, key: string, min: number, max = Number.MAX_SAFE_INTEGER) {
  const value = optionalNumber(body, key);
  if (value === undefined) return undefined;
  if (!Number.isInteger(value) || value < min || value > max)
    throw bad(key, `must be an integer in [${min}, ${max}], got ${value}`);
  return value;
}

function optionalBoolean(body: Json, key: string): boolean | undefined {
  if (!given(body, key)) return undefined;
  if (typeof body[key] !== 'boolean') throw bad(key, `must be true or false, got ${typeName(body[key])}`);
  return body[key] as boolean;
}

/** A string or a list of strings; a list of token ids (numbers) is refused by name. */
function texts(value: unknown, param: string, max: number): string[] {
  if (typeof value === 'string') return [text(value, param)];
  if (!Array.isArray(value))
    throw bad(param, `must be a string or a list of strings, got ${typeName(value)}`);
  if (value.some((v) => typeof v === 'number' || Array.isArray(v)))
    throw bad(param, 'token-id arrays are not supported: send text');
  if (value.length === 0) throw bad(param, 'must not be empty');
  if (value.length > max) throw bad(param, `${value.length} entries exceed the limit of ${max}`);
  return value.map((v, i) => text(v, `${param}[${i}]`));
}

function requiredModel(body: Json): string {
  if (!given(body, 'model')) throw bad('model', 'is required');
  return text(body.model, 'model');
}

/** OpenAI parameters this server has no equivalent for: refused when they ask for anything. */
function refuseUnsupported(body: Json, chat: boolean): void {
  const n = optionalInteger(body, 'n', 1);
  if (n !== undefined && n !== 1) throw bad('n', 'only 1 choice per prompt is supported');
  const bestOf = optionalInteger(body, 'best_of', 1);
  if (bestOf !== undefined && bestOf !== 1) throw bad('best_of', 'is not supported');
  for (const key of ['frequency_penalty', 'presence_penalty']) {
    const value = optionalNumber(body, key);
    if (value !== undefined && value !== 0)
      throw bad(key, 'is not supported: use repetition_penalty (in (0, 2], 1 = none)');
  }
  if (optionalBoolean(body, 'echo')) throw bad('echo', 'is not supported');
  if (given(body, 'suffix') && body.suffix !== '') throw bad('suffix', 'is not supported');
  if (given(body, 'logit_bias') && Object.keys(body.logit_bias as object).length > 0)
    throw bad('logit_bias', 'is not supported');
  if (chat) {
    if (optionalBoolean(body, 'logprobs')) throw bad('logprobs', 'is not supported');
    for (const key of ['tools', 'functions', 'response_format', 'audio', 'prediction'])
      if (given(body, key)) throw bad(key, 'is not supported');
  } else if (given(body, 'logprobs')) throw bad('logprobs', 'is not supported');
}

interface GenerationParameters {
  sampling: SamplingParameters;
  maxNewTokens: number;
  stop: string[];
  stream: boolean;
  includeUsage: boolean;
  /** vLLM's extension: lower is admitted first; unset, the key's default. */
  priority: number | undefined;
}

function generationParameters(body: Json, maxTokensKey: string): GenerationParameters {
  const seed = optionalInteger(body, 'seed', 0);
  const stop = given(body, 'stop')
    ? typeof body.stop === 'string'
      ? [text(body.stop, 'stop')]
      : Array.isArray(body.stop)
        ? body.stop.map((s, i) => text(s, `stop[${i}]`))
        : (() => {
            throw bad('stop', `must be a string or a list of strings, got ${typeName(body.stop)}`);
          })()
    : [];
  const stream = optionalBoolean(body, 'stream') ?? false;
  let includeUsage = false;
  if (given(body, 'stream_options')) {
    const options = body.stream_options;
    if (typeof options !== 'object' || Array.isArray(options))
      throw bad('stream_options', 'must be an object');
    if (!stream) throw bad('stream_options', 'is only allowed when stream is true');
    includeUsage = optionalBoolean(options as Json, 'include_usage') ?? false;
  }
  return {
    sampling: {
      // OpenAI's default is 1 (sampling), not greedy: a model left to its defaults samples.
      temperature: optionalNumber(body, 'temperature') ?? 1,
      topP: optionalNumber(body, 'top_p'),
      // Beyond OpenAI's parameters, as vLLM takes them.
      topK: optionalInteger(body, 'top_k', 0) ?? 0,
      repetitionPenalty: optionalNumber(body, 'repetition_penalty'),
      seed: seed === undefined ? undefined : String(seed),
    },
    // 0: the model's default.
    maxNewTokens: optionalInteger(body, maxTokensKey, 1) ?? 0,
    stop,
    stream,
    includeUsage,
    priority: optionalInteger(body, 'priority', MIN_GENERATION_PRIORITY, MAX_GENERATION_PRIORITY),
  };
}

/** The use case's field names as OpenAI's requests spell them. */
const generationRename =
  (promptField: string, maxTokensKey: string) =>
  (field: string): string | undefined => {
    if (field === 'max_new_tokens') return maxTokensKey;
    if (field.startsWith('sampling.')) return field.slice('sampling.'.length);
    if (field === 'prompt') return promptField;
    return undefined;
  };

const FINISH_REASON: Partial<Record<FinishReason, string>> = {
  [FinishReason.FINISH_REASON_LENGTH]: 'length',
  [FinishReason.FINISH_REASON_EOS]: 'stop',
  [FinishReason.FINISH_REASON_STOP]: 'stop',
};

interface ChoiceState {
  text: string;
  finishReason: string | null;
  promptTokens: number;
  /** Of the prompt tokens, those the runner's prefix cache held. */
  cachedTokens: number;
  completionTokens: number;
  modelVersion: string;
  /** Chat streams send the role in a choice's first chunk. */
  started: boolean;
}

type Generation = (caller: Caller, write: (message: GenerateResponse) => void) => Promise<void>;

/**
 * Runs one generation per choice, concurrently; with `stream`, each message becomes a chunk as it
 * comes. When one fails, the others are cancelled and the request fails.
 */
async function runChoices(
  exchange: HttpExchange,
  generations: Generation[],
  onMessage: ((index: number, choice: ChoiceState, message: GenerateResponse) => void) | undefined,
): Promise<ChoiceState[]> {
  const choices = generations.map(() => ({
    text: '',
    finishReason: null as string | null,
    promptTokens: 0,
    cachedTokens: 0,
    completionTokens: 0,
    modelVersion: '',
    started: false,
  }));
  const local = new AbortController();
  const caller: Caller = {
    ...callerOf(exchange),
    signal: AbortSignal.any([callerOf(exchange).signal, local.signal]),
  };
  await Promise.all(
    generations.map((generation, index) =>
      generation(caller, (message) => {
        const choice = choices[index]!;
        if (!onMessage) choice.text += message.text;
        if (message.modelVersion) choice.modelVersion = message.modelVersion;
        if (message.finishReason !== FinishReason.FINISH_REASON_UNSPECIFIED)
          choice.finishReason = FINISH_REASON[message.finishReason] ?? null;
        if (message.usage) {
          choice.promptTokens = message.usage.promptTokens;
          choice.cachedTokens = message.usage.cachedPromptTokens;
          choice.completionTokens = message.usage.generatedTokens;
        }
        onMessage?.(index, choice, message);
      }).catch((error: unknown) => {
        local.abort(CALLER_GONE);
        throw error;
      }),
    ),
  );
  return choices;
}

function usageOf(choices: ChoiceState[]) {
  const prompt = choices.reduce((a, c) => a + c.promptTokens, 0);
  const completion = choices.reduce((a, c) => a + c.completionTokens, 0);
  const cached = choices.reduce((a, c) => a + c.cachedTokens, 0);
  return {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: prompt + completion,
    // As OpenAI reports prompt caching: the prompt tokens that were not processed again.
    prompt_tokens_details: { cached_tokens: cached },
  };
}

const fingerprint = (choices: ChoiceState[]) => `maas-v${choices[0]?.modelVersion ?? ''}`;

/** How a route's responses and stream chunks look around the choices (OpenAI's envelope). */
interface ResponseShape {
  id: string;
  created: number;
  model: string;
  /** `object` of the whole response, and of each stream chunk. */
  object: string;
  chunkObject: string;
  /** A stream chunk's choice for one message; undefined when the message carries nothing to send. */
  streamChoice(index: number, choice: ChoiceState, message: GenerateResponse): Json | undefined;
  wholeChoice(choice: ChoiceState, index: number): Json;
}

/** Runs the generations and answers: one response, or (`stream`) chunks, a usage chunk if asked, `[DONE]`. */
async function respond(
  exchange: HttpExchange,
  generations: Generation[],
  parameters: GenerationParameters,
  shape: ResponseShape,
): Promise<void> {
  const envelope = (object: string, choices: Json[], extra: Json) => ({
    id: shape.id,
    object,
    created: shape.created,
    model: shape.model,
    choices,
    ...extra,
  });
  const caller = callerOf(exchange);
  if (parameters.stream) {
    const events = exchange.events();
    const choices = await runChoices(exchange, generations, (index, choice, message) => {
      const entry = shape.streamChoice(index, choice, message);
      if (entry) {
        events.send(
          envelope(shape.chunkObject, [entry], { system_fingerprint: `maas-v${choice.modelVersion}` }),
        );
      }
    });
    if (caller.signal.aborted) return;
    if (parameters.includeUsage) events.send(envelope(shape.chunkObject, [], { usage: usageOf(choices) }));
    events.send('[DONE]');
    events.end();
    return;
  }
  const choices = await runChoices(exchange, generations, undefined);
  if (caller.signal.aborted) return;
  exchange.json(
    200,
    envelope(shape.object, choices.map(shape.wholeChoice), {
      system_fingerprint: fingerprint(choices),
      usage: usageOf(choices),
    }),
  );
}

async function completions(core: MaasCore, exchange: HttpExchange): Promise<void> {
  const body = objectBody(exchange.body);
  const model = requiredModel(body);
  if (!given(body, 'prompt')) throw bad('prompt', 'is required');
  const prompts = texts(body.prompt, 'prompt', MAX_PROMPTS);
  refuseUnsupported(body, false);
  const parameters = generationParameters(body, 'max_tokens');
  const id = `cmpl-${randomUUID()}`;
  const created = Math.floor(Date.now() / 1000);
  const generations = prompts.map((prompt, i): Generation => (caller, write) => {
    const generate = () =>
      core.generate(
        {
          model,
          prompt,
          sampling: parameters.sampling,
          maxNewTokens: parameters.maxNewTokens,
          stop: parameters.stop,
          priority: parameters.priority,
        },
        caller,
        write,
      );
    // One of several prompts is named by its index.
    return prompts.length > 1 ? renamingField('prompt', `prompt[${i}]`, generate) : generate();
  });
  await respond(exchange, generations, parameters, {
    id,
    created,
    model,
    object: 'text_completion',
    chunkObject: 'text_completion',
    streamChoice: (index, choice, message) =>
      message.text || choice.finishReason
        ? {
            index,
            text: message.text,
            logprobs: null,
            finish_reason: message.usage ? choice.finishReason : null,
          }
        : undefined,
    wholeChoice: (c, index) => ({ index, text: c.text, logprobs: null, finish_reason: c.finishReason }),
  });
}

const CHAT_ROLES = new Set(['system', 'developer', 'user', 'assistant', 'tool']);

function chatMessages(value: unknown): ChatMessage[] {
  if (!Array.isArray(value)) throw bad('messages', `must be a list of messages, got ${typeName(value)}`);
  if (value.length === 0) throw bad('messages', 'must not be empty');
  if (value.length > MAX_MESSAGES)
    throw bad('messages', `${value.length} messages exceed the limit of ${MAX_MESSAGES}`);
  return value.map((entry, i) => {
    const field = `messages[${i}]`;
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry))
      throw bad(field, 'must be an object with role and content');
    const message = entry as Json;
    const role = text(message.role, `${field}.role`);
    if (!CHAT_ROLES.has(role))
      throw bad(`${field}.role`, `must be one of ${[...CHAT_ROLES].join(', ')}, got '${role.slice(0, 32)}'`);
    let content: string;
    if (typeof message.content === 'string') content = text(message.content, `${field}.content`);
    else if (Array.isArray(message.content)) {
      // Content parts: text only (this server's models read text).
      content = message.content
        .map((part: unknown, j) => {
          const partField = `${field}.content[${j}]`;
          if (part === null || typeof part !== 'object' || (part as Json).type !== 'text')
            throw bad(partField, 'only parts of type "text" are supported');
          return text((part as Json).text, `${partField}.text`);
        })
        .join('');
    } else if (message.content === null || message.content === undefined) content = '';
    else
      throw bad(`${field}.content`, `must be a string or a list of parts, got ${typeName(message.content)}`);
    return { role, content };
  });
}

async function chatCompletions(core: MaasCore, exchange: HttpExchange): Promise<void> {
  const body = objectBody(exchange.body);
  const model = requiredModel(body);
  if (!given(body, 'messages')) throw bad('messages', 'is required');
  const messages = chatMessages(body.messages);
  refuseUnsupported(body, true);
  // max_completion_tokens replaced max_tokens in OpenAI's chat API; either is taken.
  const maxTokensKey = given(body, 'max_completion_tokens') ? 'max_completion_tokens' : 'max_tokens';
  const parameters = generationParameters(body, maxTokensKey);
  const id = `chatcmpl-${randomUUID()}`;
  const created = Math.floor(Date.now() / 1000);
  const generation: Generation = (caller, write) =>
    core.chat(
      {
        model,
        messages,
        sampling: parameters.sampling,
        maxNewTokens: parameters.maxNewTokens,
        stop: parameters.stop,
        priority: parameters.priority,
      },
      caller,
      write,
    );
  await respond(exchange, [generation], parameters, {
    id,
    created,
    model,
    object: 'chat.completion',
    chunkObject: 'chat.completion.chunk',
    streamChoice(index, choice, message) {
      const finish = message.usage ? choice.finishReason : null;
      if (!message.text && !finish && choice.started) return undefined;
      const delta: Json = choice.started
        ? { content: message.text }
        : { role: 'assistant', content: message.text };
      choice.started = true;
      return { index, delta, logprobs: null, finish_reason: finish };
    },
    wholeChoice: (c, index) => ({
      index,
      message: { role: 'assistant', content: c.text, refusal: null },
      logprobs: null,
      finish_reason: c.finishReason,
    }),
  });
}

/** Inputs per /v1/embeddings call, before the model's own batch limit (which the use case checks). */
const MAX_EMBEDDING_INPUTS = 2048;

async function embeddings(core: MaasCore, exchange: HttpExchange): Promise<void> {
  const body = objectBody(exchange.body);
  const model = requiredModel(body);
  if (!given(body, 'input')) throw bad('input', 'is required');
  const input = texts(body.input, 'input', MAX_EMBEDDING_INPUTS);
  const format = given(body, 'encoding_format') ? text(body.encoding_format, 'encoding_format') : 'float';
  if (format !== 'float' && format !== 'base64')
    throw bad('encoding_format', `must be "float" or "base64", got '${format.slice(0, 32)}'`);
  const dimensions = optionalInteger(body, 'dimensions', 1);
  if (dimensions !== undefined) {
    // Checked before any work: a refused call must not be computed (and metered) first.
    const { model: described } = await core.getModel({ name: model }, callerOf(exchange));
    if (described && described.dimensions !== dimensions)
      throw bad(
        'dimensions',
        `model '${model}' gives ${described.dimensions}-dimensional vectors, not ${dimensions}`,
      );
  }
  const response = await core.embed({ model, texts: input, normalize: undefined }, callerOf(exchange));
  exchange.json(200, {
    object: 'list',
    model,
    data: response.embeddings.map((e, index) => ({
      object: 'embedding',
      index,
      // base64: the little-endian float32 bytes, as OpenAI sends them (and its SDKs decode).
      embedding:
        format === 'base64' ? Buffer.from(new Float32Array(e.values).buffer).toString('base64') : e.values,
    })),
    usage: {
      prompt_tokens: response.usage?.promptTokens ?? 0,
      total_tokens: response.usage?.totalTokens ?? 0,
    },
  });
}

const TASK_NAME: Record<Task, string> = {
  [Task.TASK_UNSPECIFIED]: 'unspecified',
  [Task.TASK_CLASSIFICATION]: 'classification',
  [Task.TASK_EMBEDDING]: 'embedding',
  [Task.TASK_GENERATION]: 'generation',
  [Task.TASK_IMAGE_CLASSIFICATION]: 'image_classification',
  [Task.TASK_OBJECT_DETECTION]: 'object_detection',
  [Task.TASK_TEXT_DETECTION]: 'text_detection',
  [Task.TASK_TEXT_RECOGNITION]: 'text_recognition',
  [Task.UNRECOGNIZED]: 'unspecified',
};

/** OpenAI's model object, with what maas knows besides (task, readiness, limits). */
const openAiModel = (m: Model) => ({
  id: m.name,
  object: 'model',
  created: 0,
  owned_by: 'maas',
  task: TASK_NAME[m.task],
  description: m.description,
  ready: m.ready,
  versions: m.versions,
  ...(m.labels.length > 0 ? { labels: m.labels } : {}),
  ...(m.dimensions > 0 ? { dimensions: m.dimensions } : {}),
  limits: m.limits && {
    max_batch_size: m.limits.maxBatchSize,
    max_input_tokens: m.limits.maxInputTokens,
    max_input_characters: m.limits.maxInputCharacters,
    max_new_tokens: m.limits.maxNewTokens,
  },
});

export function openAiRoutes(core: MaasCore): HttpRoute[] {
  return [
    {
      method: 'GET',
      path: '/v1/models',
      async handle(exchange) {
        const { models } = await core.listModels(callerOf(exchange));
        exchange.json(200, { object: 'list', data: models.map(openAiModel) });
      },
    },
    {
      method: 'GET',
      path: '/v1/models/*',
      rename: (field) => (field === 'name' ? 'model' : undefined),
      async handle(exchange) {
        let name: string;
        try {
          name = decodeURIComponent(exchange.rest);
        } catch {
          throw new HttpRequestError(400, 'the model name in the path is not valid URL encoding', 'model');
        }
        const { model } = await core.getModel({ name }, callerOf(exchange));
        exchange.json(200, openAiModel(model!));
      },
    },
    {
      method: 'POST',
      path: '/v1/completions',
      rename: generationRename('prompt', 'max_tokens'),
      handle: (exchange) => completions(core, exchange),
    },
    {
      method: 'POST',
      path: '/v1/chat/completions',
      rename: generationRename('messages', 'max_tokens'),
      handle: (exchange) => chatCompletions(core, exchange),
    },
    {
      method: 'POST',
      path: '/v1/embeddings',
      rename: (field) => (field === 'texts' ? 'input' : undefined),
      handle: (exchange) => embeddings(core, exchange),
    },
  ];
}
