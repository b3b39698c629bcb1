"""The layer base class and the argument types layers declare.

A layer declares its arguments as the annotated parameters of ``__init__``, with
Keras's names and defaults; the annotation is a converter that checks and
normalises what the .kdl file gave (``Ints(2)`` turns ``3`` into ``(3, 3)``).
``build`` creates the weights once the input types are known; ``call`` emits ops.
"""

import inspect
import math
import re

from ..errors import ShapeError, did_you_mean, show  # (show: layers and the frontend import it from here)
from .. import initializers as inits


class ArgError(Exception):
    def __init__(self, message, hint=None):
        self.hint = hint
        super().__init__(message)


class Symbol(str):
    """A bare word in the source (``relu`` in ``activation=relu``)."""


# ---- argument converters: each checks and normalises one argument ----
class Converter:
    describe = "a value"

    def __call__(self, v):
        return v


class IntArg(Converter):
    def __init__(self, minimum=None):
        self.minimum = minimum
        self.describe = "an integer" if minimum is None else f"an integer >= {minimum}"

    def __call__(self, v):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ArgError(f"expected {self.describe}, got {show(v)}")
        if self.minimum is not None and v < self.minimum:
            raise ArgError(f"expected {self.describe}, got {v}")
        return v


class FloatArg(Converter):
    def __init__(self, lo=None, hi=None):
        self.lo, self.hi = lo, hi
        self.describe = "a number" + (f" in [{lo}, {hi})" if lo is not None and hi is not None else "")

    def __call__(self, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ArgError(f"expected {self.describe}, got {show(v)}")
        if (self.lo is not None and v < self.lo) or (self.hi is not None and v >= self.hi):
            raise ArgError(f"expected {self.describe}, got {v}")
        return float(v)


class BoolArg(Converter):
    describe = "true or false"

    def __call__(self, v):
        if isinstance(v, str) and v.lower() in ("true", "false"):  # ("true" in quotes, True)
            raise ArgError(f"expected true or false, got {v!r}", f"write {v.lower()} (lowercase, no quotes)")
        if not isinstance(v, bool):
            raise ArgError(f"expected true or false, got {show(v)}")
        return v


class Ints(Converter):
    """An int or an n-tuple of ints (kernel_size=3 means (3, 3))."""

    def __init__(self, n, minimum=1):
        self.n, self.minimum = n, minimum
        self.describe = f"an integer or a tuple of {n} integers" if n > 1 else "an integer"

    def __call__(self, v):
        items = tuple(v) if isinstance(v, (tuple, list)) else (v,) * self.n
        if len(items) != self.n or any(isinstance(i, bool) or not isinstance(i, int) for i in items):
            raise ArgError(f"expected {self.describe}, got {show(v)}")
        if any(i < self.minimum for i in items):
            raise ArgError(f"expected integers >= {self.minimum}, got {show(v)}")
        return items


class Choice(Converter):
    def __init__(self, *choices):
        self.choices = choices
        self.describe = " or ".join(choices)

    def __call__(self, v):
        if isinstance(v, str) and v not in self.choices and v.lower() in self.choices:
            v = v.lower()  # (padding="SAME": Keras lowercases these)
        if not isinstance(v, str) or v not in self.choices:
            hint = did_you_mean(v, self.choices) if isinstance(v, str) else None
            raise ArgError(f"expected {self.describe}, got {show(v)}", hint)
        return str(v)


class ShapeArg(Converter):
    describe = "a shape tuple such as (7, 7, 128)"

    def __call__(self, v):
        items = tuple(v) if isinstance(v, (tuple, list)) else (v,)
        if any(isinstance(i, bool) or not isinstance(i, int) or (i < 1 and i != -1) for i in items):
            raise ArgError(f"expected {self.describe}, got {show(v)}")
        return items


class IntList(Converter):
    """An int or a tuple of ints (any length), given back as a tuple: ``axis=(1, 2)``, ``shared_axes=1``."""

    def __init__(self, minimum=None):
        self.minimum = minimum
        self.describe = "an integer or a tuple of integers"

    def __call__(self, v):
        items = tuple(v) if isinstance(v, (tuple, list)) else (v,)
        if not items or any(isinstance(i, bool) or not isinstance(i, int) for i in items):
            raise ArgError(f"expected {self.describe}, got {show(v)}")
        if self.minimum is not None and any(i < self.minimum for i in items):
            raise ArgError(f"expected integers >= {self.minimum}, got {show(v)}")
        return items


class LayerArg(Converter):
    """A layer given unapplied as an argument: ``TimeDistributed(Dense(8))``, or one bound with
    ``layer d = Dense(8)``. Built-in layers only (not blocks or models)."""
    describe = "a layer such as Dense(8)"

    def __call__(self, v):
        layer = getattr(v, "layer", v)  # the frontend's Unapplied wraps the layer instance
        from . import LAYERS
        if isinstance(layer, Layer) and type(layer) not in LAYERS.values():
            raise ArgError(f"expected a built-in layer such as Dense(8), got {layer.kind()} "
                           "(blocks and models cannot be wrapped)")
        if not isinstance(layer, Layer):
            raise ArgError(f"expected a layer such as Dense(8), got {show(v)}")
        if layer.activity_regularizer is not None:  # (a wrapper calls it directly: no output is recorded)
            raise ArgError(f"the wrapped {layer.kind()}'s activity_regularizer is not supported",
                           "give the wrapper the activity_regularizer instead")
        return layer


class Optional(Converter):
    def __init__(self, inner):
        self.inner = inner
        self.describe = f"{inner.describe} or none"

    def __call__(self, v):
        if v is None:
            return None
        try:
            return self.inner(v)
        except ArgError as e:  # (its message says what it expects: none is taken too)
            expected = f"expected {self.inner.describe},"
            if expected not in str(e):
                raise
            raise ArgError(str(e).replace(expected, f"expected {self.describe},"), e.hint) from None


class ActivationArg(Converter):
    describe = "an activation name"

    def __call__(self, v):
        from .activations import ACTIVATIONS
        if v is None:
            return "linear"
        known = "known: " + ", ".join(sorted(ACTIVATIONS))
        if not isinstance(v, str):
            raise ArgError(f"expected {self.describe}, got {show(v)}", known)
        if v not in ACTIVATIONS:
            raise ArgError(f"unknown activation {show(v)}", did_you_mean(v, ACTIVATIONS) or known)
        return str(v)


class InitializerArg(Converter):
    """A name (``glorot_uniform``), or a call such as ``RandomNormal(stddev=0.02)``."""
    describe = "an initializer"

    def __call__(self, v):
        if isinstance(v, InitializerSpec):
            return (v.name, v.kwargs)
        if isinstance(v, str):
            name = inits.ALIASES.get(v, v)
            if name in inits.INITIALIZERS:
                return (name, ())
            raise ArgError(f"unknown initializer {show(v)}", did_you_mean(v, inits.INITIALIZERS))
        raise ArgError(f"expected an initializer, got {show(v)}")


class InitializerSpec:
    """An initializer called with arguments in the source: ``RandomNormal(stddev=0.02)``."""

    def __init__(self, name, kwargs):
        allowed = inits.INITIALIZERS[name]
        for k in kwargs:
            if k not in allowed:
                raise ArgError(f"initializer {name} has no argument {k!r}", did_you_mean(k, allowed))
        for k, v in kwargs.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ArgError(f"initializer {name}: {k} must be a number, got {show(v)}")
            if not math.isfinite(v):
                raise ArgError(f"initializer {name}: {k} must be a finite number, got {show(v)}")
        given = {**allowed, **kwargs}
        if "minval" in given and given["minval"] > given["maxval"]:
            raise ArgError(f"initializer {name}: minval {given['minval']} is above maxval {given['maxval']}")
        if given.get("stddev", 0) < 0:
            raise ArgError(f"initializer {name}: stddev {given['stddev']} is negative")
        self.name, self.kwargs = name, tuple(sorted((k, float(v)) for k, v in kwargs.items()))

    def __str__(self) -> str:  # (as error messages show it)
        return f"the initializer {self.name}(...)"


def is_source_name(v) -> bool:
    """Whether ``v`` is a name as the language writes them, [A-Za-z_][A-Za-z0-9_]* (a layer's
    name= must be one: its weights are named <layer>/<weight>)."""
    return isinstance(v, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v) is not None


def snake_case(name: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    s = re.sub(r"(?<=[A-Z])([A-Z][a-z])", r"_\1", s)
    return re.sub(r"(\d)_d(?=_|$)", r"\1d", s.lower())


# ---- layers ----
class RegularizerSpec:
    """``l2(0.01)``, ``l1(0.001)`` or ``l1_l2(l1=..., l2=...)`` given as a layer argument."""

    def __init__(self, l1=0.0, l2=0.0):
        for v in (l1, l2):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
                raise ArgError(f"a regularization factor must be a finite number >= 0, got {show(v)}")
        self.l1, self.l2 = float(l1), float(l2)

    @classmethod
    def from_call(cls, name, args, kwargs):
        name = {"L1": "l1", "L2": "l2", "L1L2": "l1_l2"}.get(name, name)
        if name == "l1_l2":
            if len(args) > 2:
                raise ArgError(f"l1_l2 takes two factors (l1, l2), got {len(args)}")
            given = dict(zip(("l1", "l2"), args))
            for k in kwargs:
                if k not in ("l1", "l2"):
                    raise ArgError(f"l1_l2 has no argument {k!r}; it takes l1 and l2")
                if k in given:
                    raise ArgError(f"l1_l2 got argument {k!r} twice")
            return cls(**given, **kwargs)
        if len(args) > 1 or set(kwargs) - {name}:
            raise ArgError(f"{name} takes one factor, e.g. {name}(0.01)")
        value = args[0] if args else kwargs.get(name, 0.01)
        return cls(**{name: value})

    def spec(self):
        return (self.l1, self.l2)

    def __str__(self) -> str:  # (as error messages show it)
        return f"the regularizer l1_l2(l1={self.l1}, l2={self.l2})"


REGULARIZER_NAMES = ("l1", "l2", "l1_l2", "L1", "L2", "L1L2")


class RegularizerArg(Converter):
    describe = "a regularizer such as l2(0.01)"

    def __call__(self, v):
        if v is None:
            return None
        if isinstance(v, RegularizerSpec):
            return v.spec()
        if isinstance(v, str) and v in REGULARIZER_NAMES:  # Keras's string form: "l2" is l2(0.01)
            return RegularizerSpec.from_call(v, [], {}).spec()
        raise ArgError(f"expected a regularizer such as l2(0.01), got {show(v)}")


class Layer:
    """Base of every layer. Subclasses declare arguments on ``__init__`` and define
    ``build`` (create weights) and ``call`` (emit ops).

    Layers with a kernel (``regularizable = True``) also take Keras's ``kernel_regularizer``
    and ``bias_regularizer`` (e.g. ``Dense(64, kernel_regularizer=l2(0.01))``): the penalty
    ``l1 * sum(|w|) + l2 * sum(w^2)`` is added to the training loss.

    Every layer takes Keras's ``activity_regularizer`` (``Dense(64, activity_regularizer=l2(0.01))``):
    the same penalty of each output, divided by the batch size as Keras 3 does, is added to
    the loss (the elaborator records the outputs; training.graphs adds the terms)."""

    n_inputs: int | None = 1  # None: any number (merging layers)
    regularizable = False
    # a regularizer argument -> the weight (short name) it penalizes, for regularizable layers
    regularizer_arguments = {"kernel_regularizer": "kernel", "bias_regularizer": "bias"}
    propagates_mask = False  # pass an input's step mask (Embedding(mask_zero=true)) on to the output
    takes_activity_regularizer = True  # (ActivityRegularization sets its own from l1 and l2)
    # Hints for arguments a layer does not take but users coming from another layer write
    missing_argument_hints: dict = {}

    def __init__(self):
        pass

    @classmethod
    def kind(cls) -> str:
        return cls.__name__

    def __str__(self) -> str:  # (as error messages show it: `layer d = Dense(3)` is the layer d)
        return f"the layer {self.name} ({self.kind()})" if self.name else f"a {self.kind()} layer"

    @classmethod
    def auto_name(cls) -> str:
        return snake_case(cls.__name__)

    @classmethod
    def signature(cls) -> inspect.Signature:
        return inspect.signature(cls.__init__)

    @classmethod
    def create(cls, args: list, kwargs: dict):
        """Bind source arguments to ``__init__``'s parameters, converting each one.
        Raises ArgError naming the argument."""
        params = [p for p in cls.signature().parameters.values() if p.name != "self"]
        requested = kwargs.pop("name", None)  # (every layer's, as Keras: Dense(1, name=priority))
        if requested is not None and not is_source_name(requested):
            err = ArgError(f"{cls.kind()} argument 'name': expected a name such as priority, got {show(requested)}")
            err.param, err.position = "name", None  # (the frontend points at the value)
            raise err
        regularizers = {}
        if cls.regularizable:
            for key, weight in cls.regularizer_arguments.items():
                if key in kwargs:
                    try:
                        regularizers[weight] = RegularizerArg()(kwargs.pop(key))
                    except ArgError as e:
                        err = ArgError(f"{cls.kind()} argument {key!r}: {e}", e.hint)
                        err.param, err.position = key, None
                        raise err from None
        activity = None
        if cls.takes_activity_regularizer and "activity_regularizer" in kwargs:
            try:
                activity = RegularizerArg()(kwargs.pop("activity_regularizer"))
            except ArgError as e:
                err = ArgError(f"{cls.kind()} argument 'activity_regularizer': {e}", e.hint)
                err.param, err.position = "activity_regularizer", None
                raise err from None
        names = [p.name for p in params]
        if len(args) > len(params):
            raise ArgError(f"{cls.kind()} takes at most {len(params)} positional arguments, got {len(args)}")
        bound = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names:
                known = names + (list(cls.regularizer_arguments) if cls.regularizable else []) + \
                    (["activity_regularizer"] if cls.takes_activity_regularizer else [])
                raise ArgError(f"{cls.kind()} has no argument {k!r}",
                               cls.missing_argument_hints.get(k) or did_you_mean(k, known))
            if k in bound:
                raise ArgError(f"{cls.kind()} got argument {k!r} twice")
            bound[k] = v
        for p in params:
            if p.name not in bound and p.default is inspect.Parameter.empty:
                raise ArgError(f"{cls.kind()} needs the argument {p.name!r}",
                               f"write {cls.kind()}({', '.join(q.name + '=...' for q in params if q.default is inspect.Parameter.empty)})")
        converted = {}
        for p in params:
            if p.name in bound:
                value = bound[p.name]
                try:
                    converted[p.name] = p.annotation(value) if isinstance(p.annotation, Converter) else value
                except ArgError as e:
                    err = ArgError(f"{cls.kind()} argument {p.name!r}: {e}", e.hint)
                    # Which argument was wrong, so the frontend can point at it.
                    err.param, err.position = p.name, (names.index(p.name) if p.name not in kwargs else None)
                    raise err from None
        return cls._made({p.name: converted.get(p.name, p.default) for p in params}, regularizers,
                         str(requested) if requested is not None else None, activity)

    @classmethod
    def _made(cls, arguments: dict, regularizers: dict, requested_name, activity=None):
        """A layer of these (converted) arguments, with what ``create`` records beside them."""
        layer = cls(**arguments)
        layer.arguments, layer.regularizers, layer.requested_name = arguments, regularizers, requested_name
        if activity is not None:
            layer.activity_regularizer = activity
        return layer

    def with_arguments(self, **changes) -> "Layer":
        """A new, unbuilt copy of this layer with some arguments changed (Bidirectional's backward
        layer: go_backwards flipped), its regularizers and requested name kept."""
        return type(self)._made({**self.arguments, **changes}, self.regularizers, self.requested_name,
                                self.activity_regularizer if self.takes_activity_regularizer else None)

    regularizers: dict = {}
    activity_regularizer: tuple | None = None  # (l1, l2) on the layer's outputs

    # Filled in by the frontend when the layer is first applied.
    name: str = ""
    requested_name: str | None = None  # the source's name=..., which the layer then takes
    # a wrapper's attributes holding the layers it wraps (TimeDistributed's layer), and a wrapped
    # layer's automatic name, taken from the model's count of names as Keras's (lstm, lstm_1, ...)
    wraps: tuple = ()
    wrapped_name: str | None = None
    built: bool = False

    def base_name(self) -> str:
        """The name a wrapper gives this wrapped layer (under its own)."""
        return self.requested_name or self.wrapped_name or self.auto_name()

    def build(self, ctx, *inputs) -> None:
        """Create weights with ``ctx.add_weight``; inputs are Tensors (use their types)."""

    def call(self, ctx, *inputs):
        raise NotImplementedError


def expect_size(layer: str, shape) -> None:
    """A layer's output of ``shape`` (without the batch) must fit one tensor's numbers a sample
    (2^31 - 1, as a weight's: ONNX's and numpy's limits), checked before the layer builds any
    constant of that size."""
    import math
    if math.prod(shape) >= 2 ** 31:
        from ..errors import format_shape
        raise ShapeError(f"{layer} would give an output of shape {format_shape(shape)}, {math.prod(shape):,} numbers "
                         f"a sample, too many for one tensor (at most 2^31 - 1)")


def expect_rank(layer: str, x, rank: int, layout: str, hint: str | None = None):
    if x.rank != rank:
        from ..errors import format_shape
        raise ShapeError(f"{layer} expects an input of shape {layout} (without the batch), got "
                         f"{format_shape(x.shape[1:])}", hint)
