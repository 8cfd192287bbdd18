/**
 * The decoder graph edit: each `present` output (past ++ new keys/values) is
 * replaced by the new keys/values alone, so that a decode step does not copy
 * the whole cache out of onnxruntime. The edited graph computes the same
 * logits, and its new outputs are exactly the last positions of `present`.
 */
import * as ort from 'onnxruntime-node';
import { GraphBuilder } from '@maas/models';
import type { ModelConfig } from '@maas/shared';
import {
  cacheTensorNames,
  decoderForEngine,
  exposeNewKeyValues,
  newPositionsOutput,
} from '../src/generation/new-kv-outputs';
import { emptyPast } from '../src/generation/slot-cache';
import { tinyDecoder, tinyModelBytes } from './generation-harness';

type Generation = NonNullable<ModelConfig['generation']>;

function feeds(
  g: Generation,
  ids: number[],
  past: ort.Tensor[],
  pastLength: number,
): Record<string, ort.Tensor> {
  const n = ids.length;
  const f: Record<string, ort.Tensor> = {
    input_ids: new ort.Tensor('int64', BigInt64Array.from(ids.map(BigInt)), [1, n]),
    attention_mask: new ort.Tensor('int64', new BigInt64Array(pastLength + n).fill(1n), [1, pastLength + n]),
    position_ids: new ort.Tensor('int64', BigInt64Array.from(ids.map((_, i) => BigInt(pastLength + i))), [
      1,
      n,
    ]),
  };
  cacheTensorNames(g).past.forEach((name, i) => (f[name] = past[i]!));
  return f;
}

describe('exposeNewKeyValues', () => {
  it('the edited decoder gives the same logits, and its new outputs are the last positions of present', async () => {
    const whole = await tinyDecoder({ unedited: true });
    const g = whole.config.generation!;
    const decoder = decoderForEngine(tinyModelBytes(), g);
    expect(decoder.edited).toBe(true);
    const edited = await ort.InferenceSession.create(decoder.model);
    const { present } = cacheTensorNames(g);
    expect(edited.outputNames).toEqual(['logits', ...present.map(newPositionsOutput)]);

    // Prefill 5 tokens with the exported graph, then one decode step on both graphs.
    const prompt = [464, 1068, 758, 218, 11];
    const prefill = await whole.session.run(feeds(g, prompt, emptyPast({ ...g, type: 'float32' }, 1), 0));
    const past = present.map((name) => prefill[name]!);
    const step = feeds(g, [99], past, prompt.length);
    const a = await whole.session.run(step);
    const b = await edited.run(step);
    expect(Array.from(b.logits!.data as Float32Array)).toEqual(Array.from(a.logits!.data as Float32Array));
    for (const name of present) {
      const all = a[name]!;
      const fresh = b[newPositionsOutput(name)]!;
      const [, heads, length, headDim] = all.dims as number[];
      expect(length).toBe(prompt.length + 1);
      expect(fresh.dims).toEqual([1, heads, 1, headDim]);
      const data = all.data as Float32Array;
      const last = Array.from({ length: heads! }, (_, h) =>
        Array.from(data.subarray((h * length! + length! - 1) * headDim!, (h * length! + length!) * headDim!)),
      ).flat();
      expect(Array.from(fresh.data as Float32Array)).toEqual(last);
    }
    await Promise.all([edited.release(), whole.session.release()]);
  });

  /** A one-layer "decoder" whose present is computed by `present(builder, past, fresh)`. */
  function decoderWith(present: (b: GraphBuilder, past: string, fresh: string) => string): Uint8Array {
    const b = new GraphBuilder('cache');
    const shape = ['batch', 2, 'past', 4];
    const past = b.input('past', 'float32', shape);
    const fresh = b.input('fresh', 'float32', ['batch', 2, 1, 4]);
    b.node('Identity', [present(b, past, fresh)], {}, ['present']);
    b.output('present', 'float32', ['batch', 2, 'total', 4]);
    return b.toBytes();
  }
  const pairs = [{ past: 'past', present: 'present' }];

  it('refuses, saying why, a present that is not the past concatenated with the new positions', () => {
    const notConcat = decoderWith((b, past) => b.node('Relu', [past]));
    expect(exposeNewKeyValues(notConcat, pairs)).toEqual({
      reason: "output 'present' is not a Concat of the past and the new keys/values",
    });
    const otherAxis = decoderWith((b, past, fresh) => b.node('Concat', [past, fresh], { axis: { i: 1 } }));
    expect(exposeNewKeyValues(otherAxis, pairs)).toEqual({
      reason: "output 'present' does not concatenate 'past' on the sequence axis",
    });
    const pastSecond = decoderWith((b, past, fresh) => b.node('Concat', [fresh, past], { axis: { i: 2 } }));
    expect(exposeNewKeyValues(pastSecond, pairs)).toMatchObject({
      reason: expect.stringContaining("'past'"),
    });
    expect(exposeNewKeyValues(new Uint8Array(), pairs)).toEqual({ reason: 'the model has no graph' });
    // The engine runs such a model as it is.
    const names = { pastKeyInput: 'past', pastValueInput: 'past', presentKeyOutput: 'present' };
    const g = { numLayers: 1, ...names, presentValueOutput: 'present' } as Generation;
    const decoder = decoderForEngine(notConcat, g);
    expect(decoder).toMatchObject({ edited: false, model: notConcat });
  });

  it('an edited Concat on axis -2 (through Identity) runs in onnxruntime and returns the new positions', async () => {
    const model = decoderWith((b, past, fresh) =>
      b.node('Identity', [b.node('Concat', [past, fresh], { axis: { i: -2 } })]),
    );
    const edit = exposeNewKeyValues(model, pairs);
    if ('reason' in edit) throw new Error(edit.reason);
    expect([...edit.newOutputs]).toEqual([['present', 'present.new']]);
    const session = await ort.InferenceSession.create(edit.model);
    const fresh = Float32Array.from({ length: 8 }, (_, i) => i + 1);
    const out = await session.run({
      past: new ort.Tensor('float32', new Float32Array(3 * 8), [1, 2, 3, 4]),
      fresh: new ort.Tensor('float32', fresh, [1, 2, 1, 4]),
    });
    expect(session.outputNames).toEqual(['present.new']);
    expect(Array.from(out['present.new']!.data as Float32Array)).toEqual(Array.from(fresh));
    await session.release();
  });
});
