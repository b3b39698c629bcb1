"""Optimization passes: each a small function ``Graph -> Graph`` (they may edit in place
and return the graph). ``PIPELINE`` lists them in order, with the level that enables each."""
from __future__ import annotations

from .dce import dead_code_elimination
from .dropout import remove_dropout
from .fold import constant_folding
from .cse import common_subexpression_elimination
from .transpose import sink_transposes
from .fusion import center_before_normalize, fold_batchnorm, fuse_activation, fuse_bias, fuse_normalize_affine
from .crop import crop_unread_borders
from .upsample import upsampled_conv_as_transposed

# (name, function, minimum -O level)
PIPELINE = [
    ("remove-dropout", remove_dropout, 1),
    ("constant-folding", constant_folding, 1),
    ("cse", common_subexpression_elimination, 1),
    ("transpose-sinking", sink_transposes, 1),
    ("bias-fusion", fuse_bias, 1),
    ("upsampled-conv-as-transposed", upsampled_conv_as_transposed, 1),
    ("batchnorm-folding", fold_batchnorm, 1),
    ("normalize-affine-fusion", fuse_normalize_affine, 1),
    ("normalize-centering", center_before_normalize, 1),
    ("activation-fusion", fuse_activation, 1),
    ("crop-unread-borders", crop_unread_borders, 1),
    ("cse", common_subexpression_elimination, 1),
    ("dead-code-elimination", dead_code_elimination, 1),
]


def optimize(graph, level: int = 1, report=None):
    """Run the pipeline at ``-O<level>``; returns (graph, names of the passes applied).
    ``report``, if given, is called as report(pass_name, nodes_before, nodes_after, changed)."""
    applied = []
    for name, fn, minimum in PIPELINE:
        if level < minimum:
            continue
        graph = run_pass(graph, name, fn, report)
        applied.append(name)
    return graph, applied


def run_pass(graph, name, fn, report=None):
    """``fn(graph)``; ``report``, if given, is called as report(name, nodes_before, nodes_after,
    changed)."""
    before = shape_of(graph) if report else None
    graph = fn(graph)
    if report:
        report(name, len(before), len(graph.nx), before != shape_of(graph))
    return graph


def shape_of(graph) -> list:
    """The graph's nodes as (op, inputs, outputs), sorted: what a pass changed, where it rewrote
    nodes and left their count (--report said "no change" there)."""
    return sorted((n.op, tuple(n.inputs), tuple(n.outputs)) for n in graph.nodes())
