/**
 * A second load-time edit of a decoder graph, after new-kv-outputs.ts: once
 * `present` is no longer an output, the only reason left for each layer's
 * Concat of the past with the new keys/values is to attend over both — and
 * that Concat copies the whole cache (every row, every position) on every
 * decode step: a third of a batch-16 step's time at 224 positions
 * (onnxruntime's profile of austen-gpt). Attention does not need the copy:
 *
 *   scores = Q · [past_k ; new_k]ᵀ  = [Q · past_kᵀ , Q · new_kᵀ]   (concatenated scores: [rows, heads, L, P+L])
 *   out    = A · [past_v ; new_v]    = A[..., :P] · past_v + A[..., P:] · new_v
 *
 * so the edit replaces, per layer, `MatMul(Q, Transpose(Concat(past_k, new_k)))`
 * by the concatenation of two MatMuls on the scores (onnxruntime fuses each
 * Transpose into its MatMul, so the past is read in place), and
 * `MatMul(A, Concat(past_v, new_v))` by two MatMuls on the two slices of A,
 * added. The copy left is the scores', head-dimension times smaller. The
 * arithmetic is the same (sums split in two; float rounding may differ in
 * the last bits).
 *
 * The pattern is the one GPT-2-style exports have (Hugging Face's GPT-2 and
 * its optimum export, the fixture, austen-gpt). A graph where a layer
 * differs — grouped-query attention repeats the keys/values between the
 * Concat and the MatMul — is left as it is, with the reason.
 */
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import {
  fields,
  GRAPH_NODE,
  MODEL_GRAPH,
  type NewNode,
  type Node,
  parseNode,
  writeInt64Initializer,
  writeNode,
  GRAPH_OUTPUT,
  VALUE_INFO_NAME,
  text,
} from '../onnx-wire.js';

const PREFIX = 'maas_split_attention';
const LAST_TWO_SWAPPED = [0, 1, 3, 2];

/**
 * The edited model, or why the graph was left as it is. `layers` names each
 * layer's past key and past value inputs.
 */
export function splitAttention(
  model: Uint8Array,
  layers: { pastKey: string; pastValue: string }[],
): { model: Uint8Array } | { reason: string } {
  const top = fields(model);
  const graphField = top.find((f) => f.no === MODEL_GRAPH);
  if (!graphField) return { reason: 'the model has no graph' };
  const graph = fields(graphField.body!);
  const nodes: Node[] = [];
  const nodeFields = new Map<Node, number>();
  graph.forEach((f, i) => {
    if (f.no !== GRAPH_NODE) return;
    const node = parseNode(f.body!);
    nodes.push(node);
    nodeFields.set(node, i);
  });
  const graphOutputs = new Set(
    graph
      .filter((f) => f.no === GRAPH_OUTPUT)
      .map((f) => text(fields(f.body!).find((i) => i.no === VALUE_INFO_NAME)!)),
  );
  const consumers = new Map<string, Node[]>();
  for (const node of nodes)
    for (const input of node.inputs) consumers.set(input, [...(consumers.get(input) ?? []), node]);
  const removed = new Set<Node>();
  /**
   * The nodes reading a tensor, less Identity nodes whose outputs nobody reads
   * (what led to `present` before new-kv-outputs.ts replaced it): those go.
   */
  const readers = (tensor: string): Node[] | string => {
    if (graphOutputs.has(tensor)) return `'${tensor}' is a graph output`;
    const live: Node[] = [];
    for (const node of consumers.get(tensor) ?? []) {
      const dead =
        node.opType === 'Identity' &&
        node.outputs.every((o) => !graphOutputs.has(o) && (consumers.get(o) ?? []).length === 0);
      if (dead) removed.add(node);
      else live.push(node);
    }
    return live;
  };
  const concatOf = (past: string): Node | string => {
    const found = (consumers.get(past) ?? []).filter((n) => n.opType === 'Concat' && n.inputs[0] === past);
    const concat = found[0];
    if (found.length !== 1 || !concat || concat.domain !== '' || concat.inputs.length !== 2)
      return `'${past}' is not concatenated once with the new keys/values`;
    const axis = concat.ints.get('axis');
    if (axis !== 2 && axis !== -2) return `'${past}' is not concatenated on the sequence axis`;
    return concat;
  };
  const added: NewNode[] = [];
  const name = (layer: number, what: string) => `${PREFIX}/${layer}/${what}`;
  for (const [layer, { pastKey, pastValue }] of layers.entries()) {
    // Keys: MatMul(Q, Transpose(Concat(past, new))).
    const keyConcat = concatOf(pastKey);
    if (typeof keyConcat === 'string') return { reason: keyConcat };
    const keyReaders = readers(keyConcat.outputs[0]!);
    if (typeof keyReaders === 'string') return { reason: keyReaders };
    const transpose = keyReaders[0];
    if (
      keyReaders.length !== 1 ||
      transpose?.opType !== 'Transpose' ||
      transpose.domain !== '' ||
      transpose.lists.get('perm')?.join() !== LAST_TWO_SWAPPED.join()
    )
      return { reason: `the keys of '${pastKey}' are not read by one Transpose of the last two axes` };
    const scoreReaders = readers(transpose.outputs[0]!);
    if (typeof scoreReaders === 'string') return { reason: scoreReaders };
    const scores = scoreReaders[0];
    if (scoreReaders.length !== 1 || scores?.opType !== 'MatMul' || scores.inputs[1] !== transpose.outputs[0])
      return { reason: `the keys of '${pastKey}' are not multiplied by the queries in one MatMul` };
    const query = scores.inputs[0]!;
    const newKey = keyConcat.inputs[1]!;
    added.push(
      {
        opType: 'Transpose',
        name: name(layer, 'past_kT'),
        inputs: [pastKey],
        outputs: [name(layer, 'past_kT')],
        attributes: { perm: LAST_TWO_SWAPPED },
      },
      {
        opType: 'Transpose',
        name: name(layer, 'new_kT'),
        inputs: [newKey],
        outputs: [name(layer, 'new_kT')],
        attributes: { perm: LAST_TWO_SWAPPED },
      },
      {
        opType: 'MatMul',
        name: name(layer, 'past_scores'),
        inputs: [query, name(layer, 'past_kT')],
        outputs: [name(layer, 'past_scores')],
      },
      {
        opType: 'MatMul',
        name: name(layer, 'new_scores'),
        inputs: [query, name(layer, 'new_kT')],
        outputs: [name(layer, 'new_scores')],
      },
      {
        opType: 'Concat',
        name: name(layer, 'scores'),
        inputs: [name(layer, 'past_scores'), name(layer, 'new_scores')],
        outputs: [scores.outputs[0]!],
        attributes: { axis: -1 },
      },
    );
    removed.add(keyConcat).add(transpose).add(scores);

    // Values: MatMul(A, Concat(past, new)).
    const valueConcat = concatOf(pastValue);
    if (typeof valueConcat === 'string') return { reason: valueConcat };
    const valueReaders = readers(valueConcat.outputs[0]!);
    if (typeof valueReaders === 'string') return { reason: valueReaders };
    const weighted = valueReaders[0];
    if (
      valueReaders.length !== 1 ||
      weighted?.opType !== 'MatMul' ||
      weighted.inputs[1] !== valueConcat.outputs[0]
    )
      return { reason: `the values of '${pastValue}' are not weighted in one MatMul` };
    const weights = weighted.inputs[0]!;
    const pastLength = name(layer, 'past_length');
    added.push(
      {
        opType: 'Shape',
        name: name(layer, 'past_shape'),
        inputs: [pastValue],
        outputs: [name(layer, 'past_shape')],
      },
      {
        opType: 'Gather',
        name: pastLength,
        inputs: [name(layer, 'past_shape'), `${PREFIX}/axis_2`],
        outputs: [pastLength],
        attributes: { axis: 0 },
      },
      {
        opType: 'Slice',
        name: name(layer, 'past_weights'),
        inputs: [weights, `${PREFIX}/zero`, pastLength, `${PREFIX}/last_axis`],
        outputs: [name(layer, 'past_weights')],
      },
      {
        opType: 'Slice',
        name: name(layer, 'new_weights'),
        inputs: [weights, pastLength, `${PREFIX}/end`, `${PREFIX}/last_axis`],
        outputs: [name(layer, 'new_weights')],
      },
      {
        opType: 'MatMul',
        name: name(layer, 'past_values'),
        inputs: [name(layer, 'past_weights'), pastValue],
        outputs: [name(layer, 'past_values')],
      },
      {
        opType: 'MatMul',
        name: name(layer, 'new_values'),
        inputs: [name(layer, 'new_weights'), valueConcat.inputs[1]!],
        outputs: [name(layer, 'new_values')],
      },
      {
        opType: 'Add',
        name: name(layer, 'values'),
        inputs: [name(layer, 'past_values'), name(layer, 'new_values')],
        outputs: [weighted.outputs[0]!],
      },
    );
    removed.add(valueConcat).add(weighted);
  }
  const removedFields = new Set([...removed].map((n) => nodeFields.get(n)!));
  const out = new BinaryWriter();
  graph.forEach((f, i) => {
    if (!removedFields.has(i)) out.raw(f.raw);
  });
  writeInt64Initializer(out, `${PREFIX}/zero`, [0n]);
  writeInt64Initializer(out, `${PREFIX}/end`, [2n ** 62n]);
  writeInt64Initializer(out, `${PREFIX}/last_axis`, [-1n]);
  writeInt64Initializer(out, `${PREFIX}/axis_2`, [2n]);
  for (const node of added) writeNode(out, node);
  const modelOut = new BinaryWriter();
  for (const f of top) {
    if (f.no === MODEL_GRAPH) modelOut.tag(MODEL_GRAPH, 2).bytes(out.finish());
    else modelOut.raw(f.raw);
  }
  return { model: modelOut.finish() };
}
