import { Tokenizer as RustTokenizer } from '@anush008/tokenizers';
import { Tokenizer } from '@huggingface/tokenizers';
import {
  ENDOFTEXT,
  TINY_BPE_EOS_ID,
  TINY_BPE_MERGES,
  TINY_BPE_VOCAB_SIZE,
  TINY_WORDPIECE_VOCAB_SIZE,
  bytesToUnicode,
  tinyByteLevelBpeTokenizer,
  tinyWordPieceTokenizer,
  trainByteLevelBpe,
} from '../src/fixtures';
import { gpt2TokenizerJson } from '../src/tokenizer-files';

/** Both libraries the project uses: the pure TypeScript one and the Rust one (the tokenizer service's). */
async function encodeBoth(json: object, text: string, pair?: string) {
  const js = new Tokenizer(json, {}).encode(text, { text_pair: pair ?? null, return_token_type_ids: true });
  const rust = await RustTokenizer.fromString(JSON.stringify(json)).encode(text, pair ?? null);
  return { js, rust: { ids: rust.getIds(), tokens: rust.getTokens(), typeIds: rust.getTypeIds() } };
}

describe('tiny WordPiece tokenizer', () => {
  const json = tinyWordPieceTokenizer();

  it('has the BERT special tokens first and about 200 pieces', () => {
    const tokenizer = new Tokenizer(json, {});
    expect(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'].map((t) => tokenizer.token_to_id(t))).toEqual([
      0, 1, 2, 3, 4,
    ]);
    expect(TINY_WORDPIECE_VOCAB_SIZE).toBeGreaterThan(150);
    expect(TINY_WORDPIECE_VOCAB_SIZE).toBeLessThanOrEqual(256);
    expect(tokenizer.get_vocab().size).toBe(TINY_WORDPIECE_VOCAB_SIZE);
  });

  it('lowercases, splits punctuation, adds [CLS]/[SEP] and pieces words, the same in both libraries', async () => {
    const { js, rust } = await encodeBoth(json, 'Hello, WORLD! The movies were amazingly boring.');
    expect(js.tokens).toEqual([
      '[CLS]',
      'hello',
      ',',
      'world',
      '!',
      'the',
      'movie',
      '##s',
      'were',
      'amazing',
      '##ly',
      'boring',
      '.',
      '[SEP]',
    ]);
    expect(rust.ids).toEqual(js.ids);
    expect(rust.tokens).toEqual(js.tokens);
    expect(new Tokenizer(json, {}).decode(js.ids, { skip_special_tokens: true })).toBe(
      'hello, world! the movies were amazingly boring.',
    );
  });

  it('encodes pairs as [CLS] A [SEP] B [SEP] with type ids, and unknown scripts as [UNK]', async () => {
    const { js, rust } = await encodeBoth(json, 'I like it', 'café 日本');
    expect(js.tokens).toEqual([
      '[CLS]',
      'i',
      'like',
      'it',
      '[SEP]',
      'c',
      '##a',
      '##f',
      '##e',
      '[UNK]',
      '[UNK]',
      '[SEP]',
    ]);
    expect(js.token_type_ids).toEqual([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]);
    expect(rust.ids).toEqual(js.ids);
    expect(rust.typeIds).toEqual(js.token_type_ids);
    expect(Math.max(...js.ids)).toBeLessThan(TINY_WORDPIECE_VOCAB_SIZE);
  });
});

describe('tiny byte-level BPE tokenizer', () => {
  const json = tinyByteLevelBpeTokenizer();
  const texts = [
    'The river ran past the old mill.',
    'Hello world, the river begins!',
    '  leading spaces,\ttabs\nand new lines  ',
    'café — naïve, Ελληνικά, 日本語, emoji 🙂👍🏽',
    "It's 2024; don't stop.",
  ];

  it("uses GPT-2's byte symbols and ids for the first 256 tokens, then 100 merges and <|endoftext|>", () => {
    const gpt2 = (gpt2TokenizerJson() as { model: { vocab: Record<string, number> } }).model.vocab;
    const ours = (json as { model: { vocab: Record<string, number>; merges: string[] } }).model;
    const charOf = bytesToUnicode();
    expect(new Set(charOf).size).toBe(256);
    for (const symbol of charOf) expect([symbol, ours.vocab[symbol]]).toEqual([symbol, gpt2[symbol]]);
    expect(ours.merges).toHaveLength(TINY_BPE_MERGES);
    expect(Object.keys(ours.vocab)).toHaveLength(TINY_BPE_VOCAB_SIZE);
    expect(ours.vocab[ENDOFTEXT]).toBe(TINY_BPE_EOS_ID);
    expect(TINY_BPE_EOS_ID).toBe(TINY_BPE_VOCAB_SIZE - 1);
    // Merge results are tokens, numbered in merge order.
    ours.merges.forEach((merge, i) => expect(ours.vocab[merge.replace(' ', '')]).toBe(256 + i));
  });

  it('learns the most frequent pairs first, deterministically', () => {
    const text = 'the cat sat on the mat; the cat ate the rat';
    expect(trainByteLevelBpe(text, 5)).toEqual(trainByteLevelBpe(text, 5));
    // "a t" occurs 6 times; "h e" and "t h" 4 times each (the smaller wins the tie); then "t he"...
    expect(trainByteLevelBpe(text, 5).merges).toEqual(['a t', 'h e', 't he', 'Ġ the', 'c at']);
    expect(trainByteLevelBpe(text, 3).merges).toEqual(trainByteLevelBpe(text, 5).merges.slice(0, 3));
    // Stops when no pair occurs twice.
    expect(trainByteLevelBpe('abc', 10).merges).toEqual([]);
  });

  it('round-trips any text, non-ASCII included, identically in both libraries', async () => {
    const js = new Tokenizer(json, {});
    const rust = RustTokenizer.fromString(JSON.stringify(json));
    for (const text of texts) {
      const ids = js.encode(text).ids;
      expect((await rust.encode(text)).getIds()).toEqual(ids);
      expect(js.decode(ids, { clean_up_tokenization_spaces: false })).toBe(text);
      expect(await rust.decode(ids, false)).toBe(text);
      expect(Math.max(...ids)).toBeLessThan(TINY_BPE_VOCAB_SIZE);
    }
  });

  it('compresses English with its merges and keeps <|endoftext|> one special token', async () => {
    const js = new Tokenizer(json, {});
    const english = texts[0]!;
    expect(js.encode(english).ids.length).toBeLessThan(new TextEncoder().encode(english).length * 0.6);
    const ids = js.encode(`the end${ENDOFTEXT}`).ids;
    expect(ids[ids.length - 1]).toBe(TINY_BPE_EOS_ID);
    expect(js.decode(ids, { skip_special_tokens: true })).toBe('the end');
    expect(
      (await RustTokenizer.fromString(JSON.stringify(json)).encode(`the end${ENDOFTEXT}`)).getIds(),
    ).toEqual(ids);
  });
});
