"""A survey of many small models, kcompile against Keras 3 on JAX and PyTorch: where is kcompile slow?

    .venv/bin/python benchmarks/survey.py [--cases lstm,gru_dropout] [--rounds 2] [--json out.json] [--predict]

The targets (run.py, paired.py) measure two models closely; this measures some thirty others
roughly, to find cliffs: a layer, option or optimizer whose training step is far slower than
its peers' (stop 32 found recurrent dropout at 0.09-0.23x Keras, onnxruntime's Einsum in each
step). Each case is one model written in kcompile's language, in Keras and, where torch has a
faithful counterpart of its layers and optimizer, in PyTorch (a "twin": the same layers and
weight shapes, Keras's defaults; the cases without one, and why, are NO_TWIN), trained on
random data at batch 128 with the same loss and optimizer; its time is the best of three
epochs of ten batches after one to warm up, a few seconds a case. Each case runs in a process
of its own for each framework (`survey.py --worker FRAMEWORK --cases CASE`: a model left alive
in the process, its thread pools spinning, slowed the next case's steps up to 2x), the
frameworks one after the other in an order rotated from case to case and round to round,
``--rounds`` times; a case's time is its best over the rounds. A case where kcompile is slower
than the faster peer then runs ``--recheck`` rounds more (1 unless told; a process of this
machine may meet a slow minute: stop 41's first survey marked two cases at 0.79-0.80x that
measured 0.97x and 1.10x in the next two rounds). The table gives ms a step and
the ratios Keras's time / kcompile's and torch's / kcompile's (above 1: kcompile faster),
marking where kcompile is below 0.8x the faster peer. ``--predict`` times inference instead:
ms for 1,024 rows (kcompile's and Keras's predict, the faster of Keras's predict and
predict_on_batch, torch's module in eval mode without gradients), the best of five after two.
Differences of 10-20% are this machine's noise between processes; paired.py's method is the
one for those. Keras and torch run where they are installed (`pip install -e '.[bench]'`).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
BATCH, BATCHES = 128, 10
PREDICT_ROWS = 1024
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
    "masked_gru": (IDS, "Embedding(5000, 32, mask_zero=true); GRU(32)", "L.Embedding(5000, 32, mask_zero=True), L.GRU(32)",
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


# ------------------------------------ PyTorch twins ------------------------------------
# Each case once more in torch where torch has a faithful counterpart: the same layers and
# weight shapes (kernels in torch's layouts), Keras's defaults for the optimizer and the layers'
# constants, images channels-first inside the model (torch's native layout, as run.py's CNN;
# converted once, outside the timing), ids int64, the softmax left to the loss (torch's idiom,
# as run.py's: cross-entropy on the logits, -(y * log_softmax(logits)).sum(1).mean(), the
# value of Keras's loss on the probabilities). A case using a Keras option torch lacks has no
# twin: its torch cell is "-", with the reason.
NO_TWIN = {  # text in a case's Keras spelling or optimizer: why torch has no twin
    "Lion(": "Lion: torch.optim has none (torch 2.13)",
    "reset_after=False": "GRU(reset_after=False): torch's GRU is Keras's reset_after=True only",
    "recurrent_dropout": "recurrent_dropout: torch's RNNs have none (their dropout is between stacked layers)",
    "mask_zero=True": "mask_zero: torch's RNNs have no per-step mask (Keras skips masked steps, carrying the state; "
                      "packed sequences drop trailing padding only, and these ids' zeros are scattered)",
}
# Keras's optimizers in torch: torch's class and Keras's defaults in torch's spelling. RMSprop
# and Adagrad: Keras divides by sqrt(v + eps), torch by sqrt(v) + eps (eps 1e-7: the same work,
# a negligible difference); NAdam's momentum_decay=1 is Keras's schedule, 0.96**t (torch's
# default 0.004 is 0.96**(0.004 t)); SGD's nesterov momentum is Keras's rule rescaled by lr.
TORCH_OPTIMIZERS = {
    "SGD": ("SGD", {"lr": 0.01}),
    "RMSprop": ("RMSprop", {"lr": 0.001, "alpha": 0.9, "eps": 1e-7}),
    "Adam": ("Adam", {"lr": 0.001, "eps": 1e-7}),
    "AdamW": ("AdamW", {"lr": 0.001, "eps": 1e-7, "weight_decay": 0.004}),
    "Nadam": ("NAdam", {"lr": 0.001, "eps": 1e-7, "momentum_decay": 1.0}),
    "Adagrad": ("Adagrad", {"lr": 0.001, "eps": 1e-7, "initial_accumulator_value": 0.1}),
}
TORCH_ARGS = {"learning_rate": "lr", "rho": "alpha", "epsilon": "eps", "momentum": "momentum",
              "nesterov": "nesterov", "weight_decay": "weight_decay",
              "initial_accumulator_value": "initial_accumulator_value"}
# where each layer wants the channels in torch: on axis 1 (torch's convolutions, pooling, batch
# and group norm), on the last axis (Linear, LayerNorm, the RNNs, Embedding's output), or either
CHANNELS = {**dict.fromkeys(["Conv1D", "Conv2D", "SeparableConv2D", "DepthwiseConv2D", "Conv2DTranspose",
                             "MaxPooling1D", "MaxPooling2D", "AveragePooling2D", "UpSampling2D",
                             "BatchNormalization", "GroupNormalization", "GlobalAveragePooling2D",
                             "GlobalMaxPooling2D", "Flatten"], "first"),
            **dict.fromkeys(["Dense", "TimeDistributed", "LayerNormalization", "Embedding", "LSTM", "GRU",
                             "SimpleRNN", "Bidirectional"], "last"),
            **dict.fromkeys(["ReLU", "Dropout", "GlobalAveragePooling1D"], None)}


class NoTwin(Exception):
    """A case, layer option or optimizer torch has no faithful counterpart for."""


def no_torch_twin(name):
    """Why a case has no torch twin; None where it has one."""
    case = CASES.get(name) or FUNCTIONAL[name]
    return next((why for feature, why in NO_TWIN.items() if feature in f"{case[2]} {case[3]}"), None)


def torch_optimizer(spelling, params):
    """Keras's optimizer (the cases' spelling) in torch, with Keras's defaults."""
    import torch
    kind, args = re.fullmatch(r"(\w+)\((.*)\)", spelling).groups()
    given = eval(f"dict({args})", {"true": True, "false": False})
    # (Keras's weight_decay is decoupled in every optimizer, torch's in AdamW only)
    if kind not in TORCH_OPTIMIZERS or not set(given) <= set(TORCH_ARGS) or "weight_decay" in given and kind != "AdamW":
        raise NoTwin(f"no torch counterpart for {spelling}")
    torch_kind, defaults = TORCH_OPTIMIZERS[kind]
    return getattr(torch.optim, torch_kind)(params, **{**defaults, **{TORCH_ARGS[k]: v for k, v in given.items()}})


def torch_inputs(spec, x, y=None):
    """A case's data as torch's tensors: images channels-first (as run.py's CNN), ids int64."""
    import torch
    x = torch.from_numpy(x)
    if spec[0] != "ids" and len(spec) == 3:
        x = x.permute(0, 3, 1, 2).contiguous()
    return x if y is None else (x, torch.from_numpy(y))


class _Spelling:
    """The cases' Keras spelling read as data: L.Dense(512, activation='relu') is
    ("Dense", (512,), {"activation": "relu"})."""
    def __getattr__(self, kind):
        return lambda *args, **kw: (kind, args, kw)


@functools.cache
def _torch():
    """torch, and the few modules the twins need that torch.nn lacks."""
    import torch
    from torch import nn

    class Fn(nn.Module):
        """A step without weights (a transpose, a global pooling): a function of the tensor."""
        def __init__(self, fn, what):
            super().__init__()
            self.fn, self.what = fn, what

        def forward(self, h):
            return self.fn(h)

        def extra_repr(self):
            return self.what

    class Recurrent(nn.Module):
        """nn.LSTM/GRU/RNN (batch_first) as Keras's layer: every step's output, or the last's.
        torch's LSTM and RNN have two bias vectors (b_ih, b_hh) where Keras's have one (4 x units
        and units more weights; the kernels' shapes the same), a known difference; Keras's
        GRU(reset_after=True) has both too, as its bias [2, 3 x units]."""
        def __init__(self, rnn, sequences):
            super().__init__()
            self.rnn, self.sequences = rnn, sequences

        def forward(self, h):
            out = self.rnn(h)[0]
            return out if self.sequences else out[:, -1]

    class Attention(nn.Module):
        """FUNCTIONAL["attention"]. Keras's MultiHeadAttention(num_heads=4, key_dim=16) is
        torch's embed_dim 64 = 4 x 16, its query/key/value kernels packed in in_proj_weight;
        both scale by 1/sqrt(16)."""
        def __init__(self, x):
            super().__init__()
            self.proj, self.mha = nn.Linear(x.shape[-1], 64), nn.MultiheadAttention(64, 4, batch_first=True)
            self.norm1, self.norm2 = nn.LayerNorm(64, eps=1e-3), nn.LayerNorm(64, eps=1e-3)
            self.ff = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64))
            self.out = nn.Linear(64, 10)

        def forward(self, x):
            h = self.proj(x)
            h = self.norm1(h + self.mha(h, h, h, need_weights=False)[0])
            h = self.norm2(h + self.ff(h))
            return self.out(h.mean(1))

    class Residual(nn.Module):
        """FUNCTIONAL["residual"], channels-first."""
        def __init__(self, x):
            super().__init__()
            self.c1 = nn.Conv2d(x.shape[1], 16, 3, padding=1)
            self.c2, self.c3 = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
            self.out = nn.Linear(16, 10)

        def forward(self, x):
            h = self.c1(x).relu()
            h = (h + self.c3(self.c2(h).relu())).relu()
            return self.out(h.mean((2, 3)))

    return SimpleNamespace(torch=torch, nn=nn, Fn=Fn, Recurrent=Recurrent,
                           functional={"attention": Attention, "residual": Residual})


def _torch_layer(t, kind, args, kw, h, where):
    """Keras's layer kind(*args, **kw) as torch modules, taking h (its channels on axis 1 where
    ``where`` is "first", on the last axis where "last")."""
    nn = t.nn
    c = h.shape[1] if where == "first" else h.shape[-1]
    # gelu: Keras's default, the exact (erf) one, as nn.GELU's; swish is SiLU
    act = {None: [], "relu": [nn.ReLU()], "gelu": [nn.GELU()], "swish": [nn.SiLU()]}

    def options(*allowed):  # an option not mapped here has no twin, rather than a wrong one
        if set(kw) - set(allowed) or kw.get("activation") not in act:
            raise NoTwin(f"{kind}({', '.join(f'{k}={v!r}' for k, v in kw.items())}): not mapped to torch")
    if kind == "TimeDistributed" and args[0][0] == "Dense":  # a Linear on the last axis
        return _torch_layer(t, *args[0], h, where)
    if kind == "Dense":
        options("activation", "use_bias")
        return [nn.Linear(c, args[0], bias=kw.get("use_bias", True)), *act[kw.get("activation")]]
    if kind in ("Conv1D", "Conv2D", "SeparableConv2D", "DepthwiseConv2D", "Conv2DTranspose"):
        options("strides", "padding", "dilation_rate", "activation", "use_bias")
        filters, k = (c, *args) if kind == "DepthwiseConv2D" else args
        s, d, bias = kw.get("strides", 1), kw.get("dilation_rate", 1), kw.get("use_bias", True)
        same = kw.get("padding", "valid") == "same"
        if same and k % 2 == 0:
            raise NoTwin(f"{kind}: padding='same' with an even kernel")
        # Keras's "same" (odd kernels) in torch's spelling: symmetric padding, the same as
        # Keras's at stride 1; at stride 2 Keras pads 0 before and 1 after, torch 1 and 1: the
        # same output shape and work, the windows a pixel apart
        pad = d * (k - 1) // 2 if same else 0
        conv = nn.Conv1d if kind == "Conv1D" else nn.Conv2d
        if kind == "SeparableConv2D":  # depthwise (groups = channels, no bias), then 1x1
            layers = [conv(c, c, k, s, pad, d, groups=c, bias=False), conv(c, filters, 1, bias=bias)]
        elif kind == "DepthwiseConv2D":
            layers = [conv(c, c, k, s, pad, d, groups=c, bias=bias)]
        elif kind == "Conv2DTranspose":  # output_padding: Keras's "same" output, s times the input
            extra = s - 1 - d * (k - 1) + 2 * pad if same else 0
            layers = [nn.ConvTranspose2d(c, filters, k, s, pad, extra, bias=bias, dilation=d)]
        else:
            layers = [conv(c, filters, k, s, pad, d, bias=bias)]
        return layers + act[kw.get("activation")]
    if kind in ("MaxPooling1D", "MaxPooling2D", "AveragePooling2D", "UpSampling2D"):
        options()  # (pool size only; strides = pool size, "valid", nearest: Keras's defaults)
        size = args[0] if args else 2
        if kind == "UpSampling2D":
            return [nn.Upsample(scale_factor=size, mode="nearest")]
        return [{"MaxPooling1D": nn.MaxPool1d, "MaxPooling2D": nn.MaxPool2d, "AveragePooling2D": nn.AvgPool2d}[kind](size)]
    if kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D", "GlobalAveragePooling1D"):
        options()
        if kind == "GlobalMaxPooling2D":
            return [t.Fn(lambda h: h.amax((2, 3)), "max over (2, 3)")]
        axes = (2, 3) if kind == "GlobalAveragePooling2D" else 2 if where == "first" else 1
        return [t.Fn(lambda h: h.mean(axes), f"mean over {axes}")]
    if kind == "BatchNormalization":  # Keras's momentum 0.99 (torch's 1 - 0.99), epsilon 1e-3
        options()
        return [(nn.BatchNorm2d if h.dim() == 4 else nn.BatchNorm1d)(c, eps=1e-3, momentum=0.01)]
    if kind == "GroupNormalization":  # Keras's groups 32 unless given, epsilon 1e-3
        options("groups")
        return [nn.GroupNorm(kw.get("groups", 32), c, eps=1e-3)]
    if kind == "LayerNormalization":  # over the last axis (the channels), Keras's epsilon 1e-3
        options()
        return [nn.LayerNorm(c, eps=1e-3)]
    if kind == "Embedding":
        options()
        return [nn.Embedding(*args)]
    if kind in ("LSTM", "GRU", "SimpleRNN"):
        options("return_sequences")
        rnn = {"LSTM": nn.LSTM, "GRU": nn.GRU, "SimpleRNN": nn.RNN}[kind](c, args[0], batch_first=True)
        return [t.Recurrent(rnn, kw.get("return_sequences", False))]
    if kind == "Bidirectional":  # merge_mode concat, every step's (torch's bidirectional output)
        inner, inner_args, inner_kw = args[0]
        options()
        if inner not in ("LSTM", "GRU") or inner_kw != {"return_sequences": True}:
            raise NoTwin(f"Bidirectional({inner}({inner_kw})): not mapped to torch")
        return [t.Recurrent(getattr(nn, inner)(c, inner_args[0], batch_first=True, bidirectional=True), True)]
    if kind in ("ReLU", "Dropout", "Flatten"):  # (Flatten: of torch's channels-first map, as torch's CNNs)
        options()
        return [nn.ReLU() if kind == "ReLU" else nn.Dropout(args[0]) if kind == "Dropout" else nn.Flatten()]
    raise NoTwin(f"{kind}: not mapped to torch")


def torch_model(name):
    """A case's torch twin, (module, optimizer): the module gives logits [n, 10]; NoTwin where
    torch has no faithful counterpart."""
    case = CASES.get(name) or FUNCTIONAL[name]
    why = no_torch_twin(name)
    if why:
        raise NoTwin(why)
    t = _torch()
    t.torch.manual_seed(0)
    spec = case[0]
    h = torch_inputs(spec, data(spec, 2)[0])  # (two rows: each layer's input shape, by a forward)
    if name in FUNCTIONAL:
        net = t.functional[name](h)
    else:
        layers, where = [], "first" if spec[0] != "ids" and len(spec) == 3 else "last"
        with t.torch.no_grad():
            for kind, args, kw in eval(f"[{case[2]}]", {"L": _Spelling()}) + [("Dense", (10,), {})]:
                want = CHANNELS.get(kind)
                if want and want != where and h.dim() > 2:  # the channels moved to where the layer wants them
                    layers.append(t.Fn(lambda h: h.movedim(1, -1), "channels last") if want == "last" else
                                  t.Fn(lambda h: h.movedim(-1, 1), "channels first"))
                    h, where = layers[-1](h), want
                for layer in _torch_layer(t, kind, args, kw, h, where):
                    layers.append(layer)
                    h = layer(h)
        net = t.nn.Sequential(*layers)
    return net, torch_optimizer(case[3], net.parameters())


class TorchTwin:
    """A case's torch twin with the others' fit(), as run.py's torch fitter: each epoch in a
    shuffled order, a step zero_grad, forward, loss, backward, step; the loss read once an epoch."""
    def __init__(self, name):
        import torch
        self.torch = torch
        self.net, self.opt = torch_model(name)
        torch.set_num_threads(os.cpu_count() or 1)  # (run.py's: torch's default here, set explicitly)
        self.gen = torch.Generator().manual_seed(0)

    def fit(self, x, y, batch_size, epochs=1, verbose=0):
        cross_entropy = self.torch.nn.functional.cross_entropy
        self.net.train()
        for _ in range(epochs):
            order = self.torch.randperm(len(x), generator=self.gen)  # shuffled each epoch, like fit()
            for i in range(0, len(x), batch_size):
                idx = order[i:i + batch_size]
                self.opt.zero_grad(set_to_none=True)
                loss = cross_entropy(self.net(x[idx]), y[idx])  # (y one-hot: -(y * log_softmax).sum(1).mean())
                loss.backward()
                self.opt.step()
            loss.item()


def time_predict(fw, name):
    """ms a predict of PREDICT_ROWS rows: the best of five, after two to warm up."""
    spec = (CASES.get(name) or FUNCTIONAL[name])[0]
    x, _ = data(spec, PREDICT_ROWS)
    if fw == "kcompile":
        import kcompile
        model = kcompile.compile_string(kdl_source(name), seed=0)
        calls = [lambda: model.predict(x, batch_size=PREDICT_ROWS)]
    elif fw == "torch":
        import torch
        net = torch_model(name)[0].eval()
        torch.set_num_threads(os.cpu_count() or 1)
        xt = torch_inputs(spec, x)

        def forward():
            with torch.no_grad():
                return net(xt)
        calls = [forward]
    else:
        model = keras_model(name)
        calls = [lambda: model.predict(x, batch_size=PREDICT_ROWS, verbose=0), lambda: model.predict_on_batch(x)]
    best = float("inf")
    for call in calls:
        call(), call()
        for _ in range(5):
            start = time.perf_counter()
            call()
            best = min(best, (time.perf_counter() - start) * 1e3)
    return best


def time_case(fw, name):
    """ms a step: the best of three epochs of BATCHES batches, after one to warm up."""
    spec = (CASES.get(name) or FUNCTIONAL[name])[0]
    x, y = data(spec, BATCH * BATCHES)
    if fw == "kcompile":
        import kcompile
        model = kcompile.compile_string(kdl_source(name), seed=0)
    elif fw == "torch":
        model = TorchTwin(name)
        x, y = torch_inputs(spec, x, y)  # (torch's tensors and layout, once, outside the timing)
    else:
        model = keras_model(name)
    model.fit(x[:2 * BATCH], y[:2 * BATCH], batch_size=BATCH, epochs=1, verbose=0)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        best = min(best, (time.perf_counter() - start) / BATCHES * 1e3)
    return best


def worker(fw, names, predict=False):
    if fw == "keras_jax":
        os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.path.insert(0, str(ROOT))
    for name in names:
        try:
            result = {"case": name, "ms": (time_predict if predict else time_case)(fw, name)}
        except Exception as e:  # (a case one framework cannot build is reported, the rest still run)
            result = {"case": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        print(json.dumps(result), flush=True)


def run(fw, names, predict=False):
    env = dict(os.environ, KERAS_BACKEND="jax")
    proc = subprocess.run([sys.executable, __file__, "--worker", fw, "--cases", ",".join(names)] +
                          (["--predict"] if predict else []),
                          capture_output=True, text=True, env=env, timeout=3600)
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            out[row["case"]] = row
    if proc.returncode and not out:
        raise SystemExit(f"survey: the {fw} worker failed:\n{proc.stderr[-2000:]}")
    return out


def installed_frameworks() -> list:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import installed  # (run.py's: a framework's modules importable)
    return [fw for fw in ("kcompile", "keras_jax", "torch") if installed(fw)]


def measure(frameworks, names, rounds, predict=False, first_round=0):
    """Each case ``rounds`` times in each framework, a process each, the frameworks' order rotated
    from case to case and round to round. Returns ({fw: {case: best ms}}, {fw: {case: error}},
    {case: rounds run})."""
    best = {fw: {} for fw in frameworks}
    errors = {fw: {} for fw in frameworks}
    for r in range(first_round, first_round + rounds):
        for k, name in enumerate(names):
            turn = (r + k) % len(frameworks)  # (each framework first in turn)
            for fw in frameworks[turn:] + frameworks[:turn]:
                if fw == "torch" and no_torch_twin(name):
                    continue
                row = run(fw, [name], predict).get(name, {"error": "no result"})
                if "ms" in row:
                    best[fw][name] = min(best[fw].get(name, float("inf")), row["ms"])
                else:
                    errors[fw][name] = row["error"]
    return best, errors, {name: rounds for name in names}


def behind(best, name) -> bool:
    """Whether kcompile's best time for ``name`` is above the faster peer's."""
    kc = best.get("kcompile", {}).get(name)
    peers = [best[fw][name] for fw in ("keras_jax", "torch") if name in best.get(fw, {})]
    return kc is not None and bool(peers) and min(peers) < kc


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(NAMES), help=f"comma-separated, of: {', '.join(NAMES)}")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--recheck", type=int, default=1,
                        help="rounds more for each case where kcompile was slower than the faster peer (0: none)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "survey.json"))
    parser.add_argument("--predict", action="store_true",
                        help=f"time predict of {PREDICT_ROWS} rows instead of a training step")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = [n for n in args.cases.split(",") if n]
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        parser.error(f"unknown cases: {', '.join(unknown)} (known: {', '.join(NAMES)})")
    if args.worker:
        return worker(args.worker, names, args.predict)
    frameworks = installed_frameworks()
    best, errors, rounds = measure(frameworks, names, args.rounds, args.predict)
    slower = [name for name in names if behind(best, name)]
    if slower and args.recheck:
        print(f"survey: {len(slower)} case(s) slower than the faster peer, {args.recheck} round(s) more: "
              f"{', '.join(slower)}", flush=True)
        more = measure(frameworks, slower, args.recheck, args.predict, first_round=args.rounds)
        for fw in frameworks:
            for name, ms in more[0][fw].items():
                best[fw][name] = min(best[fw].get(name, float("inf")), ms)
            errors[fw].update(more[1][fw])
        for name in slower:
            rounds[name] += more[2][name]
    what = (f"ms a predict of {PREDICT_ROWS} rows (best of 5" if args.predict else
            f"ms a training step at batch {BATCH} (best of 3 epochs")
    rechecked = f", {args.rounds + args.recheck} where kcompile was slower" if args.recheck else ""
    print(f"\nsurvey: {what} x {args.rounds} rounds{rechecked}); vs = the peer's time / kcompile's, marked below 0.8x "
          f"the faster peer's\n")
    print(f"{'case':22s} {'kcompile':>10s} {'keras_jax':>10s} {'torch':>10s} {'vs keras':>9s} {'vs torch':>9s}")
    rows = []
    cell = lambda v, f="{:10.2f}", w=10: f.format(v) if v is not None else f"{'-':>{w}s}"  # noqa: E731
    for name in names:
        kc, ke, to = (best.get(fw, {}).get(name) for fw in ("kcompile", "keras_jax", "torch"))
        ratio, torch_ratio = (peer / kc if kc and peer else None for peer in (ke, to))
        row = {"case": name, "rounds": rounds[name], "kcompile_ms": kc, "keras_jax_ms": ke, "torch_ms": to,
               "ratio": ratio, "torch_ratio": torch_ratio, "errors": {fw: errors[fw][name] for fw in frameworks if name in errors[fw]}}
        if "torch" in frameworks and no_torch_twin(name):
            row["torch_no_twin"] = no_torch_twin(name)
        rows.append(row)
        fastest = min([v for v in (ke, to) if v], default=None)
        flag = "  <- below 0.8x" if kc and fastest and fastest / kc < 0.8 else ""
        notes = [f"{fw}: {e}" for fw, e in row["errors"].items()] + (
            [f"torch: no twin, {row['torch_no_twin']}"] if "torch_no_twin" in row else [])
        print(f"{name:22s} {cell(kc)} {cell(ke)} {cell(to)} {cell(ratio, '{:8.2f}x', 9)} "
              f"{cell(torch_ratio, '{:8.2f}x', 9)}{flag}" + (f"  {'; '.join(notes)[:90]}" if notes else ""))
    Path(args.json).write_text(json.dumps({"mode": "predict" if args.predict else "train",
                                           "batch": PREDICT_ROWS if args.predict else BATCH, "rounds": args.rounds,
                                           "recheck": args.recheck,
                                           "cases": rows}, indent=1))
    print(f"\nevery case: {args.json}")


if __name__ == "__main__":
    main()
