"""The syntax tree of a .kdl file. Every node keeps its source location for errors."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Loc


@dataclass
class Node:
    loc: Loc


# ---- expressions ----
@dataclass
class Name(Node):
    id: str


@dataclass
class Number(Node):
    value: int | float


@dataclass
class String(Node):
    value: str


@dataclass
class Bool(Node):
    value: bool


@dataclass
class Tuple(Node):
    items: list


@dataclass
class List(Node):
    items: list


@dataclass
class BinOp(Node):
    op: str  # one of + - * /
    left: Node
    right: Node


@dataclass
class Neg(Node):
    operand: Node


@dataclass
class Kwarg(Node):
    name: str
    value: Node


@dataclass
class Call(Node):
    func: Node
    args: list
    kwargs: list  # of Kwarg


# ---- statements ----
@dataclass
class TensorTypeExpr(Node):
    dtype: str
    dims: list


@dataclass
class InputDecl(Node):
    name: str
    type: TensorTypeExpr | None
    option: tuple | None = None  # (name token's Name, value expr): `, batch_size=4`


@dataclass
class OutputDecl(Node):
    exprs: list


@dataclass
class WeightDecl(Node):
    name: str
    dims: list
    init: Node | None


@dataclass
class LayerDecl(Node):
    name: str
    expr: Node


@dataclass
class Assign(Node):
    name: str
    expr: Node
    names: list = None  # `out, h, c = LSTM(..., return_state=true)(x)`: every name, in order


@dataclass
class ExprStmt(Node):
    expr: Node


@dataclass
class TargetDecl(Node):
    name: str
    type: TensorTypeExpr


@dataclass
class Train(Node):
    statements: list  # TargetDecl | Assign


# ---- definitions ----
@dataclass
class BlockParam(Node):
    name: str
    type: str
    default: Node | None


@dataclass
class Model(Node):
    name: str
    body: list


@dataclass
class Block(Node):
    name: str
    params: list
    body: list


@dataclass
class Module:
    file: str
    source: str
    definitions: list = field(default_factory=list)

    def models(self) -> list[Model]:
        return [d for d in self.definitions if isinstance(d, Model)]

    def blocks(self) -> list[Block]:
        return [d for d in self.definitions if isinstance(d, Block)]


def names_in(node) -> set:
    """Every name an AST node (a train section, say) mentions."""
    if isinstance(node, Name):
        return {node.id}
    found = set()
    for value in (vars(node).values() if isinstance(node, Node) else ()):
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, Node):
                found |= names_in(item)
    return found
