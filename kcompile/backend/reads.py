"""Who reads what in an ONNX graph's node list: the index the graph rewrites here share
(nchwc.py, winograd.py, shards.py). A Scan's, Loop's or If's body reads values of the graph
around it by name, so those count as reads of the node that holds the body."""
from __future__ import annotations


def reads(node) -> set:
    """The values a node reads: its inputs, and what the graphs of its attributes (a Scan's or
    Loop's body, an If's branches) read from outside them."""
    names = set(node.input)
    for attribute in node.attribute:
        for body in list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else []):
            inner = {o for n in body.node for o in n.output} | {i.name for i in body.input} | \
                {i.name for i in body.initializer}
            names |= {v for n in body.node for v in reads(n)} - inner
    names.discard("")  # (an optional input left out)
    return names


def readers(nodes) -> dict:
    """value -> the nodes of ``nodes`` that read it, each once."""
    out = {}
    for node in nodes:
        for v in reads(node):
            out.setdefault(v, []).append(node)
    return out
