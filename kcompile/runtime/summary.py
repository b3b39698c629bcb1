"""Keras-style model summary from a build manifest."""
from __future__ import annotations

import re

import numpy as np

HEADER = ("Layer (type)", "Output Shape", "Param #", "Trainable")
MIN_WIDTHS = (30, 24, 12, 11)


def _shape(s) -> str:
    return "(" + ", ".join("None" if not isinstance(d, int) else str(d) for d in s) + ")"


def _size(n_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1024 or unit == "GB":
            return f"{n_bytes:.2f} {unit}" if unit != "B" else f"{n_bytes} B"
        n_bytes /= 1024
    return ""


def format_summary(manifest: dict, line_length=None, positions=None, expand_nested=False, show_trainable=False,
                   layer_range=None) -> str:
    """The table Keras's ``model.summary`` prints, with its options: ``line_length`` (the width),
    ``positions`` (each column's right end: fractions of the width, or characters),
    ``expand_nested`` (the layers inside blocks and called models, indented under them),
    ``show_trainable`` (a Trainable column: Y, N, or - for a layer without weights) and
    ``layer_range`` (two names or regular expressions: the rows from the first layer the first
    matches to the last the second matches)."""
    params = {p["name"]: p for p in manifest["parameters"]}

    def count(names):
        return sum(int(np.prod(params[n]["shape"], dtype=np.int64)) for n in names)

    def row(entry, depth=0):
        # Keras shows layer.trainable: N where the layer's learned weights are frozen (its
        # statistics, BatchNormalization's moving ones, never train), - without weights
        learned = [params[n]["trainable"] for n in entry["params"] if not params[n].get("statistic")]
        trainable = "-" if not entry["params"] else "N" if learned and not any(learned) else "Y"
        shapes = [_shape(s) for s in entry["output_shapes"]] or ["?"]
        label = f"{'   ' * depth}└ {entry['name'].rpartition('/')[2]}" if depth else entry["name"]  # (Keras's)
        return [f"{label} ({entry['kind']})", shapes[0], f"{count(entry['params']):,}", trainable], shapes[1:]

    inner = {}
    for entry in manifest.get("inner_layers", []):
        inner.setdefault(entry["name"].rpartition("/")[0], []).append(entry)

    def with_nested(entry, depth=0):
        out = [row(entry, depth)]
        if expand_nested:
            for sub in inner.get(entry["name"], []):
                out += with_nested(sub, depth + 1)
        return out

    layers = [(i["name"], [([f"{i['name']} (InputLayer)", _shape(i["shape"]), "0", "-"], [])])
              for i in manifest["inputs"]] + [(layer["name"], with_nested(layer)) for layer in manifest["layers"]]
    if layer_range is not None:  # (the model's own layers, each with the rows nested in it)
        layers = _in_range(layers, layer_range)
    rows = [r for _, nested in layers for r in nested]
    columns = 4 if show_trainable else 3
    cells = [HEADER[:columns]] + [r[0][:columns] for r in rows]
    widths = [max(max(len(c[i]) for c in cells) + 2, MIN_WIDTHS[i]) for i in range(columns)]
    if positions is not None and show_trainable and len(positions) == 3:  # (Keras's: the Trainable column added)
        positions = [float(p) * 0.9 for p in positions] + [1.0] if max(positions) <= 1 else \
            list(positions) + [max(positions) + widths[3]]
    if positions is not None or line_length is not None:
        widths = _widths(widths, positions, line_length)
    thin, thick = "─" * sum(widths), "━" * sum(widths)

    def line(values):  # (each cell within its column, a space before the next one; a long one wraps)
        parts = [_fold(str(v), w - 1) for v, w in zip(values, widths)]
        out = []
        for k in range(max(len(p) for p in parts)):
            text = ""
            for i, (p, w) in enumerate(zip(parts, widths)):
                piece = p[k] if k < len(p) else ""
                text += (piece.rjust(w - 1) if i == 2 else piece.center(w - 1) if i == 3 else piece.ljust(w - 1)) + " "
            out.append(text.rstrip())
        return out

    out = [f'Model: "{manifest["model"]}"', thick] + line(HEADER[:columns]) + [thick]
    for i, (values, more) in enumerate(rows):
        out += line(values)
        for extra in more:
            out += line(["", extra, "", ""][:columns])
        if i < len(rows) - 1:
            out.append(thin)
    out.append(thick)
    total = count(params)
    trainable = count([n for n, p in params.items() if p["trainable"]])
    size = {n: count([n]) * np.dtype(p["dtype"]).itemsize for n, p in params.items()}  # (bytes)
    nbytes = sum(size.values())
    tb = sum(size[n] for n, p in params.items() if p["trainable"])
    out.append(f" Total params: {total:,} ({_size(nbytes)})")
    out.append(f" Trainable params: {trainable:,} ({_size(tb)})")
    out.append(f" Non-trainable params: {total - trainable:,} ({_size(nbytes - tb)})")
    return "\n".join(out)


def _widths(natural: list, positions, line_length) -> list:
    """Column widths from Keras's ``positions`` (right ends, fractions of ``line_length`` where
    all are at most 1) and ``line_length`` (the total: the natural widths scaled to it)."""
    total = int(line_length) if line_length is not None else sum(natural)
    if total < 4 * len(natural):
        raise ValueError(f"summary: line_length must be at least {4 * len(natural)}, got {line_length!r}")
    if positions is None:
        ends = np.cumsum(natural) / sum(natural)
    else:
        ends = [float(p) for p in positions]
        if len(ends) != len(natural) or any(b <= a for a, b in zip([0.0] + ends, ends)):
            raise ValueError(f"summary: positions must be {len(natural)} increasing right ends of the columns "
                             f"(fractions of line_length, or characters), got {positions!r}")
    ends = [round(e * total) if max(ends) <= 1 else int(e) for e in ends]
    widths = [b - a for a, b in zip([0] + ends, ends)]
    if min(widths) < 1:
        raise ValueError(f"summary: positions {positions!r} leave a column no width")
    return widths


def _fold(text: str, width: int) -> list[str]:
    """``text`` in pieces of at most ``width`` characters (a narrow column wraps, as Keras's)."""
    width = max(width, 1)
    return [text[i:i + width] for i in range(0, len(text), width)] or [""]


def _in_range(layers: list, layer_range) -> list:
    """The (name, rows) of the layers from the first whose name matches ``layer_range[0]`` to the
    last that matches ``layer_range[1]`` (Keras's: regular expressions by re.match; where every
    match of the first comes after every match of the second, the range between them)."""
    if not (isinstance(layer_range, (list, tuple)) and len(layer_range) == 2
            and all(isinstance(p, str) for p in layer_range)):
        raise ValueError(f"summary: layer_range must be two layer names (or patterns), got {layer_range!r}")
    names = [name for name, _ in layers]
    lower = [i for i, n in enumerate(names) if re.match(layer_range[0], n)]
    upper = [i for i, n in enumerate(names) if re.match(layer_range[1], n)]
    if not lower or not upper:
        raise ValueError(f"summary: layer_range {list(layer_range)} matches no layer "
                         f"{'name' if lower or upper else 'names'}; the layers are {', '.join(names)}")
    if min(lower) > max(upper):
        return layers[min(upper):max(lower) + 1]
    return layers[min(lower):max(upper) + 1]
