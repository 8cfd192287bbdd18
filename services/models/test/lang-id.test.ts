import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { execFileSync } from 'node:child_process';
import { readModelConfig, readLabels } from '@maas/shared';
import { convertLid176 } from '../src/fasttext/convert-lid';
import { FastTextTokenizer } from '../src/fasttext/tokenizer';

const REPO = join(__dirname, '..', 'repository', 'lang-id');

/** 60 sentences, 20 languages, 8 scripts. */
const SAMPLE = [
  'I love this movie, it was fantastic!',
  'The weather is lovely today and the sea is calm.',
  'Please send me the report before Friday.',
  'Je voudrais un café et un croissant, s’il vous plaît.',
  'La réunion a été reportée à demain matin.',
  'Nous avons visité le musée du Louvre hier.',
  'Ich habe keine Zeit, weil ich arbeiten muss.',
  'Der Zug nach Berlin fährt um acht Uhr ab.',
  'Wir gehen heute Abend ins Kino.',
  '¿Dónde está la estación de tren más cercana?',
  'Mañana vamos a la playa con mis amigos.',
  'El libro que me prestaste es muy interesante.',
  'Questo ristorante serve la migliore pizza della città.',
  'Domani andiamo al mare con la famiglia.',
  'Non capisco perché sei arrabbiato con me.',
  'Eu gosto muito de ouvir música brasileira.',
  'O jantar está pronto, vamos comer.',
  'Ela trabalha num hospital em Lisboa.',
  'Ik woon al tien jaar in Amsterdam.',
  'De kinderen spelen buiten in de tuin.',
  'Het is vandaag erg koud en het regent.',
  'Я люблю читать книги по вечерам.',
  'Сегодня очень холодно на улице.',
  'Мы поедем в Москву на следующей неделе.',
  'Dzisiaj jest bardzo ładna pogoda.',
  'Nie wiem, gdzie zostawiłem klucze.',
  'Moja siostra studiuje medycynę w Krakowie.',
  'Jag tycker om att promenera i skogen.',
  'Vi ska åka till Stockholm i morgon.',
  'Det är kallt ute idag.',
  'Bugün hava çok güzel, dışarı çıkalım.',
  'Yarın sabah erkenden işe gideceğim.',
  'Bu kitabı çok beğendim.',
  'Tämä on erittäin hyvä kirja.',
  'Menemme huomenna rannalle.',
  'Σήμερα ο καιρός είναι πολύ ωραίος.',
  'Θέλω να πάω στην Αθήνα το καλοκαίρι.',
  'Ο σκύλος μου τρέχει στον κήπο.',
  'أحب قراءة الكتب في المساء.',
  'الطقس جميل جدا اليوم.',
  'سوف نسافر إلى القاهرة الأسبوع المقبل.',
  'אני אוהב ללמוד שפות חדשות.',
  'מחר נלך לים עם המשפחה.',
  'मुझे हिंदी फिल्में देखना पसंद है।',
  'आज मौसम बहुत अच्छा है।',
  'हम कल दिल्ली जा रहे हैं।',
  '我喜欢在周末看书和喝茶。',
  '今天天气很好，我们去公园散步吧。',
  '这家餐厅的菜非常好吃。',
  '私は毎朝コーヒーを飲みます。',
  '明日は雨が降るかもしれません。',
  'この本はとても面白いです。',
  '저는 한국 음식을 정말 좋아해요.',
  '내일 친구와 영화를 볼 거예요.',
  'Tôi thích uống cà phê vào buổi sáng.',
  'Hôm nay trời rất đẹp.',
  'Saya suka makan nasi goreng setiap pagi.',
  'Kami akan pergi ke Jakarta minggu depan.',
  'Mi piace molto viaggiare in Italia.',
  'Watashi wa gakusei desu',
];

/** fastText's own answers, from its wasm build run as a child process (see the script for why). */
function fastTextReference(sentences: string[], words: string[]) {
  const out = execFileSync(process.execPath, [join(__dirname, '..', 'scripts', 'fasttext-reference.mjs')], {
    input: JSON.stringify({ sentences, words }),
    encoding: 'utf8',
  });
  return JSON.parse(out) as { predictions: [string, number][]; subwords: number[][] };
}

function top1(probabilities: Float32Array, offset: number, count: number) {
  let best = 0;
  for (let i = 1; i < count; i++) if (probabilities[offset + i]! > probabilities[offset + best]!) best = i;
  return { index: best, probability: probabilities[offset + best]! };
}

describe('lang-id: lid.176 converted to ONNX', () => {
  const tokenizer = FastTextTokenizer.fromFile(join(REPO, '1', 'tokenizer.json'));
  const config = readModelConfig(REPO, 'lang-id');
  const labels = readLabels(config, join(REPO, '1'))!;
  let session: ort.InferenceSession;

  beforeAll(async () => {
    session = await ort.InferenceSession.create(join(REPO, '1', 'model.onnx'));
  });

  it('gives the same top label and probability as fastText itself on 60 sentences in 20 languages', async () => {
    expect(new Set(SAMPLE).size).toBeGreaterThanOrEqual(50);
    const reference = fastTextReference(SAMPLE, []);
    const encodings = SAMPLE.map((s) => tokenizer.encode(s));
    const length = Math.max(...encodings.map((e) => e.ids.length));
    const ids = new BigInt64Array(SAMPLE.length * length);
    const mask = new BigInt64Array(SAMPLE.length * length);
    encodings.forEach((e, row) =>
      e.ids.forEach((id, col) => {
        ids[row * length + col] = BigInt(id);
        mask[row * length + col] = 1n;
      }),
    );
    // One padded batch: also checks that padding does not change any result.
    const out = await session.run({
      input_ids: new ort.Tensor('int64', ids, [SAMPLE.length, length]),
      attention_mask: new ort.Tensor('int64', mask, [SAMPLE.length, length]),
    });
    const probabilities = out.probabilities!.data as Float32Array;
    const languages = new Set<string>();
    let maxDiff = 0;
    for (let i = 0; i < SAMPLE.length; i++) {
      const ours = top1(probabilities, i * labels.length, labels.length);
      const [label, probability] = reference.predictions[i]!;
      expect([SAMPLE[i], `__label__${labels[ours.index]}`]).toEqual([SAMPLE[i], label]);
      expect(ours.probability).toBeCloseTo(probability, 4);
      maxDiff = Math.max(maxDiff, Math.abs(ours.probability - probability));
      languages.add(labels[ours.index]!);
    }
    expect(languages.size).toBeGreaterThanOrEqual(15);
    expect(maxDiff).toBeLessThan(5e-5);
  });

  it('tokenizes like fastText: word ids and subword n-grams', () => {
    const words = [
      'the',
      'movie',
      'fantastique',
      'Straße',
      'коту',
      '東京',
      '🙂',
      'e\u0301te\u0301',
      'x',
      'über',
    ];
    const reference = fastTextReference([], words);
    words.forEach((word, i) => {
      const ours = tokenizer.encode(word).ids.slice(0, -1); // without </s>
      expect([word, [...ours].sort((a, b) => a - b)]).toEqual([
        word,
        [...reference.subwords[i]!].sort((a, b) => a - b),
      ]);
    });
  });

  it('handles empty, whitespace-only and very long input', () => {
    expect(tokenizer.encode('').ids).toEqual([tokenizer.encode('').ids[0]]);
    expect(tokenizer.encode(' \t\n ').tokens).toEqual(['</s>']);
    const long = 'a'.repeat(10_000);
    expect(tokenizer.encode(long).ids.length).toBe(tokenizer.count(long));
    const enc = tokenizer.encode('hello  world');
    expect(enc.offsets[0]).toEqual([0, 5]);
    expect(enc.offsets[enc.offsets.length - 2]).toEqual([7, 12]);
  });

  it('is rebuilt byte for byte by the converter', () => {
    const converted = convertLid176();
    expect(Buffer.from(converted.onnx).equals(readFileSync(join(REPO, '1', 'model.onnx')))).toBe(true);
    expect(labels).toEqual(converted.labels);
  });
});
