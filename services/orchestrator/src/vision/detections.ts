/**
 * Object detector outputs made into boxes in the original image: YOLOv8's
 * [1, 4 + classes, anchors], SSD-style boxes/scores pairs and NanoDet's
 * per-stride scores and box-side distributions, a score threshold,
 * class-wise non-maximum suppression, best first.
 */
import type { ObjectDetectionConfig } from '@maas/shared';
import type { PreparedImage } from './image-tensor.js';

export interface Box {
  classIndex: number;
  score: number;
  xMin: number;
  yMin: number;
  xMax: number;
  yMax: number;
}

export interface DetectionParameters {
  scoreThreshold: number;
  iouThreshold: number;
  maxDetections: number;
}

export interface OutputTensor {
  shape: number[];
  values: Float32Array;
}

/** Candidates in tensor pixels from a YOLOv8 output: [1, 4 + C, A], or [1, A, 4 + C] when transposed. */
export function yoloCandidates(output: OutputTensor, classes: number | undefined, threshold: number): Box[] {
  const [, d1 = 0, d2 = 0] = output.shape;
  // The attribute axis is 4 + classes; exported models put it first (84 × 8400).
  const transposed = classes !== undefined ? d2 === 4 + classes && d1 !== 4 + classes : d2 < d1;
  const anchors = transposed ? d1 : d2;
  const attributes = transposed ? d2 : d1;
  const v = output.values;
  const at = (attr: number, anchor: number) =>
    transposed ? v[anchor * attributes + attr]! : v[attr * anchors + anchor]!;
  const boxes: Box[] = [];
  for (let a = 0; a < anchors; a++) {
    let best = -1;
    let bestScore = -Infinity;
    for (let c = 0; c < attributes - 4; c++) {
      const s = at(4 + c, a);
      if (s > bestScore) {
        bestScore = s;
        best = c;
      }
    }
    if (best < 0 || bestScore < threshold) continue;
    const cx = at(0, a);
    const cy = at(1, a);
    const w = at(2, a);
    const h = at(3, a);
    boxes.push({
      classIndex: best,
      score: bestScore,
      xMin: cx - w / 2,
      yMin: cy - h / 2,
      xMax: cx + w / 2,
      yMax: cy + h / 2,
    });
  }
  return boxes;
}

/** Candidates in tensor pixels from SSD-style boxes [1, A, 4] and scores [1, A, C]: one per class over the threshold. */
export function ssdCandidates(
  boxes: OutputTensor,
  scores: OutputTensor,
  config: Pick<ObjectDetectionConfig, 'boxFormat' | 'normalizedBoxes' | 'backgroundClass'>,
  tensorWidth: number,
  tensorHeight: number,
  threshold: number,
): Box[] {
  const anchors = boxes.shape[1] ?? 0;
  const classes = scores.shape[2] ?? 0;
  if (scores.shape[1] !== anchors || boxes.shape[2] !== 4) {
    throw new Error(`boxes [${boxes.shape.join(', ')}] and scores [${scores.shape.join(', ')}] do not pair`);
  }
  const sx = config.normalizedBoxes ? tensorWidth : 1;
  const sy = config.normalizedBoxes ? tensorHeight : 1;
  const out: Box[] = [];
  for (let a = 0; a < anchors; a++) {
    const [p, q, r, s] = boxes.values.subarray(a * 4, a * 4 + 4);
    let xMin: number, yMin: number, xMax: number, yMax: number;
    if (config.boxFormat === 'yxyx') [yMin, xMin, yMax, xMax] = [p!, q!, r!, s!];
    else if (config.boxFormat === 'xyxy') [xMin, yMin, xMax, yMax] = [p!, q!, r!, s!];
    else [xMin, yMin, xMax, yMax] = [p! - r! / 2, q! - s! / 2, p! + r! / 2, q! + s! / 2];
    for (let c = 0; c < classes; c++) {
      if (c === config.backgroundClass) continue;
      const score = scores.values[a * classes + c]!;
      if (score < threshold) continue;
      out.push({ classIndex: c, score, xMin: xMin * sx, yMin: yMin * sy, xMax: xMax * sx, yMax: yMax * sy });
    }
  }
  return out;
}

export interface NanodetHead {
  stride: number;
  /** [1, cells, classes]: probabilities. */
  scores: OutputTensor;
  /** [1, cells, 4 × bins]: logits of each side's distance (left, top, right, bottom) in strides. */
  distribution: OutputTensor;
}

/**
 * Candidates in tensor pixels from NanoDet's heads (its generalized focal loss head, as
 * RangiLyu/nanodet decodes it): cell i of a head is column i mod ⌈width / stride⌉, row
 * i div it, centred at ((column + ½) · stride, (row + ½) · stride); each side's distance is the
 * expected value of the softmax over its bins, times the stride. One candidate per class over
 * the threshold, as SSD's.
 */
export function nanodetCandidates(
  heads: NanodetHead[],
  bins: number,
  tensorWidth: number,
  tensorHeight: number,
  threshold: number,
): Box[] {
  const out: Box[] = [];
  const distances = new Float64Array(4);
  for (const { stride, scores, distribution } of heads) {
    const columns = Math.ceil(tensorWidth / stride);
    const rows = Math.ceil(tensorHeight / stride);
    const cells = scores.shape[1] ?? 0;
    const classes = scores.shape[2] ?? 0;
    if (cells !== columns * rows || distribution.shape[1] !== cells || distribution.shape[2] !== 4 * bins) {
      throw new Error(
        `stride ${stride} on ${tensorWidth} × ${tensorHeight}: scores [${scores.shape.join(', ')}] and ` +
          `distribution [${distribution.shape.join(', ')}] do not make a ${columns} × ${rows} grid of 4 × ${bins} bins`,
      );
    }
    for (let cell = 0; cell < cells; cell++) {
      let any = false;
      for (let c = 0; c < classes && !any; c++) any = scores.values[cell * classes + c]! >= threshold;
      if (!any) continue;
      for (let side = 0; side < 4; side++) {
        const logits = distribution.values.subarray((cell * 4 + side) * bins, (cell * 4 + side + 1) * bins);
        let max = -Infinity;
        for (const l of logits) max = Math.max(max, l);
        let sum = 0;
        let expected = 0;
        for (let b = 0; b < bins; b++) {
          const p = Math.exp(logits[b]! - max);
          sum += p;
          expected += p * b;
        }
        distances[side] = (expected / sum) * stride;
      }
      const cx = ((cell % columns) + 0.5) * stride;
      const cy = (Math.floor(cell / columns) + 0.5) * stride;
      for (let c = 0; c < classes; c++) {
        const score = scores.values[cell * classes + c]!;
        if (score < threshold) continue;
        out.push({
          classIndex: c,
          score,
          xMin: cx - distances[0]!,
          yMin: cy - distances[1]!,
          xMax: cx + distances[2]!,
          yMax: cy + distances[3]!,
        });
      }
    }
  }
  return out;
}

const iou = (a: Box, b: Box) => {
  const w = Math.min(a.xMax, b.xMax) - Math.max(a.xMin, b.xMin);
  const h = Math.min(a.yMax, b.yMax) - Math.max(a.yMin, b.yMin);
  if (w <= 0 || h <= 0) return 0;
  const inter = w * h;
  const union = (a.xMax - a.xMin) * (a.yMax - a.yMin) + (b.xMax - b.xMin) * (b.yMax - b.yMin) - inter;
  return union > 0 ? inter / union : 0;
};

/** Greedy class-wise NMS: within a class, a box overlapping a better one by more than iouThreshold goes. */
export function nonMaximumSuppression(boxes: Box[], iouThreshold: number, maxDetections: number): Box[] {
  const sorted = [...boxes].sort((a, b) => b.score - a.score);
  const kept: Box[] = [];
  for (const box of sorted) {
    if (kept.length >= maxDetections) break;
    if (kept.some((k) => k.classIndex === box.classIndex && iou(k, box) > iouThreshold)) continue;
    kept.push(box);
  }
  return kept;
}

/** From tensor pixels back to the original image's, clipped to it. */
export function toOriginal(box: Box, prepared: PreparedImage, width: number, height: number): Box {
  const x = (v: number) => Math.min(width, Math.max(0, (v - prepared.padX) / prepared.scaleX));
  const y = (v: number) => Math.min(height, Math.max(0, (v - prepared.padY) / prepared.scaleY));
  return { ...box, xMin: x(box.xMin), yMin: y(box.yMin), xMax: x(box.xMax), yMax: y(box.yMax) };
}
