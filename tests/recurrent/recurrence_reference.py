"""Keras's recurrences in numpy, one definition for the recurrent tests."""
import numpy as np


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def recurrence(kind, x, weights, units, h0=None, c0=None, return_sequences=False, go_backwards=False):
    """Keras's SimpleRNN, LSTM and GRU (reset_after) in numpy (batch-major), from the states h0
    (and c0; zeros where not given): (output, last h, last c)."""
    kernel, recurrent = weights[0], weights[1]
    bias = weights[2] if len(weights) > 2 else None
    n, steps, _ = x.shape
    h, c = ((s if s is not None else np.zeros((n, units))).astype(np.float64) for s in (h0, c0))
    outputs = []
    for t in (range(steps - 1, -1, -1) if go_backwards else range(steps)):
        xt = x[:, t]
        if kind == "SimpleRNN":
            h = np.tanh(xt @ kernel + h @ recurrent + (bias if bias is not None else 0))
        elif kind == "LSTM":
            z = xt @ kernel + h @ recurrent + (bias if bias is not None else 0)
            i, f, g, o = (z[:, k * units:(k + 1) * units] for k in range(4))
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
        else:  # GRU, reset_after=True
            b_in, b_rec = (bias[0], bias[1]) if bias is not None else (0, 0)
            xw, hr = xt @ kernel + b_in, h @ recurrent + b_rec
            z = sigmoid(xw[:, :units] + hr[:, :units])
            r = sigmoid(xw[:, units:2 * units] + hr[:, units:2 * units])
            hh = np.tanh(xw[:, 2 * units:] + r * hr[:, 2 * units:])
            h = z * h + (1 - z) * hh
        outputs.append(h)
    return (np.stack(outputs, 1) if return_sequences else h), h, c
