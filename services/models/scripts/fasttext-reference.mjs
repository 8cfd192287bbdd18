// fastText's own implementation (the wasm build in fasttext.wasm.js) as a reference for the tests.
// It loads through dynamic import, which jest's module system cannot host, so tests run it as a child.
// stdin: {"sentences": [...], "words": [...]}; stdout: {"predictions": [[label, p]...], "subwords": [[ids]...]}
import { getLIDModel } from 'fasttext.wasm.js';

const input = JSON.parse(await new Promise((resolve) => {
  let text = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => (text += chunk));
  process.stdin.on('end', () => resolve(text));
}));
const model = (await getLIDModel()).model ?? (await (await getLIDModel()).load());
const vectorToArray = (v) => Array.from({ length: v.size() }, (_, i) => v.get(i));
const predictions = input.sentences.map((s) => {
  const [probability, label] = model.predict(s, 1, 0).get(0);
  return [label, probability];
});
const subwords = input.words.map((w) => vectorToArray(model.getSubwords(w)[1]));
process.stdout.write(JSON.stringify({ predictions, subwords }));
