"""Reading a build or checkpoint folder (``kcompile.load``), checked: a damaged, foreign or newer
file is a KcompileError naming the file and what is wrong with it, found at load and not later
inside onnxruntime. (Missing or unreadable files stay OSErrors, which name the file.)"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import KcompileError
from ..ir.types import DTYPES

FORMAT, FORMAT_VERSION = "kcompile-build", 1


@dataclass
class Folder:
    manifest: dict
    inference: bytes
    weights: dict
    training: dict
    source: str | None
    state: dict | None = None
    slots: dict | None = None


def damaged(path, what: str) -> KcompileError:
    return KcompileError(f"cannot load {path}: {what}")


def find_manifest(folder: Path) -> Path:
    """The manifest.json of the build folder ``folder`` (or of its one model folder, or of the
    previous checkpoint that a save stopped between its two renames left beside it)."""
    from ..driver import old_folder
    if not folder.exists() and (old_folder(folder) / "manifest.json").exists():
        folder = old_folder(folder)
    if (folder / "manifest.json").exists():
        return folder / "manifest.json"
    inner = sorted(folder.glob("*/manifest.json")) if folder.is_dir() else []
    if len(inner) == 1:
        return inner[0]
    if inner:  # (`kcompile build gan.kdl -o build`: a folder per model)
        names = [m.parent.name for m in inner]
        raise FileNotFoundError(f"{folder} holds {len(names)} builds ({', '.join(names)}): load one of them, "
                                f"such as {folder / names[0]}")
    raise FileNotFoundError(f"{folder} is not a kcompile build folder (no manifest.json)")


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise damaged(path, f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise damaged(path, f"expected a JSON object, got {type(data).__name__}")
    return data


def _entries_problem(entries, what: str) -> str | None:
    """What is wrong with the manifest's list of inputs, outputs or parameters, or None."""
    for e in entries:
        if not (isinstance(e, dict) and isinstance(e.get("name"), str) and e.get("dtype") in DTYPES
                and isinstance(e.get("shape"), list)
                and all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in e["shape"])):
            return f"its {what} entry {e!r} needs a name, a dtype ({', '.join(DTYPES)}) and a shape"
    return None


def check_manifest(manifest: dict, path: Path) -> dict:
    from .. import __version__
    if manifest.get("format") != FORMAT:
        raise damaged(path, f"its format is {manifest.get('format')!r}, not {FORMAT!r}: not a kcompile build")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise damaged(path, f"format_version {version!r}: kcompile {__version__} reads format_version {FORMAT_VERSION}"
                            + (" (a newer kcompile wrote it: upgrade kcompile)" if newer else ""))
    for key, kind in {"model": str, "inputs": list, "outputs": list, "parameters": list, "files": dict}.items():
        if not isinstance(manifest.get(key), kind):
            raise damaged(path, f"{'no' if key not in manifest else 'a bad'} {key!r} entry (a {kind.__name__} expected)")
    for key in ("inputs", "outputs", "parameters"):
        problem = _entries_problem(manifest[key], key[:-1])
        if problem:
            raise damaged(path, problem)
    files = manifest["files"]
    for key in ("inference", "weights"):
        if not isinstance(files.get(key), str):
            raise damaged(path, f"its 'files' entry names no {key} file")
    training = manifest.get("training")
    if training is not None:
        params = {p["name"] for p in manifest["parameters"]}
        if not isinstance(training, dict) or not isinstance(training.get("slots"), list) or \
                not isinstance(training.get("targets"), list) or not isinstance(training.get("metrics"), list) or \
                _entries_problem(training["targets"], "target") or \
                not all(isinstance(s, dict) and s.get("param") in params for s in training["slots"]):
            raise damaged(path, "a bad 'training' entry (targets, metrics, and slots of the model's parameters)")
    return manifest


def read_onnx(path: Path, manifest: dict | None = None) -> bytes:
    """An ONNX file's bytes, once they parse; the inference graph's (``manifest`` given) must take
    the manifest's inputs and give its outputs."""
    import onnx
    data = path.read_bytes()
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as e:  # (protobuf's DecodeError, or a RuntimeWarning-like error of its C++ parser)
        raise damaged(path, f"not a readable ONNX file ({type(e).__name__}: {e}): truncated or damaged") from None
    if not proto.opset_import or not proto.graph.output:
        raise damaged(path, "not a complete ONNX model (no opset or no outputs): truncated or damaged")
    try:  # (a byte changed inside a graph parses, and failed only at its first run: Relu as Relx)
        onnx.checker.check_model(proto)
    except Exception as e:
        raise damaged(path, f"its graph is not valid ONNX ({str(e).strip().splitlines()[0][:300]}): damaged") from None
    if manifest is not None:
        def shapes(values):
            return {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param
                             for d in v.type.tensor_type.shape.dim] for v in values}
        graph = {**shapes(proto.graph.input), **shapes(proto.graph.output)}
        for e in manifest["inputs"] + manifest["outputs"]:
            dims = graph.get(e["name"])
            if dims is None or len(dims) != len(e["shape"]) or any(
                    isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(dims, e["shape"])):
                raise damaged(path, f"its graph's {e['name']} is {dims}; the manifest's model {manifest['model']} "
                                    f"has {e['name']} {e['shape']}")
    return data


def read_npz(path: Path) -> dict:
    """Every array of an .npz file, by name; np.load's errors on other and damaged files said
    plainly (weights, checkpoints, and `kcompile train --data`)."""
    data = path.read_bytes()  # (a missing or unreadable file: its OSError)
    # (any exception: a damaged file reaches numpy's and zipfile's decoders, which raise what
    # they meet, tokenize.TokenError from an array's header or NotImplementedError from a
    # compression method byte among them)
    try:
        npz = np.load(io.BytesIO(data))
    except MemoryError:
        raise
    except Exception as e:
        # (numpy takes a file it does not know for a pickle, and says so)
        raise damaged(path, "not an .npz file (write one with np.savez(path, name=array, ...))" if "pickled" in str(e)
                      else f"not a readable .npz file ({type(e).__name__}: {e})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):  # (an .npy)
        raise damaged(path, "it holds one array, not named arrays (write them with np.savez(path, name=array, ...))")
    try:
        with npz:
            return {k: npz[k] for k in npz.files}
    except MemoryError:
        raise
    except Exception as e:
        raise damaged(path, "it holds object arrays, which need pickle: save numbers" if "allow_pickle" in str(e)
                      else f"an array in it is truncated or damaged ({type(e).__name__}: {e})") from None


def read_arrays(path: Path, specs: list, what: str) -> dict:
    """The arrays of an .npz written in ``specs`` order (0000, 0001, ...), by spec name, each with
    the shape and dtype its spec gives."""
    arrays = read_npz(path)
    keys = [f"{i:04d}" for i in range(len(specs))]
    if sorted(arrays) != keys:
        raise damaged(path, f"it holds {len(arrays)} arrays ({', '.join(sorted(arrays)[:5])}"
                            f"{', ...' if len(arrays) > 5 else ''}); the manifest lists {len(specs)} {what}s")
    out = {}
    for key, spec in zip(keys, specs):
        a = arrays[key]
        if list(a.shape) != list(spec["shape"]) or a.dtype != np.dtype(spec["dtype"]):
            raise damaged(path, f"{what} {spec['name']} is {a.dtype}{list(a.shape)}; the manifest says "
                                f"{spec['dtype']}{list(spec['shape'])}")
        out[spec["name"]] = a
    return out


def read_state(path: Path, manifest: dict) -> dict:
    state = read_json(path)
    slots = sorted(s["name"] for s in (manifest.get("training") or {}).get("slots", []))
    counts = all(isinstance(state.get(k), int) and not isinstance(state[k], bool) and state[k] >= 0
                 for k in ("iterations", "epoch", "seed"))
    rate = state.get("learning_rate_override")
    if not counts or not isinstance(rate, (int, float, type(None))) or not isinstance(state.get("slots"), list) \
            or sorted(map(str, state["slots"])) != slots:
        raise damaged(path, f"a checkpoint's state needs iterations, epoch and seed (integers of at least 0), "
                            f"learning_rate_override (a number or null) and the optimizer's slots {slots}")
    return state


def _check_weights_are_inputs(training: dict, params: list, manifest_path: Path) -> None:
    """Every weight the manifest lists is an input of one of the training graphs (those hold no
    weights, so they parse quickly): a manifest edited by hand otherwise fails deep inside fit."""
    import onnx
    if not training:
        return
    names = set()
    for data in training.values():
        proto = onnx.ModelProto()
        proto.ParseFromString(data)
        names.update(v.name for v in proto.graph.input)
    missing = [p["name"] for p in params if p["name"] not in names]
    if missing:
        raise damaged(manifest_path, f"it lists weight {missing[0]}, which none of the folder's training graphs "
                                     f"takes: the manifest no longer matches the graphs kcompile build wrote")


def read_folder(manifest_path: Path) -> Folder:
    from ..driver import TRAINING_FILES
    folder = manifest_path.parent
    manifest = check_manifest(read_json(manifest_path), manifest_path)
    files = manifest["files"]
    params = manifest["parameters"]
    for key, name in files.items():
        if key != "source" and not (folder / name).exists():  # (source.kdl: kept where there, not needed)
            raise damaged(folder / name, f"the file is missing; the manifest lists it as the {key} file "
                                         f"(build or save the folder again)")
    result = Folder(manifest=manifest, inference=read_onnx(folder / files["inference"], manifest),
                    weights=read_arrays(folder / files["weights"], params, "weight"),
                    training={k: read_onnx(folder / files[k]) for k in TRAINING_FILES if k in files}, source=None)
    _check_weights_are_inputs(result.training, params, manifest_path)
    if "source" in files and (folder / files["source"]).exists():
        try:
            result.source = (folder / files["source"]).read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise damaged(folder / files["source"], f"not UTF-8 text ({e})") from None
    if "state" in files:
        result.state = read_state(folder / files["state"], manifest)
        by_param = {p["name"]: p for p in params}
        specs = [{**by_param[s["param"]], "name": s["name"]} for s in manifest["training"]["slots"]] \
            if manifest.get("training") else []
        order = {name: i for i, name in enumerate(result.state["slots"])}  # (the order save wrote them in)
        specs.sort(key=lambda spec: order[spec["name"]])
        result.slots = read_arrays(folder / files.get("optimizer", "optimizer.npz"), specs, "optimizer slot")
    return result
