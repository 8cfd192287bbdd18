/**
 * API keys: loaded from a JSON or YAML file (how a Kubernetes Secret is
 * mounted), kept only as SHA-256 digests, and matched in constant time, so
 * neither the file's plaintext keys nor timing reveal a key.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { status } from '@grpc/grpc-js';
import { MAX_GENERATION_PRIORITY, MIN_GENERATION_PRIORITY, StatusError } from '@maas/shared';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';

export interface KeyLimits {
  requestsPerSecond?: number;
  tokensPerMinute?: number;
  concurrentStreams?: number;
}

/** Who is calling: a key from the file, or everyone when auth is disabled. */
export interface Principal {
  id: string;
  /** `'*'` for every model. */
  models: '*' | ReadonlySet<string>;
  limits: KeyLimits;
  /** The generation priority of this key's streams that set none (lower is admitted first); 0 when unset. */
  priority?: number;
}

interface StoredKey extends Principal {
  digest: Buffer;
}

const limitsSchema = z
  .object({
    requests_per_second: z.number().positive().optional(),
    tokens_per_minute: z.number().int().positive().optional(),
    concurrent_streams: z.number().int().positive().optional(),
  })
  .strict();

const keySchema = z
  .object({
    id: z.string().regex(/^[A-Za-z0-9._:@-]{1,64}$/, 'must be 1-64 of A-Z a-z 0-9 . _ : @ -'),
    /** Plaintext; hashed at load and dropped. */
    key: z.string().min(16, 'must be at least 16 characters').optional(),
    key_sha256: z
      .string()
      .regex(/^[0-9a-fA-F]{64}$/, 'must be 64 hex digits')
      .optional(),
    models: z.array(z.string().min(1)).min(1).default(['*']),
    limits: limitsSchema.default({}),
    /** Default Generate priority of the key's streams: lower is admitted first (e.g. -10 interactive, 10 batch). */
    priority: z.number().int().min(MIN_GENERATION_PRIORITY).max(MAX_GENERATION_PRIORITY).optional(),
  })
  .strict()
  .refine((k) => (k.key === undefined) !== (k.key_sha256 === undefined), {
    message: 'needs exactly one of key and key_sha256',
  });

/** A list of keys, or `{ keys: [...] }`. */
const listSchema = z.array(keySchema);
const objectSchema = z.object({ keys: listSchema }).strict();

export const sha256 = (text: string): Buffer => createHash('sha256').update(text, 'utf8').digest();

/** Parses a keys file. Error messages name the entry and field, never a key's value. */
export function parseKeysFile(text: string, source: string): StoredKey[] {
  let raw: unknown;
  try {
    raw = source.endsWith('.json') ? JSON.parse(text) : parseYaml(text);
  } catch {
    // The parser's message may quote the offending line, which may be a key.
    throw new Error(`${source}: not valid ${source.endsWith('.json') ? 'JSON' : 'YAML'}`);
  }
  const parsed = Array.isArray(raw) ? listSchema.safeParse(raw) : objectSchema.safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`);
    throw new Error(`${source}: ${issues.join('; ')}`);
  }
  const entries = Array.isArray(parsed.data) ? parsed.data : parsed.data.keys;
  const ids = new Set<string>();
  const digests = new Set<string>();
  return entries.map((entry, i) => {
    if (ids.has(entry.id)) throw new Error(`${source}: [${i}].id: '${entry.id}' is used twice`);
    ids.add(entry.id);
    const digest = entry.key !== undefined ? sha256(entry.key) : Buffer.from(entry.key_sha256!, 'hex');
    if (digests.has(digest.toString('hex')))
      throw new Error(`${source}: [${i}]: the same key is listed twice`);
    digests.add(digest.toString('hex'));
    return {
      id: entry.id,
      digest,
      models: entry.models.includes('*') ? '*' : new Set(entry.models),
      limits: {
        requestsPerSecond: entry.limits.requests_per_second,
        tokensPerMinute: entry.limits.tokens_per_minute,
        concurrentStreams: entry.limits.concurrent_streams,
      },
      ...(entry.priority !== undefined ? { priority: entry.priority } : {}),
    };
  });
}

const unauthenticated = (why: string) => new StatusError(status.UNAUTHENTICATED, why);

/**
 * The bearer token in an `authorization` header value (gRPC metadata or HTTP
 * header: the same scheme on both transports), or an UNAUTHENTICATED error
 * saying what is wrong with it.
 */
export function bearerToken(authorization: string | undefined): string {
  if (authorization === undefined || authorization === '')
    throw unauthenticated('missing API key: send "authorization: Bearer <key>"');
  const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
  if (!match) throw unauthenticated('malformed authorization header: expected "Bearer <key>"');
  return match[1]!;
}

export interface Authenticator {
  /** `authorization` is the caller's header value, undefined when it sent none. */
  authenticate(authorization: string | undefined): Principal;
  readonly keyCount: number;
}

export const ANONYMOUS: Principal = { id: 'anonymous', models: '*', limits: {} };

/** AUTH_MODE=disabled: every caller is the anonymous principal with no limits. */
export const openAccess: Authenticator = { authenticate: () => ANONYMOUS, keyCount: 0 };

export class ApiKeyStore implements Authenticator {
  private keys: StoredKey[];

  constructor(keys: StoredKey[]) {
    this.keys = keys;
  }

  static fromFile(path: string): ApiKeyStore {
    return new ApiKeyStore(parseKeysFile(readFileSync(path, 'utf8'), path));
  }

  get keyCount(): number {
    return this.keys.length;
  }

  /** Swaps in a new key set (file re-read after a Secret rotation). */
  replace(keys: StoredKey[]): void {
    this.keys = keys;
  }

  authenticate(authorization: string | undefined): Principal {
    const digest = sha256(bearerToken(authorization));
    // Every stored digest is compared, matched or not, so the time taken says nothing about which key matched.
    let found: StoredKey | undefined;
    for (const key of this.keys) {
      if (timingSafeEqual(digest, key.digest) && !found) found = key;
    }
    if (!found) throw unauthenticated('invalid API key');
    return found;
  }
}

export function mayUse(principal: Principal, model: string): boolean {
  return principal.models === '*' || principal.models.has(model);
}
