/**
 * The worker thread of a WorkerDecoder (worker-decoder.ts): opens the decoder
 * (its graph edited as new-kv-outputs.ts says) and runs a SessionDecoder —
 * session and batch cache — on the main thread's requests, one at a time in
 * arrival order. Logits go back by transfer; the cache never leaves.
 */
import { readFileSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import { SessionDecoder, type BatchDecoder } from './batch-decoder.js';
import { decoderForEngine, editReasons } from './new-kv-outputs.js';
import { spansWholeBuffer } from '../worker-channel.js';
import type { DecoderReply, DecoderRequest } from './worker-decoder.js';

const port = parentPort!;
let session: ort.InferenceSession | undefined;
let decoder: BatchDecoder | undefined;

async function handle(m: DecoderRequest): Promise<{ ok: unknown; transfer?: ArrayBuffer[] }> {
  if (m.kind === 'create') {
    const edit = decoderForEngine(
      typeof m.model === 'string' ? readFileSync(m.model) : m.model,
      m.generation,
    );
    session = await ort.InferenceSession.create(edit.model, m.options);
    decoder = new SessionDecoder(session, m.generation, m.modelName);
    return {
      ok: {
        inputNames: session.inputNames,
        outputNames: session.outputNames,
        inputMetadata: session.inputMetadata,
        outputMetadata: session.outputMetadata,
        newPositionsOnly: decoder.newPositionsOnly,
        ...editReasons(edit),
      },
    };
  }
  if (m.kind === 'release') {
    await session?.release();
    session = undefined;
    decoder = undefined;
    return { ok: true };
  }
  if (!decoder) throw new Error('the decoder is not open');
  switch (m.kind) {
    case 'prefill': {
      const out = await decoder.prefill(m.input);
      return { ok: out, transfer: [out.logits.buffer as ArrayBuffer] };
    }
    case 'step': {
      const out = await decoder.step(m.input);
      // onnxruntime's output, read here no more: moved, unless it is a view of a larger buffer.
      const logits = spansWholeBuffer(out.logits) ? out.logits : out.logits.slice();
      return { ok: { ...out, logits }, transfer: [logits.buffer as ArrayBuffer] };
    }
    case 'chunk': {
      const out = await decoder.prefillChunk(m.input);
      return { ok: out, transfer: [out.logits.buffer as ArrayBuffer] };
    }
    case 'drop-chunked':
      return { ok: await decoder.dropChunked(m.sequence) };
    case 'drop-prefixes':
      return { ok: await decoder.dropPrefixes(m.entries) };
    case 'join':
      return { ok: await decoder.join(m.entries) };
    case 'leave':
      return { ok: await decoder.leave(m.rows, m.keep) };
    case 'clear':
      return { ok: await decoder.clear() };
  }
}

// One request at a time, in arrival order: a request never sees the cache mid-step.
let previous: Promise<unknown> = Promise.resolve();
port.on('message', (m: DecoderRequest & { id: number }) => {
  previous = previous.then(() =>
    handle(m).then(
      ({ ok, transfer }) => port.postMessage({ id: m.id, ok } satisfies DecoderReply, transfer ?? []),
      (error: unknown) =>
        port.postMessage({
          id: m.id,
          error: error instanceof Error ? error.message : String(error),
        } satisfies DecoderReply),
    ),
  );
});
