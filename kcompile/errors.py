"""Diagnostics: every user-facing error carries a source location.

An error renders as::

    model.kdl:7:5: error: Conv2D expects an input of rank 3 [height, width, channels], got [784]
        Conv2D(32, 3)
        ^~~~~~
    hint: add Reshape((28, 28, 1)) before it
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    """A span in a source file: 1-based line and column, and the span's length on that line."""
    file: str
    line: int
    col: int
    length: int = 1
    source_line: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass
class Diagnostic:
    message: str
    loc: Loc | None = None
    hint: str | None = None
    severity: str = "error"

    def render(self) -> str:
        head = f"{self.loc}: {self.severity}: {self.message}" if self.loc else f"{self.severity}: {self.message}"
        lines = [head]
        if self.loc and self.loc.source_line:
            raw = self.loc.source_line.rstrip("\n")
            text = raw.expandtabs(4)
            lines.append("    " + text)
            # (the caret under the column as displayed: a tab before it shows as several spaces)
            col = len(raw[:self.loc.col - 1].expandtabs(4)) + 1
            end = len(raw[:self.loc.col - 1 + self.loc.length].expandtabs(4)) + 1
            width = max(1, min(end - col, len(text) - col + 1))
            lines.append("    " + " " * (col - 1) + "^" + "~" * (width - 1))
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


class KcompileError(Exception):
    """One or more diagnostics. ``str(err)`` is the rendered report."""

    def __init__(self, diagnostics: list[Diagnostic] | Diagnostic | str, loc: Loc | None = None,
                 hint: str | None = None):
        if isinstance(diagnostics, str):
            diagnostics = [Diagnostic(diagnostics, loc, hint)]
        elif isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = list(diagnostics)
        super().__init__(self.render())

    @property
    def first(self) -> Diagnostic:
        return self.diagnostics[0]

    def render(self) -> str:
        body = "\n".join(d.render() for d in self.diagnostics)
        n = len(self.diagnostics)
        if n > 1:
            body += f"\n{n} errors"
        return body


class ShapeError(Exception):
    """Raised by shape rules; the frontend attaches the location of the statement."""

    def __init__(self, message: str, hint: str | None = None):
        self.hint = hint
        super().__init__(message)


class ShapeMismatch(ValueError):
    """Wrong array shape or dtype given at run time (fit/predict); names expected vs given."""


def did_you_mean(name: str, candidates) -> str | None:
    # the name in another case first: Relu is relu, not the closer-spelled elu
    lowered = {c.lower(): c for c in candidates}
    close = [lowered[name.lower()]] if name.lower() in lowered else \
        difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else None


def format_shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def show(v) -> str:
    """A value as messages write it, in the language's terms: none, true, (3, 3), a tensor
    float32[N, 4], a word as the source wrote it; text that would not read as one word (empty,
    or holding a space, a tab or a newline) quoted with escapes: 'my\\tname'. Other values (a
    layer, an initializer) say what they are by their ``__str__``."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return str(v) if v and all(c.isprintable() and not c.isspace() for c in v) else repr(str(v))
    if isinstance(v, tuple):
        return "(" + ", ".join(show(i) for i in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, list):
        return "[" + ", ".join(show(i) for i in v) + "]"
    if hasattr(v, "type"):
        return f"a tensor {v.type}"
    return str(v)
