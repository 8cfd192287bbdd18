/**
 * Unit tests of the vision pipelines' pure functions (geometry, DB text
 * regions, CTC decoding, detector outputs), on synthetic images, maps and
 * tensors whose expected results are worked out by hand.
 */
import { modelConfigSchema, objectDetectionSchema } from '@maas/shared';
import { ctcSteps, decodeCtc } from '../src/vision/ctc';
import {
  type Box,
  nanodetCandidates,
  nonMaximumSuppression,
  ssdCandidates,
  toOriginal,
  yoloCandidates,
} from '../src/vision/detections';
import {
  convexHull,
  cropQuad,
  minAreaRect,
  orderCorners,
  type Point,
  type Quad,
  rectCorners,
  rotate,
} from '../src/vision/geometry';
import type { RgbImage } from '../src/vision/image-input';
import { type PreparedImage, prepareImage } from '../src/vision/image-tensor';
import { findTextRegions, readingOrder } from '../src/vision/text-regions';

/** A W × H image whose pixel (x, y) is [10x, 10y, y·W + x]: every pixel tells where it came from. */
function gradient(width: number, height: number): RgbImage {
  const pixels = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const o = (y * width + x) * 3;
      pixels[o] = 10 * x;
      pixels[o + 1] = 10 * y;
      pixels[o + 2] = y * width + x;
    }
  }
  return { width, height, pixels };
}

/** One channel of an image as rows. */
const channel = (image: RgbImage, c: number): number[][] =>
  Array.from({ length: image.height }, (_, y) =>
    Array.from({ length: image.width }, (_, x) => image.pixels[(y * image.width + x) * 3 + c]!),
  );

/** Points with -0 made 0, for toEqual. */
const plain = (points: Point[]): Point[] => points.map(([x, y]) => [x + 0, y + 0]);

function expectPointsClose(actual: Point[], expected: Point[], digits = 9): void {
  expect(actual).toHaveLength(expected.length);
  actual.forEach(([x, y], i) => {
    expect(x).toBeCloseTo(expected[i]![0], digits);
    expect(y).toBeCloseTo(expected[i]![1], digits);
  });
}

describe('geometry', () => {
  describe('convexHull', () => {
    it('keeps the corners only (no interior or collinear points), starting at the smallest x', () => {
      const points: Point[] = [
        [2, 2],
        [0, 4],
        [4, 0],
        [2, 0], // on the edge (0,0)–(4,0)
        [0, 0],
        [1, 3], // inside
        [4, 4],
      ];
      // Monotone chain over points sorted by x then y: lower (0,0)→(4,0)→(4,4), upper back (4,4)→(0,4)→(0,0).
      expect(convexHull(points)).toEqual([
        [0, 0],
        [4, 0],
        [4, 4],
        [0, 4],
      ]);
    });

    it('collinear points give the two ends; fewer than three points come back sorted', () => {
      expect(
        convexHull([
          [2, 2],
          [0, 0],
          [3, 3],
          [1, 1],
        ]),
      ).toEqual([
        [0, 0],
        [3, 3],
      ]);
      expect(
        convexHull([
          [5, 1],
          [1, 5],
        ]),
      ).toEqual([
        [1, 5],
        [5, 1],
      ]);
      expect(convexHull([])).toEqual([]);
    });

    it('has no repeated points, also when every point is the same', () => {
      expect(
        convexHull([
          [1, 1],
          [1, 1],
        ]),
      ).toEqual([[1, 1]]);
      expect(
        convexHull([
          [2, 3],
          [2, 3],
          [2, 3],
        ]),
      ).toEqual([[2, 3]]);
      expect(
        convexHull([
          [0, 0],
          [4, 0],
          [4, 0],
          [4, 2],
          [0, 2],
          [0, 0],
        ]),
      ).toEqual([
        [0, 0],
        [4, 0],
        [4, 2],
        [0, 2],
      ]);
      // And a hull of one repeated point still has a (zero-size) rectangle.
      const rect = minAreaRect(
        convexHull([
          [1, 1],
          [1, 1],
        ]),
      );
      expect(rect).toEqual({ center: [1, 1], width: 0, height: 0, axis: [1, 0] });
    });
  });

  describe('minAreaRect and rectCorners', () => {
    it('an axis-aligned rectangle is its own minimum rectangle', () => {
      const rect = minAreaRect([
        [0, 0],
        [4, 0],
        [4, 2],
        [0, 2],
      ]);
      // First edge (0,0)→(4,0): axis (1,0), u ∈ [0,4], v ∈ [0,2]; the other edges tie at area 8 and do not replace it.
      expect({ ...rect, center: plain([rect.center])[0], axis: plain([rect.axis])[0] }).toEqual({
        center: [2, 1],
        width: 4,
        height: 2,
        axis: [1, 0],
      });
      expect(plain(rectCorners(rect))).toEqual([
        [0, 0],
        [4, 0],
        [4, 2],
        [0, 2],
      ]);
    });

    it('a rotated rectangle is found along its own sides, corners top-left first and clockwise', () => {
      // Sides along (0.6, 0.8) (length 10) and (−0.8, 0.6) (length 5) from the origin:
      // (0,0), (6,8), (6−4, 8+3) = (2,11), (−4,3); centre (1, 5.5).
      const hull = convexHull([
        [0, 0],
        [6, 8],
        [2, 11],
        [-4, 3],
        [1, 5], // inside
      ]);
      const rect = minAreaRect(hull);
      expect(rect.width * rect.height).toBeCloseTo(50, 9);
      expect(Math.min(rect.width, rect.height)).toBeCloseTo(5, 9);
      expect(Math.max(rect.width, rect.height)).toBeCloseTo(10, 9);
      expectPointsClose([rect.center], [[1, 5.5]]);
      // Leftmost two: (−4,3), (0,0) → top-left (0,0), bottom-left (−4,3); right: (2,11), (6,8) → top-right (6,8).
      expectPointsClose(rectCorners(rect), [
        [0, 0],
        [6, 8],
        [2, 11],
        [-4, 3],
      ]);
    });

    it('a point has a zero rectangle at it; a segment has zero height along it', () => {
      expect(minAreaRect([[3, 4]])).toEqual({ center: [3, 4], width: 0, height: 0, axis: [1, 0] });
      const segment = minAreaRect([
        [1, 1],
        [4, 5],
      ]);
      // Length hypot(3, 4) = 5, axis (3/5, 4/5), centre the midpoint.
      expect(segment.width).toBeCloseTo(5, 12);
      expect(segment.height).toBeCloseTo(0, 12);
      expectPointsClose(
        [segment.center, segment.axis],
        [
          [2.5, 3],
          [0.6, 0.8],
        ],
      );
    });

    it('rectCorners gives the same corners whichever side is the axis', () => {
      const a = rectCorners({ center: [5, 3], width: 4, height: 2, axis: [1, 0] });
      const b = rectCorners({ center: [5, 3], width: 2, height: 4, axis: [0, 1] });
      const c = rectCorners({ center: [5, 3], width: 4, height: 2, axis: [-1, 0] });
      const expected: Quad = [
        [3, 2],
        [7, 2],
        [7, 4],
        [3, 4],
      ];
      expect(plain(a)).toEqual(expected);
      expect(plain(b)).toEqual(expected);
      expect(plain(c)).toEqual(expected);
    });
  });

  describe('orderCorners', () => {
    it('orders any permutation of a rectangle as top-left, top-right, bottom-right, bottom-left', () => {
      const expected: Quad = [
        [1, 2],
        [9, 2],
        [9, 5],
        [1, 5],
      ];
      expect(orderCorners([expected[2], expected[0], expected[3], expected[1]])).toEqual(expected);
      expect(orderCorners([expected[1], expected[3], expected[0], expected[2]])).toEqual(expected);
    });

    it('takes the two leftmost points as the left side, as PaddleOCR does (a diamond starts at its top)', () => {
      // Left pair (0,1), (1,0) → top-left (1,0), bottom-left (0,1); right pair (1,2), (2,1) → top-right (2,1).
      expect(
        orderCorners([
          [0, 1],
          [1, 2],
          [2, 1],
          [1, 0],
        ]),
      ).toEqual([
        [1, 0],
        [2, 1],
        [1, 2],
        [0, 1],
      ]);
    });
  });

  describe('cropQuad', () => {
    const image = gradient(8, 8);

    it('an axis-aligned quad on pixel edges picks exactly the pixels inside it', () => {
      // Width 6−2 = 4, height 4−1 = 3; output (x, y) samples at (2 + x + ½, 1 + y + ½) − ½: source pixel (2+x, 1+y).
      const crop = cropQuad(image, [
        [2, 1],
        [6, 1],
        [6, 4],
        [2, 4],
      ]);
      expect([crop.width, crop.height]).toEqual([4, 3]);
      expect(channel(crop, 2)).toEqual([
        [10, 11, 12, 13],
        [18, 19, 20, 21],
        [26, 27, 28, 29],
      ]);
      expect(channel(crop, 0)).toEqual([
        [20, 30, 40, 50],
        [20, 30, 40, 50],
        [20, 30, 40, 50],
      ]);
      expect(channel(crop, 1)).toEqual([
        [10, 10, 10, 10],
        [20, 20, 20, 20],
        [30, 30, 30, 30],
      ]);
    });

    it('samples bilinearly between pixels', () => {
      // Shifted right by half a pixel: source x = 2.5 + x, halfway between two pixels.
      // Red 10·x: 25, 35, 45, 55. Blue y·8 + x at y = 1: 10.5, 11.5, 12.5, 13.5, rounded half up: 11 … 14.
      const crop = cropQuad(image, [
        [2.5, 1],
        [6.5, 1],
        [6.5, 4],
        [2.5, 4],
      ]);
      expect([crop.width, crop.height]).toEqual([4, 3]);
      expect(channel(crop, 0)[0]).toEqual([25, 35, 45, 55]);
      expect(channel(crop, 2)[0]).toEqual([11, 12, 13, 14]);
      expect(channel(crop, 2)[2]).toEqual([27, 28, 29, 30]);
    });

    it('takes width and height from the longer of each pair of opposite sides', () => {
      // Top 4, bottom 5 → width 5; left 3, right hypot(1, 3) ≈ 3.16 → height 3.
      const crop = cropQuad(image, [
        [0, 0],
        [4, 0],
        [5, 3],
        [0, 3],
      ]);
      expect([crop.width, crop.height]).toEqual([5, 3]);
    });

    it('a quad turned by 90° gives an upright crop read along its top side', () => {
      // Top side (6,1)→(6,5) runs down: u = (0,1); left side (6,1)→(3,1): v = (−1,0). Width 4, height 3.
      // Output (x, y) samples (6 − (y+½) − ½, 1 + (x+½) − ½) = source (5 − y, 1 + x); blue = (1+x)·8 + 5 − y.
      const crop = cropQuad(image, [
        [6, 1],
        [6, 5],
        [3, 5],
        [3, 1],
      ]);
      expect([crop.width, crop.height]).toEqual([4, 3]);
      expect(channel(crop, 2)).toEqual([
        [13, 21, 29, 37],
        [12, 20, 28, 36],
        [11, 19, 27, 35],
      ]);
    });

    it('a quad given bottom-right first gives the crop turned by 180°', () => {
      const upright = cropQuad(image, [
        [2, 1],
        [6, 1],
        [6, 4],
        [2, 4],
      ]);
      const turned = cropQuad(image, [
        [6, 4],
        [2, 4],
        [2, 1],
        [6, 1],
      ]);
      // Source (5 − x, 3 − y).
      expect(channel(turned, 2)).toEqual([
        [29, 28, 27, 26],
        [21, 20, 19, 18],
        [13, 12, 11, 10],
      ]);
      expect(turned).toEqual(rotate(upright, 180));
    });

    it('a crop at least 1.5 times taller than wide is turned 90° counter-clockwise', () => {
      // 2 × 6 crop of source (1 + x, y); turned: 6 × 2, output (x, y) = crop (1 − y, x) = source (2 − y, x).
      const tall = cropQuad(image, [
        [1, 0],
        [3, 0],
        [3, 6],
        [1, 6],
      ]);
      expect([tall.width, tall.height]).toEqual([6, 2]);
      expect(channel(tall, 2)).toEqual([
        [2, 10, 18, 26, 34, 42],
        [1, 9, 17, 25, 33, 41],
      ]);
      // Exactly 1.5 (2 × 3) is turned; 7 / 5 = 1.4 is not.
      const atRatio = cropQuad(image, [
        [1, 0],
        [3, 0],
        [3, 3],
        [1, 3],
      ]);
      expect([atRatio.width, atRatio.height]).toEqual([3, 2]);
      const below = cropQuad(image, [
        [1, 0],
        [6, 0],
        [6, 7],
        [1, 7],
      ]);
      expect([below.width, below.height]).toEqual([5, 7]);
    });

    it('a degenerate quad gives at least one pixel, sampled at the point', () => {
      // All corners (3,2): 1 × 1, sampled at pixel coordinates (2.5, 1.5), the mean of pixels (2..3, 1..2):
      // red (20+30)/2 = 25, green (10+20)/2 = 15, blue (10+11+18+19)/4 = 14.5 → 15.
      const point = cropQuad(image, [
        [3, 2],
        [3, 2],
        [3, 2],
        [3, 2],
      ]);
      expect(point).toEqual({ width: 1, height: 1, pixels: Buffer.from([25, 15, 15]) });
      // A zero-width vertical segment x = 2, y 1..7: width max(1, 0) = 1, height 6, so turned to 6 × 1;
      // samples at x 1.5 (red 15, blue row·8 + 1.5 → up), rows 1..6.
      const segment = cropQuad(image, [
        [2, 1],
        [2, 1],
        [2, 7],
        [2, 7],
      ]);
      expect([segment.width, segment.height]).toEqual([6, 1]);
      expect(channel(segment, 0)).toEqual([[15, 15, 15, 15, 15, 15]]);
      expect(channel(segment, 1)).toEqual([[10, 20, 30, 40, 50, 60]]);
      expect(channel(segment, 2)).toEqual([[10, 18, 26, 34, 42, 50]]);
    });

    it('a quad partly outside the image keeps its size and repeats the edge pixels', () => {
      const small = gradient(4, 3);
      // Source x = x − 2 for x 0..3: −2, −1, 0, 1 → clamped to 0, 0, 0, 1 (blue = x in row 0).
      const left = cropQuad(small, [
        [-2, 0],
        [2, 0],
        [2, 1],
        [-2, 1],
      ]);
      expect([left.width, left.height]).toEqual([4, 1]);
      expect(channel(left, 2)).toEqual([[0, 0, 0, 1]]);
      // Source (2 + x, 1 + y) clamped to x ≤ 3, y ≤ 2; blue = y·4 + x.
      const corner = cropQuad(small, [
        [2, 1],
        [6, 1],
        [6, 4],
        [2, 4],
      ]);
      expect([corner.width, corner.height]).toEqual([4, 3]);
      expect(channel(corner, 2)).toEqual([
        [6, 7, 7, 7],
        [10, 11, 11, 11],
        [10, 11, 11, 11],
      ]);
    });
  });

  describe('rotate', () => {
    // 3 × 2: pixels [10x, 10y, 3y + x].
    const image = gradient(3, 2);

    it('by 180° reverses the pixel order, all three channels of each pixel together', () => {
      const turned = rotate(image, 180);
      expect([turned.width, turned.height]).toEqual([3, 2]);
      expect(Array.from(turned.pixels)).toEqual([
        ...[20, 10, 5, 10, 10, 4, 0, 10, 3],
        ...[20, 0, 2, 10, 0, 1, 0, 0, 0],
      ]);
      expect(rotate(turned, 180)).toEqual(image);
      // The input is left as it was.
      expect(channel(image, 2)).toEqual([
        [0, 1, 2],
        [3, 4, 5],
      ]);
    });

    it('by 90° turns counter-clockwise: the top-right pixel becomes the top-left', () => {
      const turned = rotate(image, 90);
      expect([turned.width, turned.height]).toEqual([2, 3]);
      expect(channel(turned, 2)).toEqual([
        [2, 5],
        [1, 4],
        [0, 3],
      ]);
      // Twice is 180°, four times the image itself.
      expect(rotate(turned, 90)).toEqual(rotate(image, 180));
      expect(rotate(rotate(rotate(turned, 90), 90), 90)).toEqual(image);
    });
  });
});

describe('text regions', () => {
  // The textDetection section of a detector's config, with the schema's defaults.
  const config = modelConfigSchema.parse({
    task: 'text_detection',
    image: { resize: { mode: 'keep_ratio' } },
    inputs: [{ name: 'x', datatype: 'FP32', dims: [3, -1, -1] }],
    outputs: [{ name: 'sigmoid_0.tmp_0', datatype: 'FP32', dims: [1, -1, -1] }],
    textDetection: { recognizer: 'rec' },
  }).textDetection!;

  /** A map of `width` × `height`, `background` everywhere but the rectangles (inclusive pixel ranges). */
  function map(
    width: number,
    height: number,
    rects: { x0: number; y0: number; x1: number; y1: number; p: number }[],
    background = 0,
  ): Float32Array {
    const m = new Float32Array(width * height).fill(background);
    for (const { x0, y0, x1, y1, p } of rects) {
      for (let y = y0; y <= y1; y++) for (let x = x0; x <= x1; x++) m[y * width + x] = p;
    }
    return m;
  }

  it('uses the schema defaults the arithmetic below relies on', () => {
    expect(config).toMatchObject({
      threshold: 0.3,
      boxThreshold: 0.6,
      unclipRatio: 1.5,
      minSize: 3,
      maxCandidates: 1000,
    });
  });

  it('an empty map, or one below the threshold everywhere, has no regions', () => {
    expect(findTextRegions(new Float32Array(16 * 10), 16, 10, config)).toEqual([]);
    expect(findTextRegions(map(16, 10, [], 0.25), 16, 10, config)).toEqual([]);
  });

  it('one rectangle gives one region enclosing it, grown by area × unclipRatio / perimeter', () => {
    // Pixels x 2..11, y 3..6 (10 × 4). Its pixel centres span 9 × 3 around (6.5, 4.5):
    // grow = 27 × 1.5 / 24 = 1.6875 on each side → 12.375 × 6.375, corners (6.5 ± 6.1875, 4.5 ± 3.1875).
    const regions = findTextRegions(map(16, 10, [{ x0: 2, y0: 3, x1: 11, y1: 6, p: 0.9 }]), 16, 10, config);
    expect(regions).toHaveLength(1);
    expect(regions[0]!.score).toBeCloseTo(0.9, 6);
    expectPointsClose(regions[0]!.quad, [
      [0.3125, 1.3125],
      [12.6875, 1.3125],
      [12.6875, 7.6875],
      [0.3125, 7.6875],
    ]);
    // unclipRatio 3 doubles the growth: 3.375 → corners (6.5 ± 7.875, 4.5 ± 4.875).
    const wider = findTextRegions(map(16, 10, [{ x0: 2, y0: 3, x1: 11, y1: 6, p: 0.9 }]), 16, 10, {
      ...config,
      unclipRatio: 3,
    });
    expectPointsClose(wider[0]!.quad, [
      [-1.375, -0.375],
      [14.375, -0.375],
      [14.375, 9.375],
      [-1.375, 9.375],
    ]);
  });

  it("the score is the mean probability of the region's own pixels", () => {
    // Left half 0.5, right half 1.0, 20 pixels each: (20 × 0.5 + 20 × 1) / 40 = 0.75; the 0.25 around is not text.
    const m = map(
      16,
      10,
      [
        { x0: 2, y0: 3, x1: 6, y1: 6, p: 0.5 },
        { x0: 7, y0: 3, x1: 11, y1: 6, p: 1 },
      ],
      0.25,
    );
    const regions = findTextRegions(m, 16, 10, config);
    expect(regions.map((r) => r.score)).toEqual([0.75]);
  });

  it('two separate blobs give two regions, largest first', () => {
    // A: x 2..7, y 2..5 (24 pixels): 5 × 3, grow 15 × 1.5 / 16 = 1.40625 around (4.5, 3.5).
    // B: x 14..27, y 6..10 (70 pixels): 13 × 4, grow 52 × 1.5 / 34 = 78/34 around (20.5, 8).
    const m = map(30, 12, [
      { x0: 2, y0: 2, x1: 7, y1: 5, p: 0.875 },
      { x0: 14, y0: 6, x1: 27, y1: 10, p: 0.75 },
    ]);
    const regions = findTextRegions(m, 30, 12, config);
    expect(regions.map((r) => r.score)).toEqual([0.75, 0.875]);
    const gb = 78 / 34;
    expectPointsClose(regions[0]!.quad, [
      [20.5 - 6.5 - gb, 8 - 2 - gb],
      [20.5 + 6.5 + gb, 8 - 2 - gb],
      [20.5 + 6.5 + gb, 8 + 2 + gb],
      [20.5 - 6.5 - gb, 8 + 2 + gb],
    ]);
    expectPointsClose(regions[1]!.quad, [
      [0.59375, 0.59375],
      [8.40625, 0.59375],
      [8.40625, 6.40625],
      [0.59375, 6.40625],
    ]);
    // maxCandidates 1: only the largest is considered.
    expect(findTextRegions(m, 30, 12, { ...config, maxCandidates: 1 }).map((r) => r.score)).toEqual([0.75]);
  });

  it('pixels touching at a corner join one region (8-connected); a pixel apart they do not', () => {
    const touching = map(12, 12, [
      { x0: 0, y0: 0, x1: 3, y1: 3, p: 1 },
      { x0: 4, y0: 4, x1: 7, y1: 7, p: 1 },
    ]);
    expect(findTextRegions(touching, 12, 12, config)).toHaveLength(1);
    // Each 4 × 4 square alone: 3 × 3 centres, grown by 9 × 1.5 / 12 = 1.125 to 5.25 ≥ minSize + 2.
    const apart = map(12, 12, [
      { x0: 0, y0: 0, x1: 3, y1: 3, p: 1 },
      { x0: 5, y0: 5, x1: 8, y1: 8, p: 1 },
    ]);
    expect(findTextRegions(apart, 12, 12, config)).toHaveLength(2);
  });

  it('drops regions of low mean probability', () => {
    // 0.55 is text (> 0.3) but its mean is below boxThreshold 0.6; 0.65 is kept.
    expect(findTextRegions(map(16, 10, [{ x0: 2, y0: 3, x1: 11, y1: 6, p: 0.55 }]), 16, 10, config)).toEqual(
      [],
    );
    expect(
      findTextRegions(map(16, 10, [{ x0: 2, y0: 3, x1: 11, y1: 6, p: 0.65 }]), 16, 10, config),
    ).toHaveLength(1);
  });

  it('a pixel at exactly the threshold is not text', () => {
    const m = map(16, 10, [{ x0: 2, y0: 3, x1: 11, y1: 6, p: 0.5 }]);
    expect(findTextRegions(m, 16, 10, { ...config, threshold: 0.5, boxThreshold: 0 })).toEqual([]);
    expect(findTextRegions(m, 16, 10, { ...config, threshold: 0.49, boxThreshold: 0 })).toHaveLength(1);
  });

  it('drops regions whose shorter side is below minSize, before and after growing', () => {
    // 10 × 3 pixels: centres 9 × 2, 2 < minSize 3.
    expect(findTextRegions(map(16, 10, [{ x0: 2, y0: 3, x1: 11, y1: 5, p: 0.9 }]), 16, 10, config)).toEqual(
      [],
    );
    // Not grown (unclipRatio 0): 9 × 3 passes minSize 3 but not minSize + 2 = 5 after growing.
    const flat = { ...config, unclipRatio: 0 };
    expect(findTextRegions(map(16, 10, [{ x0: 2, y0: 3, x1: 11, y1: 6, p: 0.9 }]), 16, 10, flat)).toEqual([]);
    // 10 × 6 pixels: 9 × 5, kept, the quad exactly on the outer pixel centres.
    const kept = findTextRegions(map(16, 10, [{ x0: 2, y0: 3, x1: 11, y1: 8, p: 0.9 }]), 16, 10, flat);
    expect(kept).toHaveLength(1);
    expectPointsClose(kept[0]!.quad, [
      [2, 3],
      [11, 3],
      [11, 8],
      [2, 8],
    ]);
  });

  describe('readingOrder', () => {
    const line = (id: string, x: number, y: number, w = 40, h = 10) => ({
      id,
      quad: [
        [x, y],
        [x + w, y],
        [x + w, y + h],
        [x, y + h],
      ] as Quad,
    });
    const ids = (rows: { id: string }[][]) => rows.map((r) => r.map((l) => l.id));

    it('no lines, no rows', () => {
      expect(readingOrder([])).toEqual([]);
    });

    it('rows top to bottom, lines in a row left to right', () => {
      // Height 10 each, so a row holds centres within 5. Row 1: centres 5, 5, 8; row 2: centres 25, 27.
      const lines = [
        line('D', 40, 20),
        line('A', 50, 0),
        line('C', 100, 3),
        line('E', 0, 22),
        line('B', 0, 0),
      ];
      const rows = readingOrder(lines);
      expect(ids(rows)).toEqual([
        ['B', 'A', 'C'],
        ['E', 'D'],
      ]);
      // The lines themselves come back, other fields kept.
      expect(rows[0]![0]).toBe(lines[4]);
    });

    it('"same row" is a centre less than half the mean line height from the row\'s first line', () => {
      // Mean height 10, half 5: centres 5 and 9.9 share a row, 5 and 10 do not.
      expect(ids(readingOrder([line('a', 10, 0), line('b', 0, 4.9)]))).toEqual([['b', 'a']]);
      expect(ids(readingOrder([line('a', 10, 0), line('b', 0, 5)]))).toEqual([['a'], ['b']]);
      // Centres 5, 9, 13: b joins a (4 < 5); c is 8 from a, so it starts a row though it is 4 from b.
      expect(ids(readingOrder([line('c', 0, 8), line('b', 0, 4), line('a', 0, 0)]))).toEqual([
        ['a', 'b'],
        ['c'],
      ]);
    });

    it('the half height is of the mean over all lines', () => {
      // Heights 6, 6: half 3, centres 3 and 9 are two rows.
      const s1 = line('s1', 50, 0, 40, 6);
      const s2 = line('s2', 0, 6, 40, 6);
      expect(ids(readingOrder([s1, s2]))).toEqual([['s1'], ['s2']]);
      // With a line 30 high: mean (6 + 6 + 30) / 3 = 14, half 7 > 6, so s1 and s2 share a row.
      const tall = line('t', 0, 100, 40, 30);
      expect(ids(readingOrder([tall, s1, s2]))).toEqual([['s2', 's1'], ['t']]);
    });
  });
});

describe('CTC decoding', () => {
  const charset = ['a', 'b', 'c'];
  /** Rows of [blank, a, b, c] probabilities, values exact in float32. */
  const probs = (rows: number[][]) => Float32Array.from(rows.flat());
  const B = [1, 0, 0, 0];
  const step = (c: number, p: number) => {
    const row = [(1 - p) / 3, (1 - p) / 3, (1 - p) / 3, (1 - p) / 3];
    row[c] = p;
    return row;
  };

  it('drops blanks and merges repeats; confidence is the mean probability of the characters kept', () => {
    // a a _ b b _ _ c → "abc"; each character counts once, at the step it is emitted:
    // (0.5 + 1 + 0.625) / 3.
    const rows = [step(1, 0.5), step(1, 0.75), B, step(2, 1), step(2, 0.5), B, B, step(3, 0.625)];
    const decoded = decodeCtc(probs(rows), 8, 4, charset);
    expect(decoded.text).toBe('abc');
    expect(decoded.confidence).toBeCloseTo(2.125 / 3, 12);
  });

  it('keeps a repeat separated by a blank', () => {
    const rows = [step(1, 0.5), B, step(1, 1), step(1, 0.75), step(2, 0.75), step(1, 0.875)];
    // a _ a a b a → "aaba", confidence (0.5 + 1 + 0.75 + 0.875) / 4.
    const decoded = decodeCtc(probs(rows), 6, 4, charset);
    expect(decoded).toEqual({ text: 'aaba', confidence: 3.125 / 4 });
  });

  it('an all-blank or empty line is "" with confidence 0', () => {
    expect(decodeCtc(probs([B, B, B]), 3, 4, charset)).toEqual({ text: '', confidence: 0 });
    expect(decodeCtc(new Float32Array(0), 0, 4, charset)).toEqual({ text: '', confidence: 0 });
  });

  it('a tie goes to the lower class, the blank first', () => {
    const rows = [
      [0.5, 0.5, 0, 0],
      [0, 0, 0.5, 0.5],
    ];
    expect(decodeCtc(probs(rows), 2, 4, charset)).toEqual({ text: 'b', confidence: 0.5 });
  });

  it('reads only the first realSteps steps', () => {
    const rows = [step(1, 0.5), step(2, 1), step(3, 0.75), step(1, 0.75)];
    expect(decodeCtc(probs(rows), 4, 4, charset, 2)).toEqual({ text: 'ab', confidence: 0.75 });
    expect(decodeCtc(probs(rows), 4, 4, charset, 10).text).toBe('abca');
    expect(decodeCtc(probs(rows), 4, 4, charset, 0)).toEqual({ text: '', confidence: 0 });
  });

  it('ctcSteps: the steps over the real width plus one, at most all of them', () => {
    // ceil(40 × 100 / 320) = ceil(12.5) = 13, + 1.
    expect(ctcSteps(40, 100, 320)).toBe(14);
    // ceil(40 × 160 / 320) = 20, + 1.
    expect(ctcSteps(40, 160, 320)).toBe(21);
    // ceil(25 × 100 / 300) = ceil(8.33) = 9, + 1.
    expect(ctcSteps(25, 100, 300)).toBe(10);
    expect(ctcSteps(40, 8, 320)).toBe(2);
    // The widest line of the batch: min(40, 41).
    expect(ctcSteps(40, 320, 320)).toBe(40);
  });
});

describe('detections', () => {
  const box = (
    classIndex: number,
    score: number,
    xMin: number,
    yMin: number,
    xMax: number,
    yMax: number,
  ): Box => ({
    classIndex,
    score,
    xMin,
    yMin,
    xMax,
    yMax,
  });

  describe('yoloCandidates', () => {
    // Four anchors, two classes: [cx, cy, w, h, score0, score1] each.
    const anchors = [
      [50, 40, 20, 10, 0.875, 0.125], // class 0 → (40, 35)–(60, 45)
      [10, 10, 4, 6, 0.25, 0.375], // best 0.375 < 0.5: dropped
      [100, 80, 30, 40, 0.375, 0.75], // class 1 → (85, 60)–(115, 100)
      [0, 0, 2, 2, 0.5, 0.5], // tie → class 0; 0.5 is not below the threshold → (−1, −1)–(1, 1)
    ];
    const expected = [
      box(0, 0.875, 40, 35, 60, 45),
      box(1, 0.75, 85, 60, 115, 100),
      box(0, 0.5, -1, -1, 1, 1),
    ];

    it('reads [1, 4 + classes, anchors] as YOLOv8 exports it: cx, cy, w, h, then class scores', () => {
      // Attribute-major: value (attr, anchor) at attr × 4 + anchor.
      const values = Float32Array.from({ length: 24 }, (_, i) => anchors[i % 4]![Math.floor(i / 4)]!);
      expect(yoloCandidates({ shape: [1, 6, 4], values }, 2, 0.5)).toEqual(expected);
      expect(yoloCandidates({ shape: [1, 6, 4], values }, 2, 0.9)).toEqual([]);
    });

    it('reads the transposed [1, anchors, 4 + classes]', () => {
      const values = Float32Array.from(anchors.flat());
      expect(yoloCandidates({ shape: [1, 4, 6], values }, 2, 0.5)).toEqual(expected);
    });

    it('without a class count, the longer axis is the anchors', () => {
      // One class, 8 anchors: [1, 5, 8]; only anchor 5 scores 0.75.
      const attrMajor = new Float32Array(5 * 8);
      const set = (attr: number, anchor: number, v: number) => (attrMajor[attr * 8 + anchor] = v);
      [20, 30, 8, 4, 0.75].forEach((v, attr) => set(attr, 5, v));
      expect(yoloCandidates({ shape: [1, 5, 8], values: attrMajor }, undefined, 0.5)).toEqual([
        box(0, 0.75, 16, 28, 24, 32),
      ]);
      const anchorMajor = new Float32Array(8 * 5);
      anchorMajor.set([20, 30, 8, 4, 0.75], 5 * 5);
      expect(yoloCandidates({ shape: [1, 8, 5], values: anchorMajor }, undefined, 0.5)).toEqual([
        box(0, 0.75, 16, 28, 24, 32),
      ]);
    });
  });

  describe('nanodetCandidates', () => {
    const LN2 = Math.log(2);
    // Logits of one side over 3 bins and their expected bin: uniform → 1; [0, 0, ln 2] → p = ¼, ¼, ½ → 1.25;
    // [1000, 0, 0] → bin 0 (exp(1000) would overflow without subtracting the max); [0, 50, 0] → ≈ 1; [0, 0, 50] → ≈ 2.
    const uniform = [0, 0, 0];
    const head = (stride: number, scores: number[][], sides: number[][][]) => ({
      stride,
      scores: { shape: [1, scores.length, scores[0]!.length], values: Float32Array.from(scores.flat()) },
      distribution: { shape: [1, sides.length, 12], values: Float32Array.from(sides.flat(2)) },
    });
    const junk = [uniform, uniform, uniform, uniform];

    it('decodes each side as the expected bin × stride from the centre of its cell, one box per class over the threshold', () => {
      // 8 × 8 input. Stride 4: a 2 × 2 grid, cell i at column i mod 2, row i div 2, centre ((col + ½)·4, (row + ½)·4).
      const fine = head(
        4,
        [
          [0.125, 0.25], // cell 0: under the threshold
          [0.75, 0.25], // cell 1, centre (6, 2): class 0
          [0.5, 0.625], // cell 2, centre (2, 6): both (0.5 is not below 0.5)
          [0.25, 0.125], // cell 3: under
        ],
        [
          junk,
          // left: bin 1 → 4; top: bin 0 → 0; right: uniform → 1 → 4; bottom: 1.25 → 5.
          [[0, 50, 0], [1000, 0, 0], uniform, [0, 0, LN2]],
          [uniform, uniform, uniform, uniform], // 4 each side
          junk,
        ],
      );
      // Stride 8: one cell, centre (4, 4): class 1, left bin 2 → 16, the rest 0.
      const coarse = head(
        8,
        [[0.25, 0.875]],
        [
          [
            [0, 0, 50],
            [50, 0, 0],
            [50, 0, 0],
            [50, 0, 0],
          ],
        ],
      );
      const got = nanodetCandidates([fine, coarse], 3, 8, 8, 0.5);
      expect(got.map((b) => [b.classIndex, b.score])).toEqual([
        [0, 0.75],
        [0, 0.5],
        [1, 0.625],
        [1, 0.875],
      ]);
      const corners = got.map((b) => [b.xMin, b.yMin, b.xMax, b.yMax].map((v) => Number(v.toFixed(6))));
      expect(corners).toEqual([
        [2, 2, 10, 7],
        [-2, 2, 6, 10],
        [-2, 2, 6, 10],
        [-12, 4, 4, 4],
      ]);
      expect(nanodetCandidates([fine, coarse], 3, 8, 8, 0.9)).toEqual([]);
    });

    it('reads cells row by row over ⌈width / stride⌉ columns', () => {
      // 10 × 8 at stride 4: 3 columns (the last one partial), 2 rows; cell 4 is column 1, row 1 → centre (6, 6).
      const scores = Array.from({ length: 6 }, (_, i) => [i === 4 ? 0.75 : 0]);
      const sides = Array.from({ length: 6 }, () => [uniform, uniform, uniform, uniform]);
      const [only, ...rest] = nanodetCandidates([head(4, scores, sides)], 3, 10, 8, 0.5);
      expect(rest).toEqual([]);
      expect([only!.xMin, only!.yMin, only!.xMax, only!.yMax].map((v) => Number(v.toFixed(6)))).toEqual([
        2, 2, 10, 10,
      ]);
    });

    it('rejects heads that do not fit the input grid or the bins', () => {
      const fourCells = head(4, [[1], [1], [1], [1]], [junk, junk, junk, junk]);
      // 12 × 8 at stride 4 is a 3 × 2 grid, not 4 cells.
      expect(() => nanodetCandidates([fourCells], 3, 12, 8, 0.5)).toThrow(/3 × 2 grid/);
      // 12 values a cell are 4 × 3 bins, not 4 × 4.
      expect(() => nanodetCandidates([fourCells], 4, 8, 8, 0.5)).toThrow(/4 × 4 bins/);
    });

    it('is a format of the objectDetection config, its heads validated', () => {
      const heads = [{ stride: 8, scoresOutput: 's', distributionOutput: 'd' }];
      const parsed = objectDetectionSchema.parse({ format: 'nanodet', heads });
      expect([parsed.heads, parsed.bins]).toEqual([heads, 8]);
      expect(objectDetectionSchema.safeParse({ format: 'nanodet', heads: [{ stride: 8 }] }).success).toBe(
        false,
      );
      expect(objectDetectionSchema.safeParse({ format: 'nanodet', heads, bins: 1 }).success).toBe(false);
    });
  });

  describe('ssdCandidates', () => {
    const defaults = objectDetectionSchema.parse({ format: 'ssd' });
    // Two anchors, three classes (0 the background).
    const boxes = { shape: [1, 2, 4], values: Float32Array.from([0.125, 0.25, 0.5, 0.75, 0, 0, 0.25, 0.25]) };
    const scores = { shape: [1, 2, 3], values: Float32Array.from([0.875, 0.75, 0.5, 0.25, 0.125, 0.375]) };

    it('one candidate per class over the threshold, the background never, normalised boxes scaled to the tensor', () => {
      expect(defaults).toMatchObject({ boxFormat: 'xyxy', normalizedBoxes: true });
      // Tensor 300 × 200: xyxy (0.125, 0.25, 0.5, 0.75) → (37.5, 50)–(150, 150). Anchor 1: all below 0.5.
      expect(ssdCandidates(boxes, scores, { ...defaults, backgroundClass: 0 }, 300, 200, 0.5)).toEqual([
        box(1, 0.75, 37.5, 50, 150, 150),
        box(2, 0.5, 37.5, 50, 150, 150),
      ]);
      // Without a background class, class 0 is a class like any other.
      expect(
        ssdCandidates(boxes, scores, defaults, 300, 200, 0.5).map((b) => [b.classIndex, b.score]),
      ).toEqual([
        [0, 0.875],
        [1, 0.75],
        [2, 0.5],
      ]);
    });

    it('reads yxyx and cxcywh boxes, and pixel boxes as they are', () => {
      const config = { ...defaults, backgroundClass: 0 };
      // yxyx: yMin 0.125 × 200 = 25, xMin 0.25 × 300 = 75, yMax 0.5 × 200 = 100, xMax 0.75 × 300 = 225.
      const [yxyx] = ssdCandidates(boxes, scores, { ...config, boxFormat: 'yxyx' }, 300, 200, 0.5);
      expect(yxyx).toEqual(box(1, 0.75, 75, 25, 225, 100));
      // cxcywh (0.125, 0.25, 0.5, 0.75): x 0.125 ± 0.25, y 0.25 ± 0.375 → (−0.125, −0.125)–(0.375, 0.625).
      const [cxcywh] = ssdCandidates(boxes, scores, { ...config, boxFormat: 'cxcywh' }, 300, 200, 0.5);
      expect(cxcywh).toEqual(box(1, 0.75, -37.5, -25, 112.5, 125));
      const pixels = { shape: [1, 2, 4], values: Float32Array.from([10, 20, 30, 40, 0, 0, 1, 1]) };
      const [raw] = ssdCandidates(pixels, scores, { ...config, normalizedBoxes: false }, 300, 200, 0.5);
      expect(raw).toEqual(box(1, 0.75, 10, 20, 30, 40));
    });

    it('refuses boxes and scores of different anchor counts', () => {
      const three = { shape: [1, 3, 3], values: new Float32Array(9) };
      expect(() => ssdCandidates(boxes, three, defaults, 300, 200, 0.5)).toThrow(/do not pair/);
    });
  });

  describe('nonMaximumSuppression', () => {
    const a = box(0, 0.9, 0, 0, 10, 10);
    // IoU with a: 9 × 9 = 81 / (100 + 100 − 81) = 0.68.
    const overlapping = box(0, 0.8, 1, 1, 11, 11);
    const otherClass = box(1, 0.85, 0, 0, 10, 10);
    const apart = box(0, 0.7, 20, 20, 30, 30);
    // IoU with a exactly 50 / 100 = 0.5.
    const half = box(0, 0.6, 0, 0, 10, 5);

    it('within a class the lower score goes; other classes are kept; best first', () => {
      const kept = nonMaximumSuppression([half, apart, overlapping, otherClass, a], 0.45, 100);
      expect(kept).toEqual([a, otherClass, apart]);
    });

    it('an overlap of exactly iouThreshold is kept', () => {
      expect(nonMaximumSuppression([half, a], 0.5, 100)).toEqual([a, half]);
    });

    it('stops at maxDetections', () => {
      expect(nonMaximumSuppression([half, apart, overlapping, otherClass, a], 0.45, 2)).toEqual([
        a,
        otherClass,
      ]);
      expect(nonMaximumSuppression([], 0.45, 2)).toEqual([]);
    });

    it('only kept boxes suppress (greedy)', () => {
      const first = box(0, 0.9, 0, 0, 10, 10);
      // IoU with first: 70 / 130 ≈ 0.54 → suppressed.
      const second = box(0, 0.8, 3, 0, 13, 10);
      // IoU with first 40 / 160 = 0.25, with second 70 / 130 ≈ 0.54: kept, second being gone.
      const third = box(0, 0.7, 6, 0, 16, 10);
      expect(nonMaximumSuppression([third, second, first], 0.45, 100)).toEqual([first, third]);
    });
  });

  describe('toOriginal', () => {
    const resized: RgbImage = { width: 640, height: 640, pixels: Buffer.alloc(0) };

    it('undoes a letterbox: padding off, then divided by the scale', () => {
      // 1280 × 720 into 640 × 640: scale 0.5 → 640 × 360, padY (640 − 360) / 2 = 140.
      const prepared: PreparedImage = { resized, scaleX: 0.5, scaleY: 0.5, padX: 0, padY: 140 };
      // x 100 / 0.5 = 200, y (190 − 140) / 0.5 = 100, 300 / 0.5 = 600, (390 − 140) / 0.5 = 500.
      expect(toOriginal(box(3, 0.5, 100, 190, 300, 390), prepared, 1280, 720)).toEqual(
        box(3, 0.5, 200, 100, 600, 500),
      );
    });

    it('clips to the original image', () => {
      const prepared: PreparedImage = { resized, scaleX: 0.5, scaleY: 0.5, padX: 0, padY: 140 };
      // −10 / 0.5 = −20 → 0; (100 − 140) / 0.5 = −80 → 0; 700 / 0.5 = 1400 → 1280; (520 − 140) / 0.5 = 760 → 720.
      expect(toOriginal(box(1, 0.25, -10, 100, 700, 520), prepared, 1280, 720)).toEqual(
        box(1, 0.25, 0, 0, 1280, 720),
      );
    });

    it('undoes a stretch with a scale per axis', () => {
      const prepared: PreparedImage = { resized, scaleX: 2, scaleY: 4, padX: 0, padY: 0 };
      expect(toOriginal(box(0, 1, 40, 40, 400, 400), prepared, 200, 100)).toEqual(
        box(0, 1, 20, 10, 200, 100),
      );
    });

    it('maps back the transform prepareImage reports for a letterboxed image', async () => {
      // 16 × 8 into an 8 × 8 letterbox: scale 0.5 → 8 × 4, padY (8 − 4) / 2 = 2.
      const prepared = await prepareImage(gradient(16, 8), {
        resize: { mode: 'letterbox', width: 8, height: 8, padValue: 114 },
        scale: 1 / 255,
        mean: [0, 0, 0],
        std: [1, 1, 1],
        channelOrder: 'rgb',
        layout: 'nchw',
        datatype: 'FP32',
      });
      expect([prepared.scaleX, prepared.scaleY, prepared.padX, prepared.padY]).toEqual([0.5, 0.5, 0, 2]);
      // Original (4, 2)–(12, 6) is tensor (2, 2 + 1)–(6, 2 + 3).
      expect(toOriginal(box(0, 1, 2, 3, 6, 5), prepared, 16, 8)).toEqual(box(0, 1, 4, 2, 12, 6));
    });
  });
});
