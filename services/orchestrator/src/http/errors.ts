/**
 * The use cases' errors as HTTP responses: the gRPC status mapped to the HTTP
 * status every gRPC-HTTP gateway uses (google.rpc.Code's documented mapping),
 * in the body OpenAI's API returns — `{"error": {message, type, param, code}}`
 * — so the OpenAI SDKs raise their typed errors (BadRequestError,
 * AuthenticationError, PermissionDeniedError, NotFoundError, RateLimitError).
 */
import { status } from '@grpc/grpc-js';
import { HttpRequestError, httpStatusOf, StatusError } from '@maas/shared';

const ERROR_TYPE: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  403: 'permission_error',
  404: 'not_found_error',
  413: 'invalid_request_error',
  415: 'invalid_request_error',
  429: 'rate_limit_error',
};

export interface HttpError {
  status: number;
  headers: Record<string, string>;
  body: { error: { message: string; type: string; param: string | null; code: string } };
}

/** The `field: problem` form every INVALID_ARGUMENT of the use cases has. */
const FIELD_PREFIX = /^([A-Za-z_][\w.]*(?:\[\d+\])*(?:\.[A-Za-z_]\w*(?:\[\d+\])*)*): /;

/**
 * `rename` maps the use case's field names (the protobuf ones) onto the names the route's callers
 * sent (OpenAI's `max_tokens` for `max_new_tokens`, say); undefined keeps a name.
 */
export function httpErrorOf(error: unknown, rename?: (field: string) => string | undefined): HttpError {
  const headers: Record<string, string> = {};
  if (error instanceof HttpRequestError) {
    return {
      status: error.status,
      headers,
      body: {
        error: {
          message: error.message,
          type: ERROR_TYPE[error.status] ?? 'invalid_request_error',
          param: error.param,
          code: String(error.status),
        },
      },
    };
  }
  if (!(error instanceof StatusError)) {
    return {
      status: 500,
      headers,
      body: { error: { message: 'internal error', type: 'server_error', param: null, code: 'INTERNAL' } },
    };
  }
  const httpStatus = httpStatusOf(error.code);
  let message = error.message;
  let param: string | null = null;
  const field = error.code === status.INVALID_ARGUMENT ? FIELD_PREFIX.exec(message)?.[1] : undefined;
  if (field !== undefined) {
    param = renameField(field, rename);
    message = `${param}: ${message.slice(field.length + 2)}`;
  }
  const retryAfterMs = error.metadata?.get('retry-after-ms')[0];
  if (retryAfterMs !== undefined) {
    // `retry-after-ms` is what the OpenAI SDKs read first; `retry-after` (whole seconds) is HTTP's.
    headers['retry-after-ms'] = String(retryAfterMs);
    headers['retry-after'] = String(Math.max(1, Math.ceil(Number(retryAfterMs) / 1000)));
  }
  return {
    status: httpStatus,
    headers,
    body: {
      error: {
        message,
        type: ERROR_TYPE[httpStatus] ?? (httpStatus >= 500 ? 'server_error' : 'invalid_request_error'),
        param,
        code: status[error.code] ?? 'UNKNOWN',
      },
    },
  };
}

/** `texts[2]` renamed by its base name (`texts` → `input` gives `input[2]`). */
function renameField(field: string, rename?: (field: string) => string | undefined): string {
  if (!rename) return field;
  const whole = rename(field);
  if (whole !== undefined) return whole;
  const base = /^[^[]+/.exec(field)![0];
  const renamed = rename(base);
  return renamed === undefined ? field : renamed + field.slice(base.length);
}
