#!/usr/bin/env python3
"""Example program for ideator's `command` environment (pure Python, no third-party packages).

Reads `recipe.json` (the validated knobs) and `run.json` (seed, scale) from the work folder given as the first
argument, trains a one-hidden-layer MLP on two interleaved spirals by per-example gradient descent, and prints one
JSON line as its last line of stdout: {"reward": validation_accuracy, "metrics": {...}}, or a failure record
{"status": "failed", "cause": "non_finite_loss", "message": ...}. The idea text itself is in `idea.md`; this
program does not need it because ideator has already turned it into `recipe.json`.
"""
import json
import math
import os
import random
import sys


def spirals(n, rng, noise=0.15):
    points = []
    for i in range(n):
        label = i % 2
        t = 0.5 + 3.0 * rng.random()
        angle = t * 2.2 + label * math.pi
        x = t * math.cos(angle) + rng.gauss(0, noise)
        y = t * math.sin(angle) + rng.gauss(0, noise)
        points.append(((x / 3.5, y / 3.5), label))
    return points


def main():
    workdir = sys.argv[1] if len(sys.argv) > 1 else os.getcwd()
    with open(os.path.join(workdir, "recipe.json")) as f:
        recipe = json.load(f)
    with open(os.path.join(workdir, "run.json")) as f:
        run = json.load(f)
    lr, epochs, hidden = recipe["lr"], recipe["epochs"], recipe["hidden"]
    act = recipe["activation"]
    data_rng = random.Random(1234)  # fixed data: the evaluation cannot change
    train, val = spirals(400, data_rng), spirals(400, data_rng)
    rng = random.Random(run["seed"])
    s = recipe["init_scale"]
    w1 = [[rng.gauss(0, s) for _ in range(2)] for _ in range(hidden)]
    b1 = [0.0] * hidden
    w2 = [rng.gauss(0, s) for _ in range(hidden)]
    b2 = 0.0

    def f(z):
        return math.tanh(z) if act == "tanh" else max(0.0, z)

    def df(z, a):
        return 1.0 - a * a if act == "tanh" else (1.0 if z > 0 else 0.0)

    def forward(p):
        zs = [w[0] * p[0] + w[1] * p[1] + b for w, b in zip(w1, b1)]
        hs = [f(z) for z in zs]
        out = sum(w * h for w, h in zip(w2, hs)) + b2
        return zs, hs, out

    loss = 0.0
    for epoch in range(epochs):
        rng.shuffle(train)
        loss = 0.0
        for p, label in train:
            zs, hs, out = forward(p)
            if not math.isfinite(out) or abs(out) > 1e6:
                print(json.dumps({"status": "failed", "cause": "non_finite_loss",
                                  "message": f"the output diverged in epoch {epoch}"}))
                return
            prob = 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, out))))
            loss += -math.log(max(1e-12, prob if label else 1.0 - prob))
            g = prob - label
            for j in range(hidden):
                gh = g * w2[j] * df(zs[j], hs[j])
                w2[j] -= lr * g * hs[j]
                w1[j][0] -= lr * gh * p[0]
                w1[j][1] -= lr * gh * p[1]
                b1[j] -= lr * gh
            b2 -= lr * g
        loss /= len(train)
        print(f"epoch {epoch} loss {loss:.4f}", file=sys.stderr)
    correct = sum((forward(p)[2] > 0) == bool(label) for p, label in val)
    accuracy = correct / len(val)
    print(json.dumps({"reward": accuracy, "metrics": {"val_accuracy": accuracy, "train_loss": loss}}))


if __name__ == "__main__":
    main()
