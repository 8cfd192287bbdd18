// fastText's own implementation (the wasm build in fasttext.wasm.js) as the reference the tests compare with.
// It loads through dynamic import, which jest's module system cannot host, so tests run it as a child process.
// stdin:  {"sentences": [...], "words": [...], "lines": [...], "ngrams": [...]}
// stdout: {"predictions": [[[label, p], ...] per sentence, every label fastText reports (k = all)],
//          "subwords":    [{tokens, ids} per word, from getSubwords],
//          "lines":       [{words, ids} per line: getLine(line + "\n"), then each word's getSubwords ids],
//          "buckets":     [hash(ngram) % bucket per ngram, from getSubwordId (which ignores the prune index)],
//          "nwords":      number of input words, "labels": the labels in id order}
// predict() reads the line plus a newline (the wasm build appends it), so getLine gets the same.
// getSubwords lists every n-gram string of the word but only the ids the prune index keeps, so the
// two lists do not line up for a pruned model like lid.176: `tokens` is the word (if known) and
// all its n-grams, `ids` what fastText really feeds the model.
import { getLIDModel } from 'fasttext.wasm.js';

const input = JSON.parse(
  await new Promise((resolve) => {
    let text = '';
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', (chunk) => (text += chunk));
    process.stdin.on('end', () => resolve(text));
  }),
);
const lid = await getLIDModel();
const model = lid.model ?? (await lid.load());
const toArray = (v) => (Array.isArray(v) ? v : Array.from({ length: v.size() }, (_, i) => v.get(i)));
const subwords = (word) => {
  const [tokens, ids] = model.getSubwords(word);
  return { tokens: toArray(tokens), ids: toArray(ids) };
};
const predictions = (input.sentences ?? []).map((s) =>
  toArray(model.predict(s, -1, 0)).map(([probability, label]) => [label, probability]),
);
const lines = (input.lines ?? []).map((line) => {
  const words = toArray(model.ft.getLine(`${line}\n`)[0]);
  return { words, ids: words.flatMap((w) => subwords(w).ids) };
});
const nwords = toArray(model.ft.getWords()[0]).length;
const buckets = (input.ngrams ?? []).map((ngram) => model.getSubwordId(ngram) - nwords);
const labels = toArray(model.ft.getLabels()[0]);
process.stdout.write(
  JSON.stringify({
    predictions,
    subwords: (input.words ?? []).map(subwords),
    lines,
    buckets,
    nwords,
    labels,
  }),
);
