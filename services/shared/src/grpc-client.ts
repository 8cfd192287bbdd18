import {
  type ChannelOptions,
  type Client,
  credentials,
  type Interceptor,
  type Deadline,
} from '@grpc/grpc-js';
import { clientTracingInterceptor } from './grpc-observability.js';

export interface ClientOptions {
  maxMessageBytes?: number;
  keepaliveTimeMs?: number;
  interceptors?: Interceptor[];
  channelOptions?: ChannelOptions;
}

type ClientConstructor<C extends Client> = new (
  address: string,
  creds: ReturnType<typeof credentials.createInsecure>,
  options?: ChannelOptions & { interceptors?: Interceptor[] },
) => C;

/**
 * A client for another maas service. Addresses like
 * `dns:///tokenizer-headless.ns.svc:50051` resolve to every replica and
 * round_robin spreads calls over them, re-resolving as replicas come and go;
 * keepalive pings keep long idle streams alive through proxies.
 */
export function createClient<C extends Client>(
  Ctor: ClientConstructor<C>,
  address: string,
  options: ClientOptions = {},
): C {
  const maxBytes = options.maxMessageBytes ?? 16 * 1024 * 1024;
  return new Ctor(address, credentials.createInsecure(), {
    'grpc.service_config': JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
    'grpc.keepalive_time_ms': options.keepaliveTimeMs ?? 30_000,
    'grpc.keepalive_timeout_ms': 10_000,
    'grpc.keepalive_permit_without_calls': 1,
    'grpc.max_receive_message_length': maxBytes,
    'grpc.max_send_message_length': maxBytes,
    'grpc.dns_min_time_between_resolutions_ms': 5_000,
    // HTTP/2's default window (64 KiB per stream and per connection) is smaller than one batch's
    // answer (64 embeddings of 300 floats are 77 KB): the server would stop mid-response and wait a
    // round trip for the window to open again, and concurrent answers would queue for it.
    'grpc-node.flow_control_window': 4 * 1024 * 1024,
    ...options.channelOptions,
    interceptors: [clientTracingInterceptor, ...(options.interceptors ?? [])],
  });
}

/**
 * The deadline of a downstream call made while serving `call`: the caller's
 * remaining time, never a fresh timeout, capped by `maxMs` when given.
 */
export function downstreamDeadline(call: { getDeadline(): Deadline }, maxMs?: number): Date {
  const incoming = call.getDeadline();
  const incomingMs = incoming instanceof Date ? incoming.getTime() : incoming;
  const cap = maxMs === undefined ? Infinity : Date.now() + maxMs;
  const ms = Math.min(Number.isFinite(incomingMs) ? incomingMs : Infinity, cap);
  return new Date(Number.isFinite(ms) ? ms : Date.now() + 24 * 3600_000);
}
