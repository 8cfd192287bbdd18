/**
 * The two candidate libraries side by side, in this process, on the same
 * tokenizer files: Hugging Face's pure-TypeScript `@huggingface/tokenizers`
 * and the Rust `tokenizers` library through `@anush008/tokenizers`.
 */
import { readFileSync } from 'node:fs';
import { Tokenizer as RustTokenizer } from '@anush008/tokenizers';
import { Tokenizer as TsTokenizer } from '@huggingface/tokenizers';
import { BATCH, SHORT, tokensPerSecond } from './measure.js';

export interface LibraryFigures {
  tokenizer: string;
  rustBatch: number;
  tsBatch: number;
  rustSingle: number;
  tsSingle: number;
}

export async function compareLibraries(files: Record<string, string>, ms: number): Promise<LibraryFigures[]> {
  const rows: LibraryFigures[] = [];
  for (const [name, path] of Object.entries(files)) {
    const text = readFileSync(path, 'utf8');
    const rust = RustTokenizer.fromString(text);
    const ts = new TsTokenizer(JSON.parse(text), {});
    // Both produce ids as JavaScript arrays: what a server has to serialise.
    const rustBatch = await tokensPerSecond(async () => {
      let n = 0;
      for (const e of await rust.encodeBatch(BATCH)) n += e.getIds().length;
      return n;
    }, ms);
    const tsBatch = await tokensPerSecond(async () => {
      let n = 0;
      for (const sentence of BATCH) n += ts.encode(sentence).ids.length;
      return n;
    }, ms);
    const rustSingle = await tokensPerSecond(async () => (await rust.encode(SHORT)).getIds().length, ms);
    const tsSingle = await tokensPerSecond(async () => ts.encode(SHORT).ids.length, ms);
    rows.push({ tokenizer: name, rustBatch, tsBatch, rustSingle, tsSingle });
  }
  return rows;
}

/** What each library offers that the service needs, probed rather than assumed. */
export async function probeFeatures(
  files: Record<string, string>,
  wordLevelFile: string,
): Promise<[string, string, string][]> {
  const bertText = readFileSync(files['bert-base-uncased']!, 'utf8');
  const rust = RustTokenizer.fromString(bertText);
  const ts = new TsTokenizer(JSON.parse(bertText), {});
  const rustEncoding = await rust.encode('Hello 🙂 world', 'and a pair');
  const tsEncoding = ts.encode('Hello 🙂 world', {
    text_pair: 'and a pair',
    return_token_type_ids: true,
  }) as unknown as Record<string, unknown>;
  const wordLevel = readFileSync(wordLevelFile, 'utf8');
  const rustUnk = (await RustTokenizer.fromString(wordLevel).encode('zzzqqqxyz')).getIds()[0];
  const tsUnk = new TsTokenizer(JSON.parse(wordLevel), {}).encode('zzzqqqxyz').ids[0];
  const yes = (b: boolean) => (b ? 'yes' : 'no');
  return [
    [
      'character offsets',
      yes(rustEncoding.getOffsets().length > 0),
      yes('offsets' in tsEncoding || 'offset_mapping' in tsEncoding),
    ],
    [
      'text pairs (BERT template)',
      yes(rustEncoding.getTypeIds().includes(1)),
      yes(((tsEncoding.token_type_ids as number[] | undefined) ?? []).includes(1)),
    ],
    ['batch encode (native threads)', 'yes', 'no (one text at a time)'],
    ['truncation / padding per encoding', 'yes (Encoding.truncate/pad)', 'no'],
    [
      'special tokens mask',
      yes(rustEncoding.getSpecialTokensMask().includes(1)),
      yes('special_tokens_mask' in tsEncoding),
    ],
    ['WordLevel unknown word → [UNK] id', yes(rustUnk === 1), yes(tsUnk === 1) + ` (gives ${String(tsUnk)})`],
    ['decode with skip_special_tokens', 'yes', 'yes'],
  ];
}
