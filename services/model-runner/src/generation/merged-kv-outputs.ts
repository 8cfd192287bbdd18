/**
 * new-kv-outputs.ts's edit for the merged decoder (optimum's
 * `decoder_model_merged.onnx`): there `present` comes out of an If on
 * `use_cache_branch`, whose then-branch concatenates the past with the new
 * keys/values and whose else-branch (the first run, no past) returns the
 * new ones as they are. Returned as graph outputs, the whole cache is copied
 * into fresh JS memory every step, as in an unmerged graph. The edit adds
 * to both branches an output carrying only the new positions (the Concat's
 * second input; the else-branch's present itself), adds those outputs to
 * the If, and exposes them as `<present>.new` in place of `present`.
 */
import { BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import {
  ATTRIBUTE_NAME,
  ATTRIBUTE_TYPE,
  type Field,
  fields,
  GRAPH_NODE,
  GRAPH_OUTPUT,
  MODEL_GRAPH,
  type Node,
  NODE_ATTRIBUTE,
  NODE_OUTPUT,
  parseNode,
  tensorElemType,
  text,
  VALUE_INFO_NAME,
  VALUE_INFO_TYPE,
  writeGraphOutput,
  writeNode,
} from '../onnx-wire.js';

const ATTRIBUTE_G = 6;
const ATTRIBUTE_TYPE_GRAPH = 5;

const outputName = (f: Field) => text(fields(f.body!).find((i) => i.no === VALUE_INFO_NAME)!);
const outputType = (f: Field) => {
  const type = fields(f.body!).find((i) => i.no === VALUE_INFO_TYPE);
  return type && tensorElemType(type.body!);
};

/** Follows Identity nodes back to where a tensor is computed, in one graph. */
function sourceIn(nodes: Node[], name: string): { name: string; node?: Node } {
  const producer = new Map<string, Node>();
  for (const node of nodes) for (const output of node.outputs) producer.set(output, node);
  for (let node = producer.get(name); node?.opType === 'Identity' && node.domain === '';) {
    name = node.inputs[0]!;
    node = producer.get(name);
  }
  return { name, node: producer.get(name) };
}

/**
 * A branch with an output per `present` index carrying its new positions
 * (named `names[i]`); or why the branch does not have the pattern.
 */
function editBranch(
  branch: Uint8Array,
  indices: number[],
  pasts: string[],
  names: string[],
): Uint8Array | { reason: string } {
  const graph = fields(branch);
  const nodes = graph.filter((f) => f.no === GRAPH_NODE).map((f) => parseNode(f.body!));
  const outputs = graph.filter((f) => f.no === GRAPH_OUTPUT);
  const out = new BinaryWriter();
  for (const f of graph) out.raw(f.raw);
  for (const [i, index] of indices.entries()) {
    const output = outputs[index];
    if (!output) return { reason: `the If's branch has no output ${index}` };
    const { name, node } = sourceIn(nodes, outputName(output));
    let fresh = name;
    if (node?.opType === 'Concat' && node.domain === '') {
      // The branch with a past: what is appended to it.
      const axis = node.ints.get('axis');
      if (
        node.inputs.length !== 2 ||
        sourceIn(nodes, node.inputs[0]!).name !== pasts[i] ||
        (axis !== 2 && axis !== -2)
      )
        return {
          reason: `a branch's '${outputName(output)}' does not concatenate '${pasts[i]}' on the sequence axis`,
        };
      fresh = node.inputs[1]!;
    } else if (nodes.some((n) => n.inputs.includes(pasts[i]!))) {
      return { reason: `a branch reads '${pasts[i]}' but does not concatenate it` };
    }
    writeNode(out, { opType: 'Identity', name: names[i]!, inputs: [fresh], outputs: [names[i]!] });
    writeGraphOutput(out, names[i]!, outputType(output));
  }
  return out.finish();
}

/**
 * The edited model when every `present` is an output of one If (a merged
 * decoder); undefined when none is; the reason when one is but the edit
 * does not apply.
 */
export function exposeMergedNewKeyValues(
  model: Uint8Array,
  pairs: { past: string; present: string }[],
  newName: (present: string) => string,
): { model: Uint8Array; newOutputs: Map<string, string> } | { reason: string } | undefined {
  const top = fields(model);
  const graph = fields(top.find((f) => f.no === MODEL_GRAPH)!.body!);
  const nodeFields = graph.filter((f) => f.no === GRAPH_NODE);
  const nodes = nodeFields.map((f) => parseNode(f.body!));
  const at = nodes.findIndex((n) => n.opType === 'If' && n.outputs.includes(pairs[0]!.present));
  if (at < 0) return undefined;
  const ifNode = nodes[at]!;
  const indices = pairs.map((p) => ifNode.outputs.indexOf(p.present));
  if (indices.some((i) => i < 0)) return { reason: 'the present outputs do not all come from one If' };
  const pasts = pairs.map((p) => p.past);
  // One output name per present, the same in both branches (each branch's own namespace).
  const edited = new Map<string, Uint8Array>();
  for (const a of fields(nodeFields[at]!.body!)) {
    if (a.no !== NODE_ATTRIBUTE) continue;
    const parts = fields(a.body!);
    const name = text(parts.find((p) => p.no === ATTRIBUTE_NAME)!);
    const g = parts.find((p) => p.no === ATTRIBUTE_G);
    if (!g || (name !== 'then_branch' && name !== 'else_branch')) continue;
    const branch = editBranch(
      g.body!,
      indices,
      pasts,
      pairs.map((p) => `${name}/${newName(p.present)}`),
    );
    if ('reason' in branch) return branch;
    edited.set(name, branch);
  }
  if (edited.size !== 2) return { reason: 'the If has no then_branch and else_branch graphs' };
  // The If: its fields as they were, the branches edited, the new outputs appended.
  const node = new BinaryWriter();
  for (const f of fields(nodeFields[at]!.body!)) {
    const name = f.no === NODE_ATTRIBUTE ? text(fields(f.body!).find((p) => p.no === ATTRIBUTE_NAME)!) : '';
    const branch = edited.get(name);
    if (!branch) {
      node.raw(f.raw);
      continue;
    }
    node.tag(NODE_ATTRIBUTE, WireType.LengthDelimited).fork();
    node.tag(ATTRIBUTE_NAME, WireType.LengthDelimited).string(name);
    node.tag(ATTRIBUTE_G, WireType.LengthDelimited).bytes(branch);
    node.tag(ATTRIBUTE_TYPE, WireType.Varint).int32(ATTRIBUTE_TYPE_GRAPH);
    node.join();
  }
  for (const p of pairs) node.tag(NODE_OUTPUT, WireType.LengthDelimited).string(newName(p.present));
  const newOutputs = new Map(pairs.map((p) => [p.present, newName(p.present)]));
  const graphOut = new BinaryWriter();
  let nodeIndex = 0;
  for (const f of graph) {
    if (f.no === GRAPH_NODE && nodeIndex++ === at) {
      graphOut.tag(GRAPH_NODE, WireType.LengthDelimited).bytes(node.finish());
      continue;
    }
    if (f.no === GRAPH_OUTPUT && newOutputs.has(outputName(f))) {
      writeGraphOutput(graphOut, newOutputs.get(outputName(f))!, outputType(f));
      continue;
    }
    graphOut.raw(f.raw);
  }
  const modelOut = new BinaryWriter();
  for (const f of top) {
    if (f.no === MODEL_GRAPH) modelOut.tag(MODEL_GRAPH, WireType.LengthDelimited).bytes(graphOut.finish());
    else modelOut.raw(f.raw);
  }
  return { model: modelOut.finish(), newOutputs };
}
