/** Character error rate: Levenshtein distance over the reference's length, whitespace ignored (line joins differ). */
export function characterErrorRate(hypothesis: string, reference: string): number {
  const h = [...hypothesis.replace(/\s/g, '')];
  const r = [...reference.replace(/\s/g, '')];
  let previous = Array.from({ length: h.length + 1 }, (_, j) => j);
  for (let i = 1; i <= r.length; i++) {
    const current = [i];
    for (let j = 1; j <= h.length; j++) {
      current[j] = Math.min(
        previous[j]! + 1,
        current[j - 1]! + 1,
        previous[j - 1]! + (r[i - 1] === h[j - 1] ? 0 : 1),
      );
    }
    previous = current;
  }
  return r.length === 0 ? (h.length === 0 ? 0 : 1) : previous[h.length]! / r.length;
}
