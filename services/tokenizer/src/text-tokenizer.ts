/**
 * What the service needs of a tokenizer, whatever its family: Hugging Face
 * `tokenizer.json` files (BPE, WordPiece, Unigram, WordLevel) and fastText's
 * words + hashed n-grams. Nothing here knows about gRPC.
 */

export type TokenizerKind = 'bpe' | 'wordpiece' | 'unigram' | 'wordlevel' | 'fasttext' | 'unknown';

export interface TruncationOptions {
  maxLength: number;
  /** 'refuse': inputs longer than maxLength are an error, nothing is cut. */
  strategy: 'refuse' | 'longest_first' | 'only_first' | 'only_second';
  side: 'right' | 'left';
  stride: number;
}

export interface PaddingOptions {
  strategy: 'longest' | 'fixed';
  length: number;
  side: 'right' | 'left';
  padToMultipleOf: number;
}

export interface EncodeOptions {
  addSpecialTokens: boolean;
  truncation?: TruncationOptions;
  padding?: PaddingOptions;
  offsets: boolean;
  tokens: boolean;
}

export interface DecodeOptions {
  skipSpecialTokens: boolean;
  /** Undefined: as the tokenizer's decoder is configured; true/false forces the clean-up on or off. */
  cleanUpTokenizationSpaces?: boolean;
}

export interface TextEncoding {
  ids: number[];
  attentionMask: number[];
  typeIds: number[];
  specialTokensMask: number[];
  /** [start, end) in UTF-16 code units of the input; empty unless asked for. */
  offsets: [number, number][];
  /** Empty unless asked for. */
  tokens: string[];
  /** Tokens before padding. */
  length: number;
  truncated: boolean;
}

export interface TextTokenizer {
  readonly name: string;
  readonly kind: TokenizerKind;
  /** Ids are valid below this. */
  readonly vocabSize: number;
  /** The file it was loaded from. */
  readonly source: string;
  /** Special tokens by role (pad, unk, cls, sep, mask, bos, eos). */
  readonly specialTokens: Record<string, string>;
  /** 0 when unknown. */
  readonly modelMaxLength: number;
  encodeBatch(texts: string[], pairs: string[] | undefined, options: EncodeOptions): Promise<TextEncoding[]>;
  /** Token counts as encodeBatch would give them, built as cheaply as the family allows. */
  countBatch(texts: string[], addSpecialTokens: boolean): Promise<number[]>;
  decodeBatch(sequences: number[][], options: DecodeOptions): Promise<string[]>;
}

/**
 * A problem with the input the caller can fix (too long for the truncation
 * asked, a pair for a tokenizer without pairs): the server turns it into
 * INVALID_ARGUMENT naming the field.
 */
export class TokenizerInputError extends Error {
  constructor(
    /** The index of the text in the batch, or the name of the request field at fault. */
    readonly at: number | string,
    message: string,
  ) {
    super(message);
    this.name = 'TokenizerInputError';
  }
}

/**
 * The Rust library counts offsets in code points; JavaScript and the proto in
 * UTF-16 code units. Only texts with astral characters (surrogate pairs) differ,
 * so the common case costs one regex test.
 */
export function codePointToUtf16(text: string): ((codePoint: number) => number) | undefined {
  if (!/[\uD800-\uDFFF]/.test(text)) return undefined;
  const units: number[] = [];
  let unit = 0;
  for (const ch of text) {
    units.push(unit);
    unit += ch.length;
  }
  units.push(unit);
  return (codePoint) => units[codePoint] ?? unit;
}

/** The length a batch is padded to: the longest or the fixed length, rounded up to the multiple. */
export function paddedLength(lengths: number[], padding: PaddingOptions): number {
  let target = padding.strategy === 'fixed' ? padding.length : Math.max(0, ...lengths);
  if (padding.padToMultipleOf > 1) {
    target = Math.ceil(target / padding.padToMultipleOf) * padding.padToMultipleOf;
  }
  return target;
}

/**
 * Pads encodings in place, as the Rust library's Encoding.pad does (pad id,
 * type id 0, attention 0, special 1, offsets [0, 0], the pad token), on the
 * arrays already in JavaScript: cheaper than padding in the library and then
 * copying every array across again.
 */
export function padEncodings(
  encodings: TextEncoding[],
  padding: PaddingOptions,
  padId: number,
  padToken: string,
  include: { offsets: boolean; tokens: boolean },
): void {
  const target = paddedLength(
    encodings.map((e) => e.ids.length),
    padding,
  );
  for (const e of encodings) {
    const n = target - e.ids.length;
    if (n <= 0) continue;
    const extend = <T>(values: T[], value: T): T[] => {
      const fill = new Array<T>(n).fill(value);
      return padding.side === 'left' ? fill.concat(values) : values.concat(fill);
    };
    e.ids = extend(e.ids, padId);
    e.attentionMask = extend(e.attentionMask, 0);
    e.typeIds = extend(e.typeIds, 0);
    e.specialTokensMask = extend(e.specialTokensMask, 1);
    if (include.offsets) e.offsets = extend<[number, number]>(e.offsets, [0, 0]);
    if (include.tokens) e.tokens = extend(e.tokens, padToken);
  }
}

/**
 * How many tokens each side keeps so that a (pair of) sequence(s) fits in
 * `budget` tokens: the Rust `tokenizers` truncate_encodings rules (longest
 * first trims the longer sequence down to the shorter, then splits evenly).
 */
export function truncatedLengths(
  first: number,
  second: number | undefined,
  budget: number,
  strategy: Exclude<TruncationOptions['strategy'], 'refuse'>,
): { first: number; second: number | undefined } | string {
  const total = first + (second ?? 0);
  if (total <= budget) return { first, second };
  if (budget === 0) return { first: 0, second: second === undefined ? undefined : 0 };
  const toRemove = total - budget;
  if (strategy === 'longest_first') {
    if (second === undefined) return { first: budget, second };
    let [short, long] = first > second ? [second, first] : [first, second];
    long = short > budget ? short : Math.max(short, budget - short);
    if (short + long > budget) {
      short = Math.floor(budget / 2);
      long = short + (budget % 2);
    }
    return first > second ? { first: long, second: short } : { first: short, second: long };
  }
  if (strategy === 'only_second' && second === undefined) {
    return 'ONLY_SECOND truncation needs a text pair';
  }
  const target = strategy === 'only_first' ? first : second!;
  if (target <= toRemove) {
    return `the ${strategy === 'only_first' ? 'first' : 'second'} sequence (${target} tokens) is too short to remove the ${toRemove} tokens over max_length`;
  }
  return strategy === 'only_first'
    ? { first: first - toRemove, second }
    : { first, second: second! - toRemove };
}
