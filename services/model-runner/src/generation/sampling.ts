/**
 * Next-token choice: repetition penalty, then greedy or temperature with
 * top-k and top-p. Each sequence has its own seeded generator, so the same
 * seed and prompt give the same tokens whatever else shares the batch.
 */
export interface SamplingOptions {
  temperature?: number;
  topK?: number;
  topP?: number;
  repetitionPenalty?: number;
  seed?: number;
}

/** mulberry32: small, fast, and reproducible from a 32-bit seed. */
export class SequenceRandom {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
}

export function sampleToken(
  logits: Float32Array,
  options: SamplingOptions,
  seen: Set<number>,
  random: SequenceRandom,
): number {
  const penalty = options.repetitionPenalty ?? 1;
  if (penalty !== 1) {
    // CTRL-style: make seen tokens less likely whatever the sign of their logit.
    for (const id of seen) {
      const v = logits[id]!;
      logits[id] = v > 0 ? v / penalty : v * penalty;
    }
  }
  const temperature = options.temperature ?? 0;
  if (temperature <= 0 || options.topK === 1) return argmax(logits);

  const vocab = logits.length;
  const topK = options.topK && options.topK > 0 ? Math.min(options.topK, vocab) : vocab;
  // Candidates: indices sorted by logit, best first (only the top k are fully ordered).
  const candidates = topIndices(logits, topK);
  const max = logits[candidates[0]!]!;
  const weights = new Float64Array(candidates.length);
  let sum = 0;
  for (let i = 0; i < candidates.length; i++) {
    const w = Math.exp((logits[candidates[i]!]! - max) / temperature);
    weights[i] = w;
    sum += w;
  }
  let keep = candidates.length;
  const topP = options.topP ?? 1;
  if (topP < 1) {
    let cumulative = 0;
    for (let i = 0; i < candidates.length; i++) {
      cumulative += weights[i]! / sum;
      if (cumulative >= topP) {
        keep = i + 1;
        break;
      }
    }
    sum = 0;
    for (let i = 0; i < keep; i++) sum += weights[i]!;
  }
  let r = random.next() * sum;
  for (let i = 0; i < keep; i++) {
    r -= weights[i]!;
    if (r <= 0) return candidates[i]!;
  }
  return candidates[keep - 1]!;
}

export function argmax(values: Float32Array): number {
  let best = 0;
  let bestValue = values[0]!;
  for (let i = 1; i < values.length; i++) {
    if (values[i]! > bestValue) {
      bestValue = values[i]!;
      best = i;
    }
  }
  return best;
}

/** The k largest entries' indices in descending order: selection by threshold, then a sort of only those. */
export function topIndices(values: Float32Array, k: number): number[] {
  if (k >= values.length) {
    return Array.from(values.keys()).sort((a, b) => values[b]! - values[a]! || a - b);
  }
  // Keep a small sorted buffer of the best k (k is usually ≤ 100).
  const best: number[] = [];
  let threshold = -Infinity;
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (best.length < k || v > threshold) {
      let pos = best.length;
      while (pos > 0 && values[best[pos - 1]!]! < v) pos--;
      best.splice(pos, 0, i);
      if (best.length > k) best.pop();
      threshold = values[best[best.length - 1]!]!;
    }
  }
  return best;
}
