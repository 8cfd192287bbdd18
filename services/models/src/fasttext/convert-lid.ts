/**
 * Converts fastText's lid.176 language identifier to an ONNX model plus a
 * fastText tokenizer file and labels, in the model-repository layout.
 * Graph: Gather input rows → masked mean → output layer → hierarchical
 * softmax, computed for every label at once as fastText's predict would.
 */
import { dirname, join } from 'node:path';
import { GraphBuilder } from '../onnx-builder.js';
import { type FastTextModelFile, readFastTextModel } from './ftz-reader.js';
import { FASTTEXT_EOS, FASTTEXT_LABEL_PREFIX, type FastTextTokenizerFile } from './tokenizer.js';

export function lid176Path(): string {
  return join(
    dirname(require.resolve('fasttext.wasm.js/package.json')),
    'dist/models/language-identification/assets/lid.176.ftz',
  );
}

interface TreeNode {
  left: number;
  right: number;
  parent: number;
  count: number;
  binary: boolean;
}

/** fastText's HierarchicalSoftmaxLoss::buildTree (a Huffman tree over label counts). */
export function buildHuffmanTree(counts: number[]): TreeNode[] {
  const osz = counts.length;
  const tree: TreeNode[] = Array.from({ length: 2 * osz - 1 }, (_, i) => ({
    left: -1,
    right: -1,
    parent: -1,
    count: i < osz ? counts[i]! : 1e15,
    binary: false,
  }));
  let leaf = osz - 1;
  let node = osz;
  for (let i = osz; i < 2 * osz - 1; i++) {
    const mini = [0, 0];
    for (let j = 0; j < 2; j++) {
      if (leaf >= 0 && tree[leaf]!.count < tree[node]!.count) mini[j] = leaf--;
      else mini[j] = node++;
    }
    const [a, b] = mini as [number, number];
    tree[i]!.left = a;
    tree[i]!.right = b;
    tree[i]!.count = tree[a]!.count + tree[b]!.count;
    tree[a]!.parent = i;
    tree[b]!.parent = i;
    tree[b]!.binary = true;
  }
  return tree;
}

export interface ConvertedLid {
  onnx: Uint8Array;
  tokenizer: FastTextTokenizerFile;
  labels: string[];
  model: FastTextModelFile;
}

export function convertLid176(path = lid176Path()): ConvertedLid {
  const model = readFastTextModel(path);
  const { args, nwords, nlabels } = model;
  if (args.loss !== 1) throw new Error(`expected hierarchical softmax (loss 1), got loss ${args.loss}`);
  if (args.wordNgrams > 1) throw new Error('word n-grams > 1 are not supported by this converter');
  const dim = args.dim;
  const labelEntries = model.entries.slice(nwords);
  // Users want `en`, not fastText's `__label__en`.
  const labels = labelEntries.map((e) =>
    e.word.startsWith(FASTTEXT_LABEL_PREFIX) ? e.word.slice(FASTTEXT_LABEL_PREFIX.length) : e.word,
  );

  // Path matrices: score(label) = Σ_nodes left[n,l]·log(1−σ+ε) + right[n,l]·log(σ+ε).
  const tree = buildHuffmanTree(labelEntries.map((e) => e.count));
  const internal = nlabels - 1;
  const goLeft = new Float32Array(internal * nlabels);
  const goRight = new Float32Array(internal * nlabels);
  for (let label = 0; label < nlabels; label++) {
    let child = label;
    for (let parent = tree[child]!.parent; parent !== -1; child = parent, parent = tree[child]!.parent) {
      const row = parent - nlabels; // fastText: output row of internal node k is k − osz
      if (tree[parent]!.left === child) goLeft[row * nlabels + label] = 1;
      else goRight[row * nlabels + label] = 1;
    }
  }

  const g = new GraphBuilder('lid176');
  g.input('input_ids', 'int64', ['batch', 'sequence']);
  g.input('attention_mask', 'int64', ['batch', 'sequence']);
  const table = g.initializer('input_matrix', {
    type: 'float32',
    dims: [model.input.rows, dim],
    data: model.input.data,
  });
  const rows = g.node('Gather', [table, 'input_ids'], { axis: { i: 0 } }); // [B,S,D]
  const mask = g.node('Cast', ['attention_mask'], { to: { i: 1 } }); // [B,S]
  const mask3 = g.node('Unsqueeze', [mask, g.constInt64([2])]); // [B,S,1]
  const summed = g.node('ReduceSum', [g.node('Mul', [rows, mask3]), g.constInt64([1])], {
    keepdims: { i: 0 },
  });
  const count = g.node('Max', [
    g.node('ReduceSum', [mask, g.constInt64([1])], { keepdims: { i: 1 } }),
    g.constFloat([1], []),
  ]);
  const hidden = g.node('Div', [summed, count]); // [B,D]
  const wo = g.initializer('output_matrix', {
    type: 'float32',
    dims: [internal, dim],
    data: model.output.data.slice(0, internal * dim),
  });
  const logits = g.node('Gemm', [hidden, wo], { transB: { i: 1 } }); // [B, internal]
  const sig = g.node('Sigmoid', [logits]);
  const eps = g.constFloat([1e-5], []); // fastText's std_log adds 1e-5 before log
  const logRight = g.node('Log', [g.node('Add', [sig, eps])]);
  const logLeft = g.node('Log', [g.node('Add', [g.node('Sub', [g.constFloat([1], []), sig]), eps])]);
  const left = g.initializer('path_left', { type: 'float32', dims: [internal, nlabels], data: goLeft });
  const right = g.initializer('path_right', { type: 'float32', dims: [internal, nlabels], data: goRight });
  const score = g.node('Add', [g.node('MatMul', [logLeft, left]), g.node('MatMul', [logRight, right])]);
  g.node('Exp', [score], {}, ['probabilities']);
  g.output('probabilities', 'float32', ['batch', nlabels]);

  const tokenizer: FastTextTokenizerFile = {
    type: 'fasttext',
    version: 1,
    minn: args.minn,
    maxn: args.maxn,
    bucket: args.bucket,
    wordNgrams: args.wordNgrams,
    nwords,
    words: model.entries.slice(0, nwords).map((e) => e.word),
    pruneIndex: model.pruned ? [...model.pruneIndex.entries()].sort((a, b) => a[0] - b[0]) : null,
    eos: FASTTEXT_EOS,
  };
  return {
    onnx: g.toBytes({ doc: 'fastText lid.176 (CC BY-SA 3.0), converted by maas' }),
    tokenizer,
    labels,
    model,
  };
}
