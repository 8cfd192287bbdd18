/** The caller of an HTTP request, as the use cases take it. */
import type { HttpExchange } from '@maas/shared';
import type { Caller } from '../core/caller.js';

const callers = new WeakMap<HttpExchange, Caller>();

/** HTTP has no deadline of its own: a client that stops waiting closes its connection (the signal). */
export function callerOf(exchange: HttpExchange): Caller {
  let caller = callers.get(exchange);
  if (!caller) {
    caller = { authorization: exchange.headers.authorization, deadline: undefined, signal: exchange.signal };
    callers.set(exchange, caller);
  }
  return caller;
}
