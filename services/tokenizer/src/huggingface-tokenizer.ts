/**
 * Hugging Face `tokenizer.json` files (byte-level BPE, WordPiece, Unigram,
 * WordLevel, with their normalizers, pre-tokenizers, post-processors, decoders
 * and added tokens) through the Rust `tokenizers` library's Node bindings
 * (README: why this library). Truncation and padding are applied per call on
 * the returned encodings, never with the library's setTruncation/setPadding:
 * those change the shared tokenizer, and concurrent calls ask for different
 * settings.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { type Encoding as RustEncoding, Tokenizer as RustTokenizer } from '@anush008/tokenizers';
import { Coalescer } from './coalescer.js';
import {
  codePointToUtf16,
  type DecodeOptions,
  type EncodeOptions,
  padEncodings,
  type TextEncoding,
  type TextTokenizer,
  TokenizerInputError,
  type TokenizerKind,
  truncatedLengths,
} from './text-tokenizer.js';

interface TokenizerJson {
  model?: { type?: string; unk_token?: string; unk_id?: number; vocab?: unknown };
  added_tokens?: { id: number; content: string; special: boolean }[];
  padding?: { pad_id?: number; pad_token?: string } | null;
  truncation?: { max_length?: number } | null;
  decoder?: DecoderJson | null;
}

interface DecoderJson {
  type?: string;
  cleanup?: boolean;
  decoders?: DecoderJson[];
}

/** The `tokenizer_config.json` transformers writes beside tokenizer.json: roles and the model's limit. */
type TokenizerConfigJson = Partial<
  Record<`${SpecialRole}_token`, string | { content?: string } | null> & { model_max_length: number }
>;

const SPECIAL_ROLES = ['pad', 'unk', 'cls', 'sep', 'mask', 'bos', 'eos'] as const;
type SpecialRole = (typeof SPECIAL_ROLES)[number];

/** Roles guessed from the usual spellings, when no tokenizer_config.json says. */
const ROLE_SPELLINGS: Record<SpecialRole, RegExp> = {
  pad: /^(\[PAD\]|<pad>|<\|pad\|>)$/,
  unk: /^(\[UNK\]|<unk>)$/,
  cls: /^(\[CLS\]|<cls>)$/,
  sep: /^(\[SEP\]|<sep>)$/,
  mask: /^(\[MASK\]|<mask>)$/,
  bos: /^(<s>|<\|startoftext\|>|<\|begin_of_text\|>|<bos>)$/,
  eos: /^(<\/s>|<\|endoftext\|>|<\|end_of_text\|>|<eos>)$/,
};

const KINDS: Record<string, TokenizerKind> = {
  BPE: 'bpe',
  WordPiece: 'wordpiece',
  Unigram: 'unigram',
  WordLevel: 'wordlevel',
};

/** transformers uses 1e30 for "no limit". */
const NO_LIMIT = 1e12;

/**
 * Where the post-processor puts its special tokens around one sequence, and
 * their type ids: with it, a single text's masks and type ids are built here
 * instead of copied out of the library array by array (a third of the library
 * time for a batch of short texts).
 */
interface SingleSequenceLayout {
  prefixTypes: number[];
  suffixTypes: number[];
  sequenceType: number;
}

const BARE_LAYOUT: SingleSequenceLayout = { prefixTypes: [], suffixTypes: [], sequenceType: 0 };

export interface HuggingFaceTokenizerSource {
  name: string;
  /** The tokenizer.json file. */
  path: string;
  /** The model's own limit (from its repository config), which wins over the tokenizer's. */
  modelMaxLength?: number;
}

function hasCleanup(decoder: DecoderJson | null | undefined): boolean {
  if (!decoder) return false;
  return decoder.cleanup === true || (decoder.decoders ?? []).some(hasCleanup);
}

function withoutCleanup(decoder: DecoderJson): DecoderJson {
  return {
    ...decoder,
    ...(decoder.cleanup !== undefined ? { cleanup: false } : {}),
    ...(decoder.decoders ? { decoders: decoder.decoders.map(withoutCleanup) } : {}),
  };
}

/**
 * transformers' `clean_up_tokenization`, for callers who ask for clean-up from
 * a tokenizer whose decoder has none: undoes the spaces before punctuation and
 * English contractions that word-level decoding leaves.
 */
export function cleanUpTokenizationSpaces(text: string): string {
  return text
    .replaceAll(' .', '.')
    .replaceAll(' ?', '?')
    .replaceAll(' !', '!')
    .replaceAll(' ,', ',')
    .replaceAll(" ' ", "'")
    .replaceAll(" n't", "n't")
    .replaceAll(" 'm", "'m")
    .replaceAll(" 's", "'s")
    .replaceAll(" 've", "'ve")
    .replaceAll(" 're", "'re");
}

/**
 * One past the largest id. The library counts distinct token strings, which is
 * less when a vocabulary repeats a piece (the Unigram test model has "”5" at
 * three ids), and every id of the model is still valid.
 */
function idLimit(json: TokenizerJson, distinctTokens: number): number {
  let limit = distinctTokens;
  const vocab = json.model?.vocab;
  if (Array.isArray(vocab)) limit = Math.max(limit, vocab.length);
  else if (vocab && typeof vocab === 'object') {
    for (const id of Object.values(vocab as Record<string, number>)) if (id >= limit) limit = id + 1;
  }
  for (const added of json.added_tokens ?? []) if (added.id >= limit) limit = added.id + 1;
  return limit;
}

function readTokenizerConfig(tokenizerPath: string): TokenizerConfigJson {
  const path = join(dirname(tokenizerPath), 'tokenizer_config.json');
  if (!existsSync(path)) return {};
  return JSON.parse(readFileSync(path, 'utf8')) as TokenizerConfigJson;
}

export class HuggingFaceTokenizer implements TextTokenizer {
  readonly name: string;
  readonly source: string;
  readonly kind: TokenizerKind;
  readonly vocabSize: number;
  readonly specialTokens: Record<string, string> = {};
  readonly modelMaxLength: number;
  private readonly tokenizer: RustTokenizer;
  private readonly padId: number;
  private readonly padToken: string;
  /** Tokens the post-processor adds to one sequence and to a pair (truncation leaves room for them, as HF does). */
  private specialsAdded = { single: 0, pair: 0 };
  /** The parsed file, kept only when its decoder cleans up, to build a variant that does not. */
  private readonly cleanupSource: TokenizerJson | undefined;
  private noCleanupTokenizer: RustTokenizer | undefined;
  private layout: SingleSequenceLayout | undefined;
  private readonly encoder = new Coalescer<boolean, string, RustEncoding>((addSpecialTokens, texts) =>
    this.tokenizer.encodeBatch(texts, { addSpecialTokens }),
  );
  private readonly decoder = new Coalescer<string, number[], string>((key, sequences) =>
    (key.startsWith('raw') ? this.withoutCleanup() : this.tokenizer).decodeBatch(
      sequences,
      key.endsWith(':skip'),
    ),
  );

  private constructor(source: HuggingFaceTokenizerSource, text: string) {
    const json = JSON.parse(text) as TokenizerJson;
    const config = readTokenizerConfig(source.path);
    this.name = source.name;
    this.source = source.path;
    this.tokenizer = RustTokenizer.fromString(text);
    this.kind = KINDS[json.model?.type ?? ''] ?? 'unknown';
    this.vocabSize = idLimit(json, this.tokenizer.getVocabSize(true));
    for (const role of SPECIAL_ROLES) {
      const configured = config[`${role}_token`];
      const content = typeof configured === 'string' ? configured : configured?.content;
      if (content) this.specialTokens[role] = content;
    }
    for (const added of json.added_tokens ?? []) {
      if (!added.special) continue;
      for (const role of SPECIAL_ROLES) {
        if (!(role in this.specialTokens) && ROLE_SPELLINGS[role].test(added.content)) {
          this.specialTokens[role] = added.content;
        }
      }
    }
    if (!this.specialTokens.unk && json.model?.unk_token) this.specialTokens.unk = json.model.unk_token;
    if (!this.specialTokens.unk && json.model?.unk_id !== undefined) {
      const unk = this.tokenizer.idToToken(json.model.unk_id);
      if (unk) this.specialTokens.unk = unk;
    }
    // Models without a pad token (GPT-2) are padded with end-of-sequence: the attention mask hides it.
    this.padToken =
      json.padding?.pad_token ??
      this.specialTokens.pad ??
      this.specialTokens.eos ??
      this.specialTokens.unk ??
      '';
    this.padId = json.padding?.pad_id ?? this.tokenizer.tokenToId(this.padToken) ?? 0;
    const configured = config.model_max_length;
    this.modelMaxLength =
      source.modelMaxLength ??
      (configured !== undefined && configured < NO_LIMIT ? configured : undefined) ??
      json.truncation?.max_length ??
      0;
    this.cleanupSource = hasCleanup(json.decoder) ? json : undefined;
  }

  static async load(source: HuggingFaceTokenizerSource): Promise<HuggingFaceTokenizer> {
    const tokenizer = new HuggingFaceTokenizer(source, readFileSync(source.path, 'utf8'));
    const added = async (pair: string | null) =>
      (await tokenizer.tokenizer.encode('', pair, { addSpecialTokens: true })).getLength() -
      (await tokenizer.tokenizer.encode('', pair, { addSpecialTokens: false })).getLength();
    tokenizer.specialsAdded = { single: await added(null), pair: await added('') };
    tokenizer.layout = await tokenizer.probeLayout();
    return tokenizer;
  }

  /** Undefined when the layout is not the plain "specials, sequence, specials" (masks are then copied). */
  private async probeLayout(): Promise<SingleSequenceLayout | undefined> {
    const bare = await this.tokenizer.encode('a', null, { addSpecialTokens: false });
    const full = await this.tokenizer.encode('a', null, { addSpecialTokens: true });
    const mask = full.getSpecialTokensMask();
    const types = full.getTypeIds();
    const middle = bare.getLength();
    const prefix = mask.indexOf(0);
    if (middle === 0 || prefix < 0 || full.getLength() !== middle + this.specialsAdded.single)
      return undefined;
    const suffix = mask.length - prefix - middle;
    const inside = mask.slice(prefix, prefix + middle);
    const outside = [...mask.slice(0, prefix), ...mask.slice(prefix + middle)];
    const sequenceTypes = new Set(types.slice(prefix, prefix + middle));
    const bareTypes = new Set(bare.getTypeIds());
    if (inside.some((m) => m !== 0) || outside.some((m) => m !== 1) || sequenceTypes.size !== 1)
      return undefined;
    if (bareTypes.size !== 1 || !bareTypes.has(0) || bare.getSpecialTokensMask().some((m) => m !== 0)) {
      return undefined;
    }
    return {
      prefixTypes: types.slice(0, prefix),
      suffixTypes: types.slice(mask.length - suffix),
      sequenceType: types[prefix]!,
    };
  }

  async encodeBatch(
    texts: string[],
    pairs: string[] | undefined,
    options: EncodeOptions,
  ): Promise<TextEncoding[]> {
    const truncation = options.truncation?.strategy === 'refuse' ? undefined : options.truncation;
    let encodings: RustEncoding[];
    const truncated = new Array<boolean>(texts.length).fill(false);
    if (!pairs && !truncation) {
      encodings = await this.encoder.run(options.addSpecialTokens, texts);
    } else {
      // Sequences are encoded bare, cut, then given their special tokens: the order HF's encode follows.
      const [firsts, seconds] = await Promise.all([
        this.encoder.run(false, texts),
        pairs ? this.encoder.run(false, pairs) : undefined,
      ]);
      encodings = firsts.map((first, i) => {
        const second = seconds?.[i];
        if (truncation) truncated[i] = this.truncate(i, first, second, truncation, options.addSpecialTokens);
        return this.tokenizer.postProcess(first, second ?? null, options.addSpecialTokens);
      });
    }
    const lengths = encodings.map((e) => e.getLength());
    const limit = options.truncation;
    if (limit?.strategy === 'refuse') {
      lengths.forEach((length, i) => {
        if (length > limit.maxLength) {
          throw new TokenizerInputError(
            i,
            `${length} tokens exceed truncation.max_length=${limit.maxLength} and no truncation strategy is set`,
          );
        }
      });
    }
    const out = encodings.map((e, i) =>
      this.toTextEncoding(e, texts[i]!, pairs?.[i], options, lengths[i]!, truncated[i]!),
    );
    if (options.padding) padEncodings(out, options.padding, this.padId, this.padToken, options);
    return out;
  }

  private truncate(
    index: number,
    first: RustEncoding,
    second: RustEncoding | undefined,
    truncation: NonNullable<EncodeOptions['truncation']>,
    addSpecialTokens: boolean,
  ): boolean {
    const specials = addSpecialTokens ? (second ? this.specialsAdded.pair : this.specialsAdded.single) : 0;
    const budget = truncation.maxLength - specials;
    if (budget < 0) {
      throw new TokenizerInputError(
        'truncation.max_length',
        `${truncation.maxLength} leaves no room for the ${specials} special tokens ${this.name} adds`,
      );
    }
    const lengths = truncatedLengths(
      first.getLength(),
      second?.getLength(),
      budget,
      truncation.strategy as Exclude<typeof truncation.strategy, 'refuse'>,
    );
    if (typeof lengths === 'string') throw new TokenizerInputError(index, lengths);
    let cut = false;
    if (lengths.first < first.getLength()) {
      first.truncate(lengths.first, truncation.stride, truncation.side);
      cut = true;
    }
    if (second && lengths.second !== undefined && lengths.second < second.getLength()) {
      second.truncate(lengths.second, truncation.stride, truncation.side);
      cut = true;
    }
    return cut;
  }

  private toTextEncoding(
    e: RustEncoding,
    text: string,
    pair: string | undefined,
    options: EncodeOptions,
    length: number,
    truncated: boolean,
  ): TextEncoding {
    let offsets: [number, number][] = [];
    if (options.offsets) {
      const toUtf16 = [codePointToUtf16(text), pair !== undefined ? codePointToUtf16(pair) : undefined];
      const sequenceIds = pair !== undefined && (toUtf16[0] || toUtf16[1]) ? e.getSequenceIds() : undefined;
      offsets = e.getOffsets().map(([start, end], i) => {
        const convert = toUtf16[sequenceIds?.[i] ?? 0];
        return convert ? [convert(start!), convert(end!)] : [start!, end!];
      });
    }
    const ids = e.getIds();
    const layout = pair === undefined ? (options.addSpecialTokens ? this.layout : BARE_LAYOUT) : undefined;
    const middle = layout ? ids.length - layout.prefixTypes.length - layout.suffixTypes.length : -1;
    let typeIds: number[];
    let specialTokensMask: number[];
    if (layout && middle >= 0) {
      typeIds = [
        ...layout.prefixTypes,
        ...new Array<number>(middle).fill(layout.sequenceType),
        ...layout.suffixTypes,
      ];
      specialTokensMask = new Array<number>(ids.length).fill(0);
      specialTokensMask.fill(1, 0, layout.prefixTypes.length);
      specialTokensMask.fill(1, ids.length - layout.suffixTypes.length);
    } else {
      typeIds = e.getTypeIds();
      specialTokensMask = e.getSpecialTokensMask();
    }
    return {
      ids,
      attentionMask: new Array<number>(ids.length).fill(1),
      typeIds,
      specialTokensMask,
      offsets,
      tokens: options.tokens ? e.getTokens() : [],
      length,
      truncated,
    };
  }

  async countBatch(texts: string[], addSpecialTokens: boolean): Promise<number[]> {
    const encodings = await this.encoder.run(addSpecialTokens, texts);
    return encodings.map((e) => e.getLength());
  }

  async decodeBatch(sequences: number[][], options: DecodeOptions): Promise<string[]> {
    const variant =
      options.cleanUpTokenizationSpaces === false && this.cleanupSource ? 'raw' : 'as-configured';
    const texts = await this.decoder.run(
      `${variant}:${options.skipSpecialTokens ? 'skip' : 'keep'}`,
      sequences,
    );
    // Asked for explicitly, clean-up is transformers' whole-text pass on top of the decoder's own.
    return options.cleanUpTokenizationSpaces ? texts.map(cleanUpTokenizationSpaces) : texts;
  }

  /** Built on first use: the same tokenizer with its decoder's clean-up turned off. */
  private withoutCleanup(): RustTokenizer {
    if (!this.noCleanupTokenizer) {
      const json = this.cleanupSource!;
      this.noCleanupTokenizer = RustTokenizer.fromString(
        JSON.stringify({ ...json, decoder: withoutCleanup(json.decoder!) }),
      );
    }
    return this.noCleanupTokenizer;
  }
}
