import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import * as ort from 'onnxruntime-node';
import { readLabels, readModelConfig, scanRepository } from '@maas/shared/model-repository';
import {
  TINY_BPE_EOS_ID,
  TINY_BPE_VOCAB_SIZE,
  TINY_WORDPIECE_VOCAB_SIZE,
  buildBertClassifier,
  buildSentenceEncoder,
  buildTinyGpt2,
  buildTinyLlama,
  decoderDefaults,
  encoderDefaults,
  positionIdsFromMask,
  tinyByteLevelBpeTokenizer,
  tinyWordPieceTokenizer,
  writeFixtureRepository,
} from '../src/fixtures';

const int64 = (rows: number[][]) =>
  new ort.Tensor('int64', BigInt64Array.from(rows.flat(), BigInt), [rows.length, rows[0]!.length]);

/** Right-pads rows with 0 to the longest; returns input_ids, attention_mask and token_type_ids. */
function encoderFeeds(rows: number[][]): Record<string, ort.Tensor> {
  const length = Math.max(...rows.map((r) => r.length));
  const pad = (r: number[], v: (x: number) => number) => [
    ...r.map(v),
    ...Array<number>(length - r.length).fill(0),
  ];
  return {
    input_ids: int64(rows.map((r) => pad(r, (x) => x))),
    attention_mask: int64(rows.map((r) => pad(r, () => 1))),
    token_type_ids: int64(rows.map((r) => pad(r, () => 0))),
  };
}

const close = (a: ArrayLike<number>, b: ArrayLike<number>, tolerance: number) => {
  expect(a.length).toBe(b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  expect(worst).toBeLessThanOrEqual(tolerance);
};

/** Builds and reports how long it took (the suite checks every model builds in well under a second). */
function timed<T>(build: () => T): { value: T; ms: number } {
  const started = performance.now();
  const value = build();
  return { value, ms: performance.now() - started };
}

const wordPiece = new Tokenizer(tinyWordPieceTokenizer(), {});
const SHORT = wordPiece.encode('I love this movie!').ids;
const LONG = wordPiece.encode('The story was boring and the music was terrible, but I still had fun.').ids;

describe('bert-classifier', () => {
  let session: ort.InferenceSession;
  const built = timed(() => buildBertClassifier());
  beforeAll(async () => {
    session = await ort.InferenceSession.create(built.value);
  });
  afterAll(() => session?.release());

  it('takes the Hugging Face inputs and gives logits [batch, 3], quickly built and small', async () => {
    expect(built.ms).toBeLessThan(1000);
    expect(built.value.length).toBeLessThan(1_000_000);
    expect(session.inputNames).toEqual(['input_ids', 'attention_mask', 'token_type_ids']);
    expect(session.outputNames).toEqual(['logits']);
    const { logits } = await session.run(encoderFeeds([SHORT, LONG]));
    expect(logits!.dims).toEqual([2, 3]);
    const values = Array.from(logits!.data as Float32Array);
    expect(values.every(Number.isFinite)).toBe(true);
    // Not degenerate: the texts get different logits, and the labels differ within a text.
    expect(Math.abs(values[0]! - values[3]!)).toBeGreaterThan(1e-3);
    expect(Math.max(...values.slice(0, 3)) - Math.min(...values.slice(0, 3))).toBeGreaterThan(0.05);
  });

  it('gives a sequence the same logits alone and right-padded in a batch with a longer one', async () => {
    const alone = (await session.run(encoderFeeds([SHORT]))).logits!.data as Float32Array;
    const batched = (await session.run(encoderFeeds([LONG, SHORT]))).logits!.data as Float32Array;
    expect(SHORT.length).toBeLessThan(LONG.length - 5);
    close(batched.subarray(3, 6), alone, 1e-5);
  });

  it('is the same bytes for the same seed and different weights for another', () => {
    expect(Buffer.from(buildBertClassifier({ seed: 1 })).equals(Buffer.from(built.value))).toBe(true);
    expect(Buffer.from(buildBertClassifier({ seed: 7 })).equals(Buffer.from(built.value))).toBe(false);
  });

  it('takes its sizes from the options', async () => {
    const other = await ort.InferenceSession.create(
      buildBertClassifier({ hidden: 16, heads: 2, layers: 1, numLabels: 5, vocab: 50 }),
    );
    const { logits } = await other.run(encoderFeeds([[2, 40, 49, 3]]));
    expect(logits!.dims).toEqual([1, 5]);
    await other.release();
    expect(() => buildBertClassifier({ hidden: 30, heads: 4 })).toThrow(/multiple of heads/);
  });
});

describe('sentence-encoder', () => {
  it('gives last_hidden_state [batch, seq, hidden] whose masked mean does not depend on padding', async () => {
    const built = timed(() => buildSentenceEncoder());
    expect(built.ms).toBeLessThan(1000);
    const session = await ort.InferenceSession.create(built.value);
    const hidden = encoderDefaults().hidden;
    const meanOf = (data: Float32Array, row: number, seqLength: number, tokens: number) => {
      const mean = new Float32Array(hidden);
      for (let t = 0; t < tokens; t++) {
        for (let h = 0; h < hidden; h++) mean[h]! += data[(row * seqLength + t) * hidden + h]! / tokens;
      }
      return mean;
    };
    const alone = (await session.run(encoderFeeds([SHORT]))).last_hidden_state!;
    const batched = (await session.run(encoderFeeds([LONG, SHORT]))).last_hidden_state!;
    expect(alone.dims).toEqual([1, SHORT.length, hidden]);
    expect(batched.dims).toEqual([2, LONG.length, hidden]);
    const a = meanOf(alone.data as Float32Array, 0, SHORT.length, SHORT.length);
    close(meanOf(batched.data as Float32Array, 1, LONG.length, SHORT.length), a, 1e-5);
    // Different texts embed differently.
    const other = meanOf(batched.data as Float32Array, 0, LONG.length, LONG.length);
    expect(a.some((v, i) => Math.abs(v - other[i]!) > 1e-2)).toBe(true);
    await session.release();
  });
});

describe('tiny-gpt2', () => {
  const config = decoderDefaults();
  const headDim = config.hidden / config.heads;
  let session: ort.InferenceSession;
  const built = timed(() => buildTinyGpt2());
  beforeAll(async () => {
    session = await ort.InferenceSession.create(built.value);
  });
  afterAll(() => session?.release());

  type Past = Record<string, ort.Tensor>;
  const emptyPast = (batch: number): Past => {
    const past: Past = {};
    for (let l = 0; l < config.layers; l++) {
      for (const kind of ['key', 'value']) {
        past[`past_key_values.${l}.${kind}`] = new ort.Tensor('float32', new Float32Array(0), [
          batch,
          config.heads,
          0,
          headDim,
        ]);
      }
    }
    return past;
  };

  /** One forward pass; returns the last position's logits per row and the cache for the next step. */
  async function step(ids: number[][], mask: number[][], past: Past) {
    const positions = mask.map((m) => positionIdsFromMask(m).slice(m.length - ids[0]!.length));
    const out = await session.run({
      input_ids: int64(ids),
      attention_mask: int64(mask),
      position_ids: int64(positions),
      ...past,
    });
    const logits = out.logits!;
    const [batch, seq, vocab] = logits.dims as [number, number, number];
    const data = logits.data as Float32Array;
    const last = Array.from({ length: batch }, (_, b) =>
      data.subarray((b * seq + seq - 1) * vocab, (b * seq + seq) * vocab),
    );
    const next: Past = {};
    for (let l = 0; l < config.layers; l++) {
      next[`past_key_values.${l}.key`] = out[`present.${l}.key`]!;
      next[`past_key_values.${l}.value`] = out[`present.${l}.value`]!;
    }
    return { logits, last, next };
  }

  const argmax = (row: Float32Array) => row.reduce((best, v, i) => (v > row[best]! ? i : best), 0);

  /** Greedy decoding of a left-padded batch with the KV cache; returns each row's new tokens and logits. */
  async function greedyWithCache(prompts: number[][], count: number) {
    const width = Math.max(...prompts.map((p) => p.length));
    let ids = prompts.map((p) => [...Array<number>(width - p.length).fill(TINY_BPE_EOS_ID), ...p]);
    const mask = prompts.map((p) => [...Array<number>(width - p.length).fill(0), ...p.map(() => 1)]);
    let past = emptyPast(prompts.length);
    const tokens: number[][] = prompts.map(() => []);
    const logits: Float32Array[][] = prompts.map(() => []);
    for (let k = 0; k < count; k++) {
      const result = await step(ids, mask, past);
      past = result.next;
      ids = result.last.map((row, b) => {
        const token = argmax(row);
        tokens[b]!.push(token);
        logits[b]!.push(Float32Array.from(row));
        mask[b]!.push(1);
        return [token];
      });
    }
    return { tokens, logits };
  }

  async function greedyRecompute(prompt: number[], count: number) {
    const sequence = [...prompt];
    for (let k = 0; k < count; k++) {
      const { last } = await step([sequence], [sequence.map(() => 1)], emptyPast(1));
      sequence.push(argmax(last[0]!));
    }
    return sequence.slice(prompt.length);
  }

  const bpe = new Tokenizer(tinyByteLevelBpeTokenizer(), {});
  const PROMPT_A = bpe.encode('The river ran past the old mill').ids;
  const PROMPT_B = bpe.encode('Hi').ids;

  it('has the optimum signature and shapes, with a zero-length past on the first step', async () => {
    expect(built.ms).toBeLessThan(1000);
    expect(session.inputNames).toEqual([
      'input_ids',
      'attention_mask',
      'position_ids',
      'past_key_values.0.key',
      'past_key_values.0.value',
      'past_key_values.1.key',
      'past_key_values.1.value',
    ]);
    expect(session.outputNames).toEqual([
      'logits',
      'present.0.key',
      'present.0.value',
      'present.1.key',
      'present.1.value',
    ]);
    const first = await step([PROMPT_A], [PROMPT_A.map(() => 1)], emptyPast(1));
    expect(first.logits.dims).toEqual([1, PROMPT_A.length, TINY_BPE_VOCAB_SIZE]);
    expect(first.next['past_key_values.1.value']!.dims).toEqual([1, config.heads, PROMPT_A.length, headDim]);
    const second = await step([[5]], [[...PROMPT_A.map(() => 1), 1]], first.next);
    expect(second.logits.dims).toEqual([1, 1, TINY_BPE_VOCAB_SIZE]);
    expect(second.next['past_key_values.0.key']!.dims).toEqual([
      1,
      config.heads,
      PROMPT_A.length + 1,
      headDim,
    ]);
  });

  it('generates the same 20 greedy tokens with the KV cache as recomputing, and not one token forever', async () => {
    const { tokens } = await greedyWithCache([PROMPT_A], 20);
    expect(tokens[0]).toEqual(await greedyRecompute(PROMPT_A, 20));
    expect(new Set(tokens[0]).size).toBeGreaterThanOrEqual(3);
  });

  it('gives each prompt of a left-padded batch the tokens (and logits) it gets alone', async () => {
    const batch = await greedyWithCache([PROMPT_A, PROMPT_B], 12);
    for (const [row, prompt] of [PROMPT_A, PROMPT_B].entries()) {
      const alone = await greedyWithCache([prompt], 12);
      expect(batch.tokens[row]).toEqual(alone.tokens[0]);
      alone.logits[0]!.forEach((l, k) => close(batch.logits[row]![k]!, l, 1e-4));
    }
  });

  it('attends causally: a later token does not change earlier logits', async () => {
    const full = (await step([PROMPT_A], [PROMPT_A.map(() => 1)], emptyPast(1))).logits.data as Float32Array;
    const prefix = PROMPT_A.slice(0, 3);
    const short = (await step([prefix], [prefix.map(() => 1)], emptyPast(1))).logits.data as Float32Array;
    close(full.subarray(0, short.length), short, 1e-5);
  });

  it('numbers left-padded positions from the first real token', () => {
    expect(positionIdsFromMask([0, 0, 1, 1, 1])).toEqual([0, 0, 0, 1, 2]);
    expect(positionIdsFromMask([1, 1])).toEqual([0, 1]);
  });

  it('is deterministic per seed, and ties the LM head on request', async () => {
    expect(Buffer.from(buildTinyGpt2()).equals(Buffer.from(built.value))).toBe(true);
    expect(Buffer.from(buildTinyGpt2({ seed: 3 })).equals(Buffer.from(built.value))).toBe(false);
    const tied = buildTinyGpt2({ tieWordEmbeddings: true, layers: 1 });
    expect(tied.length).toBeLessThan(built.value.length);
    const s = await ort.InferenceSession.create(tied);
    expect(s.outputNames).toEqual(['logits', 'present.0.key', 'present.0.value']);
    await s.release();
  });
});

describe('tiny Llama family', () => {
  /** Logits of a left-padded batch (past of length 0), as float32. */
  async function prefill(
    bytes: Uint8Array,
    rows: number[][],
    withPositions: boolean,
  ): Promise<Float32Array[]> {
    const s = await ort.InferenceSession.create(bytes);
    const length = Math.max(...rows.map((r) => r.length));
    const masks = rows.map((r) => [...Array<number>(length - r.length).fill(0), ...r.map(() => 1)]);
    const feeds: Record<string, ort.Tensor> = {
      input_ids: int64(rows.map((r) => [...Array<number>(length - r.length).fill(0), ...r])),
      attention_mask: int64(masks),
    };
    if (withPositions) feeds.position_ids = int64(masks.map(positionIdsFromMask));
    const meta = s.inputMetadata.filter((m) => m.name.startsWith('past_key_values'));
    for (const m of meta) {
      const [, heads, , headDim] = (m as { shape: readonly number[] }).shape;
      feeds[m.name] = new ort.Tensor('float32', new Float32Array(0), [rows.length, heads!, 0, headDim!]);
    }
    const out = await s.run(feeds);
    expect(out['present.0.key']!.dims).toEqual([rows.length, 2, length, 8]);
    const logits = out.logits!.data as Float32Array;
    const vocab = out.logits!.dims[2]!;
    await s.release();
    return rows.map((_, b) => logits.slice((b * length + length - 1) * vocab, (b * length + length) * vocab));
  }
  const close = (a: Float32Array, b: Float32Array) =>
    a.forEach((v, i) => expect(Math.abs(v - b[i]!)).toBeLessThan(1e-4));

  it('has grouped key/value heads, and gives a prompt the same logits alone and left-padded', async () => {
    const bytes = buildTinyLlama({ kvHeads: 2 });
    const [alone] = await prefill(bytes, [[5, 6, 7]], true);
    const [padded, longer] = await prefill(
      bytes,
      [
        [5, 6, 7],
        [9, 8, 7, 6, 5, 4],
      ],
      true,
    );
    close(padded!, alone!);
    const [longerAlone] = await prefill(bytes, [[9, 8, 7, 6, 5, 4]], true);
    close(longer!, longerAlone!);
  });

  it('without position_ids numbers positions from the mask as the caller would', async () => {
    const rows = [
      [5, 6, 7],
      [9, 8, 7, 6, 5, 4],
    ];
    const withIds = await prefill(buildTinyLlama({ kvHeads: 2 }), rows, true);
    const fromMask = await prefill(buildTinyLlama({ kvHeads: 2, positionIds: false }), rows, false);
    withIds.forEach((l, b) => close(fromMask[b]!, l));
  });

  it('depends on positions (rotary): the same tokens in another order give other logits', async () => {
    const bytes = buildTinyLlama({ kvHeads: 2 });
    const [a] = await prefill(bytes, [[5, 6, 7]], true);
    const [b] = await prefill(bytes, [[6, 5, 7]], true);
    expect(Math.max(...a!.map((v, i) => Math.abs(v - b![i]!)))).toBeGreaterThan(0.01);
  });
});

describe('writeFixtureRepository', () => {
  it('writes a repository every service can read, described by what it returns (tiny tokenizers)', async () => {
    const repo = writeFixtureRepository(undefined, { tokenizers: 'tiny', versions: [1, 2], broken: true });
    const scanned = new Map(scanRepository(repo.root).map((m) => [m.name, m]));
    expect([...scanned.keys()]).toEqual([
      'bert-classifier',
      'broken-config',
      'broken-onnx',
      'sentence-encoder',
      'tiny-gpt2',
    ]);
    expect(repo.brokenModels).toEqual(['broken-onnx', 'broken-config']);
    for (const name of ['bert-classifier', 'sentence-encoder', 'tiny-gpt2'] as const) {
      const model = repo.models[name]!;
      const config = readModelConfig(model.dir, name);
      expect(scanned.get(name)!.error).toBeUndefined();
      expect(scanned.get(name)!.versions.map((v) => v.version)).toEqual([2, 1]);
      expect(config.inputs.map((i) => i.name)).toEqual(model.inputNames);
      expect(config.outputs.map((o) => o.name)).toEqual(model.outputNames);
      expect(config.maxBatchSize).toBeGreaterThan(0);
      for (const version of model.versions) {
        expect(existsSync(model.modelPaths[version]!)).toBe(true);
        const tokenizer = new Tokenizer(JSON.parse(readFileSync(model.tokenizerPaths[version]!, 'utf8')), {});
        expect(tokenizer.get_vocab().size).toBe(model.vocabSize);
        const tokenizerConfig = JSON.parse(
          readFileSync(join(dirname(model.tokenizerPaths[version]!), 'tokenizer_config.json'), 'utf8'),
        ) as { model_max_length: number };
        expect(tokenizerConfig.model_max_length).toBe(config.tokenizer!.maxLength);
      }
      // Each version has its own weights.
      expect(readFileSync(model.modelPaths[1]!).equals(readFileSync(model.modelPaths[2]!))).toBe(false);
      // The graph takes and gives what the config says.
      const session = await ort.InferenceSession.create(model.modelPaths[2]!);
      expect(session.inputNames.slice(0, model.inputNames.length)).toEqual(model.inputNames);
      expect(session.outputNames.slice(0, model.outputNames.length)).toEqual(model.outputNames);
      await session.release();
    }
    const bert = readModelConfig(repo.models['bert-classifier']!.dir, 'bert-classifier');
    expect(bert.inputs.every((i) => i.ragged)).toBe(true);
    expect(bert.dynamicBatching.maxQueueDelayMicroseconds).toBeGreaterThan(0);
    expect(readLabels(bert, join(repo.models['bert-classifier']!.dir, '2'))).toEqual(repo.labels);
    expect(repo.labels).toEqual(['negative', 'neutral', 'positive']);
    expect(repo.models['bert-classifier']!.vocabSize).toBe(TINY_WORDPIECE_VOCAB_SIZE);

    const gpt2 = readModelConfig(repo.models['tiny-gpt2']!.dir, 'tiny-gpt2');
    expect(gpt2.generation).toMatchObject({
      numLayers: repo.decoder.layers,
      numHeads: repo.decoder.heads,
      headDim: repo.decoder.headDim,
      vocabSize: TINY_BPE_VOCAB_SIZE,
      maxContextLength: repo.decoder.maxPositions,
      eosTokenId: TINY_BPE_EOS_ID,
    });
    expect(repo.decoder).toMatchObject({
      vocab: TINY_BPE_VOCAB_SIZE,
      eosTokenId: TINY_BPE_EOS_ID,
      headDim: 8,
    });

    // The broken models fail alone: one is not ONNX, the other's config names an input the graph lacks.
    await expect(
      ort.InferenceSession.create(join(repo.root, 'broken-onnx', '1', 'model.onnx')),
    ).rejects.toThrow();
    const brokenConfig = readModelConfig(join(repo.root, 'broken-config'), 'broken-config');
    const graph = await ort.InferenceSession.create(join(repo.root, 'broken-config', '1', 'model.onnx'));
    expect(graph.inputNames).not.toContain(brokenConfig.inputs[0]!.name);
    await graph.release();
  });

  it('writes only the models asked for, and the pretrained vocabularies by default', () => {
    const repo = writeFixtureRepository(undefined, { models: ['bert-classifier'] });
    expect(Object.keys(repo.models)).toEqual(['bert-classifier']);
    expect(scanRepository(repo.root).map((m) => m.name)).toEqual(['bert-classifier']);
    expect(repo.tokenizers).toBe('pretrained');
    expect(repo.models['bert-classifier']!.vocabSize).toBe(30522);
  });
});
