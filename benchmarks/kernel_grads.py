"""How good kcompile's choice of kernel-gradient form is on this machine.

    .venv/bin/python benchmarks/kernel_grads.py [--regime parts|whole] [--rounds 5]
                                                [SHAPE ...]   (default: a grid of 2-D shapes)

A convolution's kernel gradient takes one of three forms (kcompile/ops/nn.py,
kernel_grad_form): a gathered im2col ("gather"), per-offset slices ("slices", stride 1) or a
one-hot unfold ("onehot"). For each SHAPE, a one-convolution model (a convolution with
`padding=same` and relu, a global average pool, Dense(10, softmax), Adam) is compiled once
per form (the choice forced), and `fit`'s whole step at batch 128 is timed in each, the forms
taking turns (--rounds of STEPS steps, the median). ``--regime parts`` runs the step in two
one-core parts of the batch (as the runtime runs a per-sample step worth splitting), ``whole``
on every core (as a BatchNormalization model's). Prints each form's ms a step, the form the
rule picks, and its regret (its time over the fastest form's); then the mean and the largest
regret. The rule was fitted with this script (2-D: 98 + 20 shapes in parts, 63 whole).

SHAPE is SIZExCINxCOUT[xKERNEL[xSTRIDE]] for a square 2-D map (28x16x32: 28x28 input,
16 -> 32 channels, 3x3 kernel), or with --dims 1 a sequence (400x128x128x5: 400 steps,
Conv1D(128, 5)).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMS = ("gather", "slices", "onehot")
STEPS = 6  # batches of 128 a timed fit
GRID = [f"{h}x{c}x{o}" for h in (8, 12, 16, 24, 32) for c in (8, 16, 32, 64) for o in (16, 32, 64, 128)
        if h * h * c * o <= 4_194_304 and o <= 4 * c]


def source(size, cin, cout, kernel, stride, dims):
    if dims == 1:
        shape, layer, pool = f"{size}, {cin}", f"Conv1D({cout}, {kernel}", "GlobalAveragePooling1D"
    else:
        shape, layer, pool = f"{size}, {size}, {cin}", f"Conv2D({cout}, {kernel}", "GlobalAveragePooling2D"
    return f"""model m {{
    input x: float32[{shape}]
    {layer}, strides={stride}, padding=same, activation=relu)
    {pool}()
    probs = Dense(10, activation=softmax)
    output probs
    train {{
        loss = categorical_crossentropy
        optimizer = Adam()
    }}
}}"""


def measure(shape: str, regime: str, rounds: int, dims: int) -> dict:
    """Each form's ms a step, and the rule's form, for one SHAPE."""
    import numpy as np
    import kcompile
    from kcompile.ops import nn
    numbers = [int(v) for v in shape.split("x")]
    size, cin, cout = numbers[:3]
    kernel = numbers[3] if len(numbers) > 3 else 3
    stride = numbers[4] if len(numbers) > 4 else 1
    if kernel ** dims > nn.IM2COL_MAX_WINDOW:
        raise SystemExit(f"{shape}: a window of {kernel ** dims} numbers is above IM2COL_MAX_WINDOW "
                         f"({nn.IM2COL_MAX_WINDOW}): its kernel gradient has one form only")
    rule = nn.kernel_grad_form
    chosen = []
    models = {}
    try:
        for form in FORMS if stride == 1 else ("gather", "onehot"):
            # (the rule asked for the regime measured, whatever the compiler expects for this model)
            nn.kernel_grad_form = lambda *a, form=form, **k: chosen.append(rule(*a, in_parts=regime == "parts")) or form
            models[form] = kcompile.compile_string(source(size, cin, cout, kernel, stride, dims), seed=0)
            models[form].batch_parts = 2 if regime == "parts" else 1
    finally:
        nn.kernel_grad_form = rule
    rng = np.random.default_rng(0)
    dims_in = (size, cin) if dims == 1 else (size, size, cin)
    x = rng.random((128 * STEPS,) + dims_in, dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, len(x))]
    times = {form: [] for form in models}
    for m in models.values():
        m.fit(x[:256], y[:256], batch_size=128, verbose=0)
    for _ in range(rounds):
        for form, m in models.items():
            start = time.perf_counter()
            m.fit(x, y, batch_size=128, epochs=1, verbose=0, shuffle=False)
            times[form].append((time.perf_counter() - start) / STEPS * 1e3)
    ms = {form: statistics.median(t) for form, t in times.items()}
    if not chosen:
        raise RuntimeError(f"{shape}: the compiler never asked kernel_grad_form (is the convolution trained?)")
    picked = chosen[0]
    return {"shape": shape, "ms": ms, "rule": picked, "regret": ms[picked] / min(ms.values())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shapes", nargs="*", help="SIZExCINxCOUT[xKERNEL[xSTRIDE]] (default: a 2-D grid)")
    parser.add_argument("--regime", choices=("parts", "whole"), default="parts")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dims", type=int, choices=(1, 2), default=2)
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    rows = []
    for shape in args.shapes or GRID:
        row = measure(shape, args.regime, args.rounds, args.dims)
        rows.append(row)
        print(f"{shape:>16}  " + "  ".join(f"{f} {t:7.2f}" for f, t in row["ms"].items())
              + f"  ms/step; rule: {row['rule']} ({row['regret']:.2f}x the fastest)", flush=True)
    regrets = [r["regret"] for r in rows]
    print(f"{len(rows)} shapes, {args.regime}: the rule's step {100 * (statistics.mean(regrets) - 1):.1f}% slower "
          f"than the fastest form on average, {max(regrets):.2f}x at most")
    return rows


if __name__ == "__main__":
    main()
