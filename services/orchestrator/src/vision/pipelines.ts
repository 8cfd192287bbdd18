/**
 * The image tasks' pipelines: decoded images are prepared as each model's
 * config says, sent to the runner in batches of one tensor shape (the
 * runner's dynamic batching joins same-shaped batches of other calls), and
 * the outputs read back into labels, boxes or lines of text. ReadText chains
 * three models: the detector finds line regions, the optional direction
 * classifier turns upside-down lines, the recognizer reads every line of
 * every image of the call in width-sorted batches.
 */
import { trace } from '@opentelemetry/api';
import type { GRPCInferenceServiceClient, ModelInferRequest } from '@maas/shared/gen/inference/grpc_service';
import type { CatalogueModel } from '../catalogue.js';
import { unaryCall } from '../downstream/clients.js';
import { inferOutput } from '../pipelines/postprocess.js';
import { labelScores, labelsOf, type LabelScore } from '../pipelines/tasks.js';
import { ctcSteps, decodeBestPath } from './ctc.js';
import {
  type Box,
  type DetectionParameters,
  nanodetCandidates,
  nonMaximumSuppression,
  type OutputTensor,
  ssdCandidates,
  toOriginal,
  yoloCandidates,
} from './detections.js';
import { cropQuad, type Quad, rotate } from './geometry.js';
import type { RgbImage } from './image-input.js';
import { batchTensor, type PreparedImage, prepareImage } from './image-tensor.js';
import { findTextRegions, readingOrder } from './text-regions.js';

export interface CallContext {
  deadline: Date;
  signal: AbortSignal;
}

interface Inferred {
  modelVersion: string;
  outputs: Map<string, OutputTensor>;
}

/** One ModelInfer of a batch of prepared images, all of one size (narrower ones padded to `width`). */
async function infer(
  inference: GRPCInferenceServiceClient,
  model: CatalogueModel,
  images: RgbImage[],
  width: number,
  height: number,
  ctx: CallContext,
): Promise<Inferred> {
  const vision = model.vision!;
  const { data, shape } = batchTensor(images, vision.preprocess, width, height);
  const request: ModelInferRequest = {
    modelName: model.name,
    modelVersion: '',
    id: '',
    parameters: {},
    inputs: [
      {
        name: vision.input,
        datatype: vision.preprocess.datatype,
        shape,
        parameters: {},
        contents: undefined,
      },
    ],
    outputs: vision.outputs.map((name) => ({ name, parameters: {} })),
    rawInputContents: [Buffer.from(data.buffer, data.byteOffset, data.byteLength)],
  };
  const response = await unaryCall('model-runner', inference.modelInfer.bind(inference), request, ctx);
  const outputs = new Map(vision.outputs.map((name) => [name, inferOutput(response, name, model.name)]));
  return { modelVersion: response.modelVersion, outputs };
}

/** One output split per image of the batch, each part shaped [1, ...] as if run alone. */
function perImage(output: OutputTensor, rows: number, model: string): OutputTensor[] {
  const size = output.values.length / rows;
  if (output.shape[0] !== rows || !Number.isInteger(size)) {
    throw new Error(`${model} returned shape [${output.shape.join(', ')}] for ${rows} images`);
  }
  const shape = [1, ...output.shape.slice(1)];
  return Array.from({ length: rows }, (_, r) => ({
    shape,
    values: output.values.subarray(r * size, (r + 1) * size),
  }));
}

/** The tensor width a batch is padded to: the model's fixed width, or the widest image. */
function batchWidth(model: CatalogueModel, images: RgbImage[]): number {
  const { preprocess } = model.vision!;
  if (preprocess.resize.mode === 'fixed' || preprocess.resize.mode === 'letterbox')
    return preprocess.resize.width;
  const dims = model.config.inputs.find((i) => i.name === model.vision!.input)!.dims;
  const fixed = dims.at(preprocess.layout === 'nchw' ? -1 : -2)!;
  return fixed > 0 ? fixed : Math.max(...images.map((i) => i.width));
}

/**
 * Images run in batches of the model's maxBatchSize, each batch of one
 * tensor shape; `order` sorts them first (lines by width, so that a batch
 * pads little). Returns each image's outputs, in the input order.
 */
async function runBatches(
  inference: GRPCInferenceServiceClient,
  model: CatalogueModel,
  images: RgbImage[],
  ctx: CallContext,
  order?: (a: RgbImage, b: RgbImage) => number,
): Promise<{
  modelVersion: string;
  /** Each image's outputs, by name. */
  outputs: Map<string, OutputTensor>[];
  /** The width of the batch each image ran in. */
  widths: number[];
}> {
  const indices = images.map((_, i) => i);
  if (order) indices.sort((a, b) => order(images[a]!, images[b]!));
  const fixedShape = ['fixed', 'letterbox'].includes(model.vision!.preprocess.resize.mode);
  const groups: number[][] = [];
  const max = model.limits.maxBatchSize;
  for (const i of indices) {
    const last = groups.at(-1);
    const fits =
      last &&
      last.length < max &&
      images[last[0]!]!.height === images[i]!.height &&
      (fixedShape || order !== undefined || images[last[0]!]!.width === images[i]!.width);
    if (fits) last.push(i);
    else groups.push([i]);
  }
  const outputs: Map<string, OutputTensor>[] = images.map(() => new Map());
  const widths: number[] = new Array(images.length);
  let modelVersion = '';
  await Promise.all(
    groups.map(async (group) => {
      const batch = group.map((i) => images[i]!);
      const width = batchWidth(model, batch);
      const result = await infer(inference, model, batch, width, batch[0]!.height, ctx);
      modelVersion = result.modelVersion;
      for (const i of group) widths[i] = width;
      for (const [name, output] of result.outputs) {
        perImage(output, group.length, model.name).forEach((part, r) => outputs[group[r]!]!.set(name, part));
      }
    }),
  );
  return { modelVersion, outputs, widths };
}

const prepareAll = (images: RgbImage[], model: CatalogueModel) =>
  Promise.all(images.map((image) => prepareImage(image, model.vision!.preprocess)));

export async function classifyImages(
  inference: GRPCInferenceServiceClient,
  model: CatalogueModel,
  images: RgbImage[],
  k: number,
  ctx: CallContext,
): Promise<{ modelVersion: string; results: LabelScore[][] }> {
  const prepared = await prepareAll(images, model);
  const { modelVersion, outputs } = await runBatches(
    inference,
    model,
    prepared.map((p) => p.resized),
    ctx,
  );
  const output = model.vision!.outputs[0]!;
  const labels = labelsOf(model, modelVersion);
  return { modelVersion, results: outputs.map((o) => labelScores(model, labels, o.get(output)!.values, k)) };
}

export interface LabelledBox extends Box {
  label: string;
}

export async function detectObjects(
  inference: GRPCInferenceServiceClient,
  model: CatalogueModel,
  images: RgbImage[],
  parameters: DetectionParameters,
  ctx: CallContext,
): Promise<{ modelVersion: string; results: LabelledBox[][] }> {
  const config = model.config.objectDetection!;
  const prepared = await prepareAll(images, model);
  const { modelVersion, outputs } = await runBatches(
    inference,
    model,
    prepared.map((p) => p.resized),
    ctx,
  );
  const labels = labelsOf(model, modelVersion);
  const [first, second] = model.vision!.outputs as [string, string | undefined];
  return {
    modelVersion,
    results: outputs.map((o, i) => {
      const p = prepared[i]!;
      const candidates =
        config.format === 'yolov8'
          ? yoloCandidates(o.get(first)!, labels?.length, parameters.scoreThreshold)
          : config.format === 'nanodet'
            ? nanodetCandidates(
                config.heads!.map((h) => ({
                  stride: h.stride,
                  scores: o.get(h.scoresOutput)!,
                  distribution: o.get(h.distributionOutput)!,
                })),
                config.bins,
                p.resized.width,
                p.resized.height,
                parameters.scoreThreshold,
              )
            : ssdCandidates(
                o.get(first)!,
                o.get(second!)!,
                config,
                p.resized.width,
                p.resized.height,
                parameters.scoreThreshold,
              );
      return nonMaximumSuppression(candidates, parameters.iouThreshold, parameters.maxDetections).map(
        (box) => ({
          ...toOriginal(box, p, images[i]!.width, images[i]!.height),
          label: labels?.[box.classIndex] ?? String(box.classIndex),
        }),
      );
    }),
  };
}

export interface ReadLine {
  text: string;
  confidence: number;
  quad: Quad;
  rotated180: boolean;
}

export interface ReadTextModels {
  detector: CatalogueModel;
  recognizer: CatalogueModel;
  directionClassifier?: CatalogueModel;
}

/** Quads found in a detector's map, in the original image's pixels. */
function linesOfMap(
  map: OutputTensor,
  prepared: PreparedImage,
  image: RgbImage,
  detector: CatalogueModel,
): Quad[] {
  const [mapHeight = 0, mapWidth = 0] = map.shape.slice(-2);
  const regions = findTextRegions(map.values, mapWidth, mapHeight, detector.config.textDetection!);
  // The map is the tensor's size; tensor pixels map back by the resize's scale.
  const sx = prepared.resized.width / mapWidth / prepared.scaleX;
  const sy = prepared.resized.height / mapHeight / prepared.scaleY;
  return regions.map(
    (r) =>
      r.quad.map(([x, y]) => [
        Math.min(image.width, Math.max(0, Math.round(x * sx))),
        Math.min(image.height, Math.max(0, Math.round(y * sy))),
      ]) as Quad,
  );
}

export async function readText(
  inference: GRPCInferenceServiceClient,
  models: ReadTextModels,
  images: RgbImage[],
  classifyDirection: boolean,
  ctx: CallContext,
): Promise<{ modelVersions: string[]; results: ReadLine[][][] }> {
  const tracer = trace.getTracer('maas-orchestrator');
  const { detector, recognizer, directionClassifier } = models;
  const prepared = await prepareAll(images, detector);
  const detected = await tracer.startActiveSpan('text-detection', (span) =>
    runBatches(
      inference,
      detector,
      prepared.map((p) => p.resized),
      ctx,
    ).finally(() => span.end()),
  );
  const modelVersions = [`${detector.name}:${detected.modelVersion}`];
  const output = detector.vision!.outputs[0]!;
  // Every line of every image, with the image it belongs to.
  const lines = images.flatMap((image, i) =>
    linesOfMap(detected.outputs[i]!.get(output)!, prepared[i]!, image, detector)
      .filter((quad) => {
        const w = Math.hypot(quad[1][0] - quad[0][0], quad[1][1] - quad[0][1]);
        const h = Math.hypot(quad[3][0] - quad[0][0], quad[3][1] - quad[0][1]);
        return w > 3 && h > 3;
      })
      .map((quad) => ({ image: i, quad, crop: cropQuad(image, quad), rotated180: false })),
  );
  if (lines.length > 0 && classifyDirection && directionClassifier) {
    const threshold = detector.config.textDetection!.directionThreshold;
    const direction = await classifyImages(
      inference,
      directionClassifier,
      lines.map((l) => l.crop),
      1,
      ctx,
    );
    modelVersions.push(`${directionClassifier.name}:${direction.modelVersion}`);
    direction.results.forEach(([best], i) => {
      if (best && best.label === '180' && best.score > threshold) {
        lines[i]!.crop = rotate(lines[i]!.crop, 180);
        lines[i]!.rotated180 = true;
      }
    });
  }
  const read: (ReadLine & { image: number })[] = [];
  if (lines.length > 0) {
    const crops = await prepareAll(
      lines.map((l) => l.crop),
      recognizer,
    );
    const resized = crops.map((c) => c.resized);
    const recognized = await tracer.startActiveSpan('text-recognition', (span) =>
      runBatches(inference, recognizer, resized, ctx, (a, b) => a.width - b.width).finally(() => span.end()),
    );
    modelVersions.push(`${recognizer.name}:${recognized.modelVersion}`);
    const [index, probability] = recognizer.vision!.outputs as [string, string];
    const minConfidence = detector.config.textDetection!.minLineConfidence;
    lines.forEach((line, i) => {
      const best = recognized.outputs[i]!.get(index)!;
      const [, steps = 0] = best.shape;
      const realSteps = ctcSteps(steps, resized[i]!.width, recognized.widths[i]!);
      const bestP = recognized.outputs[i]!.get(probability)!.values;
      const decoded = decodeBestPath(best.values, bestP, recognizer.vision!.charset!, realSteps);
      if (decoded.text.trim() && decoded.confidence >= minConfidence) {
        read.push({
          image: line.image,
          text: decoded.text,
          confidence: decoded.confidence,
          quad: line.quad,
          rotated180: line.rotated180,
        });
      }
    });
  }
  return {
    modelVersions,
    results: images.map((_, i) => readingOrder(read.filter((l) => l.image === i))),
  };
}
