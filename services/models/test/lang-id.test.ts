import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { readLabels, scanModel } from '@maas/shared';
import { convertLid176 } from '../src/fasttext/convert-lid';
import { FastTextTokenizer } from '../src/fasttext/tokenizer';
import { fastTextReference, type FastTextReference } from './fasttext-reference';

const REPOSITORY = join(__dirname, '..', 'repository');
const VERSION_DIR = join(REPOSITORY, 'lang-id', '1');

/** [language the sentence is written in, sentence]: 77 sentences, 38 languages, 12 scripts. */
const SAMPLE: [string, string][] = [
  ['en', 'I love this movie, it was fantastic!'],
  ['en', 'The weather is lovely today and the sea is calm.'],
  ['en', 'Please send me the report before Friday.'],
  ['fr', 'Je voudrais un café et un croissant, s’il vous plaît.'],
  ['fr', 'La réunion a été reportée à demain matin.'],
  ['fr', 'Nous avons visité le musée du Louvre hier.'],
  ['de', 'Ich habe keine Zeit, weil ich arbeiten muss.'],
  ['de', 'Der Zug nach Berlin fährt um acht Uhr ab.'],
  ['de', 'Wir gehen heute Abend ins Kino.'],
  ['es', '¿Dónde está la estación de tren más cercana?'],
  ['es', 'Mañana vamos a la playa con mis amigos.'],
  ['es', 'El libro que me prestaste es muy interesante.'],
  ['it', 'Questo ristorante serve la migliore pizza della città.'],
  ['it', 'Domani andiamo al mare con la famiglia.'],
  ['it', 'Non capisco perché sei arrabbiato con me.'],
  ['it', 'Mi piace molto viaggiare in Italia.'],
  ['pt', 'Eu gosto muito de ouvir música brasileira.'],
  ['pt', 'O jantar está pronto, vamos comer.'],
  ['pt', 'Ela trabalha num hospital em Lisboa.'],
  ['nl', 'Ik woon al tien jaar in Amsterdam.'],
  ['nl', 'De kinderen spelen buiten in de tuin.'],
  ['nl', 'Het is vandaag erg koud en het regent.'],
  ['ru', 'Я люблю читать книги по вечерам.'],
  ['ru', 'Сегодня очень холодно на улице.'],
  ['ru', 'Мы поедем в Москву на следующей неделе.'],
  ['uk', 'Це дуже гарна книга, я її прочитав за два дні.'],
  ['uk', 'Сьогодні дуже холодно на вулиці.'],
  ['sr', 'Данас је веома лепо време.'],
  ['pl', 'Dzisiaj jest bardzo ładna pogoda.'],
  ['pl', 'Nie wiem, gdzie zostawiłem klucze.'],
  ['pl', 'Moja siostra studiuje medycynę w Krakowie.'],
  ['cs', 'Dnes je krásné počasí a jdeme na procházku.'],
  ['sv', 'Jag tycker om att promenera i skogen.'],
  ['sv', 'Vi ska åka till Stockholm i morgon.'],
  ['sv', 'Det är kallt ute idag.'],
  ['da', 'Jeg elsker at læse bøger om aftenen.'],
  ['fi', 'Tämä on erittäin hyvä kirja.'],
  ['fi', 'Menemme huomenna rannalle.'],
  ['hu', 'Ma nagyon szép idő van, menjünk sétálni.'],
  ['ro', 'Astăzi vremea este foarte frumoasă.'],
  ['lv', 'Šodien ir ļoti skaista diena.'],
  ['lt', 'Šiandien labai graži diena.'],
  ['et', 'Täna on väga ilus ilm.'],
  ['ca', 'Avui fa molt de fred al carrer.'],
  ['eu', 'Gaur oso hotz dago kalean.'],
  ['gl', 'Hoxe vai moito frío na rúa.'],
  ['tr', 'Bugün hava çok güzel, dışarı çıkalım.'],
  ['tr', 'Yarın sabah erkenden işe gideceğim.'],
  ['tr', 'Bu kitabı çok beğendim.'],
  ['el', 'Σήμερα ο καιρός είναι πολύ ωραίος.'],
  ['el', 'Θέλω να πάω στην Αθήνα το καλοκαίρι.'],
  ['el', 'Ο σκύλος μου τρέχει στον κήπο.'],
  ['ar', 'أحب قراءة الكتب في المساء.'],
  ['ar', 'الطقس جميل جدا اليوم.'],
  ['ar', 'سوف نسافر إلى القاهرة الأسبوع المقبل.'],
  ['fa', 'امروز هوا خیلی خوب است.'],
  ['he', 'אני אוהב ללמוד שפות חדשות.'],
  ['he', 'מחר נלך לים עם המשפחה.'],
  ['hi', 'मुझे हिंदी फिल्में देखना पसंद है।'],
  ['hi', 'आज मौसम बहुत अच्छा है।'],
  ['hi', 'हम कल दिल्ली जा रहे हैं।'],
  ['bn', 'আজ আবহাওয়া খুব ভালো।'],
  ['ta', 'இன்று வானிலை மிகவும் நன்றாக உள்ளது.'],
  ['th', 'วันนี้อากาศดีมาก เราไปเดินเล่นกัน'],
  ['zh', '我喜欢在周末看书和喝茶。'],
  ['zh', '今天天气很好，我们去公园散步吧。'],
  ['zh', '这家餐厅的菜非常好吃。'],
  ['ja', '私は毎朝コーヒーを飲みます。'],
  ['ja', '明日は雨が降るかもしれません。'],
  ['ja', 'この本はとても面白いです。'],
  ['ko', '저는 한국 음식을 정말 좋아해요.'],
  ['ko', '내일 친구와 영화를 볼 거예요.'],
  ['vi', 'Tôi thích uống cà phê vào buổi sáng.'],
  ['vi', 'Hôm nay trời rất đẹp.'],
  ['id', 'Saya suka makan nasi goreng setiap pagi.'],
  ['id', 'Kami akan pergi ke Jakarta minggu depan.'],
  ['tl', 'Ngayon ay napakainit ng panahon.'],
];

/** Inputs at the edges of the tokenizer, through the whole model. */
const EDGE_CASES = [
  '',
  ' \t ',
  '🙂👍🏽',
  'e\u0301te\u0301 cafe\u0301',
  '今天天气很好我们去公园散步吧',
  'a'.repeat(2000),
  'hello',
  '__label__fr bonjour',
  '1234 5678',
];

function padded(encodings: number[][]): { ids: BigInt64Array; mask: BigInt64Array; length: number } {
  const length = Math.max(...encodings.map((e) => e.length));
  const ids = new BigInt64Array(encodings.length * length);
  const mask = new BigInt64Array(encodings.length * length);
  encodings.forEach((e, row) =>
    e.forEach((id, col) => {
      ids[row * length + col] = BigInt(id);
      mask[row * length + col] = 1n;
    }),
  );
  return { ids, mask, length };
}

describe('lang-id: lid.176 converted to ONNX', () => {
  const tokenizer = FastTextTokenizer.fromFile(join(VERSION_DIR, 'tokenizer.json'));
  const model = scanModel(REPOSITORY, 'lang-id');
  const labels = readLabels(model.config!, VERSION_DIR)!;
  const texts = [...SAMPLE.map(([, text]) => text), ...EDGE_CASES];
  let session: ort.InferenceSession;
  let reference: FastTextReference;

  async function classify(batch: string[]): Promise<Float32Array> {
    const { ids, mask, length } = padded(batch.map((t) => tokenizer.encodeIds(t)));
    const out = await session.run({
      input_ids: new ort.Tensor('int64', ids, [batch.length, length]),
      attention_mask: new ort.Tensor('int64', mask, [batch.length, length]),
    });
    return out.probabilities!.data as Float32Array;
  }

  beforeAll(async () => {
    session = await ort.InferenceSession.create(join(VERSION_DIR, 'model.onnx'));
    reference = fastTextReference({ sentences: texts, lines: texts });
  });

  it('is a valid repository model with fastText’s 176 labels, prefix stripped', () => {
    expect(model.error).toBeUndefined();
    expect(model.config!.task).toBe('classification');
    expect(labels).toHaveLength(176);
    expect(labels).toEqual(reference.labels.map((l) => l.replace(/^__label__/, '')));
    expect(labels.slice(0, 4)).toEqual(['en', 'ru', 'de', 'fr']);
  });

  it('feeds the model the ids fastText feeds its own', () => {
    texts.forEach((text, i) =>
      expect([text, tokenizer.encodeIds(text)]).toEqual([text, reference.lines[i]!.ids]),
    );
  });

  it(`gives fastText's probabilities for every label, on ${SAMPLE.length} sentences and the edge cases`, async () => {
    expect(new Set(SAMPLE.map(([language]) => language)).size).toBeGreaterThanOrEqual(15);
    // One padded batch: also shows that padding does not change any result.
    const started = process.hrtime.bigint();
    const probabilities = await classify(texts);
    const batchMs = Number(process.hrtime.bigint() - started) / 1e6;
    let maxTopDifference = 0;
    let maxDifference = 0;
    let correct = 0;
    texts.forEach((text, row) => {
      const ours = probabilities.subarray(row * labels.length, (row + 1) * labels.length);
      const theirs = reference.predictions[row]!;
      const best = ours.indexOf(Math.max(...ours));
      const [topLabel, topProbability] = theirs[0]!;
      expect([text, `__label__${labels[best]}`]).toEqual([text, topLabel]);
      expect(ours[best]).toBeCloseTo(topProbability, 4);
      maxTopDifference = Math.max(maxTopDifference, Math.abs(ours[best]! - topProbability));
      // fastText reports every label above its 1e-5 floor; compare them all
      for (const [label, probability] of theirs) {
        const ourProbability = ours[labels.indexOf(label.replace(/^__label__/, ''))]!;
        maxDifference = Math.max(maxDifference, Math.abs(ourProbability - probability));
      }
      if (row < SAMPLE.length && labels[best] === SAMPLE[row]![0]) correct++;
    });
    console.log(
      `lang-id parity: ${texts.length} texts (${SAMPLE.length} sentences in ` +
        `${new Set(SAMPLE.map(([l]) => l)).size} languages + ${EDGE_CASES.length} edge cases): ` +
        `max |Δp| top label ${maxTopDifference.toExponential(2)}, any label ${maxDifference.toExponential(2)}; ` +
        `right language ${correct}/${SAMPLE.length}; batch of ${texts.length} in ${batchMs.toFixed(1)} ms`,
    );
    expect(maxDifference).toBeLessThan(5e-5);
    expect(correct / SAMPLE.length).toBeGreaterThan(0.9);
  });

  it('ignores padding: a sentence alone and in a batch get the same probabilities', async () => {
    const alone = await classify([SAMPLE[3]![1]]);
    const batched = await classify([SAMPLE[0]![1], SAMPLE[3]![1], 'a'.repeat(500)]);
    const row = batched.subarray(labels.length, 2 * labels.length);
    alone.forEach((p, i) => expect(p).toBeCloseTo(row[i]!, 6));
  });

  it('classifies a batch of 64 sentences quickly', async () => {
    const batch = Array.from({ length: 64 }, (_, i) => SAMPLE[i % SAMPLE.length]![1]);
    const { ids, mask, length } = padded(batch.map((t) => tokenizer.encodeIds(t)));
    const feeds = {
      input_ids: new ort.Tensor('int64', ids, [batch.length, length]),
      attention_mask: new ort.Tensor('int64', mask, [batch.length, length]),
    };
    await session.run(feeds);
    const started = process.hrtime.bigint();
    for (let i = 0; i < 20; i++) await session.run(feeds);
    const ms = Number(process.hrtime.bigint() - started) / 1e6 / 20;
    console.log(`lang-id: batch of 64 sentences × ${length} ids in ${ms.toFixed(2)} ms`);
    expect(ms).toBeLessThan(500);
  });

  it('is rebuilt byte for byte by the converter', () => {
    const converted = convertLid176();
    expect(Buffer.from(converted.onnx).equals(readFileSync(join(VERSION_DIR, 'model.onnx')))).toBe(true);
    expect(JSON.stringify(converted.tokenizer)).toBe(
      readFileSync(join(VERSION_DIR, 'tokenizer.json'), 'utf8'),
    );
    expect(converted.labels).toEqual(labels);
  });
});
