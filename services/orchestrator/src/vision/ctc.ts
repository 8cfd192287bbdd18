/** Greedy CTC decoding of a text recognizer's output: best class per step, repeats merged, blanks dropped. */

export interface DecodedLine {
  text: string;
  /** Mean probability of the characters kept; 0 for an empty line. */
  confidence: number;
}

/**
 * One line from `probs` [steps, classes]; class 0 is the blank and class
 * i + 1 is charset[i]. Only the first `realSteps` steps are read (a line
 * padded to the batch's widest has fewer real steps).
 */
export function decodeCtc(
  probs: Float32Array,
  steps: number,
  classes: number,
  charset: string[],
  realSteps = steps,
): DecodedLine {
  let text = '';
  let sum = 0;
  let kept = 0;
  let previous = -1;
  for (let t = 0; t < Math.min(steps, realSteps); t++) {
    const base = t * classes;
    let best = 0;
    let bestP = probs[base]!;
    for (let c = 1; c < classes; c++) {
      const p = probs[base + c]!;
      if (p > bestP) {
        bestP = p;
        best = c;
      }
    }
    if (best !== 0 && best !== previous) {
      text += charset[best - 1] ?? '';
      sum += bestP;
      kept++;
    }
    previous = best;
  }
  return { text, confidence: kept > 0 ? sum / kept : 0 };
}

/** Steps of a line padded from `width` to `batchWidth`: those past its right edge (plus one) read only padding. */
export const ctcSteps = (steps: number, width: number, batchWidth: number) =>
  Math.min(steps, Math.ceil((steps * width) / batchWidth) + 1);
