"""Evaluates the trained austen-gpt (held-out perplexity, sample continuations),
exports it to ONNX in the Hugging Face optimum decoder signature, and writes
config.json plus the reference outputs verify.mjs compares onnxruntime against.
"""
import json
import pathlib
import sys

import onnx
import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import bpe  # noqa: E402
from model import GPT, OnnxWrapper  # noqa: E402
from train import HPARAMS, RUN, CACHE, load_ids, perplexity  # noqa: E402

HERE = pathlib.Path(__file__).parent
OUT = HERE.parents[1] / "repository" / "austen-gpt"
PROMPTS = ["Emma was", "It is a truth universally acknowledged", "Mr. Darcy", "Elizabeth could not help",
           "Captain Wentworth"]
SAMPLE_SEED = 2024

torch.set_num_threads(2)


def load_tokenizer():
    tok = json.loads((CACHE / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = sorted(tok["model"]["vocab"], key=tok["model"]["vocab"].get)
    merges = [tuple(m.split(" ")) for m in tok["model"]["merges"]]
    return bpe.Encoder(vocab, merges)


@torch.no_grad()
def sample(model, enc, prompt, n=100, temperature=0.8, top_k=40, seed=SAMPLE_SEED):
    """Top-k sampling with the KV cache (the path the ONNX graph exports)."""
    g = torch.Generator().manual_seed(seed)
    ids = enc.encode(prompt)
    logits, past = model(torch.tensor([ids]))
    out = []
    for _ in range(n):
        v, idx = torch.topk(logits[0, -1] / temperature, top_k)
        nxt = idx[torch.multinomial(torch.softmax(v, dim=-1), 1, generator=g)].item()
        if nxt == 0 or len(ids) + len(out) >= model.context:
            break
        out.append(nxt)
        pos = torch.tensor([[len(ids) + len(out) - 1]])
        mask = torch.ones(1, len(ids) + len(out), dtype=torch.long)
        logits, past = model(torch.tensor([[nxt]]), mask, pos, past)
    return prompt + enc.decode(out)


def export_onnx(model, path):
    h = HPARAMS
    wrapper = OnnxWrapper(model, h["layers"]).eval()
    hd = h["width"] // h["heads"]
    b, s, past_len = 2, 3, 4
    names_in = ["input_ids", "attention_mask", "position_ids"]
    names_out = ["logits"]
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
            "position_ids": {0: "batch_size", 1: "sequence_length"},
            "logits": {0: "batch_size", 1: "sequence_length"}}
    past = []
    for i in range(h["layers"]):
        for kind in ("key", "value"):
            past.append(torch.randn(b, h["heads"], past_len, hd))
            names_in.append(f"past_key_values.{i}.{kind}")
            names_out.append(f"present.{i}.{kind}")
            axes[f"past_key_values.{i}.{kind}"] = {0: "batch_size", 2: "past_sequence_length"}
            axes[f"present.{i}.{kind}"] = {0: "batch_size", 2: "total_sequence_length"}
    inputs = (torch.randint(1, h["vocab"], (b, s)), torch.ones(b, past_len + s, dtype=torch.long),
              torch.arange(past_len, past_len + s).unsqueeze(0).expand(b, s).contiguous(), *past)
    torch.onnx.export(wrapper, inputs, str(path), input_names=names_in, output_names=names_out,
                      dynamic_axes=axes, opset_version=17,
                      # Folding would store the transposed (tied) embedding matrix a second time (+4 MB);
                      # onnxruntime folds it in memory when it loads the model anyway.
                      do_constant_folding=False)
    onnx.checker.check_model(onnx.load(str(path)))


@torch.no_grad()
def reference_cases(model, enc):
    """Inputs and PyTorch logits for verify.mjs: a prompt with an empty past, a continuation with a
    past, and a left-padded batch of two prompts."""
    h = HPARAMS
    hd = h["width"] // h["heads"]
    a = enc.encode("It is a truth universally acknowledged, that a single man in possession")
    bb = enc.encode("Emma was")
    cases = []

    def run(ids, mask, pos, past):
        logits, presents = model(torch.tensor(ids), torch.tensor(mask), torch.tensor(pos), past)
        return logits, presents

    def empty(batch):
        return [(torch.zeros(batch, h["heads"], 0, hd), torch.zeros(batch, h["heads"], 0, hd))
                for _ in range(h["layers"])]

    # 1. Whole prompt, empty past.
    logits, _ = run([a], [[1] * len(a)], [list(range(len(a)))], empty(1))
    cases.append({"name": "prompt, empty past", "input_ids": [a], "attention_mask": [[1] * len(a)],
                  "position_ids": [list(range(len(a)))], "past_from": None, "logits": logits.flatten().tolist()})
    # 2. The first 6 tokens, then the rest with their past.
    p = 6
    logits, presents = run([a[:p]], [[1] * p], [list(range(p))], empty(1))
    cases.append({"name": "prefix, empty past", "input_ids": [a[:p]], "attention_mask": [[1] * p],
                  "position_ids": [list(range(p))], "past_from": None, "logits": logits.flatten().tolist()})
    logits, _ = run([a[p:]], [[1] * len(a)], [list(range(p, len(a)))], presents)
    cases.append({"name": "suffix with past", "input_ids": [a[p:]], "attention_mask": [[1] * len(a)],
                  "position_ids": [list(range(p, len(a)))], "past_from": 1, "logits": logits.flatten().tolist()})
    # 3. Left-padded batch.
    n = len(a)
    pad_b = [0] * (n - len(bb)) + bb
    mask = [[1] * n, [0] * (n - len(bb)) + [1] * len(bb)]
    pos = [list(range(n)), [0] * (n - len(bb)) + list(range(len(bb)))]
    logits, _ = run([a, pad_b], mask, pos, empty(2))
    cases.append({"name": "left-padded batch of 2", "input_ids": [a, pad_b], "attention_mask": mask,
                  "position_ids": pos, "past_from": None, "logits": logits.flatten().tolist()})
    return cases


def write_config():
    h = HPARAMS
    config = {
        "name": "austen-gpt",
        "task": "generation",
        "description": "GPT-2-architecture model trained from scratch on Jane Austen's novels (demo text generator)",
        "maxBatchSize": 16,
        "versionPolicy": {"latest": 1},
        "inputs": [
            {"name": "input_ids", "datatype": "INT64", "dims": [-1]},
            {"name": "attention_mask", "datatype": "INT64", "dims": [-1]},
            {"name": "position_ids", "datatype": "INT64", "dims": [-1]},
        ],
        "outputs": [{"name": "logits", "datatype": "FP32", "dims": [-1, h["vocab"]]}],
        # Prompts are not given special tokens and are padded on the left; no longer than the context.
        "tokenizer": {"name": "austen-gpt", "file": "tokenizer.json", "kind": "huggingface",
                      "maxLength": h["context"], "addSpecialTokens": False, "paddingSide": "left"},
        "generation": {
            "numLayers": h["layers"], "numHeads": h["heads"], "headDim": h["width"] // h["heads"],
            "vocabSize": h["vocab"], "maxContextLength": h["context"], "eosTokenId": 0,
            "pastKeyInput": "past_key_values.{layer}.key", "pastValueInput": "past_key_values.{layer}.value",
            "presentKeyOutput": "present.{layer}.key", "presentValueOutput": "present.{layer}.value",
            # The model-runner's generation limits (services/shared/src/model-repository.ts).
            "defaultMaxNewTokens": 64, "maxConcurrentSequences": 16, "maxCachedTokens": 16 * h["context"],
            "maxQueuedSequences": 64,
        },
    }
    (OUT / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def main():
    h = HPARAMS
    model = GPT(h["vocab"], h["context"], h["width"], h["layers"], h["heads"], dropout=0.0)
    model.load_state_dict(torch.load(RUN / "model.pt"))
    model.eval()
    enc = load_tokenizer()
    _, held_ids = load_ids()
    ppl = perplexity(model, held_ids, h["context"])
    print(f"held-out perplexity {ppl:.2f} ({len(held_ids)} tokens, windows of {h['context']})", flush=True)
    samples = []
    for i, prompt in enumerate(PROMPTS):
        text = sample(model, enc, prompt, seed=SAMPLE_SEED + i)
        samples.append({"prompt": prompt, "seed": SAMPLE_SEED + i, "text": text})
        print(f"--- {prompt!r} (seed {SAMPLE_SEED + i})\n{text}", flush=True)

    (OUT / "1").mkdir(parents=True, exist_ok=True)
    # The tokenizer the model was trained with goes beside it (bpe.py wrote it there too).
    (OUT / "1" / "tokenizer.json").write_text((CACHE / "tokenizer.json").read_text(encoding="utf-8"), encoding="utf-8")
    export_onnx(model, OUT / "1" / "model.onnx")
    print(f"exported {OUT / '1' / 'model.onnx'}", flush=True)
    (CACHE / "reference.json").write_text(json.dumps({"cases": reference_cases(model, enc)}))

    stats = json.loads((RUN / "train-stats.json").read_text())
    stats.update({"heldout_perplexity": ppl, "heldout_tokens": len(held_ids), "samples": samples})
    (CACHE / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False))
    write_config()


if __name__ == "__main__":
    main()
