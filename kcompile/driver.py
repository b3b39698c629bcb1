"""The compiler driver: source file -> checked graph -> optimized graph -> ONNX and a build folder."""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .errors import Diagnostic, KcompileError, Loc
from .fileio import current_umask
from .frontend import ast
from .frontend.elaborate import Elaborator
from .frontend.parser import parse
from .frontend.train import check_train
from .initializers import make, seeded_rng
from .ir import Graph
from .ir.types import NEXT_STATE, STATE
from .passes import optimize
from .training.graphs import mixes_samples, sample_rows


@dataclass
class Compiled:
    """A compiled model: the optimized inference graph and what the build folder records."""
    graph: Graph
    source_file: str
    source: str
    opt_level: int
    passes: list
    train: dict | None = None
    layers: list = field(default_factory=list)
    elaborated: Graph | None = None  # before passes: what training builds on
    train_ast: object = None
    env: dict = field(default_factory=dict)
    _training: object = None
    training_error: str | None = None
    report: object = None  # callback(pass, nodes_before, nodes_after), for --report
    inner_layers: list = field(default_factory=list)  # [(name, kind, output shapes)] inside blocks and called models

    def training(self):
        """The TrainingProgram of the train section (built on first use), or None when the model
        has none or cannot be trained yet (``training_error`` says why)."""
        if self.train_ast is None or self.training_error:
            return None
        if self._training is None:
            from .training import build_training
            try:
                self._training = build_training(self.elaborated, self.train_ast, self.train,
                                                 {k: v.name for k, v in self.env.items()}, self.opt_level,
                                                 self.report)
            except NotImplementedError as e:  # an op without a gradient rule yet
                self.training_error = str(e)
                return None
        return self._training


def read_source(path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KcompileError(f"no such file: {path}") from None
    except UnicodeDecodeError as e:
        raise KcompileError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise KcompileError(f"cannot read {path}: {e.strerror}") from None


def parse_source(source: str, file: str) -> ast.Module:
    return parse(source, file)


def check_module(module: ast.Module) -> list[Diagnostic]:
    """Elaborate every model of the file; return all diagnostics (empty when the file is valid)."""
    elaborator = Elaborator(module)
    diagnostics = list(elaborator.diagnostics)
    if diagnostics:
        return diagnostics
    for model in module.models():
        try:
            graph = Elaborator(module).model(model.name)
            check_weights_fit(graph)
            config = check_train(graph, model, module)
            if config is not None:  # (and what training will build of it: the loss and metrics)
                from .ops.image import refuse_trained_inputs
                from .training.graphs import evaluation_objective
                refuse_trained_inputs(graph)
                env = {k: v.name for k, v in graph.meta.get("env", {}).items()}
                evaluation_objective(graph, graph.meta["train"], config, env)
        except KcompileError as e:
            diagnostics.extend(e.diagnostics)
    if not module.models():
        diagnostics.append(Diagnostic("no model in this file", _file_start(module), "define one: model name { ... }"))
    return diagnostics


def _file_start(module: ast.Module) -> Loc:
    """The place an error about the whole file points at: its first line."""
    first = module.source.lstrip("\ufeff").split("\n", 1)[0].rstrip("\r")
    return Loc(module.file, 1, 1, max(1, len(first)), first)


def select_model(module: ast.Module, name: str | None) -> str:
    names = [m.name for m in module.models()]
    if name is not None:
        if name not in names:
            from .errors import did_you_mean
            if name in (b.name for b in module.blocks()):  # (it said "has no model 'B'", as of a misspelling)
                raise KcompileError(f"{name} is a block in {module.file}, which a model calls, not a model; "
                                    + (f"its models: {', '.join(names)}" if names else "it defines no model"),
                                    hint=None if names else f"define a model that calls it: model m {{ input x: "
                                    f"float32[...]; {name}(...) }}")
            raise KcompileError(f"{module.file} has no model {name!r}; it defines: {', '.join(names) or 'none'}",
                                hint=did_you_mean(name, names))
        return name
    if len(names) == 1:
        return names[0]
    if not names:
        raise KcompileError("no model in this file", _file_start(module), "define one: model name { ... }")
    raise KcompileError(f"{module.file} defines {len(names)} models ({', '.join(names)}); choose one",
                        hint="pass model=NAME (Python) or --model NAME (CLI)")


def compile_source(source: str, file: str = "<string>", model: str | None = None, opt_level: int = 1,
                   report=None) -> Compiled:
    """Parse, check and optimize one model; ``report(pass, nodes_before, nodes_after, changed)`` sees
    each pass."""
    module = parse_source(source, file)
    elaborator = Elaborator(module)
    if elaborator.diagnostics:
        raise KcompileError(elaborator.diagnostics)
    name = select_model(module, model)
    graph = elaborator.model(name)
    model_ast = next(m for m in module.models() if m.name == name)
    check_weights_fit(graph)
    train = check_train(graph, model_ast, module)
    env = graph.meta.pop("env", {})
    train_ast = graph.meta.pop("train", None)
    inner_layers = graph.meta.pop("inner_layers", [])
    layers = list(graph.layers)
    elaborated = graph.copy() if train_ast is not None else None
    graph, applied = optimize(graph, opt_level, report)
    return Compiled(graph, file, source, opt_level, applied, train, layers, elaborated, train_ast, env,
                    report=report, inner_layers=inner_layers)


# The inference file holds the weights, and an ONNX file is one protobuf message, which
# protobuf refuses to write past 2 GiB; a little is left for the graph itself.
MAX_WEIGHT_BYTES = 2 ** 31 - (16 << 20)


def check_weights_fit(graph: Graph) -> None:
    """A located error, before any weight is made, where the weights would not fit in an ONNX
    file (Dense(700000) on 784 inputs took 22 s to fail inside protobuf's writer)."""
    sizes = {name: math.prod(p.type.shape) * np.dtype(p.type.dtype).itemsize for name, p in graph.params.items()}
    total = sum(sizes.values())
    if total <= MAX_WEIGHT_BYTES:
        return
    largest = max(sizes, key=sizes.get)
    param = graph.params[largest]
    layer = next((record for record in graph.layers if largest in record.params), None)
    raise KcompileError(
        f"model {graph.name}: its weights take {total / 2 ** 30:.2f} GiB ({largest} "
        f"{param.type.dtype}{list(param.type.shape)} alone {sizes[largest] / 2 ** 30:.2f} GiB); an ONNX file, "
        f"which holds the weights, cannot exceed 2 GiB", layer.loc if layer is not None else None,
        hint="use fewer units or a smaller input, or float16 weights")


def compile_file(path, model: str | None = None, opt_level: int = 1) -> Compiled:
    return compile_source(read_source(path), str(path), model, opt_level)


def initial_weights(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Keras initialisers, seeded per weight: same seed, same weights."""
    return {name: make(p.initializer, p.type.shape, seeded_rng(seed, name), p.type.dtype)
            for name, p in graph.params.items()}


TRAINING_FILES = ("train_step", "eval", "predict_weights")


def lower_all(compiled: Compiled, weights: dict) -> dict[str, bytes]:
    """The ONNX files of a model: ``inference`` (weights inside), ``predict_weights`` (the same
    with the weights as inputs), and with a train section ``train_step`` and ``eval``."""
    import onnx
    from .backend import to_onnx
    out = {}
    model = to_onnx(compiled.graph, weights, doc=f"kcompile {__version__}: {compiled.graph.name} inference")
    onnx.checker.check_model(model, full_check=True)
    out["inference"] = model.SerializeToString()
    # predict_weights: the inference graph with the weights as inputs, for predicting while the
    # weights keep changing (between training steps, a GAN's generator) without rebuilding a session.
    out.update(_lower_with_weight_inputs([("predict_weights", compiled.graph)]))
    out.update(lower_training(compiled))
    return out


def lower_training(compiled: Compiled) -> dict[str, bytes]:
    """``train_step`` and ``eval`` of a model with a train section (else nothing)."""
    program = compiled.training()
    if program is None:
        return {}
    out = _lower_with_weight_inputs([("train_step", program.step), ("eval", program.eval)])
    if program.transposed:  # the file's contract: every weight and slot in Keras layout (checked again)
        from .backend.layout import keras_layout
        kernels = set(program.transposed)
        out["train_step"] = keras_layout(out["train_step"], sorted(kernels) + sorted(
            slot for slot, param, _ in program.slots if param in kernels))
    return out


def _lower_with_weight_inputs(graphs) -> dict[str, bytes]:
    import onnx
    from .backend import to_onnx
    out = {}
    for key, graph in graphs:
        model = to_onnx(graph, params_as_inputs=True, doc=f"kcompile {__version__}: {graph.name} {key}")
        onnx.checker.check_model(model, full_check=True)
        out[key] = model.SerializeToString()
    return out


def write_folder_atomic(folder: Path, contents: dict[str, bytes]) -> Path:
    """Write files into a new folder beside ``folder`` and swap it in whole. Only a folder kcompile
    wrote (one with a manifest.json), or an empty one, is replaced; a symbolic link to a folder
    has its target replaced."""
    folder = check_replaceable(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=staging_prefix(folder)))
    os.chmod(staging, 0o777 & ~current_umask())  # (mkdtemp makes it 0700: the mode a new folder gets)
    try:
        for name, data in contents.items():
            with open(staging / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if folder.exists():
            # Two renames: the previous folder steps aside as .NAME.old, the new one takes its name.
            # Between them the previous folder is .NAME.old alone: put back here on an error, and
            # read from there by Model.load after a crash.
            old = old_folder(folder)
            if old.exists():
                shutil.rmtree(old)
            folder.rename(old)
            try:
                staging.rename(folder)
            except BaseException:
                if old.exists() and not folder.exists():
                    old.rename(folder)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(folder)
            # (a save stopped between its two renames left the previous folder as .NAME.old: the
            # new one replaces it now)
            shutil.rmtree(old_folder(folder), ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _remove_stale_staging(folder)
    return folder


STALE_STAGING_S = 600


def staging_prefix(folder: Path) -> str:
    """The name a save's staging folder for ``folder`` starts with (mkdtemp adds 8 characters): one
    no other folder has, so that stale ones are told apart from another checkpoint's .NAME.old."""
    return f".{folder.name}.kcstage-"


def _remove_stale_staging(folder: Path) -> None:
    """The staging folders of saves of ``folder`` that a killed process left beside it, untouched
    for STALE_STAGING_S seconds (a save in flight in another process is younger): each holds a
    whole checkpoint's bytes."""
    now = time.time()
    for path in folder.parent.glob(glob.escape(staging_prefix(folder)) + "*"):
        if path.is_dir() and not path.is_symlink():
            try:
                if now - path.stat().st_mtime > STALE_STAGING_S:
                    shutil.rmtree(path)
            except OSError:  # (another process's, or gone meanwhile: left as it is)
                pass


def check_replaceable(folder) -> Path:
    """The folder write_folder_atomic would replace for ``folder`` (a symbolic link's target; ``.``
    resolved), or an OSError where that is not kcompile's to replace: a file, or a folder holding
    files without a manifest.json. Callers check before long work (training) that would end in it."""
    folder = Path(folder).resolve() if Path(folder).is_symlink() or not Path(folder).name else Path(folder)
    if folder.exists() and not folder.is_dir():  # (never swapped aside: it is not ours)
        raise NotADirectoryError(f"{folder} is a file, not a folder; it was left as it is")
    if folder.is_dir() and not (folder / "manifest.json").exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} holds files kcompile did not write (it has no manifest.json); it was "
                              f"left as it is: choose a new folder, or one kcompile wrote")
    return folder


def old_folder(folder: Path) -> Path:
    """Where write_folder_atomic moves ``folder``'s previous contents while it swaps the new ones in."""
    return folder.with_name(f".{folder.name}.old")


def activation_bytes_per_sample(g: Graph) -> int | None:
    """The largest value the inference graph computes, in bytes per batch item (None when a
    dimension besides the batch is symbolic): the runtime sizes predict's batches by it."""
    from .ir import BATCH
    rows = sample_rows(g)  # (TimeDistributed's values hold several rows a sample)
    rows = rows if isinstance(rows, dict) else {BATCH: 1}
    sizes = []
    for node in g.nodes():
        for v in node.outputs:
            t = g.types[v]
            if not t.shape or t.shape[0] not in rows:
                continue
            if not all(isinstance(d, int) for d in t.shape[1:]):
                return None
            sizes.append(int(np.prod(t.shape[1:], dtype=np.int64)) * np.dtype(t.dtype).itemsize * rows[t.shape[0]])
    return max(sizes, default=0)


def embedding_id_ranges(g: Graph) -> dict:
    """{input: rows} for each model input that an Embedding table looks up directly: the runtime
    refuses ids outside [0, rows) (onnxruntime's Gather takes a negative id from the end)."""
    ranges = {}
    for node in g.nodes():
        if node.op != "Gather" or node.inputs[0] not in g.params:
            continue
        ids = node.inputs[1]
        cast = g.producer_of(ids)
        if cast is not None and cast.op == "Cast":  # (int32 ids cast for the table)
            ids = cast.inputs[0]
        rows = g.params[node.inputs[0]].type.shape[0]
        if ids in g.inputs and isinstance(rows, int):
            ranges[ids] = min(rows, ranges.get(ids, rows))
    return ranges


def position_ranges(g: Graph) -> list:
    """[input, axis, rows] for each Embedding table looked up by positions(input) over a named
    size: the runtime refuses an input whose steps outrun the table (onnxruntime's Gather fails,
    or its optimized form clamps silently)."""
    ranges = []
    for node in g.nodes():
        if node.op != "Gather" or node.inputs[0] not in g.params:
            continue
        producer = g.producer_of(node.inputs[1])
        if producer is not None and producer.op == "Positions" and producer.inputs[0] in g.inputs:
            x = producer.inputs[0]
            axis = producer.attrs["axis"] % g.types[x].rank
            ranges.append([x, axis, g.params[node.inputs[0]].type.shape[0]])
    return ranges


def manifest_for(compiled: Compiled, seed: int) -> dict:
    import onnx
    from .backend import IR_VERSION, OPSET
    g = compiled.graph
    program = compiled.training()
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        ort_version = None
    return {
        "format": "kcompile-build",
        "format_version": 1,
        "model": g.name,
        "inputs": [{"name": n, "dtype": g.types[n].dtype, "shape": list(g.types[n].shape)} for n in g.inputs
                   if not n.startswith(STATE)],
        "outputs": [{"name": o, "dtype": g.types[v].dtype, "shape": list(g.types[v].shape)} for o, v in g.outputs
                    if not o.startswith(NEXT_STATE)],
        # stateful recurrent layers' states (graph inputs state:NAME, outputs next_state:NAME), which
        # the runtime carries from batch to batch: not weights, not saved (as Keras 3)
        "states": [{"name": n[len(STATE):], "dtype": g.types[n].dtype, "shape": list(g.types[n].shape)}
                   for n in g.inputs if n.startswith(STATE)],
        "parameters": [{"name": p.name, "layer": p.layer, "shape": list(p.type.shape), "dtype": p.type.dtype,
                        "trainable": p.trainable, "statistic": p.statistic, "initializer": p.initializer[0]}
                       for p in g.params.values()],
        "layers": [{"name": r.name, "kind": r.kind, "output_shapes": [list(t.shape) for t in r.output_types],
                    "params": r.params} for r in compiled.layers],
        "inner_layers": [{"name": name, "kind": kind, "output_shapes": shapes,
                          "params": [p for p in g.params if p.startswith(name + "/")]}
                         for name, kind, shapes in compiled.inner_layers],
        "passes": compiled.passes,
        "activation_bytes_per_sample": activation_bytes_per_sample(g),
        "rows_independent": not mixes_samples(g),
        "id_ranges": embedding_id_ranges(g),
        "position_ranges": position_ranges(g),
        "opt_level": compiled.opt_level,
        "seed": seed,
        "train": compiled.train,
        "source": {"file": os.path.basename(compiled.source_file),
                   "sha256": hashlib.sha256(compiled.source.encode()).hexdigest()},
        "versions": {"kcompile": __version__, "onnx": onnx.__version__, "onnxruntime": ort_version,
                     "opset": OPSET, "ir_version": IR_VERSION},
        "files": {"inference": f"{g.name}.onnx", "weights": "weights.npz", "source": "source.kdl",
                  "predict_weights": "predict_weights.onnx",
                  **({"train_step": "train_step.onnx", "eval": "eval.onnx"} if program else {})},
        "training": program.describe() if program else None,
        "training_error": compiled.training_error,
    }


PACKAGE_INIT = '''"""kcompile build of model {name!r}: ``import {name}; model = {name}.load()``."""
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(device="cpu"):
    """The compiled model, with its initial weights."""
    import kcompile
    return kcompile.load(HERE, device=device)
'''




def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file; the
    file gets the mode a new file gets (mkstemp makes it 0600: a server running as another user
    could not read an exported model)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_build(compiled: Compiled, out_dir, seed: int = 0) -> Path:
    """Write ``out_dir/<model>/``: the .onnx files, manifest.json, weights.npz, source.kdl and __init__.py."""
    import io
    g = compiled.graph
    weights = initial_weights(g, seed)
    files = lower_all(compiled, weights)
    manifest = manifest_for(compiled, seed)
    buf = io.BytesIO()
    np.savez(buf, **{f"{i:04d}": w for i, w in enumerate(weights.values())})
    contents = {manifest["files"]["inference"]: files["inference"], "weights.npz": buf.getvalue(),
                "manifest.json": (json.dumps(manifest, indent=2) + "\n").encode(),
                "source.kdl": compiled.source.encode(),
                "__init__.py": PACKAGE_INIT.format(name=g.name).encode()}
    for key in TRAINING_FILES:
        if key in files:
            contents[manifest["files"][key]] = files[key]
    return write_folder_atomic(Path(out_dir) / g.name, contents)
