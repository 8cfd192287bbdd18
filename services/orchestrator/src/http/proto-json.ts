/**
 * JSON routes that mirror `maas.orchestrator.v1` field for field, in the
 * protobuf JSON mapping (what gRPC-JSON gateways speak): `POST /v1/classify
 * {"model":"lang-id","texts":["Bonjour"],"top_k":3}`. Bodies are parsed
 * strictly by @bufbuild/protobuf against the API's own descriptors — a wrong
 * type, an out-of-range number or an unknown field is a 400 naming it — and
 * re-encoded into the messages the use cases take. Responses use the proto
 * field names, as requests may.
 */
import { HttpRequestError, type HttpRoute } from '@maas/shared';
import {
  createFileRegistry,
  type DescMessage,
  fromBinary,
  fromJson,
  type JsonValue,
  toBinary,
  toJson,
} from '@bufbuild/protobuf';
import type { BinaryReader, BinaryWriter } from '@bufbuild/protobuf/wire';
import { FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';
import { readApiDescriptorSet } from '@maas/shared/descriptors';
import {
  ClassifyImageRequest,
  ClassifyImageResponse,
  ClassifyRequest,
  ClassifyResponse,
  CountTokensRequest,
  CountTokensResponse,
  DetectObjectsRequest,
  DetectObjectsResponse,
  EmbedRequest,
  EmbedResponse,
  GenerateRequest,
  GenerateResponse,
  ReadTextRequest,
  ReadTextResponse,
  TokenizeRequest,
  TokenizeResponse,
} from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import type { Caller } from '../core/caller.js';
import type { MaasCore } from '../core/maas-core.js';
import { callerOf } from './caller.js';

/** A ts-proto message's codec, as the generated code exports it. */
interface Codec<T> {
  encode(message: T, writer?: BinaryWriter): BinaryWriter;
  decode(input: BinaryReader | Uint8Array, length?: number): T;
}

const PACKAGE = 'maas.orchestrator.v1';
const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, readApiDescriptorSet()));

function schemaOf(name: string): DescMessage {
  const schema = registry.getMessage(`${PACKAGE}.${name}`);
  if (!schema) throw new Error(`${PACKAGE}.${name} is not in the API descriptors`);
  return schema;
}

/** Where each nested message sits in a request, for naming its fields as a caller wrote them. */
const FIELD_PATH: Record<string, string> = { SamplingParameters: 'sampling.' };

/** @bufbuild/protobuf's JSON errors, as a 400 naming the field. */
function requestError(error: unknown, messageName: string): HttpRequestError {
  const text = (error as Error).message;
  const field = /^cannot decode field [\w.]+\.(\w+)\.(\w+) from JSON: (.*)$/s.exec(text);
  if (field) {
    const [, message, name, problem] = field;
    const param = `${FIELD_PATH[message!] ?? ''}${name}`;
    return new HttpRequestError(400, `${param}: ${problem}`, param);
  }
  const unknown = /key "(.*)" is unknown/s.exec(text);
  if (unknown) {
    const key = unknown[1]!.slice(0, 64);
    return new HttpRequestError(400, `${key}: is not a field of ${messageName}`, key);
  }
  return new HttpRequestError(400, `the body is not a valid ${messageName}: ${text}`);
}

export class ProtoJson<Req, Res> {
  private readonly requestSchema: DescMessage;
  private readonly responseSchema: DescMessage;

  constructor(
    private readonly requestName: string,
    private readonly requestCodec: Codec<Req>,
    responseName: string,
    private readonly responseCodec: Codec<Res>,
  ) {
    this.requestSchema = schemaOf(requestName);
    this.responseSchema = schemaOf(responseName);
  }

  parse(body: unknown): Req {
    if (body === null || typeof body !== 'object' || Array.isArray(body))
      throw new HttpRequestError(400, `the body must be a JSON object (a ${this.requestName})`);
    let message;
    try {
      message = fromJson(this.requestSchema, body as JsonValue);
    } catch (error) {
      throw requestError(error, this.requestName);
    }
    return this.requestCodec.decode(toBinary(this.requestSchema, message));
  }

  /** `implicit`: also fields at their default (0, "", false), as a unary response reads best. */
  format(response: Res, implicit = true): JsonValue {
    const message = fromBinary(this.responseSchema, this.responseCodec.encode(response).finish());
    return toJson(this.responseSchema, message, { useProtoFieldName: true, alwaysEmitImplicit: implicit });
  }
}

const CLASSIFY = new ProtoJson('ClassifyRequest', ClassifyRequest, 'ClassifyResponse', ClassifyResponse);
const EMBED = new ProtoJson('EmbedRequest', EmbedRequest, 'EmbedResponse', EmbedResponse);
const TOKENIZE = new ProtoJson('TokenizeRequest', TokenizeRequest, 'TokenizeResponse', TokenizeResponse);
const COUNT_TOKENS = new ProtoJson(
  'CountTokensRequest',
  CountTokensRequest,
  'CountTokensResponse',
  CountTokensResponse,
);
const CLASSIFY_IMAGE = new ProtoJson(
  'ClassifyImageRequest',
  ClassifyImageRequest,
  'ClassifyImageResponse',
  ClassifyImageResponse,
);
const DETECT_OBJECTS = new ProtoJson(
  'DetectObjectsRequest',
  DetectObjectsRequest,
  'DetectObjectsResponse',
  DetectObjectsResponse,
);
const READ_TEXT = new ProtoJson('ReadTextRequest', ReadTextRequest, 'ReadTextResponse', ReadTextResponse);
const GENERATE = new ProtoJson('GenerateRequest', GenerateRequest, 'GenerateResponse', GenerateResponse);

function unaryRoute<Req, Res>(
  path: string,
  codec: ProtoJson<Req, Res>,
  call: (request: Req, caller: Caller) => Promise<Res>,
): HttpRoute {
  return {
    method: 'POST',
    path,
    async handle(exchange) {
      const response = await call(codec.parse(exchange.body), callerOf(exchange));
      exchange.json(200, codec.format(response));
    },
  };
}

/** The maas API's own routes: every RPC of MaasService but the model listing (see openai.ts). */
export function protoJsonRoutes(core: MaasCore): HttpRoute[] {
  return [
    unaryRoute('/v1/classify', CLASSIFY, core.classify),
    unaryRoute('/v1/embed', EMBED, core.embed),
    unaryRoute('/v1/tokenize', TOKENIZE, core.tokenize),
    unaryRoute('/v1/count_tokens', COUNT_TOKENS, core.countTokens),
    // Images travel as base64 in `data` (the JSON mapping of bytes), or as a pixel `tensor`.
    unaryRoute('/v1/classify_image', CLASSIFY_IMAGE, core.classifyImage),
    unaryRoute('/v1/detect_objects', DETECT_OBJECTS, core.detectObjects),
    unaryRoute('/v1/read_text', READ_TEXT, core.readText),
    {
      method: 'POST',
      path: '/v1/generate',
      // A server stream: each GenerateResponse as one server-sent event, then `[DONE]`.
      async handle(exchange) {
        const request = GENERATE.parse(exchange.body);
        const events = exchange.events();
        await core.generate(request, callerOf(exchange), (message) =>
          events.send(GENERATE.format(message, false)),
        );
        if (!callerOf(exchange).signal.aborted) {
          events.send('[DONE]');
          events.end();
        }
      },
    },
  ];
}
