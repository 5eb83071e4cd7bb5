"""The editable part of the spirals codebase: a one-hidden-layer MLP trained by per-example gradient descent.

Ideas change this file (as a unified diff against it). The protected `evaluate.py` calls `fit(points, seed)`, where
`points` is a list of ((x, y), label) pairs with label 0 or 1, and scores the returned `predict` function, which
maps a point (x, y) to a real score (> 0 means label 1) on held-out points.
"""
import math
import random
import sys

LR = 0.1
EPOCHS = 30
HIDDEN = 8
ACTIVATION = "tanh"
INIT_SCALE = 0.5


def activation(z):
    return math.tanh(z) if ACTIVATION == "tanh" else max(0.0, z)


def activation_grad(z, a):
    return 1.0 - a * a if ACTIVATION == "tanh" else (1.0 if z > 0 else 0.0)


def init_params(rng):
    w1 = [[rng.gauss(0, INIT_SCALE) for _ in range(2)] for _ in range(HIDDEN)]
    b1 = [0.0] * HIDDEN
    w2 = [rng.gauss(0, INIT_SCALE) for _ in range(HIDDEN)]
    return w1, b1, w2, 0.0


def forward(params, p):
    w1, b1, w2, b2 = params
    zs = [w[0] * p[0] + w[1] * p[1] + b for w, b in zip(w1, b1)]
    hs = [activation(z) for z in zs]
    return zs, hs, sum(w * h for w, h in zip(w2, hs)) + b2


def fit(points, seed):
    rng = random.Random(seed)
    points = list(points)
    w1, b1, w2, b2 = init_params(rng)
    for epoch in range(EPOCHS):
        rng.shuffle(points)
        loss = 0.0
        for p, label in points:
            zs, hs, out = forward((w1, b1, w2, b2), p)
            prob = 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, out))))
            loss += -math.log(max(1e-12, prob if label else 1.0 - prob))
            g = prob - label
            for j in range(HIDDEN):
                gh = g * w2[j] * activation_grad(zs[j], hs[j])
                w2[j] -= LR * g * hs[j]
                w1[j][0] -= LR * gh * p[0]
                w1[j][1] -= LR * gh * p[1]
                b1[j] -= LR * gh
            b2 -= LR * g
        print(f"epoch {epoch} loss {loss / len(points):.4f}", file=sys.stderr)
    params = (w1, b1, w2, b2)
    return lambda p: forward(params, p)[2]
