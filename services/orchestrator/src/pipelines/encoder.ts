/**
 * The batched half of Classify and Embed: one Encode for every text of the
 * batch (padded to the longest, on the model's padding side), one ModelInfer
 * with the ids as raw little-endian tensors, and the output rows split back
 * per request. Task-specific post-processing happens per request afterwards.
 */
import { invalidArgument } from '@maas/shared';
import type { GRPCInferenceServiceClient, ModelInferRequest } from '@maas/shared/gen/inference/grpc_service';
import {
  type EncodeRequest,
  PaddingSide,
  PaddingStrategy,
  type TokenizerServiceClient,
  TruncationSide,
  TruncationStrategy,
} from '@maas/shared/gen/maas/tokenizer/v1/tokenizer';
import type { CatalogueModel } from '../catalogue.js';
import { unaryCall } from '../downstream/clients.js';
import type { BatchContext } from './micro-batcher.js';
import { inferOutput, integerTensorBytes } from './postprocess.js';

export interface EncoderInput {
  texts: string[];
}

/** One request's share of a batch's output. */
export interface EncoderRows {
  modelVersion: string;
  rows: number;
  /** Output shape of one row (without the batch dimension). */
  rowShape: number[];
  /** rows × prod(rowShape) values. */
  values: Float32Array;
  /** rows × seq attention mask (1 real token, 0 padding). */
  mask: Uint8Array;
  seq: number;
  /** Tokens per text (special tokens included, padding not). */
  tokenCounts: number[];
}

export interface EncoderPipelineSettings {
  overflow: 'refuse' | 'truncate';
}

export async function runEncoderBatch(
  clients: { tokenizer: TokenizerServiceClient; inference: GRPCInferenceServiceClient },
  model: CatalogueModel,
  settings: EncoderPipelineSettings,
  inputs: EncoderInput[],
  batch: BatchContext,
): Promise<(EncoderRows | Error)[]> {
  const { tokenizer } = model;
  const texts = inputs.length === 1 ? inputs[0]!.texts : inputs.flatMap((i) => i.texts);
  const encodeRequest: EncodeRequest = {
    tokenizer: tokenizer.name,
    texts,
    textPairs: [],
    addSpecialTokens: tokenizer.addSpecialTokens,
    truncation:
      settings.overflow === 'truncate'
        ? {
            maxLength: tokenizer.maxLength,
            strategy: TruncationStrategy.TRUNCATION_STRATEGY_LONGEST_FIRST,
            side: TruncationSide.TRUNCATION_SIDE_RIGHT,
            stride: 0,
          }
        : undefined,
    padding: {
      strategy: PaddingStrategy.PADDING_STRATEGY_LONGEST,
      length: 0,
      side: tokenizer.paddingSide === 'left' ? PaddingSide.PADDING_SIDE_LEFT : PaddingSide.PADDING_SIDE_RIGHT,
      padToMultipleOf: 0,
    },
    returnOffsets: false,
    returnTokens: false,
  };
  const encoded = await unaryCall(
    'tokenizer',
    clients.tokenizer.encode.bind(clients.tokenizer),
    encodeRequest,
    batch,
  );
  const encodings = encoded.encodings;

  // Over-long or empty texts fail their own request only; the rest of the batch goes on without them.
  const results: (EncoderRows | Error | undefined)[] = new Array(inputs.length);
  const kept: { member: number; firstRow: number; rows: number }[] = [];
  let row = 0;
  let seq = 1;
  inputs.forEach((input, member) => {
    const firstRow = row;
    row += input.texts.length;
    for (let j = 0; j < input.texts.length; j++) {
      const length = encodings[firstRow + j]?.length ?? 0;
      if (length > tokenizer.maxLength) {
        results[member] = invalidArgument(
          `texts[${j}]`,
          `${length} tokens exceed the model's limit of ${tokenizer.maxLength}`,
        );
        return;
      }
      if (length === 0) {
        results[member] = invalidArgument(`texts[${j}]`, 'has no tokens');
        return;
      }
    }
    for (let j = 0; j < input.texts.length; j++) seq = Math.max(seq, encodings[firstRow + j]!.length);
    kept.push({ member, firstRow, rows: input.texts.length });
  });
  if (kept.length === 0) return results as Error[];

  // The tokenizer padded to the longest of the whole batch; without the refused rows it may be shorter.
  const keptRows = kept.reduce((n, k) => n + k.rows, 0);
  const left = tokenizer.paddingSide === 'left';
  const columns = {
    input_ids: new Array<number>(keptRows * seq),
    attention_mask: new Array<number>(keptRows * seq),
    token_type_ids: new Array<number>(keptRows * seq),
  };
  const mask = new Uint8Array(keptRows * seq);
  let out = 0;
  for (const k of kept) {
    for (let r = k.firstRow; r < k.firstRow + k.rows; r++) {
      const e = encodings[r]!;
      const start = left ? e.ids.length - seq : 0;
      for (let t = 0; t < seq; t++) {
        const at = out * seq + t;
        columns.input_ids[at] = e.ids[start + t]!;
        const m = e.attentionMask[start + t] ?? 1;
        columns.attention_mask[at] = m;
        mask[at] = m;
        columns.token_type_ids[at] = e.typeIds[start + t] ?? 0;
      }
      out++;
    }
  }
  const request: ModelInferRequest = {
    modelName: model.name,
    modelVersion: '',
    id: '',
    parameters: {},
    inputs: model.inputs.map((input) => ({
      name: input.name,
      datatype: input.datatype,
      shape: [keptRows, seq],
      parameters: {},
      contents: undefined,
    })),
    outputs: [{ name: model.output, parameters: {} }],
    rawInputContents: model.inputs.map((input) => integerTensorBytes(columns[input.name], input.datatype)),
  };
  const response = await unaryCall(
    'model-runner',
    clients.inference.modelInfer.bind(clients.inference),
    request,
    batch,
  );
  const { shape, values } = inferOutput(response, model.output, model.name);
  const rowShape = shape.slice(1);
  const rowSize = rowShape.reduce((a, b) => a * b, 1);
  if (shape[0] !== keptRows || values.length !== keptRows * rowSize) {
    throw new Error(`model-runner returned shape [${shape.join(', ')}] for ${keptRows} rows`);
  }
  let offset = 0;
  for (const k of kept) {
    results[k.member] = {
      modelVersion: response.modelVersion,
      rows: k.rows,
      rowShape,
      values: values.subarray(offset * rowSize, (offset + k.rows) * rowSize),
      mask: mask.subarray(offset * seq, (offset + k.rows) * seq),
      seq,
      tokenCounts: encodings.slice(k.firstRow, k.firstRow + k.rows).map((e) => e.length),
    };
    offset += k.rows;
  }
  return results as (EncoderRows | Error)[];
}
