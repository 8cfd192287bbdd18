"""Byte-level BPE (GPT-2 style) trained on a word-frequency table, written as a
Hugging Face tokenizer.json. Encoding here must give the ids the JS library
gives from the written file; verify.mjs checks it on the held-out text."""
import collections
import json
import pathlib
import sys
import time

import regex

# GPT-2's pre-tokenizer pattern, as the ByteLevel pre-tokenizer (use_regex) applies it.
PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
SPECIAL = "<|endoftext|>"


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


BYTE_ENCODER = bytes_to_unicode()
BYTE_DECODER = {c: b for b, c in BYTE_ENCODER.items()}


def pretokenize(text):
    return ["".join(BYTE_ENCODER[b] for b in piece.encode("utf-8")) for piece in PATTERN.findall(text)]


def train_bpe(texts, vocab_size):
    freq = collections.Counter()
    for text in texts:
        freq.update(pretokenize(text))
    words = [list(w) for w in freq]
    counts = [freq[w] for w in freq]
    vocab = [SPECIAL] + [BYTE_ENCODER[b] for b in range(256)]
    pair_counts = collections.Counter()
    where = collections.defaultdict(set)
    for i, w in enumerate(words):
        for a, b in zip(w, w[1:]):
            pair_counts[(a, b)] += counts[i]
            where[(a, b)].add(i)
    merges = []
    known = set(vocab)
    while len(vocab) < vocab_size and pair_counts:
        # Highest count; ties broken by the pair itself so the result is deterministic.
        best = max(pair_counts.items(), key=lambda kv: (kv[1], kv[0]))[0]
        if pair_counts[best] < 2:
            break
        merges.append(best)
        merged = best[0] + best[1]
        if merged not in known:  # two different pairs can spell the same token: one id for it
            known.add(merged)
            vocab.append(merged)
        for i in list(where[best]):
            w = words[i]
            c = counts[i]
            for a, b in zip(w, w[1:]):
                pair_counts[(a, b)] -= c
                if pair_counts[(a, b)] <= 0:
                    del pair_counts[(a, b)]
                where[(a, b)].discard(i)
            out = []
            j = 0
            while j < len(w):
                if j < len(w) - 1 and w[j] == best[0] and w[j + 1] == best[1]:
                    out.append(merged)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for a, b in zip(out, out[1:]):
                pair_counts[(a, b)] += c
                where[(a, b)].add(i)
        where.pop(best, None)
    return vocab, merges


class Encoder:
    def __init__(self, vocab, merges):
        self.vocab = vocab
        self.ids = {t: i for i, t in enumerate(vocab)}
        self.ranks = {m: r for r, m in enumerate(merges)}
        self.cache = {}

    def encode_word(self, word):
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            ranked = [(self.ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, i = min(ranked)
            if rank == 1 << 30:
                break
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
        ids = [self.ids[p] for p in parts]
        self.cache[word] = ids
        return ids

    def encode(self, text):
        """Like the Hugging Face tokenizer: the special token is split off first, then each part is
        pre-tokenized with GPT-2's regex and each piece BPE-encoded."""
        out = []
        for k, part in enumerate(text.split(SPECIAL)):
            if k > 0:
                out.append(0)
            for word in pretokenize(part):
                out.extend(self.encode_word(word))
        return out

    def decode(self, ids):
        raw = b"".join(SPECIAL.encode() if i == 0 else bytes(BYTE_DECODER[c] for c in self.vocab[i]) for i in ids)
        return raw.decode("utf-8", errors="replace")


def tokenizer_json(vocab, merges):
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": 0, "content": SPECIAL, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": True, "special": True}
        ],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(vocab)},
            "merges": [f"{a} {b}" for a, b in merges],
        },
    }


def check_lines(held_raw_lines, held_texts):
    """Lines to compare the Python encoder with the JS library on: held-out lines as printed in the
    source (indentation, double spaces), held-out paragraphs, and hand-written hard cases."""
    hard = [
        "Café, naïve, façade, déjà vu, Zoë, São Paulo, Ærø, œuvre, Fräulein Müller, señor",
        "In 1811, 2,500 guineas; 10,000l. a year! 3.14159 and 007, 1st, 22nd, £5",
        "\u201cCurly double quotes,\u201d \u2018single ones,\u2019 and \"straight\" 'ones' -- it's, I'll, we'VE, they'RE",
        "An em dash\u2014like this\u2014and an en dash 1811\u20131817; an ellipsis\u2026 and -- two hyphens",
        "Multiple   spaces,  two  here,\tand a tab;    trailing spaces   ",
        "Line one\nLine two\n\nA new paragraph\r\nWindows line\n\n\n   indented after blank lines\n",
        "   leading spaces and a lone newline at the end\n",
        "Emoji \U0001F642 and CJK \u65e5\u672c\u8a9e, Greek \u03b1\u03b2\u03b3, Cyrillic \u041f\u0440\u0438\u0432\u0435\u0442",
        "Special token inside text <|endoftext|> and after it.<|endoftext|>",
        "",
        " ",
        "\n",
        "a",
        "MR. DARCY'S LETTER -- CHAPTER XXXV.",
    ]
    return held_raw_lines + held_texts + hard


def main():
    """python3 bpe.py: trains the tokenizer on .cache/corpus/train.json, writes tokenizer.json into
    the model repository and the token ids (training, held-out, check lines) into .cache."""
    here = pathlib.Path(__file__).parent
    cache = here / ".cache"
    out = here.parents[1] / "repository" / "austen-gpt" / "1"
    train = json.loads((cache / "corpus" / "train.json").read_text(encoding="utf-8"))
    held = json.loads((cache / "corpus" / "heldout.json").read_text(encoding="utf-8"))
    t0 = time.time()
    vocab, merges = train_bpe(list(train.values()), 4096)
    print(f"bpe: {len(vocab)} tokens, {len(merges)} merges in {time.time() - t0:.1f}s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(tokenizer_json(vocab, merges), ensure_ascii=False)
    (out / "tokenizer.json").write_text(text, encoding="utf-8")
    (cache / "tokenizer.json").write_text(text, encoding="utf-8")  # export.py writes it again beside model.onnx
    enc = Encoder(vocab, merges)
    ids = {"train": {k: enc.encode(v) for k, v in train.items()}, "heldout": {k: enc.encode(v) for k, v in held.items()}}
    for part in ids.values():
        for name, text_ids in part.items():
            text = (train if part is ids["train"] else held)[name]
            assert enc.decode(text_ids) == text, f"python round trip failed for {name}"
    (cache / "ids.json").write_text(json.dumps(ids))
    print("tokens: train %d, held-out %d" % (sum(map(len, ids["train"].values())),
                                               sum(map(len, ids["heldout"].values()))), flush=True)
    raw_lines = json.loads((cache / "corpus" / "heldout-raw-lines.json").read_text(encoding="utf-8"))
    held_paragraphs = [p for text in held.values() for p in text.split("\n\n")]
    lines = check_lines(raw_lines, held_paragraphs)
    (cache / "tokenizer-check.json").write_text(json.dumps(
        {"lines": lines, "ids": [enc.encode(t) for t in lines],
         "novels": held, "novel_ids": ids["heldout"]}, ensure_ascii=False))
    print(f"tokenizer check: {len(lines)} lines written", flush=True)


if __name__ == "__main__":
    main()
