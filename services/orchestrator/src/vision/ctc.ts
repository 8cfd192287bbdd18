/** Greedy CTC decoding of a text recognizer's output: best class per step, repeats merged, blanks dropped. */

export interface DecodedLine {
  text: string;
  /** Mean probability of the characters kept; 0 for an empty line. */
  confidence: number;
}

/**
 * One line from `probs` [steps, classes]; class 0 is the blank and class
 * i + 1 is charset[i]. Only the first `realSteps` steps are read (a line
 * padded to the batch's widest has fewer real steps). ReadText does not call
 * it: the runner serves each step's best class (ArgMax in the graph, the
 * first maximum as here) and the pipeline decodes that with decodeBestPath;
 * this is the same decoding from the distribution a client may still ask for,
 * and what the unit tests pin greedy decoding to.
 */
export function decodeCtc(
  probs: Float32Array,
  steps: number,
  classes: number,
  charset: string[],
  realSteps = steps,
): DecodedLine {
  const n = Math.min(steps, realSteps);
  const best = new Int32Array(n);
  const bestP = new Float32Array(n);
  for (let t = 0; t < n; t++) {
    const base = t * classes;
    bestP[t] = probs[base]!;
    for (let c = 1; c < classes; c++) {
      const p = probs[base + c]!;
      if (p > bestP[t]!) {
        bestP[t] = p;
        best[t] = c;
      }
    }
  }
  return decodeBestPath(best, bestP, charset);
}

/**
 * One line from each step's best class and its probability (what the runner
 * serves a recognizer's outputs as, or decodeCtc reads off the distribution),
 * first `realSteps` steps only.
 */
export function decodeBestPath(
  best: ArrayLike<number>,
  bestP: ArrayLike<number>,
  charset: string[],
  realSteps = best.length,
): DecodedLine {
  let text = '';
  let sum = 0;
  let kept = 0;
  let previous = -1;
  for (let t = 0; t < Math.min(best.length, realSteps); t++) {
    const c = best[t]!;
    if (c !== 0 && c !== previous) {
      text += charset[c - 1] ?? '';
      sum += bestP[t]!;
      kept++;
    }
    previous = c;
  }
  return { text, confidence: kept > 0 ? sum / kept : 0 };
}

/** Steps of a line padded from `width` to `batchWidth`: those past its right edge (plus one) read only padding. */
export const ctcSteps = (steps: number, width: number, batchWidth: number) =>
  Math.min(steps, Math.ceil((steps * width) / batchWidth) + 1);
