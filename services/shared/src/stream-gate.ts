/**
 * Admission before grpc-js builds a call. Under overload a refusal must cost
 * a small fraction of serving a call, or refusing the excess takes the CPU
 * the admitted calls need and every call ends past its deadline (measured:
 * at twice its capacity the orchestrator answered nothing for a minute). A
 * refusal through grpc-js's call machinery (call objects, interceptors,
 * metadata, message decoding, our handler) costs about 200 µs here; answering
 * the HTTP/2 stream at once with a trailers-only RESOURCE_EXHAUSTED costs
 * about 45 µs, a bare HTTP/2 server's floor. grpc-js offers no public hook at
 * that point, so `GatedServer` puts the gate in front of the one 'stream'
 * listener grpc-js installs on each HTTP/2 server it creates, and fails
 * loudly at bind time if that shape ever changes.
 */
import { Server, type ServerOptions, status } from '@grpc/grpc-js';
import type { Http2Server, IncomingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import { retryMetadata } from './errors.js';

/** Why a call is not admitted: its message and when a retry may succeed. */
export interface Refusal {
  message: string;
  retryAfterMs: number;
}

/**
 * Decides on a call from its path alone: undefined (not gated: grpc-js takes
 * it), a function (admitted: called once when the stream closes) or a Refusal.
 */
export type StreamGate = (path: string) => (() => void) | Refusal | undefined;

/** Told of every refusal, for metrics. */
export type RefusalObserver = (path: string) => void;

type StreamListener = (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, ...rest: unknown[]) => void;

export class GatedServer extends Server {
  constructor(
    options: ServerOptions,
    private readonly gate: StreamGate,
    private readonly onRefused: RefusalObserver = () => {},
  ) {
    super(options);
    // grpc-js creates one HTTP/2 server per bound address in this (TypeScript-private) method.
    const self = this as unknown as { createHttp2Server: (...args: unknown[]) => Http2Server };
    const create = self.createHttp2Server.bind(this);
    self.createHttp2Server = (...args: unknown[]) => this.install(create(...args));
  }

  private install(http2Server: Http2Server): Http2Server {
    const listeners = http2Server.listeners('stream') as StreamListener[];
    if (listeners.length !== 1) {
      throw new Error(
        `GatedServer: expected grpc-js to install one 'stream' listener, found ${listeners.length}; ` +
          'the @grpc/grpc-js version changed how it serves streams',
      );
    }
    const [grpcJs] = listeners as [StreamListener];
    http2Server.removeAllListeners('stream');
    http2Server.on(
      'stream',
      (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, ...rest: unknown[]) => {
        const path = headers[':path'];
        const decision = typeof path === 'string' ? this.gate(path) : undefined;
        if (decision === undefined) return grpcJs(stream, headers, ...rest);
        if (typeof decision === 'function') {
          stream.once('close', decision);
          return grpcJs(stream, headers, ...rest);
        }
        this.refuse(stream, path!, decision);
      },
    );
    return http2Server;
  }

  private refuse(stream: ServerHttp2Stream, path: string, refusal: Refusal): void {
    stream.on('error', () => {});
    try {
      // Trailers-only, encoded as grpc-js answers a call it refuses itself; the details carry RetryInfo.
      stream.respond(
        {
          ':status': 200,
          'content-type': 'application/grpc+proto',
          'grpc-status': String(status.RESOURCE_EXHAUSTED),
          'grpc-message': encodeURI(refusal.message),
          ...retryMetadata(refusal.message, refusal.retryAfterMs).toHttp2Headers(),
        },
        { endStream: true },
      );
    } catch {
      // The client reset the stream already: nothing to answer.
    }
    // The request body may still arrive; read and drop it so the stream closes.
    stream.resume();
    this.onRefused(path);
  }
}
