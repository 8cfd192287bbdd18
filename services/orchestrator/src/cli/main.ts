/**
 * `maas`: a command-line client of the public API.
 *
 *   maas models
 *   maas classify --model lang-id "Bonjour tout le monde"
 *   maas embed --model glove-embed "a sentence"
 *   maas generate --model austen-gpt --max-new-tokens 40 "It is a truth"
 *   maas tokenize --model austen-gpt "Emma Woodhouse"
 *
 * The key comes from --key, then MAAS_API_KEY, then `.maas/dev-key` (written
 * by `npm start`). Errors print the status name and message, never a stack,
 * and exit non-zero.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { type CallOptions, credentials, Metadata, type ServiceError, status } from '@grpc/grpc-js';
import { decodeRetryDelayMs, isServiceError } from '@maas/shared';
import {
  ClassifyRequest,
  CountTokensRequest,
  EmbedRequest,
  finishReasonToJSON,
  GenerateRequest,
  type GenerateResponse,
  GetModelRequest,
  MaasServiceClient,
  type Model,
  taskToJSON,
  TokenizeRequest,
} from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';

const USAGE = `usage: maas <command> [options] [text...]

commands:
  models [name]                 list the models your key may use, or describe one
  classify --model M text...    labels with scores (--top-k N)
  embed --model M text...       one vector per text (--no-normalize, --normalize)
  generate --model M prompt     stream generated text (--max-new-tokens N, --temperature T,
                                --top-k K, --top-p P, --repetition-penalty R, --seed S, --stop STR...);
                                samples by default (--temperature 0.7 --top-p 0.9
                                --repetition-penalty 1.2); --temperature 0 is greedy
  tokenize --model M text...    token ids and strings (--offsets, --no-special-tokens)
  count --model M text...       token counts

options:
  --address HOST:PORT   the orchestrator (default $MAAS_ADDRESS or 127.0.0.1:50050)
  --key KEY             API key (default $MAAS_API_KEY, then .maas/dev-key)
  --timeout MS          deadline of the call (default 30000; none for generate)
  --json                print responses as JSON
  -h, --help            this text

Texts are read from standard input, one per line, when none are given or a text is "-".`;

/** The CLI's sampling when none is given (the API's own default is greedy). */
export const DEFAULT_SAMPLING = { temperature: 0.7, topP: 0.9, repetitionPenalty: 1.2 };

class UsageError extends Error {}

const OPTIONS = {
  address: { type: 'string' },
  key: { type: 'string' },
  model: { type: 'string', short: 'm' },
  timeout: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  'top-k': { type: 'string' },
  normalize: { type: 'boolean' },
  'no-normalize': { type: 'boolean' },
  'max-new-tokens': { type: 'string' },
  temperature: { type: 'string' },
  'top-p': { type: 'string' },
  'repetition-penalty': { type: 'string' },
  seed: { type: 'string' },
  stop: { type: 'string', multiple: true },
  offsets: { type: 'boolean' },
  'no-special-tokens': { type: 'boolean' },
} as const;

type Values = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>['values'];

interface Io {
  out: (text: string) => void;
  err: (text: string) => void;
  stdin: () => Promise<string>;
  env: NodeJS.ProcessEnv;
  cwd: string;
}

const defaultIo: Io = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
  stdin: async () => {
    if (process.stdin.isTTY) return '';
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString('utf8');
  },
  env: process.env,
  cwd: process.cwd(),
};

function number(values: Values, name: keyof Values, integer = false): number | undefined {
  const raw = values[name];
  if (raw === undefined) return undefined;
  const value = Number(raw);
  if (raw === '' || !Number.isFinite(value) || (integer && !Number.isInteger(value))) {
    throw new UsageError(`--${name} must be ${integer ? 'an integer' : 'a number'}, got "${String(raw)}"`);
  }
  return value;
}

/** A uint64 flag as the decimal string the API takes (seeds use the full range). */
function uint64(raw: string, name: string): string {
  if (!/^\d{1,20}$/.test(raw) || BigInt(raw) >= 2n ** 64n) {
    throw new UsageError(`--${name} must be an integer in [0, 2^64 - 1], got "${raw}"`);
  }
  return raw;
}

function apiKey(values: Values, io: Io): string | undefined {
  if (values.key) return values.key;
  if (io.env.MAAS_API_KEY) return io.env.MAAS_API_KEY;
  const devKey = join(io.cwd, '.maas', 'dev-key');
  return existsSync(devKey) ? readFileSync(devKey, 'utf8').trim() : undefined;
}

/** A readable line for a failed call: status name, message, and the retry delay when there is one. */
export function describeError(error: unknown): string {
  if (!isServiceError(error)) return error instanceof Error ? error.message : String(error);
  const name = status[error.code] ?? String(error.code);
  const retry = error.metadata ? decodeRetryDelayMs(error.metadata) : undefined;
  const hint =
    error.code === status.UNAVAILABLE && /No connection established|ECONNREFUSED/.test(error.details)
      ? ' (is the orchestrator running? `npm start` starts it)'
      : error.code === status.UNAUTHENTICATED
        ? ' (pass --key or set MAAS_API_KEY)'
        : '';
  return `${name}: ${error.details}${retry !== undefined ? ` (retry after ${Math.ceil(retry)} ms)` : ''}${hint}`;
}

function unary<Res>(
  client: MaasServiceClient,
  method: 'classify' | 'embed' | 'tokenize' | 'countTokens' | 'listModels' | 'getModel',
  request: object,
  metadata: Metadata,
  options: Partial<CallOptions>,
): Promise<Res> {
  return new Promise((resolve, reject) =>
    (client[method] as (...args: unknown[]) => void).call(
      client,
      request,
      metadata,
      options,
      (error: ServiceError | null, response: Res) => (error ? reject(error) : resolve(response)),
    ),
  );
}

const fixed = (n: number, digits = 4) => n.toFixed(digits);

function describeModel(model: Model): string {
  const limits = model.limits;
  const lines = [
    `${model.name}  ${taskToJSON(model.task).replace('TASK_', '').toLowerCase()}  ${model.ready ? 'ready' : 'NOT READY'}  versions ${model.versions.join(',')}`,
    `  ${model.description}`,
  ];
  if (limits) {
    const parts = [
      `batch ${limits.maxBatchSize}`,
      `input ${limits.maxInputTokens} tokens / ${limits.maxInputCharacters} chars`,
    ];
    if (limits.maxNewTokens) parts.push(`max_new_tokens ${limits.maxNewTokens}`);
    lines.push(`  limits: ${parts.join(', ')}`);
  }
  if (model.dimensions) lines.push(`  dimensions: ${model.dimensions}`);
  if (model.labels.length) {
    const shown = model.labels.slice(0, 12).join(', ');
    lines.push(`  labels (${model.labels.length}): ${shown}${model.labels.length > 12 ? ', …' : ''}`);
  }
  return lines.join('\n');
}

async function texts(positionals: string[], io: Io): Promise<string[]> {
  if (positionals.length > 0 && !positionals.includes('-')) return positionals;
  const lines = (await io.stdin()).split('\n').filter((l) => l.length > 0);
  const result = positionals.flatMap((p) => (p === '-' ? lines : [p]));
  return positionals.length === 0 ? lines : result;
}

export async function main(argv: string[], io: Io = defaultIo): Promise<number> {
  let client: MaasServiceClient | undefined;
  try {
    const { values, positionals } = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true });
    const [command, ...rest] = positionals;
    if (values.help || !command) {
      io.out(`${USAGE}\n`);
      return command || values.help ? 0 : 2;
    }
    const address = values.address ?? io.env.MAAS_ADDRESS ?? '127.0.0.1:50050';
    client = new MaasServiceClient(address, credentials.createInsecure());
    const metadata = new Metadata();
    const key = apiKey(values, io);
    if (key) metadata.set('authorization', `Bearer ${key}`);
    const timeout = number(values, 'timeout', true);
    const deadline = (ms: number | undefined) =>
      ms === undefined ? {} : { deadline: new Date(Date.now() + ms) };
    const options = deadline(timeout ?? 30_000);
    const print = (value: unknown, human: () => string) =>
      io.out(`${values.json ? JSON.stringify(value, null, 2) : human()}\n`);
    const model = () => {
      if (!values.model) throw new UsageError(`${command} needs --model (see \`maas models\`)`);
      return values.model;
    };

    switch (command) {
      case 'models': {
        if (rest[0]) {
          const { model: one } = await unary<{ model: Model }>(
            client,
            'getModel',
            GetModelRequest.fromPartial({ name: rest[0] }),
            metadata,
            options,
          );
          print(one, () => describeModel(one));
        } else {
          const { models } = await unary<{ models: Model[] }>(client, 'listModels', {}, metadata, options);
          print(models, () => models.map(describeModel).join('\n'));
        }
        return 0;
      }
      case 'classify': {
        const request = ClassifyRequest.fromPartial({
          model: model(),
          texts: await texts(rest, io),
          topK: number(values, 'top-k', true) ?? 1,
        });
        const response = await unary<{ results: { labels: { label: string; score: number }[] }[] }>(
          client,
          'classify',
          request,
          metadata,
          options,
        );
        print(response, () =>
          response.results
            .map(
              (r, i) =>
                `${request.texts[i]}\n${r.labels.map((l) => `  ${l.label}\t${fixed(l.score)}`).join('\n')}`,
            )
            .join('\n'),
        );
        return 0;
      }
      case 'embed': {
        const request = EmbedRequest.fromPartial({
          model: model(),
          texts: await texts(rest, io),
          normalize: values['no-normalize'] ? false : values.normalize ? true : undefined,
        });
        const response = await unary<{ embeddings: { values: number[] }[]; dimensions: number }>(
          client,
          'embed',
          request,
          metadata,
          options,
        );
        print(response, () =>
          response.embeddings
            .map((e, i) => `${request.texts[i]}\n  [${e.values.map((v) => fixed(v)).join(', ')}]`)
            .join('\n'),
        );
        return 0;
      }
      case 'tokenize': {
        const request = TokenizeRequest.fromPartial({
          model: model(),
          texts: await texts(rest, io),
          returnOffsets: values.offsets ?? false,
          addSpecialTokens: values['no-special-tokens'] ? false : undefined,
        });
        const response = await unary<{
          results: { ids: number[]; tokens: string[]; offsets: { start: number; end: number }[] }[];
        }>(client, 'tokenize', request, metadata, options);
        print(response, () =>
          response.results
            .map(
              (r) =>
                `${r.ids.length} tokens\n${r.tokens
                  .map(
                    (t, j) =>
                      `  ${r.ids[j]}\t${JSON.stringify(t)}${r.offsets[j] ? `\t${r.offsets[j]!.start}-${r.offsets[j]!.end}` : ''}`,
                  )
                  .join('\n')}`,
            )
            .join('\n'),
        );
        return 0;
      }
      case 'count': {
        const request = CountTokensRequest.fromPartial({ model: model(), texts: await texts(rest, io) });
        const response = await unary<{ counts: number[]; total: number }>(
          client,
          'countTokens',
          request,
          metadata,
          options,
        );
        print(
          response,
          () =>
            `${response.counts.join('\n')}${response.counts.length > 1 ? `\ntotal ${response.total}` : ''}`,
        );
        return 0;
      }
      case 'generate':
        return await generate(client, values, rest, metadata, deadline(timeout), io, model());
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (error) {
    if (error instanceof UsageError || (error as { code?: string }).code?.startsWith?.('ERR_PARSE_ARGS')) {
      io.err(`maas: ${(error as Error).message}\n${USAGE}\n`);
      return 2;
    }
    io.err(`maas: ${describeError(error)}\n`);
    return 1;
  } finally {
    client?.close();
  }
}

async function generate(
  client: MaasServiceClient,
  values: Values,
  positionals: string[],
  metadata: Metadata,
  options: Partial<CallOptions>,
  io: Io,
  model: string,
): Promise<number> {
  const prompt =
    positionals.length > 0 && !positionals.includes('-') ? positionals.join(' ') : await io.stdin();
  const request = GenerateRequest.fromPartial({
    model,
    prompt,
    maxNewTokens: number(values, 'max-new-tokens', true) ?? 0,
    stop: values.stop ?? [],
    // Defaults a reader wants: greedy decoding of a small model soon loops on one phrase.
    sampling: {
      temperature: number(values, 'temperature') ?? DEFAULT_SAMPLING.temperature,
      topK: number(values, 'top-k', true) ?? 0,
      topP: number(values, 'top-p') ?? DEFAULT_SAMPLING.topP,
      repetitionPenalty: number(values, 'repetition-penalty') ?? DEFAULT_SAMPLING.repetitionPenalty,
      seed: values.seed === undefined ? undefined : uint64(values.seed, 'seed'),
    },
  });
  const started = performance.now();
  const stream = client.generate(request, metadata, options);
  const onInterrupt = () => stream.cancel();
  process.once('SIGINT', onInterrupt);
  try {
    const last = await new Promise<GenerateResponse | undefined>((resolve, reject) => {
      let final: GenerateResponse | undefined;
      stream.on('data', (message: GenerateResponse) => {
        if (values.json) io.out(`${JSON.stringify(generateResponseJson(message))}\n`);
        else if (message.text) io.out(message.text);
        if (message.finishReason) final = message;
      });
      stream.on('error', (error: ServiceError) =>
        error.code === status.CANCELLED ? resolve(undefined) : reject(error),
      );
      stream.on('end', () => resolve(final));
    });
    if (!last) {
      io.err('\n[cancelled]\n');
      return 130;
    }
    if (!values.json) {
      const seconds = (performance.now() - started) / 1000;
      const generated = last.usage?.generatedTokens ?? 0;
      io.err(
        `\n[${finishReasonToJSON(last.finishReason).replace('FINISH_REASON_', '').toLowerCase()}: ` +
          `${last.usage?.promptTokens ?? 0} prompt + ${generated} generated tokens, ` +
          `first token ${last.timeToFirstTokenMs.toFixed(1)} ms, ${(generated / seconds).toFixed(1)} tokens/s]\n`,
      );
    }
    return 0;
  } finally {
    process.off('SIGINT', onInterrupt);
  }
}

function generateResponseJson(message: GenerateResponse) {
  return {
    text: message.text,
    ...(message.finishReason
      ? {
          finishReason: finishReasonToJSON(message.finishReason),
          usage: message.usage,
          modelVersion: message.modelVersion,
          timeToFirstTokenMs: message.timeToFirstTokenMs,
        }
      : {}),
  };
}

if (require.main === module) {
  void main(process.argv.slice(2)).then((code) => process.exit(code));
}
