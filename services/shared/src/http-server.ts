/**
 * An HTTP server with what every maas HTTP API needs around its routes, as
 * GrpcServiceHost is for gRPC: node:http, a route table (exact paths and
 * `/prefix/*`), JSON bodies with a size limit, server-sent events, the
 * caller's connection closing as an abort signal, a trace span continuing the
 * caller's `traceparent`, request metrics, errors in the service's own shape
 * (`formatError`), and a graceful drain. Routes map their wire format onto
 * the service's domain functions; nothing of a use case lives here.
 */
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { context, propagation, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { status } from '@grpc/grpc-js';
import { Counter, Histogram, type Registry } from 'prom-client';
import { CALLER_GONE, StatusError } from './errors.js';
import type { Logger } from './logger.js';
import { LATENCY_BUCKETS_SECONDS } from './metrics.js';

/** An error about the HTTP request itself (its body, path or method) rather than a domain field. */
export class HttpRequestError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
  ) {
    super(message);
  }
}

/** The HTTP status of a gRPC code, as gRPC-HTTP gateways map them (google.rpc.Code's documentation). */
const HTTP_STATUS: Partial<Record<status, number>> = {
  [status.INVALID_ARGUMENT]: 400,
  [status.OUT_OF_RANGE]: 400,
  [status.FAILED_PRECONDITION]: 400,
  [status.UNAUTHENTICATED]: 401,
  [status.PERMISSION_DENIED]: 403,
  [status.NOT_FOUND]: 404,
  [status.ALREADY_EXISTS]: 409,
  [status.ABORTED]: 409,
  [status.RESOURCE_EXHAUSTED]: 429,
  [status.CANCELLED]: 499,
  [status.UNIMPLEMENTED]: 501,
  [status.UNAVAILABLE]: 503,
  [status.DEADLINE_EXCEEDED]: 504,
};

export const httpStatusOf = (code: status): number => HTTP_STATUS[code] ?? 500;

export interface HttpExchange {
  headers: IncomingHttpHeaders;
  /** Aborted when the caller has gone (its connection closed before the response ended). */
  signal: AbortSignal;
  /** The parsed JSON body (POST); undefined for GET. */
  body: unknown;
  /** For a route whose path ends in `/*`: the rest of the path, as sent (not decoded). */
  rest: string;
  /** True once the server is draining: readiness routes answer 503. */
  draining: boolean;
  json(status: number, body: unknown): void;
  /** Sends a body as it is, with its content type. */
  send(status: number, contentType: string, body: string): void;
  /** Starts (on its first event) a text/event-stream response. */
  events(): EventStream;
}

export interface EventStream {
  /** One `data:` event: an object as JSON, a string as it is (`[DONE]`). */
  send(data: unknown): void;
  end(): void;
}

export interface HttpRoute {
  method: 'GET' | 'POST';
  /** A fixed path, or a prefix ending in `/*`. */
  path: string;
  handle(exchange: HttpExchange): Promise<void>;
  /** Names the route's callers use for the domain's fields, for error messages (see formatError). */
  rename?: (field: string) => string | undefined;
}

export interface FormattedError {
  status: number;
  headers: Record<string, string>;
  body: unknown;
}

export interface HttpServerOptions {
  /** The service, for logs and metric names (`maas_<service>_http_requests_total`). */
  service: string;
  host: string;
  port: number;
  maxBodyBytes: number;
  routes: HttpRoute[];
  /** An error (an HttpRequestError, a StatusError, anything) as the response the service's API gives. */
  formatError(error: unknown, route: HttpRoute | undefined): FormattedError;
  logger: Logger;
  registry: Registry;
}

export class HttpServiceHost {
  private readonly server: Server;
  private readonly exact = new Map<string, HttpRoute>();
  private readonly prefixed: { prefix: string; route: HttpRoute }[] = [];
  private readonly active = new Set<ServerResponse>();
  private readonly requests: Counter<'method' | 'route' | 'code'>;
  private readonly seconds: Histogram<'method' | 'route'>;
  private draining = false;
  private readonly tracer = trace.getTracer('maas-http-server');

  constructor(private readonly options: HttpServerOptions) {
    for (const route of options.routes) {
      if (route.path.endsWith('/*')) {
        this.prefixed.push({ prefix: `${route.method} ${route.path.slice(0, -1)}`, route });
      } else this.exact.set(`${route.method} ${route.path}`, route);
    }
    const prefix = `maas_${options.service.replace(/-/g, '_')}_http`;
    this.requests = new Counter({
      name: `${prefix}_requests_total`,
      help: 'HTTP requests completed, by method, route (its pattern) and status code.',
      labelNames: ['method', 'route', 'code'],
      registers: [options.registry],
    });
    this.seconds = new Histogram({
      name: `${prefix}_request_duration_seconds`,
      help: 'HTTP request duration until the response ended (streams: the whole stream).',
      labelNames: ['method', 'route'],
      buckets: LATENCY_BUCKETS_SECONDS,
      registers: [options.registry],
    });
    this.server = createServer({ keepAlive: true }, (req, res) => void this.serve(req, res));
    // Longer than load balancers' idle timeouts (60 s), so they, not this server, close idle connections.
    this.server.keepAliveTimeout = 65_000;
    this.server.headersTimeout = 66_000;
    // Streams last as long as a generation; the request (headers and body) itself must arrive in time.
    this.server.requestTimeout = 60_000;
  }

  async start(): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.options.port, this.options.host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    const port = (this.server.address() as AddressInfo).port;
    this.options.logger.info({ httpPort: port, host: this.options.host }, 'HTTP listening');
    return port;
  }

  /** Stops accepting, lets requests in progress finish for up to `drainMs`, then closes the rest. */
  async stop(drainMs: number): Promise<void> {
    this.draining = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeIdleConnections();
    const deadline = Date.now() + drainMs;
    while (this.active.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    if (this.active.size > 0) this.options.logger.warn({ drainMs }, 'HTTP drain deadline passed');
    this.server.closeAllConnections();
    await closed;
  }

  private find(method: string, path: string): { route: HttpRoute; rest: string } | undefined {
    const key = `${method === 'HEAD' ? 'GET' : method} ${path}`;
    const exact = this.exact.get(key);
    if (exact) return { route: exact, rest: '' };
    for (const { prefix, route } of this.prefixed) {
      if (key.startsWith(prefix) && key.length > prefix.length)
        return { route, rest: key.slice(prefix.length) };
    }
    return undefined;
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const startedAt = performance.now();
    const method = req.method ?? 'GET';
    const path = (req.url ?? '/').split('?', 1)[0]!;
    this.active.add(res);
    if (this.draining) res.setHeader('connection', 'close');
    let label = 'unmatched';
    res.once('close', () => {
      this.active.delete(res);
      this.requests.inc({ method, route: label, code: String(res.statusCode) });
      this.seconds.observe({ method, route: label }, (performance.now() - startedAt) / 1000);
    });
    const found = this.find(method, path);
    if (!found) {
      req.resume();
      const other = ['GET', 'POST'].some((m) => m !== method && this.find(m, path));
      const error = other
        ? new HttpRequestError(405, `${method} is not allowed on ${path}`)
        : new HttpRequestError(404, `no route ${method} ${path}`);
      return this.sendError(res, error, undefined);
    }
    const { route, rest } = found;
    label = route.path;
    const parent = propagation.extract(context.active(), req.headers);
    const span = this.tracer.startSpan(
      `${method} ${route.path}`,
      {
        kind: SpanKind.SERVER,
        attributes: { 'http.request.method': method, 'http.route': route.path, 'url.path': path },
      },
      parent,
    );
    const controller = new AbortController();
    res.once('close', () => {
      if (!res.writableFinished) controller.abort(CALLER_GONE);
      span.setAttribute('http.response.status_code', res.statusCode);
      if (res.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
      span.end();
    });
    let stream: EventStream | undefined;
    await context.with(trace.setSpan(parent, span), async () => {
      try {
        let body: unknown;
        if (method === 'POST') body = await this.readJson(req);
        else req.resume();
        await route.handle({
          headers: req.headers,
          signal: controller.signal,
          body,
          rest,
          draining: this.draining,
          json: (status, value) => sendBody(res, status, 'application/json', JSON.stringify(value)),
          send: (status, contentType, text) => sendBody(res, status, contentType, text),
          events: () => (stream ??= eventStream(res)),
        });
      } catch (error) {
        if (!(error instanceof HttpRequestError) && !(error instanceof StatusError))
          this.options.logger.error({ err: error, route: route.path }, 'HTTP request failed');
        if (!res.headersSent) return this.sendError(res, error, route);
        // A stream already under way: the error as its last event (as OpenAI's API sends it).
        if (stream && !res.writableEnded) {
          stream.send(this.options.formatError(error, route).body);
          stream.end();
        } else res.destroy();
      }
    });
  }

  private async readJson(req: IncomingMessage): Promise<unknown> {
    const type = req.headers['content-type'];
    if (type !== undefined && !/[/+]json\b/i.test(type)) {
      req.resume();
      throw new HttpRequestError(415, `content-type must be application/json, got '${type.slice(0, 64)}'`);
    }
    const limit = this.options.maxBodyBytes;
    if (Number(req.headers['content-length'] ?? 0) > limit) {
      req.resume();
      throw new HttpRequestError(413, `the body exceeds ${limit} bytes`);
    }
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > limit) throw new HttpRequestError(413, `the body exceeds ${limit} bytes`);
      chunks.push(chunk);
    }
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(Buffer.concat(chunks));
    } catch {
      throw new HttpRequestError(400, 'the body is not valid UTF-8');
    }
    if (text.trim() === '') throw new HttpRequestError(400, 'the body is empty: send a JSON object');
    try {
      return JSON.parse(text);
    } catch (error) {
      throw new HttpRequestError(400, `the body is not valid JSON: ${(error as Error).message}`);
    }
  }

  private sendError(res: ServerResponse, error: unknown, route: HttpRoute | undefined) {
    const formatted = this.options.formatError(error, route);
    for (const [name, value] of Object.entries(formatted.headers)) res.setHeader(name, value);
    sendBody(res, formatted.status, 'application/json', JSON.stringify(formatted.body));
  }
}

function sendBody(res: ServerResponse, status: number, contentType: string, body: string): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function eventStream(res: ServerResponse): EventStream {
  const start = () => {
    if (res.headersSent) return;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      // Proxies (nginx) that buffer responses would hold tokens back until the stream ends.
      'x-accel-buffering': 'no',
    });
    // Each event leaves at once rather than waiting for Nagle's algorithm.
    (res.socket as Socket | null)?.setNoDelay(true);
  };
  return {
    send(data) {
      start();
      if (!res.writableEnded)
        res.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
    },
    end() {
      start();
      if (!res.writableEnded) res.end();
    },
  };
}
