import { Metadata, status } from '@grpc/grpc-js';
import { ConfigError, StatusError } from '@maas/shared';
import { writeFixtureRepository } from '@maas/models';
import { ModelCatalogue } from '../src/catalogue';
import { loadOrchestratorConfig } from '../src/config';
import { downstreamError, serviceConfig } from '../src/downstream/clients';
import { toGrpcTarget } from '../src/downstream/targets';
import { createLogger } from '@maas/shared';

describe('addresses', () => {
  it('keeps names and schemes, turns IP lists into static round-robin targets', () => {
    expect(toGrpcTarget('dns:///tokenizer-headless.maas.svc.cluster.local:50051')).toBe(
      'dns:///tokenizer-headless.maas.svc.cluster.local:50051',
    );
    expect(toGrpcTarget('tokenizer:50051')).toBe('tokenizer:50051');
    expect(toGrpcTarget('127.0.0.1:1, 127.0.0.1:2')).toBe('ipv4:127.0.0.1:1,127.0.0.1:2');
    expect(toGrpcTarget('localhost:1,10.0.0.2:2')).toBe('ipv4:127.0.0.1:1,10.0.0.2:2');
    expect(toGrpcTarget('[::1]:1,[fe80::1]:2')).toBe('ipv6:[::1]:1,[fe80::1]:2');
    expect(() => toGrpcTarget('a.svc:1,b.svc:2')).toThrow(/use one dns:\/\/\/ name/);
    expect(() => toGrpcTarget('127.0.0.1')).toThrow(/not host:port/);
  });
});

describe('config', () => {
  it('refuses to start without keys unless auth is explicitly disabled', () => {
    let error: ConfigError | undefined;
    try {
      loadOrchestratorConfig({});
    } catch (e) {
      error = e as ConfigError;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect(error!.message).toMatch(/API_KEYS_FILE: is required: .* or set AUTH_MODE=disabled/);
    const open = loadOrchestratorConfig({ AUTH_MODE: 'disabled' });
    expect(open).toMatchObject({
      GRPC_PORT: 50050,
      METRICS_PORT: 9090,
      TOKENIZER_ADDRESS: '127.0.0.1:50051',
    });
    expect(() => loadOrchestratorConfig({ AUTH_MODE: 'disabled', RUNNER_ADDRESS: 'a:1,b:2' })).toThrow(
      /RUNNER_ADDRESS: a list of addresses/,
    );
    expect(() => loadOrchestratorConfig({ AUTH_MODE: 'none' })).toThrow(/AUTH_MODE/);
  });
});

describe('downstream', () => {
  it('retries only idempotent methods, on UNAVAILABLE', () => {
    const config = JSON.parse(serviceConfig(4, [{ service: 's', method: 'Encode' }]));
    expect(config.loadBalancingConfig).toEqual([{ round_robin: {} }]);
    expect(config.methodConfig[0]).toMatchObject({
      name: [{ service: 's', method: 'Encode' }],
      retryPolicy: { maxAttempts: 4, retryableStatusCodes: ['UNAVAILABLE'] },
    });
    expect(JSON.parse(serviceConfig(1, [])).methodConfig).toEqual([]);
  });

  it('maps downstream statuses to what the caller should see', () => {
    const serviceError = (code: status, details: string, metadata = new Metadata()) =>
      Object.assign(new Error(details), { code, details, metadata });
    const mapped = (code: status, details = 'boom') =>
      downstreamError('tokenizer', serviceError(code, details)) as StatusError;
    expect(mapped(status.UNAVAILABLE, 'No connection established')).toMatchObject({
      code: status.UNAVAILABLE,
      message: 'tokenizer unavailable: No connection established',
    });
    expect(mapped(status.DEADLINE_EXCEEDED).code).toBe(status.DEADLINE_EXCEEDED);
    expect(mapped(status.INVALID_ARGUMENT, 'texts[3]: too long').message).toBe(
      'tokenizer: texts[3]: too long',
    );
    expect(mapped(status.NOT_FOUND).code).toBe(status.FAILED_PRECONDITION);
    expect(mapped(status.INTERNAL, 'internal error')).toMatchObject({
      code: status.INTERNAL,
      message: 'tokenizer failed: internal error',
    });
    const metadata = new Metadata();
    metadata.set('retry-after-ms', '50');
    const busy = downstreamError(
      'model-runner',
      serviceError(status.RESOURCE_EXHAUSTED, 'queue full', metadata),
    ) as StatusError;
    expect(busy.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(busy.metadata!.get('retry-after-ms')).toEqual(['50']);
  });
});

describe('catalogue', () => {
  it('describes the repository models and says why one cannot be served', () => {
    const repo = writeFixtureRepository(undefined, { broken: true, tokenizers: 'tiny' });
    const catalogue = new ModelCatalogue({
      root: repo.root,
      maxInputCharacters: 1000,
      logger: createLogger({ service: 'test', level: 'silent' }),
    });
    catalogue.refresh();
    expect(catalogue.list().map((m) => m.name)).toEqual(['bert-classifier', 'sentence-encoder', 'tiny-gpt2']);
    const bert = catalogue.get('bert-classifier')!;
    expect(bert).toMatchObject({ task: 'classification', output: 'logits', versions: ['1'] });
    expect(bert.inputs.map((i) => i.name)).toEqual(['input_ids', 'attention_mask', 'token_type_ids']);
    expect(bert.labelsByVersion.get('1')).toEqual(repo.labels);
    expect(catalogue.get('sentence-encoder')!.dimensions).toBe(32);
    expect(catalogue.get('tiny-gpt2')!.tokenizer).toMatchObject({
      addSpecialTokens: false,
      paddingSide: 'left',
    });
    expect(catalogue.problem('broken-onnx')).toMatch(/task "raw" has no public API/);
    expect(catalogue.problem('broken-config')).toMatch(/input 'ids' \(INT64\) cannot be filled/);
  });
});
