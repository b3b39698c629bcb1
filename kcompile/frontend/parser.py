"""Parse .kdl source text into the AST of ``frontend.ast``.

The grammar is ``grammar/kdl.lark`` (shipped as ``kcompile.grammar``). Syntax
errors become :class:`KcompileError` with ``file:line:col``, the line and a caret.
"""
from __future__ import annotations

import functools
import hashlib
import os
from importlib import resources
from pathlib import Path

import lark
from lark import Transformer, v_args

from ..errors import Diagnostic, KcompileError, Loc, did_you_mean
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
                     maybe_placeholders=True, cache=_table_cache(text))


def _table_cache(grammar: str) -> str | bool:
    """Where lark keeps the grammar's LALR tables between processes (False: nowhere): the user's
    cache folder ($XDG_CACHE_HOME or ~/.cache, then kcompile/), one file per grammar text. Building
    them took 0.15 s of each process's first parse, loading them 0.04 s (a cold `kcompile build`
    or first training step pays it once). lark checks the file's hash of the grammar, its options
    and its version, and builds afresh (and rewrites it) from a file it cannot read or that does
    not match; a folder that cannot be made leaves the tables uncached."""
    try:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kcompile"
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):  # (RuntimeError: no home folder)
        return False
    return str(folder / f"kdl-{hashlib.sha256(grammar.encode()).hexdigest()[:16]}-lark{lark.__version__}.cache")


def parse(source: str, file: str = "<string>") -> ast.Module:
    # (the byte-order mark Windows editors write first is no character of the program: left in,
    # it was an unexpected character at 1:1)
    source = source.removeprefix("\ufeff")
    # (lines as lark counts them, at "\n" only: str.splitlines also breaks at form feeds and other
    # separators the grammar reads as spaces, which would show an error under the wrong line)
    lines = [line.rstrip("\r") for line in source.split("\n")]

    def loc(line: int, col: int, length: int = 1) -> Loc:
        text = lines[line - 1] if 0 < line <= len(lines) else ""
        return Loc(file, line, col, max(1, length), text)

    try:
        tree = _parser().parse(source)
    except lark.exceptions.UnexpectedInput as e:
        raise KcompileError(_syntax_diagnostic(e, source, loc)) from None
    _check_nesting(tree, loc)
    module = ast.Module(file, source)
    try:
        module.definitions = _ToAst(loc).transform(tree)
    except lark.exceptions.VisitError as e:  # (a located error from a token, as a bad string escape)
        if isinstance(e.orig_exc, KcompileError):
            raise e.orig_exc from None
        raise
    return module


# The parse tree's deepest path: the compiler walks expressions recursively, and 400 levels
# (an expression of 395 terms, or 197 nested calls) still compile and train in Python's
# default recursion limit, where about 500 did not.
MAX_NESTING = 400


def _first_token(node):
    """The first token under ``node`` (lark's scan_values recurses, and the tree is deep here)."""
    stack = [node]
    while stack:
        node = stack.pop()
        if isinstance(node, lark.Token):
            return node
        if isinstance(node, lark.Tree):
            stack += reversed(node.children)
    return None


def _check_nesting(tree, loc):
    """A located error where the parse tree is deeper than MAX_NESTING (found without recursion)."""
    stack = [(tree, 1, None)]  # (with each node, a token of its nearest ancestor that has one)
    while stack:
        node, depth, anchor = stack.pop()
        if depth > MAX_NESTING:
            token = _first_token(node) or anchor  # (nested empty lists hold no token: the statement's)
            where = None
            if token is not None:  # the line's start: the deep token itself may sit far to the right
                text = loc(token.line, 1).source_line
                where = loc(token.line, len(text) - len(text.lstrip()) + 1, 1)
            raise KcompileError(Diagnostic(f"the expression nests too deeply (over {MAX_NESTING} levels)", where,
                                           "split it into several statements")) from None
        if isinstance(node, lark.Tree):
            anchor = next((c for c in node.children if isinstance(c, lark.Token)), anchor)
            stack += [(child, depth + 1, anchor) for child in node.children]


_EXPR_START = {"NAME", "NUMBER", "STRING", "LPAR", "LSQB", "MINUS", "TRUE", "FALSE"}
_STATEMENT_START = {"INPUT", "OUTPUT", "WEIGHT", "LAYER", "TRAIN"}
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH"}
_KEYWORDS = {"model", "block", "input", "output", "weight", "layer", "train", "target", "true", "false"}
_STATEMENT_KEYWORDS = ("input", "output", "weight", "layer", "train", "target")
_CLOSER = {"(": ")", "[": "]", "{": "}"}


def _line_col(source: str, pos: int) -> tuple[int, int]:
    return source.count("\n", 0, pos) + 1, pos - (source.rfind("\n", 0, pos) + 1) + 1


def _open_brackets(source: str, end: int) -> list:
    """The brackets opened before offset ``end`` and not closed, innermost last: [(char, offset)]."""
    stack, i, quote = [], 0, None
    while i < end:
        c = source[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote or c == "\n":
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#":
            nl = source.find("\n", i)
            i = end if nl < 0 else nl
            continue
        elif c in _CLOSER:
            stack.append((c, i))
        elif c in ")]}":
            if stack and _CLOSER[stack[-1][0]] == c:
                stack.pop()
        i += 1
    return stack


def _describe_expected(accepts: set) -> list:
    accepts = {t for t in accepts if not t.startswith("__")}
    words = []
    if _STATEMENT_START <= accepts and _EXPR_START <= accepts:
        accepts -= _STATEMENT_START | _EXPR_START
        words.append("a statement")
    elif _EXPR_START <= accepts:
        accepts -= _EXPR_START
        words.append("a value")
    if _OPERATORS <= accepts:
        accepts -= _OPERATORS
        words.append("an operator")
    words += sorted(_TOKEN_WORDS.get(t, repr(t.lower()) if t.isupper() else t) for t in accepts)
    return words


def _syntax_diagnostic(e, source: str, loc) -> Diagnostic:
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        pos = e.pos_in_stream
        line, col = _line_col(source, pos)
        ch = source[pos] if pos < len(source) else "?"
        if ch in "\"'":
            end = source.find("\n", pos)
            length = (len(source) if end < 0 else end) - pos
            return Diagnostic("unterminated string", loc(line, col, length),
                              f"close it with {ch} on the same line")
        return Diagnostic(f"unexpected character {ch!r}", loc(line, col),
                          "operators are + - * /; '#' starts a comment" if ch in "@%^&|!<>~`$?\\" else None)
    token = getattr(e, "token", None)
    try:  # what the parser would really accept here (``expected`` over-approximates it)
        accepts = e.accepts
    except Exception:  # pragma: no cover - no interactive parser
        accepts = None
    accepts = accepts or getattr(e, "expected", None) or set()
    if token is None or token.type == "$END":
        end = len(source.rstrip())
        line, col = _line_col(source, end)
        what, length, pos = "end of file", 1, len(source)
    else:
        pos = token.start_pos
        line, col = token.line, token.column
        if token.type == "_NL":
            what, length = "end of line", 1
        else:
            what, length = repr(str(token)), len(str(token))
    if token is not None and token.type in ("NUMBER", "NAME") and pos > 0 and \
            (source[pos - 1].isalnum() or source[pos - 1] in "._"):
        # "1.2.3" or "12abc": one malformed number lexed as several tokens.
        start, stop = pos, pos
        while start > 0 and (source[start - 1].isalnum() or source[start - 1] in "._"):
            start -= 1
        while stop < len(source) and (source[stop].isalnum() or source[stop] in "._"):
            stop += 1
        word = source[start:stop]
        if word[0].isdigit() or (word[0] == "." and word[1:2].isdigit()):
            return Diagnostic(f"invalid number {word!r}", loc(*_line_col(source, start), len(word)),
                              "numbers look like 3, 0.5 or 1e-4")
    message = f"unexpected {what}"
    hint = None
    if token is not None and str(token) in _KEYWORDS and token.type != "NAME" and "NAME" in accepts:
        message = f"unexpected keyword {str(token)!r}"
        # `model n {` inside a body more likely follows a missing '}' than misuses the keyword.
        if token.type not in ("MODEL", "BLOCK") or source[token.end_pos:].lstrip(" \t").startswith("="):
            hint = f"{token} is a keyword; it cannot be used as a name"
    words = _describe_expected(set(accepts))
    if words and len(words) <= 6:
        message += "; expected " + (", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0])
    if hint is None:
        opened = _open_brackets(source, pos)
        prev = source[:pos].rstrip()
        prev_word = prev.split()[-1] if prev.split() else ""
        closer = {"(": "RPAR", "[": "RSQB", "{": "RBRACE"}
        at_eof = token is None or token.type == "$END"
        kind = None if at_eof else token.type
        # the words before the token on its line: a misspelled keyword, where it is one word
        before = source[source.rfind("\n", 0, pos) + 1:pos].strip()
        if kind == "COMMA" and prev.endswith((",", "(", "[")):  # `Dense(3,, 4)`: an empty item, not an open bracket
            call = opened and opened[-1][0] == "(" and source[:opened[-1][1]].rstrip()[-1:].isidentifier()
            what = "a parameter" if not _EXPR_START <= set(accepts) else "an argument" if call else "a value"
            hint = f"{what} is missing between the two commas" if prev.endswith(",") else \
                f"{what} is missing before the ','"
        elif opened and closer[opened[-1][0]] in accepts and (opened[-1][0] != "{" or at_eof or
                                                              kind in ("MODEL", "BLOCK")):
            ch, at = opened[-1]
            hint = "the {!r} at line {}, column {} is not closed".format(ch, *_line_col(source, at))
        elif kind in ("RPAR", "RSQB", "RBRACE") and not (opened and closer[opened[-1][0]] == kind):
            hint = f"this {str(token)!r} has no matching opening bracket"
        elif kind == "NAME" and {"MODEL", "BLOCK"} <= set(accepts):  # (a word where a definition starts)
            hint = did_you_mean(str(token), ("model", "block")) or \
                "a file holds models and blocks; statements go inside one: model name { ... }"
        elif before.isidentifier() and before not in _KEYWORDS and did_you_mean(before, _STATEMENT_KEYWORDS):
            hint = did_you_mean(before, _STATEMENT_KEYWORDS)
        elif prev_word in _KEYWORDS and kind == "EQUAL":
            hint = f"{prev_word} is a keyword; it cannot be used as a name"
        elif prev.endswith("=") and _EXPR_START <= set(accepts):
            hint = "a value must follow '='"
        elif kind == "NAME" and "COLON" in accepts:
            hint = f"is a ':' missing before {str(token)!r}?"
        elif kind in ("NAME", "NUMBER", "STRING") and "_NL" in accepts:
            hint = "separate two statements with a new line or ';'"
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
        name, typ, option = items
        return ast.InputDecl(self._tok(name), str(name), typ, option)

    def input_option(self, items):
        name, value = items
        return ast.Name(self._tok(name), str(name)), value

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
        *names, expr = items
        return ast.Assign(self._tok(names[0]), str(names[0]), expr, [str(n) for n in names])

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
        try:  # Python's backslash escapes; other characters as they are (latin-1 bytes, or \u escapes beyond)
            value = text.encode("latin-1", "backslashreplace").decode("unicode_escape")
        except UnicodeDecodeError as e:
            raise KcompileError(f"invalid escape in a string: {e.reason}", self._tok(items[0]),
                                "a backslash starts an escape such as \\n, \\t, \\\\ or \\x41") from None
        return ast.String(self._tok(items[0]), value)

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
