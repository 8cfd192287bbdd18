/** Sample inputs built from a model's config, for warm-up runs. */
import * as ort from 'onnxruntime-node';
import type { ModelConfig } from '@maas/shared';
import { allocate, DATATYPES, elementCount, scalarOf } from './tensors.js';

/** A few tokens: long enough to exercise sequence kernels, short enough to keep loading fast. */
export const WARMUP_SEQUENCE_LENGTH = 4;

/**
 * Every input (optional ones too, so the whole graph runs) with `rows` rows
 * when the model batches; variable dimensions get WARMUP_SEQUENCE_LENGTH.
 * Values are 0 (valid token ids, positions and types), masks are 1.
 */
export function sampleInputs(config: ModelConfig, rows: number): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const spec of config.inputs) {
    const dims = spec.dims.map((d) => (d < 0 ? WARMUP_SEQUENCE_LENGTH : d));
    const shape = config.maxBatchSize > 0 ? [rows, ...dims] : dims;
    const data = allocate(spec.datatype, elementCount(shape));
    if (/mask/i.test(spec.name))
      (data as unknown as { fill(v: unknown): void }).fill(scalarOf(spec.datatype, 1));
    feeds[spec.name] = new ort.Tensor(DATATYPES[spec.datatype].ort, data as never, shape);
  }
  return feeds;
}
