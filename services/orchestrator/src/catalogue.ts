/**
 * What models users can call, read from the same model repository the
 * tokenizer and the runner serve (so all three agree on names, tokenizers,
 * labels and limits), rescanned periodically. Readiness is the runner's to
 * say and is asked of it when models are listed.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  bestClassOutputs,
  IMAGE_TASKS,
  type ImagePreprocess,
  type ImageTask,
  type Logger,
  type ModelConfig,
  readLabels,
  type TensorSpec,
  scanRepository,
} from '@maas/shared';
import { ChatTemplate } from './pipelines/chat-template.js';

export type ModelTask = 'classification' | 'embedding' | 'generation' | ImageTask;

export const isImageTask = (task: ModelTask): task is ImageTask =>
  (IMAGE_TASKS as readonly string[]).includes(task);

/** How an image model is fed and read (image tasks only). */
export interface VisionSpec {
  preprocess: ImagePreprocess;
  /** The input the image tensor fills. */
  input: string;
  /** The outputs the task's post-processing reads. */
  outputs: string[];
  /** A text recognizer's characters: output class i + 1 is charset[i] (class 0 is CTC's blank). */
  charset?: string[];
}

export interface ModelLimits {
  maxBatchSize: number;
  maxInputTokens: number;
  maxInputCharacters: number;
  maxNewTokens: number;
}

/** Model inputs the encoder pipeline knows how to fill from an encoding. */
export const ENCODING_INPUTS = ['input_ids', 'attention_mask', 'token_type_ids'] as const;
export type EncodingInput = (typeof ENCODING_INPUTS)[number];

export interface CatalogueModel {
  name: string;
  task: ModelTask;
  description: string;
  config: ModelConfig;
  /** Versions the repository's policy selects, newest first. */
  versions: string[];
  /** Labels by version (classification). */
  labelsByVersion: Map<string, string[]>;
  dimensions: number;
  limits: ModelLimits;
  tokenizer: { name: string; addSpecialTokens: boolean; paddingSide: 'left' | 'right'; maxLength: number };
  /** The output the pipeline reads (classification/embedding). */
  output: string;
  /** The inputs sent to ModelInfer and their datatypes (classification/embedding). */
  inputs: { name: EncodingInput; datatype: 'INT64' | 'INT32' }[];
  /** Generation models that declare one: renders chat messages into a prompt. */
  chatTemplate?: ChatTemplate;
  /** Image models. */
  vision?: VisionSpec;
}

export interface CatalogueOptions {
  root: string;
  maxInputCharacters: number;
  logger: Logger;
}

/** The catalogue entry for one repository model, or why the orchestrator cannot serve it. */
export function toCatalogueModel(
  name: string,
  config: ModelConfig,
  versionDirs: { version: number; dir: string }[],
  maxInputCharacters: number,
): CatalogueModel | string {
  if (config.task === 'raw') return `${name}: task "raw" has no public API`;
  const task = config.task;
  const versions = versionDirs.map((v) => String(v.version));
  const tokenizerMax = config.tokenizer?.maxLength ?? Number.MAX_SAFE_INTEGER;
  const tokenizer = {
    name: config.tokenizer?.name ?? name,
    addSpecialTokens: config.tokenizer?.addSpecialTokens ?? task !== 'generation',
    paddingSide: config.tokenizer?.paddingSide ?? 'right',
    maxLength: tokenizerMax,
  };
  const base = {
    name,
    task,
    description: config.description,
    config,
    versions,
    labelsByVersion: new Map<string, string[]>(),
    dimensions: 0,
    tokenizer,
    output: '',
    inputs: [] as CatalogueModel['inputs'],
  };
  if (isImageTask(task)) return toVisionModel(base, config, versionDirs);
  if (task === 'generation') {
    const g = config.generation!;
    const maxInputTokens = Math.min(tokenizerMax, g.maxContextLength - 1);
    let chatTemplate: ChatTemplate | undefined;
    if (g.chatTemplate !== undefined) {
      try {
        chatTemplate = new ChatTemplate(g.chatTemplate, g);
      } catch (error) {
        return `${name}: generation.chatTemplate does not parse: ${(error as Error).message}`;
      }
    }
    return {
      ...base,
      chatTemplate,
      limits: {
        maxBatchSize: 1,
        maxInputTokens,
        maxInputCharacters,
        maxNewTokens: g.maxContextLength - 1,
      },
    };
  }
  const inputs: CatalogueModel['inputs'] = [];
  for (const spec of config.inputs) {
    const known = (ENCODING_INPUTS as readonly string[]).includes(spec.name);
    if (known && (spec.datatype === 'INT64' || spec.datatype === 'INT32')) {
      inputs.push({ name: spec.name as EncodingInput, datatype: spec.datatype });
    } else if (!spec.optional) {
      return `${name}: input '${spec.name}' (${spec.datatype}) cannot be filled from a tokenizer encoding`;
    }
  }
  if (!inputs.some((i) => i.name === 'input_ids')) return `${name}: has no input_ids input`;
  let outputSpec: TensorSpec;
  try {
    outputSpec = fp32Output(
      config,
      'output',
      task === 'classification' ? config.classification?.output : config.embedding?.output,
    );
  } catch (error) {
    return `${name}: ${(error as Error).message}`;
  }
  const outputName = outputSpec.name;
  const limits = {
    maxBatchSize: Math.max(1, config.maxBatchSize),
    maxInputTokens: tokenizerMax,
    maxInputCharacters,
    maxNewTokens: 0,
  };
  let dimensions = 0;
  if (task === 'embedding') {
    const pooling = config.embedding?.pooling ?? 'mean';
    const expected = pooling === 'none' ? 1 : 2;
    if (outputSpec.dims.length !== expected) {
      return `${name}: pooling '${pooling}' needs an output of ${expected} dims besides the batch, '${outputName}' has [${outputSpec.dims.join(', ')}]`;
    }
    dimensions = Math.max(0, outputSpec.dims[outputSpec.dims.length - 1]!);
  }
  const labelsByVersion = new Map<string, string[]>();
  if (task === 'classification') {
    for (const v of versionDirs) {
      try {
        const labels = readLabels(config, v.dir);
        if (labels) labelsByVersion.set(String(v.version), labels);
      } catch (error) {
        return `${name}: version ${v.version}: cannot read labels: ${(error as Error).message}`;
      }
    }
  }
  return { ...base, limits, dimensions, labelsByVersion, output: outputName, inputs };
}

/** The output a task reads (`chosen`, else the model's first), which must exist and be FP32; throws naming `field`. */
function fp32Output(config: ModelConfig, field: string, chosen: string | undefined): TensorSpec {
  const outputName = chosen ?? config.outputs[0]!.name;
  const spec = config.outputs.find((o) => o.name === outputName);
  if (!spec) throw new Error(`${field} '${outputName}' is not among the model's outputs`);
  if (spec.datatype !== 'FP32') throw new Error(`${field} '${outputName}' must be FP32`);
  return spec;
}

/** The catalogue entry of an image model, or why it cannot be served. */
function toVisionModel(
  base: Omit<CatalogueModel, 'limits'>,
  config: ModelConfig,
  versionDirs: { version: number; dir: string }[],
): CatalogueModel | string {
  const { name, task } = base;
  const preprocess = config.image!;
  const inputName = preprocess.input ?? config.inputs[0]!.name;
  const input = config.inputs.find((i) => i.name === inputName);
  if (!input) return `${name}: image.input '${inputName}' is not among the model's inputs`;
  if (input.datatype !== preprocess.datatype) {
    return `${name}: input '${inputName}' is ${input.datatype}, image.datatype says ${preprocess.datatype}`;
  }
  const dims = config.maxBatchSize > 0 ? input.dims : input.dims.slice(1);
  if (dims.length !== 3) {
    return `${name}: input '${inputName}' needs 3 dims besides the batch (channels, height, width), has [${input.dims.join(', ')}]`;
  }
  const channels = preprocess.layout === 'nchw' ? dims[0] : dims[2];
  if (channels !== 3 && channels !== -1) return `${name}: input '${inputName}' must have 3 channels`;
  const outputOf = (field: string, chosen: string | undefined) => fp32Output(config, field, chosen).name;
  const labelsByVersion = new Map<string, string[]>();
  let outputs: string[];
  let charset: string[] | undefined;
  try {
    if (task === 'object_detection') {
      const d = config.objectDetection!;
      if (d.format === 'nanodet' && !d.heads) {
        throw new Error('objectDetection.heads: required for format "nanodet"');
      }
      outputs =
        d.format === 'yolov8'
          ? [outputOf('objectDetection.output', d.output)]
          : d.format === 'nanodet'
            ? d.heads!.flatMap((h, i) => [
                outputOf(`objectDetection.heads.${i}.scoresOutput`, h.scoresOutput),
                outputOf(`objectDetection.heads.${i}.distributionOutput`, h.distributionOutput),
              ])
            : [
                outputOf('objectDetection.boxesOutput', d.boxesOutput),
                outputOf('objectDetection.scoresOutput', d.scoresOutput ?? config.outputs[1]?.name),
              ];
    } else if (task === 'image_classification') {
      outputs = [outputOf('classification.output', config.classification?.output)];
    } else if (task === 'text_recognition') {
      // The best class per step and its probability, which the runner adds to a recognizer's outputs.
      const { index, probability } = bestClassOutputs(outputOf('outputs', undefined));
      outputs = [index, probability];
    } else {
      outputs = [outputOf('outputs', undefined)];
    }
    if (task === 'image_classification' || task === 'object_detection') {
      for (const v of versionDirs) {
        const labels = readLabels(config, v.dir);
        if (labels) labelsByVersion.set(String(v.version), labels);
      }
    }
    if (task === 'text_recognition') {
      // The newest version's: a recognizer's characters are its output classes.
      const dir = versionDirs[0]?.dir;
      if (dir) {
        const lines = readFileSync(join(dir, config.textRecognition!.charset), 'utf8').split('\n');
        if (lines.at(-1) === '') lines.pop();
        charset = config.textRecognition!.appendSpace ? [...lines, ' '] : lines;
      }
    }
  } catch (error) {
    return `${name}: ${(error as Error).message}`;
  }
  return {
    ...base,
    labelsByVersion,
    limits: {
      maxBatchSize: Math.max(1, config.maxBatchSize),
      maxInputTokens: 0,
      maxInputCharacters: 0,
      maxNewTokens: 0,
    },
    vision: { preprocess, input: inputName, outputs, charset },
  };
}

/** Everything an entry is made of, so a rescan can tell an unchanged model from a changed one. */
const fingerprint = (model: CatalogueModel) =>
  JSON.stringify(model, (_key, value: unknown) => (value instanceof Map ? [...value] : value));

export class ModelCatalogue {
  private models = new Map<string, CatalogueModel>();
  private fingerprints = new Map<string, string>();
  private problems = new Map<string, string>();
  private timer: NodeJS.Timeout | undefined;
  private readonly listeners: (() => void)[] = [];

  constructor(private readonly options: CatalogueOptions) {}

  get(name: string): CatalogueModel | undefined {
    return this.models.get(name);
  }

  /** Why a model in the repository cannot be served, if that is the case. */
  problem(name: string): string | undefined {
    return this.problems.get(name);
  }

  list(): CatalogueModel[] {
    return [...this.models.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  /** Called after a rescan that added, changed or removed a model. */
  onChange(listener: () => void): void {
    this.listeners.push(listener);
  }

  /**
   * Rescans the repository; on failure the previous catalogue stays. An
   * entry whose model did not change keeps its identity, so what is built
   * per entry (a model's micro-batcher, with its queue and service-time
   * estimate) lives as long as the model does.
   */
  refresh(): void {
    const { root, maxInputCharacters, logger } = this.options;
    let scanned;
    try {
      scanned = scanRepository(root);
    } catch (error) {
      logger.error({ err: error, root }, 'cannot scan the model repository; keeping the previous catalogue');
      return;
    }
    const models = new Map<string, CatalogueModel>();
    const fingerprints = new Map<string, string>();
    const problems = new Map<string, string>();
    for (const model of scanned) {
      if (!model.config) {
        problems.set(model.name, model.error ?? 'invalid config');
        continue;
      }
      const name = model.config.name ?? model.name;
      const entry = toCatalogueModel(name, model.config, model.versions, maxInputCharacters);
      if (typeof entry === 'string') problems.set(name, entry);
      else if (model.versions.length === 0) problems.set(name, model.error ?? `${name}: no version`);
      else {
        const print = fingerprint(entry);
        const previous = this.models.get(name);
        models.set(name, previous && this.fingerprints.get(name) === print ? previous : entry);
        fingerprints.set(name, print);
      }
    }
    for (const [name, problem] of problems) {
      if (this.problems.get(name) !== problem) logger.warn({ model: name, problem }, 'model not served');
    }
    const changed =
      models.size !== this.models.size || [...models].some(([name, m]) => this.models.get(name) !== m);
    this.models = models;
    this.fingerprints = fingerprints;
    this.problems = problems;
    if (changed) for (const listener of this.listeners) listener();
  }

  watch(intervalMs: number): void {
    if (intervalMs <= 0) return;
    this.timer = setInterval(() => this.refresh(), intervalMs);
    this.timer.unref();
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
  }
}
