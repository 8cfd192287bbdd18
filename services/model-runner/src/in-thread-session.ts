/**
 * An onnxruntime session on the event loop itself (a model's `sessionThread: "main"`). For a model
 * whose largest batch computes in a fraction of a millisecond, the hop to a worker thread and back
 * costs more than the computation: two messages, each waking an idle thread, ~0.4 ms a run
 * measured on a 2-core VM, against 0.02–0.2 ms of compute for lang-id at batch 1–64. The price is
 * that the event loop stops while the model runs (onnxruntime-node's `run` is a blocking native
 * call), so it suits only models that small.
 */
import * as ort from 'onnxruntime-node';
import type { RunnableSession } from './worker-session.js';

export class InThreadSession implements RunnableSession {
  /** Never called: there is no worker to die. Present so both kinds of session are set up alike. */
  onFailure: ((error: Error) => void) | undefined;

  private constructor(private readonly session: ort.InferenceSession) {}

  static async create(
    path: string | Uint8Array,
    options: ort.InferenceSession.SessionOptions,
  ): Promise<InThreadSession> {
    const session =
      typeof path === 'string'
        ? await ort.InferenceSession.create(path, options)
        : await ort.InferenceSession.create(path, options);
    return new InThreadSession(session);
  }

  get inputNames() {
    return this.session.inputNames;
  }
  get outputNames() {
    return this.session.outputNames;
  }
  get inputMetadata() {
    return this.session.inputMetadata;
  }
  get outputMetadata() {
    return this.session.outputMetadata;
  }

  /** The feeds stay the caller's (nothing to transfer), so RunOptions has nothing to change here. */
  run(feeds: Record<string, ort.Tensor>, fetches?: string[]): Promise<Record<string, ort.Tensor>> {
    return fetches ? this.session.run(feeds, fetches) : this.session.run(feeds);
  }

  release(): Promise<void> {
    return this.session.release();
  }
}
