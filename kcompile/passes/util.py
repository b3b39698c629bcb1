"""Helpers shared by passes: static values, single consumers, rewriting one node."""
from __future__ import annotations

from ..ir import Graph
from ..ops import emit


def is_static(g: Graph, value: str, _memo=None) -> bool:
    """True if the value depends on weights and constants only (never on a graph input),
    so onnxruntime computes it once when the session starts."""
    memo = {} if _memo is None else _memo
    if value in memo:
        return memo[value]
    kind = g.kind(value)
    if kind in ("param", "const"):
        result = True
    elif kind == "input":
        result = False
    else:
        result = all(is_static(g, v, memo) for v in g.producer_of(value).inputs)
    memo[value] = result
    return result


def sole_consumer(g: Graph, value: str):
    """The one node reading ``value``, if exactly one node reads it once and it is not a graph output."""
    if any(v == value for _, v in g.outputs):
        return None
    users = g.consumers(value)
    if len(users) == 1 and users[0].inputs.count(value) == 1:
        return users[0]
    return None


def add(g: Graph, like, op: str, inputs, **attrs) -> str:
    """Emit one node carrying the location and layer of ``like``; returns its (first) output."""
    return emit(g, op, inputs, attrs, loc=like.loc, layer=like.layer)[0]


def replace(g: Graph, old_value: str, new_value: str) -> None:
    """Readers of old_value read new_value; producers left unread are removed."""
    g.replace_uses(old_value, new_value)
    remove_if_dead(g, g.producer_of(old_value))


def remove_if_dead(g: Graph, node) -> None:
    """Remove ``node`` if nothing reads its outputs, then its producers in turn."""
    stack = [node]
    while stack:
        node = stack.pop()
        if node is None or node.name not in g.nx or any(g.uses(o) for o in node.outputs):
            continue
        producers = [g.producer_of(v) for v in node.inputs]
        g.remove_node(node)
        stack.extend(producers)
