"""The ``kcompile`` command line."""
from __future__ import annotations

import argparse
import errno
import os
import sys
import time

DESCRIPTION = """\
kcompile compiles neural-network models written in the .kdl language to ONNX.

commands:
  check FILE      parse and shape-check every model in FILE; print errors only
  summary FILE    print a Keras-style table: layer, output shape, parameter count
  build FILE      compile a model and write DIR/<model>/ (<model>.onnx, predict_weights.onnx,
                  train_step.onnx and eval.onnx with a train section, manifest.json,
                  weights.npz, source.kdl, and an __init__.py so the folder imports)
  train FILE      compile a model with a train section, train it on arrays from an
                  .npz file, report loss and metrics, and save a checkpoint

exit status: 0 on success, 1 when the source, the data or a path has errors, 2 on bad usage.
Run `kcompile COMMAND --help` for each command's options.
"""


def _count(least: int):
    """An argparse type: an integer of at least ``least``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value
    return parse


def _fraction(text):
    """An argparse type: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    p = argparse.ArgumentParser(prog="kcompile", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"kcompile {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    check = sub.add_parser("check", help="parse and shape-check a .kdl file",
                           description="Parse FILE and check the shapes and types of every model in it. "
                                       "Prints nothing and exits 0 when the file is valid; otherwise prints "
                                       "every error as file:line:col with the line and a caret, and exits 1.")
    check.add_argument("file", metavar="FILE", help="the .kdl source file")

    summary = sub.add_parser("summary", help="print a Keras-style summary of a model",
                             description="Print each layer's output shape and parameter count, and the totals.")
    summary.add_argument("file", metavar="FILE", help="the .kdl source file")
    summary.add_argument("--model", metavar="NAME", help="which model, when the file defines several "
                                                         "(default: all of them)")

    build = sub.add_parser("build", help="compile a model to ONNX and write a build folder",
                           description="Compile a model of FILE and write DIR/<model>/: <model>.onnx (the "
                                       "inference graph with initial weights), predict_weights.onnx (the same graph "
                                       "taking its weights as inputs), train_step.onnx and eval.onnx (with a train "
                                       "section), manifest.json (inputs, outputs, parameters in Keras order, "
                                       "passes, source hash, versions), weights.npz, source.kdl and __init__.py (the folder is an importable package: "
                                       "`import <model>; <model>.load()`).")
    build.add_argument("file", metavar="FILE", help="the .kdl source file")
    build.add_argument("-o", "--output", metavar="DIR", default="build", help="output directory (default: build)")
    build.add_argument("--model", metavar="NAME", help="which model, when the file defines several "
                                                       "(default: every model in the file)")
    level = build.add_mutually_exclusive_group()
    level.add_argument("-O0", dest="opt_level", action="store_const", const=0,
                       help="no optimization passes (the graph as written)")
    level.add_argument("-O1", dest="opt_level", action="store_const", const=1,
                       help="the optimization pipeline (default)")
    level.add_argument("-O2", dest="opt_level", action="store_const", const=2,
                       help="the same passes as -O1 today; reserved for costlier ones")
    build.add_argument("--emit", choices=["ir", "onnx"], default="onnx",
                       help="onnx (default): write the build folder; ir: print the optimized IR instead")
    build.add_argument("--seed", type=_count(0), default=0, help="seed of the initial weights (default: 0)")
    build.add_argument("--report", action="store_true", help="print what each pass changed (node counts)")
    build.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")

    train = sub.add_parser("train", help="train a model on arrays from an .npz file",
                           description="Compile a model of FILE (its train section gives loss, optimizer and "
                                       "metrics), train it on DATA.npz and save a checkpoint folder that "
                                       "`kcompile.load` reads (and a later `kcompile train --resume` continues). "
                                       "DATA.npz holds one array per model input and per target, by name; for a "
                                       "model with one input and one target, `x` and `y` also work. Optional "
                                       "`x_test`/`y_test` (or `<name>_test`) arrays are evaluated at the end. "
                                       "Integer class labels are one-hot encoded when the loss needs it.")
    train.add_argument("file", metavar="FILE", help="the .kdl source file")
    train.add_argument("--data", metavar="DATA.npz", required=True, help="the training arrays")
    train.add_argument("--model", metavar="NAME", help="which model, when the file defines several")
    train.add_argument("--epochs", type=_count(1), default=1,
                       help="train up to epoch N (default: 1); with --resume the epochs done count, as Keras's "
                            "epochs with initial_epoch")
    train.add_argument("--batch-size", type=_count(1), default=32, help="batch size (default: 32)")
    train.add_argument("--validation-split", type=_fraction, default=0.0, metavar="F",
                       help="fraction of the data held out for validation (default: 0)")
    train.add_argument("--seed", type=_count(0), default=None,
                       help="seed of the initial weights, shuffling and dropout (default: 0; a resumed checkpoint's own)")
    train.add_argument("-o", "--output", metavar="DIR", help="checkpoint folder (default: checkpoints/<model>)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint folder if it exists")
    train.add_argument("--verbose", type=int, choices=[0, 1, 2], default=2,
                       help="0 silent, 1 progress bar, 2 one line per epoch (default)")
    return p


def describe_os_error(e: OSError) -> str:
    """An OSError in words, its path first (not Python's "[Errno 20] Not a directory: 'a/b'")."""
    if e.filename is None or e.strerror is None:
        return str(e)
    say = {errno.EISDIR: "it is a folder, where a file is needed",
           errno.ENOTDIR: "a part of this path is a file, where a folder is needed",
           errno.ENOENT: "no such file or folder", errno.EACCES: "permission denied"}
    return f"{e.filename}: {say.get(e.errno, e.strerror)}"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `kcompile summary f.kdl | head`
        sys.stderr.close()
        return 0
    except OSError as e:  # a path that cannot be read or written: the user's to fix
        print(f"kcompile: error: {describe_os_error(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # never a traceback for users; KCOMPILE_DEBUG=1 shows it
        from .errors import KcompileError
        if isinstance(e, KcompileError):
            print(e.render(), file=sys.stderr)
            return 1
        if os.environ.get("KCOMPILE_DEBUG"):
            raise
        print(f"kcompile: internal error: {type(e).__name__}: {e}\n"
              "(this is a bug in kcompile; rerun with KCOMPILE_DEBUG=1 for details)", file=sys.stderr)
        return 3


def _run(args) -> int:
    from .driver import check_module, compile_source, parse_source, read_source, write_build
    from .errors import KcompileError
    source = read_source(args.file)
    module = parse_source(source, args.file)
    if args.command == "check":
        diagnostics = check_module(module)
        if diagnostics:
            raise KcompileError(diagnostics)
        return 0
    if args.command == "train":
        return _train(args, source)
    names = [args.model] if getattr(args, "model", None) else [m.name for m in module.models()]
    if not names:
        from .driver import select_model
        select_model(module, None)  # (the located error of a file without models)
    if args.command == "summary":
        from .driver import manifest_for
        from .runtime.summary import format_summary
        for i, name in enumerate(names):
            compiled = compile_source(source, args.file, name, opt_level=0)
            print(("\n" if i else "") + format_summary(manifest_for(compiled, seed=0)))
        return 0
    # build (DIR holds a folder per model, each checked by write_folder_atomic; DIR itself must be a folder)
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise KcompileError(f"{args.output} is a file, not a folder: give -o a folder for the build")
    level = 1 if args.opt_level is None else args.opt_level
    for name in names:
        start = time.perf_counter()
        if args.report:
            print(f"{name}: passes at -O{level} (nodes before -> after)")
        compiled = compile_source(source, args.file, name, opt_level=level,
                                  report=_print_pass if args.report else None)
        if args.emit == "ir":
            print(compiled.graph)
            continue
        clash = _package_name_clash(name, args.output)
        folder = write_build(compiled, args.output, seed=args.seed)
        if clash:
            print(f"kcompile: note: {clash}; load it with kcompile.load({str(folder)!r})", file=sys.stderr)
        if compiled.training_error:  # (the inference graph is built; fit would refuse, so say it now)
            print(f"kcompile: note: model {name} is built for inference, but cannot be trained yet: "
                  f"{compiled.training_error}", file=sys.stderr)
        if not args.quiet:
            n = sum(1 for _ in compiled.graph.nodes())
            print(f"built {name} -> {folder}/ ({n} IR ops, -O{level}, {time.perf_counter() - start:.2f} s)")
    return 0


def _package_name_clash(name: str, out_dir) -> str | None:
    """Why a build folder ``out_dir/name`` cannot be imported as its package (README: ``import
    NAME``): not a Python name, or another module of that name (not this build, where out_dir is on
    sys.path)."""
    import importlib.util
    import keyword
    from pathlib import Path
    if not name.isidentifier() or keyword.iskeyword(name):
        return f"{name} is not a Python name, so `import {name}` cannot import the build folder"
    spec = importlib.util.find_spec(name)
    here = (Path(out_dir) / name).resolve()
    if spec is not None and not (spec.origin and Path(spec.origin).resolve().parent == here):
        return f"a package {name} would hide the installed module {name}, so `import {name}` is ambiguous"
    return None


def _print_pass(pass_name, before, after, changed):
    change = "no change" if not changed else f"{before} -> {after} ({after - before:+d})" if before != after \
        else f"{before} nodes, rewritten"
    print(f"  {pass_name:<44} {change}")


def _train(args, source) -> int:
    from pathlib import Path

    from . import load
    from .driver import compile_source
    from .errors import KcompileError
    from .runtime.model import Model

    compiled = compile_source(source, args.file, args.model)
    name = compiled.graph.name
    out = Path(args.output or Path("checkpoints") / name)
    from .driver import check_replaceable, old_folder
    check_replaceable(out)  # (before training, not after it)
    _check_writable(out)
    # (.NAME.old: a save stopped between its two renames left the checkpoint there; load reads it)
    if args.resume and ((out / "manifest.json").exists() or (old_folder(out) / "manifest.json").exists()):
        model = load(out)
        _check_resumable(model, compiled, out, args.file)
        print(f"resuming {name} from {out}/ at epoch {model.epochs_done}")
        if args.seed is not None and args.seed != model.seed:  # (the checkpoint's goes on: its shuffles, dropout)
            print(f"note: --seed {args.seed} is not used: the checkpoint goes on with its seed, {model.seed}")
    else:
        model = Model.from_compiled(compiled, seed=args.seed or 0)
    if not model.trainable:
        raise KcompileError(f"model {name} has no train section" if not model.manifest.get("training_error")
                            else f"model {name} cannot be trained yet: {model.manifest['training_error']}")
    from .runtime.checkpoint import read_npz
    data = read_npz(Path(args.data))
    inputs = [s.name for s in model.inputs]
    targets = [t["name"] for t in model.manifest["training"]["targets"]]

    def pick(names, fallback, suffix=""):
        if all(n + suffix in data for n in names):
            return {n: data[n + suffix] for n in names}
        if len(names) == 1 and fallback + suffix.replace("_test", "") in data and not suffix:
            return {names[0]: data[fallback]}
        if len(names) == 1 and suffix and f"{fallback}_test" in data:
            return {names[0]: data[f"{fallback}_test"]}
        return None

    x, y = pick(inputs, "x"), pick(targets, "y")
    if x is None or y is None:
        either = " (or x and y)" if len(inputs) == len(targets) == 1 else ""  # (x and y: one input, one target)
        raise KcompileError(f"{args.data} needs arrays {inputs + targets}{either}; it has {sorted(data)}")
    if model.epochs_done >= args.epochs:
        print(f"note: {out}/ has trained {model.epochs_done} epochs already; --epochs {args.epochs} trains none "
              f"(--epochs is the total: give more than {model.epochs_done})")
    try:  # (wrong shapes, dtypes, lengths or labels: said before the first step, test arrays too)
        y = {k: _encode_labels(model, k, v) for k, v in y.items()}
        xt, yt = pick(inputs, "x", "_test"), pick(targets, "y", "_test")
        test = xt is not None and yt is not None
        if (xt is None) != (yt is None):  # (half of a test set: said, not silently skipped)
            print(f"note: {args.data} has test {'inputs' if yt is None else 'targets'} without test "
                  f"{'targets' if yt is None else 'inputs'}: no test evaluation")
        if test:
            yt = {k: _encode_labels(model, k, v) for k, v in yt.items()}
            model._check_xy(xt, yt, "the test arrays")
        model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, validation_split=args.validation_split,
                  verbose=args.verbose, initial_epoch=model.epochs_done,
                  shuffle=not model.stateful)  # (stateful layers read the sequences in order)
        if test:
            logs = model.evaluate(xt, yt, verbose=0, return_dict=True)
            print("test: " + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
    except ValueError as e:  # (ShapeMismatch is one)
        raise KcompileError(f"{args.data}: {e}") from None
    except RuntimeError as e:  # (a graph the provider has no kernels for: float64 convolutions on the CPU)
        if "cannot run its" not in str(e):
            raise
        raise KcompileError(str(e)) from None
    model.save(out)
    print(f"saved {out}/")
    stopped = model.nonfinite
    if stopped is not None:  # (not a success: the data or the learning rate needs a look)
        print(f"kcompile: error: the loss became {stopped.value} at epoch {stopped.epoch + 1}, step {stopped.step + 1}; "
              f"{out}/ holds the weights of the last finite step", file=sys.stderr)
        return 1
    return 0


def _check_writable(out):
    """Refuse, before training, a checkpoint folder that could not be written at its end: the save
    makes its new folder beside ``out`` (in the nearest folder that exists above it)."""
    import tempfile
    from pathlib import Path

    from .errors import KcompileError
    parent = Path(out).absolute().parent
    while not parent.exists():
        parent = parent.parent
    try:
        Path(tempfile.mkdtemp(dir=parent, prefix=".kcompile-check.")).rmdir()
    except OSError as e:
        raise KcompileError(f"cannot write the checkpoint {out}: {parent} is not writable ({e.strerror})") from None


def _check_resumable(model, compiled, out, file):
    """--resume continues the checkpoint of this model, whose weights must be the source's (names,
    shapes, dtypes). A source changed otherwise (a comment, the train section) resumes with a
    note: the checkpoint's own graphs and train section go on."""
    import hashlib

    from .errors import KcompileError
    afresh = f"run without --resume to start afresh (replacing {out}), or give -o another folder"
    if model.name != compiled.graph.name:
        raise KcompileError(f"{out} holds a checkpoint of model {model.name}, not {compiled.graph.name}; {afresh}")
    from .runtime.model import _renamed_since
    now = {p.name: (list(p.type.shape), p.type.dtype) for p in compiled.graph.params.values()}
    params = model.manifest["parameters"]  # (under the names they have now: DepthwiseConv2D's kernel was renamed)
    saved = dict(zip(_renamed_since([p["name"] for p in params], list(now)),
                     ((list(p["shape"]), p["dtype"]) for p in params)))
    if saved != now:
        differ = sorted(n for n in set(saved) | set(now) if saved.get(n) != now.get(n))
        raise KcompileError(f"{out}'s weights do not fit {file}'s model {compiled.graph.name} any more (the source "
                            f"changed since: {', '.join(differ[:4])}{', ...' if len(differ) > 4 else ''}); {afresh}")
    if (model.manifest.get("source") or {}).get("sha256") != hashlib.sha256(compiled.source.encode()).hexdigest():
        print(f"note: {file} changed since {out} was saved; --resume goes on with the checkpoint's model and "
              f"train section as they were (start afresh to train the changed one)")


def _encode_labels(model, target, y):
    """Integer labels for a target that expects one-hot rows are one-hot encoded (labels as [n]
    or [n, 1], as cifar10.load_data gives them)."""
    import numpy as np

    from .utils import to_categorical
    spec = next(t for t in model.manifest["training"]["targets"] if t["name"] == target)
    y = np.asarray(y)
    if y.dtype.kind in "iu" and len(spec["shape"]) == 2 and y.ndim == 2 and y.shape[1] == 1 and spec["shape"][-1] > 1:
        y = y[:, 0]
    if y.dtype.kind in "iu" and len(spec["shape"]) == y.ndim + 1 and spec["shape"][-1] > 1:
        return to_categorical(y, spec["shape"][-1])
    return y


if __name__ == "__main__":
    sys.exit(main())
