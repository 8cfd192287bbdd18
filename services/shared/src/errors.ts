import { BinaryReader, BinaryWriter } from '@bufbuild/protobuf/wire';
import { Metadata, status, type ServiceError } from '@grpc/grpc-js';

/**
 * An error that carries the gRPC status the caller should see. Domain code
 * throws these; the server wrapper turns them into statuses. Anything else
 * becomes INTERNAL with a generic message (details go to the log, not the wire).
 */
export class StatusError extends Error {
  readonly code: status;
  readonly metadata?: Metadata;

  constructor(code: status, message: string, metadata?: Metadata) {
    // An expected outcome, not a bug: no stack trace, whose capture was the largest single cost of
    // refusing a call under overload (it is thrown for every refused call).
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(message);
    Error.stackTraceLimit = limit;
    this.name = 'StatusError';
    this.code = code;
    this.metadata = metadata;
  }
}

/**
 * The abort reason when a caller has gone (cancelled, deadline passed, connection closed): one object,
 * where abort() without one builds a DOMException (and its stack) per call.
 */
export const CALLER_GONE = Object.freeze({ reason: 'the caller has gone' });

export const invalidArgument = (field: string, problem: string) =>
  new StatusError(status.INVALID_ARGUMENT, `${field}: ${problem}`);
/**
 * A uint64 field that the generated code keeps as a decimal string (jstype = JS_STRING), as a
 * bigint; anything else (from a JSON caller) is INVALID_ARGUMENT naming the field.
 */
export function parseUint64Field(value: string, field: string): bigint {
  if (!/^\d{1,20}$/.test(value) || BigInt(value) >= 2n ** 64n) {
    throw invalidArgument(field, `must be an integer in [0, 2^64 - 1], got "${value.slice(0, 40)}"`);
  }
  return BigInt(value);
}
/**
 * Runs `work`; an INVALID_ARGUMENT-style `from: problem` error it throws is rethrown as `to: problem`:
 * a field of a request the code built (a rendered prompt) named as the field the caller sent.
 */
export async function renamingField<T>(from: string, to: string, work: () => T | Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (error instanceof StatusError && error.message.startsWith(`${from}: `))
      throw new StatusError(error.code, `${to}: ${error.message.slice(from.length + 2)}`, error.metadata);
    throw error;
  }
}
export const notFound = (what: string) => new StatusError(status.NOT_FOUND, what);
export const failedPrecondition = (what: string) => new StatusError(status.FAILED_PRECONDITION, what);
export const unavailable = (what: string) => new StatusError(status.UNAVAILABLE, what);

/**
 * RESOURCE_EXHAUSTED with the delay after which a retry may succeed: as a
 * `google.rpc.RetryInfo` in the standard rich-error details
 * (`grpc-status-details-bin`, which gRPC clients in every language decode),
 * and as plain `retry-after-ms` metadata for simple clients.
 */
export function resourceExhausted(what: string, retryAfterMs?: number): StatusError {
  return new StatusError(
    status.RESOURCE_EXHAUSTED,
    what,
    retryAfterMs === undefined ? new Metadata() : retryMetadata(what, retryAfterMs),
  );
}

/** The trailing metadata of a RESOURCE_EXHAUSTED refusal: RetryInfo details and `retry-after-ms`. */
export function retryMetadata(what: string, retryAfterMs: number): Metadata {
  const ms = Math.max(0, Math.ceil(retryAfterMs));
  const metadata = new Metadata();
  metadata.set('retry-after-ms', String(ms));
  metadata.set('grpc-status-details-bin', retryInfoDetails(what, ms));
  return metadata;
}

/**
 * Encoded details by message and delay: under overload the same refusal goes out thousands of times
 * a second, and encoding it each time was a visible share of a refusal's cost. Bounded: messages
 * may vary.
 */
const encodedRetryInfo = new Map<string, Buffer>();
function retryInfoDetails(what: string, ms: number): Buffer {
  const key = `${ms}|${what}`;
  let encoded = encodedRetryInfo.get(key);
  if (!encoded) {
    if (encodedRetryInfo.size >= 256) encodedRetryInfo.clear();
    encodedRetryInfo.set(key, (encoded = encodeRetryInfoStatus(status.RESOURCE_EXHAUSTED, what, ms)));
  }
  return encoded;
}

export const RETRY_INFO_TYPE_URL = 'type.googleapis.com/google.rpc.RetryInfo';

/** google.rpc.Status{code, message, details: [Any(google.rpc.RetryInfo{retry_delay: Duration})]}. */
function encodeRetryInfoStatus(code: number, message: string, retryAfterMs: number): Buffer {
  const duration = new BinaryWriter()
    .uint32(8)
    .int64(Math.floor(retryAfterMs / 1000))
    .uint32(16)
    .int32((retryAfterMs % 1000) * 1_000_000)
    .finish();
  const retryInfo = new BinaryWriter().uint32(10).bytes(duration).finish();
  const any = new BinaryWriter().uint32(10).string(RETRY_INFO_TYPE_URL).uint32(18).bytes(retryInfo).finish();
  return Buffer.from(
    new BinaryWriter().uint32(8).int32(code).uint32(18).string(message).uint32(26).bytes(any).finish(),
  );
}

/** The retry delay in a status's rich details (google.rpc.RetryInfo), in ms; undefined when absent. */
export function decodeRetryDelayMs(metadata: Metadata): number | undefined {
  const [details] = metadata.get('grpc-status-details-bin');
  if (!(details instanceof Buffer)) return undefined;
  const fields = (bytes: Uint8Array) => {
    const out = new Map<number, Uint8Array | number>();
    const reader = new BinaryReader(bytes);
    while (reader.pos < reader.len) {
      const [field, wire] = reader.tag();
      if (wire === 2) out.set(field, reader.bytes());
      else if (wire === 0) out.set(field, Number(reader.int64()));
      else reader.skip(wire);
    }
    return out;
  };
  const any = fields(details).get(3);
  if (!(any instanceof Uint8Array)) return undefined;
  const anyFields = fields(any);
  if (new TextDecoder().decode(anyFields.get(1) as Uint8Array) !== RETRY_INFO_TYPE_URL) return undefined;
  const duration = fields(fields(anyFields.get(2) as Uint8Array).get(1) as Uint8Array);
  return Number(duration.get(1) ?? 0) * 1000 + Number(duration.get(2) ?? 0) / 1e6;
}

export function isServiceError(error: unknown): error is ServiceError {
  return (
    error instanceof Error && typeof (error as Partial<ServiceError>).code === 'number' && 'details' in error
  );
}

/** The status code of any error: StatusError, a grpc-js ServiceError, or INTERNAL. */
export function statusOf(error: unknown): status {
  if (error instanceof StatusError) return error.code;
  if (isServiceError(error)) return error.code;
  return status.INTERNAL;
}
