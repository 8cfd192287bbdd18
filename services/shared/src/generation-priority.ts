/**
 * Generation priority, one meaning in every service: among a model's waiting
 * streams, lower is admitted first (vLLM's convention), 0 by default. The
 * range is bounded so that aging (a waiting stream gains a level per the
 * model's `generation.priorityAgingMs`) brings any stream to the front in
 * bounded time: 200 levels at most.
 */
import { invalidArgument } from './errors.js';

export const MIN_GENERATION_PRIORITY = -100;
export const MAX_GENERATION_PRIORITY = 100;

/** The priority, or INVALID_ARGUMENT naming `field` when it is not an integer in range. */
export function checkGenerationPriority(value: number, field = 'priority'): number {
  if (!Number.isInteger(value) || value < MIN_GENERATION_PRIORITY || value > MAX_GENERATION_PRIORITY) {
    throw invalidArgument(
      field,
      `${value} is outside ${MIN_GENERATION_PRIORITY}..${MAX_GENERATION_PRIORITY} (lower is admitted first)`,
    );
  }
  return value;
}
