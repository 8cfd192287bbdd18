/**
 * fastText's input tokenisation for supervised models, id for id, as its
 * `predict` sees one line of text (fastText 0.9.2 `Dictionary::getLine`,
 * `addSubwords`, `computeSubwords`, `pushHash`, `hash`):
 *
 * - words are split on the bytes fastText's `readWord` treats as blanks:
 *   space, \t, \n, \v, \f, \r and \0;
 * - the end-of-sentence token `</s>` is appended once, at the end: fastText's
 *   `predict` (and the wasm build's) reads the text plus a final newline, which
 *   `readWord` turns into `</s>`. A newline inside the text is a plain separator
 *   here, whereas fastText's `predict` would stop reading at it (its Python API
 *   refuses such text): a multi-line text is classified as the single line it
 *   would be with its newlines replaced by spaces. A `</s>` typed in the text
 *   ends it, as in fastText (what follows is not read);
 * - a word found in the dictionary contributes its id; every word except `</s>`
 *   contributes the character n-grams of `<word>` for n in [minn, maxn] (whole
 *   UTF-8 characters; the 1-grams `<` and `>` are skipped), hashed with FNV-1a
 *   over bytes sign-extended as int8, modulo `bucket`, mapped through the prune
 *   index (dropped when absent) and offset by `nwords`;
 * - tokens that are labels (`__label__…`) are not input and contribute nothing.
 *
 * Text is encoded as UTF-8 the WHATWG way: a lone surrogate becomes U+FFFD.
 * The tokenizer service imports this class at run time, so it depends on
 * nothing but Node and caches the subwords of words it has seen.
 */
import { readFileSync } from 'node:fs';

export const FASTTEXT_EOS = '</s>';
export const FASTTEXT_LABEL_PREFIX = '__label__';
const BOW = '<';
const EOW = '>';

/** The `tokenizer.json` of a fastText model in the maas model repository. */
export interface FastTextTokenizerFile {
  type: 'fasttext';
  version: 1;
  /** Character n-gram lengths; maxn 0 means no subwords. */
  minn: number;
  maxn: number;
  /** Number of hash buckets n-grams are taken modulo. */
  bucket: number;
  /** fastText's word n-gram length; only 1 (no word n-grams) is supported. */
  wordNgrams: number;
  /** Number of input words: ids 0..nwords−1 are words, n-gram ids start at nwords. */
  nwords: number;
  /** Input words in id order (labels are not inputs). */
  words: string[];
  /** [bucket, row] pairs sorted by bucket; null when the model was not pruned (row = bucket). */
  pruneIndex: [number, number][] | null;
  /** The end-of-sentence token, `</s>`. */
  eos: string;
}

/** A word id, the end-of-sentence word id, or a character n-gram id. */
export type FastTextTokenKind = 'word' | 'eos' | 'ngram';

export interface FastTextEncoding {
  /** Rows of the model's input matrix, in fastText's order: per word its id (if known), then its n-grams. */
  ids: number[];
  /** What each id stands for: the word, `</s>`, or the n-gram with its `<`/`>` marks. */
  tokens: string[];
  /** Per id: [start, end) of the word it comes from, in UTF-16 code units of the input; `</s>` is [length, length]. */
  offsets: [number, number][];
  /** Per id: whether it is a dictionary word, the end-of-sentence token, or a character n-gram. */
  kinds: FastTextTokenKind[];
  /** Whitespace-separated words in the input, `</s>` included. */
  words: number;
}

interface Subwords {
  ids: number[];
  tokens: string[];
  kinds: FastTextTokenKind[];
}

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

/** fastText's hash: 32-bit FNV-1a over the UTF-8 bytes, each byte sign-extended as int8 first. */
export function fastTextHash(bytes: Uint8Array): number {
  let h = 2166136261;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    h ^= b >= 128 ? (b | 0xffffff00) >>> 0 : b;
    h = Math.imul(h, 16777619) >>> 0;
  }
  return h;
}

/** fastText's `readWord` blanks. Every one is ASCII, so UTF-16 and UTF-8 split alike. */
function isBlank(code: number): boolean {
  return code === 32 || (code >= 9 && code <= 13) || code === 0;
}

function fail(message: string): never {
  throw new Error(`fastText tokenizer file: ${message}`);
}

function validate(file: unknown): FastTextTokenizerFile {
  const f = file as Partial<FastTextTokenizerFile> | null;
  if (typeof f !== 'object' || f === null) fail('not a JSON object');
  if (f.type !== 'fasttext') fail(`type is ${JSON.stringify(f.type)}, expected "fasttext"`);
  if (f.version !== 1) fail(`unsupported version ${JSON.stringify(f.version)}`);
  for (const key of ['minn', 'maxn', 'bucket', 'wordNgrams'] as const) {
    if (!Number.isInteger(f[key]) || f[key]! < 0) fail(`${key} must be a non-negative integer`);
  }
  if (f.wordNgrams! > 1) fail(`wordNgrams ${f.wordNgrams} (word n-grams) is not supported`);
  if (f.maxn! > 0 && (f.minn! < 1 || f.minn! > f.maxn! || f.bucket! < 1)) {
    fail('needs 1 ≤ minn ≤ maxn and bucket ≥ 1 when maxn > 0');
  }
  if (!Array.isArray(f.words) || f.words.some((w) => typeof w !== 'string')) fail('words must be strings');
  // Files written before nwords/eos were recorded carry the same information implicitly.
  if (f.nwords !== undefined && f.nwords !== f.words.length) {
    fail(`nwords is ${f.nwords} but ${f.words.length} words are listed`);
  }
  if (f.pruneIndex !== null && !Array.isArray(f.pruneIndex)) fail('pruneIndex must be an array or null');
  return {
    type: 'fasttext',
    version: 1,
    minn: f.minn!,
    maxn: f.maxn!,
    bucket: f.bucket!,
    wordNgrams: f.wordNgrams!,
    nwords: f.words.length,
    words: f.words,
    pruneIndex: f.pruneIndex ?? null,
    eos: f.eos ?? FASTTEXT_EOS,
  };
}

export class FastTextTokenizer {
  /** Number of word ids (dictionary words, `</s>` included); n-gram ids are ≥ nwords. */
  readonly nwords: number;
  /**
   * Number of distinct ids = rows of the model's input matrix: nwords plus the
   * kept n-gram buckets (all `bucket` of them when the model was not pruned).
   */
  readonly vocabSize: number;
  readonly minn: number;
  readonly maxn: number;
  readonly bucket: number;
  readonly eos: string;
  private readonly words: string[];
  private readonly wordIds = new Map<string, number>();
  /** bucket → row; null when every bucket is a row. */
  private readonly pruneIndex: Map<number, number> | null;
  private readonly cache = new Map<string, Subwords>();
  private static readonly CACHE_LIMIT = 200_000;
  private static readonly NOTHING: Subwords = { ids: [], tokens: [], kinds: [] };

  private constructor(file: FastTextTokenizerFile) {
    this.nwords = file.nwords;
    this.words = file.words;
    this.minn = file.minn;
    this.maxn = file.maxn;
    this.bucket = file.bucket;
    this.eos = file.eos;
    file.words.forEach((w, i) => {
      if (!this.wordIds.has(w)) this.wordIds.set(w, i);
    });
    this.pruneIndex = file.pruneIndex ? new Map(file.pruneIndex) : null;
    this.vocabSize = this.nwords + (this.pruneIndex ? this.pruneIndex.size : file.bucket);
  }

  static fromFile(path: string): FastTextTokenizer {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(path, 'utf8'));
    } catch (error) {
      throw new Error(`${path}: ${(error as Error).message}`);
    }
    try {
      return FastTextTokenizer.fromJSON(parsed);
    } catch (error) {
      throw new Error(`${path}: ${(error as Error).message}`);
    }
  }

  /** From the parsed `tokenizer.json`; throws naming the bad field. */
  static fromJSON(file: unknown): FastTextTokenizer {
    return new FastTextTokenizer(validate(file));
  }

  /** The word of a word id; undefined for n-gram ids and ids out of range. */
  idToToken(id: number): string | undefined {
    return Number.isInteger(id) && id >= 0 && id < this.nwords ? this.words[id] : undefined;
  }

  /** The id of a dictionary word; undefined when the word is not in the dictionary. */
  tokenToId(word: string): number | undefined {
    return this.wordIds.get(word);
  }

  encode(text: string): FastTextEncoding {
    const out: FastTextEncoding = { ids: [], tokens: [], offsets: [], kinds: [], words: 0 };
    this.forEachWord(text, (sub, start, end) => {
      out.words++;
      for (let k = 0; k < sub.ids.length; k++) {
        out.ids.push(sub.ids[k]!);
        out.tokens.push(sub.tokens[k]!);
        out.kinds.push(sub.kinds[k]!);
        out.offsets.push([start, end]);
      }
    });
    return out;
  }

  /** Just the ids, for callers that need nothing else. */
  encodeIds(text: string): number[] {
    const ids: number[] = [];
    this.forEachWord(text, (sub) => {
      for (const id of sub.ids) ids.push(id);
    });
    return ids;
  }

  /** Number of ids `encode` would return, without building them. */
  count(text: string): number {
    let n = 0;
    this.forEachWord(text, (sub) => (n += sub.ids.length));
    return n;
  }

  /** Visits the words fastText reads, `</s>` last: a `</s>` typed in the text ends it, as in fastText's getLine. */
  private forEachWord(text: string, visit: (sub: Subwords, start: number, end: number) => void): void {
    let start = -1;
    for (let i = 0; i <= text.length; i++) {
      if (i === text.length || isBlank(text.charCodeAt(i))) {
        if (start >= 0) {
          const word = text.slice(start, i);
          visit(this.subwords(word), start, i);
          if (word === this.eos) return;
          start = -1;
        }
      } else if (start < 0) {
        start = i;
      }
    }
    visit(this.subwords(this.eos), text.length, text.length);
  }

  private subwords(word: string): Subwords {
    const cached = this.cache.get(word);
    if (cached) return cached;
    const wid = this.wordIds.get(word);
    let result: Subwords;
    if (wid === undefined && word.startsWith(FASTTEXT_LABEL_PREFIX)) {
      // fastText's getType: a token with the label prefix that is not an input word is a
      // label (known or not), and labels are not input.
      result = FastTextTokenizer.NOTHING;
    } else {
      result = { ids: [], tokens: [], kinds: [] };
      if (wid !== undefined) {
        result.ids.push(wid);
        result.tokens.push(word);
        result.kinds.push(word === this.eos ? 'eos' : 'word');
      }
      if (word !== this.eos && this.maxn > 0) this.addNgrams(BOW + word + EOW, result);
    }
    // A bounded cache: language identification traffic has a long tail of words.
    if (this.cache.size >= FastTextTokenizer.CACHE_LIMIT) this.cache.clear();
    this.cache.set(word, result);
    return result;
  }

  /** fastText's computeSubwords: n-grams of whole UTF-8 characters, minus the lone `<` and `>`. */
  private addNgrams(word: string, out: Subwords): void {
    const bytes = utf8.encode(word);
    const { minn, maxn, bucket, nwords, pruneIndex } = this;
    for (let i = 0; i < bytes.length; i++) {
      if ((bytes[i]! & 0xc0) === 0x80) continue;
      let j = i;
      for (let n = 1; j < bytes.length && n <= maxn; n++) {
        j++;
        while (j < bytes.length && (bytes[j]! & 0xc0) === 0x80) j++;
        if (n >= minn && !(n === 1 && (i === 0 || j === bytes.length))) {
          const ngram = bytes.subarray(i, j);
          const h = fastTextHash(ngram) % bucket;
          const row = pruneIndex ? pruneIndex.get(h) : h;
          if (row !== undefined) {
            out.ids.push(nwords + row);
            out.tokens.push(utf8Decoder.decode(ngram));
            out.kinds.push('ngram');
          }
        }
      }
    }
  }
}
