/**
 * Incremental detokenization: token ids arrive one by one, text leaves in
 * deltas that are always whole characters. Decoding a window that starts a
 * few tokens back (prefix offset) keeps decoders that depend on context (a
 * leading space, a WordPiece `##`) right; a delta is released only when the
 * decoded text grew and does not end in an incomplete character (U+FFFD).
 * The same algorithm as Hugging Face text-generation-inference.
 */
export type DecodeFn = (ids: number[]) => Promise<string> | string;

export class IncrementalDetokenizer {
  private readonly ids: number[] = [];
  private prefixOffset = 0;
  private readOffset = 0;

  constructor(private readonly decode: DecodeFn) {}

  get consumed(): number {
    return this.ids.length;
  }

  /** Adds ids; returns the new text they complete (may be ''). */
  async push(ids: number[]): Promise<string> {
    this.ids.push(...ids);
    const prefixText = await this.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const newText = await this.decode(this.ids.slice(this.prefixOffset));
    if (newText.length > prefixText.length && !newText.endsWith('\uFFFD')) {
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
      return newText.slice(prefixText.length);
    }
    return '';
  }

  /** At the end of the sequence: whatever is still held back, even if it is not valid text. */
  async flush(): Promise<string> {
    if (this.readOffset === this.ids.length) return '';
    const prefixText = await this.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const newText = await this.decode(this.ids.slice(this.prefixOffset));
    this.prefixOffset = this.readOffset = this.ids.length;
    return newText.slice(prefixText.length);
  }
}
