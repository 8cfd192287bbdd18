/** The gRPC surface of the tokenizer: validation, proto mapping, metrics. */
import type { ServerDuplexStream } from '@grpc/grpc-js';
import { invalidArgument, notFound, StatusError, unary } from '@maas/shared';
import { status } from '@grpc/grpc-js';
import {
  type DecodeStreamRequest,
  type DecodeStreamResponse,
  type EncodeRequest,
  PaddingSide,
  PaddingStrategy,
  TokenizerKind,
  TruncationSide,
  TruncationStrategy,
  type TokenizerServiceServer,
} from '@maas/shared/gen/maas/tokenizer/v1/tokenizer';
import type { TokenizerConfig } from './config.js';
import { IncrementalDetokenizer } from './detokenizer.js';
import type { TokenizerMetrics, TokenizerOperation } from './metrics.js';
import type { TokenizerRegistry } from './registry.js';
import type { EncodeOptions, TextTokenizer } from './text-tokenizer.js';

type Limits = Pick<
  TokenizerConfig,
  'TOKENIZER_MAX_TEXT_CHARS' | 'TOKENIZER_MAX_BATCH' | 'TOKENIZER_MAX_REQUEST_CHARS'
>;

const KINDS: Record<TextTokenizer['kind'], TokenizerKind> = {
  bpe: TokenizerKind.TOKENIZER_KIND_BPE,
  wordpiece: TokenizerKind.TOKENIZER_KIND_WORDPIECE,
  unigram: TokenizerKind.TOKENIZER_KIND_UNIGRAM,
  wordlevel: TokenizerKind.TOKENIZER_KIND_WORDLEVEL,
  fasttext: TokenizerKind.TOKENIZER_KIND_FASTTEXT,
};

export function createTokenizerService(
  registry: TokenizerRegistry,
  limits: Limits,
  metrics: TokenizerMetrics,
): TokenizerServiceServer {
  const lookup = (name: string): TextTokenizer => {
    if (!name) throw invalidArgument('tokenizer', 'is required');
    const tokenizer = registry.get(name);
    if (!tokenizer) throw notFound(`tokenizer '${name}' not found`);
    return tokenizer;
  };

  const checkTexts = (texts: string[], field = 'texts') => {
    if (texts.length > limits.TOKENIZER_MAX_BATCH) {
      throw invalidArgument(
        field,
        `${texts.length} texts exceed TOKENIZER_MAX_BATCH=${limits.TOKENIZER_MAX_BATCH}`,
      );
    }
    let total = 0;
    texts.forEach((text, i) => {
      if (text.length > limits.TOKENIZER_MAX_TEXT_CHARS) {
        throw invalidArgument(
          `${field}[${i}]`,
          `${text.length} characters exceed TOKENIZER_MAX_TEXT_CHARS=${limits.TOKENIZER_MAX_TEXT_CHARS}`,
        );
      }
      total += text.length;
    });
    if (total > limits.TOKENIZER_MAX_REQUEST_CHARS) {
      throw invalidArgument(
        field,
        `${total} characters exceed TOKENIZER_MAX_REQUEST_CHARS=${limits.TOKENIZER_MAX_REQUEST_CHARS}`,
      );
    }
  };

  const checkIds = (tokenizer: TextTokenizer, ids: number[], field: string) => {
    for (let j = 0; j < ids.length; j++) {
      if (ids[j]! >= tokenizer.vocabSize) {
        throw invalidArgument(
          `${field}[${j}]`,
          `id ${ids[j]} is outside the vocabulary (size ${tokenizer.vocabSize})`,
        );
      }
    }
  };

  /** Library errors (e.g. a text pair for a fastText model) are the caller's input problem, not ours. */
  const measured = async <T>(
    tokenizer: TextTokenizer,
    operation: TokenizerOperation,
    run: () => Promise<T>,
  ) => {
    const end = metrics.duration.startTimer({ tokenizer: tokenizer.name, operation });
    try {
      return await run();
    } catch (error) {
      if (error instanceof StatusError) throw error;
      throw new StatusError(status.INVALID_ARGUMENT, `${tokenizer.name}: ${(error as Error).message}`);
    } finally {
      end();
    }
  };

  const count = (tokenizer: TextTokenizer, operation: TokenizerOperation, texts: number, tokens: number) => {
    metrics.texts.inc({ tokenizer: tokenizer.name, operation }, texts);
    metrics.tokens.inc({ tokenizer: tokenizer.name, operation }, tokens);
  };

  return {
    encode: unary(async (request: EncodeRequest) => {
      const tokenizer = lookup(request.tokenizer);
      checkTexts(request.texts);
      const pairs = request.textPairs.length > 0 ? request.textPairs : undefined;
      if (pairs) {
        if (pairs.length !== request.texts.length) {
          throw invalidArgument(
            'text_pairs',
            `has ${pairs.length} entries, texts has ${request.texts.length}`,
          );
        }
        checkTexts(pairs, 'text_pairs');
      }
      const options = encodeOptions(request);
      const encodings = await measured(tokenizer, 'encode', () =>
        tokenizer.encodeBatch(request.texts, pairs, options),
      );
      const totalTokens = encodings.reduce((n, e) => n + e.length, 0);
      count(tokenizer, 'encode', request.texts.length, totalTokens);
      return {
        encodings: encodings.map((e) => ({
          ids: e.ids,
          attentionMask: e.attentionMask,
          typeIds: e.typeIds,
          specialTokensMask: e.specialTokensMask,
          offsets: e.offsets.map(([start, end]) => ({ start, end })),
          tokens: e.tokens,
          length: e.length,
          truncated: e.truncated,
        })),
        totalTokens,
      };
    }),

    countTokens: unary(async (request) => {
      const tokenizer = lookup(request.tokenizer);
      checkTexts(request.texts);
      const counts = await measured(tokenizer, 'count', () =>
        tokenizer.countBatch(request.texts, request.addSpecialTokens ?? true),
      );
      const total = counts.reduce((a, b) => a + b, 0);
      count(tokenizer, 'count', request.texts.length, total);
      return { counts, total };
    }),

    decode: unary(async (request) => {
      const tokenizer = lookup(request.tokenizer);
      if (request.sequences.length > limits.TOKENIZER_MAX_BATCH) {
        throw invalidArgument(
          'sequences',
          `${request.sequences.length} sequences exceed TOKENIZER_MAX_BATCH=${limits.TOKENIZER_MAX_BATCH}`,
        );
      }
      const sequences = request.sequences.map((s, i) => {
        checkIds(tokenizer, s.ids, `sequences[${i}].ids`);
        return s.ids;
      });
      let texts = await measured(tokenizer, 'decode', () =>
        tokenizer.decodeBatch(sequences, request.skipSpecialTokens ?? true),
      );
      if (request.cleanUpTokenizationSpaces) texts = texts.map(cleanUpTokenizationSpaces);
      count(
        tokenizer,
        'decode',
        sequences.length,
        sequences.reduce((n, s) => n + s.length, 0),
      );
      return { texts };
    }),

    decodeStream: (call: ServerDuplexStream<DecodeStreamRequest, DecodeStreamResponse>) => {
      let detokenizer: IncrementalDetokenizer | undefined;
      let tokenizer: TextTokenizer | undefined;
      // Messages are handled strictly in order: each delta depends on all ids before it.
      let chain = Promise.resolve();
      const fail = (error: unknown) => {
        chain = chain.then(() => undefined);
        call.emit(
          'error',
          error instanceof StatusError ? { code: error.code, details: error.message } : error,
        );
      };
      call.on('data', (message: DecodeStreamRequest) => {
        chain = chain
          .then(async () => {
            if (!tokenizer) {
              tokenizer = lookup(message.tokenizer);
              const skip = message.skipSpecialTokens ?? true;
              const t = tokenizer;
              detokenizer = new IncrementalDetokenizer(
                async (ids) => (await t.decodeBatch([ids], skip))[0] ?? '',
              );
            }
            checkIds(tokenizer, message.ids, `ids (after ${detokenizer!.consumed} ids)`);
            const text = await measured(tokenizer, 'decode_stream', () => detokenizer!.push(message.ids));
            count(tokenizer, 'decode_stream', 0, message.ids.length);
            call.write({ text, consumedIds: detokenizer!.consumed });
          })
          .catch(fail);
      });
      call.on('end', () => {
        chain = chain
          .then(async () => {
            const rest = detokenizer ? await detokenizer.flush() : '';
            if (rest) call.write({ text: rest, consumedIds: detokenizer!.consumed });
            call.end();
          })
          .catch(fail);
      });
    },

    listTokenizers: unary(async () => ({
      tokenizers: registry.list().map((t) => ({
        name: t.name,
        kind: KINDS[t.kind] ?? TokenizerKind.TOKENIZER_KIND_UNSPECIFIED,
        vocabSize: t.vocabSize,
        source: t.source,
        specialTokens: t.specialTokens,
        modelMaxLength: t.modelMaxLength,
      })),
    })),
  };
}

function encodeOptions(request: EncodeRequest): EncodeOptions {
  const options: EncodeOptions = {
    addSpecialTokens: request.addSpecialTokens ?? true,
    offsets: request.returnOffsets,
    tokens: request.returnTokens,
  };
  const t = request.truncation;
  if (t && t.maxLength > 0) {
    options.truncation = {
      maxLength: t.maxLength,
      strategy:
        t.strategy === TruncationStrategy.TRUNCATION_STRATEGY_ONLY_FIRST
          ? 'only_first'
          : t.strategy === TruncationStrategy.TRUNCATION_STRATEGY_ONLY_SECOND
            ? 'only_second'
            : 'longest_first',
      side: t.side === TruncationSide.TRUNCATION_SIDE_LEFT ? 'left' : 'right',
      stride: t.stride,
    };
  }
  const p = request.padding;
  if (p && p.strategy !== PaddingStrategy.PADDING_STRATEGY_UNSPECIFIED) {
    if (p.strategy === PaddingStrategy.PADDING_STRATEGY_FIXED && p.length === 0) {
      throw invalidArgument('padding.length', 'must be > 0 for PADDING_STRATEGY_FIXED');
    }
    options.padding = {
      strategy: p.strategy === PaddingStrategy.PADDING_STRATEGY_FIXED ? 'fixed' : 'longest',
      length: p.length,
      side: p.side === PaddingSide.PADDING_SIDE_LEFT ? 'left' : 'right',
      padToMultipleOf: p.padToMultipleOf,
    };
  }
  return options;
}

/** Hugging Face's clean_up_tokenization: undo the spaces WordPiece-style decoding leaves before punctuation. */
export function cleanUpTokenizationSpaces(text: string): string {
  return text
    .replace(/ \./g, '.')
    .replace(/ \?/g, '?')
    .replace(/ !/g, '!')
    .replace(/ ,/g, ',')
    .replace(/ ' /g, "'")
    .replace(/ n't/g, "n't")
    .replace(/ 'm/g, "'m")
    .replace(/ 's/g, "'s")
    .replace(/ 've/g, "'ve")
    .replace(/ 're/g, "'re");
}
