/**
 * fastText's input tokenisation, id for id: whitespace-separated words, the
 * end-of-sentence token, and hashed character n-grams of `<word>`. Used by the
 * tokenizer service for fastText models and by the converter's checks.
 */
import { readFileSync } from 'node:fs';

export const FASTTEXT_EOS = '</s>';
const BOW = '<';
const EOW = '>';
const LABEL_PREFIX = '__label__';

/** The `tokenizer.json` of a fastText model in the maas model repository. */
export interface FastTextTokenizerFile {
  type: 'fasttext';
  version: 1;
  minn: number;
  maxn: number;
  bucket: number;
  wordNgrams: number;
  /** Input words in id order (labels are not inputs). */
  words: string[];
  /** [bucket, row] pairs; null when the model was not pruned (row = bucket). */
  pruneIndex: [number, number][] | null;
}

export interface FastTextEncoding {
  ids: number[];
  /** Token strings: the word, `</s>`, or the n-gram (with `<`/`>` marks). */
  tokens: string[];
  /** [start, end) of the word each id comes from, in UTF-16 code units of the input. */
  offsets: [number, number][];
  /** Number of whitespace-separated words (plus `</s>`). */
  words: number;
}

const encoder = new TextEncoder();

/** fastText's hash: FNV-1a over the UTF-8 bytes, each byte sign-extended as int8 first. */
export function fastTextHash(bytes: Uint8Array): number {
  let h = 2166136261;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    h ^= b >= 128 ? (b - 256) >>> 0 : b;
    h = Math.imul(h, 16777619) >>> 0;
  }
  return h >>> 0;
}

function isSpace(code: number): boolean {
  // fastText's readWord separators: space, \n, \r, \t, \v, \f, \0.
  return code === 32 || code === 10 || code === 13 || code === 9 || code === 11 || code === 12 || code === 0;
}

interface Subwords {
  ids: number[];
  tokens: string[];
}

export class FastTextTokenizer {
  readonly nwords: number;
  /** Rows of the input matrix: words plus kept n-gram buckets. */
  readonly vocabSize: number;
  private readonly wordIds = new Map<string, number>();
  private readonly pruneIndex: Map<number, number> | null;
  private readonly cache = new Map<string, Subwords>();
  private static readonly CACHE_LIMIT = 100_000;

  constructor(private readonly file: FastTextTokenizerFile) {
    if (file.type !== 'fasttext')
      throw new Error(`not a fastText tokenizer file (type ${String(file.type)})`);
    this.nwords = file.words.length;
    file.words.forEach((w, i) => this.wordIds.set(w, i));
    this.pruneIndex = file.pruneIndex ? new Map(file.pruneIndex) : null;
    this.vocabSize = this.nwords + (this.pruneIndex ? this.pruneIndex.size : file.bucket);
  }

  static fromFile(path: string): FastTextTokenizer {
    return new FastTextTokenizer(JSON.parse(readFileSync(path, 'utf8')) as FastTextTokenizerFile);
  }

  static fromJSON(file: FastTextTokenizerFile): FastTextTokenizer {
    return new FastTextTokenizer(file);
  }

  get minn(): number {
    return this.file.minn;
  }
  get maxn(): number {
    return this.file.maxn;
  }

  /** The word for a word id; undefined for n-gram ids. */
  idToToken(id: number): string | undefined {
    return id < this.nwords ? this.file.words[id] : undefined;
  }

  encode(text: string): FastTextEncoding {
    const out: FastTextEncoding = { ids: [], tokens: [], offsets: [], words: 0 };
    let start = -1;
    for (let i = 0; i <= text.length; i++) {
      const code = i < text.length ? text.charCodeAt(i) : 32;
      if (isSpace(code)) {
        if (start >= 0) {
          this.pushWord(out, text.slice(start, i), start, i);
          start = -1;
        }
      } else if (start < 0) {
        start = i;
      }
    }
    // fastText reads a line up to '\n', which it turns into the end-of-sentence token.
    this.pushWord(out, FASTTEXT_EOS, text.length, text.length);
    return out;
  }

  /** Token count without building strings or offsets. */
  count(text: string): number {
    let n = 0;
    let start = -1;
    for (let i = 0; i <= text.length; i++) {
      const code = i < text.length ? text.charCodeAt(i) : 32;
      if (isSpace(code)) {
        if (start >= 0) {
          n += this.subwords(text.slice(start, i)).ids.length;
          start = -1;
        }
      } else if (start < 0) start = i;
    }
    return n + this.subwords(FASTTEXT_EOS).ids.length;
  }

  private pushWord(out: FastTextEncoding, word: string, start: number, end: number): void {
    out.words++;
    const sub = this.subwords(word);
    for (let k = 0; k < sub.ids.length; k++) {
      out.ids.push(sub.ids[k]!);
      out.tokens.push(sub.tokens[k]!);
      out.offsets.push([start, end]);
    }
  }

  private subwords(word: string): Subwords {
    const cached = this.cache.get(word);
    if (cached) return cached;
    const result: Subwords = { ids: [], tokens: [] };
    const wid = this.wordIds.get(word);
    // Out-of-vocabulary tokens that look like labels are labels, not input words (fastText's getType).
    if (wid === undefined && word.startsWith(LABEL_PREFIX)) return result;
    if (wid !== undefined) {
      result.ids.push(wid);
      result.tokens.push(word);
    }
    if (word !== FASTTEXT_EOS && this.file.maxn > 0) this.addNgrams(BOW + word + EOW, result);
    if (this.cache.size >= FastTextTokenizer.CACHE_LIMIT) this.cache.clear();
    this.cache.set(word, result);
    return result;
  }

  /** fastText's computeSubwords: n-grams of whole UTF-8 characters, minus the lone `<` and `>`. */
  private addNgrams(word: string, out: Subwords): void {
    const bytes = encoder.encode(word);
    const { minn, maxn, bucket } = this.file;
    for (let i = 0; i < bytes.length; i++) {
      if ((bytes[i]! & 0xc0) === 0x80) continue;
      let j = i;
      for (let n = 1; j < bytes.length && n <= maxn; n++) {
        j++;
        while (j < bytes.length && (bytes[j]! & 0xc0) === 0x80) j++;
        if (n >= minn && !(n === 1 && (i === 0 || j === bytes.length))) {
          const ngram = bytes.subarray(i, j);
          const h = fastTextHash(ngram) % bucket;
          const row = this.pruneIndex ? this.pruneIndex.get(h) : h;
          if (row !== undefined) {
            out.ids.push(this.nwords + row);
            out.tokens.push(new TextDecoder().decode(ngram));
          }
        }
      }
    }
  }
}
