/**
 * DetectObjects through the public API on the default detector, nanodet-coco
 * (NanoDet 416, COCO), on real photos: darknet's dog.jpg and person.jpg,
 * resized (fixtures/objects, see its README). Each object must be found with
 * its box where it is in the photo: the boxes below were read off the images
 * by eye, and a detection must overlap its box by IoU ≥ 0.7.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { defaultRepositoryPath } from '@maas/shared';
import type { Detection, DetectObjectsResponse } from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import { call, startStack, type Stack } from './helpers';

const photo = (name: string) => ({
  source: { $case: 'data', value: readFileSync(join(__dirname, 'fixtures', 'objects', name)) },
});

type Extent = [number, number, number, number];
/** Where each object is, x_min, y_min, x_max, y_max in the fixture's pixels. */
const expected: Record<string, Record<string, Extent>> = {
  // 512 × 384
  'dog.jpg': { dog: [88, 150, 235, 358], bicycle: [92, 88, 378, 280], truck: [312, 57, 460, 110] },
  // 512 × 339
  'person.jpg': { person: [152, 80, 222, 300], dog: [57, 212, 163, 277], horse: [327, 112, 482, 278] },
};

const iou = (d: Detection, [x0, y0, x1, y1]: Extent) => {
  const b = d.box!;
  const w = Math.min(b.xMax, x1) - Math.max(b.xMin, x0);
  const h = Math.min(b.yMax, y1) - Math.max(b.yMin, y0);
  if (w <= 0 || h <= 0) return 0;
  const union = (b.xMax - b.xMin) * (b.yMax - b.yMin) + (x1 - x0) * (y1 - y0) - w * h;
  return (w * h) / union;
};

const describeDetections = (ds: Detection[]) =>
  ds
    .map(
      (d) =>
        `${d.label} ${d.score.toFixed(3)} [${[d.box!.xMin, d.box!.yMin, d.box!.xMax, d.box!.yMax].map(Math.round).join(', ')}]`,
    )
    .join('; ');

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ root: defaultRepositoryPath(), env: { AUTH_MODE: 'disabled' } });
}, 60_000);
afterAll(async () => {
  await stack?.close();
});

it('finds the dog, the bicycle and the truck, and the person, the dog and the horse, where they are', async () => {
  const names = Object.keys(expected);
  const response = await call<DetectObjectsResponse>(
    stack.client,
    'detectObjects',
    { model: 'nanodet-coco', images: names.map(photo) },
    null,
  );
  expect(response.modelVersion).toBe('1');
  expect(response.usage).toEqual({ images: 2, pixels: 512 * 384 + 512 * 339 });
  expect(response.results).toHaveLength(2);
  names.forEach((name, i) => {
    const detections = response.results[i]!.detections;
    console.log(`${name}: ${describeDetections(detections)}`);
    for (const [label, extent] of Object.entries(expected[name]!)) {
      const best = Math.max(0, ...detections.filter((d) => d.label === label).map((d) => iou(d, extent)));
      expect({ name, label, iou: best >= 0.7 }).toEqual({ name, label, iou: true });
    }
    // Best first, each within the image, at or over the model's default threshold (0.3).
    const scores = detections.map((d) => d.score);
    expect(scores).toEqual([...scores].sort((a, b) => b - a));
    expect(Math.min(...scores)).toBeGreaterThanOrEqual(0.3);
  });
}, 30_000);

it('takes the request thresholds: a high score threshold leaves only the surest', async () => {
  const response = await call<DetectObjectsResponse>(
    stack.client,
    'detectObjects',
    { model: 'nanodet-coco', images: [photo('dog.jpg')], scoreThreshold: 0.6 },
    null,
  );
  expect(response.results[0]!.detections.map((d) => d.label)).toEqual(['bicycle']);
}, 30_000);
