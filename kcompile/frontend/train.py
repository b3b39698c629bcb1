"""Checking of a model's ``train { ... }`` section (compiled to training graphs by a later stage)."""
from __future__ import annotations


def check_train(graph, model_ast, module):
    """Return a JSON-able description of the train section, or None when the model has none.
    Raises KcompileError listing every problem found."""
    train = next((s for s in model_ast.body if s.__class__.__name__ == "Train"), None)
    if train is None:
        return None
    return {"present": True}
