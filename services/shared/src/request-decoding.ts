/**
 * Requests that cannot be decoded are the caller's mistake, so they are
 * answered INVALID_ARGUMENT, never grpc-js's INTERNAL "Error deserializing
 * request": bytes that are not the method's message, 64-bit values out of a
 * JS number's range, and string fields that are not UTF-8 (proto3 requires
 * it; decoding them silently to U+FFFD would serve a text the caller never
 * sent).
 *
 * Each method's deserializer is wrapped to return an `UndecodableRequest`
 * instead of throwing; a server interceptor answers it before any handler
 * sees it, for unary and streaming requests alike.
 */
import { isUtf8 } from 'node:buffer';
import { configureTextEncoding, getTextEncoding } from '@bufbuild/protobuf/wire';
import {
  ServerInterceptingCall,
  type ServerInterceptor,
  ServerListenerBuilder,
  type ServiceDefinition,
  status,
} from '@grpc/grpc-js';

export class UndecodableRequest {
  constructor(readonly message: string) {}
}

/**
 * Non-ASCII strings that were not valid UTF-8, decoded (with U+FFFD) while a
 * request is being deserialized. Decoding is synchronous, so one collector
 * at a time is enough.
 */
let invalidStrings: Set<string> | undefined;

const textEncoding = getTextEncoding();
// The generated decoders read strings through this library's text encoding (ASCII never reaches it).
configureTextEncoding({
  checkUtf8: textEncoding.checkUtf8,
  encodeUtf8: textEncoding.encodeUtf8,
  encodeUtf8Into: textEncoding.encodeUtf8Into,
  decodeUtf8(bytes, strict) {
    const text = textEncoding.decodeUtf8(bytes, strict);
    if (invalidStrings && !isUtf8(bytes)) invalidStrings.add(text);
    return text;
  },
});

const snakeCase = (name: string) => name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** The path (proto field names) of the first string in `value` that is one of `strings`. */
function findString(value: unknown, strings: Set<string>, path: string): string | undefined {
  if (typeof value === 'string') return strings.has(value) ? path : undefined;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = findString(value[i], strings, `${path}[${i}]`);
      if (found) return found;
    }
    return undefined;
  }
  if (value && typeof value === 'object' && !ArrayBuffer.isView(value)) {
    for (const [key, field] of Object.entries(value)) {
      const found = findString(field, strings, path ? `${path}.${snakeCase(key)}` : snakeCase(key));
      if (found) return found;
    }
  }
  return undefined;
}

/** `deserialize`, returning an `UndecodableRequest` naming `messageName` (e.g. ClassifyRequest) where it fails. */
export function strictDeserializer(
  deserialize: (bytes: Buffer) => unknown,
  messageName: string,
): (bytes: Buffer) => unknown {
  return (bytes) => {
    const collected = new Set<string>();
    invalidStrings = collected;
    let request: unknown;
    try {
      request = deserialize(bytes);
    } catch (error) {
      return new UndecodableRequest(
        `request is not a valid ${messageName}: ${(error as Error).message ?? String(error)}`,
      );
    } finally {
      invalidStrings = undefined;
    }
    if (collected.size === 0) return request;
    const field = findString(request, collected, '') ?? 'a string field';
    return new UndecodableRequest(`${field}: is not valid UTF-8`);
  };
}

/**
 * The definition with every request deserializer made strict; `messageName`
 * gives a method's request message name from its path (`/pkg.Service/Method`).
 */
export function withStrictDeserializers(
  definition: ServiceDefinition,
  messageName: (path: string) => string,
): ServiceDefinition {
  const strict: Record<string, ServiceDefinition[string]> = {};
  for (const [name, method] of Object.entries(definition)) {
    strict[name] = {
      ...method,
      requestDeserialize: strictDeserializer(method.requestDeserialize, messageName(method.path)),
    };
  }
  return strict as ServiceDefinition;
}

/** Answers an undecodable request with INVALID_ARGUMENT before any handler sees it. */
export const undecodableRequestInterceptor: ServerInterceptor = (
  _descriptor,
  call,
): ServerInterceptingCall => {
  let answered = false;
  const listener = new ServerListenerBuilder()
    .withOnReceiveMessage((message, next) => {
      if (!(message instanceof UndecodableRequest)) {
        if (!answered) next(message);
        return;
      }
      if (answered) return;
      answered = true;
      intercepting.sendStatus({ code: status.INVALID_ARGUMENT, details: message.message });
    })
    .build();
  const intercepting: ServerInterceptingCall = new ServerInterceptingCall(call, {
    start: (next) => next(listener),
  });
  return intercepting;
};
