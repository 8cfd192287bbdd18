/** Texts every parity and round-trip test runs over: the kinds of input that break tokenizers. */
export const CORPUS = [
  'The quick brown fox jumps over the lazy dog.',
  'It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.',
  "Don't stop-believing: it's 5 o'clock somewhere... isn't it?!",
  'function add(a, b) {\n  return a + b; // sum\n}',
  'const x = arr.map((v) => v * 2).filter(Boolean); if (x?.length >= 10) { throw new Error(`too many: ${x}`); }',
  'SELECT id, name FROM users WHERE age > 21 AND email LIKE "%@example.com";',
  'Numbers: 3.14159, 1,000,000 and 42% of 2024-11-24 at 23:59:59 (+0100) — 0x1F, 1e-9.',
  'Whitespace   runs\t\tand\n\n\nnewlines    here.   ',
  '    leading spaces and trailing ones    ',
  'Accents: café, naïve, résumé, Ångström, façade, Øre, ĳssel.',
  'Combining marks: e\u0301 a\u0308 n\u0303 and Z\u0351\u0357\u0361algo.',
  '中文分词测试：我喜欢自然语言处理。',
  '日本語のテキストとカタカナ、ひらがな。한국어 문장도 있습니다.',
  'Emoji 🙂🚀👩‍👩‍👧 and flags 🇫🇷🇯🇵 and skin tones 👍🏽 in text.',
  'Mixed: English, русский, ελληνικά, עברית, العربية, हिन्दी, ไทย.',
  'مرحبا بالعالم، هذا نص من اليمين إلى اليسار.',
  'שלום עולם! mixed RTL and LTR: abc אבג 123.',
  'Math: ∑ᵢ xᵢ² ≤ ∞, α→β, ½ + ¼ = ¾.',
  'a'.repeat(120),
  'supercalifragilisticexpialidocious antidisestablishmentarianism',
  'URL https://example.com/path?query=1&x=y#frag and email a.b@c.io',
  '',
  ' ',
  '\t',
];

/** Texts clients send that are not well-formed or not printable (lone surrogates arrive as U+FFFD). */
export const ODD_TEXTS = [
  '\u0000nul\u0000 inside',
  '\uD800lone high and low \uDC00 surrogates',
  'e\u0301\u0301\u0301\u0301',
  '\u202Eevil RTL override\u202C',
  '🏳️‍🌈'.repeat(20),
  '\u200B\u200C\u200D zero widths \uFEFF',
  '\uFFFD replacement',
  '',
];
