/**
 * Next-token choice, in Hugging Face's order: repetition penalty, then greedy
 * or temperature → top-k → top-p, then a draw from the sequence's own seeded
 * generator, so the same seed and prompt give the same tokens whatever else
 * shares the batch.
 *
 * This runs on the event loop once per sequence per decode step over 4k–50k
 * logits, so every path is O(vocab) on reusable typed arrays: top-k is a heap
 * of k, top-p sorts only the tokens of the few highest probability octaves
 * that already hold top_p of the mass, and plain temperature sampling sorts
 * nothing.
 */
export interface SamplingOptions {
  /** 0 or unset: greedy. */
  temperature?: number;
  /** 0 or unset: no limit. */
  topK?: number;
  /** Unset or 1: no limit. */
  topP?: number;
  /** Unset or 1: none. */
  repetitionPenalty?: number;
  /** Up to 2^64 − 1 (only integers up to 2^53 are exact in a JS number). Unset: a random seed. */
  seed?: number | bigint;
}

const TWO_POW_32 = 4294967296;

function splitmix32(state: number): [value: number, state: number] {
  const next = (state + 0x9e3779b9) | 0;
  let z = next;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return [(z ^ (z >>> 16)) >>> 0, next];
}

/**
 * xoshiro128**: 128 bits of state seeded through splitmix32 from both 32-bit
 * halves of a 64-bit seed, so seeds that differ only above bit 32 still give
 * different streams.
 */
export class SequenceRandom {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number | bigint) {
    const big = BigInt.asUintN(64, typeof seed === 'bigint' ? seed : BigInt(Math.trunc(seed)));
    let state = Number(big & 0xffffffffn) | 0;
    const high = Number(big >> 32n) | 0;
    const words: number[] = [];
    for (let i = 0; i < 4; i++) {
      let word: number;
      // The high half enters halfway, so both halves shape the whole state.
      [word, state] = splitmix32(i === 2 ? state ^ high : state);
      words.push(word);
    }
    const [a, b, c, d] = words as [number, number, number, number];
    // The all-zero state is xoshiro's one fixed point.
    this.a = (a | b | c | d) === 0 ? 1 : a;
    this.b = b;
    this.c = c;
    this.d = d;
  }

  /** Uniform in [0, 1). */
  next(): number {
    const result = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return result / TWO_POW_32;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

export function randomSeed(): number {
  return Math.floor(Math.random() * 2 ** 53);
}

export function isGreedy(options: SamplingOptions): boolean {
  return !(options.temperature !== undefined && options.temperature > 0) || options.topK === 1;
}

/** Index of the largest value; the lowest index wins ties. */
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

/** Probability octaves tracked for top-p; weights below 2^-OCTAVES of the best share the last one. */
const OCTAVES = 64;
/** Linear slices of the octave where top-p's cut falls. */
const SLICES = 256;

// Hot loops use these module bindings, not `Math.*`: a global lookup per
// element is slow where the global object is intercepted (jest's vm realm).
const { exp, floor, min, max, LOG2E } = Math;

/**
 * Chooses tokens from logits. Holds scratch buffers sized to the vocabulary, so
 * one sampler serves every sequence of an engine (calls are synchronous).
 */
export class TokenSampler {
  private readonly logits: Float32Array;
  /** Candidate token ids; the first `count` are live. */
  private readonly candidates: Int32Array;
  private readonly weights: Float64Array;
  /** Per candidate: its octave, then (boundary octave only) OCTAVES + 1 + its slice. */
  private readonly bucketOf: Uint16Array;
  private readonly octaveMass = new Float64Array(OCTAVES + 1);
  private readonly sliceMass = new Float64Array(SLICES);
  private readonly nucleus: Int32Array;

  constructor(readonly vocabSize: number) {
    this.logits = new Float32Array(vocabSize);
    this.candidates = new Int32Array(vocabSize);
    this.weights = new Float64Array(vocabSize);
    this.bucketOf = new Uint16Array(vocabSize);
    this.nucleus = new Int32Array(vocabSize);
  }

  /**
   * The next token for one sequence. `source` is that sequence's logits row
   * (left untouched); `seen` the ids of its prompt and output so far.
   */
  sample(
    source: Float32Array,
    options: SamplingOptions,
    seen: ReadonlySet<number>,
    random: SequenceRandom,
  ): number {
    const logits = this.logits;
    logits.set(source.subarray(0, this.vocabSize));
    const penalty = options.repetitionPenalty ?? 1;
    if (penalty !== 1) {
      // CTRL-style: a seen token becomes less likely whatever the sign of its logit.
      for (const id of seen) {
        if (id < 0 || id >= this.vocabSize) continue;
        const v = logits[id]!;
        logits[id] = v > 0 ? v / penalty : v * penalty;
      }
    }
    if (isGreedy(options)) return argmax(logits);
    const temperature = options.temperature!;
    const topK = options.topK && options.topK > 0 ? Math.min(options.topK, this.vocabSize) : this.vocabSize;
    const count = topK < this.vocabSize ? this.selectTopK(topK) : this.selectAll();

    const { candidates, weights } = this;
    let best = logits[candidates[0]!]!;
    for (let i = 1; i < count; i++) best = max(best, logits[candidates[i]!]!);
    let total = 0;
    for (let i = 0; i < count; i++) {
      const w = exp((logits[candidates[i]!]! - best) / temperature);
      weights[i] = w;
      total += w;
    }
    const topP = options.topP ?? 1;
    if (topP < 1) return this.sampleNucleus(count, total, topP, best, temperature, random);

    let r = random.next() * total;
    for (let i = 0; i < count; i++) {
      r -= weights[i]!;
      if (r < 0) return candidates[i]!;
    }
    // Rounding left r ≥ 0 after the last weight: the last candidate with any weight.
    for (let i = count - 1; i >= 0; i--) if (weights[i]! > 0) return candidates[i]!;
    return candidates[0]!;
  }

  private selectAll(): number {
    const { candidates } = this;
    for (let i = 0; i < this.vocabSize; i++) candidates[i] = i;
    return this.vocabSize;
  }

  /** Puts the k best token ids (higher logit, then lower id) in candidates[0..k), as a min-heap. */
  private selectTopK(k: number): number {
    const { logits, candidates: heap } = this;
    // a is worse than b: lower logit, or the same logit and a higher id.
    const worse = (a: number, b: number) => logits[a]! < logits[b]! || (logits[a] === logits[b] && a > b);
    const siftDown = (at: number, size: number) => {
      for (;;) {
        const left = 2 * at + 1;
        if (left >= size) return;
        const right = left + 1;
        const child = right < size && worse(heap[right]!, heap[left]!) ? right : left;
        if (!worse(heap[child]!, heap[at]!)) return;
        const tmp = heap[at]!;
        heap[at] = heap[child]!;
        heap[child] = tmp;
        at = child;
      }
    };
    for (let i = 0; i < k; i++) heap[i] = i;
    for (let i = (k >> 1) - 1; i >= 0; i--) siftDown(i, k);
    for (let id = k; id < this.vocabSize; id++) {
      // Most ids lose to the heap's worst; this test is the O(vocab) part.
      if (worse(heap[0]!, id)) {
        heap[0] = id;
        siftDown(0, k);
      }
    }
    return k;
  }

  /**
   * Top-p over candidates[0..count) with their weights: the smallest set of
   * most likely tokens holding top_p of the mass. No full sort: weights are
   * bucketed by octave below the best (w in (2^-(o+1), 2^-o]); the octaves
   * before the one where the cumulative mass reaches top_p are wholly in the
   * nucleus, in any order. That boundary octave is split again into linear
   * slices by weight, and only the tokens of the boundary slice are sorted to
   * find the cut. Flat distributions, whose nucleus is most of the
   * vocabulary, stay O(vocab) this way.
   */
  private sampleNucleus(
    count: number,
    total: number,
    topP: number,
    best: number,
    temperature: number,
    random: SequenceRandom,
  ): number {
    const { logits, candidates, weights, bucketOf, octaveMass, sliceMass, nucleus } = this;
    octaveMass.fill(0);
    const perOctave = LOG2E / temperature;
    for (let i = 0; i < count; i++) {
      const o = min(OCTAVES, floor((best - logits[candidates[i]!]!) * perOctave));
      bucketOf[i] = o;
      octaveMass[o]! += weights[i]!;
    }
    const target = topP * total;
    let octave = 0;
    let before = 0;
    while (octave < OCTAVES && before + octaveMass[octave]! < target) before += octaveMass[octave++]!;

    // Slices of the boundary octave, heaviest first: weights in (low, high].
    const high = 2 ** -octave;
    const low = octave === OCTAVES ? 0 : high / 2;
    const perSlice = SLICES / (high - low);
    sliceMass.fill(0);
    let size = 0;
    for (let i = 0; i < count; i++) {
      if (bucketOf[i]! < octave) nucleus[size++] = i;
      else if (bucketOf[i] === octave) {
        const slice = min(SLICES - 1, max(0, floor((high - weights[i]!) * perSlice)));
        bucketOf[i] = OCTAVES + 1 + slice;
        sliceMass[slice]! += weights[i]!;
      }
    }
    let slice = 0;
    while (slice < SLICES - 1 && before + sliceMass[slice]! < target) before += sliceMass[slice++]!;
    for (let i = 0; i < count; i++) {
      const b = bucketOf[i]! - OCTAVES - 1;
      if (b >= 0 && b < slice) nucleus[size++] = i;
    }
    let kept = before;
    const boundary = size;
    for (let i = 0; i < count; i++) if (bucketOf[i] === OCTAVES + 1 + slice) nucleus[size++] = i;
    nucleus
      .subarray(boundary, size)
      .sort((a, b) => weights[b]! - weights[a]! || candidates[a]! - candidates[b]!);
    let keep = size;
    for (let i = boundary; i < size; i++) {
      kept += weights[nucleus[i]!]!;
      if (kept >= target) {
        keep = i + 1;
        break;
      }
    }
    let r = random.next() * kept;
    for (let i = 0; i < keep; i++) {
      r -= weights[nucleus[i]!]!;
      if (r < 0) return candidates[nucleus[i]!]!;
    }
    return candidates[nucleus[keep - 1]!]!;
  }
}
