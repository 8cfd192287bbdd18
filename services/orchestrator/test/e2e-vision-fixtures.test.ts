/**
 * ClassifyImage and DetectObjects on seeded fixture models in the standard
 * export shapes (services/models/src/fixtures/vision.ts), whose outputs are
 * known: labels from pixels, YOLOv8 and SSD candidates through the score
 * threshold, class-wise NMS and the letterbox/resize back to the caller's
 * pixels.
 */
import { status } from '@grpc/grpc-js';
import { makeTempDir, SSD_ANCHORS, writeVisionFixtures } from '@maas/models';
import type {
  ClassifyImageResponse,
  DetectObjectsResponse,
} from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import sharp from 'sharp';
import { call, failure, startStack, type Stack } from './helpers';

let stack: Stack;
beforeAll(async () => {
  const root = makeTempDir('maas-vision-');
  writeVisionFixtures(root);
  stack = await startStack({ root, env: { AUTH_MODE: 'disabled' } });
}, 60_000);
afterAll(async () => {
  await stack?.close();
});

const solid = (width: number, height: number, colour: string, format: 'png' | 'jpeg' | 'webp' = 'png') =>
  sharp({ create: { width, height, channels: 3, background: colour } })
    .toFormat(format)
    .toBuffer();
const data = (value: Buffer) => ({ source: { $case: 'data', value } });

it('ClassifyImage: colours of PNG, JPEG and WebP images of any size, best first', async () => {
  const response = await call<ClassifyImageResponse>(
    stack.client,
    'classifyImage',
    {
      model: 'colour-classifier',
      images: [
        data(await solid(50, 30, '#ff0000', 'png')),
        data(await solid(300, 500, '#00ff00', 'jpeg')),
        data(await solid(224, 224, '#0000ff', 'webp')),
      ],
      topK: 2,
    },
    null,
  );
  expect(response.results.map((r) => r.labels[0]!.label)).toEqual(['red', 'green', 'blue']);
  expect(response.results[0]!.labels).toHaveLength(2);
  expect(response.results[0]!.labels[0]!.score).toBeGreaterThan(0.99);
  expect(response.usage).toEqual({ images: 3, pixels: 50 * 30 + 300 * 500 + 224 * 224 });
});

it('DetectObjects, YOLOv8 [1, 84, 8400]: threshold, class-wise NMS, boxes in the original pixels', async () => {
  // 1280 × 640 letterboxed into 640 × 640: scale 0.5, 160 rows of padding above.
  const response = await call<DetectObjectsResponse>(
    stack.client,
    'detectObjects',
    { model: 'yolo-fixture', images: [data(await solid(1280, 640, '#808080'))] },
    null,
  );
  const detections = response.results[0]!.detections;
  expect(detections.map((d) => [d.label, Number(d.score.toFixed(2))])).toEqual([
    ['class0', 0.9],
    ['class3', 0.7],
    ['class5', 0.6],
  ]);
  const box = detections[0]!.box!;
  expect([box.xMin, box.yMin, box.xMax, box.yMax]).toEqual([540, 120, 740, 520]);
  // cx 100, cy 300, 40 × 40 → x 80..120, y 280..320 in the input → (x / 0.5, (y − 160) / 0.5).
  const small = detections[2]!.box!;
  expect([small.xMin, small.yMin, small.xMax, small.yMax]).toEqual([160, 240, 240, 320]);

  const strict = await call<DetectObjectsResponse>(
    stack.client,
    'detectObjects',
    {
      model: 'yolo-fixture',
      images: [data(await solid(1280, 640, '#808080'))],
      scoreThreshold: 0.65,
      iouThreshold: 0.99,
      maxDetections: 10,
    },
    null,
  );
  // IoU 0.99 keeps the overlapping class-0 box that 0.45 suppressed; 0.65 drops the 0.6 one.
  expect(strict.results[0]!.detections.map((d) => d.label)).toEqual(['class0', 'class0', 'class3']);
  const one = await call<DetectObjectsResponse>(
    stack.client,
    'detectObjects',
    { model: 'yolo-fixture', images: [data(await solid(640, 640, '#808080'))], maxDetections: 1 },
    null,
  );
  expect(one.results[0]!.detections).toHaveLength(1);
});

it('DetectObjects, SSD boxes/scores: background never reported, normalised yxyx boxes scaled to the image', async () => {
  const response = await call<DetectObjectsResponse>(
    stack.client,
    'detectObjects',
    { model: 'ssd-fixture', images: [data(await solid(400, 200, '#808080'))] },
    null,
  );
  const detections = response.results[0]!.detections;
  // Anchor 3 (cat, 0.85) overlaps anchor 0 (cat, 0.9) and is suppressed; anchor 2 is background.
  expect(detections.map((d) => d.label)).toEqual(['cat', 'dog']);
  const [ymin, xmin, ymax, xmax] = SSD_ANCHORS[0]!.box;
  const box = detections[0]!.box!;
  expect(box.xMin).toBeCloseTo(xmin * 400, 3);
  expect(box.yMin).toBeCloseTo(ymin * 200, 3);
  expect(box.xMax).toBeCloseTo(xmax * 400, 3);
  expect(box.yMax).toBeCloseTo(ymax * 200, 3);
});

it('refuses thresholds outside [0, 1] naming the field, and an image model named for the wrong task', async () => {
  const images = [data(await solid(10, 10, '#000000'))];
  const bad = await failure(
    call(stack.client, 'detectObjects', { model: 'yolo-fixture', images, scoreThreshold: 1.5 }, null),
  );
  expect(bad.code).toBe(status.INVALID_ARGUMENT);
  expect(bad.details).toMatch(/score_threshold: is 1.5/);
  const wrong = await failure(call(stack.client, 'classifyImage', { model: 'yolo-fixture', images }, null));
  expect(wrong.code).toBe(status.INVALID_ARGUMENT);
  expect(wrong.details).toMatch(/is a object_detection model; call DetectObjects/);
});
