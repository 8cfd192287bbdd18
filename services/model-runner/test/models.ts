/** Models for runner tests: the @maas/models fixtures (generated once per test file), identity graphs over every datatype. */
import { cpSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  buildTinyGpt2,
  GraphBuilder,
  makeTempDir,
  writeFixtureRepository,
  type ElemType,
  type FixtureRepositoryOptions,
} from '@maas/models';

type FixtureModel = 'bert-classifier' | 'sentence-encoder' | 'broken-onnx' | 'broken-config';
let fixtures: string | undefined;

/**
 * A fresh repository holding copies of fixture models, with the batching settings given.
 * Generating the fixtures is slow inside jest's sandbox (seconds per model), so it is done once.
 */
export function testRepository(
  models: FixtureModel[],
  options: Pick<FixtureRepositoryOptions, 'maxBatchSize' | 'maxQueueDelayMicroseconds' | 'maxQueueSize'> = {},
): string {
  fixtures ??= writeFixtureRepository(undefined, {
    models: ['bert-classifier', 'sentence-encoder'],
    broken: true,
  }).root;
  const root = makeTempDir('maas-runner-test-');
  for (const model of models) {
    cpSync(join(fixtures, model), join(root, model), { recursive: true });
    editConfig(root, model, (c) => ({
      ...c,
      ...(options.maxBatchSize !== undefined ? { maxBatchSize: options.maxBatchSize } : {}),
      dynamicBatching: {
        ...(c.dynamicBatching as object),
        ...(options.maxQueueDelayMicroseconds !== undefined
          ? { maxQueueDelayMicroseconds: options.maxQueueDelayMicroseconds }
          : {}),
        ...(options.maxQueueSize !== undefined ? { maxQueueSize: options.maxQueueSize } : {}),
      },
    }));
  }
  return root;
}

/** A GPT-2-style decoder with a small vocabulary (quick to build), as a generation model. */
export function writeSmallDecoder(root: string, name: string): void {
  const vocab = 256;
  writeModel(
    root,
    name,
    {
      task: 'generation',
      maxBatchSize: 4,
      inputs: ['input_ids', 'attention_mask', 'position_ids'].map((n) => ({
        name: n,
        datatype: 'INT64',
        dims: [-1],
      })),
      outputs: [{ name: 'logits', datatype: 'FP32', dims: [-1, vocab] }],
      generation: { numLayers: 2, numHeads: 4, headDim: 8, vocabSize: vocab, maxContextLength: 128 },
    },
    buildTinyGpt2({ vocab }),
  );
}

export const DATATYPE_ELEM: [string, ElemType][] = [
  ['BOOL', 'bool'],
  ['UINT8', 'uint8'],
  ['INT8', 'int8'],
  ['UINT16', 'uint16'],
  ['INT16', 'int16'],
  ['UINT32', 'uint32'],
  ['INT32', 'int32'],
  ['UINT64', 'uint64'],
  ['INT64', 'int64'],
  ['FP16', 'float16'],
  ['FP32', 'float32'],
  ['FP64', 'float64'],
  ['BYTES', 'string'],
];

/** Writes `<root>/<name>/config.json` and `<root>/<name>/<version>/model.onnx`. */
export function writeModel(
  root: string,
  name: string,
  config: object | string,
  onnx: Uint8Array | string,
  version = 1,
): void {
  mkdirSync(join(root, name, String(version)), { recursive: true });
  writeFileSync(
    join(root, name, 'config.json'),
    typeof config === 'string' ? config : JSON.stringify(config),
  );
  writeFileSync(join(root, name, String(version), 'model.onnx'), onnx);
}

export function editConfig(
  root: string,
  name: string,
  edit: (config: Record<string, unknown>) => object,
): void {
  const file = join(root, name, 'config.json');
  writeFileSync(file, JSON.stringify(edit(JSON.parse(readFileSync(file, 'utf8')))));
}

/**
 * `in_<type>` → Identity → `out_<type>` for every datatype, shape [batch, 2]
 * (or [2, 3] without batching).
 */
export function writeIdentityModel(root: string, name: string, options: { maxBatchSize: number }): void {
  const g = new GraphBuilder(name);
  const dims = options.maxBatchSize > 0 ? [2] : [2, 3];
  const graphShape = options.maxBatchSize > 0 ? ['batch', 2] : [2, 3];
  for (const [, elem] of DATATYPE_ELEM) {
    g.input(`in_${elem}`, elem, graphShape);
    g.node('Identity', [`in_${elem}`], {}, [`out_${elem}`]);
    g.output(`out_${elem}`, elem, graphShape);
  }
  writeModel(
    root,
    name,
    {
      task: 'raw',
      maxBatchSize: options.maxBatchSize,
      inputs: DATATYPE_ELEM.map(([datatype, elem]) => ({
        name: `in_${elem}`,
        datatype,
        dims,
        optional: true,
      })),
      outputs: DATATYPE_ELEM.map(([datatype, elem]) => ({ name: `out_${elem}`, datatype, dims })),
    },
    g.toBytes(),
  );
}

/** x [batch, -1] FP32 → y = x * 2, with a variable dimension that is NOT ragged: requests merge only when equal. */
export function writeDoubler(root: string, name: string, dynamicBatching: object): void {
  const g = new GraphBuilder(name);
  g.input('x', 'float32', ['batch', 'n']);
  g.node('Mul', ['x', g.constFloat([2], [])], {}, ['y']);
  g.output('y', 'float32', ['batch', 'n']);
  writeModel(
    root,
    name,
    {
      task: 'raw',
      maxBatchSize: 8,
      dynamicBatching,
      inputs: [{ name: 'x', datatype: 'FP32', dims: [-1] }],
      outputs: [{ name: 'y', datatype: 'FP32', dims: [-1] }],
    },
    g.toBytes(),
  );
}

/** x [batch, n, n] → a chain of `steps` MatMuls with x (tanh between): seconds of compute from a tiny graph. */
export function writeSlowModel(root: string, name: string, n: number, steps: number): void {
  const g = new GraphBuilder(name);
  g.input('x', 'float32', ['batch', n, n]);
  let y = 'x';
  for (let i = 0; i < steps; i++) y = g.node('Tanh', [g.node('MatMul', [y, 'x'])]);
  g.node('Identity', [y], {}, ['y']);
  g.output('y', 'float32', ['batch', n, n]);
  writeModel(
    root,
    name,
    {
      task: 'raw',
      maxBatchSize: 4,
      inputs: [{ name: 'x', datatype: 'FP32', dims: [n, n] }],
      outputs: [{ name: 'y', datatype: 'FP32', dims: [n, n] }],
    },
    g.toBytes(),
  );
}
