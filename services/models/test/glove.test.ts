import { join } from 'node:path';
import { Tokenizer } from '@anush008/tokenizers';
import { Tokenizer as TsTokenizer } from '@huggingface/tokenizers';
import { readFileSync } from 'node:fs';
import * as ort from 'onnxruntime-node';
import { readModelConfig } from '@maas/shared';

const DIR = join(__dirname, '..', 'repository', 'glove-embed');

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

describe('glove-embed: GloVe sentence embeddings', () => {
  const tokenizer = Tokenizer.fromFile(join(DIR, '1', 'tokenizer.json'));
  let session: ort.InferenceSession;
  beforeAll(async () => {
    session = await ort.InferenceSession.create(join(DIR, '1', 'model.onnx'));
  });

  async function embed(texts: string[]): Promise<Float32Array[]> {
    const encodings = await tokenizer.encodeBatch(texts, { addSpecialTokens: false });
    const length = Math.max(...encodings.map((e) => e.getLength()));
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
    return texts.map((_, i) => data.slice(i * 100, (i + 1) * 100));
  }
  const cosine = (a: Float32Array, b: Float32Array) => a.reduce((s, v, i) => s + v * b[i]!, 0);

  it('places paraphrases closer than unrelated pairs', async () => {
    const score = async (pairs: [string, string][]) => {
      const vectors = await embed(pairs.flat());
      return pairs.map((_, i) => cosine(vectors[2 * i]!, vectors[2 * i + 1]!));
    };
    const para = await score(PARAPHRASES);
    const unrelated = await score(UNRELATED);
    const mean = (a: number[]) => a.reduce((s, v) => s + v, 0) / a.length;
    let ordered = 0;
    for (const p of para) for (const u of unrelated) if (p > u) ordered++;
    const fraction = ordered / (para.length * unrelated.length);
    console.log(
      `paraphrase cosine mean ${mean(para).toFixed(3)} (min ${Math.min(...para).toFixed(3)}), ` +
        `unrelated mean ${mean(unrelated).toFixed(3)} (max ${Math.max(...unrelated).toFixed(3)}), ordered pairs ${(fraction * 100).toFixed(1)}%`,
    );
    expect(mean(para) - mean(unrelated)).toBeGreaterThan(0.15);
    expect(fraction).toBeGreaterThanOrEqual(0.9);
    // Each paraphrase beats its own unrelated counterpart.
    para.forEach((p, i) => expect(p).toBeGreaterThan(unrelated[i]!));
  });

  it('outputs unit vectors unaffected by padding', async () => {
    const [alone] = await embed(['A short sentence.']);
    const [batched] = await embed([
      'A short sentence.',
      'A much longer sentence that forces padding of the first one.',
    ]);
    expect(Math.abs(cosine(alone!, alone!) - 1)).toBeLessThan(1e-5);
    alone!.forEach((v, i) => expect(v).toBeCloseTo(batched![i]!, 5));
  });

  it('has a tokenizer both tokenizer libraries read alike, and a valid config', async () => {
    const ts = new TsTokenizer(JSON.parse(readFileSync(join(DIR, '1', 'tokenizer.json'), 'utf8')), {});
    // Only in-vocabulary text: @huggingface/tokenizers 0.2 returns undefined instead of [UNK] for
    // unknown words in WordLevel models (one reason the tokenizer service uses the Rust library).
    for (const text of ['Hello, World! The river is long.', 'the quick brown fox']) {
      const rust = (await tokenizer.encode(text, null, { addSpecialTokens: false })).getIds();
      expect(ts.encode(text, { add_special_tokens: false }).ids).toEqual(rust);
    }
    expect((await tokenizer.encode('zzqqxx', null)).getIds()).toEqual([1]);
    expect(readModelConfig(DIR, 'glove-embed').task).toBe('embedding');
  });
});
