/**
 * Generate: the prompt is tokenized, the runner streams token ids, the
 * tokenizer's DecodeStream turns them into text deltas (one implementation
 * of every tokenizer's decoding, in the tokenizer service), and stop strings
 * are looked for in that text before it is released to the caller.
 */
import { type ClientDuplexStream, Metadata, status } from '@grpc/grpc-js';
import { invalidArgument, StatusError, statusOf } from '@maas/shared';
import {
  FinishReason,
  type GenerateResponse,
  type SamplingParameters,
} from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import type { GenerationServiceClient } from '@maas/shared/gen/maas/runner/v1/generation';
import type {
  DecodeStreamRequest,
  DecodeStreamResponse,
  TokenizerServiceClient,
} from '@maas/shared/gen/maas/tokenizer/v1/tokenizer';
import type { GenerateResponse as RunnerResponse } from '@maas/shared/gen/maas/runner/v1/generation';
import type { CatalogueModel } from '../catalogue.js';
import { downstreamError, unaryCall } from '../downstream/clients.js';
import { StopStringMatcher } from './stop-strings.js';

/** Detokenizer replicas that may go away during one generation before it fails UNAVAILABLE. */
const MAX_DETOKENIZER_RESUMES = 2;

export interface GenerationInput {
  prompt: string;
  sampling: SamplingParameters | undefined;
  maxNewTokens: number;
  stop: string[];
  /** Lower is admitted first by the runner (checked already). */
  priority: number;
  requestId: string;
}

/** Tokens used so far; updated as the stream goes, so a failed or cancelled call is still metered. */
export interface GenerationUsage {
  promptTokens: number;
  generatedTokens: number;
  /** Of the prompt tokens, those the runner's prefix cache held (known at the end). */
  cachedPromptTokens?: number;
}

export interface GenerationIo {
  deadline: Date;
  signal: AbortSignal;
  /** performance.now() when the request arrived. */
  startedAt: number;
  write(message: GenerateResponse): void;
  usage: GenerationUsage;
}

export interface GenerationOutcome {
  finishReason: FinishReason;
  timeToFirstTokenMs: number;
}

export async function runGeneration(
  clients: { tokenizer: TokenizerServiceClient; generation: GenerationServiceClient },
  model: CatalogueModel,
  input: GenerationInput,
  io: GenerationIo,
): Promise<GenerationOutcome> {
  const encoded = await unaryCall(
    'tokenizer',
    clients.tokenizer.encode.bind(clients.tokenizer),
    {
      tokenizer: model.tokenizer.name,
      texts: [input.prompt],
      textPairs: [],
      addSpecialTokens: model.tokenizer.addSpecialTokens,
      truncation: undefined,
      padding: undefined,
      returnOffsets: false,
      returnTokens: false,
    },
    io,
  );
  const promptIds = encoded.encodings[0]?.ids ?? [];
  io.usage.promptTokens = promptIds.length;
  if (promptIds.length === 0) throw invalidArgument('prompt', 'has no tokens');
  if (promptIds.length > model.limits.maxInputTokens) {
    throw invalidArgument(
      'prompt',
      `${promptIds.length} tokens exceed the model's limit of ${model.limits.maxInputTokens}`,
    );
  }
  const context = model.config.generation?.maxContextLength ?? Infinity;
  if (promptIds.length + input.maxNewTokens > context) {
    throw invalidArgument(
      'max_new_tokens',
      `the prompt's ${promptIds.length} tokens + ${input.maxNewTokens} exceed the context length ${context}`,
    );
  }
  if (io.signal.aborted) throw new StatusError(status.CANCELLED, 'cancelled');

  return new Promise<GenerationOutcome>((resolve, reject) => {
    const options = { deadline: io.deadline };
    // GenerateStream, not Generate: a `stop` message ends the sequence without resetting the stream.
    const runner = clients.generation.generateStream(new Metadata(), options);
    runner.write({
      action: {
        $case: 'start',
        value: {
          modelName: model.name,
          modelVersion: '',
          promptIds,
          sampling: input.sampling && { ...input.sampling },
          maxNewTokens: input.maxNewTokens,
          stopTokenIds: [],
          ignoreEos: false,
          priority: input.priority,
          requestId: input.requestId,
        },
      },
    });
    // Opened when the first tokens arrive, not before: a refused or failed runner call costs the
    // tokenizer nothing, and there is no stream to reset.
    let detokenizer: ClientDuplexStream<DecodeStreamRequest, DecodeStreamResponse> | undefined;
    // Every id sent to the detokenizer and the characters of text it returned: a replica that goes
    // away mid-stream is replaced by another, fed the same ids, whose first characters are skipped.
    const sentIds: number[] = [];
    let receivedChars = 0;
    let resumes = 0;
    const openDetokenizer = (ids: number[] = []) => {
      const stream = clients.tokenizer.decodeStream(new Metadata(), options);
      // The first message names the tokenizer.
      stream.write({ tokenizer: model.tokenizer.name, ids, skipSpecialTokens: true });
      let skipChars = receivedChars;
      stream.on('data', (message: DecodeStreamResponse) => {
        if (stream !== detokenizer) return;
        let text = message.text;
        if (skipChars > 0) {
          const skipped = Math.min(skipChars, text.length);
          skipChars -= skipped;
          text = text.slice(skipped);
        }
        receivedChars += text.length;
        onDelta(text);
      });
      stream.on('error', (error) => {
        if (stream !== detokenizer) return;
        if (statusOf(error) === status.UNAVAILABLE && resumes < MAX_DETOKENIZER_RESUMES && !settled) {
          resumes++;
          detokenizer = openDetokenizer([...sentIds]);
          if (runnerDone) detokenizer.end();
          return;
        }
        fail(downstreamError('tokenizer', error));
      });
      stream.on('end', () => {
        if (stream === detokenizer) onDetokenizerEnd();
      });
      return stream;
    };

    const matcher = new StopStringMatcher(input.stop);
    let modelVersion = '';
    let finishReason: FinishReason | undefined;
    let firstTokenAt: number | undefined;
    let settled = false;
    const ttft = () => (firstTokenAt === undefined ? 0 : firstTokenAt - io.startedAt);

    const settle = (then: () => void) => {
      if (settled) return;
      settled = true;
      io.signal.removeEventListener('abort', onAbort);
      then();
    };
    let runnerDone = false;
    /**
     * Stops what is still running downstream without resetting a stream: a
     * burst of resets makes Node close the whole connection, every other
     * caller's calls on it included. The runner is told to stop (it ends the
     * call with OK), the detokenizer is half-closed and drains by itself.
     */
    const stopDownstream = () => {
      if (!runnerDone && !runner.writableEnded) {
        runner.write({ action: { $case: 'stop', value: {} } });
        runner.end();
      }
      if (detokenizer && !detokenizer.destroyed && !detokenizer.writableEnded) detokenizer.end();
    };
    const finish = (reason: FinishReason, rest: string) =>
      settle(() => {
        io.write({
          text: rest,
          finishReason: reason,
          usage: {
            promptTokens: io.usage.promptTokens,
            generatedTokens: io.usage.generatedTokens,
            totalTokens: io.usage.promptTokens + io.usage.generatedTokens,
            cachedPromptTokens: io.usage.cachedPromptTokens ?? 0,
          },
          modelVersion,
          timeToFirstTokenMs: ttft(),
        });
        resolve({ finishReason: reason, timeToFirstTokenMs: ttft() });
      });
    const fail = (error: unknown) =>
      settle(() => {
        stopDownstream();
        reject(error);
      });
    const onAbort = () =>
      settle(() => {
        stopDownstream();
        resolve({ finishReason: FinishReason.FINISH_REASON_CANCELLED, timeToFirstTokenMs: ttft() });
      });
    io.signal.addEventListener('abort', onAbort, { once: true });

    runner.on('data', (message: RunnerResponse) => {
      if (settled) return;
      modelVersion ||= message.modelVersion;
      if (message.tokenIds.length > 0) {
        firstTokenAt ??= performance.now();
        io.usage.generatedTokens += message.tokenIds.length;
        detokenizer ??= openDetokenizer();
        detokenizer.write({ tokenizer: '', ids: message.tokenIds });
        for (const id of message.tokenIds) sentIds.push(id);
      }
      if (message.finishReason !== FinishReason.FINISH_REASON_UNSPECIFIED) {
        finishReason = message.finishReason as number as FinishReason;
        if (message.promptTokens) io.usage.promptTokens = message.promptTokens;
        io.usage.cachedPromptTokens = message.cachedPromptTokens;
        io.usage.generatedTokens = message.generatedTokens;
        runnerDone = true;
        // Our side of the call closes too, so the stream ends without a reset from either side.
        if (!runner.writableEnded) runner.end();
        if (detokenizer) {
          // The detokenizer flushes what it holds and ends; the final message follows its last delta.
          detokenizer.end();
        } else {
          finish(finishReason, '');
        }
      }
    });
    runner.on('error', (error) => {
      runnerDone = true;
      fail(downstreamError('model-runner', error));
    });
    runner.on('status', (result: { code: number }) => {
      runnerDone = true;
      if (result.code === status.OK && finishReason === undefined) {
        fail(
          new StatusError(
            status.UNAVAILABLE,
            'model-runner: generation stream ended without a finish reason',
          ),
        );
      }
    });

    function onDelta(delta: string) {
      if (settled) return;
      const { text, stopped } = matcher.push(delta);
      if (text) {
        io.write({
          text,
          finishReason: FinishReason.FINISH_REASON_UNSPECIFIED,
          usage: undefined,
          modelVersion,
          timeToFirstTokenMs: 0,
        });
      }
      if (stopped) {
        // Nothing after a stop string is wanted: the runner frees the sequence when its call is cancelled.
        stopDownstream();
        finish(FinishReason.FINISH_REASON_STOP, '');
      }
    }
    function onDetokenizerEnd() {
      if (settled) return;
      if (finishReason !== undefined) finish(finishReason, matcher.flush());
      else fail(new StatusError(status.UNAVAILABLE, 'tokenizer: decode stream ended early'));
    }
  });
}
