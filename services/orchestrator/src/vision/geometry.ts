/** Plane geometry for text boxes: convex hull, minimum-area rectangle, corner order, rotated crops. */
import type { RgbImage } from './image-input.js';

export type Point = [number, number];
/** Top-left, top-right, bottom-right, bottom-left. */
export type Quad = [Point, Point, Point, Point];

const cross = (o: Point, a: Point, b: Point) => (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);

/** Andrew's monotone chain; counter-clockwise, no repeated points. */
export function convexHull(points: Point[]): Point[] {
  const sorted = [...points]
    .sort((a, b) => a[0] - b[0] || a[1] - b[1])
    .filter((p, i, all) => i === 0 || p[0] !== all[i - 1]![0] || p[1] !== all[i - 1]![1]);
  if (sorted.length < 3) return sorted;
  const lower: Point[] = [];
  for (const p of sorted) {
    while (lower.length >= 2 && cross(lower.at(-2)!, lower.at(-1)!, p) <= 0) lower.pop();
    lower.push(p);
  }
  const upper: Point[] = [];
  for (let i = sorted.length - 1; i >= 0; i--) {
    const p = sorted[i]!;
    while (upper.length >= 2 && cross(upper.at(-2)!, upper.at(-1)!, p) <= 0) upper.pop();
    upper.push(p);
  }
  return [...lower.slice(0, -1), ...upper.slice(0, -1)];
}

export interface RotatedRect {
  center: Point;
  /** Along `axis`. */
  width: number;
  /** Perpendicular to `axis`. */
  height: number;
  /** Unit vector of the width side. */
  axis: Point;
}

/** The smallest-area rectangle holding a convex polygon: one of its sides lies on a hull edge. */
export function minAreaRect(hull: Point[]): RotatedRect {
  if (hull.length === 1) return { center: hull[0]!, width: 0, height: 0, axis: [1, 0] };
  let best: RotatedRect | undefined;
  let bestArea = Infinity;
  for (let i = 0; i < hull.length; i++) {
    const a = hull[i]!;
    const b = hull[(i + 1) % hull.length]!;
    const length = Math.hypot(b[0] - a[0], b[1] - a[1]);
    if (length === 0) continue;
    const ux = (b[0] - a[0]) / length;
    const uy = (b[1] - a[1]) / length;
    let minU = Infinity;
    let maxU = -Infinity;
    let minV = Infinity;
    let maxV = -Infinity;
    for (const p of hull) {
      const u = p[0] * ux + p[1] * uy;
      const v = -p[0] * uy + p[1] * ux;
      if (u < minU) minU = u;
      if (u > maxU) maxU = u;
      if (v < minV) minV = v;
      if (v > maxV) maxV = v;
    }
    const area = (maxU - minU) * (maxV - minV);
    if (area < bestArea) {
      bestArea = area;
      const cu = (minU + maxU) / 2;
      const cv = (minV + maxV) / 2;
      best = {
        center: [cu * ux - cv * uy, cu * uy + cv * ux],
        width: maxU - minU,
        height: maxV - minV,
        axis: [ux, uy],
      };
    }
  }
  return best!;
}

/** A rectangle's corners, top-left first and clockwise (in image coordinates, y down). */
export function rectCorners(rect: RotatedRect): Quad {
  const [ux, uy] = rect.axis;
  const hw = rect.width / 2;
  const hh = rect.height / 2;
  const [cx, cy] = rect.center;
  const corners: Point[] = [
    [cx - ux * hw + uy * hh, cy - uy * hw - ux * hh],
    [cx + ux * hw + uy * hh, cy + uy * hw - ux * hh],
    [cx + ux * hw - uy * hh, cy + uy * hw + ux * hh],
    [cx - ux * hw - uy * hh, cy - uy * hw + ux * hh],
  ];
  return orderCorners(corners);
}

/** As PaddleOCR orders a box: the two leftmost points give top-left and bottom-left, the others the right side. */
export function orderCorners(points: Point[]): Quad {
  const byX = [...points].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const [l1, l2, r1, r2] = byX as Quad;
  const [tl, bl] = l1[1] <= l2[1] ? [l1, l2] : [l2, l1];
  const [tr, br] = r1[1] <= r2[1] ? [r1, r2] : [r2, r1];
  return [tl, tr, br, bl];
}

const distance = (a: Point, b: Point) => Math.hypot(a[0] - b[0], a[1] - b[1]);

/**
 * The quadrilateral's content as an upright image, sampled bilinearly along
 * its sides; a crop much taller than wide (a vertical line) is turned 90°
 * counter-clockwise so that it reads left to right, as PaddleOCR does.
 */
export function cropQuad(image: RgbImage, quad: Quad): RgbImage {
  const [tl, tr, , bl] = quad;
  const width = Math.max(1, Math.round(Math.max(distance(tl, tr), distance(quad[3], quad[2]))));
  const height = Math.max(1, Math.round(Math.max(distance(tl, bl), distance(tr, quad[2]))));
  const ux = (tr[0] - tl[0]) / width;
  const uy = (tr[1] - tl[1]) / width;
  const vx = (bl[0] - tl[0]) / height;
  const vy = (bl[1] - tl[1]) / height;
  const out = Buffer.alloc(width * height * 3);
  const { pixels, width: W, height: H } = image;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const sx = Math.min(W - 1, Math.max(0, tl[0] + (x + 0.5) * ux + (y + 0.5) * vx - 0.5));
      const sy = Math.min(H - 1, Math.max(0, tl[1] + (x + 0.5) * uy + (y + 0.5) * vy - 0.5));
      const x0 = Math.floor(sx);
      const y0 = Math.floor(sy);
      const x1 = Math.min(W - 1, x0 + 1);
      const y1 = Math.min(H - 1, y0 + 1);
      const fx = sx - x0;
      const fy = sy - y0;
      const o = (y * width + x) * 3;
      for (let c = 0; c < 3; c++) {
        const top = pixels[(y0 * W + x0) * 3 + c]! * (1 - fx) + pixels[(y0 * W + x1) * 3 + c]! * fx;
        const bottom = pixels[(y1 * W + x0) * 3 + c]! * (1 - fx) + pixels[(y1 * W + x1) * 3 + c]! * fx;
        out[o + c] = Math.round(top * (1 - fy) + bottom * fy);
      }
    }
  }
  const crop = { width, height, pixels: out };
  return height / width >= 1.5 ? rotate(crop, 90) : crop;
}

/** Turned counter-clockwise by 90° or by 180°. */
export function rotate(image: RgbImage, degrees: 90 | 180): RgbImage {
  const { width, height, pixels } = image;
  const w = degrees === 90 ? height : width;
  const h = degrees === 90 ? width : height;
  const out = Buffer.alloc(pixels.length);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const [nx, ny] = degrees === 90 ? [y, width - 1 - x] : [width - 1 - x, height - 1 - y];
      pixels.copy(out, (ny * w + nx) * 3, (y * width + x) * 3, (y * width + x) * 3 + 3);
    }
  }
  return { width: w, height: h, pixels: out };
}
