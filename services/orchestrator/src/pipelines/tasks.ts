/** Per-request post-processing of encoder rows into classifications and embeddings. */
import type { CatalogueModel } from '../catalogue.js';
import type { EncoderRows } from './encoder.js';
import { activate, l2normalize, pool, topK } from './postprocess.js';

export interface LabelScore {
  label: string;
  score: number;
  index: number;
}

/** A version's labels; a version without its own file uses the first version's that has one. */
export const labelsOf = (model: CatalogueModel, version: string): string[] | undefined =>
  model.labelsByVersion.get(version) ?? [...model.labelsByVersion.values()][0];

/** One output row of a classifier (text or image) as its k best labels, after the model's activation. */
export function labelScores(
  model: CatalogueModel,
  labels: string[] | undefined,
  logits: Float32Array,
  k: number,
): LabelScore[] {
  const scores = activate(logits, model.config.classification?.activation ?? 'softmax');
  return topK(scores, k).map((index) => ({
    label: labels?.[index] ?? String(index),
    score: scores[index]!,
    index,
  }));
}

export function classifyRows(model: CatalogueModel, rows: EncoderRows, k: number): LabelScore[][] {
  const classes = rows.rowShape.reduce((a, b) => a * b, 1);
  const labels = labelsOf(model, rows.modelVersion);
  const results: LabelScore[][] = [];
  for (let r = 0; r < rows.rows; r++) {
    results.push(labelScores(model, labels, rows.values.subarray(r * classes, (r + 1) * classes), k));
  }
  return results;
}

export function embedRows(
  model: CatalogueModel,
  rows: EncoderRows,
  normalize: boolean | undefined,
): { vectors: Float32Array[]; dimensions: number } {
  const pooling = model.config.embedding?.pooling ?? 'mean';
  const shouldNormalize = normalize ?? model.config.embedding?.normalize ?? true;
  const vectors: Float32Array[] = [];
  const dimensions = rows.rowShape[rows.rowShape.length - 1] ?? 0;
  if (pooling !== 'none' && rows.rowShape[0] !== rows.seq) {
    throw new Error(`${model.name}: output has ${rows.rowShape[0]} positions for ${rows.seq} input tokens`);
  }
  for (let r = 0; r < rows.rows; r++) {
    const vector =
      pooling === 'none'
        ? rows.values.slice(r * dimensions, (r + 1) * dimensions)
        : pool(rows.values, rows.rowShape[0]!, dimensions, rows.mask, r, pooling);
    vectors.push(shouldNormalize ? l2normalize(vector) : vector);
  }
  return { vectors, dimensions };
}
