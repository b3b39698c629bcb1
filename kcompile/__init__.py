"""kcompile: a compiler for neural networks.

Write a model in the .kdl language, compile it, and run it on ONNX Runtime::

    import kcompile
    model = kcompile.compile("examples/mnist_mlp.kdl")
    probs = model.predict(x)
"""
__version__ = "0.2.0"

from .errors import KcompileError, ShapeMismatch  # noqa: E402


def compile(path, model=None, seed=0, opt_level=1, device="cpu"):
    """Compile a .kdl file (its only model, or the one named) into a :class:`Model`."""
    from .driver import compile_file
    from .runtime.model import Model
    return Model.from_compiled(compile_file(path, model, opt_level), seed=seed, device=device)


def compile_string(source, model=None, seed=0, opt_level=1, device="cpu", file="<string>"):
    """Like :func:`compile`, from source text."""
    from .driver import compile_source
    from .runtime.model import Model
    return Model.from_compiled(compile_source(source, file, model, opt_level), seed=seed, device=device)


def load(path, device="cpu"):
    """Load a build folder written by ``kcompile build`` (or ``Model.save``)."""
    from .runtime.model import Model
    return Model.load(path, device=device)


__all__ = ["compile", "compile_string", "load", "KcompileError", "ShapeMismatch", "__version__"]
