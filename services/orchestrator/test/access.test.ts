import { status } from '@grpc/grpc-js';
import { decodeRetryDelayMs, StatusError } from '@maas/shared';
import { ApiKeyStore, bearerToken, mayUse, parseKeysFile, sha256 } from '../src/access/api-keys';
import { QuotaEnforcer, TokenBucket } from '../src/access/limits';
import { createUsageMetrics, UsageMeter } from '../src/metering';
import { Registry } from 'prom-client';
import { capturingLogger } from './helpers';

const thrown = (fn: () => unknown): StatusError => {
  try {
    fn();
  } catch (error) {
    return error as StatusError;
  }
  throw new Error('expected a throw');
};

describe('API keys file', () => {
  const secret = 'plaintext-secret-key-0001';
  const yaml = `
- id: app
  key: ${secret}
  models: [lang-id, glove-embed]
  limits: { requests_per_second: 5, tokens_per_minute: 1000, concurrent_streams: 2 }
  priority: -10
- id: ops
  key_sha256: ${sha256('another-secret-key-0002').toString('hex').toUpperCase()}
`;

  it('reads YAML and JSON, hashes plaintext keys, and keeps models and limits', () => {
    const keys = parseKeysFile(yaml, 'keys.yaml');
    expect(keys.map((k) => k.id)).toEqual(['app', 'ops']);
    expect(keys[0]!.digest.equals(sha256(secret))).toBe(true);
    expect(JSON.stringify(keys)).not.toContain(secret);
    expect(keys[0]!.limits).toEqual({ requestsPerSecond: 5, tokensPerMinute: 1000, concurrentStreams: 2 });
    expect(keys[1]!.models).toBe('*');
    expect([keys[0]!.priority, keys[1]!.priority]).toEqual([-10, undefined]);
    const json = parseKeysFile(JSON.stringify({ keys: [{ id: 'j', key: secret, models: ['*'] }] }), 'k.json');
    expect(json[0]!.models).toBe('*');
  });

  it('fails naming the entry and field, never echoing a key', () => {
    const bad = (text: string, source = 'keys.yaml') => {
      try {
        parseKeysFile(text, source);
      } catch (error) {
        return (error as Error).message;
      }
      throw new Error('expected a failure');
    };
    expect(bad('- id: a\n  key: short')).toMatch(/keys.yaml: 0.key: must be at least 16 characters/);
    expect(bad('- id: a')).toMatch(/0: needs exactly one of key and key_sha256/);
    expect(bad(`- id: a\n  key: ${secret}\n  priority: 101`)).toMatch(/keys.yaml: 0.priority: .*100/);
    expect(bad(`- id: a\n  key: ${secret}\n  priority: 1.5`)).toMatch(/keys.yaml: 0.priority: /);
    expect(bad(`- id: a\n  key: ${secret}\n  key_sha256: ${'a'.repeat(64)}`)).toMatch(/exactly one/);
    expect(bad(`- id: a\n  key: ${secret}\n- id: a\n  key: other-secret-key-000003`)).toMatch(
      /'a' is used twice/,
    );
    expect(bad(`- id: a\n  key: ${secret}\n- id: b\n  key: ${secret}`)).toMatch(
      /the same key is listed twice/,
    );
    expect(bad(`- id: a\n  key: ${secret}\n  limits: { requests_per_minute: 3 }`)).toMatch(/0.limits/);
    const broken = bad(`{"keys": [{"id": "a", "key": "${secret}"`, 'keys.json');
    expect(broken).toBe('keys.json: not valid JSON');
    expect(broken).not.toContain(secret);
  });

  it('authenticates bearer keys; missing, malformed and unknown keys are UNAUTHENTICATED', () => {
    const store = new ApiKeyStore(parseKeysFile(yaml, 'keys.yaml'));
    expect(store.authenticate(`Bearer ${secret}`).id).toBe('app');
    expect(store.authenticate('bearer another-secret-key-0002').id).toBe('ops');
    for (const [authorization, message] of [
      [undefined, /missing API key/],
      [secret, /malformed authorization header/],
      ['Bearer wrong-key-0000000000', /^invalid API key$/],
    ] as const) {
      const error = thrown(() => store.authenticate(authorization));
      expect(error.code).toBe(status.UNAUTHENTICATED);
      expect(error.message).toMatch(message);
    }
    expect(bearerToken('Bearer  abc ')).toBe('abc');
  });

  it('says which models a key may use', () => {
    const [app, ops] = parseKeysFile(yaml, 'keys.yaml');
    expect(mayUse(app!, 'lang-id')).toBe(true);
    expect(mayUse(app!, 'austen-gpt')).toBe(false);
    expect(mayUse(ops!, 'anything')).toBe(true);
  });
});

describe('quotas', () => {
  let now = 0;
  const clock = () => now;
  const principal = (limits: object, id = 'k') => ({ id, models: '*' as const, limits });

  it('token bucket: takes, refills, reports the wait, and carries debt', () => {
    const bucket = new TokenBucket(2, 0.001, 0);
    expect(bucket.take(1, 0)).toBe(0);
    expect(bucket.take(1, 0)).toBe(0);
    expect(bucket.take(1, 0)).toBeCloseTo(1000);
    expect(bucket.take(1, 500)).toBeCloseTo(500);
    expect(bucket.take(1, 1000)).toBe(0);
    bucket.charge(10, 1000);
    expect(bucket.debtMs(1000)).toBeCloseTo(10_000);
    expect(bucket.debtMs(11_001)).toBe(0);
  });

  it('requests per second: RESOURCE_EXHAUSTED with RetryInfo once the burst is spent', () => {
    now = 0;
    const quotas = new QuotaEnforcer(clock);
    const key = principal({ requestsPerSecond: 4 });
    for (let i = 0; i < 4; i++) quotas.admit(key);
    const error = thrown(() => quotas.admit(key));
    expect(error.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(decodeRetryDelayMs(error.metadata!)).toBe(250);
    expect(error.metadata!.get('retry-after-ms')).toEqual(['250']);
    now = 250;
    expect(() => quotas.admit(key)).not.toThrow();
  });

  it('tokens per minute: charged after the fact; the key waits until its debt is repaid', () => {
    now = 0;
    const quotas = new QuotaEnforcer(clock);
    const key = principal({ tokensPerMinute: 600 });
    quotas.admit(key);
    quotas.charge(key, 660);
    const error = thrown(() => quotas.admit(key));
    expect(error.message).toMatch(/600 tokens per minute/);
    expect(decodeRetryDelayMs(error.metadata!)).toBe(6000);
    now = 6001;
    expect(() => quotas.admit(key)).not.toThrow();
  });

  it('concurrent streams: a slot per stream, given back once', () => {
    const quotas = new QuotaEnforcer(clock);
    const key = principal({ concurrentStreams: 1 });
    const close = quotas.openStream(key);
    expect(thrown(() => quotas.openStream(key)).code).toBe(status.RESOURCE_EXHAUSTED);
    close();
    close();
    expect(quotas.streamsOpen('k')).toBe(0);
    quotas.openStream(key);
    expect(quotas.streamsOpen('k')).toBe(1);
  });

  it('keys without limits are never refused', () => {
    const quotas = new QuotaEnforcer(clock);
    const key = principal({});
    for (let i = 0; i < 1000; i++) quotas.admit(key);
    quotas.charge(key, 1e9);
    expect(() => quotas.admit(key)).not.toThrow();
  });
});

describe('audit log', () => {
  it('bounds every field a caller controls: a 1 MB name or text does not make a 1 MB line', () => {
    const { logger, lines } = capturingLogger('orchestrator');
    const meter = new UsageMeter(createUsageMetrics(new Registry()), logger, true);
    const huge = 'x'.repeat(1 << 20);
    meter.record({
      keyId: 'app',
      model: '',
      task: 'classification',
      code: status.NOT_FOUND,
      promptTokens: 0,
      generatedTokens: 0,
      durationMs: 1,
      texts: Array.from({ length: 1000 }, () => huge),
      error: `model: model '${huge}' not found`,
    });
    const [line] = lines();
    expect(JSON.stringify(line).length).toBeLessThan(32 * 1024);
    expect(line!.error).toMatch(/^model: model 'xxx.*… \(\d+ characters\)$/);
    expect((line!.texts as string[]).at(-1)).toBe('… (1000 texts)');
  });
});
