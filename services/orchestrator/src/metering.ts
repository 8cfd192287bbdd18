/**
 * Usage metering: what each key used, as Prometheus counters (for billing
 * and dashboards) and as one audit log line per request (for disputes).
 */
import { codeName, type Logger } from '@maas/shared';
import { Counter, type Registry } from 'prom-client';

export type Task =
  | 'classification'
  | 'embedding'
  | 'generation'
  | 'tokenize'
  | 'count_tokens'
  | 'models'
  | 'image_classification'
  | 'object_detection'
  | 'read_text';

export interface UsageRecord {
  keyId: string;
  model: string;
  task: Task;
  code: number;
  promptTokens: number;
  /** Of the prompt tokens, those a generation model's prefix cache held (not prefilled again). */
  cachedPromptTokens?: number;
  generatedTokens: number;
  durationMs: number;
  /** Image calls: images and their pixels (width × height). */
  images?: number;
  pixels?: number;
  /** Logged only with AUDIT_LOG_TEXT=true. */
  texts?: readonly string[];
  /** Short reason for a failure (never a stack). */
  error?: string;
}

/** Bounds of what one audit line may hold: a caller's 1 MB field must not become a 1 MB log line. */
export const AUDIT_LIMITS = { errorCharacters: 512, texts: 16, textCharacters: 1024 };

const bounded = (text: string, max: number) =>
  text.length <= max ? text : `${text.slice(0, max)}… (${text.length} characters)`;

function boundedTexts(texts: readonly string[]): string[] {
  const kept = texts.slice(0, AUDIT_LIMITS.texts).map((t) => bounded(t, AUDIT_LIMITS.textCharacters));
  if (texts.length > AUDIT_LIMITS.texts) kept.push(`… (${texts.length} texts)`);
  return kept;
}

export function createUsageMetrics(registry: Registry) {
  return {
    requests: new Counter({
      name: 'maas_usage_requests_total',
      help: 'Requests to the public API by key, model, task and status code.',
      labelNames: ['key_id', 'model', 'task', 'code'] as const,
      registers: [registry],
    }),
    promptTokens: new Counter({
      name: 'maas_usage_prompt_tokens_total',
      help: 'Input tokens by key, model and task.',
      labelNames: ['key_id', 'model', 'task'] as const,
      registers: [registry],
    }),
    cachedPromptTokens: new Counter({
      name: 'maas_usage_cached_prompt_tokens_total',
      help: "Of the input tokens, those a generation model's prefix cache held (OpenAI's cached_tokens), by key, model and task.",
      labelNames: ['key_id', 'model', 'task'] as const,
      registers: [registry],
    }),
    generatedTokens: new Counter({
      name: 'maas_usage_generated_tokens_total',
      help: 'Generated tokens by key, model and task.',
      labelNames: ['key_id', 'model', 'task'] as const,
      registers: [registry],
    }),
    images: new Counter({
      name: 'maas_usage_images_total',
      help: 'Images by key, model and task.',
      labelNames: ['key_id', 'model', 'task'] as const,
      registers: [registry],
    }),
    pixels: new Counter({
      name: 'maas_usage_image_pixels_total',
      help: 'Image pixels (width × height) by key, model and task.',
      labelNames: ['key_id', 'model', 'task'] as const,
      registers: [registry],
    }),
  };
}
export type UsageMetrics = ReturnType<typeof createUsageMetrics>;

export class UsageMeter {
  constructor(
    private readonly metrics: UsageMetrics,
    private readonly audit: Logger,
    private readonly logText: boolean,
  ) {}

  record(usage: UsageRecord): void {
    const code = codeName(usage.code);
    const labels = { key_id: usage.keyId, model: usage.model, task: usage.task };
    this.metrics.requests.inc({ ...labels, code });
    if (usage.promptTokens > 0) this.metrics.promptTokens.inc(labels, usage.promptTokens);
    if (usage.cachedPromptTokens) this.metrics.cachedPromptTokens.inc(labels, usage.cachedPromptTokens);
    if (usage.generatedTokens > 0) this.metrics.generatedTokens.inc(labels, usage.generatedTokens);
    if (usage.images) this.metrics.images.inc(labels, usage.images);
    if (usage.pixels) this.metrics.pixels.inc(labels, usage.pixels);
    this.audit.info(
      {
        audit: true,
        key_id: usage.keyId,
        model: usage.model,
        task: usage.task,
        code,
        prompt_tokens: usage.promptTokens,
        ...(usage.cachedPromptTokens ? { cached_prompt_tokens: usage.cachedPromptTokens } : {}),
        generated_tokens: usage.generatedTokens,
        ...(usage.images ? { images: usage.images, pixels: usage.pixels } : {}),
        duration_ms: Math.round(usage.durationMs * 1000) / 1000,
        ...(usage.error ? { error: bounded(usage.error, AUDIT_LIMITS.errorCharacters) } : {}),
        ...(this.logText && usage.texts ? { texts: boundedTexts(usage.texts) } : {}),
      },
      'request',
    );
  }
}
