/** Decode and DecodeStream through a real server, and the incremental detokenizer on its own. */
import { status } from '@grpc/grpc-js';
import type { DecodeResponse } from '@maas/shared/gen/maas/tokenizer/v1/tokenizer';
import { HuggingFaceTokenizer, IncrementalDetokenizer } from '../src/index';
import { CORPUS } from './corpus';
import { call, decodeStream, failure, startTestTokenizer, type TestTokenizerService } from './helpers';

let t: TestTokenizerService;
beforeAll(async () => {
  t = await startTestTokenizer();
});
afterAll(async () => {
  await t?.close();
});

const decode = (request: object) => call<unknown, DecodeResponse>(t.client, 'decode', request);

/** Text whose characters GPT-2 splits over several byte-level tokens (4-byte emoji, 3-byte CJK). */
const SPLIT_TEXT = 'Emoji 🙂🚀👩‍👩‍👧 and 中文分词 with wörds, 日本語 — split across byte-level tokens!';

describe('Decode', () => {
  it('leaves special tokens out unless asked to keep them', async () => {
    const ids = [101, 7592, 2088, 102];
    expect((await decode({ tokenizer: 'bert-base-uncased', sequences: [{ ids }] })).texts).toEqual([
      'hello world',
    ]);
    expect(
      (await decode({ tokenizer: 'bert-base-uncased', sequences: [{ ids }], skipSpecialTokens: false }))
        .texts,
    ).toEqual(['[CLS] hello world [SEP]']);
  });

  it('cleans up tokenization spaces as the decoder says, or as asked', async () => {
    const ids = (await t.encode({ tokenizer: 'bert-base-uncased', texts: ["it's here , isn't it ."] }))
      .encodings[0]!.ids;
    const texts = async (cleanUpTokenizationSpaces?: boolean) =>
      (
        await decode({
          tokenizer: 'bert-base-uncased',
          sequences: [{ ids }],
          ...(cleanUpTokenizationSpaces === undefined ? {} : { cleanUpTokenizationSpaces }),
        })
      ).texts[0];
    // The WordPiece decoder cleans each token (" ," → ","); transformers' pass also joins "' s".
    expect(await texts()).toBe("it ' s here, isn ' t it.");
    expect(await texts(true)).toBe("it's here, isn't it.");
    expect(await texts(false)).toBe("it ' s here , isn ' t it .");
  });

  it('decodes batches, including empty sequences', async () => {
    const encoded = await t.encode({ tokenizer: 'gpt2', texts: CORPUS });
    const decoded = await decode({
      tokenizer: 'gpt2',
      sequences: encoded.encodings.map((e) => ({ ids: e.ids })),
    });
    expect(decoded.texts).toEqual(CORPUS);
    expect((await decode({ tokenizer: 'gpt2', sequences: [{ ids: [] }] })).texts).toEqual(['']);
  });

  it('refuses ids outside the vocabulary, naming the sequence and position', async () => {
    const error = await failure(
      decode({ tokenizer: 'gpt2', sequences: [{ ids: [1] }, { ids: [2, 50257] }] }),
    );
    expect(error.code).toBe(status.INVALID_ARGUMENT);
    expect(error.details).toBe(
      'sequences[1].ids[1]: id 50257 is outside the vocabulary of gpt2 (size 50257)',
    );
  });
});

describe('DecodeStream', () => {
  it.each(['gpt2', 'bert-base-uncased', 'unigram', 'glove-embed', 'austen-gpt', 'lang-id'])(
    '%s: one id at a time gives valid deltas that add up to Decode',
    async (name) => {
      const ids = (await t.encode({ tokenizer: name, texts: [SPLIT_TEXT], addSpecialTokens: false }))
        .encodings[0]!.ids;
      const whole = (await decode({ tokenizer: name, sequences: [{ ids }] })).texts[0]!;
      const responses = await decodeStream(
        t.client,
        name,
        ids.map((id) => [id]),
      );
      const deltas = responses.map((r) => r.text);
      expect(deltas.join('')).toBe(whole);
      for (const delta of deltas) {
        expect(delta).not.toContain('\uFFFD');
        // Each delta is well-formed: no lone surrogate, so it encodes to UTF-8 and back unchanged.
        expect(Buffer.from(delta, 'utf8').toString('utf8')).toBe(delta);
      }
      expect(responses.map((r) => r.consumedIds)).toEqual(ids.map((_, i) => i + 1));
      // An emoji or a CJK character is several byte-level tokens: some deltas were held back.
      if (name === 'gpt2' || name === 'austen-gpt')
        expect(deltas.filter((d) => d === '').length).toBeGreaterThan(3);
    },
  );

  it('takes several ids per message, and keeps special tokens when asked', async () => {
    const ids = (await t.encode({ tokenizer: 'bert-base-uncased', texts: ['Hello there, world!'] }))
      .encodings[0]!.ids;
    const chunks = [ids.slice(0, 2), ids.slice(2, 5), ids.slice(5)];
    const kept = await decodeStream(t.client, 'bert-base-uncased', chunks, false);
    expect(kept.map((r) => r.text).join('')).toBe('[CLS] hello there, world! [SEP]');
    const skipped = await decodeStream(t.client, 'bert-base-uncased', chunks);
    expect(skipped.map((r) => r.text).join('')).toBe('hello there, world!');
    expect(skipped.at(-1)!.consumedIds).toBe(ids.length);
  });

  it('ends with a clear status on an unknown tokenizer or an id outside the vocabulary', async () => {
    await expect(decodeStream(t.client, 'nope', [[1]])).rejects.toMatchObject({ code: status.NOT_FOUND });
    await expect(decodeStream(t.client, '', [[1]])).rejects.toMatchObject({ code: status.INVALID_ARGUMENT });
    await expect(
      decodeStream(t.client, 'gpt2', [
        [1, 2],
        [3, 999999],
      ]),
    ).rejects.toMatchObject({
      code: status.INVALID_ARGUMENT,
      details: 'ids[3]: id 999999 is outside the vocabulary of gpt2 (size 50257)',
    });
  });
});

describe('IncrementalDetokenizer (in process, for the orchestrator too)', () => {
  it('holds back incomplete characters, emits the rest at flush, and forgets decoded ids', async () => {
    const gpt2 = await HuggingFaceTokenizer.load({ name: 'gpt2', path: t.files.gpt2 });
    const [encoding] = await gpt2.encodeBatch([SPLIT_TEXT.repeat(20)], undefined, {
      addSpecialTokens: false,
      offsets: false,
      tokens: false,
    });
    const detokenizer = new IncrementalDetokenizer((sequences) =>
      gpt2.decodeBatch(sequences, { skipSpecialTokens: true }),
    );
    let text = '';
    for (const id of encoding!.ids) {
      const delta = await detokenizer.push([id]);
      expect(delta).not.toContain('\uFFFD');
      text += delta;
    }
    text += await detokenizer.flush();
    expect(text).toBe(SPLIT_TEXT.repeat(20));
    expect(detokenizer.consumed).toBe(encoding!.ids.length);
    // A truncated character at the very end is given out at flush, as Decode gives it.
    const cut = new IncrementalDetokenizer((sequences) =>
      gpt2.decodeBatch(sequences, { skipSpecialTokens: true }),
    );
    const emoji = (
      await gpt2.encodeBatch(['🙂'], undefined, { addSpecialTokens: false, offsets: false, tokens: false })
    )[0]!.ids;
    expect(emoji.length).toBeGreaterThan(1);
    expect(await cut.push(emoji.slice(0, 1))).toBe('');
    expect(await cut.flush()).toBe(
      (await gpt2.decodeBatch([emoji.slice(0, 1)], { skipSpecialTokens: true }))[0],
    );
  });
});
