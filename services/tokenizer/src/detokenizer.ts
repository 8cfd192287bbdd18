/**
 * Incremental detokenization: token ids arrive a few at a time, text leaves
 * in deltas that are always whole characters, and the deltas add up to
 * decoding the whole sequence at once. The algorithm of Hugging Face
 * text-generation-inference (prefix offset / read offset): each step decodes a
 * window that starts a few tokens back, so decoders that depend on context (a
 * leading space, a WordPiece `##`, a Metaspace `▁`) see it, and releases the
 * text past what that window's prefix already gave, unless it ends in U+FFFD:
 * a multi-byte character split across byte-level tokens is then incomplete and
 * is held back until the next token completes it.
 *
 * Knows nothing of gRPC or of a particular library: the orchestrator can use it
 * over any batch decode function.
 */

/** Decodes several id sequences at once (the prefix window and the whole window, in one call). */
export type BatchDecode = (sequences: number[][]) => Promise<string[]> | string[];

export class IncrementalDetokenizer {
  /** The ids from the prefix offset on: older ones are never decoded again, so a long stream stays small. */
  private ids: number[] = [];
  private dropped = 0;
  private prefixOffset = 0;
  private readOffset = 0;

  constructor(private readonly decode: BatchDecode) {}

  /** Ids received so far. */
  get consumed(): number {
    return this.dropped + this.ids.length;
  }

  /** Adds ids; returns the text they complete (may be '' while a character is incomplete). */
  async push(ids: readonly number[]): Promise<string> {
    for (const id of ids) this.ids.push(id);
    const [prefixText, newText] = await this.windows();
    if (newText.length > prefixText.length && !newText.endsWith('\uFFFD')) {
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
      this.dropBeforePrefix();
      return newText.slice(prefixText.length);
    }
    return '';
  }

  private dropBeforePrefix(): void {
    if (this.prefixOffset === 0) return;
    this.ids = this.ids.slice(this.prefixOffset);
    this.dropped += this.prefixOffset;
    this.readOffset -= this.prefixOffset;
    this.prefixOffset = 0;
  }

  /** At the end of the sequence: whatever is still held back, even an incomplete character. */
  async flush(): Promise<string> {
    if (this.readOffset === this.ids.length) return '';
    const [prefixText, newText] = await this.windows();
    this.prefixOffset = this.readOffset = this.ids.length;
    return newText.slice(prefixText.length);
  }

  private async windows(): Promise<[string, string]> {
    const [prefixText = '', newText = ''] = await this.decode([
      this.ids.slice(this.prefixOffset, this.readOffset),
      this.ids.slice(this.prefixOffset),
    ]);
    return [prefixText, newText];
  }
}
