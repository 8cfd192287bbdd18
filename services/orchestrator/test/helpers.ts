/** Starts the three real services in-process on loopback (port 0) and talks to the public API as a client does. */
import { Writable } from 'node:stream';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type CallOptions, Metadata, type ServiceError } from '@grpc/grpc-js';
import { createClient, createLogger, type Logger } from '@maas/shared';
import {
  ClassifyImageRequest,
  DetectObjectsRequest,
  ReadTextRequest,
  ClassifyRequest,
  CountTokensRequest,
  EmbedRequest,
  GenerateRequest,
  type GenerateResponse,
  GetModelRequest,
  ListModelsRequest,
  MaasServiceClient,
  TokenizeRequest,
} from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import { loadRunnerConfig, startModelRunner, type RunningModelRunner } from '@maas/model-runner';
import { loadTokenizerConfig, startTokenizer, type RunningTokenizer } from '@maas/tokenizer';
import { makeTempDir } from '@maas/models';
import { loadOrchestratorConfig, startOrchestrator, type RunningOrchestrator } from '../src/index';

export const KEYS = {
  full: 'full-access-key-0123456789',
  hashed: 'hashed-access-key-0123456789',
  classifierOnly: 'classifier-only-key-0123456789',
  rps: 'two-per-second-key-0123456789',
  tokens: 'thirty-tokens-key-0123456789',
  streams: 'one-stream-key-0123456789',
  batch: 'batch-priority-key-0123456789',
};

export const sha256hex = (text: string) =>
  require('node:crypto').createHash('sha256').update(text).digest('hex') as string;

export function writeKeysFile(dir = makeTempDir('maas-keys-')): string {
  const path = join(dir, 'keys.yaml');
  writeFileSync(
    path,
    `# test keys
keys:
  - id: full
    key: ${KEYS.full}
    models: ["*"]
  - id: hashed
    key_sha256: ${sha256hex(KEYS.hashed)}
  - id: classifier-only
    key: ${KEYS.classifierOnly}
    models: [bert-classifier]
  - id: rps
    key: ${KEYS.rps}
    limits: { requests_per_second: 2 }
  - id: tokens
    key: ${KEYS.tokens}
    limits: { tokens_per_minute: 30 }
  - id: streams
    key: ${KEYS.streams}
    limits: { concurrent_streams: 1 }
  - id: batch
    key: ${KEYS.batch}
    priority: 50
`,
  );
  return path;
}

/** A logger whose lines the test can read (the audit log). */
export function capturingLogger(service: string): { logger: Logger; lines: () => Record<string, unknown>[] } {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk, _encoding, callback) {
      lines.push(...String(chunk).split('\n').filter(Boolean));
      callback();
    },
  });
  return {
    logger: createLogger({ service, level: 'info', destination }),
    lines: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

export interface Stack {
  tokenizers: RunningTokenizer[];
  runner: RunningModelRunner;
  orchestrator: RunningOrchestrator;
  client: MaasServiceClient;
  address: string;
  /** The HTTP API's base URL (`http://127.0.0.1:port`). */
  http: string;
  close(): Promise<void>;
}

const silent = (service: string) =>
  createLogger({
    service,
    level: process.env.E2E_LOG_LEVEL ?? 'silent',
    destination: process.stderr as never,
  });

export async function startStack(options: {
  root: string;
  env?: Record<string, string>;
  tokenizerReplicas?: number;
  orchestratorLogger?: Logger;
  /** Puts something (a proxy) between the orchestrator and tokenizer replica `index`; returns the port to use. */
  tokenizerPort?: (port: number, index: number) => Promise<number> | number;
}): Promise<Stack> {
  const common = {
    GRPC_PORT: '0',
    METRICS_PORT: '0',
    MODEL_REPOSITORY: options.root,
    SHUTDOWN_DRAIN_MS: '2000',
  };
  const tokenizers = await Promise.all(
    Array.from({ length: options.tokenizerReplicas ?? 1 }, () =>
      startTokenizer(loadTokenizerConfig({ ...common, TOKENIZER_RELOAD_INTERVAL_MS: '0' }), {
        logger: silent('tokenizer'),
      }),
    ),
  );
  const runner = await startModelRunner(loadRunnerConfig(common), { logger: silent('model-runner') });
  const orchestrator = await startOrchestrator(
    loadOrchestratorConfig({
      ...common,
      TOKENIZER_ADDRESS: (
        await Promise.all(
          tokenizers.map(
            async (t, i) => `127.0.0.1:${await (options.tokenizerPort ?? ((p) => p))(t.grpcPort, i)}`,
          ),
        )
      ).join(','),
      RUNNER_ADDRESS: `127.0.0.1:${runner.grpcPort}`,
      // Here the three services share one event loop, so one's work is another's lateness: lag
      // shedding is tested on its own (in-flight-limit.test.ts) and by bench:overload.
      MAX_EVENT_LOOP_LAG_MS: '0',
      HTTP_PORT: '0',
      ...options.env,
    }),
    { logger: options.orchestratorLogger ?? silent('orchestrator') },
  );
  const address = `127.0.0.1:${orchestrator.grpcPort}`;
  const client = createClient(MaasServiceClient, address);
  return {
    tokenizers,
    runner,
    orchestrator,
    client,
    address,
    http: `http://127.0.0.1:${orchestrator.httpPort}`,
    async close() {
      client.close();
      await orchestrator.stop();
      await Promise.all([runner.stop(), ...tokenizers.map((t) => t.stop())]);
    },
  };
}

/** `null` sends no authorization header at all. */
export function withKey(key: string | null): Metadata {
  const metadata = new Metadata();
  if (key !== null) metadata.set('authorization', `Bearer ${key}`);
  return metadata;
}

const REQUEST_TYPES = {
  classify: ClassifyRequest,
  embed: EmbedRequest,
  tokenize: TokenizeRequest,
  countTokens: CountTokensRequest,
  listModels: ListModelsRequest,
  getModel: GetModelRequest,
  classifyImage: ClassifyImageRequest,
  detectObjects: DetectObjectsRequest,
  readText: ReadTextRequest,
};

/** One unary call of the public API; the request is completed with the message's defaults (ts-proto needs them). */
export function call<Res>(
  client: MaasServiceClient,
  method: keyof typeof REQUEST_TYPES,
  request: object,
  key: string | null = KEYS.full,
  options: Partial<CallOptions> = {},
): Promise<Res> {
  return new Promise((resolve, reject) => {
    (client[method] as (...args: unknown[]) => void).call(
      client,
      (REQUEST_TYPES[method] as { fromPartial(o: object): object }).fromPartial(request),
      withKey(key),
      options,
      (error: ServiceError | null, value: Res) => (error ? reject(error) : resolve(value)),
    );
  });
}

export function generate(
  client: MaasServiceClient,
  partial: Parameters<typeof GenerateRequest.fromPartial>[0],
  key: string | null = KEYS.full,
  options: Partial<CallOptions> = {},
) {
  const stream = client.generate(GenerateRequest.fromPartial(partial), withKey(key), options);
  const messages: GenerateResponse[] = [];
  const done = new Promise<{ text: string; messages: GenerateResponse[]; last: GenerateResponse }>(
    (resolve, reject) => {
      stream.on('data', (m: GenerateResponse) => messages.push(m));
      stream.on('error', reject);
      stream.on('end', () =>
        resolve({
          text: messages.map((m) => m.text).join(''),
          messages,
          last: messages[messages.length - 1]!,
        }),
      );
    },
  );
  return { stream, done, messages };
}

export function failure(promise: Promise<unknown>): Promise<ServiceError> {
  return promise.then(
    () => {
      throw new Error('expected the call to fail');
    },
    (e: ServiceError) => e,
  );
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function eventually(check: () => Promise<boolean> | boolean, timeoutMs = 3000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error('condition not met in time');
    await sleep(20);
  }
}

/**
 * A TCP proxy to a local port, standing for the network path to one replica:
 * `hold()` stops delivering its answers (calls hang in flight, as on a node
 * that froze), `kill()` resets every connection and refuses new ones (the
 * node is gone).
 */
export async function tcpProxy(targetPort: number) {
  const { createServer, connect } = await import('node:net');
  const sockets = new Set<import('node:net').Socket>();
  const upstreams = new Set<import('node:net').Socket>();
  let killed = false;
  let bytesFromTarget = 0;
  const server = createServer((client) => {
    if (killed) return client.destroy();
    const upstream = connect(targetPort, '127.0.0.1');
    sockets.add(client);
    upstreams.add(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    upstream.on('data', (chunk: Buffer) => (bytesFromTarget += chunk.length));
    const drop = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      upstreams.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as import('node:net').AddressInfo).port,
    /** Bytes the target has sent through this proxy so far. */
    bytesFromTarget: () => bytesFromTarget,
    hold() {
      for (const upstream of upstreams) upstream.unpipe();
    },
    kill() {
      killed = true;
      server.close();
      for (const socket of [...sockets, ...upstreams]) socket.resetAndDestroy();
    },
  };
}
