"""Keras's recurrences in numpy, one definition for the recurrent tests."""
import numpy as np


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


ACTIVATIONS = {"tanh": np.tanh, "sigmoid": sigmoid, "relu": lambda z: np.maximum(z, 0)}


def recurrence(kind, x, weights, units, h0=None, c0=None, return_sequences=False, go_backwards=False,
               reset_after=True, mask=None, keep=None, activation="tanh", recurrent_activation="sigmoid"):
    """Keras's SimpleRNN, LSTM and GRU in numpy (batch-major), from the states h0 (and c0; zeros
    where not given): (output, last h, last c). ``reset_after``: the GRU's form (false: one bias
    [3u], hh = tanh(x W_h + b_h + (r * h) R_h)); ``mask`` [N, T]: 0 at steps that keep the previous
    state (and output), read in the order of the steps; ``keep`` [N, G, u]: recurrent dropout's
    per-gate masks on h (GRU only, Keras 3: the blend uses the undropped h). ``activation`` and
    ``recurrent_activation``: the LSTM's and GRU's (names in ACTIVATIONS)."""
    act, gate = ACTIVATIONS[activation], ACTIVATIONS[recurrent_activation]
    kernel, recurrent = weights[0], weights[1]
    bias = weights[2] if len(weights) > 2 else None
    n, steps, _ = x.shape
    h, c = ((s if s is not None else np.zeros((n, units))).astype(np.float64) for s in (h0, c0))
    outputs = []
    for t in (range(steps - 1, -1, -1) if go_backwards else range(steps)):
        xt, h_before, c_before = x[:, t], h, c
        hg = [h * keep[:, g] for g in range(3)] if keep is not None else [h] * 3
        if kind == "SimpleRNN":
            h = np.tanh(xt @ kernel + h @ recurrent + (bias if bias is not None else 0))
        elif kind == "LSTM":
            z = xt @ kernel + h @ recurrent + (bias if bias is not None else 0)
            i, f, g, o = (z[:, k * units:(k + 1) * units] for k in range(4))
            c = gate(f) * c + gate(i) * act(g)
            h = gate(o) * act(c)
        elif not reset_after:  # GRU, reset_after=False
            xw = xt @ kernel + (bias if bias is not None else 0)
            z = gate(xw[:, :units] + hg[0] @ recurrent[:, :units])
            r = gate(xw[:, units:2 * units] + hg[1] @ recurrent[:, units:2 * units])
            hh = act(xw[:, 2 * units:] + (r * hg[2]) @ recurrent[:, 2 * units:])
            h = z * h + (1 - z) * hh
        else:  # GRU, reset_after=True
            assert keep is None
            b_in, b_rec = (bias[0], bias[1]) if bias is not None else (0, 0)
            xw, hr = xt @ kernel + b_in, h @ recurrent + b_rec
            z = gate(xw[:, :units] + hr[:, :units])
            r = gate(xw[:, units:2 * units] + hr[:, units:2 * units])
            hh = act(xw[:, 2 * units:] + r * hr[:, 2 * units:])
            h = z * h + (1 - z) * hh
        if mask is not None:
            m = mask[:, t:t + 1]
            h, c = m * h + (1 - m) * h_before, m * c + (1 - m) * c_before  # (both of an LSTM's states kept)
        outputs.append(h)
    return (np.stack(outputs, 1) if return_sequences else h), h, c


def random_weights(m, rng, scale=0.5):
    """Set m's weights to normal numbers (sd ``scale``) in its dtype; returns them."""
    weights = [rng.normal(0, scale, w.shape).astype(w.dtype) for w in m.get_weights()]
    m.set_weights(weights)
    return weights
