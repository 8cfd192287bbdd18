/**
 * The decoder graph edit: each `present` output (past ++ new keys/values) is
 * replaced by the new keys/values alone, so that a decode step does not copy
 * the whole cache out of onnxruntime. The edited graph computes the same
 * logits, and its new outputs are exactly the last positions of `present`.
 */
import * as ort from 'onnxruntime-node';
import { GraphBuilder } from '@maas/models';
import type { ModelConfig } from '@maas/shared';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { readModelConfig } from '@maas/shared';
import {
  cacheTensorNames,
  decoderForEngine,
  exposeNewKeyValues,
  newPositionsOutput,
} from '../src/generation/new-kv-outputs';
import { fields, GRAPH_NODE, MODEL_GRAPH, parseNode } from '../src/onnx-wire';
import { splitAttention } from '../src/generation/split-attention';
import { emptyPast } from '../src/generation/slot-cache';
import { austenDir, llamaDecoder, tinyDecoder, tinyModelBytes } from './generation-harness';

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
    const { past: pastNames, present } = cacheTensorNames(g);
    const edit = exposeNewKeyValues(
      tinyModelBytes(),
      pastNames.map((p, i) => ({ past: p, present: present[i]! })),
    );
    if ('reason' in edit) throw new Error(edit.reason);
    const edited = await ort.InferenceSession.create(edit.model);
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

/** The graph's nodes. */
const nodesOf = (model: Uint8Array) =>
  fields(fields(model).find((f) => f.no === MODEL_GRAPH)!.body!)
    .filter((f) => f.no === GRAPH_NODE)
    .map((f) => parseNode(f.body!));

/** Random past keys/values of `length` positions, for one row. */
function randomPast(g: Generation, length: number, seed: number): ort.Tensor[] {
  let x = seed;
  const next = () => ((x = (x * 1103515245 + 12345) % 2 ** 31) / 2 ** 31 - 0.5) * 2;
  return cacheTensorNames(g).past.map(
    () =>
      new ort.Tensor('float32', Float32Array.from({ length: g.numHeads * length * g.headDim }, next), [
        1,
        g.numHeads,
        length,
        g.headDim,
      ]),
  );
}

describe('splitAttention', () => {
  it.each([
    ['the GPT-2 fixture', () => ({ bytes: tinyModelBytes(), g: undefined as Generation | undefined })],
    [
      'austen-gpt',
      () => ({
        bytes: new Uint8Array(readFileSync(join(austenDir, '1', 'model.onnx'))),
        g: readModelConfig(austenDir, 'austen-gpt').generation!,
      }),
    ],
  ])('%s attends without concatenating its cache, to the same logits', async (_, load) => {
    const whole = await tinyDecoder({ unedited: true });
    const { bytes, g = whole.config.generation! } = load();
    const decoder = decoderForEngine(bytes, g);
    expect(decoder).toMatchObject({ edited: true, attention: 'split' });
    // No Concat reads a past input any more: nothing copies the cache.
    const { past } = cacheTensorNames(g);
    expect(
      nodesOf(decoder.model).filter((n) => n.opType === 'Concat' && past.includes(n.inputs[0]!)),
    ).toEqual([]);
    const reference = await ort.InferenceSession.create(bytes);
    const split = await ort.InferenceSession.create(decoder.model);
    // A prefill (past of length 0) and decode steps after 7 and 60 positions.
    for (const [ids, pastLength] of [
      [[464, 1068, 758, 218, 11], 0],
      [[99], 7],
      [[5, 6, 7], 60],
    ] as [number[], number][]) {
      const step = feeds(g, ids, randomPast(g, pastLength, 17 + pastLength), pastLength);
      const want = (await reference.run(step)).logits!.data as Float32Array;
      const got = (await split.run(step)).logits!.data as Float32Array;
      expect(got.length).toBe(want.length);
      // Sums split in two: the last bits of float32 rounding may differ, nothing more.
      let worst = 0;
      for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
      expect(worst).toBeLessThan(1e-4);
    }
    await Promise.all([reference.release(), split.release(), whole.session.release()]);
  });

  it('leaves a graph whose keys/values are repeated between the Concat and the MatMul (grouped-query attention) as it is', async () => {
    const family = await llamaDecoder('llama-gqa', { kvHeads: 2 });
    const decoder = decoderForEngine(family.bytes, family.config.generation!);
    expect(decoder).toMatchObject({
      edited: true,
      attention: { reason: expect.stringMatching(/not read by one Transpose|not weighted in one MatMul/) },
    });
    await Promise.all([family.session.release(), family.unedited.release()]);
  });

  it('says why for a past read twice or not concatenated', () => {
    const b = new GraphBuilder('twice');
    const pastKey = b.input('pk', 'float32', [1, 2, 'p', 4]);
    const fresh = b.input('nk', 'float32', [1, 2, 1, 4]);
    const keys = b.node('Concat', [pastKey, fresh], { axis: { i: 2 } });
    b.node('Identity', [b.node('Relu', [keys])], {}, ['a']);
    b.node('Identity', [b.node('Sigmoid', [keys])], {}, ['c']);
    b.output('a', 'float32', [1, 2, 'q', 4]);
    b.output('c', 'float32', [1, 2, 'q', 4]);
    const model = b.toBytes();
    expect(splitAttention(model, [{ pastKey: 'pk', pastValue: 'pv' }])).toEqual({
      reason: "the keys of 'pk' are not read by one Transpose of the last two axes",
    });
    expect(splitAttention(model, [{ pastKey: 'nothing', pastValue: 'pv' }])).toEqual({
      reason: "'nothing' is not concatenated once with the new keys/values",
    });
  });
});
