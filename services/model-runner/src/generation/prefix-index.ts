/**
 * Prefix caching's index (the engine's side; the keys/values themselves are
 * the decoder's, under the entry ids this hands out): which prompt prefixes
 * have their keys/values cached, and which to forget when the budget is full.
 *
 * As vLLM's automatic prefix caching does, prompts are cut into blocks of
 * `blockTokens`, and block i's key hashes the tokens of blocks 0..i (a chain:
 * a block is the same only under the same prefix). An entry is one stored
 * prompt; each of its block boundaries points at
 * it, so a prompt sharing only a system prompt with a stored one finds it at
 * the last boundary they share. The match is then checked token by token
 * (hashes may collide) and extended past the boundary as far as the two
 * agree — a prompt sent again reuses all of it but its last token.
 *
 * Entries are evicted least recently used first, to keep the tokens held
 * within `capacityTokens`. Reuse copies an entry's keys/values into the
 * sequence's own cache before anything else can run, so an entry evicted
 * later is never in use.
 */

export interface PrefixHit {
  entry: number;
  /** Leading prompt tokens whose keys/values the entry holds: the sequence prefills only the rest. */
  count: number;
}

interface Entry {
  id: number;
  tokens: number[];
  /** The block keys pointing at this entry (a later entry may take over a shared one). */
  keys: string[];
}

export class PrefixIndex {
  private readonly byKey = new Map<string, Entry>();
  /** Least recently used first (a Map iterates in insertion order; a use re-inserts). */
  private readonly entries = new Map<number, Entry>();
  private heldTokens = 0;
  private nextId = 0;

  constructor(
    private readonly blockTokens: number,
    private readonly capacityTokens: number,
  ) {}

  get enabled(): boolean {
    return this.capacityTokens >= this.blockTokens;
  }

  /** Tokens whose keys/values the entries hold. */
  get tokens(): number {
    return this.heldTokens;
  }

  /**
   * The stored prefix sharing most of `prompt`, leaving at least its last
   * token to run (its logits give the first generated token); undefined
   * when none shares a whole block.
   */
  lookup(prompt: number[]): PrefixHit | undefined {
    if (!this.enabled) return undefined;
    const keys = this.blockKeys(prompt, prompt.length - 1);
    for (let block = keys.length - 1; block >= 0; block--) {
      const entry = this.byKey.get(keys[block]!);
      if (!entry) continue;
      const count = sharedLength(entry.tokens, prompt, prompt.length - 1);
      // A collision shares fewer tokens than the block boundary: try a shorter prefix.
      if (count < (block + 1) * this.blockTokens) continue;
      this.touch(entry);
      return { entry: entry.id, count };
    }
    return undefined;
  }

  /**
   * Records that the decoder is to keep the keys/values of the whole prompt
   * (found by its whole blocks; the tokens after the last one still serve a
   * prompt sent again, or a conversation's next turn), unless an entry
   * already holds them all. Returns the new entry's id and how many leading
   * tokens it holds, with the entries evicted to make room (the decoder drops
   * those); undefined when nothing is stored.
   */
  insert(prompt: number[]): { entry: number; count: number; evicted: number[] } | undefined {
    const count = prompt.length;
    if (!this.enabled || count < this.blockTokens || count > this.capacityTokens) return undefined;
    const keys = this.blockKeys(prompt, count);
    const last = this.byKey.get(keys[keys.length - 1]!);
    if (last && sharedLength(last.tokens, prompt, count) === count) {
      this.touch(last);
      return undefined;
    }
    const evicted: number[] = [];
    while (this.heldTokens + count > this.capacityTokens) evicted.push(this.evictOldest());
    const entry: Entry = { id: this.nextId++, tokens: prompt.slice(0, count), keys };
    for (const key of keys) this.byKey.set(key, entry);
    this.entries.set(entry.id, entry);
    this.heldTokens += count;
    return { entry: entry.id, count, evicted };
  }

  /** Forgets every entry (the decoder dropped its keys/values). */
  clear(): void {
    this.byKey.clear();
    this.entries.clear();
    this.heldTokens = 0;
  }

  private touch(entry: Entry): void {
    this.entries.delete(entry.id);
    this.entries.set(entry.id, entry);
  }

  private evictOldest(): number {
    const [id, entry] = this.entries.entries().next().value as [number, Entry];
    this.entries.delete(id);
    this.heldTokens -= entry.tokens.length;
    for (const key of entry.keys) if (this.byKey.get(key) === entry) this.byKey.delete(key);
    return id;
  }

  /** The chained key of each whole block within the first `limit` tokens. */
  private blockKeys(prompt: number[], limit: number): string[] {
    const keys: string[] = [];
    // Two independent 32-bit FNV-1a-style hashes: a collision is checked anyway, but stays rare.
    let a = 0x811c9dc5;
    let b = 0x01000193;
    for (let i = 0; i + this.blockTokens <= limit; i += this.blockTokens) {
      for (let j = i; j < i + this.blockTokens; j++) {
        const t = prompt[j]!;
        a = Math.imul(a ^ t, 0x01000193);
        b = Math.imul(b ^ (t + 0x9e3779b9), 0x85ebca6b) ^ (b >>> 13);
      }
      keys.push(`${a >>> 0}:${b >>> 0}`);
    }
    return keys;
  }
}

/** How many leading tokens `stored` and `prompt` share, at most `limit`. */
function sharedLength(stored: number[], prompt: number[], limit: number): number {
  const max = Math.min(stored.length, limit);
  let n = 0;
  while (n < max && stored[n] === prompt[n]) n++;
  return n;
}
