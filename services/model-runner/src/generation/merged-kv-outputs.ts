/**
 * new-kv-outputs.ts's edit for the merged decoder (optimum's
 * `decoder_model_merged.onnx`): there `present` comes out of an If on
 * `use_cache_branch`, whose then-branch concatenates the past with the new
 * keys/values and whose else-branch (the first run, no past) returns the
 * new ones as they are. Returned as graph outputs, the whole cache is copied
 * into fresh JS memory every step, as in an unmerged graph. The edit makes
 * each branch's present output carry only the new positions instead (the
 * Concat's second input; the else-branch's present itself), renames the
 * If's outputs to `<present>.new` and exposes those in place of `present`;
 * the then-branch's Concat then only feeds attention, which
 * split-attention.ts splits in the branch (editIfBranch).
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
  VALUE_INFO_TYPE,
  writeGraphOutput,
  writeNode,
  valueInfoName,
  identitySource,
  withGraph,
} from '../onnx-wire.js';

const ATTRIBUTE_G = 6;
const ATTRIBUTE_TYPE_GRAPH = 5;

const outputName = valueInfoName;
const outputType = (f: Field) => {
  const type = fields(f.body!).find((i) => i.no === VALUE_INFO_TYPE);
  return type && tensorElemType(type.body!);
};

/**
 * A branch whose output at each `present` index carries its new positions
 * instead (named `names[i]`); or why the branch does not have the pattern.
 */
function editBranch(
  branch: Uint8Array,
  indices: number[],
  pasts: string[],
  names: string[],
): Uint8Array | { reason: string } {
  const graph = fields(branch);
  const nodes = graph.filter((f) => f.no === GRAPH_NODE).map((f) => parseNode(f.body!));
  const sourceOf = identitySource(nodes);
  const outputs = graph.filter((f) => f.no === GRAPH_OUTPUT);
  const replaced = new Map<Field, { name: string; fresh: string }>();
  for (const [i, index] of indices.entries()) {
    const output = outputs[index];
    if (!output) return { reason: `the If's branch has no output ${index}` };
    const { name, node } = sourceOf(outputName(output));
    let fresh = name;
    if (node?.opType === 'Concat' && node.domain === '') {
      // The branch with a past: what is appended to it.
      const axis = node.ints.get('axis');
      if (
        node.inputs.length !== 2 ||
        sourceOf(node.inputs[0]!).name !== pasts[i] ||
        (axis !== 2 && axis !== -2)
      )
        return {
          reason: `a branch's '${outputName(output)}' does not concatenate '${pasts[i]}' on the sequence axis`,
        };
      fresh = node.inputs[1]!;
    } else if (nodes.some((n) => n.inputs.includes(pasts[i]!))) {
      return { reason: `a branch reads '${pasts[i]}' but does not concatenate it` };
    }
    replaced.set(output, { name: names[i]!, fresh });
  }
  const out = new BinaryWriter();
  for (const f of graph) {
    const replacement = replaced.get(f);
    if (replacement) writeGraphOutput(out, replacement.name, outputType(f));
    else out.raw(f.raw);
  }
  for (const { name, fresh } of replaced.values())
    writeNode(out, { opType: 'Identity', name, inputs: [fresh], outputs: [name] });
  return out.finish();
}

/** The graph's only If node with then/else branches: its index among the nodes, the node, its field. */
function findIf(graph: Field[]): { at: number; node: Node; field: Field } | undefined {
  const nodeFields = graph.filter((f) => f.no === GRAPH_NODE);
  const found = nodeFields
    .map((field, at) => ({ at, field, node: parseNode(field.body!) }))
    .filter((n) => n.node.opType === 'If' && n.node.domain === '');
  return found.length === 1 ? found[0] : undefined;
}

/** The branch graphs of an If node, by attribute name. */
function branchesOf(field: Field): Map<string, Uint8Array> {
  const branches = new Map<string, Uint8Array>();
  for (const a of fields(field.body!)) {
    if (a.no !== NODE_ATTRIBUTE) continue;
    const parts = fields(a.body!);
    const g = parts.find((p) => p.no === ATTRIBUTE_G);
    if (g) branches.set(text(parts.find((p) => p.no === ATTRIBUTE_NAME)!), g.body!);
  }
  return branches;
}

/**
 * The graph with its If node rewritten: branches replaced as given, outputs renamed as given
 * (by index).
 */
function rewriteIf(
  graph: Field[],
  at: number,
  field: Field,
  branches: Map<string, Uint8Array>,
  renamed: Map<number, string> = new Map(),
): Uint8Array {
  const node = new BinaryWriter();
  let output = 0;
  for (const f of fields(field.body!)) {
    if (f.no === NODE_OUTPUT) {
      const name = renamed.get(output++);
      if (name !== undefined) node.tag(NODE_OUTPUT, WireType.LengthDelimited).string(name);
      else node.raw(f.raw);
      continue;
    }
    const name = f.no === NODE_ATTRIBUTE ? text(fields(f.body!).find((p) => p.no === ATTRIBUTE_NAME)!) : '';
    const branch = branches.get(name);
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
  const out = new BinaryWriter();
  let nodeIndex = 0;
  for (const f of graph) {
    if (f.no === GRAPH_NODE && nodeIndex++ === at)
      out.tag(GRAPH_NODE, WireType.LengthDelimited).bytes(node.finish());
    else out.raw(f.raw);
  }
  return out.finish();
}

/**
 * A graph whose only If node's `branch` is edited by `edit` (split-attention.ts
 * splits the merged decoder's then-branch so); undefined when the graph has
 * no such If.
 */
export function editIfBranch(
  graphBytes: Uint8Array,
  branch: 'then_branch' | 'else_branch',
  edit: (graph: Uint8Array) => { graph: Uint8Array } | { reason: string },
): { graph: Uint8Array } | { reason: string } | undefined {
  const graph = fields(graphBytes);
  const found = findIf(graph);
  const body = found && branchesOf(found.field).get(branch);
  if (!found || !body) return undefined;
  const edited = edit(body);
  if ('reason' in edited) return edited;
  return { graph: rewriteIf(graph, found.at, found.field, new Map([[branch, edited.graph]])) };
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
  const found = findIf(graph);
  if (!found || !found.node.outputs.includes(pairs[0]!.present)) return undefined;
  const indices = pairs.map((p) => found.node.outputs.indexOf(p.present));
  if (indices.some((i) => i < 0)) return { reason: 'the present outputs do not all come from one If' };
  const pasts = pairs.map((p) => p.past);
  const branches = branchesOf(found.field);
  if (!branches.has('then_branch') || !branches.has('else_branch'))
    return { reason: 'the If has no then_branch and else_branch graphs' };
  const edited = new Map<string, Uint8Array>();
  for (const [name, body] of branches) {
    // Each branch's outputs are its own names; the If's outputs are positional.
    const branch = editBranch(
      body,
      indices,
      pasts,
      pairs.map((p) => `${name}/${newName(p.present)}`),
    );
    if ('reason' in branch) return branch;
    edited.set(name, branch);
  }
  const newOutputs = new Map(pairs.map((p) => [p.present, newName(p.present)]));
  // The If's present outputs become the new positions: present is no longer computed for anyone.
  const renamed = new Map(pairs.map((p, i) => [indices[i]!, newName(p.present)]));
  const rewritten = fields(rewriteIf(graph, found.at, found.field, edited, renamed));
  const graphOut = new BinaryWriter();
  for (const f of rewritten) {
    if (f.no === GRAPH_OUTPUT && newOutputs.has(outputName(f))) {
      writeGraphOutput(graphOut, newOutputs.get(outputName(f))!, outputType(f));
      continue;
    }
    graphOut.raw(f.raw);
  }
  return { model: withGraph(top, graphOut.finish()), newOutputs };
}
