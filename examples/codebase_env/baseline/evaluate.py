#!/usr/bin/env python3
"""Protected evaluation of the spirals codebase (ideas may not change this file; ideator checks its hash).

Builds the fixed data (two interleaved spirals, 400 training and 400 validation points from a fixed seed), calls
`train.fit(train_points, seed)` from the editable `train.py`, scores the returned `predict` function on the
validation points, and prints one JSON line as the last line of stdout:
{"reward": validation_accuracy, "metrics": {...}}, or {"status": "failed", "cause": ..., "message": ...}.
The seed comes from the IDEATOR_SEED environment variable (0 when unset).
"""
import json
import math
import os
import random
import sys
import time


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
    seed = int(os.environ.get("IDEATOR_SEED", "0"))
    data_rng = random.Random(1234)  # fixed data: an idea cannot change the evaluation
    train_points, val_points = spirals(400, data_rng), spirals(400, data_rng)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import train  # the editable part: imported only now, so that an import error is reported as a crash

    start = time.time()
    predict = train.fit([(p, y) for p, y in train_points], seed)
    seconds = time.time() - start
    correct = 0
    for p, label in val_points:
        score = predict(p)
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            print(json.dumps({"status": "failed", "cause": "non_finite_loss",
                              "message": f"predict returned {score!r} (a finite number is required)"}))
            return
        correct += (score > 0) == bool(label)
    accuracy = correct / len(val_points)
    print(json.dumps({"reward": accuracy, "metrics": {"val_accuracy": accuracy, "train_seconds": seconds}}))


if __name__ == "__main__":
    main()
