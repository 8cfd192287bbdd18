/**
 * Requests that are not what the protocol allows get INVALID_ARGUMENT with a
 * message naming what is wrong, on every service, and never INTERNAL: bytes
 * that are not the method's message, strings that are not UTF-8, 64-bit
 * values beyond a JS number. Seeds keep the whole uint64 range.
 */
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import { Client, credentials, Metadata, type ServiceError, status } from '@grpc/grpc-js';
import { writeFixtureRepository } from '@maas/models';
import { listServicesByReflection } from '@maas/shared/testing';
import { ClassifyRequest, GenerateRequest } from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import { EncodeRequest } from '@maas/shared/gen/maas/tokenizer/v1/tokenizer';
import { generate, startStack, type Stack } from './helpers';

let stack: Stack;
let runnerAddress: string;
let tokenizerAddress: string;

beforeAll(async () => {
  const repo = writeFixtureRepository(undefined, {
    models: ['bert-classifier', 'tiny-gpt2'],
    tokenizers: 'tiny',
  });
  stack = await startStack({ root: repo.root, env: { AUTH_MODE: 'disabled' } });
  runnerAddress = `127.0.0.1:${stack.runner.grpcPort}`;
  tokenizerAddress = `127.0.0.1:${stack.tokenizers[0]!.grpcPort}`;
});
afterAll(async () => {
  await stack?.close();
});

const clients = new Map<string, Client>();
afterAll(() => clients.forEach((c) => c.close()));
function rawClient(address: string): Client {
  let client = clients.get(address);
  if (!client) clients.set(address, (client = new Client(address, credentials.createInsecure())));
  return client;
}

const identity = (bytes: Buffer) => bytes;

/** A unary call with `payload` as the request's bytes; resolves with the status code and message. */
function rawUnary(
  address: string,
  path: string,
  payload: Buffer,
): Promise<{ code: status; details: string }> {
  return new Promise((resolve) => {
    rawClient(address).makeUnaryRequest(
      path,
      identity,
      identity,
      payload,
      new Metadata(),
      { deadline: Date.now() + 5000 },
      (error: ServiceError | null) =>
        resolve(error ? { code: error.code, details: error.details } : { code: status.OK, details: '' }),
    );
  });
}

/** A server-streaming call with raw request bytes; resolves with how it ended. */
function rawStream(
  address: string,
  path: string,
  payload: Buffer,
): Promise<{ code: status; details: string }> {
  return new Promise((resolve) => {
    const call = rawClient(address).makeServerStreamRequest(
      path,
      identity,
      identity,
      payload,
      new Metadata(),
      {
        deadline: Date.now() + 5000,
      },
    );
    call.on('data', () => {});
    call.on('status', (s: { code: status; details: string }) =>
      resolve({ code: s.code, details: s.details }),
    );
    call.on('error', () => {});
  });
}

/** Replaces the bytes of `marker` (ASCII, once) in an encoded message with `bytes` of the same length. */
function spliceBytes(encoded: Uint8Array, marker: string, bytes: number[]): Buffer {
  const buffer = Buffer.from(encoded);
  const at = buffer.indexOf(marker);
  expect(at).toBeGreaterThanOrEqual(0);
  expect(bytes).toHaveLength(marker.length);
  Buffer.from(bytes).copy(buffer, at);
  return buffer;
}

/** "ZZ" becomes 0xC3 0x28: a lead byte whose continuation is missing, not UTF-8. */
const INVALID_UTF8 = [0xc3, 0x28];

const METHODS: [string, string][] = [
  ['orchestrator', '/maas.orchestrator.v1.MaasService/Classify'],
  ['orchestrator', '/maas.orchestrator.v1.MaasService/Embed'],
  ['orchestrator', '/maas.orchestrator.v1.MaasService/Tokenize'],
  ['orchestrator', '/maas.orchestrator.v1.MaasService/CountTokens'],
  ['orchestrator', '/maas.orchestrator.v1.MaasService/GetModel'],
  ['runner', '/inference.GRPCInferenceService/ModelInfer'],
  ['runner', '/inference.GRPCInferenceService/ModelMetadata'],
  ['tokenizer', '/maas.tokenizer.v1.TokenizerService/Encode'],
  ['tokenizer', '/maas.tokenizer.v1.TokenizerService/Decode'],
];
const addressOf = (service: string) =>
  service === 'orchestrator' ? stack.address : service === 'runner' ? runnerAddress : tokenizerAddress;

/** mulberry32: the same payloads on every run. */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('undecodable requests', () => {
  it('random bytes to every method are INVALID_ARGUMENT or served, never INTERNAL', async () => {
    const next = random(42);
    const codes = new Map<status, number>();
    let namesMessage = 0;
    for (const [service, path] of METHODS) {
      for (let i = 0; i < 120; i++) {
        const payload = Buffer.from(Array.from({ length: 1 + Math.floor(next() * 64) }, () => next() * 256));
        const { code, details } = await rawUnary(addressOf(service), path, payload);
        codes.set(code, (codes.get(code) ?? 0) + 1);
        expect([code, details]).not.toEqual([status.INTERNAL, expect.anything()]);
        if (code === status.INVALID_ARGUMENT && /^request is not a valid \w+Request/.test(details))
          namesMessage++;
      }
    }
    expect(codes.get(status.INTERNAL)).toBeUndefined();
    expect(codes.get(status.UNKNOWN)).toBeUndefined();
    // Most random bytes are not a message at all (a wire type or length that does not fit).
    expect(namesMessage).toBeGreaterThan(METHODS.length * 120 * 0.5);
  });

  it('a truncated message names the message it is not', async () => {
    const encoded = ClassifyRequest.encode(
      ClassifyRequest.fromPartial({ model: 'bert-classifier', texts: ['a long enough text'] }),
    ).finish();
    const result = await rawUnary(
      stack.address,
      '/maas.orchestrator.v1.MaasService/Classify',
      Buffer.from(encoded.subarray(0, encoded.length - 3)),
    );
    expect(result.code).toBe(status.INVALID_ARGUMENT);
    expect(result.details).toMatch(/^request is not a valid ClassifyRequest/);
  });

  it('a server-streaming call (Generate) is refused the same way, and the connection serves the next call', async () => {
    const encoded = GenerateRequest.encode(
      GenerateRequest.fromPartial({ model: 'tiny-gpt2', prompt: 'Hello' }),
    ).finish();
    const result = await rawStream(
      stack.address,
      '/maas.orchestrator.v1.MaasService/Generate',
      Buffer.from(encoded.subarray(0, encoded.length - 2)),
    );
    expect(result).toEqual({
      code: status.INVALID_ARGUMENT,
      details: expect.stringMatching(/^request is not a valid GenerateRequest/),
    });
    const after = await generate(stack.client, { model: 'tiny-gpt2', prompt: 'Hello', maxNewTokens: 3 }, null)
      .done;
    expect(after.last.usage?.generatedTokens).toBe(3);
  });
});

describe('strings that are not UTF-8', () => {
  it('are INVALID_ARGUMENT naming the field: texts, prompt, stop, and the tokenizer’s texts', async () => {
    const classify = ClassifyRequest.encode(
      ClassifyRequest.fromPartial({ model: 'bert-classifier', texts: ['fine', 'bad ZZ text'] }),
    ).finish();
    expect(
      await rawUnary(
        stack.address,
        '/maas.orchestrator.v1.MaasService/Classify',
        spliceBytes(classify, 'ZZ', INVALID_UTF8),
      ),
    ).toEqual({ code: status.INVALID_ARGUMENT, details: 'texts[1]: is not valid UTF-8' });

    const prompt = GenerateRequest.encode(
      GenerateRequest.fromPartial({ model: 'tiny-gpt2', prompt: 'Hi ZZ' }),
    ).finish();
    expect(
      await rawStream(
        stack.address,
        '/maas.orchestrator.v1.MaasService/Generate',
        spliceBytes(prompt, 'ZZ', INVALID_UTF8),
      ),
    ).toEqual({ code: status.INVALID_ARGUMENT, details: 'prompt: is not valid UTF-8' });

    const stop = GenerateRequest.encode(
      GenerateRequest.fromPartial({ model: 'tiny-gpt2', prompt: 'Hi', stop: ['ZZ'] }),
    ).finish();
    expect(
      await rawStream(
        stack.address,
        '/maas.orchestrator.v1.MaasService/Generate',
        spliceBytes(stop, 'ZZ', INVALID_UTF8),
      ),
    ).toEqual({ code: status.INVALID_ARGUMENT, details: 'stop[0]: is not valid UTF-8' });

    const encode = EncodeRequest.encode(
      EncodeRequest.fromPartial({ tokenizer: 'bert-classifier', texts: ['x', 'y', 'ZZ'] }),
    ).finish();
    expect(
      await rawUnary(
        tokenizerAddress,
        '/maas.tokenizer.v1.TokenizerService/Encode',
        spliceBytes(encode, 'ZZ', INVALID_UTF8),
      ),
    ).toEqual({ code: status.INVALID_ARGUMENT, details: 'texts[2]: is not valid UTF-8' });
  });

  it('valid non-ASCII text, U+FFFD itself included, is served', async () => {
    const encoded = ClassifyRequest.encode(
      ClassifyRequest.fromPartial({ model: 'bert-classifier', texts: ['café \uFFFD 日本語'] }),
    ).finish();
    const result = await rawUnary(
      stack.address,
      '/maas.orchestrator.v1.MaasService/Classify',
      Buffer.from(encoded),
    );
    expect(result.code).toBe(status.OK);
  });
});

describe('64-bit fields', () => {
  it('a seed of 2^64 − 1 is served and reproducible, and differs from seed 2^64 − 2', async () => {
    const run = (seed: string) =>
      generate(
        stack.client,
        { model: 'tiny-gpt2', prompt: 'Hello', maxNewTokens: 12, sampling: { temperature: 1, seed } },
        null,
      ).done.then((d) => d.text);
    const top = await run('18446744073709551615');
    expect(await run('18446744073709551615')).toBe(top);
    expect(await run('18446744073709551614')).not.toBe(top);
  });

  it('a shape dimension beyond 2^53 is INVALID_ARGUMENT on the runner, not INTERNAL', async () => {
    // ModelInferRequest{model_name: 1, inputs: 5 {name: 1, datatype: 2, shape: 3 (packed int64)}}
    const input = new BinaryWriter().uint32(10).string('input_ids').uint32(18).string('INT64');
    input.uint32(26).fork().int64(1).int64('9007199254740993').join();
    const request = new BinaryWriter().uint32(10).string('bert-classifier').uint32(42).bytes(input.finish());
    const result = await rawUnary(
      runnerAddress,
      '/inference.GRPCInferenceService/ModelInfer',
      Buffer.from(request.finish()),
    );
    expect(result.code).toBe(status.INVALID_ARGUMENT);
    expect(result.details).toMatch(/^request is not a valid ModelInferRequest: .*MAX_SAFE_INTEGER/);
  });
});

describe('reflection', () => {
  it('each server lists only the services it implements', async () => {
    expect((await listServicesByReflection(stack.address)).sort()).toEqual([
      'grpc.health.v1.Health',
      'maas.orchestrator.v1.MaasService',
    ]);
    const runner = await listServicesByReflection(runnerAddress);
    expect(runner).toContain('inference.GRPCInferenceService');
    expect(runner).not.toContain('maas.orchestrator.v1.MaasService');
    expect(runner).not.toContain('maas.tokenizer.v1.TokenizerService');
    const tokenizer = await listServicesByReflection(tokenizerAddress);
    expect(tokenizer.sort()).toEqual(['grpc.health.v1.Health', 'maas.tokenizer.v1.TokenizerService']);
  });
});
