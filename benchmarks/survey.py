"""A survey of many small models, kcompile against Keras 3 on JAX: where is kcompile slow?

    .venv/bin/python benchmarks/survey.py [--cases lstm,gru_dropout] [--rounds 2] [--json out.json]

The targets (run.py, paired.py) measure two models closely; this measures some thirty others
roughly, to find cliffs: a layer, option or optimizer whose training step is far slower than
Keras's (stop 32 found recurrent dropout at 0.09-0.23x Keras, onnxruntime's Einsum in each
step). Each case is one model written twice, in kcompile's language and in Keras, trained on
random data at batch 128 with the same loss and optimizer; its time is the best of three
epochs of ten batches after one to warm up, a few seconds a case. Each case runs in a process
of its own for each framework (`survey.py --worker FRAMEWORK --cases CASE`: a model left alive
in the process, its thread pools spinning, slowed the next case's steps up to 2x), the two
frameworks one after the other in alternating order, ``--rounds`` times; a case's time is its
best over the rounds. The table gives ms a step and the ratio Keras's time / kcompile's
(above 1: kcompile faster), marking those below 0.8x.
Differences of 10-20% are this machine's noise between processes; paired.py's method is the
one for those. Keras runs where it is installed (`pip install -e '.[bench]'`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH, BATCHES = 128, 10
TRAIN = "categorical_crossentropy"

# name: (input: shape, or ("ids", length, vocabulary)), kcompile's layers, Keras's layers
# (evaluated with L = keras.layers), optimizer (both languages' spelling); each model ends in
# Dense(10, softmax) in both.
MLP = (784,)
IMG = (28, 28, 1)
RGB = (32, 32, 3)
SEQ = (50, 16)
IDS = ("ids", 100, 5000)
CASES = {
    "mlp_rmsprop": (MLP, "Dense(512, activation=relu)", "L.Dense(512, activation='relu')", "RMSprop(learning_rate=0.001)"),
    "mlp_sgd_nesterov": (MLP, "Dense(512, activation=relu)", "L.Dense(512, activation='relu')",
                         "SGD(learning_rate=0.01, momentum=0.9, nesterov=true)"),
    "mlp_adamw": (MLP, "Dense(512, activation=relu)", "L.Dense(512, activation='relu')", "AdamW(learning_rate=0.001)"),
    "mlp_nadam": (MLP, "Dense(512, activation=relu)", "L.Dense(512, activation='relu')", "Nadam(learning_rate=0.001)"),
    "mlp_adagrad": (MLP, "Dense(512, activation=relu)", "L.Dense(512, activation='relu')", "Adagrad(learning_rate=0.01)"),
    "mlp_lion": (MLP, "Dense(512, activation=relu)", "L.Dense(512, activation='relu')", "Lion(learning_rate=0.0001)"),
    "mlp_gelu_layernorm": (MLP, "Dense(512, activation=gelu); LayerNormalization(); Dense(256, activation=swish)",
                           "L.Dense(512, activation='gelu'), L.LayerNormalization(), L.Dense(256, activation='swish')",
                           "Adam(learning_rate=0.001)"),
    "mlp_bn_dropout": (MLP, "Dense(512); BatchNormalization(); ReLU(); Dropout(0.2); Dense(256); BatchNormalization(); "
                            "ReLU(); Dropout(0.2)",
                       "L.Dense(512), L.BatchNormalization(), L.ReLU(), L.Dropout(0.2), L.Dense(256), "
                       "L.BatchNormalization(), L.ReLU(), L.Dropout(0.2)", "Adam(learning_rate=0.001)"),
    "cnn_mnist": (IMG, "Conv2D(32, 3, activation=relu); MaxPooling2D(2); Conv2D(64, 3, activation=relu); MaxPooling2D(2); "
                       "Flatten(); Dropout(0.5)",
                  "L.Conv2D(32, 3, activation='relu'), L.MaxPooling2D(2), L.Conv2D(64, 3, activation='relu'), "
                  "L.MaxPooling2D(2), L.Flatten(), L.Dropout(0.5)", "Adam(learning_rate=0.001)"),
    "cnn_same_avgpool": (IMG, "Conv2D(32, 3, padding=same, activation=relu); AveragePooling2D(2); "
                              "Conv2D(64, 3, padding=same, activation=relu); GlobalMaxPooling2D()",
                         "L.Conv2D(32, 3, padding='same', activation='relu'), L.AveragePooling2D(2), "
                         "L.Conv2D(64, 3, padding='same', activation='relu'), L.GlobalMaxPooling2D()",
                         "Adam(learning_rate=0.001)"),
    "cnn_strided": (RGB, "Conv2D(32, 3, strides=2, padding=same, activation=relu); "
                         "Conv2D(64, 3, strides=2, padding=same, activation=relu); GlobalAveragePooling2D()",
                    "L.Conv2D(32, 3, strides=2, padding='same', activation='relu'), "
                    "L.Conv2D(64, 3, strides=2, padding='same', activation='relu'), L.GlobalAveragePooling2D()",
                    "Adam(learning_rate=0.001)"),
    "cnn_dilated": (IMG, "Conv2D(32, 3, dilation_rate=2, activation=relu); Conv2D(32, 3, dilation_rate=2, activation=relu); "
                         "GlobalAveragePooling2D()",
                    "L.Conv2D(32, 3, dilation_rate=2, activation='relu'), L.Conv2D(32, 3, dilation_rate=2, "
                    "activation='relu'), L.GlobalAveragePooling2D()", "Adam(learning_rate=0.001)"),
    "cnn_bn": (RGB, "Conv2D(32, 3, padding=same, use_bias=false); BatchNormalization(); ReLU(); MaxPooling2D(2); "
                    "Conv2D(64, 3, padding=same, use_bias=false); BatchNormalization(); ReLU(); GlobalAveragePooling2D()",
               "L.Conv2D(32, 3, padding='same', use_bias=False), L.BatchNormalization(), L.ReLU(), L.MaxPooling2D(2), "
               "L.Conv2D(64, 3, padding='same', use_bias=False), L.BatchNormalization(), L.ReLU(), "
               "L.GlobalAveragePooling2D()", "Adam(learning_rate=0.001)"),
    "cnn_groupnorm": (RGB, "Conv2D(32, 3, padding=same); GroupNormalization(groups=8); ReLU(); MaxPooling2D(2); "
                           "GlobalAveragePooling2D()",
                      "L.Conv2D(32, 3, padding='same'), L.GroupNormalization(groups=8), L.ReLU(), L.MaxPooling2D(2), "
                      "L.GlobalAveragePooling2D()", "Adam(learning_rate=0.001)"),
    "cnn_layernorm": (RGB, "Conv2D(32, 3, padding=same); LayerNormalization(); ReLU(); MaxPooling2D(2); "
                           "GlobalAveragePooling2D()",
                      "L.Conv2D(32, 3, padding='same'), L.LayerNormalization(), L.ReLU(), L.MaxPooling2D(2), "
                      "L.GlobalAveragePooling2D()", "Adam(learning_rate=0.001)"),
    "separable": (RGB, "Conv2D(32, 3, padding=same, activation=relu); SeparableConv2D(64, 3, padding=same, activation=relu); "
                       "DepthwiseConv2D(3, padding=same, activation=relu); GlobalAveragePooling2D()",
                  "L.Conv2D(32, 3, padding='same', activation='relu'), L.SeparableConv2D(64, 3, padding='same', "
                  "activation='relu'), L.DepthwiseConv2D(3, padding='same', activation='relu'), "
                  "L.GlobalAveragePooling2D()", "Adam(learning_rate=0.001)"),
    "conv_transpose": (IMG, "Conv2D(32, 3, strides=2, padding=same, activation=relu); "
                            "Conv2DTranspose(32, 3, strides=2, padding=same, activation=relu); "
                            "UpSampling2D(2); Conv2D(8, 3, padding=same); GlobalAveragePooling2D()",
                       "L.Conv2D(32, 3, strides=2, padding='same', activation='relu'), "
                       "L.Conv2DTranspose(32, 3, strides=2, padding='same', activation='relu'), "
                       "L.UpSampling2D(2), L.Conv2D(8, 3, padding='same'), L.GlobalAveragePooling2D()",
                       "Adam(learning_rate=0.001)"),
    "conv1d_text": (IDS, "Embedding(5000, 64); Conv1D(64, 5, activation=relu); MaxPooling1D(2); Conv1D(64, 5, activation=relu); "
                         "GlobalAveragePooling1D()",
                    "L.Embedding(5000, 64), L.Conv1D(64, 5, activation='relu'), L.MaxPooling1D(2), "
                    "L.Conv1D(64, 5, activation='relu'), L.GlobalAveragePooling1D()", "Adam(learning_rate=0.001)"),
    "embedding_bag": (IDS, "Embedding(5000, 64); GlobalAveragePooling1D(); Dense(64, activation=relu)",
                      "L.Embedding(5000, 64), L.GlobalAveragePooling1D(), L.Dense(64, activation='relu')",
                      "Adam(learning_rate=0.001)"),
    "lstm": (SEQ, "LSTM(64)", "L.LSTM(64)", "Adam(learning_rate=0.001)"),
    "lstm_stacked": (SEQ, "LSTM(64, return_sequences=true); LSTM(64)", "L.LSTM(64, return_sequences=True), L.LSTM(64)",
                     "Adam(learning_rate=0.001)"),
    "gru": (SEQ, "GRU(64)", "L.GRU(64)", "Adam(learning_rate=0.001)"),
    "gru_reset_before": (SEQ, "GRU(64, reset_after=false)", "L.GRU(64, reset_after=False)", "Adam(learning_rate=0.001)"),
    "gru_dropout": (SEQ, "GRU(64, dropout=0.2, recurrent_dropout=0.2)", "L.GRU(64, dropout=0.2, recurrent_dropout=0.2)",
                    "Adam(learning_rate=0.001)"),
    "lstm_dropout": (SEQ, "LSTM(64, dropout=0.2, recurrent_dropout=0.2)", "L.LSTM(64, dropout=0.2, recurrent_dropout=0.2)",
                     "Adam(learning_rate=0.001)"),
    "simple_rnn": (SEQ, "SimpleRNN(64)", "L.SimpleRNN(64)", "Adam(learning_rate=0.001)"),
    "bidirectional_gru": (SEQ, "Bidirectional(GRU(32, return_sequences=true)); GlobalAveragePooling1D()",
                          "L.Bidirectional(L.GRU(32, return_sequences=True)), L.GlobalAveragePooling1D()",
                          "Adam(learning_rate=0.001)"),
    "masked_lstm": (IDS, "Embedding(5000, 32, mask_zero=true); LSTM(32)", "L.Embedding(5000, 32, mask_zero=True), L.LSTM(32)",
                    "Adam(learning_rate=0.001)"),
    "time_distributed": (SEQ, "TimeDistributed(Dense(64, activation=relu)); Conv1D(32, 3); GlobalAveragePooling1D()",
                         "L.TimeDistributed(L.Dense(64, activation='relu')), L.Conv1D(32, 3), L.GlobalAveragePooling1D()",
                         "Adam(learning_rate=0.001)"),
}
# functional cases: (input, kcompile's body lines, a Keras function of the input tensor, optimizer)
FUNCTIONAL = {
    "attention": (SEQ, ["h = Dense(64)(x)", "a = MultiHeadAttention(num_heads=4, key_dim=16)(h, h)",
                        "h = LayerNormalization()(h + a)", "f = Dense(64)(Dense(128, activation=relu)(h))",
                        "h = LayerNormalization()(h + f)", "h = GlobalAveragePooling1D()(h)"],
                  "h = L.Dense(64)(x); a = L.MultiHeadAttention(num_heads=4, key_dim=16)(h, h); "
                  "h = L.LayerNormalization()(h + a); f = L.Dense(64)(L.Dense(128, activation='relu')(h)); "
                  "h = L.LayerNormalization()(h + f); h = L.GlobalAveragePooling1D()(h)", "Adam(learning_rate=0.001)"),
    "residual": (IMG, ["h = Conv2D(16, 3, padding=same, activation=relu)(x)",
                       "r = Conv2D(16, 3, padding=same, activation=relu)(h)", "r = Conv2D(16, 3, padding=same)(r)",
                       "h = relu(h + r)", "h = GlobalAveragePooling2D()(h)"],
                 "h = L.Conv2D(16, 3, padding='same', activation='relu')(x); "
                 "r = L.Conv2D(16, 3, padding='same', activation='relu')(h); r = L.Conv2D(16, 3, padding='same')(r); "
                 "h = L.ReLU()(h + r); h = L.GlobalAveragePooling2D()(h)", "Adam(learning_rate=0.001)"),
}
NAMES = list(CASES) + list(FUNCTIONAL)


def data(spec, n, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    if spec[0] == "ids":
        x = rng.integers(1, spec[2], (n, spec[1]))
        x[:, spec[1] // 2:][rng.random((n, spec[1] - spec[1] // 2)) < 0.5] = 0  # (padding, for mask_zero)
    else:
        x = rng.random((n, *spec), dtype=np.float32)
    return x, np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]


def kdl_source(name):
    """The kcompile model of a case."""
    if name in CASES:
        spec, layers, _, optimizer = CASES[name]
        body = "\n".join(f"    {layer.strip()}" for layer in layers.split(";")) + "\n    Dense(10, activation=softmax)"
    else:
        spec, lines, _, optimizer = FUNCTIONAL[name]
        body = "\n".join(f"    {line}" for line in lines) + "\n    y = Dense(10, activation=softmax)(h)\n    output y"
    kind = f"int64[{spec[1]}]" if spec[0] == "ids" else f"float32[{', '.join(map(str, spec))}]"
    return (f"model {name} {{\n    input x: {kind}\n{body}\n"
            f"    train {{ loss = {TRAIN}; optimizer = {optimizer} }}\n}}")


def keras_model(name):
    import keras
    L = keras.layers  # noqa: N806 (the cases' spelling)
    spec, layers, _, optimizer = (CASES.get(name) or FUNCTIONAL[name])
    shape, dtype = ((spec[1],), "int32") if spec[0] == "ids" else (spec, "float32")
    x = keras.Input(shape, dtype=dtype)
    if name in CASES:
        h = x
        for layer in eval(f"[{CASES[name][2]}]", {"L": L}):
            h = layer(h)
    else:
        scope = {"L": L, "x": x}
        exec(FUNCTIONAL[name][2], scope)
        h = scope["h"]
    model = keras.Model(x, L.Dense(10, activation="softmax")(h))
    keras_optimizer = optimizer.replace("true", "True").replace("false", "False")
    model.compile(loss=TRAIN, optimizer=eval(f"keras.optimizers.{keras_optimizer}", {"keras": keras}))
    return model


def time_case(fw, name):
    """ms a step: the best of three epochs of BATCHES batches, after one to warm up."""
    spec = (CASES.get(name) or FUNCTIONAL[name])[0]
    x, y = data(spec, BATCH * BATCHES)
    if fw == "kcompile":
        import kcompile
        model = kcompile.compile_string(kdl_source(name), seed=0)
    else:
        model = keras_model(name)
    model.fit(x[:2 * BATCH], y[:2 * BATCH], batch_size=BATCH, epochs=1, verbose=0)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        best = min(best, (time.perf_counter() - start) / BATCHES * 1e3)
    return best


def worker(fw, names):
    if fw == "keras_jax":
        os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.path.insert(0, str(ROOT))
    for name in names:
        try:
            result = {"case": name, "ms": time_case(fw, name)}
        except Exception as e:  # (a case one framework cannot build is reported, the rest still run)
            result = {"case": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        print(json.dumps(result), flush=True)


def run(fw, names):
    env = dict(os.environ, KERAS_BACKEND="jax")
    proc = subprocess.run([sys.executable, __file__, "--worker", fw, "--cases", ",".join(names)],
                          capture_output=True, text=True, env=env, timeout=3600)
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            out[row["case"]] = row
    if proc.returncode and not out:
        raise SystemExit(f"survey: the {fw} worker failed:\n{proc.stderr[-2000:]}")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(NAMES), help=f"comma-separated, of: {', '.join(NAMES)}")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "survey.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = [n for n in args.cases.split(",") if n]
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        parser.error(f"unknown cases: {', '.join(unknown)} (known: {', '.join(NAMES)})")
    if args.worker:
        return worker(args.worker, names)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import installed  # (run.py's: a framework's modules importable)
    frameworks = [fw for fw in ("kcompile", "keras_jax") if installed(fw)]
    best = {fw: {} for fw in frameworks}
    errors = {fw: {} for fw in frameworks}
    for r in range(args.rounds):
        for k, name in enumerate(names):
            for fw in frameworks if (r + k) % 2 == 0 else frameworks[::-1]:
                row = run(fw, [name]).get(name, {"error": "no result"})
                if "ms" in row:
                    best[fw][name] = min(best[fw].get(name, float("inf")), row["ms"])
                else:
                    errors[fw][name] = row["error"]
    print(f"\nsurvey: ms a training step at batch {BATCH} (best of 3 epochs x {args.rounds} rounds); "
          f"ratio = Keras's time / kcompile's\n")
    print(f"{'case':22s} {'kcompile':>10s} {'keras_jax':>10s} {'ratio':>7s}")
    rows = []
    for name in names:
        kc, ke = best["kcompile"].get(name), best.get("keras_jax", {}).get(name)
        ratio = ke / kc if kc and ke else None
        rows.append({"case": name, "kcompile_ms": kc, "keras_jax_ms": ke, "ratio": ratio,
                     "errors": {fw: errors[fw][name] for fw in frameworks if name in errors[fw]}})
        cell = lambda v: f"{v:10.2f}" if v is not None else f"{'-':>10s}"  # noqa: E731
        flag = "  <- below 0.8x" if ratio is not None and ratio < 0.8 else ""
        print(f"{name:22s} {cell(kc)} {cell(ke)} {ratio:6.2f}x{flag}" if ratio is not None else
              f"{name:22s} {cell(kc)} {cell(ke)} {'-':>7s}  {'; '.join(rows[-1]['errors'].values())[:80]}")
    Path(args.json).write_text(json.dumps({"batch": BATCH, "rounds": args.rounds, "cases": rows}, indent=1))
    print(f"\nevery case: {args.json}")


if __name__ == "__main__":
    main()
