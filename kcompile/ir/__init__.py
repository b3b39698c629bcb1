"""Graph IR: typed values, nodes with source locations, on a networkx DiGraph."""
from .types import BATCH, DTYPES, Tensor, TensorType, broadcast_shapes
from .graph import Graph, Node, Param

__all__ = ["BATCH", "DTYPES", "Tensor", "TensorType", "broadcast_shapes", "Graph", "Node", "Param"]
