"""Optimizers as graph ops, with Keras 3's update rules and defaults.

``apply(ctx, config, params, grads, lr, t)`` returns the updated parameters and the
optimizer's slots (state) as new values; the slots' current values are graph inputs
named ``<optimizer>/<slot>/<param>``. ``lr`` is a scalar input (schedules change it
without a rebuild) and ``t`` the 1-based step count, a scalar input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


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
    raise ValueError(f"unknown optimizer {name}")


def slot_input(config, slot: Slot, param: str) -> str:
    return f"{config['name'].lower()}/{slot.name}/{param}"


def clip(ctx, config, grads: dict) -> dict:
    a = config["args"]
    out = dict(grads)
    if a.get("clipvalue") is not None:
        c = float(a["clipvalue"])
        out = {k: ctx.op("Min", ctx.op("Max", g, -c), c) for k, g in out.items()}
    if a.get("clipnorm") is not None:
        c = float(a["clipnorm"])
        for k, g in out.items():
            norm = ctx.op("Sqrt", ctx.op("ReduceSum", ctx.op("Mul", g, g), keepdims=0))
            out[k] = ctx.op("Mul", g, ctx.op("Div", c, ctx.op("Max", norm, c)))
    if a.get("global_clipnorm") is not None:
        c = float(a["global_clipnorm"])
        squares = [ctx.op("ReduceSum", ctx.op("Mul", g, g), keepdims=0) for g in out.values()]
        total = squares[0]
        for s in squares[1:]:
            total = ctx.op("Add", total, s)
        scale = ctx.op("Div", c, ctx.op("Max", ctx.op("Sqrt", total), c))
        out = {k: ctx.op("Mul", g, scale) for k, g in out.items()}
    return out


def update(ctx, config, w, g, state: dict, lr, t):
    """One parameter's update. Returns (new w, {slot name: new value})."""
    name, a = config["name"], config["args"]
    new = {}
    dtype = ctx.type(w).dtype
    if ctx.type(lr).dtype != dtype:  # lr and step are float32 inputs; a float64 model computes in float64
        lr, t = ctx.op("Cast", lr, to=dtype), ctx.op("Cast", t, to=dtype)
    if a.get("weight_decay"):  # decoupled, before the step, as Keras 3
        w = ctx.op("Sub", w, ctx.op("Mul", w, ctx.op("Mul", lr, float(a["weight_decay"]))))
    if name == "SGD":
        step = ctx.op("Mul", lr, g)
        mu = a.get("momentum", 0.0)
        if not mu:
            return ctx.op("Sub", w, step), new
        m = ctx.op("Sub", ctx.op("Mul", state["momentum"], mu), step)
        new["momentum"] = m
        if a.get("nesterov"):
            return ctx.op("Sub", ctx.op("Add", w, ctx.op("Mul", m, mu)), step), new
        return ctx.op("Add", w, m), new
    if name == "RMSprop":
        rho = a["rho"]
        # g~ = sqrt(1 - rho) g makes (1 - rho) g^2 one product; onnxruntime folds the constant
        # factor into the matrix product that made g (one pass less over the kernel).
        scale = math.sqrt(1 - rho)
        gs = ctx.op("Mul", g, scale)
        v = ctx.op("Add", ctx.op("Mul", state["velocity"], rho), ctx.op("Mul", gs, gs))
        new["velocity"] = v
        denominator = v
        if a.get("centered"):
            avg = ctx.op("Add", ctx.op("Mul", state["average_gradient"], rho), ctx.op("Mul", gs, scale))
            new["average_gradient"] = avg
            denominator = ctx.op("Sub", v, ctx.op("Mul", avg, avg))
        increment = ctx.op("Div", ctx.op("Mul", ctx.op("Div", lr, scale), gs),
                           ctx.op("Sqrt", ctx.op("Add", denominator, a["epsilon"])))
        if a.get("momentum"):
            m = ctx.op("Add", ctx.op("Mul", state["momentum"], a["momentum"]), increment)
            new["momentum"] = m
            return ctx.op("Sub", w, m), new
        return ctx.op("Sub", w, increment), new
    if name in ("Adam", "AdamW"):
        b1, b2 = a["beta_1"], a["beta_2"]
        m = ctx.op("Add", ctx.op("Mul", state["m"], b1), ctx.op("Mul", g, 1 - b1))
        v = ctx.op("Add", ctx.op("Mul", state["v"], b2), ctx.op("Mul", ctx.op("Mul", g, g), 1 - b2))
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
        acc = ctx.op("Add", state["accumulator"], ctx.op("Mul", g, g))
        new["accumulator"] = acc
        step = ctx.op("Div", ctx.op("Mul", lr, g), ctx.op("Sqrt", ctx.op("Add", acc, a["epsilon"])))
        return ctx.op("Sub", w, step), new
    raise ValueError(f"unknown optimizer {name}")
