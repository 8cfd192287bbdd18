/**
 * Per-key quotas: requests per second and tokens per minute as token
 * buckets, and a count of open generation streams.
 *
 * Tokens are charged after the fact, with the counts the tokenizer and the
 * runner report: a request is admitted while the key's token bucket is above
 * zero, and its tokens (prompt + generated) are then taken, possibly into
 * debt. A key can thus overshoot by one request's tokens, and pays it back
 * before its next request is admitted. Reserving max_new_tokens up front
 * instead would refuse honest callers whose generations end early.
 */
import type { KeyLimits, Principal } from './api-keys.js';
import { resourceExhausted } from '@maas/shared';

/** A bucket of `capacity` that refills at `perMs`; it may go negative (debt). */
export class TokenBucket {
  private level: number;
  private last: number;

  constructor(
    readonly capacity: number,
    readonly perMs: number,
    now: number,
  ) {
    this.level = capacity;
    this.last = now;
  }

  private refill(now: number): void {
    if (now > this.last) {
      this.level = Math.min(this.capacity, this.level + (now - this.last) * this.perMs);
      this.last = now;
    }
  }

  /** Takes `n` if available; otherwise returns how long until it would be, in ms. */
  take(n: number, now: number): number {
    this.refill(now);
    if (this.level >= n) {
      this.level -= n;
      return 0;
    }
    return (n - this.level) / this.perMs;
  }

  /** How long until the bucket is above zero again (0 if it is). */
  debtMs(now: number): number {
    this.refill(now);
    return this.level > 0 ? 0 : (-this.level + Number.EPSILON) / this.perMs;
  }

  charge(n: number, now: number): void {
    this.refill(now);
    this.level -= n;
  }

  get available(): number {
    return this.level;
  }
}

/** The delay suggested to a caller over its concurrent-streams limit: there is no way to know when a stream ends. */
export const STREAM_RETRY_MS = 1000;

interface KeyState {
  signature: string;
  requests?: TokenBucket;
  tokens?: TokenBucket;
}

export class QuotaEnforcer {
  private readonly states = new Map<string, KeyState>();
  /** Apart from the buckets, which are rebuilt when a key's limits change; open streams stay open. */
  private readonly streams = new Map<string, number>();

  constructor(private readonly now: () => number = () => performance.now()) {}

  private state(principal: Principal): KeyState {
    const { limits } = principal;
    const signature = `${limits.requestsPerSecond}/${limits.tokensPerMinute}`;
    let state = this.states.get(principal.id);
    if (!state || state.signature !== signature) {
      const now = this.now();
      state = {
        signature,
        requests: limits.requestsPerSecond
          ? new TokenBucket(Math.max(1, limits.requestsPerSecond), limits.requestsPerSecond / 1000, now)
          : undefined,
        tokens: limits.tokensPerMinute
          ? new TokenBucket(limits.tokensPerMinute, limits.tokensPerMinute / 60_000, now)
          : undefined,
      };
      this.states.set(principal.id, state);
    }
    return state;
  }

  /** Admits one request or throws RESOURCE_EXHAUSTED with the delay after which it would be admitted. */
  admit(principal: Principal): void {
    const { limits } = principal;
    if (!limits.requestsPerSecond && !limits.tokensPerMinute) return;
    const state = this.state(principal);
    const now = this.now();
    const tokenDelay = state.tokens?.debtMs(now) ?? 0;
    if (tokenDelay > 0) {
      throw resourceExhausted(
        `key '${principal.id}' is over its limit of ${limits.tokensPerMinute} tokens per minute`,
        tokenDelay,
      );
    }
    const requestDelay = state.requests?.take(1, now) ?? 0;
    if (requestDelay > 0) {
      throw resourceExhausted(
        `key '${principal.id}' is over its limit of ${limits.requestsPerSecond} requests per second`,
        requestDelay,
      );
    }
  }

  /** Takes the tokens a request used from the key's budget. */
  charge(principal: Principal, tokens: number): void {
    if (!principal.limits.tokensPerMinute || tokens <= 0) return;
    this.state(principal).tokens?.charge(tokens, this.now());
  }

  /** Opens a stream slot for the key; the returned function closes it (idempotent). */
  openStream(principal: Principal): () => void {
    const limit = principal.limits.concurrentStreams;
    if (!limit) return () => {};
    const id = principal.id;
    const current = this.streams.get(id) ?? 0;
    if (current >= limit) {
      throw resourceExhausted(
        `key '${id}' already has ${current} generation streams open (limit ${limit})`,
        STREAM_RETRY_MS,
      );
    }
    this.streams.set(id, current + 1);
    let open = true;
    return () => {
      if (open) {
        open = false;
        this.streams.set(id, (this.streams.get(id) ?? 1) - 1);
      }
    };
  }

  streamsOpen(id: string): number {
    return this.streams.get(id) ?? 0;
  }
}

export type { KeyLimits };
