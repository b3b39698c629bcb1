"""Primitive ops, each defined once (shape rule + lowering), and the registry ``OPS``."""
from .base import OPS, Op, emit, register
from . import elementwise, image, linalg, logic, nn, recurrent, shape  # noqa: F401  (registers the ops)

__all__ = ["OPS", "Op", "emit", "register"]
