"""Keras-style model summary from a build manifest."""
from __future__ import annotations

import numpy as np


def _shape(s) -> str:
    return "(" + ", ".join("None" if not isinstance(d, int) else str(d) for d in s) + ")"


def _size(n_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1024 or unit == "GB":
            return f"{n_bytes:.2f} {unit}" if unit != "B" else f"{n_bytes} B"
        n_bytes /= 1024
    return ""


def format_summary(manifest: dict) -> str:
    params = {p["name"]: p for p in manifest["parameters"]}

    def count(names):
        total = 0
        for n in names:
            k = 1
            for d in params[n]["shape"]:
                k *= d
            total += k
        return total

    rows = [("Layer (type)", "Output Shape", "Param #")]
    for inp in manifest["inputs"]:
        rows.append((f"{inp['name']} (InputLayer)", _shape(inp["shape"]), "0"))
    for layer in manifest["layers"]:
        shapes = [_shape(s) for s in layer["output_shapes"]] or ["?"]
        rows.append((f"{layer['name']} ({layer['kind']})", shapes[0], f"{count(layer['params']):,}"))
        for extra in shapes[1:]:
            rows.append(("", extra, ""))
    widths = [max(len(r[i]) for r in rows) + 2 for i in range(3)]
    widths[0] = max(widths[0], 30)
    widths[1] = max(widths[1], 24)
    widths[2] = max(widths[2], 12)
    line = "─" * sum(widths)
    out = [f'Model: "{manifest["model"]}"', "━" * sum(widths)]
    header = rows[0]
    out.append(header[0].ljust(widths[0]) + header[1].ljust(widths[1]) + header[2].rjust(widths[2]))
    out.append("━" * sum(widths))
    for i, r in enumerate(rows[1:]):
        out.append(r[0].ljust(widths[0]) + r[1].ljust(widths[1]) + r[2].rjust(widths[2]))
        if i < len(rows) - 2:
            out.append(line)
    out.append("━" * sum(widths))
    total = count(params)
    trainable = count([n for n, p in params.items() if p["trainable"]])
    size = {n: count([n]) * np.dtype(p["dtype"]).itemsize for n, p in params.items()}  # (bytes)
    nbytes = sum(size.values())
    tb = sum(size[n] for n, p in params.items() if p["trainable"])
    out.append(f" Total params: {total:,} ({_size(nbytes)})")
    out.append(f" Trainable params: {trainable:,} ({_size(tb)})")
    out.append(f" Non-trainable params: {total - trainable:,} ({_size(nbytes - tb)})")
    return "\n".join(out)
