/**
 * Merges concurrent batch calls into one library call. The Rust tokenizer
 * runs each call on the libuv thread pool and parallelises a batch on its own
 * threads; several calls at once oversubscribe a small machine (measured on 2
 * cores: 4 concurrent calls of 64 texts gave a quarter of one call's tokens/s).
 * So at most one call per tokenizer is in flight, and the requests that arrive
 * meanwhile go together in the next one: idle, a request is sent at once;
 * busy, requests share the library call instead of queueing behind each other.
 */
export type BatchFunction<K, I, O> = (key: K, items: I[]) => Promise<O[]>;

interface Pending<K, I, O> {
  key: K;
  items: I[];
  resolve(outputs: O[]): void;
  reject(error: unknown): void;
}

export class Coalescer<K, I, O> {
  private queue: Pending<K, I, O>[] = [];
  private busy = false;

  constructor(
    private readonly batch: BatchFunction<K, I, O>,
    /** Most items in one merged call (a single request may be larger; it then goes alone). */
    private readonly maxItems = 1024,
  ) {}

  run(key: K, items: I[]): Promise<O[]> {
    if (items.length === 0) return Promise.resolve([]);
    return new Promise((resolve, reject) => {
      this.queue.push({ key, items, resolve, reject });
      this.pump();
    });
  }

  private pump(): void {
    if (this.busy || this.queue.length === 0) return;
    const first = this.queue[0]!;
    const group: Pending<K, I, O>[] = [];
    const rest: Pending<K, I, O>[] = [];
    let count = 0;
    for (const pending of this.queue) {
      const fits = group.length === 0 || count + pending.items.length <= this.maxItems;
      if (pending.key === first.key && fits) {
        group.push(pending);
        count += pending.items.length;
      } else rest.push(pending);
    }
    this.queue = rest;
    this.busy = true;
    void this.send(first.key, group).finally(() => {
      this.busy = false;
      this.pump();
    });
  }

  private async send(key: K, group: Pending<K, I, O>[]): Promise<void> {
    try {
      const outputs = await this.batch(
        key,
        group.length === 1 ? group[0]!.items : group.flatMap((p) => p.items),
      );
      let offset = 0;
      for (const pending of group) {
        pending.resolve(outputs.slice(offset, offset + pending.items.length));
        offset += pending.items.length;
      }
    } catch (error) {
      if (group.length === 1) {
        group[0]!.reject(error);
        return;
      }
      // One request's input must not fail the others that shared its call: retry each alone.
      await Promise.all(
        group.map(async (pending) => {
          try {
            pending.resolve(await this.batch(key, pending.items));
          } catch (own) {
            pending.reject(own);
          }
        }),
      );
    }
  }
}
