"""GPT-2 architecture with an explicit KV cache in the Hugging Face/optimum
decoder signature, so the exported graph takes past keys/values and returns
present ones."""
import math

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    def __init__(self, width, heads, dropout):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.out = nn.Linear(4 * width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, bias, past_k=None, past_v=None):
        b, s, w = x.shape
        hd = w // self.heads
        q, k, v = self.qkv(self.ln1(x)).split(w, dim=2)
        q = q.view(b, s, self.heads, hd).transpose(1, 2)
        k = k.view(b, s, self.heads, hd).transpose(1, 2)
        v = v.view(b, s, self.heads, hd).transpose(1, 2)
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd) + bias
        att = self.drop(torch.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, s, w)
        x = x + self.drop(self.proj(y))
        x = x + self.drop(self.out(F.gelu(self.fc(self.ln2(x)))))
        return x, k, v


class GPT(nn.Module):
    def __init__(self, vocab, context, width, layers, heads, dropout=0.0):
        super().__init__()
        self.context = context
        self.heads = heads
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(width, heads, dropout) for _ in range(layers)])
        self.ln = nn.LayerNorm(width)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("out.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, input_ids, attention_mask=None, position_ids=None, past=None):
        b, s = input_ids.shape
        past_len = past[0][0].shape[2] if past is not None else 0
        if position_ids is None:
            position_ids = torch.arange(s, device=input_ids.device).unsqueeze(0).expand(b, s)
        total = past_len + s
        q_pos = torch.arange(s) + past_len
        k_pos = torch.arange(total)
        allowed = (k_pos.unsqueeze(0) <= q_pos.unsqueeze(1)).unsqueeze(0).unsqueeze(0)  # [1,1,s,total]
        if attention_mask is not None:
            allowed = allowed & (attention_mask[:, None, None, :] > 0)
        # A large negative instead of -inf: fully padded query rows must stay finite, not NaN.
        bias = torch.where(allowed, torch.zeros(()), torch.full((), -1e9))
        x = self.drop(self.tok(input_ids) + self.pos(position_ids))
        presents = []
        for i, block in enumerate(self.blocks):
            pk, pv = (past[i] if past is not None else (None, None))
            x, k, v = block(x, bias, pk, pv)
            presents.append((k, v))
        logits = self.ln(x) @ self.tok.weight.t()
        return logits, presents


class OnnxWrapper(nn.Module):
    """Flat inputs/outputs in the optimum order: input_ids, attention_mask, position_ids, past...; logits, present..."""

    def __init__(self, model, layers):
        super().__init__()
        self.model = model
        self.layers = layers

    def forward(self, input_ids, attention_mask, position_ids, *past_flat):
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(self.layers)]
        logits, presents = self.model(input_ids, attention_mask, position_ids, past)
        flat = []
        for k, v in presents:
            flat.extend([k, v])
        return (logits, *flat)
