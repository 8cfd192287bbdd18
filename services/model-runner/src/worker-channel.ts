/**
 * Request/reply calls to a worker thread: each message carries an id, the
 * worker answers `{ id, ok }` or `{ id, error }`. If the worker dies, every
 * pending and later call fails with why, and `onFailure` hears of it once
 * (not after `terminate()`).
 */
import { Worker, type WorkerOptions } from 'node:worker_threads';

export type WorkerReply = { id: number; ok: unknown } | { id: number; error: string };

export class WorkerChannel {
  private readonly worker: Worker;
  private readonly pending = new Map<number, { resolve(value: unknown): void; reject(error: Error): void }>();
  private nextId = 0;
  private failure: Error | undefined;
  private terminated = false;
  onFailure: ((error: Error) => void) | undefined;

  constructor(filename: string, options: WorkerOptions, what: string) {
    this.worker = new Worker(filename, options);
    this.worker.on('message', (reply: WorkerReply) => {
      const call = this.pending.get(reply.id);
      this.pending.delete(reply.id);
      if ('error' in reply) call?.reject(new Error(reply.error));
      else call?.resolve(reply.ok);
    });
    const fail = (error: Error) => {
      if (this.failure) return;
      this.failure = error;
      for (const call of this.pending.values()) call.reject(error);
      this.pending.clear();
      if (!this.terminated) this.onFailure?.(error);
    };
    this.worker.on('error', (error) => fail(new Error(`${what} worker failed: ${error.message}`)));
    this.worker.on('exit', (code) => fail(new Error(`${what} worker exited (code ${code})`)));
  }

  get failed(): boolean {
    return this.failure !== undefined;
  }

  call(message: object, transfer: ArrayBuffer[] = []): Promise<unknown> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ ...message, id }, transfer);
    });
  }

  async terminate(): Promise<void> {
    this.terminated = true;
    await this.worker.terminate();
  }
}

/** Whether a typed array spans its whole buffer: only then can it move to a worker without moving more. */
export const spansWholeBuffer = (view: ArrayBufferView): boolean =>
  view.byteOffset === 0 && view.byteLength === view.buffer.byteLength;
