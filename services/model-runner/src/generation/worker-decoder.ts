/**
 * A BatchDecoder whose session and KV cache live in a worker thread
 * (decoder-worker.ts), so that prefill runs and decode steps — synchronous
 * native calls in onnxruntime-node — leave the runner's event loop free to
 * read, answer and stream while the model computes. Only token ids,
 * positions and logits cross the thread boundary; the cache stays in the
 * worker (onnxruntime-node refuses tensors over shared memory, so it could
 * not be shared with this thread anyway).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type * as ort from 'onnxruntime-node';
import type { Logger, ModelConfig } from '@maas/shared';
import { WorkerChannel } from '../worker-channel.js';
import type {
  BatchDecoder,
  CacheCounters,
  ChunkInput,
  DecoderOutput,
  JoinEntry,
  KeepPrefix,
  PrefillInput,
  StepInput,
} from './batch-decoder.js';
import { logDecoderEdit, type DecoderEditReasons } from './new-kv-outputs.js';

type Generation = NonNullable<ModelConfig['generation']>;

export type DecoderRequest =
  | {
      kind: 'create';
      /** A path is read by the worker: the model's bytes need not pass through this thread. */
      model: string | Uint8Array;
      generation: Generation;
      options: ort.InferenceSession.SessionOptions;
      modelName: string;
    }
  | { kind: 'prefill'; input: PrefillInput }
  | { kind: 'step'; input: StepInput }
  | { kind: 'chunk'; input: ChunkInput }
  | { kind: 'drop-chunked'; sequence: number }
  | { kind: 'drop-prefixes'; entries: number[] }
  | { kind: 'join'; entries: JoinEntry[] }
  | { kind: 'leave'; rows: number[]; keep?: (KeepPrefix & { row: number })[] }
  | { kind: 'clear' }
  | { kind: 'release' };

export type { WorkerReply as DecoderReply } from '../worker-channel.js';

interface Opened {
  inputNames: string[];
  outputNames: string[];
  inputMetadata: ort.InferenceSession.ValueMetadata[];
  outputMetadata: ort.InferenceSession.ValueMetadata[];
  newPositionsOnly: boolean;
  uneditedReason: DecoderEditReasons['uneditedReason'];
  unsplitReason: DecoderEditReasons['unsplitReason'];
}

/**
 * The compiled worker. Under jest the TypeScript sources run, but a worker
 * thread cannot load them: it runs the build of `tsc -b` (which `npm test`
 * runs first).
 */
function workerFile(): string {
  const beside = join(__dirname, 'decoder-worker.js');
  if (existsSync(beside)) return beside;
  const built = join(__dirname, '..', '..', 'dist', 'src', 'generation', 'decoder-worker.js');
  if (existsSync(built)) return built;
  throw new Error(`the generation decoder worker is not built (${built} is missing): run \`npx tsc -b\``);
}

export class WorkerDecoder implements BatchDecoder {
  inputNames: string[] = [];
  outputNames: string[] = [];
  inputMetadata: ort.InferenceSession.ValueMetadata[] = [];
  outputMetadata: ort.InferenceSession.ValueMetadata[] = [];
  newPositionsOnly = false;
  private readonly channel = new WorkerChannel(workerFile(), {}, 'generation decoder');

  /** Called once if the worker dies (not after release): the decoder cannot run any more. */
  set onFailure(listener: ((error: Error) => void) | undefined) {
    this.channel.onFailure = listener;
  }

  private constructor() {}

  /**
   * Opens the decoder in a new worker, its graph edited to return only new
   * keys/values where it can be (a warning says why not); rejects with the
   * reason when the model cannot be opened or is not a KV-cache decoder.
   */
  static async create(
    model: string | Uint8Array,
    g: Generation,
    options: ort.InferenceSession.SessionOptions,
    modelName: string,
    logger?: Logger,
  ): Promise<WorkerDecoder> {
    const decoder = new WorkerDecoder();
    try {
      const request: DecoderRequest = { kind: 'create', model, generation: g, options, modelName };
      const opened = (await decoder.channel.call(request)) as Opened;
      const { uneditedReason, unsplitReason, ...info } = opened;
      Object.assign(decoder, info);
      if (logger) logDecoderEdit(logger, modelName, { uneditedReason, unsplitReason });
      return decoder;
    } catch (error) {
      await decoder.channel.terminate();
      throw error;
    }
  }

  prefill(input: PrefillInput): Promise<DecoderOutput & { group: number }> {
    return this.call({ kind: 'prefill', input }, [input.ids, input.mask, input.positions]);
  }

  step(input: StepInput): Promise<DecoderOutput> {
    return this.call({ kind: 'step', input }, [input.ids, input.positions]);
  }

  prefillChunk(input: ChunkInput): Promise<DecoderOutput> {
    return this.call({ kind: 'chunk', input }, [input.ids, input.positions]);
  }

  dropChunked(sequence: number): Promise<void> {
    return this.call({ kind: 'drop-chunked', sequence });
  }

  dropPrefixes(entries: number[]): Promise<void> {
    return this.call({ kind: 'drop-prefixes', entries });
  }

  join(entries: JoinEntry[]): Promise<CacheCounters> {
    return this.call({ kind: 'join', entries });
  }

  leave(
    rows: number[],
    keep?: (KeepPrefix & { row: number })[],
  ): Promise<{ moves: { from: number; to: number }[]; cache: CacheCounters }> {
    return this.call({ kind: 'leave', rows, keep });
  }

  clear(): Promise<void> {
    return this.call({ kind: 'clear' });
  }

  async release(): Promise<void> {
    if (!this.channel.failed) await this.call({ kind: 'release' }).catch(() => undefined);
    await this.channel.terminate();
  }

  /** `moved`: arrays the caller built for this call alone, moved to the worker rather than copied. */
  private call<T>(request: DecoderRequest, moved: ArrayBufferView[] = []): Promise<T> {
    return this.channel.call(
      request,
      moved.map((a) => a.buffer as ArrayBuffer),
    ) as Promise<T>;
  }
}
