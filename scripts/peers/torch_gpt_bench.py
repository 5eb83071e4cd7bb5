#!/usr/bin/env python3
"""PyTorch twin of the `pretrain` environment's baseline GPT, to benchmark training throughput side by side.

Same data (Brown corpus, tags stripped and detokenised the same way, every 20th file held out), same byte vocabulary,
same architecture (pre-LayerNorm, GELU tanh-approximation MLP of 4x width, learned positions, tied embeddings, no
linear biases, GPT-2 init with residual projections scaled by 1/sqrt(2 * n_layer)), same optimiser (AdamW, betas
0.9/0.95, eps 1e-8, decoupled weight decay 0.1 on matrices, gradient clipping at 1.0, cosine schedule to 10%) and the
same fixed evaluation (the first 128 windows of 129 bytes of the validation text). Random streams differ from candle's,
so losses agree statistically, not bit for bit.

Run with the peers venv:  /tmp/peers/bin/python scripts/peers/torch_gpt_bench.py --threads 1
and compare `tokens_per_second` with `ideator exec --env pretrain --json` (metrics.tokens_per_second).
"""
import argparse
import json
import math
import os
import re
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def detokenize(tagged):
    out = []
    for line in tagged.splitlines():
        words = [w.rsplit("/", 1)[0] if "/" in w else w for w in line.split()]
        words = [w for w in words if w]
        if not words:
            continue
        sentence, glue_next = "", True
        for w in words:
            if w in ("``", "''"):
                w = '"'
            opening = w in ("(", "[") or (w == '"' and sentence.count('"') % 2 == 0)
            closing = w in (".", ",", ";", ":", "?", "!", ")", "]", "'", "n't", "'s") or (w == '"' and not opening)
            if not glue_next and not closing:
                sentence += " "
            sentence += w
            glue_next = opening
        out.append(sentence + "\n")
    return "".join(out)


def load_brown(folder):
    names = sorted(n for n in os.listdir(folder) if re.fullmatch(r"c[a-z]\d\d", n))
    train, val = bytearray(), bytearray()
    for i, name in enumerate(names):
        with open(os.path.join(folder, name), "rb") as f:
            text = detokenize(f.read().decode("utf-8", "replace"))
        target = val if i % 20 == 0 else train
        target += text.encode("utf-8") + b"\n"
    return bytes(train), bytes(val)


class Block(nn.Module):
    def __init__(self, d, n_head, hidden, std, proj_std):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.up, self.down = nn.Linear(d, hidden, bias=False), nn.Linear(hidden, d, bias=False)
        for m in (self.q, self.k, self.v, self.up):
            nn.init.normal_(m.weight, std=std)
        for m in (self.o, self.down):
            nn.init.normal_(m.weight, std=proj_std)

    def forward(self, x):
        b, t, d = x.shape
        h = self.ln1(x)
        split = lambda y: y.view(b, t, self.n_head, d // self.n_head).transpose(1, 2)
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        if self.explicit_attention:
            att = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.n_head)
            att = att.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
            y = F.softmax(att, dim=-1) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(y.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.ln2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, n_layer, d, n_head, max_len, std=0.02, explicit_attention=False):
        super().__init__()
        self.wte = nn.Embedding(256, d)
        self.wpe = nn.Embedding(max_len, d)
        nn.init.normal_(self.wte.weight, std=std)
        nn.init.normal_(self.wpe.weight, std=std)
        proj_std = std / math.sqrt(2 * n_layer)
        self.blocks = nn.ModuleList(Block(d, n_head, 4 * d, std, proj_std) for _ in range(n_layer))
        for b in self.blocks:
            b.explicit_attention = explicit_attention
        self.ln_f = nn.LayerNorm(d)

    def forward(self, ids, targets):
        t = ids.shape[1]
        x = self.wte(ids) + self.wpe(torch.arange(t))
        for b in self.blocks:
            x = b(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.view(-1, 256), targets.reshape(-1))


# The environment's baseline shapes (envs/src/pretrain/mod.rs). `small` trains 1,700 steps under its budget; a
# throughput measurement needs far fewer.
SCALES = {
    "tiny": dict(n_layer=4, d_model=128, n_head=4, batch=8, seq=128, steps=102),
    "small": dict(n_layer=6, d_model=384, n_head=6, batch=32, seq=256, steps=12),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--brown", default=os.path.join(os.environ.get("IDEATOR_ASSETS", "assets"), "brown"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--scale", choices=sorted(SCALES), default="tiny",
                   help="the environment scale whose baseline shape to use (the flags below override it)")
    p.add_argument("--n-layer", type=int)
    p.add_argument("--d-model", type=int)
    p.add_argument("--n-head", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--steps", type=int, help="default: the steps the scale's budget buys (tiny), or 12 (small)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--explicit-attention", action="store_true",
                   help="materialise the attention matrix like the candle model instead of fused SDPA")
    a = p.parse_args()
    for name, value in SCALES[a.scale].items():
        if getattr(a, name) is None:
            setattr(a, name, value)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    train, val = load_brown(a.brown)
    model = Gpt(a.n_layer, a.d_model, a.n_head, max(a.seq, 128), explicit_attention=a.explicit_attention)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps)))
    data = torch.frombuffer(bytearray(train), dtype=torch.uint8).long()
    gen = torch.Generator().manual_seed(a.seed)
    start = time.time()
    for step in range(a.steps):
        ix = torch.randint(0, len(data) - a.seq - 1, (a.batch,), generator=gen)
        x = torch.stack([data[i:i + a.seq] for i in ix])
        y = torch.stack([data[i + 1:i + a.seq + 1] for i in ix])
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    train_seconds = time.time() - start
    vdata = torch.frombuffer(bytearray(val), dtype=torch.uint8).long()
    with torch.no_grad():
        windows = torch.stack([vdata[i * 129:(i + 1) * 129] for i in range(128)])
        val_loss = sum(model(windows[i:i + 32, :-1], windows[i:i + 32, 1:]).item() for i in range(0, 128, 32)) / 4
    tokens = a.steps * a.batch * a.seq
    print(json.dumps({"framework": f"torch {torch.__version__}", "scale": a.scale, "threads": a.threads, "steps": a.steps,
                      "tokens": tokens, "train_seconds": train_seconds, "tokens_per_second": tokens / train_seconds,
                      "val_loss": val_loss, "final_train_loss": loss.item()}))


if __name__ == "__main__":
    main()
