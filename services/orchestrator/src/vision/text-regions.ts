/**
 * DB post-processing (Liao et al., "Real-time Scene Text Detection with
 * Differentiable Binarization", as PaddleOCR applies it): the detector's
 * probability map is binarised, each connected region becomes its
 * minimum-area rectangle, regions of low mean probability or tiny size are
 * dropped, and the rectangle is grown back by area × unclipRatio / perimeter
 * (the network was trained on shrunk text regions).
 */
import type { TextDetectionConfig } from '@maas/shared';
import { convexHull, minAreaRect, type Point, type Quad, rectCorners } from './geometry.js';

export interface TextRegion {
  /** In map pixels. */
  quad: Quad;
  score: number;
}

export function findTextRegions(
  map: Float32Array,
  width: number,
  height: number,
  config: Pick<
    TextDetectionConfig,
    'threshold' | 'boxThreshold' | 'unclipRatio' | 'minSize' | 'maxCandidates'
  >,
): TextRegion[] {
  const label = new Int32Array(width * height);
  const stack = new Int32Array(width * height);
  const rowMin = new Int32Array(height);
  const rowMax = new Int32Array(height);
  /** The region whose extent rowMin/rowMax hold for each row. */
  const rowOf = new Int32Array(height);
  const candidates: { rows: Point[]; pixels: number; sum: number }[] = [];
  let next = 0;
  for (let start = 0; start < map.length; start++) {
    if (label[start] !== 0 || map[start]! <= config.threshold) continue;
    next++;
    let top = 0;
    stack[top++] = start;
    label[start] = next;
    let pixels = 0;
    let sum = 0;
    let minY = height;
    let maxY = -1;
    while (top > 0) {
      const at = stack[--top]!;
      const x = at % width;
      const y = (at - x) / width;
      pixels++;
      sum += map[at]!;
      if (rowOf[y] !== next) {
        rowOf[y] = next;
        rowMin[y] = x;
        rowMax[y] = x;
      }
      if (y < minY) minY = y;
      if (y > maxY) maxY = y;
      if (x < rowMin[y]!) rowMin[y] = x;
      if (x > rowMax[y]!) rowMax[y] = x;
      // 8-connected, as OpenCV's findContours joins regions.
      for (let dy = -1; dy <= 1; dy++) {
        const ny = y + dy;
        if (ny < 0 || ny >= height) continue;
        for (let dx = -1; dx <= 1; dx++) {
          const nx = x + dx;
          if (nx < 0 || nx >= width) continue;
          const n = ny * width + nx;
          if (label[n] === 0 && map[n]! > config.threshold) {
            label[n] = next;
            stack[top++] = n;
          }
        }
      }
    }
    if (pixels < 4) continue;
    // Each row's leftmost and rightmost pixel centres hold the region's convex hull.
    const rows: Point[] = [];
    for (let r = minY; r <= maxY; r++) {
      if (rowOf[r] !== next) continue;
      rows.push([rowMin[r]!, r], [rowMax[r]!, r]);
    }
    candidates.push({ rows, pixels, sum });
  }
  candidates.sort((a, b) => b.pixels - a.pixels);
  const regions: TextRegion[] = [];
  for (const candidate of candidates.slice(0, config.maxCandidates)) {
    const rect = minAreaRect(convexHull(candidate.rows));
    if (Math.min(rect.width, rect.height) < config.minSize) continue;
    const score = candidate.sum / candidate.pixels;
    if (score < config.boxThreshold) continue;
    const area = rect.width * rect.height;
    const perimeter = 2 * (rect.width + rect.height);
    const grow = perimeter > 0 ? (area * config.unclipRatio) / perimeter : 0;
    const grown = { ...rect, width: rect.width + 2 * grow, height: rect.height + 2 * grow };
    if (Math.min(grown.width, grown.height) < config.minSize + 2) continue;
    regions.push({ quad: rectCorners(grown), score });
  }
  return regions;
}

/**
 * Reading order: lines whose vertical centres are within half the mean line
 * height of each other form a row; rows top to bottom, lines in a row left
 * to right.
 */
export function readingOrder<T extends { quad: Quad }>(lines: T[]): T[][] {
  if (lines.length === 0) return [];
  const centre = (q: Quad) => (q[0][1] + q[1][1] + q[2][1] + q[3][1]) / 4;
  const lineHeight = (q: Quad) =>
    (Math.hypot(q[3][0] - q[0][0], q[3][1] - q[0][1]) + Math.hypot(q[2][0] - q[1][0], q[2][1] - q[1][1])) / 2;
  const meanHeight = lines.reduce((s, l) => s + lineHeight(l.quad), 0) / lines.length;
  const sorted = [...lines].sort((a, b) => centre(a.quad) - centre(b.quad));
  const rows: { centre: number; lines: T[] }[] = [];
  for (const line of sorted) {
    const c = centre(line.quad);
    const row = rows.find((r) => Math.abs(r.centre - c) < meanHeight / 2);
    if (row) row.lines.push(line);
    else rows.push({ centre: c, lines: [line] });
  }
  return rows.map((r) => r.lines.sort((a, b) => a.quad[0][0] - b.quad[0][0]));
}
