import { execFileSync } from 'node:child_process';
import { join } from 'node:path';

export interface FastTextReference {
  /** Per sentence, every label fastText's predict reports (k = all, threshold 0) with its probability. */
  predictions: [string, number][][];
  /** Per word, fastText's getSubwords: all candidate strings, and the ids that survive pruning. */
  subwords: { tokens: string[]; ids: number[] }[];
  /** Per line, what predict feeds the model: the words getLine reads and their ids. */
  lines: { words: string[]; ids: number[] }[];
  /** Per n-gram, its hash modulo bucket. */
  buckets: number[];
  nwords: number;
  labels: string[];
}

/**
 * fastText's own answers from its wasm build (fasttext.wasm.js, lid.176), run as a
 * child process: the package loads through dynamic import, which jest cannot host.
 */
export function fastTextReference(
  input: { sentences?: string[]; words?: string[]; lines?: string[]; ngrams?: string[] } = {},
): FastTextReference {
  const out = execFileSync(process.execPath, [join(__dirname, '..', 'scripts', 'fasttext-reference.mjs')], {
    input: JSON.stringify(input),
    encoding: 'utf8',
    maxBuffer: 256 * 1024 * 1024,
  });
  return JSON.parse(out) as FastTextReference;
}
