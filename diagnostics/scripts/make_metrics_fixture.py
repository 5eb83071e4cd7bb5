#!/usr/bin/env python3
"""Independent reference values for self-BLEU (NLTK) and the Vendi score (numpy), for tests/reference.rs.

Writes tests/fixtures/metrics_reference.json. Self-BLEU: each idea against all the others with NLTK's
sentence_bleu, BLEU-4 weights and SmoothingFunction().method1 (the Texygen definition), averaged; tokens are
`re.findall(r"\\w+|[^\\w\\s]", text.lower())`, the crate's tokenisation for ASCII text. Vendi: eigenvalues of K/n
with numpy's eigvalsh, K the cosine matrix of seeded random vectors.

Usage: python make_metrics_fixture.py   (needs nltk and numpy)
"""
import json
import re
from pathlib import Path

import numpy as np
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "metrics_reference.json"

BATCHES = [
    [
        "Switch the optimiser to Lion with lr = 1e-4 and cosine decay.",
        "Switch the optimiser to Lion with lr = 3e-4 and linear decay.",
        "Use SwiGLU activations in every MLP block.",
        "Tie input and output embeddings; keep AdamW.",
        "Switch to Lion.",
        "lr",
    ],
    [
        "[Experiment] Warm up for 200 steps then hold.\n[Code Changes]\nwarmup_steps = 200\nschedule = \"wsd\"\n[End]",
        "[Experiment] Warm up for 100 steps then decay.\n[Code Changes]\nwarmup_steps = 100\nschedule = \"cosine\"\n[End]",
        "[Experiment] Add QK-norm.\n[Code Changes]\nqk_norm = true\n[End]",
        "[Experiment] Add QK-norm and a logit soft-cap.\n[Code Changes]\nqk_norm = true\nlogit_softcap = 30.0\n[End]",
    ],
    ["the same idea twice", "the same idea twice", "a completely different one"],
]


def tokenize(text):
    return re.findall(r"\w+|[^\w\s]", text.lower())


def self_bleu(texts):
    toks = [tokenize(t) for t in texts]
    smooth = SmoothingFunction().method1
    scores = [
        sentence_bleu(toks[:i] + toks[i + 1 :], hyp, weights=(0.25, 0.25, 0.25, 0.25), smoothing_function=smooth)
        for i, hyp in enumerate(toks)
    ]
    return float(np.mean(scores))


def vendi(x):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(x @ x.T / len(x))
    lam = lam[lam > 1e-15]
    return float(np.exp(-(lam * np.log(lam)).sum()))


def main():
    rng = np.random.default_rng(20260101)
    # One batch wider than tall and one taller than wide: both sides of the crate's Gram-matrix shortcut.
    # Rounded to float32 values so that Rust reads exactly the vectors numpy scored.
    vector_batches = [
        rng.normal(size=(6, 10)).astype(np.float32),
        (rng.normal(size=(20, 5)) + np.array([2.0, 0, 0, 0, 0])).astype(np.float32),
    ]
    fixture = {
        "generator": "diagnostics/scripts/make_metrics_fixture.py",
        "self_bleu": [{"texts": b, "self_bleu": self_bleu(b)} for b in BATCHES],
        "vendi": [
            {"vectors": v.astype(float).tolist(), "vendi": vendi(v.astype(np.float64))} for v in vector_batches
        ],
    }
    OUT.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {OUT}")
    for b in fixture["self_bleu"]:
        print("self-BLEU", round(b["self_bleu"], 6))
    for v in fixture["vendi"]:
        print("Vendi", round(v["vendi"], 6))


if __name__ == "__main__":
    main()
