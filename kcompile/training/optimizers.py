"""Optimizers as graph ops, with Keras 3's update rules and defaults.

``update(ctx, config, w, g, state, lr, t)`` returns a parameter's new value and the
optimizer's slots (state) as new values; the slots' current values are graph inputs
named ``<optimizer>/<slot>/<param>``. ``lr`` is a scalar input (schedules change it
without a rebuild) and ``t`` the 1-based step count, a scalar input.

A gradient may come as ``Rows``: an Embedding table's is zero but in the rows the batch
looked up. The updates then compute on those rows alone whatever is zero or unchanged
elsewhere (a slot's gradient term, the step of SGD, RMSprop, Adagrad and Adadelta), and the
parameter-sized work left is the decay of the slots (and Adam's step, which moves every
row): the same numbers as the dense update, each computed by the same ops.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Slot:
    name: str
    init: float  # initial value, filled to the parameter's shape


def slots(config: dict) -> list[Slot]:
    name, a = config["name"], config["args"]
    if name == "SGD":
        return [Slot("momentum", 0.0)] if a.get("momentum") else []
    if name == "RMSprop":
        out = [Slot("velocity", 0.0)]
        if a.get("centered"):
            out.append(Slot("average_gradient", 0.0))
        if a.get("momentum"):
            out.append(Slot("momentum", 0.0))
        return out
    if name in ("Adam", "AdamW"):
        return [Slot("m", 0.0), Slot("v", 0.0)] + ([Slot("v_hat", 0.0)] if a.get("amsgrad") else [])
    if name == "Adagrad":
        return [Slot("accumulator", a.get("initial_accumulator_value", 0.1))]
    if name == "Adamax":
        return [Slot("m", 0.0), Slot("u", 0.0)]
    if name == "Nadam":
        return [Slot("momentum", 0.0), Slot("velocity", 0.0)]
    if name == "Adadelta":
        return [Slot("accumulated_grad", 0.0), Slot("accumulated_delta_var", 0.0)]
    if name == "Lion":
        return [Slot("momentum", 0.0)]
    raise ValueError(f"unknown optimizer {name}")


def slot_input(config, slot: Slot, param: str) -> str:
    return f"{config['name'].lower()}/{slot.name}/{param}"


@dataclass
class Rows:
    """A gradient that is zero outside some rows of its parameter: the rows (int64 [K], each
    once) and their values [K, ...], found from ``updates`` [n, ...] at ``ids`` [n] (int64),
    where a step split into parts of its batch cuts it (backend/shards.py)."""
    rows: str
    values: str
    updates: str
    ids: str


# A table smaller than this (elements) keeps the dense update: finding the rows costs about
# what the dense passes over a small table do (Adam, 32 x 100 ids: 1.3 against 1.1 ms a step
# for 2,100 x 128, even at 5,000 x 128, 6.4 against 7.6 for 20,000 x 128; RMSprop 3.9 against
# 6.7), and a dense gradient lets the runtime split the step by samples (batch_parts).
ROWS_MIN_ELEMENTS = 1 << 20


def updated_on_rows(shape) -> bool:
    """Whether a table of ``shape`` whose gradient is a ScatterAdd is updated on its rows."""
    return all(isinstance(d, int) for d in shape) and math.prod(shape) >= ROWS_MIN_ELEMENTS


def as_rows(ctx, g: str):
    """``g`` as Rows where it is an Embedding table's gradient (rows scattered into zeros) of at
    least ROWS_MIN_ELEMENTS numbers; else ``g``."""
    node = ctx.g.producer_of(g)
    if node is None or node.op != "ScatterAdd":
        return g
    updates, idx, table = node.inputs
    shape = ctx.type(table).shape
    if not updated_on_rows(shape):
        return g
    ids = ctx.op("Reshape", idx if ctx.type(idx).dtype == "int64" else ctx.op("Cast", idx, to="int64"), shape=(-1,))
    updates = ctx.op("Reshape", updates, shape=(-1,) + tuple(shape[1:]))
    rows, values = ctx.op("UniqueRows", updates, ids, rows=shape[0])
    return Rows(rows, values, updates, ids)


def _values(g):
    return g.values if isinstance(g, Rows) else g


def _like(g, values):
    return Rows(g.rows, values, g.updates, g.ids) if isinstance(g, Rows) else values


def clip(ctx, config, grads: dict) -> dict:
    a = config["args"]
    out = dict(grads)
    if a.get("clipvalue") is not None:
        c = float(a["clipvalue"])
        out = {k: _like(g, ctx.op("Min", ctx.op("Max", _values(g), -c), c)) for k, g in out.items()}
    if a.get("clipnorm") is not None:
        c = float(a["clipnorm"])
        for k, g in out.items():
            v = _values(g)
            norm = ctx.op("Sqrt", ctx.op("ReduceSum", ctx.op("Mul", v, v), keepdims=0))
            out[k] = _like(g, ctx.op("Mul", v, ctx.op("Div", c, ctx.op("Max", norm, c))))
    if a.get("global_clipnorm") is not None and out:  # (a model without trainable weights has no gradients)
        c = float(a["global_clipnorm"])
        squares = [ctx.op("ReduceSum", ctx.op("Mul", _values(g), _values(g)), keepdims=0) for g in out.values()]
        total = squares[0]
        for s in squares[1:]:
            total = ctx.op("Add", total, s)
        scale = ctx.op("Div", c, ctx.op("Max", ctx.op("Sqrt", total), c))
        out = {k: _like(g, ctx.op("Mul", _values(g), scale)) for k, g in out.items()}
    return out


def update(ctx, config, w, g, state: dict, lr, t):
    """One parameter's update. Returns (new w, {slot name: new value})."""
    name, a = config["name"], config["args"]
    new = {}
    dtype = ctx.type(w).dtype
    if ctx.type(lr).dtype != dtype:  # lr and step are float32 inputs; a float64 model computes in float64
        lr, t = ctx.op("Cast", lr, to=dtype), ctx.op("Cast", t, to=dtype)
    rows = g.rows if isinstance(g, Rows) else None
    g = _values(g)

    def plus(base, term):
        """base + term, where term is zero outside the gradient's rows."""
        return ctx.op("ScatterRows", base, rows, term) if rows else ctx.op("Add", base, term)

    def minus(base, term):
        return ctx.op("ScatterRows", base, rows, ctx.op("Neg", term)) if rows else ctx.op("Sub", base, term)

    def at_rows(v):  # a parameter-sized value where the gradient is
        return ctx.op("Gather", v, rows) if rows else v

    if a.get("weight_decay"):  # decoupled, before the step, as Keras 3: w - w lr wd, one pass
        w = ctx.op("Mul", w, ctx.op("Sub", 1.0, ctx.op("Mul", lr, float(a["weight_decay"]))))
    if name == "SGD":
        step = ctx.op("Mul", lr, g)
        mu = a.get("momentum", 0.0)
        if not mu:
            return minus(w, step), new
        m = minus(ctx.op("Mul", state["momentum"], mu), step)
        new["momentum"] = m
        if a.get("nesterov"):
            return minus(ctx.op("Add", w, ctx.op("Mul", m, mu)), step), new
        return ctx.op("Add", w, m), new
    if name == "RMSprop":
        rho = a["rho"]
        # g~ = sqrt(1 - rho) g makes (1 - rho) g^2 one product; onnxruntime folds the constant
        # factor into the matrix product that made g (one pass less over the kernel).
        scale = math.sqrt(1 - rho)
        gs = ctx.op("Mul", g, scale)
        v = plus(ctx.op("Mul", state["velocity"], rho), ctx.op("Mul", gs, gs))
        new["velocity"] = v
        denominator = at_rows(v)
        if a.get("centered"):
            avg = plus(ctx.op("Mul", state["average_gradient"], rho), ctx.op("Mul", gs, scale))
            new["average_gradient"] = avg
            avg = at_rows(avg)
            denominator = ctx.op("Sub", denominator, ctx.op("Mul", avg, avg))
        # (zero where g is: the rows alone, where g comes as rows)
        increment = ctx.op("Div", ctx.op("Mul", ctx.op("Div", lr, scale), gs),
                           ctx.op("Sqrt", ctx.op("Add", denominator, a["epsilon"])))
        if a.get("momentum"):
            m = plus(ctx.op("Mul", state["momentum"], a["momentum"]), increment)
            new["momentum"] = m
            return ctx.op("Sub", w, m), new
        return minus(w, increment), new
    if name in ("Adam", "AdamW"):
        b1, b2 = a["beta_1"], a["beta_2"]
        # (g~ = sqrt(1 - b2) g, as RMSprop's: (1 - b2) g^2 one product, (1 - b1) g one too)
        scale = math.sqrt(1 - b2)
        gs = ctx.op("Mul", g, scale)
        m = plus(ctx.op("Mul", state["m"], b1), ctx.op("Mul", gs, (1 - b1) / scale))
        v = plus(ctx.op("Mul", state["v"], b2), ctx.op("Mul", gs, gs))
        new["m"], new["v"] = m, v
        # lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)
        b1t = ctx.op("Pow", ctx.const(b1, ctx.type(t).dtype), t)
        b2t = ctx.op("Pow", ctx.const(b2, ctx.type(t).dtype), t)
        lr_t = ctx.op("Div", ctx.op("Mul", lr, ctx.op("Sqrt", ctx.op("Sub", 1.0, b2t))), ctx.op("Sub", 1.0, b1t))
        if a.get("amsgrad"):
            v = ctx.op("Max", state["v_hat"], v)
            new["v_hat"] = v
        step = ctx.op("Div", ctx.op("Mul", m, lr_t), ctx.op("Add", ctx.op("Sqrt", v), a["epsilon"]))
        return ctx.op("Sub", w, step), new
    if name == "Adagrad":
        acc = plus(state["accumulator"], ctx.op("Mul", g, g))
        new["accumulator"] = acc
        step = ctx.op("Div", ctx.op("Mul", lr, g), ctx.op("Sqrt", ctx.op("Add", at_rows(acc), a["epsilon"])))
        return minus(w, step), new
    if name == "Nadam":
        # Keras 3: u_t = b1 (1 - 0.5 * 0.96^t), U_t = u_1 ... u_t (Keras keeps it as a variable);
        # m_hat = u_{t+1} m / (1 - U_{t+1}) + (1 - u_t) g / (1 - U_t); w -= lr m_hat / (sqrt(v / (1 - b2^t)) + eps)
        b1, b2 = a["beta_1"], a["beta_2"]
        scale = math.sqrt(1 - b2)  # (g~ = sqrt(1 - b2) g, as Adam's)
        g = ctx.op("Mul", g, scale)
        m = plus(ctx.op("Mul", state["momentum"], b1), ctx.op("Mul", g, (1 - b1) / scale))
        v = plus(ctx.op("Mul", state["velocity"], b2), ctx.op("Mul", g, g))
        new["momentum"], new["velocity"] = m, v
        step_dtype = ctx.type(t).dtype
        u_t, u_next = (ctx.op("Mul", ctx.op("Sub", 1.0, ctx.op("Mul", ctx.op("Pow", ctx.const(0.96, step_dtype), s), 0.5)),
                              b1) for s in (t, ctx.op("Add", t, 1.0)))
        products = ctx.const(_nadam_products(step_dtype), step_dtype)
        index = ctx.op("Sub", ctx.op("Cast", ctx.op("Min", t, float(len(_nadam_products(step_dtype)))), to="int64"), 1)
        u_product = ctx.op("Mul", ctx.op("Gather", products, index, axis=0), ctx.op("Pow", ctx.const(b1, step_dtype), t))
        u_product_next = ctx.op("Mul", u_product, u_next)
        # lr m_hat / (sqrt(v / (1 - b2^t)) + eps) = lr c m_hat / (sqrt(v) + eps c), c = sqrt(1 - b2^t):
        # the scalars go into m_hat's two coefficients (two passes over the parameter fewer)
        c = ctx.op("Sqrt", ctx.op("Sub", 1.0, ctx.op("Pow", ctx.const(b2, step_dtype), t)))
        lr_c = ctx.op("Mul", lr, c)
        m_hat = plus(ctx.op("Mul", m, ctx.op("Mul", ctx.op("Div", u_next, ctx.op("Sub", 1.0, u_product_next)), lr_c)),
                     ctx.op("Mul", g, ctx.op("Mul", ctx.op("Div", ctx.op("Sub", 1.0, u_t),
                                                           ctx.op("Mul", ctx.op("Sub", 1.0, u_product), scale)), lr_c)))
        step = ctx.op("Div", m_hat, ctx.op("Add", ctx.op("Sqrt", v), ctx.op("Mul", c, a["epsilon"])))
        return ctx.op("Sub", w, step), new
    if name == "Adamax":
        # m = b1 m + (1 - b1) g;  u = max(b2 u, |g|);  w -= lr m / ((1 - b1^t) (u + eps))
        b1, b2 = a["beta_1"], a["beta_2"]
        m = plus(ctx.op("Mul", state["m"], b1), ctx.op("Mul", g, 1 - b1))
        decayed = ctx.op("Mul", state["u"], b2)
        if rows:  # (|g| is zero outside its rows: there u only decays)
            u = plus(decayed, ctx.op("Sub", ctx.op("Max", at_rows(decayed), ctx.op("Abs", g)), at_rows(decayed)))
        else:
            u = ctx.op("Max", decayed, ctx.op("Abs", g))
        new["m"], new["u"] = m, u
        b1t = ctx.op("Pow", ctx.const(b1, ctx.type(t).dtype), t)
        lr_t = ctx.op("Div", lr, ctx.op("Sub", 1.0, b1t))
        return ctx.op("Sub", w, ctx.op("Div", ctx.op("Mul", m, lr_t), ctx.op("Add", u, a["epsilon"]))), new
    if name == "Adadelta":
        # A = rho A + (1 - rho) g^2;  d = -sqrt(D + eps) g / sqrt(A + eps) (D before its update);
        # D = rho D + (1 - rho) d^2;  w += lr d
        rho, eps = a["rho"], a["epsilon"]
        acc = plus(ctx.op("Mul", state["accumulated_grad"], rho), ctx.op("Mul", ctx.op("Mul", g, g), 1 - rho))
        rms_delta = ctx.op("Sqrt", ctx.op("Add", at_rows(state["accumulated_delta_var"]), eps))
        delta = ctx.op("Div", ctx.op("Mul", rms_delta, g), ctx.op("Sqrt", ctx.op("Add", at_rows(acc), eps)))  # -d
        new["accumulated_grad"] = acc
        new["accumulated_delta_var"] = plus(ctx.op("Mul", state["accumulated_delta_var"], rho),
                                            ctx.op("Mul", ctx.op("Mul", delta, delta), 1 - rho))
        return minus(w, ctx.op("Mul", lr, delta)), new
    if name == "Lion":
        # w -= lr sign(b1 m + (1 - b1) g);  m = b2 m + (1 - b2) g  (every row moves: sign(m) is
        # not zero where g is)
        b1, b2 = a["beta_1"], a["beta_2"]
        g1 = ctx.op("Mul", g, 1 - b1)  # (g read once: onnxruntime folds the factor into g's product)
        direction = ctx.op("Sign", plus(ctx.op("Mul", state["momentum"], b1), g1))
        g2 = ctx.op("Mul", g1, (1 - b2) / (1 - b1)) if b1 != 1 else ctx.op("Mul", g, 1 - b2)
        new["momentum"] = plus(ctx.op("Mul", state["momentum"], b2), g2)
        return ctx.op("Sub", w, ctx.op("Mul", direction, lr)), new
    raise ValueError(f"unknown optimizer {name}")


def _nadam_products(dtype: str) -> np.ndarray:
    """(1 - 0.5 * 0.96^1) ... (1 - 0.5 * 0.96^t) for t = 1 .. 2500, Nadam's momentum product without
    its b1^t: past that, each factor rounds to 1 (0.96^2500 is about 1e-44), so a step reads
    the table at min(t, 2500)."""
    factors = 1.0 - 0.5 * 0.96 ** np.arange(1, 2501, dtype=np.float64)
    return np.cumprod(factors).astype(dtype)
