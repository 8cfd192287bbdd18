import { argmax, SequenceRandom, TokenSampler } from '../src/generation/index';

/** Logits drawn from a seeded normal: a peaked, realistic-looking distribution. */
function randomLogits(vocab: number, seed: number, scale = 3): Float32Array {
  const r = new SequenceRandom(seed);
  const out = new Float32Array(vocab);
  for (let i = 0; i < vocab; i++) {
    const u = Math.max(r.next(), 1e-12);
    out[i] = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r.next()) * scale;
  }
  return out;
}

/** Softmax at a temperature, in float64. */
function softmax(logits: Float32Array, temperature: number): Float64Array {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  const p = Float64Array.from(logits, (v) => Math.exp((v - max) / temperature));
  const sum = p.reduce((a, b) => a + b, 0);
  return p.map((v) => v / sum);
}

/** The top-p nucleus by a full sort: the reference the sampler's partial selection must match. */
function nucleusBySort(probs: Float64Array, topP: number): Set<number> {
  const order = Array.from(probs.keys()).sort((a, b) => probs[b]! - probs[a]! || a - b);
  const kept = new Set<number>();
  let cumulative = 0;
  for (const id of order) {
    kept.add(id);
    cumulative += probs[id]!;
    if (cumulative >= topP) break;
  }
  return kept;
}

function draw(
  sampler: TokenSampler,
  logits: Float32Array,
  options: object,
  n: number,
  seed = 1,
  seen: Set<number> = new Set(),
): number[] {
  const random = new SequenceRandom(seed);
  return Array.from({ length: n }, () => sampler.sample(logits, options, seen, random));
}

describe('SequenceRandom', () => {
  it('is reproducible for a seed, differs across seeds, and uses all 64 bits of the seed', () => {
    const take = (seed: number | bigint) => {
      const r = new SequenceRandom(seed);
      return Array.from({ length: 8 }, () => r.next());
    };
    expect(take(42)).toEqual(take(42));
    expect(take(42)).toEqual(take(42n));
    expect(take(42)).not.toEqual(take(43));
    expect(take(5n)).not.toEqual(take(5n + (1n << 32n)));
    expect(take(0)).not.toEqual(take(2 ** 53 - 1));
  });

  it('is uniform on [0, 1)', () => {
    const r = new SequenceRandom(9);
    const bins = new Array<number>(10).fill(0);
    let outside = 0;
    for (let i = 0; i < 100_000; i++) {
      const v = r.next();
      if (!(v >= 0 && v < 1)) outside++;
      else bins[Math.floor(v * 10)]!++;
    }
    expect(outside).toBe(0);
    for (const b of bins) expect(Math.abs(b - 10_000)).toBeLessThan(500);
  });
});

describe('TokenSampler', () => {
  const vocab = 4096;
  const sampler = new TokenSampler(vocab);

  it('is greedy without a temperature, and with top_k = 1 at any temperature', () => {
    for (let seed = 0; seed < 20; seed++) {
      const logits = randomLogits(vocab, seed);
      const best = argmax(logits);
      expect(draw(sampler, logits, {}, 3, seed)).toEqual([best, best, best]);
      expect(draw(sampler, logits, { temperature: 0 }, 1, seed)).toEqual([best]);
      expect(draw(sampler, logits, { temperature: 2, topK: 1 }, 5, seed)).toEqual(new Array(5).fill(best));
    }
  });

  it('breaks greedy ties towards the lowest id and leaves the logits untouched', () => {
    const logits = new Float32Array(vocab).fill(-1);
    logits[300] = 5;
    logits[7] = 5;
    const copy = logits.slice();
    expect(draw(sampler, logits, {}, 1)).toEqual([7]);
    draw(sampler, logits, { temperature: 1, topP: 0.5, repetitionPenalty: 1.5 }, 3, 1, new Set([7]));
    expect(logits).toEqual(copy);
  });

  it('samples the softmax at the temperature', () => {
    // Four live tokens with probabilities 0.1, 0.2, 0.3, 0.4 at temperature 1.
    // A small vocabulary: the distribution is the point here, and 20k draws stay quick.
    const small = new TokenSampler(64);
    const logits = new Float32Array(64).fill(-30);
    [0.1, 0.2, 0.3, 0.4].forEach((p, i) => (logits[i * 10] = Math.log(p)));
    const n = 10_000;
    const counts = new Map<number, number>();
    for (const t of draw(small, logits, { temperature: 1 }, n, 3)) counts.set(t, (counts.get(t) ?? 0) + 1);
    expect([...counts.keys()].sort((a, b) => a - b)).toEqual([0, 10, 20, 30]);
    [0.1, 0.2, 0.3, 0.4].forEach((p, i) => expect(Math.abs(counts.get(i * 10)! / n - p)).toBeLessThan(0.015));
    // A higher temperature flattens the distribution.
    const hot = draw(small, logits, { temperature: 2 }, n, 3).filter((t) => t === 0).length / n;
    expect(hot).toBeGreaterThan(0.15);
  });

  it('top_k keeps exactly the k most likely tokens', () => {
    const logits = randomLogits(vocab, 5, 1);
    const top = new Set(
      Array.from(logits.keys())
        .sort((a, b) => logits[b]! - logits[a]!)
        .slice(0, 20),
    );
    const drawn = new Set(draw(sampler, logits, { temperature: 5, topK: 20 }, 4000, 5));
    expect([...drawn].every((t) => top.has(t))).toBe(true);
    expect(drawn.size).toBe(20);
  });

  it('top_p keeps the nucleus a full sort gives, for peaked and flat distributions', () => {
    for (const [scale, topP, temperature] of [
      [3, 0.9, 1],
      [1, 0.5, 1],
      [0.05, 0.95, 1], // nearly flat: the nucleus is most of the vocabulary
      [6, 0.3, 0.7],
      [2, 0.999, 1.3],
    ] as const) {
      const logits = randomLogits(vocab, Math.round(scale * 100), scale);
      const nucleus = nucleusBySort(softmax(logits, temperature), topP);
      const drawn = new Set(draw(sampler, logits, { temperature, topP }, 3000, 17));
      expect([...drawn].filter((t) => !nucleus.has(t))).toEqual([]);
      // Most of a small nucleus is reached by 3000 draws.
      if (nucleus.size <= 50) expect(drawn.size).toBeGreaterThanOrEqual(Math.min(nucleus.size, 3));
    }
  });

  it('applies top_k before top_p', () => {
    const logits = new Float32Array(vocab).fill(-1e4);
    [0.4, 0.3, 0.2, 0.1].forEach((p, i) => (logits[i] = Math.log(p)));
    // Among the top 2 (renormalised 4/7, 3/7), top_p 0.5 keeps only the first.
    expect(new Set(draw(sampler, logits, { temperature: 1, topK: 2, topP: 0.5 }, 500))).toEqual(new Set([0]));
    // Without top_k, top_p 0.5 needs the first two (0.4 + 0.3).
    expect(new Set(draw(sampler, logits, { temperature: 1, topP: 0.5 }, 2000))).toEqual(new Set([0, 1]));
  });

  it('penalises seen tokens CTRL-style: positive logits divided, negative ones multiplied', () => {
    const logits = new Float32Array(vocab).fill(-10);
    logits[1] = 2; // seen: 2 / 1.5 = 1.33 falls below token 2
    logits[2] = 1.5;
    expect(draw(sampler, logits, {}, 1, 1, new Set([1]))).toEqual([1]);
    expect(draw(sampler, logits, { repetitionPenalty: 1.5 }, 1, 1, new Set([1]))).toEqual([2]);
    const negative = new Float32Array(vocab).fill(-10);
    negative[1] = -1; // seen: -1 × 1.5 = -1.5 falls below token 2
    negative[2] = -1.2;
    expect(draw(sampler, negative, { repetitionPenalty: 1.5 }, 1, 1, new Set([1]))).toEqual([2]);
    // A penalty below 1 favours seen tokens.
    expect(draw(sampler, logits, { repetitionPenalty: 0.5 }, 1, 1, new Set([2]))).toEqual([2]);
  });

  it('draws the same tokens for the same seed and different ones for another seed', () => {
    const logits = randomLogits(vocab, 8, 1);
    const options = { temperature: 1, topK: 200, topP: 0.95 };
    expect(draw(sampler, logits, options, 50, 123)).toEqual(draw(sampler, logits, options, 50, 123));
    expect(draw(sampler, logits, options, 50, 123)).not.toEqual(draw(sampler, logits, options, 50, 124));
  });

  it('handles a 50k vocabulary in much less time than sorting it', () => {
    const big = new TokenSampler(50_257);
    const logits = randomLogits(50_257, 4, 2);
    const nucleus = nucleusBySort(softmax(logits, 1), 0.9);
    expect(nucleus.size).toBeGreaterThan(1000);
    // Timed against a full sort in the same moments, so a busy machine slows both alike.
    const ids = Int32Array.from(logits.keys());
    let sorting = 0;
    let sampling = 0;
    for (let i = 0; i < 20; i++) {
      let started = performance.now();
      ids.slice().sort((a, b) => logits[b]! - logits[a]!);
      sorting += performance.now() - started;
      started = performance.now();
      draw(big, logits, { temperature: 1, topP: 0.9 }, 1, i);
      sampling += performance.now() - started;
    }
    expect(sampling).toBeLessThan(sorting / 2);
  });
});
