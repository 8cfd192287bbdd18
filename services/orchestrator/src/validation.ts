/** Request checks made before any downstream call, each naming the offending field. */
import { checkGenerationPriority, invalidArgument, parseUint64Field } from '@maas/shared';
import type { ObjectDetectionConfig } from '@maas/shared';
import type {
  DetectObjectsRequest,
  GenerateRequest,
  Image,
} from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import type { CatalogueModel, ModelLimits } from './catalogue.js';
import type { Principal } from './access/api-keys.js';

export function checkTexts(texts: string[], limits: ModelLimits, maxTexts = limits.maxBatchSize): void {
  if (texts.length === 0) throw invalidArgument('texts', 'must not be empty');
  if (texts.length > maxTexts) {
    throw invalidArgument('texts', `${texts.length} texts exceed the limit of ${maxTexts} per call`);
  }
  for (let i = 0; i < texts.length; i++) {
    const length = texts[i]!.length;
    if (length > limits.maxInputCharacters) {
      throw invalidArgument(
        `texts[${i}]`,
        `${length} characters exceed the limit of ${limits.maxInputCharacters}`,
      );
    }
  }
}

export interface StopLimits {
  maxStopStrings: number;
  maxStopStringCharacters: number;
}

/** How many images a call has; each image is checked as it is decoded (vision/image-input.ts). */
export function checkImageCount(images: Image[], maxImages: number): void {
  if (images.length === 0) throw invalidArgument('images', 'must not be empty');
  if (images.length > maxImages) {
    throw invalidArgument('images', `${images.length} images exceed the limit of ${maxImages}`);
  }
}

/** A DetectObjects call's parameters, unset ones from the model's config. */
export function checkDetection(
  request: DetectObjectsRequest,
  config: ObjectDetectionConfig,
): { scoreThreshold: number; iouThreshold: number; maxDetections: number } {
  const unit = (field: string, value: number | undefined, fallback: number) => {
    if (value === undefined) return fallback;
    if (!(value >= 0 && value <= 1)) throw invalidArgument(field, `is ${value}; it must be in [0, 1]`);
    return value;
  };
  return {
    scoreThreshold: unit('score_threshold', request.scoreThreshold, config.scoreThreshold),
    iouThreshold: unit('iou_threshold', request.iouThreshold, config.iouThreshold),
    maxDetections: Math.min(request.maxDetections || config.maxDetections, 1000),
  };
}

/** A Generate call's priority: the request's, else its key's default, else 0 (INVALID_ARGUMENT out of range). */
export function generationPriority(request: GenerateRequest, principal: Principal): number {
  return checkGenerationPriority(request.priority ?? principal.priority ?? 0);
}

export function checkGenerate(request: GenerateRequest, model: CatalogueModel, stopLimits: StopLimits): void {
  const { limits } = model;
  if (request.prompt.length === 0) throw invalidArgument('prompt', 'must not be empty');
  if (request.prompt.length > limits.maxInputCharacters) {
    throw invalidArgument(
      'prompt',
      `${request.prompt.length} characters exceed the limit of ${limits.maxInputCharacters}`,
    );
  }
  if (request.maxNewTokens > limits.maxNewTokens) {
    throw invalidArgument(
      'max_new_tokens',
      `must be at most ${limits.maxNewTokens} for model '${model.name}'`,
    );
  }
  const s = request.sampling;
  if (s) {
    if (s.temperature !== undefined && !(s.temperature >= 0 && s.temperature <= 2)) {
      throw invalidArgument('sampling.temperature', `must be in [0, 2], got ${s.temperature}`);
    }
    if (s.topP !== undefined && !(s.topP > 0 && s.topP <= 1)) {
      throw invalidArgument('sampling.top_p', `must be in (0, 1], got ${s.topP}`);
    }
    if (s.repetitionPenalty !== undefined && !(s.repetitionPenalty > 0 && s.repetitionPenalty <= 2)) {
      throw invalidArgument('sampling.repetition_penalty', `must be in (0, 2], got ${s.repetitionPenalty}`);
    }
    if (s.seed !== undefined) parseUint64Field(s.seed, 'sampling.seed');
    const vocab = model.config.generation?.vocabSize ?? Infinity;
    if (s.topK > vocab) {
      throw invalidArgument('sampling.top_k', `must be at most the vocabulary size ${vocab}, got ${s.topK}`);
    }
  }
  if (request.stop.length > stopLimits.maxStopStrings) {
    throw invalidArgument(
      'stop',
      `${request.stop.length} stop strings exceed the limit of ${stopLimits.maxStopStrings}`,
    );
  }
  request.stop.forEach((stop, i) => {
    if (stop.length === 0) throw invalidArgument(`stop[${i}]`, 'must not be empty');
    if (stop.length > stopLimits.maxStopStringCharacters) {
      throw invalidArgument(
        `stop[${i}]`,
        `${stop.length} characters exceed the limit of ${stopLimits.maxStopStringCharacters}`,
      );
    }
  });
}
