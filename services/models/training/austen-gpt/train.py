"""Trains austen-gpt on the token ids bpe.py wrote (.cache/ids.json).

Resumable: a checkpoint (model, optimiser, step, RNG state) is saved to
.cache/run/checkpoint.pt every CHECKPOINT_EVERY steps; running again continues from it.
Writes .cache/run/model.pt (weights only) and .cache/run/train-stats.json at the end.
"""
import json
import math
import os
import pathlib
import random
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from model import GPT  # noqa: E402

HERE = pathlib.Path(__file__).parent
CACHE = HERE / ".cache"
RUN = CACHE / "run"
SEED = 1234
HPARAMS = {
    "vocab": 4096, "context": 256, "width": 256, "layers": 4, "heads": 8, "dropout": 0.1,
    "batch": 16, "steps": int(os.environ.get("TRAIN_STEPS", "900")), "lr": 1e-3, "min_lr_ratio": 0.1,
    "warmup": 100, "weight_decay": 0.1, "betas": (0.9, 0.95), "grad_clip": 1.0,
}
CHECKPOINT_EVERY = 100
EVAL_EVERY = 250

random.seed(SEED)
torch.manual_seed(SEED)
torch.set_num_threads(int(os.environ.get("TRAIN_THREADS", "2")))


def load_ids():
    ids = json.loads((CACHE / "ids.json").read_text())

    def join(part):
        out = []
        for name in sorted(part):
            out.extend(part[name])
            out.append(0)  # <|endoftext|> between novels
        return torch.tensor(out, dtype=torch.long)

    return join(ids["train"]), join(ids["heldout"])


@torch.no_grad()
def perplexity(model, data, context, windows=None):
    """Non-overlapping windows of `context` tokens, every token predicted once (a fixed, simple protocol)."""
    was_training = model.training
    model.eval()
    starts = list(range(0, len(data) - context - 1, context))
    if windows:
        starts = starts[:windows]
    total, count = 0.0, 0
    for i in range(0, len(starts), 16):
        xs = torch.stack([data[s:s + context] for s in starts[i:i + 16]])
        ys = torch.stack([data[s + 1:s + context + 1] for s in starts[i:i + 16]])
        logits, _ = model(xs)
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ys.reshape(-1),
                                                   reduction="sum").item()
        count += ys.numel()
    model.train(was_training)
    return math.exp(total / count)


def lr_at(step, h):
    """Linear warm-up times a cosine from lr down to min_lr_ratio * lr over the whole run."""
    warm = min(1.0, (step + 1) / h["warmup"])
    cosine = h["min_lr_ratio"] + (1 - h["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * step / h["steps"]))
    return h["lr"] * warm * cosine


def main():
    h = HPARAMS
    RUN.mkdir(parents=True, exist_ok=True)
    train_ids, held_ids = load_ids()
    print(f"tokens: train {len(train_ids)}, held-out {len(held_ids)}; threads {torch.get_num_threads()}", flush=True)
    model = GPT(h["vocab"], h["context"], h["width"], h["layers"], h["heads"], dropout=h["dropout"])
    params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {params}", flush=True)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": h["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=h["lr"], betas=h["betas"])
    gen = torch.Generator().manual_seed(SEED)
    ckpt = RUN / "checkpoint.pt"
    step, elapsed, history = 0, 0.0, []
    if ckpt.exists():
        state = torch.load(ckpt)
        if state["hparams"] != json.loads(json.dumps(h)):
            raise SystemExit(f"{ckpt} was made with other hyper-parameters; delete it to start again")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        step, elapsed, history = state["step"], state["elapsed"], state["history"]
        print(f"resumed at step {step} ({elapsed / 60:.1f} min trained)", flush=True)
    model.train()
    t_start = time.time() - elapsed
    losses = []
    while step < h["steps"]:
        lr = lr_at(step, h)
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(train_ids) - h["context"] - 1, (h["batch"],), generator=gen)
        x = torch.stack([train_ids[s:s + h["context"]] for s in starts])
        y = torch.stack([train_ids[s + 1:s + h["context"] + 1] for s in starts])
        logits, _ = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, h["vocab"]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), h["grad_clip"])
        opt.step()
        step += 1
        losses.append(loss.item())
        if step % 25 == 0:
            elapsed = time.time() - t_start
            print(f"step {step}/{h['steps']} loss {sum(losses) / len(losses):.3f} (this batch {losses[-1]:.3f}) "
                  f"lr {lr:.2e} "
                  f"{elapsed / 60:.1f} min ({step / elapsed:.2f} steps/s)", flush=True)
            history.append({"step": step, "loss": sum(losses) / len(losses), "minutes": elapsed / 60})
            losses = []
        if step % EVAL_EVERY == 0 and step < h["steps"]:
            t_eval = time.time()
            ppl = perplexity(model, held_ids, h["context"], windows=60)
            history.append({"step": step, "heldout_ppl_60_windows": ppl})
            print(f"step {step}: held-out perplexity (first 60 windows) {ppl:.1f}", flush=True)
            t_start += time.time() - t_eval  # evaluation time does not count as training time
        if step % CHECKPOINT_EVERY == 0 or step == h["steps"]:
            elapsed = time.time() - t_start
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                        "torch_rng": torch.get_rng_state(), "step": step, "elapsed": elapsed,
                        "history": history, "hparams": json.loads(json.dumps(h))}, tmp)
            os.replace(tmp, ckpt)
    elapsed = time.time() - t_start
    torch.save(model.state_dict(), RUN / "model.pt")
    (RUN / "train-stats.json").write_text(json.dumps({
        "parameters": params, "hparams": h, "train_tokens": len(train_ids), "heldout_tokens": len(held_ids),
        "train_minutes": elapsed / 60, "tokens_seen": h["steps"] * h["batch"] * h["context"],
        "epochs": h["steps"] * h["batch"] * h["context"] / len(train_ids), "threads": torch.get_num_threads(),
        "history": history,
    }, indent=2))
    print(f"done: {h['steps']} steps in {elapsed / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
