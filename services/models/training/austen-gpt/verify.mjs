// Verifies austen-gpt with the libraries maas uses: the tokenizer.json with @huggingface/tokenizers
// (and, if it can be found, the Rust bindings @anush008/tokenizers), the model.onnx with onnxruntime-node.
//
//   node verify.mjs [tokenizer|model|all]     (default all)
//
// The packages are taken from a scratch folder (default /tmp/tokcheck, or $TOKCHECK_DIR), set up with
//   mkdir -p /tmp/tokcheck && cd /tmp/tokcheck && npm init -y &&
//   npm i @huggingface/tokenizers onnxruntime-node --onnxruntime-node-install=skip
// NODE_PATH=/tmp/tokcheck/node_modules works too. Writes .cache/verify.json.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const scratch = process.env.TOKCHECK_DIR ?? '/tmp/tokcheck';
const require = createRequire(join(scratch, 'package.json'));
const { Tokenizer } = require('@huggingface/tokenizers');
const ort = require('onnxruntime-node');

const mode = process.argv[2] ?? 'all';
const modelDir = join(here, '..', '..', 'repository', 'austen-gpt', '1');
const cache = join(here, '.cache');
const report = existsSync(join(cache, 'verify.json')) ? JSON.parse(readFileSync(join(cache, 'verify.json'), 'utf8')) : {};
const failures = [];
const same = (a, b) => a.length === b.length && a.every((v, i) => v === b[i]);

const tokenizerJson = JSON.parse(readFileSync(join(modelDir, 'tokenizer.json'), 'utf8'));
const tokenizer = new Tokenizer(tokenizerJson, {});
const encode = (text) => tokenizer.encode(text, { add_special_tokens: false }).ids;
const decode = (ids) => (ids.length === 0 ? '' : tokenizer.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false }));

if (mode === 'tokenizer' || mode === 'all') {
  // Python's ids (the ids the model was trained on) for held-out lines as printed, held-out paragraphs,
  // hand-written hard cases, and each novel's whole held-out part.
  const check = JSON.parse(readFileSync(join(cache, 'tokenizer-check.json'), 'utf8'));
  let rust = null;
  try {
    // The Rust library's bindings, as the tokenizer service uses them, if the monorepo has them installed.
    const requireMain = createRequire(join(here, '..', '..', '..', '..', 'package.json'));
    const { Tokenizer: RustTokenizer } = requireMain('@anush008/tokenizers');
    rust = RustTokenizer.fromFile(join(modelDir, 'tokenizer.json'));
  } catch {
    rust = null;
  }
  const result = { lines: check.lines.length, idMismatches: 0, roundTripFailures: 0, rustMismatches: null, examples: [] };
  if (rust) result.rustMismatches = 0;
  for (const [i, text] of check.lines.entries()) {
    const ids = encode(text);
    if (!same(ids, check.ids[i])) {
      result.idMismatches++;
      if (result.examples.length < 5) result.examples.push({ text, js: ids, python: check.ids[i] });
    }
    if (decode(ids) !== text) result.roundTripFailures++;
    if (rust) {
      const r = Array.from((await rust.encode(text, null, { addSpecialTokens: false })).getIds());
      if (!same(r, check.ids[i])) result.rustMismatches++;
    }
  }
  result.novels = {};
  for (const [name, text] of Object.entries(check.novels)) {
    const ids = encode(text);
    result.novels[name] = { tokens: ids.length, idsIdentical: same(ids, check.novel_ids[name]), roundTrip: decode(ids) === text };
    if (!result.novels[name].idsIdentical || !result.novels[name].roundTrip) failures.push(`tokenizer: novel ${name}`);
  }
  // The training text itself: the ids the model was trained on.
  const trainTexts = JSON.parse(readFileSync(join(cache, 'corpus', 'train.json'), 'utf8'));
  const trainIds = JSON.parse(readFileSync(join(cache, 'ids.json'), 'utf8')).train;
  result.trainingText = { tokens: 0, idsIdentical: true };
  for (const [name, text] of Object.entries(trainTexts)) {
    const ids = encode(text);
    result.trainingText.tokens += ids.length;
    if (!same(ids, trainIds[name])) {
      result.trainingText.idsIdentical = false;
      failures.push(`tokenizer: training text of ${name}`);
    }
  }
  if (result.idMismatches || result.roundTripFailures || result.rustMismatches) failures.push('tokenizer: lines');
  report.tokenizer = result;
  console.log('tokenizer', JSON.stringify(result, null, 1));
}

if (mode === 'model' || mode === 'all') {
  const config = JSON.parse(readFileSync(join(modelDir, '..', 'config.json'), 'utf8')).generation;
  const { numLayers: L, numHeads: H, headDim: D, vocabSize: V } = config;
  // ORT_THREADS sets intra-op threads (default: onnxruntime's own default, one per core).
  const sessionOptions = process.env.ORT_THREADS ? { intraOpNumThreads: Number(process.env.ORT_THREADS) } : {};
  const session = await ort.InferenceSession.create(join(modelDir, 'model.onnx'), sessionOptions);
  const i64 = (rows) => BigInt64Array.from(rows.flat().map(BigInt));
  const emptyPast = (batch) => {
    const feeds = {};
    for (let i = 0; i < L; i++)
      for (const kind of ['key', 'value'])
        feeds[`past_key_values.${i}.${kind}`] = new ort.Tensor('float32', new Float32Array(0), [batch, H, 0, D]);
    return feeds;
  };
  async function run(ids, mask, pos, past) {
    const b = ids.length;
    const out = await session.run({
      input_ids: new ort.Tensor('int64', i64(ids), [b, ids[0].length]),
      attention_mask: new ort.Tensor('int64', i64(mask), [b, mask[0].length]),
      position_ids: new ort.Tensor('int64', i64(pos), [b, pos[0].length]),
      ...(past ?? emptyPast(b)),
    });
    const next = {};
    for (let i = 0; i < L; i++)
      for (const kind of ['key', 'value']) next[`past_key_values.${i}.${kind}`] = out[`present.${i}.${kind}`];
    return { logits: out.logits.data, seq: ids[0].length, past: next, pastLength: out['present.0.key'].dims[2] };
  }

  // 1. Logits against PyTorch.
  const ref = JSON.parse(readFileSync(join(cache, 'reference.json'), 'utf8'));
  const outs = [];
  const logitDiffs = {};
  let maxDiff = 0;
  for (const c of ref.cases) {
    const past = c.past_from === null ? null : outs[c.past_from].past;
    const out = await run(c.input_ids, c.attention_mask, c.position_ids, past);
    outs.push(out);
    let diff = 0;
    // Padded query positions are not compared: their outputs are meaningless.
    for (let b = 0; b < c.input_ids.length; b++)
      for (let s = 0; s < c.input_ids[0].length; s++) {
        if (c.attention_mask[b][c.attention_mask[b].length - c.input_ids[0].length + s] === 0) continue;
        const off = (b * c.input_ids[0].length + s) * V;
        for (let v = 0; v < V; v++) diff = Math.max(diff, Math.abs(out.logits[off + v] - c.logits[off + v]));
      }
    logitDiffs[c.name] = diff;
    maxDiff = Math.max(maxDiff, diff);
  }
  if (!(maxDiff < 1e-4)) failures.push(`logits differ from PyTorch by ${maxDiff}`);

  const argmax = (a, off) => {
    let best = 0;
    for (let i = 1; i < V; i++) if (a[off + i] > a[off + best]) best = i;
    return best;
  };
  async function greedyCached(prompt, n) {
    let { logits, seq, past } = await run([prompt], [prompt.map(() => 1)], [prompt.map((_, i) => i)]);
    const out = [];
    for (let k = 0; k < n; k++) {
      const next = argmax(logits, (seq - 1) * V);
      out.push(next);
      const len = prompt.length + out.length;
      ({ logits, seq, past } = await run([[next]], [Array(len).fill(1)], [[len - 1]], past));
    }
    return out;
  }
  async function greedyRecompute(prompt, n) {
    const all = [...prompt];
    for (let k = 0; k < n; k++) {
      const { logits, seq } = await run([all], [all.map(() => 1)], [all.map((_, i) => i)]);
      all.push(argmax(logits, (seq - 1) * V));
    }
    return all.slice(prompt.length);
  }

  // 2. Greedy with the KV cache = greedy recomputing the whole sequence, 200 new tokens, timed.
  const N = 200;
  const prompt = encode('It is a truth universally acknowledged');
  await greedyCached(prompt, 5); // warm-up
  let t = performance.now();
  const cached = await greedyCached(prompt, N);
  const cachedMs = performance.now() - t;
  t = performance.now();
  const recomputed = await greedyRecompute(prompt, N);
  const recomputeMs = performance.now() - t;
  const cacheEqualsRecompute = same(cached, recomputed);
  if (!cacheEqualsRecompute) failures.push('KV cache and recompute disagree');

  // 3. A left-padded batch of two prompts of different lengths = each prompt alone (greedy, 40 tokens).
  const pa = encode('Mr. Darcy had never been so bewitched by any woman as he was by her.');
  const pb = encode('Emma was');
  const M = 40;
  const width = Math.max(pa.length, pb.length);
  const padded = (p) => [...Array(width - p.length).fill(0), ...p];
  let masks = [pa, pb].map((p) => [...Array(width - p.length).fill(0), ...p.map(() => 1)]);
  const startPos = [pa, pb].map((p) => [...Array(width - p.length).fill(0), ...p.map((_, i) => i)]);
  let { logits, seq, past } = await run([padded(pa), padded(pb)], masks, startPos);
  const batchOut = [[], []];
  let next = [pa.length, pb.length];
  for (let k = 0; k < M; k++) {
    const tok = [argmax(logits, (seq - 1) * V), argmax(logits, (2 * seq - 1) * V)];
    batchOut[0].push(tok[0]);
    batchOut[1].push(tok[1]);
    masks = masks.map((m) => [...m, 1]);
    ({ logits, seq, past } = await run([[tok[0]], [tok[1]]], masks, [[next[0]], [next[1]]], past));
    next = next.map((p) => p + 1);
  }
  const aloneA = await greedyCached(pa, M);
  const aloneB = await greedyCached(pb, M);
  const batchMatches = same(batchOut[0], aloneA) && same(batchOut[1], aloneB);
  if (!batchMatches) failures.push('left-padded batch differs from single runs');

  report.model = {
    onnxruntimeNode: require('onnxruntime-node/package.json').version,
    intraOpNumThreads: sessionOptions.intraOpNumThreads ?? 'default',
    logitsMaxAbsDiff: maxDiff,
    logitsMaxAbsDiffByCase: logitDiffs,
    emptyPastWorks: true,
    kvCacheEqualsRecompute: { newTokens: N, identical: cacheEqualsRecompute },
    tokensPerSecond: {
      newTokens: N,
      promptTokens: prompt.length,
      withCache: +((N / cachedMs) * 1000).toFixed(1),
      recomputing: +((N / recomputeMs) * 1000).toFixed(1),
    },
    leftPaddedBatch: { prompts: [pa.length, pb.length], newTokens: M, matchesSingleRuns: batchMatches },
    greedyText: decode([...prompt, ...cached]),
  };
  console.log('model', JSON.stringify(report.model, null, 1));
}

writeFileSync(join(cache, 'verify.json'), JSON.stringify(report, null, 2));
if (failures.length) {
  console.error('FAILED:', failures.join('; '));
  process.exit(1);
}
console.log(`verify ${mode}: all checks passed`);
