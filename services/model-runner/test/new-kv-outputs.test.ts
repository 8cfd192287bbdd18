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
import type { LlamaOptions } from '@maas/models';

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

describe('the merged decoder (present out of an If on use_cache_branch)', () => {
  it('both branches return the new positions, equal to the end of the exported present', async () => {
    const family = await llamaDecoder('merged', { merged: true, kvHeads: 2, seed: 17 });
    const g = family.config.generation!;
    const { past, present } = cacheTensorNames(g);
    const edit = exposeNewKeyValues(
      family.bytes,
      past.map((p, i) => ({ past: p, present: present[i]! })),
    );
    if ('reason' in edit) throw new Error(edit.reason);
    const edited = await ort.InferenceSession.create(edit.model);
    expect(edited.outputNames).toEqual(['logits', ...present.map(newPositionsOutput)]);
    for (const [ids, pastLength] of [
      [[464, 1068, 758], 0],
      [[99, 5], 6],
    ] as [number[], number][]) {
      const run = runFeeds(family.unedited, g, ids, pastLength);
      const a = await family.unedited.run(run);
      const b = await edited.run(run);
      expect(Array.from(b.logits!.data as Float32Array)).toEqual(Array.from(a.logits!.data as Float32Array));
      for (const name of present) {
        const all = a[name]!;
        const [, heads, length, headDim] = all.dims as number[];
        const data = all.data as Float32Array;
        // The last ids.length positions of each head.
        const last = Array.from({ length: heads! }, (_, h) =>
          Array.from(data.subarray((h * length! + pastLength) * headDim!, (h + 1) * length! * headDim!)),
        ).flat();
        expect(b[newPositionsOutput(name)]!.dims).toEqual([1, heads, ids.length, headDim]);
        expect(Array.from(b[newPositionsOutput(name)]!.data as Float32Array)).toEqual(last);
      }
    }
    await Promise.all([edited.release(), family.session.release(), family.unedited.release()]);
  });
});

/** The graph's nodes. */
const nodesOf = (model: Uint8Array) =>
  fields(fields(model).find((f) => f.no === MODEL_GRAPH)!.body!)
    .filter((f) => f.no === GRAPH_NODE)
    .map((f) => parseNode(f.body!));

/** Inputs of one run of `session`: `ids` after `pastLength` positions of seeded random keys/values. */
function runFeeds(session: ort.InferenceSession, g: Generation, ids: number[], pastLength: number) {
  let x = 17 + pastLength;
  const next = () => ((x = (x * 1103515245 + 12345) % 2 ** 31) / 2 ** 31 - 0.5) * 2;
  const heads = g.numKeyValueHeads ?? g.numHeads;
  const n = ids.length;
  const f: Record<string, ort.Tensor> = {
    input_ids: new ort.Tensor('int64', BigInt64Array.from(ids.map(BigInt)), [1, n]),
    attention_mask: new ort.Tensor('int64', new BigInt64Array(pastLength + n).fill(1n), [1, pastLength + n]),
  };
  if (session.inputNames.includes('use_cache_branch'))
    f.use_cache_branch = new ort.Tensor('bool', Uint8Array.of(pastLength > 0 ? 1 : 0), [1]);
  if (session.inputNames.includes('position_ids'))
    f.position_ids = new ort.Tensor(
      'int64',
      BigInt64Array.from(ids, (_, i) => BigInt(pastLength + i)),
      [1, n],
    );
  for (const name of cacheTensorNames(g).past) {
    const data = Float32Array.from({ length: heads * pastLength * g.headDim }, next);
    f[name] = new ort.Tensor('float32', data, [1, heads, pastLength, g.headDim]);
  }
  return f;
}

describe('splitAttention', () => {
  const llama = (name: string, options: LlamaOptions) => async () => {
    const family = await llamaDecoder(name, options);
    await Promise.all([family.session.release(), family.unedited.release()]);
    return { bytes: family.bytes, g: family.config.generation! };
  };
  it.each<[string, () => Promise<{ bytes: Uint8Array; g: Generation }>]>([
    [
      'the GPT-2 fixture',
      async () => ({ bytes: tinyModelBytes(), g: (await tinyDecoder()).config.generation! }),
    ],
    [
      'austen-gpt',
      async () => ({
        bytes: new Uint8Array(readFileSync(join(austenDir, '1', 'model.onnx'))),
        g: readModelConfig(austenDir, 'austen-gpt').generation!,
      }),
    ],
    // Grouped-query attention: the queries of the heads sharing a key/value head are grouped instead.
    ['llama (GQA 4 → 2)', llama('llama-gqa', { kvHeads: 2 })],
    ['mistral (GQA 8 → 2)', llama('mistral', { heads: 8, kvHeads: 2, hidden: 64, seed: 5 })],
    ['phi-3 (fused projections)', llama('phi3', { fused: true, kvHeads: 4, seed: 7 })],
    ['a graph without position_ids', llama('no-position-ids', { positionIds: false, kvHeads: 2, seed: 9 })],
    // The attention over the past is in the If's then-branch.
    ['the merged decoder', llama('merged', { merged: true, kvHeads: 2, seed: 17 })],
  ])('%s attends without concatenating or repeating its cache, to the same logits', async (_, load) => {
    const { bytes, g } = await load();
    const decoder = decoderForEngine(bytes, g);
    expect(decoder).toMatchObject({ edited: true, attention: 'split' });
    // No Concat or Expand reads a past input any more: nothing copies the cache.
    const { past } = cacheTensorNames(g);
    const nodes = nodesOf(decoder.model);
    expect(nodes.filter((n) => n.opType === 'Concat' && past.includes(n.inputs[0]!))).toEqual([]);
    expect(nodes.filter((n) => n.opType === 'Expand')).toEqual([]);
    const reference = await ort.InferenceSession.create(bytes);
    const split = await ort.InferenceSession.create(decoder.model);
    // A prefill (past of length 0) and decode steps after 7 and 60 positions.
    for (const [ids, pastLength] of [
      [[464, 1068, 758, 218, 11], 0],
      [[99], 7],
      [[5, 6, 7], 60],
    ] as [number[], number][]) {
      const step = runFeeds(reference, g, ids, pastLength);
      const want = (await reference.run(step)).logits!.data as Float32Array;
      const got = (await split.run(step)).logits!.data as Float32Array;
      expect(got.length).toBe(want.length);
      // Sums split in two: the last bits of float32 rounding may differ, nothing more.
      let worst = 0;
      for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
      expect(worst).toBeLessThan(1e-4);
    }
    await Promise.all([reference.release(), split.release()]);
  });

  it('leaves a cache cast between the Concat and the attention (a float16 cache) as it is, saying why', async () => {
    const { bytes, g } = await llama('fp16-cache', { kvType: 'float16', kvHeads: 2, seed: 13 })();
    expect(decoderForEngine(bytes, g)).toMatchObject({
      edited: true,
      attention: { reason: expect.stringContaining('not read by one Transpose') },
    });
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
    expect(
      splitAttention(model, [{ pastKey: 'pk', pastValue: 'pv' }], { query: 2, keyValue: 2, headDim: 4 }),
    ).toEqual({
      reason: "the keys of 'pk' are not read by one Transpose of the last two axes",
    });
    expect(
      splitAttention(model, [{ pastKey: 'nothing', pastValue: 'pv' }], { query: 2, keyValue: 2, headDim: 4 }),
    ).toEqual({
      reason: "'nothing' is not concatenated once with the new keys/values",
    });
  });
});
