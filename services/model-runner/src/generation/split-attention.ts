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
 * its optimum export, the fixture, austen-gpt), and Llama-style ones with
 * grouped-query attention, which repeat each key/value head over its query
 * heads between the Concat and the MatMul (repeat_kv: Unsqueeze → Expand →
 * Reshape, another copy of the whole cache, times heads / kvHeads): there
 * the repeat goes too, and the queries (and attention weights) of the heads
 * sharing a key/value head become the rows of one matrix per key/value head,
 * [B, kvHeads, repeat × L, ·], multiplied by the cache as it is. In the
 * merged decoder the attention over the past is the If's then-branch, split
 * there (its nodes written in topological order, as a subgraph requires). A
 * graph where a layer differs (a float16 cache cast back to float32 before
 * attention) is left as it is, with the reason.
 */
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import {
  fields,
  GRAPH_INITIALIZER,
  int64Constants,
  TENSOR_NAME,
  GRAPH_NODE,
  MODEL_GRAPH,
  type NewNode,
  type Node,
  parseNode,
  writeInt64Initializer,
  writeNode,
  GRAPH_OUTPUT,
  text,
  withGraph,
  valueInfoName,
} from '../onnx-wire.js';
import { editIfBranch } from './merged-kv-outputs.js';

const PREFIX = 'maas_split_attention';
const LAST_TWO_SWAPPED = [0, 1, 3, 2];

/**
 * The edited model, or why the graph was left as it is. `layers` names each
 * layer's past key and past value inputs.
 */
export function splitAttention(
  model: Uint8Array,
  layers: { pastKey: string; pastValue: string }[],
  heads: Heads,
): { model: Uint8Array } | { reason: string } {
  const top = fields(model);
  const graphField = top.find((f) => f.no === MODEL_GRAPH);
  if (!graphField) return { reason: 'the model has no graph' };
  const topLevel = splitGraph(graphField.body!, layers, heads);
  let graph: Uint8Array;
  if (!('reason' in topLevel)) graph = topLevel.graph;
  else {
    // The merged decoder: the attention over the past is in the If's then-branch (use_cache_branch).
    const merged = editIfBranch(graphField.body!, 'then_branch', (branch) =>
      splitGraph(branch, layers, heads),
    );
    if (!merged) return topLevel;
    if ('reason' in merged) return merged;
    graph = merged.graph;
  }
  return { model: withGraph(top, graph) };
}

type Heads = { query: number; keyValue: number; headDim: number };

/** The split applied to one graph (GraphProto bytes), or why not. */
function splitGraph(
  graphBytes: Uint8Array,
  layers: { pastKey: string; pastValue: string }[],
  heads: Heads,
): { graph: Uint8Array } | { reason: string } {
  const graph = fields(graphBytes);
  const nodes: Node[] = [];
  const nodeFields = new Map<Node, number>();
  graph.forEach((f, i) => {
    if (f.no !== GRAPH_NODE) return;
    const node = parseNode(f.body!);
    nodes.push(node);
    nodeFields.set(node, i);
  });
  const graphOutputs = new Set(graph.filter((f) => f.no === GRAPH_OUTPUT).map(valueInfoName));
  const constants = int64Constants(graph, nodes);
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
  /** The only reader of a tensor, when it is one node of this op type. */
  const onlyReader = (tensor: string, opType: string): Node | undefined => {
    const found = readers(tensor);
    return typeof found !== 'string' &&
      found.length === 1 &&
      found[0]!.opType === opType &&
      found[0]!.domain === ''
      ? found[0]
      : undefined;
  };
  /**
   * Grouped-query attention's repeat of the keys/values over the query heads
   * (Hugging Face's repeat_kv: Unsqueeze(2) → Expand([1, 1, heads / kvHeads, 1, 1])
   * → Reshape([0, heads, -1, headDim])) from `tensor`: its nodes and output, or
   * undefined when the tensor is not read so.
   */
  const repeatOf = (tensor: string): { nodes: Node[]; output: string } | undefined => {
    const unsqueeze = onlyReader(tensor, 'Unsqueeze');
    if (!unsqueeze) return undefined;
    const axes = unsqueeze.lists.get('axes') ?? constants.get(unsqueeze.inputs[1] ?? '');
    const expand = onlyReader(unsqueeze.outputs[0]!, 'Expand');
    const reshape = expand && onlyReader(expand.outputs[0]!, 'Reshape');
    if (!expand || !reshape || axes?.join() !== '2') return undefined;
    const repeat = heads.query / heads.keyValue;
    if (constants.get(expand.inputs[1]!)?.join() !== [1, 1, repeat, 1, 1].join()) return undefined;
    const shape = constants.get(reshape.inputs[1]!);
    if (!shape || shape.length !== 4 || shape[0] !== 0 || shape[1] !== heads.query) return undefined;
    return { nodes: [unsqueeze, expand, reshape], output: reshape.outputs[0]! };
  };
  // The nodes replacing each removed MatMul, written where it was: a subgraph (the merged decoder's
  // branch) must list its nodes in topological order, and whatever reads the MatMul's output follows it.
  const anchored = new Map<Node, NewNode[]>();
  let added: NewNode[] = [];
  const anchor = (node: Node) => anchored.set(node, (added = []));
  const name = (layer: number, what: string) => `${PREFIX}/${layer}/${what}`;
  // Grouped: the queries (and attention weights) of the heads sharing a key/value head, as rows of
  // one matrix per key/value head — [B, kvHeads, repeat × L, X] — multiplied by the cache as it is.
  // The shapes are built from the queries' [B, heads, L, D] and the past's length P: Reshape's -1
  // cannot size an axis of a tensor with no elements (a prefill's past, P = 0).
  const shapes = new Map<
    number,
    Record<'query' | 'past' | 'new' | 'heads' | 'pastHeads' | 'newHeads', string>
  >();
  const groupShapes = (layer: number, query: string, pastLength: string) => {
    const n = (what: string) => name(layer, `shape_${what}`);
    const c = (v: string) => `${PREFIX}/${v}`;
    added.push(
      { opType: 'Shape', name: n('q'), inputs: [query], outputs: [n('q')] },
      { opType: 'Slice', name: n('b'), inputs: [n('q'), c('zero'), c('one'), c('zero')], outputs: [n('b')] },
      {
        opType: 'Slice',
        name: n('l'),
        inputs: [n('q'), c('axis_2'), c('three'), c('zero')],
        outputs: [n('l')],
      },
      { opType: 'Mul', name: n('rows'), inputs: [n('l'), c('repeat')], outputs: [n('rows')] },
      {
        opType: 'Concat',
        name: n('grouped'),
        inputs: [n('b'), c('kv_heads'), n('rows')],
        outputs: [n('grouped')],
        attributes: { axis: 0 },
      },
      {
        opType: 'Concat',
        name: n('heads3'),
        inputs: [n('b'), c('heads'), n('l')],
        outputs: [n('heads3')],
        attributes: { axis: 0 },
      },
    );
    const shape = (what: string, head: string, last: string) => {
      added.push({
        opType: 'Concat',
        name: n(what),
        inputs: [n(head), last],
        outputs: [n(what)],
        attributes: { axis: 0 },
      });
      return n(what);
    };
    shapes.set(layer, {
      query: shape('grouped_d', 'grouped', c('head_dim')),
      past: shape('grouped_p', 'grouped', pastLength),
      new: shape('grouped_l', 'grouped', n('l')),
      heads: shape('heads_d', 'heads3', c('head_dim')),
      pastHeads: shape('heads_p', 'heads3', pastLength),
      newHeads: shape('heads_l', 'heads3', n('l')),
    });
  };
  type ShapeOf = keyof NonNullable<ReturnType<typeof shapes.get>>;
  /** `tensor` [B, heads, L, X] as [B, kvHeads, repeat × L, X] (grouped) or as it is. */
  const grouping = (
    layer: number,
    tensor: string,
    what: string,
    grouped: boolean,
    shape: ShapeOf,
  ): string => {
    if (!grouped) return tensor;
    const out = name(layer, `${what}_grouped`);
    added.push({ opType: 'Reshape', name: out, inputs: [tensor, shapes.get(layer)![shape]], outputs: [out] });
    return out;
  };
  /** The product of grouped rows back as [B, heads, L, X], written to `output`. */
  const ungrouping = (
    layer: number,
    tensor: string,
    output: string,
    grouped: boolean,
    shape: ShapeOf,
  ): void => {
    if (grouped)
      added.push({
        opType: 'Reshape',
        name: `${output}_heads`,
        inputs: [tensor, shapes.get(layer)![shape]],
        outputs: [output],
      });
  };
  let anyGrouped = false;
  for (const [layer, { pastKey, pastValue }] of layers.entries()) {
    // Keys: MatMul(Q, Transpose(Concat(past, new))), the keys repeated over the heads first under GQA.
    const keyConcat = concatOf(pastKey);
    if (typeof keyConcat === 'string') return { reason: keyConcat };
    const keyRepeat = repeatOf(keyConcat.outputs[0]!);
    const grouped = keyRepeat !== undefined;
    anyGrouped ||= grouped;
    const keys = keyRepeat?.output ?? keyConcat.outputs[0]!;
    const keyReaders = readers(keys);
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
    anchor(scores);
    if (grouped) {
      const keyLength = name(layer, 'past_key_length');
      added.push(
        {
          opType: 'Shape',
          name: name(layer, 'past_key_shape'),
          inputs: [pastKey],
          outputs: [name(layer, 'past_key_shape')],
        },
        {
          opType: 'Gather',
          name: keyLength,
          inputs: [name(layer, 'past_key_shape'), `${PREFIX}/axis_2`],
          outputs: [keyLength],
          attributes: { axis: 0 },
        },
      );
      groupShapes(layer, scores.inputs[0]!, keyLength);
    }
    const query = grouping(layer, scores.inputs[0]!, 'query', grouped, 'query');
    const newKey = keyConcat.inputs[1]!;
    const scoresOf = (what: string) => (grouped ? name(layer, `${what}_grouped`) : name(layer, what));
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
        name: scoresOf('past_scores'),
        inputs: [query, name(layer, 'past_kT')],
        outputs: [scoresOf('past_scores')],
      },
      {
        opType: 'MatMul',
        name: scoresOf('new_scores'),
        inputs: [query, name(layer, 'new_kT')],
        outputs: [scoresOf('new_scores')],
      },
    );
    ungrouping(layer, scoresOf('past_scores'), name(layer, 'past_scores'), grouped, 'pastHeads');
    ungrouping(layer, scoresOf('new_scores'), name(layer, 'new_scores'), grouped, 'newHeads');
    added.push({
      opType: 'Concat',
      name: name(layer, 'scores'),
      inputs: [name(layer, 'past_scores'), name(layer, 'new_scores')],
      outputs: [scores.outputs[0]!],
      attributes: { axis: -1 },
    });
    removed.add(keyConcat).add(transpose).add(scores);
    for (const node of keyRepeat?.nodes ?? []) removed.add(node);

    // Values: MatMul(A, Concat(past, new)), repeated like the keys.
    const valueConcat = concatOf(pastValue);
    if (typeof valueConcat === 'string') return { reason: valueConcat };
    const valueRepeat = repeatOf(valueConcat.outputs[0]!);
    if ((valueRepeat !== undefined) !== grouped)
      return { reason: `the keys and values of layer ${layer} are not repeated alike` };
    const values = valueRepeat?.output ?? valueConcat.outputs[0]!;
    const valueReaders = readers(values);
    if (typeof valueReaders === 'string') return { reason: valueReaders };
    const weighted = valueReaders[0];
    if (valueReaders.length !== 1 || weighted?.opType !== 'MatMul' || weighted.inputs[1] !== values)
      return { reason: `the values of '${pastValue}' are not weighted in one MatMul` };
    anchor(weighted);
    const weights = weighted.inputs[0]!;
    const pastLength = name(layer, 'past_length');
    const valuesOut = grouped ? name(layer, 'values_grouped') : weighted.outputs[0]!;
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
    );
    const pastWeights = grouping(layer, name(layer, 'past_weights'), 'past_weights', grouped, 'past');
    const newWeights = grouping(layer, name(layer, 'new_weights'), 'new_weights', grouped, 'new');
    added.push(
      {
        opType: 'MatMul',
        name: name(layer, 'past_values'),
        inputs: [pastWeights, pastValue],
        outputs: [name(layer, 'past_values')],
      },
      {
        opType: 'MatMul',
        name: name(layer, 'new_values'),
        inputs: [newWeights, valueConcat.inputs[1]!],
        outputs: [name(layer, 'new_values')],
      },
      {
        opType: 'Add',
        name: valuesOut,
        inputs: [name(layer, 'past_values'), name(layer, 'new_values')],
        outputs: [valuesOut],
      },
    );
    ungrouping(layer, valuesOut, weighted.outputs[0]!, grouped, 'heads');
    removed.add(valueConcat).add(weighted);
    for (const node of valueRepeat?.nodes ?? []) removed.add(node);
  }
  // The constants only the removed nodes read go too (onnxruntime warns of each unused initializer).
  const allAdded = [...anchored.values()].flat();
  const stillRead = new Set([...graphOutputs, ...allAdded.flatMap((n) => n.inputs)]);
  for (const node of nodes) if (!removed.has(node)) for (const input of node.inputs) stillRead.add(input);
  const unread = (tensor: string) => !stillRead.has(tensor);
  for (const node of nodes) if (node.opType === 'Constant' && node.outputs.every(unread)) removed.add(node);
  const removedFields = new Set([...removed].map((n) => nodeFields.get(n)!));
  const replacing = new Map([...anchored].map(([node, replacement]) => [nodeFields.get(node)!, replacement]));
  const readByRemoved = new Set([...removed].flatMap((n) => n.inputs));
  const out = new BinaryWriter();
  graph.forEach((f, i) => {
    const replacement = replacing.get(i);
    if (replacement) for (const node of replacement) writeNode(out, node);
    if (removedFields.has(i)) return;
    if (f.no === GRAPH_INITIALIZER) {
      const tensorName = fields(f.body!).find((t) => t.no === TENSOR_NAME);
      const initializer = tensorName ? text(tensorName) : '';
      if (readByRemoved.has(initializer) && unread(initializer)) return;
    }
    out.raw(f.raw);
  });
  writeInt64Initializer(out, `${PREFIX}/zero`, [0n]);
  writeInt64Initializer(out, `${PREFIX}/end`, [2n ** 62n]);
  writeInt64Initializer(out, `${PREFIX}/last_axis`, [-1n]);
  writeInt64Initializer(out, `${PREFIX}/axis_2`, [2n]);
  if (anyGrouped) {
    writeInt64Initializer(out, `${PREFIX}/one`, [1n]);
    writeInt64Initializer(out, `${PREFIX}/three`, [3n]);
    writeInt64Initializer(out, `${PREFIX}/repeat`, [BigInt(heads.query / heads.keyValue)]);
    writeInt64Initializer(out, `${PREFIX}/kv_heads`, [BigInt(heads.keyValue)]);
    writeInt64Initializer(out, `${PREFIX}/heads`, [BigInt(heads.query)]);
    writeInt64Initializer(out, `${PREFIX}/head_dim`, [BigInt(heads.headDim)]);
  }
  return { graph: out.finish() };
}
