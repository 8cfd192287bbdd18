/** The service as a whole: limits and bad input, listing, reload while serving, health, metrics. */
import { cpSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { checkHealth, metricValue, scrapeMetrics } from '@maas/shared/testing';
import { type ListTokenizersResponse, TokenizerKind } from '@maas/shared/gen/maas/tokenizer/v1/tokenizer';
import { ODD_TEXTS } from './corpus';
import { call, eventually, failure, startTestTokenizer, type TestTokenizerService } from './helpers';

let t: TestTokenizerService;
beforeAll(async () => {
  t = await startTestTokenizer({
    TOKENIZER_MAX_TEXT_CHARS: '20000',
    TOKENIZER_MAX_BATCH: '8',
    TOKENIZER_MAX_REQUEST_CHARS: '50000',
    TOKENIZER_WATCH: 'true',
  });
});
afterAll(async () => {
  await t?.close();
});

const list = async () =>
  (await call<unknown, ListTokenizersResponse>(t.client, 'listTokenizers', {})).tokenizers;

describe('bad input', () => {
  it('unknown tokenizer → NOT_FOUND; no tokenizer named → INVALID_ARGUMENT', async () => {
    const unknown = await failure(t.encode({ tokenizer: 'nope', texts: ['x'] }));
    expect(unknown.code).toBe(status.NOT_FOUND);
    expect(unknown.details).toBe("tokenizer 'nope' not found");
    const unnamed = await failure(t.encode({ tokenizer: '', texts: ['x'] }));
    expect([unnamed.code, unnamed.details]).toEqual([status.INVALID_ARGUMENT, 'tokenizer: is required']);
  });

  it('limits → INVALID_ARGUMENT naming the limit and the index', async () => {
    const tooLong = await failure(t.encode({ tokenizer: 'gpt2', texts: ['a', 'b', 'c', 'x'.repeat(20001)] }));
    expect([tooLong.code, tooLong.details]).toEqual([
      status.INVALID_ARGUMENT,
      'texts[3]: 20001 characters exceeds TOKENIZER_MAX_TEXT_CHARS=20000',
    ]);
    const tooMany = await failure(t.encode({ tokenizer: 'gpt2', texts: Array(9).fill('a') }));
    expect(tooMany.details).toBe('texts: 9 texts exceed TOKENIZER_MAX_BATCH=8');
    const tooMuch = await failure(t.encode({ tokenizer: 'gpt2', texts: Array(3).fill('y'.repeat(19000)) }));
    expect(tooMuch.details).toBe(
      'texts[2]: brings the request to 57000 characters, over TOKENIZER_MAX_REQUEST_CHARS=50000',
    );
    const pairsCount = await failure(
      t.encode({ tokenizer: 'gpt2', texts: ['a'], textPairs: ['z'.repeat(20001)] }),
    );
    expect(pairsCount.details).toMatch(/^text_pairs\[0\]: 20001 characters/);
    const counted = await failure(
      call(t.client, 'countTokens', { tokenizer: 'gpt2', texts: ['a', 'x'.repeat(20001)] }),
    );
    expect(counted.details).toMatch(/^texts\[1\]: 20001 characters exceeds TOKENIZER_MAX_TEXT_CHARS/);
  });

  it('text_pairs must match texts; fastText takes no pairs', async () => {
    const mismatch = await failure(t.encode({ tokenizer: 'gpt2', texts: ['a', 'b'], textPairs: ['x'] }));
    expect([mismatch.code, mismatch.details]).toEqual([
      status.INVALID_ARGUMENT,
      'text_pairs: has 1 entries but texts has 2',
    ]);
    const fastText = await failure(t.encode({ tokenizer: 'lang-id', texts: ['a'], textPairs: ['x'] }));
    expect(fastText.code).toBe(status.INVALID_ARGUMENT);
    expect(fastText.details).toMatch(/^text_pairs: /);
  });

  it('odd Unicode from clients crashes nothing, and other callers are unaffected', async () => {
    const concurrent = Array.from({ length: 20 }, () =>
      t.encode({ tokenizer: 'gpt2', texts: ['unaffected'] }),
    );
    for (const tokenizer of ['gpt2', 'bert-base-uncased', 'unigram', 'lang-id', 'glove-embed']) {
      const response = await t.encode({
        tokenizer,
        texts: ODD_TEXTS,
        returnOffsets: true,
        returnTokens: true,
      });
      expect(response.encodings).toHaveLength(ODD_TEXTS.length);
      response.encodings.forEach((e, i) => {
        // Lone surrogates arrive as U+FFFD (protobuf strings are UTF-8), so lengths are the same.
        for (const o of e.offsets) expect(o.end).toBeLessThanOrEqual(ODD_TEXTS[i]!.length);
      });
      const decoded = await call<unknown, { texts: string[] }>(t.client, 'decode', {
        tokenizer,
        sequences: response.encodings.map((e) => ({ ids: e.ids })),
      });
      expect(decoded.texts).toHaveLength(ODD_TEXTS.length);
    }
    for (const response of await Promise.all(concurrent))
      expect(response.encodings[0]!.ids).toEqual([403, 43958]);
  });
});

describe('ListTokenizers', () => {
  it('lists every tokenizer sorted, with kind, vocabulary size, source, special tokens and limit', async () => {
    const tokenizers = await list();
    expect(tokenizers.map((x) => x.name)).toEqual([...tokenizers.map((x) => x.name)].sort());
    const byName = new Map(tokenizers.map((x) => [x.name, x]));
    expect(byName.get('gpt2')).toMatchObject({
      kind: TokenizerKind.TOKENIZER_KIND_BPE,
      vocabSize: 50257,
      source: t.files.gpt2,
      modelMaxLength: 1024,
      specialTokens: { bos: '<|endoftext|>', eos: '<|endoftext|>', unk: '<|endoftext|>' },
    });
    expect(byName.get('bert-base-uncased')).toMatchObject({
      kind: TokenizerKind.TOKENIZER_KIND_WORDPIECE,
      vocabSize: 30522,
      modelMaxLength: 512,
      specialTokens: { cls: '[CLS]', sep: '[SEP]', pad: '[PAD]', unk: '[UNK]', mask: '[MASK]' },
    });
    expect(byName.get('unigram')).toMatchObject({
      kind: TokenizerKind.TOKENIZER_KIND_UNIGRAM,
      vocabSize: 8000,
    });
    expect(byName.get('glove-embed')).toMatchObject({
      kind: TokenizerKind.TOKENIZER_KIND_WORDLEVEL,
      modelMaxLength: 4096,
      specialTokens: { pad: '[PAD]', unk: '[UNK]' },
    });
    expect(byName.get('glove-embed')!.source).toMatch(/repository\/glove-embed\/1\/tokenizer\.json$/);
    expect(byName.get('lang-id')).toMatchObject({
      kind: TokenizerKind.TOKENIZER_KIND_FASTTEXT,
      specialTokens: { eos: '</s>' },
    });
    // lid.176 is pruned: its words plus the n-gram buckets it kept.
    expect(byName.get('lang-id')!.vocabSize).toBeGreaterThan(10_000);
  });
});

describe('reload', () => {
  it('serves a tokenizer folder added at run time (file watch) while a batch of calls keeps succeeding', async () => {
    let stop = false;
    let succeeded = 0;
    const traffic = (async () => {
      while (!stop) {
        const results = await Promise.all(
          Array.from({ length: 8 }, () =>
            t.encode({ tokenizer: 'gpt2', texts: ['steady traffic', 'and more'] }),
          ),
        );
        for (const r of results) expect(r.encodings[1]!.ids).toEqual([392, 517]);
        succeeded += results.length;
      }
    })();
    const dir = join(t.extraDir, 'late');
    mkdirSync(dir);
    cpSync(t.files.gpt2, join(dir, 'tokenizer.json'));
    await eventually(async () => (await list()).some((x) => x.name === 'late'));
    expect((await t.encode({ tokenizer: 'late', texts: ['hi'] })).encodings[0]!.ids).toEqual([5303]);
    // And removes it when the folder goes.
    rmSync(dir, { recursive: true });
    await eventually(async () => !(await list()).some((x) => x.name === 'late'));
    stop = true;
    await traffic;
    expect(succeeded).toBeGreaterThan(0);
  });

  it('leaves a broken tokenizer out, logs and counts it, and keeps the others serving', async () => {
    writeFileSync(join(t.extraDir, 'broken.json'), '{"model": {"type": "BPE", "vocab": 42');
    await t.service.registry.reload();
    expect((await list()).map((x) => x.name)).not.toContain('broken');
    expect((await failure(t.encode({ tokenizer: 'broken', texts: ['x'] }))).code).toBe(status.NOT_FOUND);
    expect(
      (await t.encode({ tokenizer: 'bert-base-uncased', texts: ['still fine'] })).encodings,
    ).toHaveLength(1);
    const scrape = await scrapeMetrics(t.service.metricsPort!);
    expect(metricValue(scrape, 'maas_tokenizer_load_failures_total', { tokenizer: 'broken' })).toBe(1);
    expect(metricValue(scrape, 'maas_tokenizer_reloads_total', { result: 'error' })).toBeGreaterThanOrEqual(
      1,
    );
    rmSync(join(t.extraDir, 'broken.json'));
  });
});

describe('health and metrics', () => {
  it('is SERVING with tokenizers loaded and exports per-tokenizer counters and sub-millisecond histograms', async () => {
    expect(await checkHealth(t.address)).toBe('SERVING');
    await t.encode({ tokenizer: 'bert-base-uncased', texts: ['count me', 'and me'] });
    const scrape = await scrapeMetrics(t.service.metricsPort!);
    const labels = { tokenizer: 'bert-base-uncased', operation: 'encode' };
    expect(metricValue(scrape, 'maas_tokenizer_texts_total', labels)).toBeGreaterThanOrEqual(2);
    expect(metricValue(scrape, 'maas_tokenizer_tokens_total', labels)).toBeGreaterThanOrEqual(8);
    expect(scrape).toContain(
      'maas_tokenizer_duration_seconds_bucket{le="0.0001",tokenizer="bert-base-uncased",operation="encode"}',
    );
    expect(metricValue(scrape, 'maas_tokenizer_loaded')).toBe((await list()).length);
    expect(
      metricValue(scrape, 'grpc_server_handled_total', { grpc_method: 'Encode', grpc_code: 'OK' }),
    ).toBeGreaterThan(0);
  });

  it('is NOT_SERVING until a tokenizer is loaded', async () => {
    const empty = await startTestTokenizer(
      { MODEL_REPOSITORY: join(t.extraDir, 'no-repository'), TOKENIZER_WATCH: 'true' },
      { parity: false },
    );
    try {
      expect(await checkHealth(empty.address)).toBe('NOT_SERVING');
      expect((await failure(empty.encode({ tokenizer: 'gpt2', texts: ['x'] }))).code).toBe(status.NOT_FOUND);
      mkdirSync(join(empty.extraDir, 'gpt2'));
      cpSync(t.files.gpt2, join(empty.extraDir, 'gpt2', 'tokenizer.json'));
      await eventually(async () => (await checkHealth(empty.address)) === 'SERVING');
      expect((await empty.encode({ tokenizer: 'gpt2', texts: ['hi'] })).encodings[0]!.ids).toEqual([5303]);
    } finally {
      await empty.close();
    }
  });
});
