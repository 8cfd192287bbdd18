/**
 * An onnxruntime session in a worker thread. onnxruntime-node's `run` (and
 * model loading) is synchronous on the calling thread — its promise only
 * wraps a blocking native call — so a session on the main thread stops gRPC
 * for the whole computation: no request is read, queued or answered, and the
 * next batch cannot collect while one computes. In a worker, the main thread
 * keeps serving and batching while the worker computes (on its own core).
 * Tensors cross the thread boundary by transfer where the caller allows it,
 * by copy otherwise.
 */
import * as ort from 'onnxruntime-node';
import { spansWholeBuffer, WorkerChannel } from './worker-channel.js';

/** What the runner needs of a session; onnxruntime's InferenceSession and WorkerSession both have it. */
export interface RunnableSession {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  readonly inputMetadata: readonly ort.InferenceSession.ValueMetadata[];
  readonly outputMetadata: readonly ort.InferenceSession.ValueMetadata[];
  run(
    feeds: Record<string, ort.Tensor>,
    fetches?: string[],
    options?: RunOptions,
  ): Promise<Record<string, ort.Tensor>>;
  release(): Promise<void>;
}

export interface RunOptions {
  /**
   * The caller gives up the feeds' buffers (they are detached after the call): they move to the
   * worker instead of being copied. Only for buffers the caller allocated and will not read again.
   */
  transferFeeds?: boolean;
}

interface WireTensor {
  type: ort.Tensor.Type;
  data: ort.Tensor.DataType;
  dims: readonly number[];
}

interface SessionInfo {
  inputNames: string[];
  outputNames: string[];
  inputMetadata: ort.InferenceSession.ValueMetadata[];
  outputMetadata: ort.InferenceSession.ValueMetadata[];
}

/**
 * The worker's code, evaluated as CommonJS (so the same code runs from dist and under jest,
 * which cannot load a TypeScript worker file). It requires onnxruntime-node by the path the
 * main thread resolved.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const ort = require(workerData.onnxruntime);
let session;
const describe = (s) => ({ inputNames: s.inputNames, outputNames: s.outputNames, inputMetadata: s.inputMetadata, outputMetadata: s.outputMetadata });
parentPort.on('message', async (m) => {
  try {
    if (m.kind === 'create') {
      session = await ort.InferenceSession.create(m.path, m.options);
      parentPort.postMessage({ id: m.id, ok: describe(session) });
    } else if (m.kind === 'run') {
      const feeds = {};
      for (const [name, t] of Object.entries(m.feeds)) feeds[name] = new ort.Tensor(t.type, t.data, t.dims);
      const results = m.fetches ? await session.run(feeds, m.fetches) : await session.run(feeds);
      const out = {};
      const transfer = new Set();
      for (const [name, t] of Object.entries(results)) {
        out[name] = { type: t.type, data: t.data, dims: t.dims };
        if (ArrayBuffer.isView(t.data)) transfer.add(t.data.buffer);
      }
      parentPort.postMessage({ id: m.id, ok: out }, [...transfer]);
    } else if (m.kind === 'release') {
      if (session) await session.release();
      session = undefined;
      parentPort.postMessage({ id: m.id, ok: true });
    }
  } catch (error) {
    parentPort.postMessage({ id: m.id, error: error && error.message ? error.message : String(error) });
  }
});
`;

export class WorkerSession implements RunnableSession {
  inputNames: string[] = [];
  outputNames: string[] = [];
  inputMetadata: ort.InferenceSession.ValueMetadata[] = [];
  outputMetadata: ort.InferenceSession.ValueMetadata[] = [];
  private readonly channel = new WorkerChannel(
    WORKER_SOURCE,
    { eval: true, workerData: { onnxruntime: require.resolve('onnxruntime-node') } },
    'session',
  );

  /** Called once if the worker dies (not after release): the session cannot run any more. */
  set onFailure(listener: ((error: Error) => void) | undefined) {
    this.channel.onFailure = listener;
  }

  private constructor() {}

  /** Loads a model (a path, or its bytes) in a new worker; rejects with onnxruntime's message when it cannot. */
  static async create(
    path: string | Uint8Array,
    options: ort.InferenceSession.SessionOptions,
  ): Promise<WorkerSession> {
    const session = new WorkerSession();
    try {
      Object.assign(session, (await session.channel.call({ kind: 'create', path, options })) as SessionInfo);
      return session;
    } catch (error) {
      await session.channel.terminate();
      throw error;
    }
  }

  async run(
    feeds: Record<string, ort.Tensor>,
    fetches?: string[],
    options: RunOptions = {},
  ): Promise<Record<string, ort.Tensor>> {
    const wire: Record<string, WireTensor> = {};
    const transfer = new Set<ArrayBuffer>();
    for (const [name, tensor] of Object.entries(feeds)) {
      let data = tensor.data;
      if (ArrayBuffer.isView(data)) {
        // A view of a larger buffer (a gRPC message, say) would clone the whole buffer: copy the view.
        if (!spansWholeBuffer(data) || !options.transferFeeds) data = data.slice() as typeof data;
        transfer.add((data as ArrayBufferView).buffer as ArrayBuffer);
      }
      wire[name] = { type: tensor.type, data, dims: tensor.dims };
    }
    const out = (await this.channel.call({ kind: 'run', feeds: wire, fetches }, [...transfer])) as Record<
      string,
      WireTensor
    >;
    const results: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries(out))
      results[name] = new ort.Tensor(t.type, t.data as never, t.dims);
    return results;
  }

  async release(): Promise<void> {
    if (!this.channel.failed) await this.channel.call({ kind: 'release' }).catch(() => undefined);
    await this.channel.terminate();
  }
}
