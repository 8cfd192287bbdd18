import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ServiceError } from '@grpc/grpc-js';
import { createClient, createLogger } from '@maas/shared';
import { TokenizerServiceClient } from '@maas/shared/gen/maas/tokenizer/v1/tokenizer';
import { writeParityTokenizers } from '@maas/models';
import { loadTokenizerConfig, startTokenizer, type RunningTokenizer } from '../src/index';

export interface TestTokenizerService {
  service: RunningTokenizer;
  client: TokenizerServiceClient;
  address: string;
  extraDir: string;
  files: ReturnType<typeof writeParityTokenizers>;
  close(): Promise<void>;
}

/** A real tokenizer service on 127.0.0.1 with the default repository plus GPT-2, BERT and Unigram files. */
export async function startTestTokenizer(env: Record<string, string> = {}): Promise<TestTokenizerService> {
  const extraDir = mkdtempSync(join(tmpdir(), 'maas-tokenizers-'));
  const files = writeParityTokenizers(extraDir);
  const config = loadTokenizerConfig({
    GRPC_PORT: '0',
    METRICS_PORT: '0',
    TOKENIZER_DIR: extraDir,
    TOKENIZER_RELOAD_INTERVAL_MS: '0',
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
    async close() {
      client.close();
      await service.stop();
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
