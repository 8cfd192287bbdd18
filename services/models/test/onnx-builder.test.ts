import * as ort from 'onnxruntime-node';
import { GraphBuilder, SeededRandom } from '../src/onnx-builder';

describe('onnx-builder', () => {
  it('writes a model onnxruntime loads and runs correctly', async () => {
    const g = new GraphBuilder('gather_mean');
    g.input('input_ids', 'int64', ['batch', 'seq']);
    const table = g.initializer('table', {
      type: 'float32',
      dims: [3, 2],
      data: Float32Array.from([1, 2, 3, 4, 5, 6]),
    });
    const rows = g.node('Gather', [table, 'input_ids'], { axis: { i: 0 } });
    g.node('ReduceMean', [rows], { axes: { ints: [1] }, keepdims: { i: 0 } }, ['mean']);
    g.output('mean', 'float32', ['batch', 2]);
    const session = await ort.InferenceSession.create(g.toBytes());
    const out = await session.run({
      input_ids: new ort.Tensor('int64', BigInt64Array.from([0n, 2n, 1n, 1n]), [2, 2]),
    });
    expect(Array.from(out.mean!.data as Float32Array)).toEqual([3, 4, 3, 4]);
    expect(out.mean!.dims).toEqual([2, 2]);
  });

  it('is deterministic for a seed', () => {
    expect(new SeededRandom(7).floats(4, 1)).toEqual(new SeededRandom(7).floats(4, 1));
    expect(new SeededRandom(7).floats(4, 1)).not.toEqual(new SeededRandom(8).floats(4, 1));
  });

  it('draws normal values with the std asked for, odd counts included', () => {
    const values = new SeededRandom(3).floats(100_001, 0.02);
    expect(values.every(Number.isFinite)).toBe(true);
    const mean = values.reduce((a, b) => a + b, 0) / values.length;
    const std = Math.sqrt(values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length);
    expect(Math.abs(mean)).toBeLessThan(0.001);
    expect(std).toBeGreaterThan(0.0196);
    expect(std).toBeLessThan(0.0204);
    // About 68% within one std, as for a normal distribution.
    const within = values.filter((v) => Math.abs(v) < 0.02).length / values.length;
    expect(within).toBeGreaterThan(0.67);
    expect(within).toBeLessThan(0.69);
  });
});
