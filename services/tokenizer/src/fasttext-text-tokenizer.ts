/**
 * fastText models (the default language-id model): words plus hashed
 * character n-grams, id for id as fastText computes them, by FastTextTokenizer
 * from @maas/models. One text has no pair and no post-processor; `</s>` is the
 * only special token.
 */
import { FastTextTokenizer } from '@maas/models';
import {
  type DecodeOptions,
  type EncodeOptions,
  padEncodings,
  type TextEncoding,
  type TextTokenizer,
  TokenizerInputError,
} from './text-tokenizer.js';

export interface FastTextSource {
  name: string;
  path: string;
  modelMaxLength?: number;
}

export class FastTextTextTokenizer implements TextTokenizer {
  readonly kind = 'fasttext' as const;
  readonly vocabSize: number;
  readonly specialTokens: Record<string, string>;
  readonly modelMaxLength: number;
  readonly name: string;
  readonly source: string;
  private readonly tokenizer: FastTextTokenizer;
  private readonly eosId: number;

  constructor(source: FastTextSource) {
    this.name = source.name;
    this.source = source.path;
    this.tokenizer = FastTextTokenizer.fromFile(source.path);
    this.vocabSize = this.tokenizer.vocabSize;
    this.specialTokens = { eos: this.tokenizer.eos };
    this.eosId = this.tokenizer.tokenToId(this.tokenizer.eos) ?? 0;
    this.modelMaxLength = source.modelMaxLength ?? 0;
  }

  async encodeBatch(
    texts: string[],
    pairs: string[] | undefined,
    options: EncodeOptions,
  ): Promise<TextEncoding[]> {
    if (pairs)
      throw new TokenizerInputError(
        'text_pairs',
        `${this.name} is a fastText tokenizer: it takes no text pairs`,
      );
    const truncation = options.truncation;
    const out = texts.map((text, index): TextEncoding => {
      const encoding = this.tokenizer.encode(text);
      // add_special_tokens=false leaves out the end-of-sentence token fastText appends.
      const keep = encoding.kinds.map((kind) => options.addSpecialTokens || kind !== 'eos');
      let positions = keep.flatMap((k, i) => (k ? [i] : []));
      let truncated = false;
      if (truncation && positions.length > truncation.maxLength) {
        if (truncation.strategy === 'refuse') {
          throw new TokenizerInputError(
            index,
            `${positions.length} tokens exceed truncation.max_length=${truncation.maxLength} and no truncation strategy is set`,
          );
        }
        if (truncation.strategy === 'only_second') {
          throw new TokenizerInputError(index, 'ONLY_SECOND truncation needs a text pair');
        }
        positions =
          truncation.side === 'left'
            ? positions.slice(positions.length - truncation.maxLength)
            : positions.slice(0, truncation.maxLength);
        truncated = true;
      }
      const ids = positions.map((i) => encoding.ids[i]!);
      return {
        ids,
        attentionMask: ids.map(() => 1),
        typeIds: ids.map(() => 0),
        specialTokensMask: positions.map((i) => (encoding.kinds[i] === 'eos' ? 1 : 0)),
        offsets: options.offsets ? positions.map((i) => encoding.offsets[i]!) : [],
        tokens: options.tokens ? positions.map((i) => encoding.tokens[i]!) : [],
        length: ids.length,
        truncated,
      };
    });
    if (options.padding) padEncodings(out, options.padding, this.eosId, this.tokenizer.eos, options);
    return out;
  }

  async countBatch(texts: string[], addSpecialTokens: boolean): Promise<number[]> {
    return texts.map((text) =>
      addSpecialTokens
        ? this.tokenizer.count(text)
        : this.tokenizer.encode(text).kinds.filter((kind) => kind !== 'eos').length,
    );
  }

  /** Only word ids have text (joined by spaces, as fastText reads them); n-gram ids decode to nothing. */
  async decodeBatch(sequences: number[][], options: DecodeOptions): Promise<string[]> {
    return sequences.map((ids) =>
      ids
        .map((id) => this.tokenizer.idToToken(id))
        .filter(
          (word): word is string =>
            word !== undefined && !(options.skipSpecialTokens && word === this.tokenizer.eos),
        )
        .join(' '),
    );
  }
}
