/**
 * Text recognizers' best-class outputs: the runner adds ArgMax and ReduceMax
 * of the distribution over the last axis to the graph (both opset forms of
 * ReduceMax) and serves them beside the original output, so a client reads
 * [N, steps] instead of [N, steps, classes]. They equal what the
 * distribution gives, on a built graph and on the PaddleOCR recognizer the
 * default repository serves.
 */
import { mkdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { GraphBuilder, makeTempDir } from '@maas/models';
import { bestClassOutputs, defaultRepositoryPath, type ModelConfig } from '@maas/shared';
import type { ModelInferResponse, ModelMetadataResponse } from '@maas/shared/gen/inference/grpc_service';
import { addBestClassOutputs, withBestClassOutputs } from '../src/best-class-outputs';
import { call, inferRequest, startTestRunner, type TestRunner } from './helpers';

/** Each row's best class and its value, as the edit computes them. */
function best(values: Float32Array, classes: number): { index: number[]; max: number[] } {
  const index: number[] = [];
  const max: number[] = [];
  for (let base = 0; base < values.length; base += classes) {
    let b = 0;
    for (let c = 1; c < classes; c++) if (values[base + c]! > values[base + b]!) b = c;
    index.push(b);
    max.push(values[base + b]!);
  }
  return { index, max };
}

const recognizer = {
  task: 'text_recognition',
  outputs: [{ name: 'probs', datatype: 'FP32', dims: [-1, 5] }],
};

describe('addBestClassOutputs', () => {
  it.each([17, 18])('adds ArgMax and ReduceMax over the classes (opset %i)', async (opset) => {
    const b = new GraphBuilder('recognizer');
    b.input('x', 'float32', ['n', 'steps', 5]);
    b.node('Softmax', ['x'], { axis: { i: -1 } }, ['probs']);
    b.output('probs', 'float32', ['n', 'steps', 5]);
    const edited = addBestClassOutputs(b.toBytes({ opset }), recognizer as ModelConfig);
    if ('reason' in edited) throw new Error(edited.reason);
    const session = await ort.InferenceSession.create(edited);
    const { index, probability } = bestClassOutputs('probs');
    expect(session.outputNames).toEqual(['probs', index, probability]);
    const x = Float32Array.from({ length: 2 * 3 * 5 }, (_, i) => Math.sin(i * 1.7) * 3);
    const out = await session.run({ x: new ort.Tensor('float32', x, [2, 3, 5]) });
    const want = best(out.probs!.data as Float32Array, 5);
    expect(out[index]!.dims).toEqual([2, 3]);
    expect(Array.from(out[index]!.data as BigInt64Array, Number)).toEqual(want.index);
    expect(Array.from(out[probability]!.data as Float32Array)).toEqual(want.max);
    await session.release();
  });

  it('serves them in the config as INT64 and FP32 of the steps; other tasks unchanged', () => {
    const served = withBestClassOutputs(recognizer as ModelConfig);
    expect(served.outputs.map((o) => [o.name, o.datatype, o.dims])).toEqual([
      ['probs', 'FP32', [-1, 5]],
      ['probs.argmax', 'INT64', [-1]],
      ['probs.max', 'FP32', [-1]],
    ]);
    const classifier = { ...recognizer, task: 'image_classification' } as ModelConfig;
    expect(withBestClassOutputs(classifier)).toBe(classifier);
    expect(addBestClassOutputs(new Uint8Array(), recognizer as ModelConfig)).toEqual({
      reason: 'the model has no graph',
    });
  });
});

describe('the runner serving the PaddleOCR recognizer', () => {
  let t: TestRunner;
  beforeAll(async () => {
    const root = makeTempDir('maas-ocr-rec-');
    mkdirSync(root, { recursive: true });
    symlinkSync(join(defaultRepositoryPath(), 'ocr-rec'), join(root, 'ocr-rec'));
    t = await startTestRunner(root);
  });
  afterAll(async () => {
    await t?.close();
  });

  it('lists the best-class outputs and answers them equal to the distribution', async () => {
    const output = 'softmax_11.tmp_0';
    const { index, probability } = bestClassOutputs(output);
    const meta = await call<ModelMetadataResponse>(t.inference, 'modelMetadata', {
      name: 'ocr-rec',
      version: '',
    });
    expect(meta.outputs.map((o) => [o.name, o.datatype])).toEqual([
      [output, 'FP32'],
      [index, 'INT64'],
      [probability, 'FP32'],
    ]);
    const x = Float32Array.from({ length: 2 * 3 * 48 * 64 }, (_, i) => Math.sin(i * 0.01));
    const response = await call<ModelInferResponse>(
      t.inference,
      'modelInfer',
      inferRequest({
        modelName: 'ocr-rec',
        inputs: [{ name: 'x', datatype: 'FP32', shape: [2, 3, 48, 64] }],
        outputs: [{ name: output }, { name: index }, { name: probability }],
        rawInputContents: [Buffer.from(x.buffer)],
      }),
    );
    const bytes = (i: number) => Uint8Array.from(response.rawOutputContents[i]!).buffer;
    const [, steps, classes] = response.outputs[0]!.shape.map(Number) as [number, number, number];
    expect(classes).toBe(6625);
    const want = best(new Float32Array(bytes(0)), classes);
    expect(response.outputs[1]!.shape.map(Number)).toEqual([2, steps]);
    expect(Array.from(new BigInt64Array(bytes(1)), Number)).toEqual(want.index);
    expect(Array.from(new Float32Array(bytes(2)))).toEqual(want.max);
    // The two together: 12 bytes a step instead of 4 × 6,625.
    expect(response.rawOutputContents[1]!.length + response.rawOutputContents[2]!.length).toBe(
      2 * steps * 12,
    );
  });
});
