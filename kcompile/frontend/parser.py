"""Parse .kdl source text into the AST of ``frontend.ast``.

The grammar is ``grammar/kdl.lark`` (shipped as ``kcompile.grammar``). Syntax
errors become :class:`KcompileError` with ``file:line:col``, the line and a caret.
"""
from __future__ import annotations

import functools
from importlib import resources

import lark
from lark import Transformer, v_args

from ..errors import Diagnostic, KcompileError, Loc
from . import ast

# What the user sees instead of lark's terminal names.
_TOKEN_WORDS = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "_NL": "end of line",
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'", "RBRACE": "'}'",
    "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'",
    "SLASH": "'/'", "SEMICOLON": "';'", "$END": "end of file",
}


class _BracketNewlines:
    """Post-lexer: a newline inside ( ) or [ ] continues the line."""
    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        for tok in stream:
            if tok.type in ("LPAR", "LSQB"):
                depth += 1
            elif tok.type in ("RPAR", "RSQB"):
                depth = max(0, depth - 1)
            elif tok.type == "_NL" and depth > 0:
                continue
            yield tok


@functools.lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    text = resources.files("kcompile.grammar").joinpath("kdl.lark").read_text()
    return lark.Lark(text, parser="lalr", postlex=_BracketNewlines(), propagate_positions=True,
                     maybe_placeholders=True)


def parse(source: str, file: str = "<string>") -> ast.Module:
    lines = source.splitlines()

    def loc(line: int, col: int, length: int = 1) -> Loc:
        text = lines[line - 1] if 0 < line <= len(lines) else ""
        return Loc(file, line, col, max(1, length), text)

    try:
        tree = _parser().parse(source)
    except lark.exceptions.UnexpectedInput as e:
        raise KcompileError(_syntax_diagnostic(e, source, loc)) from None
    module = ast.Module(file, source)
    module.definitions = _ToAst(loc).transform(tree)
    return module


def _syntax_diagnostic(e, source: str, loc) -> Diagnostic:
    line = getattr(e, "line", None)
    col = getattr(e, "column", None)
    if line is None or line < 0:  # end of file
        lines = source.splitlines() or [""]
        line, col = len(lines), len(lines[-1]) + 1
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        ch = source[e.pos_in_stream] if e.pos_in_stream < len(source) else "?"
        return Diagnostic(f"unexpected character {ch!r}", loc(line, col))
    token = getattr(e, "token", None)
    expected = sorted({_TOKEN_WORDS.get(t, repr(t.lower()) if t.isupper() else t)
                       for t in getattr(e, "expected", ()) if not t.startswith("__")})
    if token is None or token.type == "$END":
        what, length = "end of file", 1
    elif token.type == "_NL":
        what, length = "end of line", 1
    else:
        what, length = repr(str(token)), len(str(token))
    message = f"unexpected {what}"
    hint = None
    if expected:
        if len(expected) <= 6:
            message += f"; expected {', '.join(expected[:-1]) + ' or ' + expected[-1] if len(expected) > 1 else expected[0]}"
        if token is not None and token.type == "_NL" and "')'" in expected:
            hint = "a '(' is not closed"
    return Diagnostic(message, loc(line, col, length), hint)


class _ToAst(Transformer):
    """lark tree -> frontend.ast, attaching a Loc to every node."""

    def __init__(self, loc):
        super().__init__()
        self._loc = loc

    def _at(self, meta) -> Loc:
        if getattr(meta, "empty", True):
            return self._loc(1, 1)
        length = meta.end_column - meta.column if meta.end_line == meta.line else 1
        return self._loc(meta.line, meta.column, length)

    def _tok(self, tok) -> Loc:
        return self._loc(tok.line, tok.column, len(str(tok)))

    # ---- definitions ----
    def start(self, items):
        return [i for i in items if i is not None]

    @v_args(meta=True)
    def model(self, meta, items):
        name, body = items
        return ast.Model(self._tok(name), str(name), body)

    @v_args(meta=True)
    def block(self, meta, items):
        name, params, body = items
        return ast.Block(self._tok(name), str(name), params or [], body)

    def block_params(self, items):
        return items

    def block_param(self, items):
        name, typ, default = items
        return ast.BlockParam(self._tok(name), str(name), str(typ), default)

    def body(self, items):
        return [i for i in items if i is not None]

    train_body = body

    # ---- statements ----
    @v_args(meta=True)
    def input_decl(self, meta, items):
        name, typ = items
        return ast.InputDecl(self._tok(name), str(name), typ)

    @v_args(meta=True)
    def output_decl(self, meta, items):
        return ast.OutputDecl(self._at(meta), items)

    def weight_decl(self, items):
        name, dims, init = items
        return ast.WeightDecl(self._tok(name), str(name), dims, init)

    def layer_decl(self, items):
        name, expr = items
        return ast.LayerDecl(self._tok(name), str(name), expr)

    def assign(self, items):
        name, expr = items
        return ast.Assign(self._tok(name), str(name), expr)

    def expr_stmt(self, items):
        return ast.ExprStmt(items[0].loc, items[0])

    @v_args(meta=True)
    def train(self, meta, items):
        return ast.Train(self._at(meta), items[0])

    def target_decl(self, items):
        name, typ = items
        return ast.TargetDecl(self._tok(name), str(name), typ)

    def tensor_type(self, items):
        name, dims = items
        return ast.TensorTypeExpr(self._tok(name), str(name), dims)

    def shape(self, items):
        return [i for i in items if i is not None]

    # ---- expressions ----
    def name(self, items):
        return ast.Name(self._tok(items[0]), str(items[0]))

    def number(self, items):
        text = str(items[0])
        is_int = all(c.isdigit() for c in text)
        return ast.Number(self._tok(items[0]), int(text) if is_int else float(text))

    def string(self, items):
        text = str(items[0])[1:-1]
        return ast.String(self._tok(items[0]), bytes(text, "utf-8").decode("unicode_escape"))

    @v_args(meta=True)
    def true(self, meta, items):
        return ast.Bool(self._at(meta), True)

    @v_args(meta=True)
    def false(self, meta, items):
        return ast.Bool(self._at(meta), False)

    @v_args(meta=True)
    def tuple(self, meta, items):
        return ast.Tuple(self._at(meta), [i for i in items if i is not None])

    @v_args(meta=True)
    def list(self, meta, items):
        return ast.List(self._at(meta), [i for i in items if i is not None])

    def _binop(op):
        @v_args(meta=True)
        def rule(self, meta, items):
            left, right = items
            return ast.BinOp(self._at(meta), op, left, right)
        return rule

    add, sub, mul, div = _binop("+"), _binop("-"), _binop("*"), _binop("/")

    @v_args(meta=True)
    def neg(self, meta, items):
        return ast.Neg(self._at(meta), items[0])

    def call(self, items):
        func, args = items
        args = args or []
        positional = [a for a in args if not isinstance(a, ast.Kwarg)]
        kwargs = [a for a in args if isinstance(a, ast.Kwarg)]
        # Point the call at its callee: "Conv2D" in "Conv2D(32, 3)".
        return ast.Call(func.loc, func, positional, kwargs)

    def args(self, items):
        return items

    def kwarg(self, items):
        name, value = items
        return ast.Kwarg(self._tok(name), str(name), value)
