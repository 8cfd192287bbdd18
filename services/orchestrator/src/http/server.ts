/**
 * The HTTP transport: node:http, a route table, JSON bodies, server-sent
 * events, and what every call needs around its route — the caller (its
 * `authorization` header, its connection closing as cancellation), a trace
 * span continuing the caller's `traceparent`, metrics, errors in one shape,
 * readiness and a graceful drain. Routes map wire formats onto the use cases;
 * no use-case logic lives here.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { context, propagation, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import type { Logger } from '@maas/shared';
import { Counter, Histogram, type Registry } from 'prom-client';
import { CALLER_GONE, type Caller } from '../core/caller.js';
import { HttpRequestError, httpErrorOf } from './errors.js';
import openApiDocument from './openapi.json';

/** Every route, described (OpenAPI 3.1, linted by `npm run lint:openapi`): served at /openapi.json. */
const OPENAPI_BODY = JSON.stringify(openApiDocument);

export interface HttpExchange {
  caller: Caller;
  /** The parsed JSON body (POST); undefined for GET. */
  body: unknown;
  /** For a route whose path ends in `/*`: the rest of the path, URL-decoded. */
  rest: string;
  json(status: number, body: unknown): void;
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
  /** Names the route's callers use for the use case's fields, for error messages and `param`. */
  rename?: (field: string) => string | undefined;
}

export interface HttpServerOptions {
  host: string;
  port: number;
  maxBodyBytes: number;
  routes: HttpRoute[];
  /** GET /readyz answers 200 while this is true (it follows gRPC health). */
  isReady: () => boolean;
  logger: Logger;
  registry: Registry;
}

const LATENCY_BUCKETS_SECONDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export class HttpFrontDoor {
  private readonly server: Server;
  private readonly exact = new Map<string, HttpRoute>();
  private readonly prefixed: { prefix: string; route: HttpRoute }[] = [];
  private readonly active = new Set<ServerResponse>();
  private readonly requests: Counter<'method' | 'route' | 'code'>;
  private readonly seconds: Histogram<'method' | 'route'>;
  private stopping = false;
  private readonly tracer = trace.getTracer('maas-http-server');

  constructor(private readonly options: HttpServerOptions) {
    for (const route of options.routes) {
      if (route.path.endsWith('/*')) {
        this.prefixed.push({ prefix: `${route.method} ${route.path.slice(0, -1)}`, route });
      } else this.exact.set(`${route.method} ${route.path}`, route);
    }
    this.requests = new Counter({
      name: 'maas_orchestrator_http_requests_total',
      help: 'HTTP requests completed, by method, route (its pattern) and status code.',
      labelNames: ['method', 'route', 'code'],
      registers: [options.registry],
    });
    this.seconds = new Histogram({
      name: 'maas_orchestrator_http_request_duration_seconds',
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
    this.stopping = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeIdleConnections();
    const deadline = Date.now() + drainMs;
    while (this.active.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    if (this.active.size > 0) this.options.logger.warn({ drainMs }, 'HTTP drain deadline passed');
    this.server.closeAllConnections();
    await closed;
  }

  private route(method: string, path: string): HttpRoute | { rest: string; route: HttpRoute } | undefined {
    const key = `${method} ${path}`;
    const exact = this.exact.get(key);
    if (exact) return exact;
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
    if (this.stopping) res.setHeader('connection', 'close');
    let label = 'unmatched';
    res.once('close', () => {
      this.active.delete(res);
      this.requests.inc({ method, route: label, code: String(res.statusCode) });
      this.seconds.observe({ method, route: label }, (performance.now() - startedAt) / 1000);
    });
    if (path === '/healthz' || path === '/readyz' || path === '/openapi.json') {
      label = path;
      req.resume();
      if (method !== 'GET' && method !== 'HEAD')
        return this.sendError(res, new HttpRequestError(405, `${method} is not allowed on ${path}`));
      if (path === '/openapi.json') {
        res.writeHead(200, {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(OPENAPI_BODY),
        });
        return void res.end(OPENAPI_BODY);
      }
      const ready = path === '/healthz' || (this.options.isReady() && !this.stopping);
      return this.sendJson(res, ready ? 200 : 503, { status: ready ? 'ok' : 'not ready' });
    }
    const found = this.route(method, path);
    if (!found) {
      const known = [...this.exact.values()].some((r) => r.path === path);
      const error = known
        ? new HttpRequestError(405, `${method} is not allowed on ${path}`)
        : new HttpRequestError(404, `no route ${method} ${path}`);
      req.resume();
      return this.sendError(res, error);
    }
    const { route, rest } = 'route' in found ? found : { route: found, rest: '' };
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
    res.once('close', () => {
      span.setAttribute('http.response.status_code', res.statusCode);
      if (res.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
      span.end();
    });
    const controller = new AbortController();
    res.once('close', () => {
      if (!res.writableFinished) controller.abort(CALLER_GONE);
    });
    const caller: Caller = {
      authorization: req.headers.authorization,
      deadline: undefined,
      signal: controller.signal,
    };
    let stream: EventStream | undefined;
    await context.with(trace.setSpan(parent, span), async () => {
      try {
        const body = method === 'POST' ? await this.readJson(req) : undefined;
        await route.handle({
          caller,
          body,
          rest,
          json: (status, value) => this.sendJson(res, status, value),
          events: () => (stream ??= eventStream(res)),
        });
      } catch (error) {
        if (!(error instanceof HttpRequestError) && !isExpected(error))
          this.options.logger.error({ err: error, route: route.path }, 'HTTP request failed');
        const mapped = httpErrorOf(error, route.rename);
        if (!res.headersSent) return this.sendError(res, error, route.rename);
        // A stream already under way: the error as its last event, as OpenAI's API sends it.
        if (stream && !res.writableEnded) {
          stream.send(mapped.body);
          stream.end();
        } else res.destroy();
      }
    });
  }

  private async readJson(req: IncomingMessage): Promise<unknown> {
    const type = req.headers['content-type'];
    if (type !== undefined && !/[/+]json\b/i.test(type)) {
      req.resume();
      throw new HttpRequestError(415, `content-type must be application/json, got '${type}'`);
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

  private sendJson(
    res: ServerResponse,
    status: number,
    value: unknown,
    headers: Record<string, string> = {},
  ) {
    const body = JSON.stringify(value);
    res.writeHead(status, {
      ...headers,
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
    });
    res.end(body);
  }

  private sendError(res: ServerResponse, error: unknown, rename?: HttpRoute['rename']) {
    const mapped = httpErrorOf(error, rename);
    this.sendJson(res, mapped.status, mapped.body, mapped.headers);
  }
}

/** Statuses a call ends with in normal operation: not worth an error log line. */
function isExpected(error: unknown): boolean {
  return error instanceof Error && error.name === 'StatusError';
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
