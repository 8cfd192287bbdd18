import { join } from 'node:path';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { FastTextTokenizer, fastTextHash, type FastTextTokenizerFile } from '../src/fasttext/tokenizer';
import { readFastTextModel } from '../src/fasttext/ftz-reader';
import { lid176Path } from '../src/fasttext/convert-lid';
import { fastTextReference, type FastTextReference } from './fasttext-reference';

const TOKENIZER_FILE = join(__dirname, '..', 'repository', 'lang-id', '1', 'tokenizer.json');

/** Lines whose tokenisation must equal fastText's, id for id and in order. */
const LINES = [
  '',
  ' ',
  ' \t\v\f\r ',
  'hello',
  'Hello, World!',
  'hello  world',
  '  leading and trailing blanks\t',
  'I love this movie, it was fantastic!',
  'Je voudrais un café et un croissant, s’il vous plaît.',
  'Straße über Öl',
  'Я люблю читать книги по вечерам.',
  // emoji: 4-byte UTF-8 characters, a skin-tone modifier and a ZWJ family
  '🙂 👍🏽 family 👨‍👩‍👧 😀😀😀',
  // combining marks: decomposed é is two characters for fastText
  'e\u0301te\u0301 cafe\u0301 ca\u0300 n\u0303',
  // CJK and Thai without spaces: one long word each
  '今天天气很好我们去公园散步吧',
  '私は毎朝コーヒーを飲みます',
  'ภาษาไทยไม่มีช่องว่างระหว่างคำ',
  'مرحبا بالعالم',
  'नमस्ते दुनिया',
  // a very long word
  'a'.repeat(3000),
  `prefix ${'xyz'.repeat(500)} suffix`,
  'x',
  '1 12 123 3.14159 2024-11-24',
  // labels are not input, known or not
  '__label__fr bonjour',
  '__label__xx bonjour __label__',
  // words whose n-grams contain `</s>`; then the end-of-sentence token typed in, which ends the line
  '/s s> </s',
  'before </s> after',
  '</s> /s s> </s',
  'hello\u0000world',
  // blanks fastText does not know: no-break space, ideographic space, zero-width space
  'a\u00a0b c\u3000d e\u200bf',
  '<html> <b>bold</b> & "quotes" \'single\'',
];

describe('FastTextTokenizer (lid.176) against fastText itself', () => {
  const tokenizer = FastTextTokenizer.fromFile(TOKENIZER_FILE);
  let reference: FastTextReference;
  const WORDS = [
    'the',
    'movie',
    'fantastique',
    'Straße',
    'коту',
    '東京',
    '🙂',
    'e\u0301te\u0301',
    'x',
    '/s',
    'über',
  ];
  const NGRAMS = ['<h', 'é', '<é', 'ß>', '東京', '🙂', 'e\u0301', '\u00ff', 'aaaa'];

  beforeAll(() => {
    reference = fastTextReference({ lines: LINES, words: WORDS, ngrams: NGRAMS });
  });

  it('reads the dictionary sizes fastText reports', () => {
    expect(tokenizer.nwords).toBe(reference.nwords);
    expect(tokenizer.idToToken(0)).toBe('</s>');
    expect(tokenizer.tokenToId('</s>')).toBe(0);
    // every id is a row of the model's input matrix and vice versa
    expect(tokenizer.vocabSize).toBe(readFastTextModel(lid176Path()).input.rows);
  });

  it('gives the ids fastText feeds its model, in order, for every line', () => {
    LINES.forEach((line, i) => {
      expect([line, tokenizer.encode(line).ids]).toEqual([line, reference.lines[i]!.ids]);
      expect([line, tokenizer.encodeIds(line)]).toEqual([line, reference.lines[i]!.ids]);
      expect(tokenizer.count(line)).toBe(reference.lines[i]!.ids.length);
    });
  });

  it('reads the words fastText reads (labels left out)', () => {
    LINES.forEach((line, i) => {
      const encoding = tokenizer.encode(line);
      const known = encoding.tokens.filter((_, k) => encoding.kinds[k] !== 'ngram');
      const inDictionary = reference.lines[i]!.words.filter((w) => tokenizer.tokenToId(w) !== undefined);
      expect([line, known]).toEqual([line, inDictionary]);
    });
  });

  it('names each id: the word, or an n-gram fastText lists for the word', () => {
    WORDS.forEach((word, i) => {
      const encoding = tokenizer.encode(word);
      const ids = encoding.ids.slice(0, -1); // without </s>
      const tokens = encoding.tokens.slice(0, -1);
      expect([word, ids]).toEqual([word, reference.subwords[i]!.ids]);
      // fastText lists every candidate n-gram; ours are the ones that survive pruning, in the same order
      let from = 0;
      for (const token of tokens) {
        const at = reference.subwords[i]!.tokens.indexOf(token, from);
        expect([word, token, at >= 0]).toEqual([word, token, true]);
        from = at + 1;
      }
    });
  });

  it('hashes like fastText (FNV-1a over sign-extended bytes)', () => {
    const ours = NGRAMS.map((n) => fastTextHash(new TextEncoder().encode(n)) % tokenizer.bucket);
    expect(ours).toEqual(reference.buckets);
    // Plain FNV-1a would differ on bytes ≥ 0x80; the offset basis and prime are the standard ones.
    expect(fastTextHash(new TextEncoder().encode('a'))).toBe(0xe40c292c);
  });

  it('reports kinds, tokens and UTF-16 offsets of each id', () => {
    const text = '🙂  hello __label__en Straße';
    const e = tokenizer.encode(text);
    expect(e.words).toBe(5); // 🙂, hello, __label__en, Straße, </s>
    expect(e.ids).toHaveLength(e.tokens.length);
    expect(e.ids).toHaveLength(e.kinds.length);
    expect(e.ids).toHaveLength(e.offsets.length);
    e.ids.forEach((id, k) => {
      const [start, end] = e.offsets[k]!;
      const word = text.slice(start, end);
      if (e.kinds[k] === 'ngram') {
        expect(id).toBeGreaterThanOrEqual(tokenizer.nwords);
        expect(`<${word}>`).toContain(e.tokens[k]);
      } else {
        expect(id).toBeLessThan(tokenizer.nwords);
        expect(tokenizer.idToToken(id)).toBe(e.tokens[k]);
        if (e.kinds[k] === 'word') expect(word).toBe(e.tokens[k]);
      }
    });
    expect(e.offsets.filter((_, k) => e.kinds[k] === 'word' && e.tokens[k] === 'hello')).toEqual([[4, 9]]);
    // the emoji is two UTF-16 code units
    expect(e.offsets.filter(([s]) => s === 0).every(([, end]) => end === 2)).toBe(true);
    expect(e.kinds.at(-1)).toBe('eos');
    expect(e.offsets.at(-1)).toEqual([text.length, text.length]);
    // the label contributes nothing
    expect(e.offsets.some(([s]) => s === 10)).toBe(false);
    expect(tokenizer.idToToken(tokenizer.nwords)).toBeUndefined();
    expect(tokenizer.idToToken(-1)).toBeUndefined();
  });

  it('handles empty, blank-only, multi-line and malformed text', () => {
    expect(tokenizer.encode('')).toEqual({
      ids: [0],
      tokens: ['</s>'],
      offsets: [[0, 0]],
      kinds: ['eos'],
      words: 1,
    });
    expect(tokenizer.encode(' \n\t ').ids).toEqual([0]);
    // a newline is a separator; </s> comes once, at the end (fastText's predict would stop at the newline)
    expect(tokenizer.encode('bonjour\nle monde').ids).toEqual(tokenizer.encode('bonjour le monde').ids);
    // a lone surrogate is encoded as U+FFFD, like TextEncoder does
    expect(tokenizer.encode('a\ud800b').ids).toEqual(tokenizer.encode('a\ufffdb').ids);
    // a `</s>` typed in ends the text, as in fastText
    const typed = tokenizer.encode('bonjour </s> hello world');
    expect(typed.ids).toEqual(tokenizer.encode('bonjour').ids);
    expect(typed.offsets.at(-1)).toEqual([8, 12]);
    const long = 'ab'.repeat(50_000);
    expect(tokenizer.count(long)).toBe(tokenizer.encode(long).ids.length);
  });

  it('validates its file and names the problem', () => {
    const good = JSON.parse(readFileSync(TOKENIZER_FILE, 'utf8')) as FastTextTokenizerFile;
    expect(FastTextTokenizer.fromJSON(good).vocabSize).toBe(tokenizer.vocabSize);
    expect(() => FastTextTokenizer.fromJSON({ ...good, type: 'wordpiece' })).toThrow(/type/);
    expect(() => FastTextTokenizer.fromJSON({ ...good, wordNgrams: 2 })).toThrow(/wordNgrams/);
    expect(() => FastTextTokenizer.fromJSON({ ...good, nwords: 3 })).toThrow(/nwords/);
    expect(() => FastTextTokenizer.fromJSON({ ...good, minn: 5, maxn: 3 })).toThrow(/minn/);
    const dir = mkdtempSync(join(tmpdir(), 'fasttext-'));
    writeFileSync(join(dir, 'bad.json'), '{"type": "fasttext"');
    expect(() => FastTextTokenizer.fromFile(join(dir, 'bad.json'))).toThrow(/bad\.json/);
  });

  it('is fast enough for a tokenizer service', () => {
    const text =
      'The quick brown fox jumps over the lazy dog; le renard brun saute par-dessus le chien paresseux.';
    const fresh = FastTextTokenizer.fromFile(TOKENIZER_FILE);
    const started = process.hrtime.bigint();
    let ids = 0;
    for (let i = 0; i < 5_000; i++) ids += fresh.encode(`${text} ${i}`).ids.length;
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    console.log(`fastText tokenizer: 5000 sentences (${ids} ids) in ${ms.toFixed(0)} ms`);
    expect(ms).toBeLessThan(5_000);
  });
});
