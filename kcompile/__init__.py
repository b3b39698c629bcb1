"""kcompile: a compiler for neural networks.

Write a model in the .kdl language, compile it, and run it on ONNX Runtime::

    import kcompile
    model = kcompile.compile("examples/mnist_mlp.kdl")
    probs = model.predict(x)
"""
__version__ = "0.2.0"

from .errors import KcompileError, ShapeMismatch  # noqa: E402


def _check_options(where, seed, opt_level):
    """``seed`` and ``opt_level`` as Keras-style checks: a ValueError naming the argument."""
    from .runtime.data import count
    count(seed, where, "seed", 0)
    if count(opt_level, where, "opt_level", 0) > 2:
        raise ValueError(f"{where}: opt_level must be 0, 1 or 2, got {opt_level!r}")


def compile(path, model=None, seed=0, opt_level=1, device="cpu"):
    """Compile a .kdl file (its only model, or the one named) into a :class:`Model`."""
    _check_options("compile", seed, opt_level)
    from .driver import compile_file
    from .runtime.model import Model
    return Model.from_compiled(compile_file(path, model, opt_level), seed=seed, device=device)


def compile_string(source, model=None, seed=0, opt_level=1, device="cpu", file="<string>"):
    """Like :func:`compile`, from source text."""
    if not isinstance(source, str):
        raise ValueError(f"compile_string: source must be the model's text (a str), got {type(source).__name__}"
                         + ("; decode it with source.decode()" if isinstance(source, bytes) else ""))
    _check_options("compile_string", seed, opt_level)
    from .driver import compile_source
    from .runtime.model import Model
    return Model.from_compiled(compile_source(source, file, model, opt_level), seed=seed, device=device)


def load(path, device="cpu"):
    """Load a build folder written by ``kcompile build`` (or ``Model.save``)."""
    from .runtime.model import Model
    return Model.load(path, device=device)


def __getattr__(name):  # kcompile.callbacks after `import kcompile`, as keras.callbacks (imported on first use)
    if name == "callbacks":
        import importlib
        return importlib.import_module(".callbacks", __name__)
    raise AttributeError(f"module 'kcompile' has no attribute {name!r}")


__all__ = ["compile", "compile_string", "load", "KcompileError", "ShapeMismatch", "__version__"]
