/** Encode and CountTokens through a real server: special tokens, pairs, truncation, padding, offsets. */
import { status } from '@grpc/grpc-js';
import {
  type CountTokensResponse,
  PaddingSide,
  PaddingStrategy,
  type Truncation,
  TruncationSide,
  TruncationStrategy,
} from '@maas/shared/gen/maas/tokenizer/v1/tokenizer';
import { CORPUS } from './corpus';
import { call, failure, startTestTokenizer, type TestTokenizerService } from './helpers';

let t: TestTokenizerService;
beforeAll(async () => {
  t = await startTestTokenizer();
});
afterAll(async () => {
  await t?.close();
});

const truncation = (
  maxLength: number,
  strategy: TruncationStrategy,
  side = TruncationSide.TRUNCATION_SIDE_RIGHT,
): Truncation => ({
  maxLength,
  strategy,
  side,
  stride: 0,
});
const { TRUNCATION_STRATEGY_LONGEST_FIRST: LONGEST_FIRST, TRUNCATION_STRATEGY_ONLY_FIRST: ONLY_FIRST } =
  TruncationStrategy;

describe('special tokens and pairs', () => {
  it('adds or skips special tokens, with a mask that marks them', async () => {
    const withSpecial = await t.encode({ tokenizer: 'bert-base-uncased', texts: ['hello world'] });
    expect(withSpecial.encodings[0]).toMatchObject({
      ids: [101, 7592, 2088, 102],
      specialTokensMask: [1, 0, 0, 1],
      attentionMask: [1, 1, 1, 1],
      typeIds: [0, 0, 0, 0],
      length: 4,
      truncated: false,
    });
    const without = await t.encode({
      tokenizer: 'bert-base-uncased',
      texts: ['hello world'],
      addSpecialTokens: false,
    });
    expect(without.encodings[0]!.ids).toEqual([7592, 2088]);
  });

  it('encodes pairs with type ids and offsets into each text (UTF-16, emoji included)', async () => {
    const first = 'Hello 🙂 there';
    const second = '🚀 world 🚀';
    const pair = await t.encode({
      tokenizer: 'bert-base-uncased',
      texts: [first],
      textPairs: [second],
      returnOffsets: true,
      returnTokens: true,
    });
    const e = pair.encodings[0]!;
    expect(e.tokens).toEqual([
      '[CLS]',
      'hello',
      '[UNK]',
      'there',
      '[SEP]',
      '[UNK]',
      'world',
      '[UNK]',
      '[SEP]',
    ]);
    expect(e.typeIds).toEqual([0, 0, 0, 0, 0, 1, 1, 1, 1]);
    const spans = e.offsets.map((o, i) => (e.typeIds[i] === 0 ? first : second).slice(o.start, o.end));
    expect(spans).toEqual(['', 'Hello', '🙂', 'there', '', '🚀', 'world', '🚀', '']);
  });

  it('gives token strings and byte-level offsets that split nothing', async () => {
    const text = 'Emoji 🙂 then wörld';
    const e = (await t.encode({ tokenizer: 'gpt2', texts: [text], returnOffsets: true, returnTokens: true }))
      .encodings[0]!;
    expect(e.tokens).toHaveLength(e.ids.length);
    expect(e.tokens.slice(-3)).toEqual(['Ġw', 'Ã¶r', 'ld']);
    const spans = e.offsets.map((o) => text.slice(o.start, o.end));
    expect(spans.join('')).toBe(text);
    expect(spans).toContain(' 🙂');
  });
});

describe('truncation', () => {
  const text = 'one two three four five six seven';

  it('cuts on the right or the left, keeping room for special tokens', async () => {
    const right = await t.encode({
      tokenizer: 'bert-base-uncased',
      texts: [text, 'short'],
      truncation: truncation(5, LONGEST_FIRST),
      returnTokens: true,
    });
    expect(right.encodings[0]!.tokens).toEqual(['[CLS]', 'one', 'two', 'three', '[SEP]']);
    expect(right.encodings[0]!.truncated).toBe(true);
    expect(right.encodings[1]!.truncated).toBe(false);
    const left = await t.encode({
      tokenizer: 'bert-base-uncased',
      texts: [text],
      truncation: truncation(5, LONGEST_FIRST, TruncationSide.TRUNCATION_SIDE_LEFT),
      returnTokens: true,
    });
    expect(left.encodings[0]!.tokens).toEqual(['[CLS]', 'five', 'six', 'seven', '[SEP]']);
    const gpt2Left = await t.encode({
      tokenizer: 'gpt2',
      texts: [text],
      truncation: truncation(2, ONLY_FIRST, TruncationSide.TRUNCATION_SIDE_LEFT),
      returnTokens: true,
    });
    expect(gpt2Left.encodings[0]!.tokens).toEqual(['Ġsix', 'Ġseven']);
  });

  it('follows the strategy on pairs (longest first evens out, only first/second cut one side)', async () => {
    const pair = (strategy: TruncationStrategy, maxLength: number) =>
      t.encode({
        tokenizer: 'bert-base-uncased',
        texts: ['a b c d e f'],
        textPairs: ['x y z'],
        truncation: truncation(maxLength, strategy),
        returnTokens: true,
      });
    expect((await pair(LONGEST_FIRST, 9)).encodings[0]!.tokens).toEqual([
      '[CLS]',
      'a',
      'b',
      'c',
      '[SEP]',
      'x',
      'y',
      'z',
      '[SEP]',
    ]);
    expect((await pair(LONGEST_FIRST, 7)).encodings[0]!.tokens).toEqual([
      '[CLS]',
      'a',
      'b',
      '[SEP]',
      'x',
      'y',
      '[SEP]',
    ]);
    expect((await pair(ONLY_FIRST, 8)).encodings[0]!.tokens).toEqual([
      '[CLS]',
      'a',
      'b',
      '[SEP]',
      'x',
      'y',
      'z',
      '[SEP]',
    ]);
    expect((await pair(TruncationStrategy.TRUNCATION_STRATEGY_ONLY_SECOND, 10)).encodings[0]!.tokens).toEqual(
      ['[CLS]', 'a', 'b', 'c', 'd', 'e', 'f', '[SEP]', 'x', '[SEP]'],
    );
    const tooShort = await failure(pair(TruncationStrategy.TRUNCATION_STRATEGY_ONLY_SECOND, 6));
    expect(tooShort.code).toBe(status.INVALID_ARGUMENT);
    expect(tooShort.details).toMatch(/^texts\[0\]: the second sequence \(3 tokens\) is too short/);
  });

  it('without a strategy refuses inputs over max_length, naming the text', async () => {
    const ok = await t.encode({
      tokenizer: 'bert-base-uncased',
      texts: ['short'],
      truncation: truncation(8, TruncationStrategy.TRUNCATION_STRATEGY_UNSPECIFIED),
    });
    expect(ok.encodings[0]!.length).toBe(3);
    const error = await failure(
      t.encode({
        tokenizer: 'bert-base-uncased',
        texts: ['short', text],
        truncation: truncation(8, TruncationStrategy.TRUNCATION_STRATEGY_UNSPECIFIED),
      }),
    );
    expect(error.code).toBe(status.INVALID_ARGUMENT);
    expect(error.details).toBe(
      'texts[1]: 9 tokens exceed truncation.max_length=8 and no truncation strategy is set',
    );
  });

  it('refuses a max_length with no room for the special tokens', async () => {
    const error = await failure(
      t.encode({ tokenizer: 'bert-base-uncased', texts: ['hi'], truncation: truncation(1, LONGEST_FIRST) }),
    );
    expect(error.details).toBe(
      'truncation.max_length: 1 leaves no room for the 2 special tokens bert-base-uncased adds',
    );
  });

  it('truncates fastText ids too', async () => {
    const response = await t.encode({
      tokenizer: 'lang-id',
      texts: ['bonjour tout le monde'],
      truncation: truncation(3, LONGEST_FIRST),
    });
    expect(response.encodings[0]).toMatchObject({ length: 3, truncated: true });
  });
});

describe('padding', () => {
  it('pads to the longest on the right, with attention masks and lengths before padding', async () => {
    const longest = await t.encode({
      tokenizer: 'bert-base-uncased',
      texts: ['hi', 'hello there friend'],
      padding: { strategy: PaddingStrategy.PADDING_STRATEGY_LONGEST, length: 0, side: 0, padToMultipleOf: 0 },
      returnOffsets: true,
      returnTokens: true,
    });
    expect(longest.encodings[0]).toMatchObject({
      ids: [101, 7632, 102, 0, 0],
      attentionMask: [1, 1, 1, 0, 0],
      specialTokensMask: [1, 0, 1, 1, 1],
      tokens: ['[CLS]', 'hi', '[SEP]', '[PAD]', '[PAD]'],
      length: 3,
    });
    expect(longest.encodings[0]!.offsets.slice(3)).toEqual([
      { start: 0, end: 0 },
      { start: 0, end: 0 },
    ]);
    expect(longest.encodings[1]!.attentionMask).toEqual([1, 1, 1, 1, 1]);
    expect(longest.totalTokens).toBe(8);
  });

  it('pads to a fixed length on the left (GPT-2 pads with end-of-text), and to a multiple', async () => {
    const fixedLeft = await t.encode({
      tokenizer: 'gpt2',
      texts: ['Hello'],
      padding: {
        strategy: PaddingStrategy.PADDING_STRATEGY_FIXED,
        length: 4,
        side: PaddingSide.PADDING_SIDE_LEFT,
        padToMultipleOf: 0,
      },
    });
    expect(fixedLeft.encodings[0]).toMatchObject({
      ids: [50256, 50256, 50256, 15496],
      attentionMask: [0, 0, 0, 1],
    });
    const multiple = await t.encode({
      tokenizer: 'bert-base-uncased',
      texts: ['hi', 'a b c d e f g h i'],
      padding: { strategy: PaddingStrategy.PADDING_STRATEGY_LONGEST, length: 0, side: 0, padToMultipleOf: 8 },
    });
    expect(multiple.encodings.map((e) => e.ids.length)).toEqual([16, 16]);
    const fastText = await t.encode({
      tokenizer: 'lang-id',
      texts: ['a', 'bonjour le monde'],
      padding: {
        strategy: PaddingStrategy.PADDING_STRATEGY_LONGEST,
        length: 0,
        side: PaddingSide.PADDING_SIDE_LEFT,
        padToMultipleOf: 0,
      },
    });
    const [short, long] = fastText.encodings;
    expect(short!.ids.length).toBe(long!.ids.length);
    expect(short!.attentionMask[0]).toBe(0);
  });

  it('refuses fixed padding without a length or beyond the request limit', async () => {
    const noLength = await failure(
      t.encode({
        tokenizer: 'gpt2',
        texts: ['x'],
        padding: { strategy: PaddingStrategy.PADDING_STRATEGY_FIXED, length: 0, side: 0, padToMultipleOf: 0 },
      }),
    );
    expect(noLength.details).toMatch(/^padding.length: /);
    const huge = await failure(
      t.encode({
        tokenizer: 'gpt2',
        texts: ['x', 'y'],
        padding: {
          strategy: PaddingStrategy.PADDING_STRATEGY_FIXED,
          length: 900_000,
          side: 0,
          padToMultipleOf: 0,
        },
      }),
    );
    expect(huge.details).toMatch(/TOKENIZER_MAX_REQUEST_IDS/);
  });
});

describe('CountTokens', () => {
  it.each(['gpt2', 'bert-base-uncased', 'unigram', 'glove-embed', 'austen-gpt', 'lang-id'])(
    '%s: counts what Encode gives, with and without special tokens',
    async (tokenizer) => {
      for (const addSpecialTokens of [true, false]) {
        const counts = await call<unknown, CountTokensResponse>(t.client, 'countTokens', {
          tokenizer,
          texts: CORPUS,
          addSpecialTokens,
        });
        const encoded = await t.encode({ tokenizer, texts: CORPUS, addSpecialTokens });
        expect(counts.counts).toEqual(encoded.encodings.map((e) => e.length));
        expect(counts.total).toBe(encoded.totalTokens);
      }
    },
  );
});

describe('fastText (the default language-id model)', () => {
  it('gives word and n-gram ids with word offsets, and </s> as its special token', async () => {
    const response = await t.encode({
      tokenizer: 'lang-id',
      texts: ['hello world'],
      returnTokens: true,
      returnOffsets: true,
    });
    const e = response.encodings[0]!;
    expect(e.tokens.at(-1)).toBe('</s>');
    expect(e.specialTokensMask.at(-1)).toBe(1);
    expect(e.offsets[0]).toEqual({ start: 0, end: 5 });
    const without = await t.encode({ tokenizer: 'lang-id', texts: ['hello world'], addSpecialTokens: false });
    expect(without.encodings[0]!.ids).toEqual(e.ids.slice(0, -1));
  });
});
