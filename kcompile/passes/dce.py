"""Dead-code elimination: drop nodes no graph output depends on, and unread constants."""
from ..ir import Graph


def dead_code_elimination(g: Graph) -> Graph:
    needed = {v for _, v in g.outputs}
    for node in reversed(g.nodes()):
        if any(o in needed for o in node.outputs):
            needed.update(node.inputs)
        else:
            g.remove_node(node)
    g.prune_unused()
    return g
