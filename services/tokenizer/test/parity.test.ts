/**
 * Parity on real vocabularies: the service (Rust `tokenizers`, through gRPC on
 * 127.0.0.1) against the reference implementation it does not use, Hugging
 * Face's pure-TypeScript `@huggingface/tokenizers`: identical ids (single texts
 * and pairs), identical decoded text, and offsets that point at exactly the
 * reference's tokens. The TypeScript library returns no offsets, so the
 * reference offsets are rebuilt from its tokens: for byte-level BPE byte by
 * byte from the UTF-8 of the text; for the other families by checking that the
 * text under each offset normalises (with the reference's own normaliser) to
 * the reference's token.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer as ReferenceTokenizer } from '@huggingface/tokenizers';
import { defaultRepositoryPath, scanRepository } from '@maas/shared';
import {
  tinyByteLevelBpeTokenizer,
  tinyByteLevelBpeTokenizerConfig,
  tinyWordPieceTokenizer,
  tinyWordPieceTokenizerConfig,
} from '@maas/models';
import type {
  DecodeResponse,
  EncodeRequest,
  EncodeResponse,
} from '@maas/shared/gen/maas/tokenizer/v1/tokenizer';
import { CORPUS } from './corpus';
import { call, startTestTokenizer, type TestTokenizerService } from './helpers';

let t: TestTokenizerService;
/** The tiny tokenizers of the test fixture models (@maas/models fixtures), served from TOKENIZER_DIR. */
const FIXTURE_TOKENIZERS: Record<string, [object, object]> = {
  'tiny-bpe': [tinyByteLevelBpeTokenizer(), tinyByteLevelBpeTokenizerConfig()],
  'tiny-wordpiece': [tinyWordPieceTokenizer(), tinyWordPieceTokenizerConfig()],
};

beforeAll(async () => {
  t = await startTestTokenizer();
  for (const [name, [tokenizer, config]] of Object.entries(FIXTURE_TOKENIZERS)) {
    mkdirSync(join(t.extraDir, name));
    writeFileSync(join(t.extraDir, name, 'tokenizer.json'), JSON.stringify(tokenizer));
    writeFileSync(join(t.extraDir, name, 'tokenizer_config.json'), JSON.stringify(config));
  }
  await t.service.registry.reload();
});
afterAll(async () => {
  await t?.close();
});

const encode = (request: Partial<EncodeRequest>) =>
  call<EncodeRequest, EncodeResponse>(t.client, 'encode', { textPairs: [], ...request });

/** The Hugging Face tokenizers of the default repository's models (those whose config is present). */
const repositoryTokenizers = scanRepository(defaultRepositoryPath())
  .filter((m) => m.config?.tokenizer?.kind === 'huggingface' && m.versions[0])
  .map((m) => ({
    name: m.config!.tokenizer!.name ?? m.name,
    path: join(m.versions[0]!.dir, m.config!.tokenizer!.file),
  }));

const parityNames = [
  'gpt2',
  'bert-base-uncased',
  'unigram',
  ...repositoryTokenizers.map((r) => r.name),
  ...Object.keys(FIXTURE_TOKENIZERS),
];

function fileOf(name: string): string {
  const own = t.files[name as keyof typeof t.files];
  if (own) return own;
  if (name in FIXTURE_TOKENIZERS) return join(t.extraDir, name, 'tokenizer.json');
  return repositoryTokenizers.find((r) => r.name === name)!.path;
}

interface Reference {
  tokenizer: ReferenceTokenizer;
  /** Same tokenizer with its decoder's clean-up off (for clean_up_tokenization_spaces=false). */
  withoutCleanup: ReferenceTokenizer;
  json: {
    pre_tokenizer?: { type?: string; pretokenizers?: { type?: string }[] } | null;
    post_processor?: { type?: string } | null;
    decoder?: { type?: string; cleanup?: boolean } | null;
    model: { type: string };
  };
  unknownIds: Set<number>;
  unkId: number | undefined;
  /** Reference ids; @huggingface/tokenizers 0.2 gives undefined for unknown words in WordLevel models. */
  ids(text: string, options?: { add_special_tokens?: boolean; text_pair?: string }): number[];
}

function reference(name: string): Reference {
  const json = JSON.parse(readFileSync(fileOf(name), 'utf8')) as Reference['json'];
  const tokenizer = new ReferenceTokenizer(json, {});
  const unknownIds = new Set(
    ['[UNK]', '<unk>'].map((u) => tokenizer.token_to_id(u)).filter((id): id is number => id !== undefined),
  );
  const unkId = [...unknownIds][0];
  const decoder = json.decoder ? { ...json.decoder, cleanup: false } : json.decoder;
  const withoutCleanup = new ReferenceTokenizer({ ...json, decoder }, {});
  return {
    tokenizer,
    withoutCleanup,
    json,
    unknownIds,
    unkId,
    ids: (text, options) => tokenizer.encode(text, options).ids.map((id: number | undefined) => id ?? unkId!),
  };
}

/** Post-processors the TypeScript library applies to pairs; with the others it drops the second text. */
const PAIR_TEMPLATES = ['TemplateProcessing', 'BertProcessing', 'RobertaProcessing'];

const isByteLevel = (json: Reference['json']) =>
  json.pre_tokenizer?.type === 'ByteLevel' ||
  (json.pre_tokenizer?.pretokenizers ?? []).some((p) => p.type === 'ByteLevel');

/** GPT-2's byte ↔ printable character table (bytes_to_unicode), inverted. */
function byteDecoder(): Map<string, number> {
  const printable: number[] = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const map = new Map<string, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    if (printable.includes(b)) map.set(String.fromCharCode(b), b);
    else map.set(String.fromCharCode(256 + extra++), b);
  }
  return map;
}
const BYTES = byteDecoder();

/** Offsets of byte-level tokens: each covers the characters (UTF-16 spans) its bytes belong to. */
function byteLevelOffsets(text: string, tokens: string[], special: boolean[]): [number, number][] {
  const spanOfByte: [number, number][] = [];
  let unit = 0;
  for (const ch of text) {
    const n = Buffer.byteLength(ch, 'utf8');
    for (let k = 0; k < n; k++) spanOfByte.push([unit, unit + ch.length]);
    unit += ch.length;
  }
  let cursor = 0;
  return tokens.map((token, i): [number, number] => {
    if (special[i]) return [0, 0];
    const length = [...token].length;
    for (const ch of token) if (!BYTES.has(ch)) throw new Error(`not a byte-level token: ${token}`);
    const first = spanOfByte[cursor]!;
    const last = spanOfByte[cursor + length - 1]!;
    cursor += length;
    return [first[0], last[1]];
  });
}

describe.each(parityNames)('%s', (name) => {
  let ref: Reference;
  beforeAll(() => {
    ref = reference(name);
  });

  it('gives the reference’s ids, with and without special tokens', async () => {
    for (const addSpecialTokens of [true, false]) {
      const response = await encode({ tokenizer: name, texts: CORPUS, addSpecialTokens });
      CORPUS.forEach((text, i) => {
        const expected = ref.ids(text, { add_special_tokens: addSpecialTokens });
        expect({ text, ids: response.encodings[i]!.ids }).toEqual({ text, ids: expected });
      });
    }
  });

  it('gives the reference’s ids and type ids for text pairs', async () => {
    const firsts = CORPUS.filter((x) => x.length > 0).slice(0, 8);
    const seconds = [...firsts].reverse();
    const response = await encode({ tokenizer: name, texts: firsts, textPairs: seconds });
    const template = PAIR_TEMPLATES.includes(ref.json.post_processor?.type ?? '');
    firsts.forEach((text, i) => {
      const e = response.encodings[i]!;
      if (template) {
        const expected = ref.tokenizer.encode(text, { text_pair: seconds[i], return_token_type_ids: true });
        expect(e.ids).toEqual(ref.ids(text, { text_pair: seconds[i] }));
        expect(e.typeIds).toEqual(expected.token_type_ids);
      } else {
        // Without a template the Rust library concatenates the two sequences; its ByteLevel
        // post-processor marks the second with type id 1, no post-processor leaves 0.
        const a = ref.ids(text);
        const b = ref.ids(seconds[i]!);
        const second = ref.json.post_processor?.type === 'ByteLevel' ? 1 : 0;
        expect(e.ids).toEqual([...a, ...b]);
        expect(e.typeIds).toEqual([...a.map(() => 0), ...b.map(() => second)]);
      }
    });
  });

  it('decodes to the reference’s text, per clean-up setting, with and without special tokens', async () => {
    const encoded = await encode({ tokenizer: name, texts: CORPUS });
    const sequences = encoded.encodings.map((e) => ({ ids: e.ids }));
    // Unset: the decoder as configured; true: also transformers' clean_up_tokenization; false: neither.
    const settings = [
      { cleanUp: undefined, reference: ref.tokenizer, referenceCleanUp: false },
      { cleanUp: true, reference: ref.tokenizer, referenceCleanUp: true },
      { cleanUp: false, reference: ref.withoutCleanup, referenceCleanUp: false },
    ];
    for (const skipSpecialTokens of [true, false]) {
      for (const { cleanUp, reference, referenceCleanUp } of settings) {
        const decoded = await call<unknown, DecodeResponse>(t.client, 'decode', {
          tokenizer: name,
          sequences,
          skipSpecialTokens,
          ...(cleanUp === undefined ? {} : { cleanUpTokenizationSpaces: cleanUp }),
        });
        CORPUS.forEach((text, i) => {
          const ids = encoded.encodings[i]!.ids;
          if (ids.length === 0) {
            expect(decoded.texts[i]).toBe('');
            return;
          }
          // The TypeScript library drops the spaces around an unknown token it skips; the Rust
          // library, the reference implementation of the format, keeps them: not compared.
          if (skipSpecialTokens && ids.some((id) => ref.unknownIds.has(id))) return;
          const expected = reference.decode(ids, {
            skip_special_tokens: skipSpecialTokens,
            clean_up_tokenization_spaces: referenceCleanUp,
          });
          expect({ text, cleanUp, decoded: decoded.texts[i] }).toEqual({ text, cleanUp, decoded: expected });
        });
      }
    }
  });

  it('gives offsets (UTF-16) that cover exactly the reference’s tokens', async () => {
    const response = await encode({
      tokenizer: name,
      texts: CORPUS,
      returnOffsets: true,
      returnTokens: true,
    });
    const normalize = (s: string) => (ref.tokenizer.normalizer ? ref.tokenizer.normalizer.normalize(s) : s);
    CORPUS.forEach((text, i) => {
      const e = response.encodings[i]!;
      const expected = ref.tokenizer.encode(text);
      expect(e.ids).toEqual(ref.ids(text));
      const offsets = e.offsets.map((o): [number, number] => [o.start, o.end]);
      const special = e.specialTokensMask.map((m) => m === 1);
      if (isByteLevel(ref.json)) {
        expect({ text, offsets }).toEqual({
          text,
          offsets: byteLevelOffsets(text, expected.tokens, special),
        });
        return;
      }
      const overlap = (a: number, b: number) =>
        offsets[a] !== undefined &&
        offsets[b] !== undefined &&
        offsets[a]![0] < offsets[b]![1] &&
        offsets[b]![0] < offsets[a]![1];
      let previousStart = 0;
      offsets.forEach(([start, end], k) => {
        const token = expected.tokens[k] ?? '';
        if (special[k] && !ref.unknownIds.has(e.ids[k]!)) {
          expect([start, end]).toEqual([0, 0]);
          return;
        }
        expect(start).toBeGreaterThanOrEqual(previousStart);
        expect(end).toBeLessThanOrEqual(text.length);
        previousStart = start;
        const under = text.slice(start, end);
        if (ref.unknownIds.has(e.ids[k]!)) {
          expect({ text, token, under: under.length > 0 }).toEqual({ text, token, under: true });
          return;
        }
        const surface = token.replace(/^##/, '').replaceAll('▁', ' ').trim();
        // NFKC composes a combining mark into the character before it; the Rust library's
        // offsets then cover only that character: the marks after the span count as under it.
        const marks = /^\p{M}+/u.exec(text.slice(end))?.[0] ?? '';
        const normalized = normalize(under).trim() === surface ? surface : normalize(under + marks).trim();
        // Pieces of one character (a Hangul syllable split into jamo, NFKC's ĳ → ij) all point at it.
        if (overlap(k, k - 1) || overlap(k, k + 1)) {
          expect({ text, token, under: normalized.includes(surface) }).toEqual({ text, token, under: true });
        } else {
          expect({ text, token, under: normalized }).toEqual({ text, token, under: surface });
        }
      });
    });
  });
});

it('covers the default repository’s Hugging Face tokenizers', () => {
  expect(repositoryTokenizers.map((r) => r.name)).toEqual(
    expect.arrayContaining(['glove-embed', 'austen-gpt']),
  );
});
