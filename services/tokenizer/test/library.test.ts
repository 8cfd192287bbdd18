/**
 * In process: what the service builds in JavaScript for speed (masks and type
 * ids from the post-processor's layout, padding, merged library calls) equals
 * what the Rust library itself returns.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer as RustTokenizer } from '@anush008/tokenizers';
import { defaultRepositoryPath } from '@maas/shared';
import { prepareParityTokenizers } from '@maas/models';
import { Coalescer } from '../src/coalescer';
import { HuggingFaceTokenizer } from '../src/huggingface-tokenizer';
import { CORPUS } from './corpus';

const files: Record<string, string> = {
  ...prepareParityTokenizers(),
  'glove-embed': join(defaultRepositoryPath(), 'glove-embed', '1', 'tokenizer.json'),
};

describe.each(Object.keys(files))('%s', (name) => {
  let ours: HuggingFaceTokenizer;
  let library: RustTokenizer;
  beforeAll(async () => {
    ours = await HuggingFaceTokenizer.load({ name, path: files[name]! });
    library = RustTokenizer.fromString(readFileSync(files[name]!, 'utf8'));
  });

  it.each([true, false])(
    'single texts (special tokens: %s) and padding match the library',
    async (addSpecialTokens) => {
      for (const side of ['right', 'left'] as const) {
        const encodings = await ours.encodeBatch(CORPUS, undefined, {
          addSpecialTokens,
          offsets: true,
          tokens: true,
          padding: { strategy: 'longest', length: 0, side, padToMultipleOf: 8 },
        });
        const expected = await library.encodeBatch(CORPUS, { addSpecialTokens });
        const target = encodings[0]!.ids.length;
        expected.forEach((e, i) => {
          const padToken = encodings[i]!.tokens.at(side === 'left' ? 0 : -1)!;
          const padId = encodings[i]!.ids.at(side === 'left' ? 0 : -1)!;
          if (e.getLength() < target) e.pad(target, { direction: side, padId, padToken, padTypeId: 0 });
          expect({ text: CORPUS[i], ...encodings[i]!, length: 0 }).toEqual({
            text: CORPUS[i],
            ids: e.getIds(),
            attentionMask: e.getAttentionMask(),
            typeIds: e.getTypeIds(),
            specialTokensMask: e.getSpecialTokensMask(),
            offsets: expect.any(Array),
            tokens: e.getTokens(),
            length: 0,
            truncated: false,
          });
        });
      }
    },
  );

  it('gives each of many concurrent calls its own results', async () => {
    const options = { addSpecialTokens: true, offsets: false, tokens: false };
    const alone = await Promise.all(
      CORPUS.map(async (text) => (await ours.encodeBatch([text], undefined, options))[0]!.ids),
    );
    const together = await Promise.all(
      CORPUS.map(async (text) => (await ours.encodeBatch([text], undefined, options))[0]!.ids),
    );
    expect(together).toEqual(alone);
    const decoded = await Promise.all(
      alone.map((ids) => ours.decodeBatch([ids], { skipSpecialTokens: false })),
    );
    expect(decoded.map(([text]) => text)).toEqual(await library.decodeBatch(alone, false));
  });
});

describe('Coalescer', () => {
  it('merges calls that arrive while one is running, and keeps one bad request from failing the rest', async () => {
    const calls: string[][] = [];
    const coalescer = new Coalescer<string, string, string>(async (key, items) => {
      calls.push(items);
      await new Promise((r) => setTimeout(r, 5));
      if (items.includes('bad')) throw new Error('bad input');
      return items.map((item) => `${key}:${item}`);
    });
    const results = await Promise.allSettled([
      coalescer.run('k', ['a']),
      coalescer.run('k', ['b', 'c']),
      coalescer.run('k', ['bad']),
      coalescer.run('other', ['d']),
      coalescer.run('k', ['e']),
    ]);
    expect(results.map((r) => (r.status === 'fulfilled' ? r.value : (r.reason as Error).message))).toEqual([
      ['k:a'],
      ['k:b', 'k:c'],
      'bad input',
      ['other:d'],
      ['k:e'],
    ]);
    // The first call went alone; the three "k" calls queued behind it were merged (then retried alone).
    expect(calls[0]).toEqual(['a']);
    expect(calls[1]).toEqual(['b', 'c', 'bad', 'e']);
  });
});
