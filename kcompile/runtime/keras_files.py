"""Keras 3's weight files: ``.weights.h5`` (``keras_model.save_weights``) and the weights inside a
``.keras`` archive, read into a kcompile model and written from one.

Keras 3 stores a functional or sequential model's weights in an HDF5 tree that follows its
objects: ``layers/<layer class in snake case>[_<n>]/vars/<i>``, the group named after the n-th
layer of that class in ``model.layers`` (not after the layer's name, which Keras keeps as the
``vars`` group's attribute ``name``), sublayers below it (an LSTM's ``cell``, a Bidirectional's
``forward_layer/cell`` and ``backward_layer/cell``, MultiHeadAttention's ``query_dense``, ...),
and each vars group's weights in the layer's own order (trainable, then non-trainable: a
BatchNormalization's gamma, beta, moving mean and variance). kcompile's layers, their order
and their weights' layouts are Keras's, so each weight has one place in that tree (locations).

h5py is optional: these files need it, .npz files do not.
"""
from __future__ import annotations

import io
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ..layers.base import snake_case  # (Keras's group names: the same as its own to_snake_case for every layer)

ARCHIVE_WEIGHTS = "model.weights.h5"  # (the weights file inside a .keras archive)
# MultiHeadAttention's weights, by kcompile's name part, live in these Keras sublayers
ATTENTION_PARTS = {"query": "query_dense", "key": "key_dense", "value": "value_dense",
                   "attention_output": "output_dense"}


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("Keras's .weights.h5 and .keras files need h5py, which is not installed: "
                          "pip install h5py (or kcompile's bench extra); .npz weight files work without it") from None
    return h5py


def locations(manifest: dict) -> list[tuple[str, str, str, str]]:
    """(weight, its layer's name, the layer's group, the weight's dataset under that group) for
    each weight in the model's order, where keras_model.save_weights puts the same weight."""
    from ..layers import LAYERS
    out, used = [], {}
    for layer in manifest["layers"]:
        if layer["kind"] not in LAYERS and layer["params"]:
            raise ValueError(f"Keras's weight files: layer {layer['name']} is a {layer['kind']} (a model or block "
                             f"called in this one), whose layers Keras 3 keeps in groups of their own, which kcompile "
                             f"does not read or write yet; save_weights and load_weights take .npz files for it")
        base = snake_case(layer["kind"])
        # (Keras names each group by its class and its place among that class's layers)
        used[base] = used.get(base, -1) + 1
        group = f"layers/{base}" + (f"_{used[base]}" if used[base] else "")
        recurrent = any(p.endswith("/recurrent_kernel") for p in layer["params"])
        counts = {}
        for name in layer["params"]:
            part = name[len(layer["name"]) + 1:].split("/")[0]
            sub = {"Bidirectional": "forward_layer/" if part.startswith("forward_") else "backward_layer/",
                   "TimeDistributed": "layer/",
                   "MultiHeadAttention": ATTENTION_PARTS.get(part, part) + "/"}.get(layer["kind"], "")
            sub += "cell/" if recurrent else ""  # (a recurrent layer's weights are its cell's)
            counts[sub] = counts.get(sub, -1) + 1
            out.append((name, layer["name"], group, f"{sub}vars/{counts[sub]}"))
    placed = {place[0] for place in out}
    unplaced = [p["name"] for p in manifest["parameters"] if p["name"] not in placed]
    if unplaced:  # (no layer of Keras's tree to put them under)
        raise ValueError(f"Keras's weight files: the weights {', '.join(unplaced[:5])} belong to no layer of this model")
    return out


def write_weights(manifest: dict, weights: dict) -> bytes:
    """The bytes of a .weights.h5 file holding ``weights`` (by name) as Keras 3 lays them out."""
    h5py = _h5py()
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for name, layer, group, dataset in locations(manifest):
            # (the layer's name, as Keras writes it: load_weights falls back on matching by it)
            f.require_group(f"{group}/vars").attrs["name"] = layer
            f[f"{group}/{dataset}"] = weights[name]
            if _class_of(group) == "normalization" and dataset == "vars/1":
                f[f"{group}/vars/2"] = np.int64(0)  # (Keras's Normalization keeps a sample count besides)
    return buf.getvalue()


def read_weights(path: Path, manifest: dict, skip_mismatch: bool = False) -> dict[str, np.ndarray]:
    """The weights of a Keras 3 .weights.h5 file or .keras archive, by this model's weight names.
    Layers match as Keras's own load_weights matches them (the n-th layer of each class), else,
    where that does not fit and the file's weighted layers have exactly this model's names, by
    name; any layer, weight or shape that does not fit is a ValueError saying which, or, with
    ``skip_mismatch`` (Keras's), a warning, that layer's weights left out."""
    path = Path(path)
    groups = _read_layers(path)
    mine = {}  # layer name -> (its group by class and place, {dataset: (weight, shape)})
    shapes = {p["name"]: tuple(p["shape"]) for p in manifest["parameters"]}
    for name, layer, group, dataset in locations(manifest):
        mine.setdefault(layer, (group, {}))[1][dataset] = (name, shapes[name])
    # (by place first: automatic names are not the same layers' everywhere. A Keras session counts
    # on (dense_7), and Keras names Dense(7)(Dense(7)(b))'s outer layer first, kcompile the inner)
    problems, out = _match(groups, mine, {layer: group for layer, (group, _) in mine.items()})
    how = "by each class's order of layers, as Keras"
    by_name = {}
    for group, (layer, _) in groups.items():
        by_name.setdefault(layer, []).append(group)
    if problems and sorted(by_name) == sorted(mine) and all(len(g) == 1 for g in by_name.values()):
        named, out = _match(groups, mine, {layer: by_name[layer][0] for layer in mine})
        problems, how = (named, how + ", nor by layer name") if named else ([], "")
    if problems:
        more = f"; and {len(problems) - 6} more" if len(problems) > 6 else ""
        if not skip_mismatch:
            raise ValueError(f"load_weights: {path} holds the weights of another model (layers matched {how}): "
                             + "; ".join(problems[:6]) + more)
        warnings.warn(f"load_weights: skipped what does not fit in {path} (skip_mismatch=True; layers matched "
                      f"{how}): " + "; ".join(problems[:6]) + more, stacklevel=3)
    return out


def _match(groups: dict, mine: dict, group_of: dict) -> tuple[list[str], dict]:
    """What does not fit where each of this model's layers takes the file's group ``group_of``
    gives, and the weights by name."""
    problems, out = [], {}
    for layer, (group, expected) in mine.items():
        found = group_of[layer]
        if found not in groups:
            problems.append(f"it has no weights for layer {layer} (Keras's {group})")
            continue
        if _class_of(found) != _class_of(group):
            problems.append(f"layer {layer} is a {_class_of(group)} here, a {_class_of(found)} in the file")
            continue
        datasets = groups[found][1]
        missing, extra = sorted(set(expected) - set(datasets)), sorted(set(datasets) - set(expected))
        if _class_of(found) == "normalization":  # (Keras's sample count: kcompile keeps none)
            extra = [d for d in extra if d != "vars/2"]
        if missing or extra:
            problems.append(f"layer {layer} has {len(expected)} weights here, {len(datasets)} in the file's {found}"
                            + (f" (the file lacks {', '.join(missing[:4])})" if missing else "")
                            + (f" (the file has {', '.join(extra[:4])} too)" if extra else ""))
            continue
        wrong = [f"weight {name} has shape {shape} here, {datasets[dataset].shape} in the file's {found}/{dataset}"
                 for dataset, (name, shape) in expected.items() if datasets[dataset].shape != shape]
        problems += wrong
        if not wrong:  # (a layer's weights come all together, or not at all)
            out.update({name: datasets[dataset] for dataset, (name, _) in expected.items()})
    extra = sorted(set(groups) - set(group_of.values()))
    if extra:
        problems.append("the file has weights of layers this model lacks: "
                        + ", ".join(f"{g} ({groups[g][0]})" for g in extra[:5]))
    return problems, out


def _class_of(group: str) -> str:
    return re.sub(r"_\d+$", "", group.rpartition("/")[2])


def _read_layers(path: Path) -> dict[str, tuple[str, dict[str, np.ndarray]]]:
    """Each layer group of the file holding weights: group -> (the layer's name, {dataset: array})."""
    h5py = _h5py()
    data = path.read_bytes()  # (a missing or unreadable file: its OSError)
    try:
        if path.name.lower().endswith(".keras"):
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                if ARCHIVE_WEIGHTS not in archive.namelist():
                    raise ValueError(f"it holds no {ARCHIVE_WEIGHTS} (not a Keras 3 .keras archive)")
                data = archive.read(ARCHIVE_WEIGHTS)
        with h5py.File(io.BytesIO(data), "r") as f:
            if "layer_names" in f.attrs or "model_weights" in f:
                raise ValueError("it is a legacy Keras 2 HDF5 file (model.save('x.h5') or Keras 2's save_weights), "
                                 "which kcompile does not read; load it in Keras and write "
                                 "keras_model.save_weights('x.weights.h5')")
            if not isinstance(f.get("layers"), h5py.Group):
                raise ValueError("it holds no layers group (not the weights of a Keras 3 functional or "
                                 "sequential model)")
            groups = {}
            for key, group in f["layers"].items():
                arrays = {}

                def take(name, item, arrays=arrays):
                    if isinstance(item, h5py.Dataset):
                        arrays[name] = item[()]  # (read now: the file closes below)
                group.visititems(take)
                if arrays:
                    own = group.get("vars")
                    groups[f"layers/{key}"] = (str(own.attrs.get("name", key)) if own is not None else key, arrays)
            return groups
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"load_weights: cannot read {path}: {e}") from None
