/** The gRPC surface of the tokenizer: request validation, mapping to and from protos, metrics. */
import type { ServerDuplexStream } from '@grpc/grpc-js';
import { invalidArgument, notFound, unary } from '@maas/shared';
import {
  type CountTokensRequest,
  type DecodeRequest,
  type DecodeStreamRequest,
  type DecodeStreamResponse,
  type EncodeRequest,
  type EncodeResponse,
  type Encoding,
  PaddingSide,
  PaddingStrategy,
  TokenizerKind,
  type TokenizerServiceServer,
  TruncationSide,
  TruncationStrategy,
} from '@maas/shared/gen/maas/tokenizer/v1/tokenizer';
import type { TokenizerConfig } from './config.js';
import { IncrementalDetokenizer } from './detokenizer.js';
import type { TokenizerMetrics, TokenizerOperation } from './metrics.js';
import type { TokenizerRegistry } from './registry.js';
import {
  type EncodeOptions,
  type TextEncoding,
  type TextTokenizer,
  TokenizerInputError,
} from './text-tokenizer.js';

export type TokenizerLimits = Pick<
  TokenizerConfig,
  | 'TOKENIZER_MAX_TEXT_CHARS'
  | 'TOKENIZER_MAX_BATCH'
  | 'TOKENIZER_MAX_REQUEST_CHARS'
  | 'TOKENIZER_MAX_REQUEST_IDS'
>;

const KINDS: Record<TextTokenizer['kind'], TokenizerKind> = {
  bpe: TokenizerKind.TOKENIZER_KIND_BPE,
  wordpiece: TokenizerKind.TOKENIZER_KIND_WORDPIECE,
  unigram: TokenizerKind.TOKENIZER_KIND_UNIGRAM,
  wordlevel: TokenizerKind.TOKENIZER_KIND_WORDLEVEL,
  fasttext: TokenizerKind.TOKENIZER_KIND_FASTTEXT,
  unknown: TokenizerKind.TOKENIZER_KIND_UNSPECIFIED,
};

/** Above this, pad_to_multiple_of is a mistake, not a hardware alignment. */
const MAX_PAD_TO_MULTIPLE_OF = 4096;

export function createTokenizerService(
  registry: TokenizerRegistry,
  limits: TokenizerLimits,
  metrics: TokenizerMetrics,
): TokenizerServiceServer {
  const lookup = (name: string): TextTokenizer => {
    if (!name) throw invalidArgument('tokenizer', 'is required');
    const tokenizer = registry.get(name);
    if (!tokenizer) throw notFound(`tokenizer '${name}' not found`);
    return tokenizer;
  };

  /** Checks the batch limits; returns the characters counted, for the request-wide limit. */
  const checkTexts = (texts: string[], field: string, charsBefore = 0): number => {
    if (texts.length > limits.TOKENIZER_MAX_BATCH) {
      throw invalidArgument(
        field,
        `${texts.length} texts exceed TOKENIZER_MAX_BATCH=${limits.TOKENIZER_MAX_BATCH}`,
      );
    }
    let total = charsBefore;
    for (let i = 0; i < texts.length; i++) {
      const length = texts[i]!.length;
      if (length > limits.TOKENIZER_MAX_TEXT_CHARS) {
        throw invalidArgument(
          `${field}[${i}]`,
          `${length} characters exceeds TOKENIZER_MAX_TEXT_CHARS=${limits.TOKENIZER_MAX_TEXT_CHARS}`,
        );
      }
      total += length;
      if (total > limits.TOKENIZER_MAX_REQUEST_CHARS) {
        throw invalidArgument(
          `${field}[${i}]`,
          `brings the request to ${total} characters, over TOKENIZER_MAX_REQUEST_CHARS=${limits.TOKENIZER_MAX_REQUEST_CHARS}`,
        );
      }
    }
    return total;
  };

  const checkIds = (tokenizer: TextTokenizer, ids: number[], field: string, offset = 0) => {
    const size = tokenizer.vocabSize;
    for (let j = 0; j < ids.length; j++) {
      if (ids[j]! >= size) {
        throw invalidArgument(
          `${field}[${j + offset}]`,
          `id ${ids[j]} is outside the vocabulary of ${tokenizer.name} (size ${size})`,
        );
      }
    }
  };

  /** Times the library call; a domain input error becomes INVALID_ARGUMENT naming the field. */
  const measured = async <T>(
    tokenizer: TextTokenizer,
    operation: TokenizerOperation,
    field: string,
    run: () => Promise<T>,
  ): Promise<T> => {
    const end = metrics.duration.startTimer({ tokenizer: tokenizer.name, operation });
    try {
      return await run();
    } catch (error) {
      if (error instanceof TokenizerInputError) {
        throw invalidArgument(
          typeof error.at === 'number' ? `${field}[${error.at}]` : error.at,
          error.message,
        );
      }
      throw error;
    } finally {
      end();
    }
  };

  const record = (tokenizer: TextTokenizer, operation: TokenizerOperation, texts: number, tokens: number) => {
    if (texts > 0) metrics.texts.inc({ tokenizer: tokenizer.name, operation }, texts);
    if (tokens > 0) metrics.tokens.inc({ tokenizer: tokenizer.name, operation }, tokens);
  };

  return {
    encode: unary(async (request: EncodeRequest): Promise<EncodeResponse> => {
      const tokenizer = lookup(request.tokenizer);
      const chars = checkTexts(request.texts, 'texts');
      let pairs: string[] | undefined;
      if (request.textPairs.length > 0) {
        if (request.textPairs.length !== request.texts.length) {
          throw invalidArgument(
            'text_pairs',
            `has ${request.textPairs.length} entries but texts has ${request.texts.length}`,
          );
        }
        checkTexts(request.textPairs, 'text_pairs', chars);
        pairs = request.textPairs;
      }
      const options = encodeOptions(request, limits);
      const encodings = await measured(tokenizer, 'encode', 'texts', () =>
        tokenizer.encodeBatch(request.texts, pairs, options),
      );
      let totalTokens = 0;
      for (const e of encodings) totalTokens += e.length;
      record(tokenizer, 'encode', request.texts.length, totalTokens);
      return { encodings: encodings.map(toProtoEncoding), totalTokens };
    }),

    countTokens: unary(async (request: CountTokensRequest) => {
      const tokenizer = lookup(request.tokenizer);
      checkTexts(request.texts, 'texts');
      const counts = await measured(tokenizer, 'count', 'texts', () =>
        tokenizer.countBatch(request.texts, request.addSpecialTokens ?? true),
      );
      let total = 0;
      for (const n of counts) total += n;
      record(tokenizer, 'count', request.texts.length, total);
      return { counts, total };
    }),

    decode: unary(async (request: DecodeRequest) => {
      const tokenizer = lookup(request.tokenizer);
      if (request.sequences.length > limits.TOKENIZER_MAX_BATCH) {
        throw invalidArgument(
          'sequences',
          `${request.sequences.length} sequences exceed TOKENIZER_MAX_BATCH=${limits.TOKENIZER_MAX_BATCH}`,
        );
      }
      let ids = 0;
      const sequences = request.sequences.map((sequence, i) => {
        ids += sequence.ids.length;
        if (ids > limits.TOKENIZER_MAX_REQUEST_IDS) {
          throw invalidArgument(
            `sequences[${i}]`,
            `brings the request to ${ids} ids, over TOKENIZER_MAX_REQUEST_IDS=${limits.TOKENIZER_MAX_REQUEST_IDS}`,
          );
        }
        checkIds(tokenizer, sequence.ids, `sequences[${i}].ids`);
        return sequence.ids;
      });
      const texts = await measured(tokenizer, 'decode', 'sequences', () =>
        tokenizer.decodeBatch(sequences, {
          skipSpecialTokens: request.skipSpecialTokens ?? true,
          cleanUpTokenizationSpaces: request.cleanUpTokenizationSpaces,
        }),
      );
      record(tokenizer, 'decode', sequences.length, ids);
      return { texts };
    }),

    /**
     * Messages are handled strictly in order (each delta depends on every id
     * before it). Any error ends the stream with its status; the host maps it.
     */
    decodeStream: (call: ServerDuplexStream<DecodeStreamRequest, DecodeStreamResponse>) => {
      let tokenizer: TextTokenizer | undefined;
      let detokenizer: IncrementalDetokenizer | undefined;
      return inOrder(
        call,
        async (message) => {
          if (!tokenizer || !detokenizer) {
            const t = lookup(message.tokenizer);
            const options = { skipSpecialTokens: message.skipSpecialTokens ?? true };
            tokenizer = t;
            detokenizer = new IncrementalDetokenizer((sequences) => t.decodeBatch(sequences, options));
          }
          const d = detokenizer;
          const before = d.consumed;
          if (before + message.ids.length > limits.TOKENIZER_MAX_REQUEST_IDS) {
            throw invalidArgument(
              'ids',
              `the stream reaches ${before + message.ids.length} ids, over TOKENIZER_MAX_REQUEST_IDS=${limits.TOKENIZER_MAX_REQUEST_IDS}`,
            );
          }
          checkIds(tokenizer, message.ids, 'ids', before);
          const text = await measured(tokenizer, 'decode_stream', 'ids', () => d.push(message.ids));
          record(tokenizer, 'decode_stream', 0, message.ids.length);
          call.write({ text, consumedIds: d.consumed });
        },
        async () => {
          const rest = detokenizer ? await detokenizer.flush() : '';
          if (rest) call.write({ text: rest, consumedIds: detokenizer!.consumed });
          call.end();
        },
      );
    },

    listTokenizers: unary(async () => ({
      tokenizers: registry.list().map((t) => ({
        name: t.name,
        kind: KINDS[t.kind],
        vocabSize: t.vocabSize,
        source: t.source,
        specialTokens: t.specialTokens,
        modelMaxLength: t.modelMaxLength,
      })),
    })),
  };
}

/**
 * Runs `handle` on each message of a client stream strictly in order (each
 * step may await), then `finish` when the client half-closes. Rejects with the
 * first error (the host turns it into the call's status) and ignores what
 * arrives after it; resolves quietly when the client cancels.
 */
function inOrder<T>(
  call: ServerDuplexStream<T, unknown>,
  handle: (message: T) => Promise<void>,
  finish: () => Promise<void>,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let chain = Promise.resolve();
    let stopped = false;
    const step = (run: () => Promise<void>) => {
      chain = chain
        .then(() => (stopped ? undefined : run()))
        .catch((error: unknown) => {
          if (stopped) return;
          stopped = true;
          reject(error);
        });
    };
    call.on('data', (message: T) => step(() => handle(message)));
    call.on('end', () =>
      step(async () => {
        await finish();
        stopped = true;
        resolve();
      }),
    );
    call.on('cancelled', () => {
      stopped = true;
      resolve();
    });
  });
}

function toProtoEncoding(e: TextEncoding): Encoding {
  return {
    ids: e.ids,
    attentionMask: e.attentionMask,
    typeIds: e.typeIds,
    specialTokensMask: e.specialTokensMask,
    offsets: e.offsets.map(([start, end]) => ({ start, end })),
    tokens: e.tokens,
    length: e.length,
    truncated: e.truncated,
  };
}

function encodeOptions(request: EncodeRequest, limits: TokenizerLimits): EncodeOptions {
  const options: EncodeOptions = {
    addSpecialTokens: request.addSpecialTokens ?? true,
    offsets: request.returnOffsets,
    tokens: request.returnTokens,
  };
  const t = request.truncation;
  if (t && (t.maxLength > 0 || t.strategy !== TruncationStrategy.TRUNCATION_STRATEGY_UNSPECIFIED)) {
    if (t.maxLength === 0) throw invalidArgument('truncation.max_length', 'must be > 0');
    if (t.stride >= t.maxLength) {
      throw invalidArgument('truncation.stride', `${t.stride} must be < max_length ${t.maxLength}`);
    }
    options.truncation = {
      maxLength: t.maxLength,
      strategy:
        t.strategy === TruncationStrategy.TRUNCATION_STRATEGY_LONGEST_FIRST
          ? 'longest_first'
          : t.strategy === TruncationStrategy.TRUNCATION_STRATEGY_ONLY_FIRST
            ? 'only_first'
            : t.strategy === TruncationStrategy.TRUNCATION_STRATEGY_ONLY_SECOND
              ? 'only_second'
              : 'refuse',
      side: t.side === TruncationSide.TRUNCATION_SIDE_LEFT ? 'left' : 'right',
      stride: t.stride,
    };
  }
  const p = request.padding;
  if (p && p.strategy !== PaddingStrategy.PADDING_STRATEGY_UNSPECIFIED) {
    const fixed = p.strategy === PaddingStrategy.PADDING_STRATEGY_FIXED;
    if (fixed && p.length === 0) {
      throw invalidArgument('padding.length', 'must be > 0 for PADDING_STRATEGY_FIXED');
    }
    // Padding multiplies the response: bound it like the ids a request may carry.
    if (fixed && p.length * request.texts.length > limits.TOKENIZER_MAX_REQUEST_IDS) {
      throw invalidArgument(
        'padding.length',
        `${p.length} × ${request.texts.length} texts exceeds TOKENIZER_MAX_REQUEST_IDS=${limits.TOKENIZER_MAX_REQUEST_IDS}`,
      );
    }
    if (p.padToMultipleOf > MAX_PAD_TO_MULTIPLE_OF) {
      throw invalidArgument('padding.pad_to_multiple_of', `must be ≤ ${MAX_PAD_TO_MULTIPLE_OF}`);
    }
    options.padding = {
      strategy: fixed ? 'fixed' : 'longest',
      length: p.length,
      side: p.side === PaddingSide.PADDING_SIDE_LEFT ? 'left' : 'right',
      padToMultipleOf: p.padToMultipleOf,
    };
  }
  return options;
}
