/**
 * Rebuilds the default model repository from npm packages, deterministically:
 *   npx tsc -b services/models && npm run build:models -w services/models [lang-id] [glove-embed]
 * The outputs are committed, so a fresh clone serves them without this step.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { convertLid176 } from './fasttext/convert-lid.js';
import { convertGlove, fetchGloveVectors } from './glove/convert-glove.js';

function writeJson(path: string, value: unknown): void {
  writeFileSync(path, `${JSON.stringify(value, null, 2)}\n`);
}

export function buildLangId(root: string): void {
  const converted = convertLid176();
  const dir = join(root, 'lang-id');
  mkdirSync(join(dir, '1'), { recursive: true });
  writeFileSync(join(dir, '1', 'model.onnx'), converted.onnx);
  writeFileSync(join(dir, '1', 'tokenizer.json'), JSON.stringify(converted.tokenizer));
  writeFileSync(join(dir, '1', 'labels.txt'), `${converted.labels.join('\n')}\n`);
  writeJson(join(dir, 'config.json'), {
    task: 'classification',
    description:
      "Language identification for 176 languages (fastText lid.176, Facebook's model, CC BY-SA 3.0)",
    maxBatchSize: 64,
    dynamicBatching: { maxQueueDelayMicroseconds: 200, maxQueueSize: 4096 },
    versionPolicy: { latest: 1 },
    sessionOptions: { intraOpNumThreads: 1, interOpNumThreads: 1 },
    inputs: [
      { name: 'input_ids', datatype: 'INT64', dims: [-1], ragged: true },
      { name: 'attention_mask', datatype: 'INT64', dims: [-1], ragged: true },
    ],
    outputs: [{ name: 'probabilities', datatype: 'FP32', dims: [converted.labels.length] }],
    tokenizer: { kind: 'fasttext', file: 'tokenizer.json', maxLength: 4096 },
    labels: 'labels.txt',
    classification: { output: 'probabilities', activation: 'none' },
  });
}

export function buildGloveEmbed(root: string, cacheDir: string): void {
  const converted = convertGlove(fetchGloveVectors(cacheDir));
  const dir = join(root, 'glove-embed');
  mkdirSync(join(dir, '1'), { recursive: true });
  writeFileSync(join(dir, '1', 'model.onnx'), converted.onnx);
  writeFileSync(join(dir, '1', 'tokenizer.json'), JSON.stringify(converted.tokenizer));
  writeJson(join(dir, 'config.json'), {
    task: 'embedding',
    description: 'Sentence embeddings: mean of GloVe 6B 100-d word vectors, L2-normalised (GloVe: PDDL)',
    maxBatchSize: 64,
    dynamicBatching: { maxQueueDelayMicroseconds: 200, maxQueueSize: 4096 },
    versionPolicy: { latest: 1 },
    sessionOptions: { intraOpNumThreads: 1, interOpNumThreads: 1 },
    inputs: [
      { name: 'input_ids', datatype: 'INT64', dims: [-1], ragged: true },
      { name: 'attention_mask', datatype: 'INT64', dims: [-1], ragged: true },
    ],
    outputs: [{ name: 'sentence_embedding', datatype: 'FP32', dims: [converted.dimensions] }],
    tokenizer: { kind: 'huggingface', file: 'tokenizer.json', maxLength: 4096, addSpecialTokens: false },
    // The graph pools and normalises already.
    embedding: { output: 'sentence_embedding', pooling: 'none', normalize: false },
  });
}

function main(): void {
  const which = process.argv.slice(2);
  const all = which.length === 0;
  const root = process.env.MODEL_REPOSITORY_OUT ?? join(__dirname, '..', '..', 'repository');
  if (all || which.includes('lang-id')) buildLangId(root);
  if (all || which.includes('glove-embed')) buildGloveEmbed(root, join(__dirname, '..', '..', '.cache'));
  console.log(`built into ${root}`);
}

if (require.main === module) main();
