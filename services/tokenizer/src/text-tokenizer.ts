/**
 * One interface over the tokenizer families maas serves: Hugging Face
 * `tokenizer.json` (BPE, WordPiece, Unigram, WordLevel) through the Rust
 * `tokenizers` library, and fastText's words + hashed n-grams.
 */
import { readFileSync } from 'node:fs';
import { type Encoding as RustEncoding, Tokenizer as RustTokenizer } from '@anush008/tokenizers';
import { FastTextTokenizer } from '@maas/models';

export type TokenizerKind = 'bpe' | 'wordpiece' | 'unigram' | 'wordlevel' | 'fasttext';

export interface TruncationOptions {
  maxLength: number;
  strategy: 'longest_first' | 'only_first' | 'only_second';
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

export interface TextEncoding {
  ids: number[];
  attentionMask: number[];
  typeIds: number[];
  specialTokensMask: number[];
  /** [start, end) in UTF-16 code units of the input. */
  offsets: [number, number][];
  tokens: string[];
  length: number;
  truncated: boolean;
}

export interface TextTokenizer {
  readonly name: string;
  readonly kind: TokenizerKind;
  readonly vocabSize: number;
  readonly source: string;
  readonly specialTokens: Record<string, string>;
  readonly modelMaxLength: number;
  encodeBatch(texts: string[], pairs: string[] | undefined, options: EncodeOptions): Promise<TextEncoding[]>;
  countBatch(texts: string[], addSpecialTokens: boolean): Promise<number[]>;
  decodeBatch(sequences: number[][], skipSpecialTokens: boolean): Promise<string[]>;
}

/** Code-point offsets (what the Rust library returns) → UTF-16 offsets (what JavaScript and our clients index). */
function codePointToUtf16(text: string): ((cp: number) => number) | undefined {
  if (!/[\uD800-\uDFFF]/.test(text)) return undefined;
  const map: number[] = [];
  let unit = 0;
  for (const ch of text) {
    map.push(unit);
    unit += ch.length;
  }
  map.push(unit);
  return (cp) => map[cp] ?? unit;
}

function pad(encodings: TextEncoding[], padding: PaddingOptions, padId: number, padToken: string): void {
  let target =
    padding.strategy === 'fixed' ? padding.length : Math.max(0, ...encodings.map((e) => e.ids.length));
  if (padding.padToMultipleOf > 1)
    target = Math.ceil(target / padding.padToMultipleOf) * padding.padToMultipleOf;
  for (const e of encodings) {
    const n = target - e.ids.length;
    if (n <= 0) continue;
    const add = <T>(arr: T[], value: T) => {
      const fill = new Array<T>(n).fill(value);
      if (padding.side === 'left') arr.unshift(...fill);
      else arr.push(...fill);
    };
    add(e.ids, padId);
    add(e.attentionMask, 0);
    add(e.typeIds, 0);
    add(e.specialTokensMask, 1);
    if (e.offsets.length) add<[number, number]>(e.offsets, [0, 0]);
    if (e.tokens.length) add(e.tokens, padToken);
  }
}

interface TokenizerJson {
  model?: { type?: string };
  added_tokens?: { id: number; content: string; special: boolean }[];
  padding?: { pad_id?: number; pad_token?: string } | null;
  model_max_length?: number;
}

const SPECIAL_ROLES: [string, RegExp][] = [
  ['pad', /^(\[PAD\]|<pad>)$/],
  ['unk', /^(\[UNK\]|<unk>)$/],
  ['cls', /^(\[CLS\]|<s>)$/],
  ['sep', /^(\[SEP\]|<\/s>)$/],
  ['mask', /^(\[MASK\]|<mask>)$/],
  ['bos', /^(<s>|<\|startoftext\|>)$/],
  ['eos', /^(<\/s>|<\|endoftext\|>)$/],
];

export class HuggingFaceTokenizer implements TextTokenizer {
  readonly kind: TokenizerKind;
  readonly vocabSize: number;
  readonly specialTokens: Record<string, string> = {};
  readonly modelMaxLength: number;
  private readonly tokenizer: RustTokenizer;
  private readonly padId: number;
  private readonly padToken: string;
  private readonly specialCount: { single: number; pair: number };

  private constructor(
    readonly name: string,
    readonly source: string,
    json: TokenizerJson,
    text: string,
    specialCount: { single: number; pair: number } | undefined,
  ) {
    this.tokenizer = RustTokenizer.fromString(text);
    this.kind = (json.model?.type ?? 'bpe').toLowerCase() as TokenizerKind;
    this.vocabSize = this.tokenizer.getVocabSize(true);
    for (const added of json.added_tokens ?? []) {
      if (!added.special) continue;
      for (const [role, pattern] of SPECIAL_ROLES) {
        if (pattern.test(added.content) && !(role in this.specialTokens))
          this.specialTokens[role] = added.content;
      }
    }
    this.padToken = json.padding?.pad_token ?? this.specialTokens.pad ?? this.specialTokens.eos ?? '';
    this.padId = json.padding?.pad_id ?? this.tokenizer.tokenToId(this.padToken) ?? 0;
    this.modelMaxLength = json.model_max_length ?? 0;
    this.specialCount = specialCount ?? { single: 0, pair: 0 };
  }

  static async fromFile(name: string, path: string): Promise<HuggingFaceTokenizer> {
    const text = readFileSync(path, 'utf8');
    const json = JSON.parse(text) as TokenizerJson;
    const probe = new HuggingFaceTokenizer(name, path, json, text, undefined);
    // How many tokens the post-processor adds, so truncation leaves room for them (as HF does).
    const count = async (pair: string | null) =>
      (await probe.tokenizer.encode('', pair, { addSpecialTokens: true })).getLength() -
      (await probe.tokenizer.encode('', pair, { addSpecialTokens: false })).getLength();
    return new HuggingFaceTokenizer(name, path, json, text, {
      single: await count(null),
      pair: await count(''),
    });
  }

  async encodeBatch(
    texts: string[],
    pairs: string[] | undefined,
    options: EncodeOptions,
  ): Promise<TextEncoding[]> {
    const plain = !options.truncation && !pairs;
    const firsts = await this.tokenizer.encodeBatch(texts, {
      addSpecialTokens: plain && options.addSpecialTokens,
    });
    const seconds = pairs ? await this.tokenizer.encodeBatch(pairs, { addSpecialTokens: false }) : undefined;
    const out = firsts.map((first, i) => {
      let encoding: RustEncoding = first;
      let truncated = false;
      if (!plain) {
        const second = seconds?.[i] ?? null;
        if (options.truncation) truncated = this.truncate(first, second, options);
        encoding = this.tokenizer.postProcess(first, second, options.addSpecialTokens);
      }
      return this.toTextEncoding(encoding, texts[i]!, pairs?.[i], options, truncated);
    });
    if (options.padding) pad(out, options.padding, this.padId, this.padToken);
    return out;
  }

  private truncate(first: RustEncoding, second: RustEncoding | null, options: EncodeOptions): boolean {
    const t = options.truncation!;
    const specials = options.addSpecialTokens
      ? second
        ? this.specialCount.pair
        : this.specialCount.single
      : 0;
    const budget = Math.max(0, t.maxLength - specials);
    let a = first.getLength();
    let b = second?.getLength() ?? 0;
    if (a + b <= budget) return false;
    if (!second || t.strategy === 'only_first') a = Math.max(0, budget - b);
    else if (t.strategy === 'only_second') b = Math.max(0, budget - a);
    else {
      // longest_first: take from the longer one until both fit
      while (a + b > budget) {
        if (a >= b) a--;
        else b--;
      }
    }
    const direction = t.side === 'left' ? 'left' : 'right';
    if (a < first.getLength()) first.truncate(a, t.stride, direction);
    if (second && b < second.getLength()) second.truncate(b, t.stride, direction);
    return true;
  }

  private toTextEncoding(
    e: RustEncoding,
    text: string,
    pair: string | undefined,
    options: EncodeOptions,
    truncated: boolean,
  ): TextEncoding {
    const ids = e.getIds();
    let offsets: [number, number][] = [];
    if (options.offsets) {
      const sequenceIds = pair !== undefined ? e.getSequenceIds() : undefined;
      const maps = [codePointToUtf16(text), pair !== undefined ? codePointToUtf16(pair) : undefined];
      offsets = e.getOffsets().map(([start, end], i) => {
        const map = maps[sequenceIds?.[i] ?? 0];
        return map ? [map(start!), map(end!)] : [start!, end!];
      });
    }
    return {
      ids,
      attentionMask: e.getAttentionMask(),
      typeIds: e.getTypeIds(),
      specialTokensMask: e.getSpecialTokensMask(),
      offsets,
      tokens: options.tokens ? e.getTokens() : [],
      length: ids.length,
      truncated,
    };
  }

  async countBatch(texts: string[], addSpecialTokens: boolean): Promise<number[]> {
    const encodings = await this.tokenizer.encodeBatch(texts, { addSpecialTokens });
    return encodings.map((e) => e.getLength());
  }

  decodeBatch(sequences: number[][], skipSpecialTokens: boolean): Promise<string[]> {
    return this.tokenizer.decodeBatch(sequences, skipSpecialTokens);
  }
}

export class FastTextTextTokenizer implements TextTokenizer {
  readonly kind = 'fasttext' as const;
  readonly vocabSize: number;
  readonly specialTokens = { eos: '</s>' };
  readonly modelMaxLength = 0;
  private readonly tokenizer: FastTextTokenizer;

  constructor(
    readonly name: string,
    readonly source: string,
  ) {
    this.tokenizer = FastTextTokenizer.fromFile(source);
    this.vocabSize = this.tokenizer.vocabSize;
  }

  async encodeBatch(
    texts: string[],
    pairs: string[] | undefined,
    options: EncodeOptions,
  ): Promise<TextEncoding[]> {
    if (pairs) throw new Error('fastText tokenizers do not take text pairs');
    const out = texts.map((text): TextEncoding => {
      const e = this.tokenizer.encode(text);
      let { ids, offsets, tokens } = e;
      let truncated = false;
      const max = options.truncation?.maxLength;
      if (max !== undefined && ids.length > max) {
        truncated = true;
        const keep = (a: unknown[]) =>
          options.truncation!.side === 'left' ? a.slice(a.length - max) : a.slice(0, max);
        ids = keep(ids) as number[];
        offsets = keep(offsets) as [number, number][];
        tokens = keep(tokens) as string[];
      }
      return {
        ids,
        attentionMask: ids.map(() => 1),
        typeIds: ids.map(() => 0),
        specialTokensMask: tokens.map((t) => (t === '</s>' ? 1 : 0)),
        offsets: options.offsets ? offsets : [],
        tokens: options.tokens ? tokens : [],
        length: ids.length,
        truncated,
      };
    });
    if (options.padding) pad(out, options.padding, 0, '</s>');
    return out;
  }

  async countBatch(texts: string[]): Promise<number[]> {
    return texts.map((t) => this.tokenizer.count(t));
  }

  /** Only word ids have text; n-gram ids decode to nothing. */
  async decodeBatch(sequences: number[][], skipSpecialTokens: boolean): Promise<string[]> {
    return sequences.map((ids) =>
      ids
        .map((id) => this.tokenizer.idToToken(id))
        .filter((w): w is string => w !== undefined && !(skipSpecialTokens && w === '</s>'))
        .join(' '),
    );
  }
}
