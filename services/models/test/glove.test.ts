import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer } from '@anush008/tokenizers';
import { Tokenizer as TsTokenizer } from '@huggingface/tokenizers';
import * as ort from 'onnxruntime-node';
import { scanModel } from '@maas/shared';
import { GraphBuilder } from '../src/onnx-builder';
import { toFloat16Bits } from '../src/glove/convert-glove';

const REPOSITORY = join(__dirname, '..', 'repository');
const VERSION_DIR = join(REPOSITORY, 'glove-embed', '1');

const PARAPHRASES: [string, string][] = [
  ['The cat sat on the mat.', 'A cat was sitting on the rug.'],
  ['How do I reset my password?', 'What is the way to change my password?'],
  ['The stock market fell sharply today.', 'Share prices dropped steeply today.'],
  ['She is a talented young musician.', 'She is a gifted young musician.'],
  ['The meeting has been postponed until next week.', 'The meeting was delayed to next week.'],
  ['I am very hungry.', 'I really want to eat something.'],
  ['The car would not start this morning.', 'My car failed to start this morning.'],
  ['He won the championship last year.', 'Last year he won the title.'],
  ['The weather will be sunny tomorrow.', 'Tomorrow the weather should be sunny.'],
  ['The government announced new taxes.', 'New taxes were announced by the government.'],
  ['Children love playing in the park.', 'Kids enjoy playing in the park.'],
  ['The doctor examined the patient.', 'The physician checked the patient.'],
];
const UNRELATED: [string, string][] = [
  ['The cat sat on the mat.', 'Interest rates rose by half a percent.'],
  ['How do I reset my password?', 'The river flooded the valley.'],
  ['The stock market fell sharply today.', 'She baked a chocolate cake.'],
  ['She is a talented young musician.', 'The bridge was closed for repairs.'],
  ['The meeting has been postponed until next week.', 'Penguins live in Antarctica.'],
  ['I am very hungry.', 'The parliament passed the bill.'],
  ['The car would not start this morning.', 'Shakespeare wrote many plays.'],
  ['He won the championship last year.', 'The soup needs more salt.'],
  ['The weather will be sunny tomorrow.', 'The software update fixed a bug.'],
  ['The government announced new taxes.', 'The kitten chased a ball of yarn.'],
  ['Children love playing in the park.', 'The company reported quarterly losses.'],
  ['The doctor examined the patient.', 'Volcanoes erupt molten rock.'],
];

const cosine = (a: Float32Array, b: Float32Array) => a.reduce((s, v, i) => s + v * b[i]!, 0);
const mean = (a: number[]) => a.reduce((s, v) => s + v, 0) / a.length;

describe('glove-embed: GloVe sentence embeddings', () => {
  const tokenizerFile = join(VERSION_DIR, 'tokenizer.json');
  const tokenizer = Tokenizer.fromFile(tokenizerFile);
  const model = scanModel(REPOSITORY, 'glove-embed');
  const dims = model.config!.outputs[0]!.dims[0]!;
  let session: ort.InferenceSession;

  beforeAll(async () => {
    session = await ort.InferenceSession.create(join(VERSION_DIR, 'model.onnx'));
  });

  async function embed(texts: string[]): Promise<Float32Array[]> {
    const encodings = await tokenizer.encodeBatch(texts, { addSpecialTokens: false });
    const length = Math.max(1, ...encodings.map((e) => e.getLength()));
    const ids = new BigInt64Array(texts.length * length);
    const mask = new BigInt64Array(texts.length * length);
    encodings.forEach((e, row) =>
      e.getIds().forEach((id, col) => {
        ids[row * length + col] = BigInt(id);
        mask[row * length + col] = 1n;
      }),
    );
    const out = await session.run({
      input_ids: new ort.Tensor('int64', ids, [texts.length, length]),
      attention_mask: new ort.Tensor('int64', mask, [texts.length, length]),
    });
    const data = out.sentence_embedding!.data as Float32Array;
    return texts.map((_, i) => data.slice(i * dims, (i + 1) * dims));
  }

  it('is a valid repository model', () => {
    expect(model.error).toBeUndefined();
    expect(model.config!.task).toBe('embedding');
    expect(model.config!.embedding).toEqual({
      output: 'sentence_embedding',
      pooling: 'none',
      normalize: false,
    });
    expect(dims).toBe(100);
  });

  it('places paraphrases closer than unrelated pairs', async () => {
    const vectors = await embed([...PARAPHRASES.flat(), ...UNRELATED.flat()]);
    const score = (pairs: [string, string][], from: number) =>
      pairs.map((_, i) => cosine(vectors[from + 2 * i]!, vectors[from + 2 * i + 1]!));
    const para = score(PARAPHRASES, 0);
    const unrelated = score(UNRELATED, 2 * PARAPHRASES.length);
    let ordered = 0;
    for (const p of para) for (const u of unrelated) if (p > u) ordered++;
    const fraction = ordered / (para.length * unrelated.length);
    console.log(
      `glove-embed: paraphrase cosine mean ${mean(para).toFixed(3)} (min ${Math.min(...para).toFixed(3)}), ` +
        `unrelated mean ${mean(unrelated).toFixed(3)} (max ${Math.max(...unrelated).toFixed(3)}), ` +
        `ordered pairs ${(fraction * 100).toFixed(1)}% of ${para.length}×${unrelated.length}`,
    );
    expect(mean(para) - mean(unrelated)).toBeGreaterThan(0.15);
    expect(fraction).toBeGreaterThanOrEqual(0.9);
    // Each paraphrase beats its own unrelated counterpart.
    para.forEach((p, i) => expect(p).toBeGreaterThan(unrelated[i]!));
  });

  it('outputs unit vectors unaffected by padding, and zero for text with no known word', async () => {
    const [alone] = await embed(['A short sentence.']);
    const [batched, , nothing, empty] = await embed([
      'A short sentence.',
      'A much longer sentence that forces padding of the first one.',
      'zzqqxx qqzzyy',
      '',
    ]);
    expect(cosine(alone!, alone!)).toBeCloseTo(1, 5);
    alone!.forEach((v, i) => expect(v).toBeCloseTo(batched![i]!, 6));
    expect(Array.from(nothing!).every((v) => v === 0)).toBe(true);
    expect(Array.from(empty!).every((v) => v === 0)).toBe(true);
  });

  it('ignores case and accents, like the lower-cased, accent-free GloVe vocabulary', async () => {
    const [a, b] = await embed(['The CAFÉ in Zürich is Open.', 'the cafe in zurich is open.']);
    expect(cosine(a!, b!)).toBeCloseTo(1, 5);
  });

  it('has a tokenizer both tokenizer libraries read alike', async () => {
    // @huggingface/tokenizers 0.2 has no WordLevel model: it falls back to a plain vocabulary
    // lookup that takes the unknown token from the tokenizer config, not from tokenizer.json.
    const ts = new TsTokenizer(JSON.parse(readFileSync(tokenizerFile, 'utf8')), { unk_token: '[UNK]' });
    const texts = [
      'Hello, World! The river is long.',
      'the quick brown fox',
      'Crème brûlée at the CAFÉ — “quoted” text… (well-known) e-mail: a@b.c, 3.14 and 2024!',
      'zzqqxx unknownword qwertyuiop',
      'Tabs\tand\nnewlines  and  spaces',
      '日本語 text',
      '',
    ];
    for (const text of texts) {
      const rust = await tokenizer.encode(text, null, { addSpecialTokens: false });
      const pure = ts.encode(text, { add_special_tokens: false });
      // ids agree; for an unknown word the pure library reports the word, the Rust one "[UNK]"
      expect([text, pure.ids]).toEqual([text, rust.getIds()]);
    }
    const unknown = await tokenizer.encode('zzqqxx the', null, { addSpecialTokens: false });
    expect(unknown.getTokens()).toEqual(['[UNK]', 'the']);
    expect(unknown.getIds()[0]).toBe(1);
    // the package has no one-letter words and no numbers: "a", "I" and "2024" are unknown
    const gaps = await tokenizer.encode('a I 2024 an', null, { addSpecialTokens: false });
    expect(gaps.getIds().slice(0, 3)).toEqual([1, 1, 1]);
    expect(tokenizer.getVocabSize(true)).toBe(50_002);
  });

  it('stores float16 values rounded as onnxruntime rounds them', async () => {
    const values = new Float32Array([
      0,
      -0,
      1,
      -1,
      0.1,
      1 / 3,
      65504,
      65520,
      1e6,
      -1e6,
      6.1e-5,
      6.0e-5,
      3e-8,
      2.98e-8,
      5.96e-8,
      1e-10,
      1.00048828125,
      1.00146484375,
      0.00012207031,
      -7.5e-6,
      2049,
      2051,
      1e-5,
    ]);
    const g = new GraphBuilder('cast');
    g.input('x', 'float32', [values.length]);
    g.node('Cast', ['x'], { to: { i: 10 } }, ['y']);
    g.output('y', 'float16', [values.length]);
    const cast = await ort.InferenceSession.create(g.toBytes());
    const y = (await cast.run({ x: new ort.Tensor('float32', values, [values.length]) })).y!;
    const bits = new Uint16Array(
      (y.data as Uint16Array).buffer,
      (y.data as Uint16Array).byteOffset,
      values.length,
    );
    expect(Array.from(values, (v) => toFloat16Bits(v))).toEqual(Array.from(bits));
  });

  it('embeds a batch of 64 sentences quickly', async () => {
    const texts = Array.from({ length: 64 }, (_, i) => `${PARAPHRASES[i % 12]![0]} ${UNRELATED[i % 12]![1]}`);
    const encodings = await tokenizer.encodeBatch(texts, { addSpecialTokens: false });
    const length = Math.max(...encodings.map((e) => e.getLength()));
    const ids = new BigInt64Array(64 * length);
    const mask = new BigInt64Array(64 * length);
    encodings.forEach((e, row) =>
      e.getIds().forEach((id, col) => {
        ids[row * length + col] = BigInt(id);
        mask[row * length + col] = 1n;
      }),
    );
    const feeds = {
      input_ids: new ort.Tensor('int64', ids, [64, length]),
      attention_mask: new ort.Tensor('int64', mask, [64, length]),
    };
    await session.run(feeds);
    const started = process.hrtime.bigint();
    for (let i = 0; i < 10; i++) await session.run(feeds);
    const ms = Number(process.hrtime.bigint() - started) / 1e6 / 10;
    console.log(`glove-embed: batch of 64 × ${length} tokens in ${ms.toFixed(2)} ms`);
    expect(ms).toBeLessThan(500);
  });
});
