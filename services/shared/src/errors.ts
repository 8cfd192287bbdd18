import { Metadata, status, type ServiceError } from '@grpc/grpc-js';

/**
 * An error that carries the gRPC status the caller should see. Domain code
 * throws these; the server wrapper turns them into statuses. Anything else
 * becomes INTERNAL with a generic message (details go to the log, not the wire).
 */
export class StatusError extends Error {
  constructor(
    readonly code: status,
    message: string,
    readonly metadata?: Metadata,
  ) {
    super(message);
    this.name = 'StatusError';
  }
}

export const invalidArgument = (field: string, problem: string) =>
  new StatusError(status.INVALID_ARGUMENT, `${field}: ${problem}`);
export const notFound = (what: string) => new StatusError(status.NOT_FOUND, what);
export const failedPrecondition = (what: string) => new StatusError(status.FAILED_PRECONDITION, what);
export const unavailable = (what: string) => new StatusError(status.UNAVAILABLE, what);

/** RESOURCE_EXHAUSTED with the delay after which a retry may succeed, as metadata `retry-after-ms`. */
export function resourceExhausted(what: string, retryAfterMs?: number): StatusError {
  const metadata = new Metadata();
  if (retryAfterMs !== undefined) metadata.set('retry-after-ms', String(Math.ceil(retryAfterMs)));
  return new StatusError(status.RESOURCE_EXHAUSTED, what, metadata);
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
