/**
 * A TensorFlow.js graph model (model.json + weight shards) → an ONNX graph,
 * written with the project's GraphBuilder, so a detector published only for
 * TF.js can be served by onnxruntime.
 *
 * TF.js itself (CPU backend) does the parts that need TensorFlow's semantics:
 * it dequantizes the weights, runs the graph once on a synthetic input to
 * learn every tensor's static shape, and constant-folds every node whose
 * inputs are all constants (shape arithmetic, SparseToDense of constants…).
 * The rest maps one TF op to one or a few ONNX ops. TF graphs are NHWC: a
 * rank-4 activation is kept NCHW after a convolution (ONNX's layout) and
 * transposed back only where an op needs TF's own layout (Reshape, Split…).
 *
 * Only the ops the converted models need are mapped; anything else fails the
 * conversion naming the op, rather than writing a wrong graph. The synthetic
 * input's TF.js outputs come back as the reference the ONNX graph is checked
 * against (verifyConversion).
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { loadGraphModelSync } from '@tensorflow/tfjs-converter';
import * as ort from 'onnxruntime-node';
import { GraphBuilder, type AttributeValue, type ElemType, type TensorData } from '../onnx-builder.js';

interface TfAttr {
  s?: string;
  i?: string;
  f?: number;
  b?: boolean;
  type?: string;
  list?: { i?: string[]; s?: string[] };
  shape?: { dim?: { size: string }[] };
}

interface TfNode {
  name: string;
  op: string;
  input?: string[];
  attr?: Record<string, TfAttr>;
}

interface TfModelJson {
  format?: string;
  generatedBy?: string;
  convertedBy?: string;
  modelTopology: { node: TfNode[] };
  weightsManifest: { paths: string[]; weights: tf.io.WeightsManifestEntry[] }[];
  signature?: { outputs?: Record<string, unknown> };
  userDefinedMetadata?: Record<string, object>;
}

export interface ConvertTfjsOptions {
  /** The ONNX name of the graph input (default: the TF placeholder's). */
  inputName?: string;
  /** TF output node → ONNX output name, in the order the outputs are written (default: the signature's). */
  outputs?: Record<string, string>;
  /** Doc string stored in the model. */
  doc?: string;
}

export interface ConvertedTfjs {
  onnx: Uint8Array;
  input: { name: string; shape: number[]; data: Float32Array };
  /** TF.js's outputs for `input.data`, by ONNX output name. */
  reference: Map<string, { shape: number[]; data: Float32Array }>;
  /** ONNX ops written, with counts. */
  ops: Record<string, number>;
}

const b64 = (s: string) => Buffer.from(s, 'base64').toString();
const ints = (a: TfAttr | undefined) => (a?.list?.i ?? []).map(Number);
const str = (a: TfAttr | undefined) => (a?.s ? b64(a.s) : undefined);
const TF_DTYPES: Record<string, 'float32' | 'int32' | 'bool'> = {
  DT_FLOAT: 'float32',
  DT_INT32: 'int32',
  DT_BOOL: 'bool',
};

/** The deterministic test image: values in [0, 1] that vary at several frequencies. */
export function syntheticInput(shape: number[]): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = 0.5 + 0.25 * Math.sin(i / 97) + 0.25 * Math.cos(i / 13.7);
  return data;
}

function loadArtifacts(modelJsonPath: string): { json: TfModelJson; artifacts: tf.io.ModelArtifacts } {
  const json = JSON.parse(readFileSync(modelJsonPath, 'utf8')) as TfModelJson;
  const dir = dirname(modelJsonPath);
  const data = Buffer.concat(
    json.weightsManifest.flatMap((g) => g.paths.map((p) => readFileSync(join(dir, p)))),
  );
  const weightData = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) as ArrayBuffer;
  return {
    json,
    artifacts: {
      modelTopology: json.modelTopology,
      weightSpecs: json.weightsManifest.flatMap((g) => g.weights),
      weightData,
      format: json.format,
      generatedBy: json.generatedBy,
      convertedBy: json.convertedBy,
      signature: json.signature,
      userDefinedMetadata: json.userDefinedMetadata,
    },
  };
}

interface Info {
  shape: number[];
  dtype: string;
  t: tf.Tensor;
}

export function convertTfjsGraph(modelJsonPath: string, options: ConvertTfjsOptions = {}): ConvertedTfjs {
  void tf.setBackend('cpu'); // synchronous for the CPU backend
  const { json, artifacts } = loadArtifacts(modelJsonPath);
  const model = loadGraphModelSync(artifacts);
  const nodes = json.modelTopology.node;
  const inputNode = nodes.find((n) => n.op === 'Placeholder');
  if (!inputNode) throw new Error(`${modelJsonPath}: no Placeholder (graph input)`);
  const inShape = (inputNode.attr?.shape?.shape?.dim ?? []).map((d) => Math.max(1, Number(d.size)));
  const inData = syntheticInput(inShape);
  const inTensor = tf.tensor(inData, inShape);
  const inputName = options.inputName ?? inputNode.name;

  // Every tensor whose shape (or folded value) the conversion reads.
  const wanted = new Set<string>();
  for (const nd of nodes) {
    if (nd.op !== 'Const' && nd.op !== 'Placeholder') wanted.add(nd.name);
    for (const i of nd.input ?? []) if (i.includes(':') && !i.startsWith('^')) wanted.add(i);
  }
  const names = [...wanted];
  const values = model.execute({ [inputNode.name]: inTensor }, names) as tf.Tensor[];
  const info: Record<string, Info> = {};
  names.forEach((name, i) => {
    info[name] = { shape: values[i]!.shape, dtype: values[i]!.dtype, t: values[i]! };
  });
  info[inputNode.name] = { shape: inShape, dtype: 'float32', t: inTensor };
  const weights = model.weights;
  for (const nd of nodes) {
    if (nd.op !== 'Const') continue;
    const t = weights[nd.name]![0]!;
    info[nd.name] = { shape: t.shape, dtype: t.dtype, t };
  }
  const key = (s: string) => (s.endsWith(':0') ? s.slice(0, -2) : s);
  const infoOf = (s: string) => {
    const i = info[key(s)];
    if (!i) throw new Error(`no value for ${s}`);
    return i;
  };

  // A node is constant when all its inputs are.
  const isConst = new Set(nodes.filter((n) => n.op === 'Const').map((n) => n.name));
  const constInput = (i: string) => isConst.has(key(i).split(':')[0]!);
  for (const nd of nodes) {
    if (nd.op === 'Const' || nd.op === 'Placeholder') continue;
    if ((nd.input ?? []).filter((i) => !i.startsWith('^')).every(constInput)) isConst.add(nd.name);
  }

  const g = new GraphBuilder('converted');
  const ops: Record<string, number> = {};
  const node = (
    op: string,
    inputs: string[],
    attrs: Record<string, AttributeValue> = {},
    output?: string,
  ) => {
    ops[op] = (ops[op] ?? 0) + 1;
    return g.node(op, inputs, attrs, [output ?? g.tmp(op.toLowerCase())]);
  };
  const initializer = (name: string, data: TensorData, type: ElemType, dims: number[]) =>
    g.hasInitializer(name) ? name : g.initializer(name, { type, dims, data });
  const tensorInit = (name: string, t: tf.Tensor) => {
    const data = t.dataSync();
    if (t.dtype === 'float32') return initializer(name, Float32Array.from(data), 'float32', t.shape);
    if (t.dtype === 'int32') return initializer(name, Int32Array.from(data), 'int32', t.shape);
    if (t.dtype === 'bool') return initializer(name, Uint8Array.from(data), 'bool', t.shape);
    throw new Error(`constant ${name}: dtype ${t.dtype}`);
  };
  const i64 = (values: number[]) => g.constInt64(values);
  const f32 = (value: number) => g.constFloat([value], []);

  type Layout = 'NCHW' | 'NATIVE';
  const layout = new Map<string, Layout>();
  const onnxName = new Map<string, string>(); // TF tensor → ONNX tensor
  const toNative = new Map<string, string>();
  const toNchw = new Map<string, string>();
  const set = (tfName: string, o: string, l: Layout) => {
    onnxName.set(tfName, o);
    layout.set(o, l);
  };
  const constName = (tfName: string) => {
    const k = key(tfName);
    const known = onnxName.get(k);
    if (known) return known;
    const o = tensorInit(k, infoOf(k).t);
    set(k, o, 'NATIVE');
    return o;
  };
  /** The tensor in TF's own layout. */
  const native = (tfName: string) => {
    if (constInput(tfName)) return constName(tfName);
    const o = onnxName.get(key(tfName));
    if (!o) throw new Error(`missing ${tfName}`);
    if (layout.get(o) !== 'NCHW') return o;
    if (!toNative.has(o)) toNative.set(o, node('Transpose', [o], { perm: { ints: [0, 2, 3, 1] } }));
    return toNative.get(o)!;
  };
  /** A rank-4 activation (or a constant broadcasting against one) in NCHW. */
  const nchw = (tfName: string) => {
    const k = key(tfName);
    if (constInput(tfName)) {
      const t = infoOf(k).t;
      let c: tf.Tensor;
      if (t.rank === 4) c = tf.transpose(t, [0, 3, 1, 2]);
      else if (t.rank === 3) c = tf.transpose(t, [2, 0, 1]);
      else if (t.rank === 1 && t.shape[0]! > 1) c = tf.reshape(t, [t.shape[0]!, 1, 1]);
      else if (t.rank <= 1) c = t;
      else throw new Error(`${tfName}: a rank-${t.rank} constant against an NCHW tensor`);
      return tensorInit(g.tmp(`${k}_nchw`), c);
    }
    const o = onnxName.get(k);
    if (!o) throw new Error(`missing ${tfName}`);
    if (layout.get(o) === 'NCHW' || infoOf(k).shape.length !== 4) return o;
    if (!toNchw.has(o)) toNchw.set(o, node('Transpose', [o], { perm: { ints: [0, 3, 1, 2] } }));
    return toNchw.get(o)!;
  };
  const nchwAxis = (a: number, rank = 4) => [0, 2, 3, 1][a < 0 ? a + rank : a]!;
  const constValues = (tfName: string) => Array.from(infoOf(tfName).t.dataSync(), Number);
  const padding = (nd: TfNode): Record<string, AttributeValue> => {
    const p = str(nd.attr?.padding);
    if (p === 'SAME') return { auto_pad: { s: 'SAME_UPPER' } };
    if (p === 'VALID') return { auto_pad: { s: 'VALID' } };
    const e = ints(nd.attr?.explicit_paddings);
    return { pads: { ints: [e[2]!, e[4]!, e[3]!, e[5]!] } };
  };
  const unsupported = new Set<string>();

  for (const nd of nodes) {
    const op = nd.op;
    const ins = (nd.input ?? []).filter((i) => !i.startsWith('^'));
    if (op === 'Const') continue;
    if (op === 'Placeholder') {
      set(nd.name, inputName, 'NATIVE');
      continue;
    }
    if (isConst.has(nd.name)) continue; // folded
    const out = nd.name;
    const attr = nd.attr ?? {};
    switch (op) {
      case 'Identity': {
        const o = onnxName.get(key(ins[0]!)) ?? constName(ins[0]!);
        set(out, node('Identity', [o]), layout.get(o) ?? 'NATIVE');
        break;
      }
      case 'Conv2D':
      case '_FusedConv2D':
      case 'DepthwiseConv2dNative':
      case 'FusedDepthwiseConv2dNative': {
        if ((str(attr.data_format) ?? 'NHWC') !== 'NHWC')
          throw new Error(`${out}: data_format ${str(attr.data_format)}`);
        const x = nchw(ins[0]!);
        const w = infoOf(ins[1]!).t; // HWIO, or HW C M for depthwise
        let kernel: tf.Tensor;
        let group = 1;
        if (op.includes('Depthwise')) {
          const [h, ww, c, m] = w.shape as [number, number, number, number];
          kernel = tf.reshape(tf.transpose(tf.reshape(w, [h, ww, c * m]), [2, 0, 1]), [c * m, 1, h, ww]);
          group = c;
        } else kernel = tf.transpose(w, [3, 2, 0, 1]);
        const fused = (attr.fused_ops?.list?.s ?? []).map(b64);
        const inputs = [x, tensorInit(g.tmp('W'), kernel)];
        if (fused[0] === 'BiasAdd') inputs.push(tensorInit(g.tmp('B'), infoOf(ins[2]!).t));
        else if (fused.length > 0) throw new Error(`${out}: fused ${fused.join(', ')}`);
        const s = ints(attr.strides);
        const d = ints(attr.dilations);
        let y = node('Conv', inputs, {
          ...padding(nd),
          strides: { ints: [s[1]!, s[2]!] },
          dilations: { ints: d.length > 0 ? [d[1]!, d[2]!] : [1, 1] },
          group: { i: group },
        });
        const activation = fused[1];
        if (activation === 'Relu') y = node('Relu', [y]);
        else if (activation === 'Relu6') y = node('Clip', [y, f32(0), f32(6)]);
        else if (activation === 'LeakyRelu')
          y = node('LeakyRelu', [y], { alpha: { f: attr.leakyrelu_alpha!.f! } });
        else if (activation) throw new Error(`${out}: activation ${activation}`);
        set(out, y, 'NCHW');
        break;
      }
      case 'Relu':
      case 'Sigmoid':
      case 'Relu6':
      case 'LeakyRelu': {
        // Element-wise: the result keeps its input's layout.
        const x = onnxName.get(key(ins[0]!)) ?? constName(ins[0]!);
        let y: string;
        if (op === 'Relu6') y = node('Clip', [x, f32(0), f32(6)]);
        else if (op === 'LeakyRelu') y = node('LeakyRelu', [x], { alpha: { f: attr.alpha!.f! } });
        else y = node(op, [x]);
        set(out, y, layout.get(x) ?? 'NATIVE');
        break;
      }
      case 'Add':
      case 'AddV2':
      case 'Sub':
      case 'Mul':
      case 'RealDiv':
      case 'Maximum':
      case 'Minimum': {
        const onnxOp = {
          Add: 'Add',
          AddV2: 'Add',
          Sub: 'Sub',
          Mul: 'Mul',
          RealDiv: 'Div',
          Maximum: 'Max',
          Minimum: 'Min',
        }[op];
        const anyNchw = ins.some((i) => {
          const o = onnxName.get(key(i));
          return o !== undefined && layout.get(o) === 'NCHW';
        });
        const useNchw = anyNchw && ins.every((i) => constInput(i) || infoOf(i).shape.length === 4);
        set(out, node(onnxOp, ins.map(useNchw ? nchw : native)), useNchw ? 'NCHW' : 'NATIVE');
        break;
      }
      case 'Mean': {
        const axes = constValues(ins[1]!);
        const keep = attr.keep_dims?.b === true;
        const src = onnxName.get(key(ins[0]!))!;
        const spatial = axes.length === 2 && axes.includes(1) && axes.includes(2);
        if (layout.get(src) === 'NCHW' && (keep || spatial)) {
          const y = node('ReduceMean', [src], {
            axes: { ints: axes.map((a) => nchwAxis(a)) },
            keepdims: { i: keep ? 1 : 0 },
          });
          set(out, y, keep ? 'NCHW' : 'NATIVE');
        } else {
          set(
            out,
            node('ReduceMean', [native(ins[0]!)], { axes: { ints: axes }, keepdims: { i: keep ? 1 : 0 } }),
            'NATIVE',
          );
        }
        break;
      }
      case 'ResizeBilinear':
      case 'ResizeNearestNeighbor': {
        const x = nchw(ins[0]!);
        const os = infoOf(out).shape; // NHWC
        const alignCorners = attr.align_corners?.b === true;
        const halfPixel = attr.half_pixel_centers?.b === true;
        const mode = op === 'ResizeBilinear' ? 'linear' : 'nearest';
        const transform = alignCorners
          ? 'align_corners'
          : halfPixel
            ? mode === 'linear'
              ? 'half_pixel'
              : 'tf_half_pixel_for_nn'
            : 'asymmetric';
        const attrs: Record<string, AttributeValue> = {
          mode: { s: mode },
          coordinate_transformation_mode: { s: transform },
        };
        if (mode === 'nearest') attrs.nearest_mode = { s: alignCorners ? 'round_prefer_ceil' : 'floor' };
        set(out, node('Resize', [x, '', '', i64([os[0]!, os[3]!, os[1]!, os[2]!])], attrs), 'NCHW');
        break;
      }
      case 'ConcatV2': {
        const axis = constValues(ins.at(-1)!)[0]!;
        const xs = ins.slice(0, -1);
        const rank = infoOf(out).shape.length;
        if (rank === 4 && xs.some((i) => layout.get(onnxName.get(key(i)) ?? '') === 'NCHW')) {
          set(out, node('Concat', xs.map(nchw), { axis: { i: nchwAxis(axis) } }), 'NCHW');
        } else {
          set(out, node('Concat', xs.map(native), { axis: { i: axis < 0 ? axis + rank : axis } }), 'NATIVE');
        }
        break;
      }
      case 'MaxPool':
      case 'AvgPool': {
        const k = ints(attr.ksize);
        const s = ints(attr.strides);
        const y = node(op === 'MaxPool' ? 'MaxPool' : 'AveragePool', [nchw(ins[0]!)], {
          kernel_shape: { ints: [k[1]!, k[2]!] },
          strides: { ints: [s[1]!, s[2]!] },
          ...padding(nd),
        });
        set(out, y, 'NCHW');
        break;
      }
      case 'Squeeze': {
        const axes = ints(attr.squeeze_dims);
        const src = onnxName.get(key(ins[0]!))!;
        if (layout.get(src) === 'NCHW' && axes.length === 2 && axes.includes(1) && axes.includes(2)) {
          set(out, node('Squeeze', [src, i64([2, 3])]), 'NATIVE');
        } else set(out, node('Squeeze', [native(ins[0]!), i64(axes)]), 'NATIVE');
        break;
      }
      case 'Reshape':
        set(out, node('Reshape', [native(ins[0]!), i64(constValues(ins[1]!))]), 'NATIVE');
        break;
      case 'ExpandDims':
        set(out, node('Unsqueeze', [native(ins[0]!), i64(constValues(ins[1]!))]), 'NATIVE');
        break;
      case 'Transpose':
        set(out, node('Transpose', [native(ins[0]!)], { perm: { ints: constValues(ins[1]!) } }), 'NATIVE');
        break;
      case 'Pad':
      case 'PadV2': {
        const p = constValues(ins[1]!);
        const rank = p.length / 2;
        const pads = [
          ...Array.from({ length: rank }, (_, i) => p[2 * i]!),
          ...Array.from({ length: rank }, (_, i) => p[2 * i + 1]!),
        ];
        const inputs = [native(ins[0]!), i64(pads)];
        if (op === 'PadV2') inputs.push(native(ins[2]!));
        set(out, node('Pad', inputs, { mode: { s: 'constant' } }), 'NATIVE');
        break;
      }
      case 'SplitV': {
        const sizes = constValues(ins[1]!);
        const axis = constValues(ins[2]!)[0]!;
        const outs = sizes.map(() => g.tmp('split'));
        ops.Split = (ops.Split ?? 0) + 1;
        g.node('Split', [native(ins[0]!), i64(sizes)], { axis: { i: axis } }, outs);
        outs.forEach((o, j) => set(j === 0 ? out : `${out}:${j}`, o, 'NATIVE'));
        break;
      }
      default:
        unsupported.add(op);
    }
  }
  if (unsupported.size > 0) throw new Error(`unsupported TF ops: ${[...unsupported].join(', ')}`);

  const tfOutputs =
    options.outputs ??
    Object.fromEntries(
      Object.keys(json.signature?.outputs ?? {}).map((s) => [key(s), key(s).replace(/[/:]/g, '_')]),
    );
  if (Object.keys(tfOutputs).length === 0) throw new Error('no outputs named and no signature');
  const reference = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [tfName, name] of Object.entries(tfOutputs)) {
    const i = infoOf(tfName);
    if (i.dtype !== 'float32') throw new Error(`output ${tfName}: dtype ${i.dtype}`);
    node('Identity', [native(tfName)], {}, name);
    g.output(name, 'float32', i.shape);
    reference.set(name, { shape: i.shape, data: Float32Array.from(i.t.dataSync()) });
  }
  g.input(inputName, TF_DTYPES.DT_FLOAT!, inShape);
  tf.dispose([...values, inTensor]);
  return {
    onnx: g.toBytes({ opset: 13, producer: 'maas tfjs-to-onnx', doc: options.doc }),
    input: { name: inputName, shape: inShape, data: inData },
    reference,
    ops,
  };
}

/** Runs the ONNX graph on the conversion's input; the largest absolute difference from TF.js per output. */
export async function verifyConversion(converted: ConvertedTfjs): Promise<Map<string, number>> {
  const session = await ort.InferenceSession.create(Buffer.from(converted.onnx));
  try {
    const feeds = {
      [converted.input.name]: new ort.Tensor('float32', converted.input.data, converted.input.shape),
    };
    const results = await session.run(feeds);
    const diffs = new Map<string, number>();
    for (const [name, ref] of converted.reference) {
      const got = results[name];
      if (!got || got.dims.join() !== ref.shape.join()) {
        throw new Error(`output ${name}: shape [${got?.dims.join(', ')}], TF.js [${ref.shape.join(', ')}]`);
      }
      const data = got.data as Float32Array;
      let max = 0;
      for (let i = 0; i < data.length; i++) max = Math.max(max, Math.abs(data[i]! - ref.data[i]!));
      diffs.set(name, max);
    }
    return diffs;
  } finally {
    await session.release();
  }
}
