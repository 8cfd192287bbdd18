"""The corpus: Jane Austen's six novels from Debian's r-cran-janeaustenr, read
with rdata.py (no R needed), normalised into paragraphs and split into a
training part and a held-out part (the last 5% of each novel's paragraphs).

Writes .cache/corpus/train.json and .cache/corpus/heldout.json ({novel: text}) and
.cache/corpus/heldout-raw-lines.json (the held-out part's source lines).
"""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import rdata  # noqa: E402

HERE = pathlib.Path(__file__).parent
CACHE = HERE / ".cache"
DATA = pathlib.Path("/usr/lib/R/site-library/janeaustenr/data")
NOVELS = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion"]
HOLDOUT = 0.05


def paragraphs(lines):
    """The data has one printed line per row and blank rows between paragraphs."""
    out, current = [], []
    for line in lines + [""]:
        if line.strip():
            current.append(line)
        elif current:
            # Lines are stripped and joined with one space; spaces inside a line are kept as printed
            # (two novels put two spaces after a full stop).
            text = " ".join(part.strip() for part in current)
            text = text.replace("_", "")  # underscores mark italics in the source; not prose
            out.append((text, current))
            current = []
    return out


def load():
    db = rdata.read_lazyload_db(DATA / "Rdata")
    novels = {}
    for name in NOVELS:
        lines = ["" if line is None else line for line in db[name].value]
        novels[name] = paragraphs(lines)
    return novels


def split(novels):
    train, held, held_raw = {}, {}, []
    for name, paras in novels.items():
        cut = int(len(paras) * (1 - HOLDOUT))
        train[name] = "\n\n".join(text for text, _ in paras[:cut])
        held[name] = "\n\n".join(text for text, _ in paras[cut:])
        held_raw.extend(line for _, raw in paras[cut:] for line in raw)
    return train, held, held_raw


def main():
    train, held, held_raw = split(load())
    out = CACHE / "corpus"
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.json").write_text(json.dumps(train, ensure_ascii=False, indent=0), encoding="utf-8")
    (out / "heldout.json").write_text(json.dumps(held, ensure_ascii=False, indent=0), encoding="utf-8")
    # The held-out part's lines as printed (indentation, double spaces) for the tokenizer check.
    (out / "heldout-raw-lines.json").write_text(json.dumps(held_raw, ensure_ascii=False), encoding="utf-8")
    for name in NOVELS:
        print(f"{name}: train {len(train[name])} chars, held-out {len(held[name])} chars", flush=True)


if __name__ == "__main__":
    main()
