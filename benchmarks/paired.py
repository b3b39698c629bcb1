"""Paired throughput: the frameworks take turns in short bursts, so that each ratio compares
two bursts run seconds apart. CPU:

    .venv/bin/python benchmarks/paired.py [--cycles 15] [--workloads mlp_train,cnn_predict]
                                          [--frameworks kcompile,torch,torch_compile,keras_jax]
                                          [--batch 32]

This machine's speed changes from minute to minute: its two virtual cores are sometimes
close together and sometimes far apart (`cores.py --pingpong`), and two-thread work slows
down when they are far (the README's Benchmarks). `run.py` measures each framework in its
own process, one after the other, so one framework can meet a slow minute and the next a
fast one. Here every framework's worker of one workload is alive at once (set up and
warmed up one at a time), and the parent lets them run in turn, one at a time: a burst
of about one second each (a training fit over about one second of batches; 5 predicts of
1,024 samples and 200 of one sample), a pause of 0.3 s before each (spinning thread
pools go quiet), the order rotated every cycle. A cycle's ratio is kcompile's burst over
the peer's burst of the same cycle; the verdict is the median cycle ratio against the
best peer (by median burst).

Workloads, as in run.py (batch 128, MNIST-shaped synthetic data, examples/mnist_*.kdl):
mlp_train, cnn_train (samples/s), mlp_predict, cnn_predict (samples/s at batch 1024 and
latency of one sample); and on request lstm_train (examples/sentiment.kdl, random word
ids). --batch trains at another batch size (Keras's fit defaults to 32): the targets are
set at 128, so other sizes get their ratios without a verdict. Each worker is `paired.py
--serve FRAMEWORK WORKLOAD BATCH`: it prints a ready line, then one line per "go" it reads.
Writes every burst to --json (default benchmarks/paired.json).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402  (the adapters, data and targets of run.py)

WORKLOADS = ["mlp_train", "cnn_train", "mlp_predict", "cnn_predict", "lstm_train"]
DEFAULT = WORKLOADS[:4]  # (the targets'; lstm_train on request)
READY, BURST = "@@READY ", "@@BURST "
BURST_S = 1.0
PAUSE_S = 0.3
# (workload, key of a burst, higher is better, target ratio against the best peer)
TARGETS = [("mlp_train", "samples_per_s", True, 1.3), ("cnn_train", "samples_per_s", True, 1.5),
           ("mlp_predict", "batch1024_samples_per_s", True, 1.0),
           ("cnn_predict", "batch1024_samples_per_s", True, 1.2),
           ("mlp_predict", "batch1_latency_us", False, 0.5), ("cnn_predict", "batch1_latency_us", False, 0.5),
           ("lstm_train", "samples_per_s", True, None)]


# ------------------------------------------ worker ------------------------------------------
def _trainer(a, model):
    """A burst: fit() over about BURST_S seconds of batches, sized once after warm-up."""
    x, y = bench.training_data(model, a.layout)
    a.build(model)
    fit = a.fitter(x, y)
    warm = 10 * bench.BATCH
    rate = warm / bench.warm_up(lambda: fit(warm, 1))
    n = max(warm, min(len(x), int(rate * BURST_S)) // bench.BATCH * bench.BATCH)
    fit(n, 1)

    def burst():
        start = time.perf_counter()
        fit(n, 1)
        return {"samples_per_s": n / (time.perf_counter() - start)}
    return burst


def _predictor(fw, a, model):
    """A burst: 5 predicts of 1,024 samples and 200 of one, for each of the framework's
    predict paths (kcompile: its public predict(); a peer: each path, the one of the best
    median over the cycles counts: _best_path)."""
    import numpy as np
    x, _, _ = bench.synthetic(1024, a.layout)
    x1 = np.ascontiguousarray(x[:1])
    a.build(model)
    paths = a.predictors()
    if fw == "kcompile":
        paths = {"predict": paths["predict"]}
    for fn in paths.values():
        bench.warm_up(lambda: fn(x))
        bench.warm_up(lambda: fn(x1), min_calls=20, max_calls=60)

    def burst():
        out = {}
        for name, fn in paths.items():
            big = statistics.median(bench.call_times(lambda: fn(x), 5))
            one = statistics.median(bench.call_times(lambda: fn(x1), 200))
            out[name] = {"batch1024_samples_per_s": len(x) / big, "batch1_latency_us": one * 1e6}
        return {"batch1024_samples_per_s": max(v["batch1024_samples_per_s"] for v in out.values()),
                "batch1_latency_us": min(v["batch1_latency_us"] for v in out.values()), "paths": out}
    return burst


def serve(fw, workload, batch=bench.BATCH):
    bench.BATCH = int(batch)  # (read by the adapters' fit loops and by _trainer)
    a = bench.ADAPTERS[fw]()
    model = workload.split("_")[0]
    burst = _trainer(a, model) if workload.endswith("train") else _predictor(fw, a, model)
    print(READY + json.dumps({"import_s": a.import_s, "batch": bench.BATCH}), flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        print(BURST + json.dumps(burst()), flush=True)


# ------------------------------------------ parent ------------------------------------------
class Worker:
    def __init__(self, fw, workload, scratch, batch=bench.BATCH):
        env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
        if fw == "torch_compile":
            env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(scratch, "inductor")
        self.fw = fw
        self.log = open(os.path.join(scratch, f"{fw}_{workload}.log"), "w+")
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", fw, workload, str(batch)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env, cwd=str(bench.ROOT))
        try:
            self.ready = self._read(READY)
        except RuntimeError:
            self.log.close()
            raise

    def _read(self, mark):
        for line in self.proc.stdout:
            if line.startswith(mark):
                return json.loads(line[len(mark):])
        self.log.seek(0)
        tail = " | ".join(self.log.read().strip().splitlines()[-3:])
        raise RuntimeError(f"{self.fw} worker ended (exit {self.proc.wait()}): {tail}"[:500])

    def burst(self):
        try:
            self.proc.stdin.write("go\n")
            self.proc.stdin.flush()
        except OSError:  # it has ended: _read says how
            pass
        return self._read(BURST)

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        self.log.close()


def measure(workload, frameworks, cycles, scratch, say=print, batch=bench.BATCH):
    """{framework: [burst, ...]} of one workload (training at ``batch``), the frameworks in turn,
    cycle by cycle."""
    workers, bursts = {}, {}
    try:
        for fw in frameworks:  # set up and warmed up one at a time: compiles never overlap
            start = time.perf_counter()
            try:
                workers[fw] = Worker(fw, workload, scratch, batch)
                say(f"  {fw:<14} ready in {time.perf_counter() - start:.1f} s")
            except RuntimeError as e:
                say(f"  {fw:<14} FAILED: {e}")
        names = list(workers)
        for c in range(cycles):
            if not names:
                break
            for fw in names[c % len(names):] + names[:c % len(names)]:
                time.sleep(PAUSE_S)
                try:
                    bursts.setdefault(fw, []).append(workers[fw].burst())
                except RuntimeError as e:  # its bursts so far still pair with the others' first cycles
                    say(f"  {fw:<14} FAILED in cycle {c + 1}: {e}")
                    names.remove(fw)
    finally:
        for w in workers.values():
            w.close()
    return bursts


def measure_all(workloads, frameworks, cycles, say=print, batch=bench.BATCH):
    """(the target rows, {workload: bursts}) of several workloads, one after the other."""
    rows, raw = [], {}
    with tempfile.TemporaryDirectory(prefix="kc_paired_") as scratch:
        for wl in workloads:
            say(f"{wl}:")
            raw[wl] = measure(wl, frameworks, cycles, scratch, say=say, batch=batch)
            rows += summarize(wl, raw[wl], batch)
    return rows, raw


def summarize(workload, bursts, batch=bench.BATCH):
    """For each target of the workload: each framework's median burst, the best peer's, and
    kcompile's cycle-by-cycle ratios against it. A training workload at a batch other than the
    targets' (run.py's BATCH) gets no verdict."""
    out = []
    for wl, key, higher, target in TARGETS:
        if wl != workload or "kcompile" not in bursts:
            continue
        if wl.endswith("_train") and batch != bench.BATCH:
            target = None
        values, paths = {}, {}
        for fw, runs in bursts.items():
            values[fw], paths[fw] = _best_path(runs, key, higher)
        medians = {fw: statistics.median(v) for fw, v in values.items()}
        peers = {fw: v for fw, v in medians.items() if fw != "kcompile"}
        row = {"workload": wl, "key": key, "target": target, "medians": medians,
               "paths": {fw: p for fw, p in paths.items() if p}}
        if peers:
            best = (max if higher else min)(peers, key=peers.get)
            ratios = [k / p for k, p in zip(values["kcompile"], values[best])]
            ratio = statistics.median(ratios)
            row.update(best_peer=best, cycle_ratios=ratios, ratio=ratio,
                       met=None if target is None else ratio >= target if higher else ratio <= target)
        out.append(row)
    return out


def _best_path(runs, key, higher):
    """A framework's bursts' values of ``key`` and the predict path they are of (None for one
    path): of several paths, the one of the best median over all bursts, not each burst's best,
    whose noise would favour a framework of more paths (one of three paths a few percent apart
    wins every burst by its luck)."""
    names = [name for name in runs[0].get("paths", {}) if all(name in b.get("paths", {}) for b in runs)]
    if len(names) < 2:
        return [b[key] for b in runs], None
    best = (max if higher else min)(names, key=lambda name: statistics.median(b["paths"][name][key] for b in runs))
    return [b["paths"][best][key] for b in runs], best


def machine_rate(frameworks, quick=True) -> dict:
    """The machine's attainable float32 matmul GFLOP/s now ({engine: best of a few 2048^3
    products}, run.py's matmul workload, each engine in a process of its own): numpy, the
    onnxruntime kcompile runs on, and torch where it is measured. The paired ratios compare
    bursts seconds apart; this says how fast the machine was while they ran."""
    from types import SimpleNamespace
    args = SimpleNamespace(mnist=bench.DEFAULT_MNIST, quick=quick, device="cpu")
    engines = ["numpy", "onnxruntime"] + [f for f in ("torch",) if f in frameworks]
    out = {}
    for engine in engines:
        result = bench.run_worker(engine, "matmul", args, timeout=120)
        if result.get("ok"):
            out[engine] = result["gflops"]
    return out


def rate_line(when: str, rates: dict) -> str:
    return f"matmul at the {when}: " + (", ".join(f"{e} {g:.0f}" for e, g in rates.items()) + " GFLOP/s"
                                        if rates else "not measured")


def report(rows, frameworks):
    lines = []
    head = f"{'workload':<34}" + "".join(f"{f:>14}" for f in frameworks) + f"{'kc/best peer':>14}  target"
    lines += [head, "-" * len(head)]
    for r in rows:
        label = f"{r['workload']} {'samples/s' if r['key'] != 'batch1_latency_us' else 'latency@1, us'}"
        cells = "".join(f"{r['medians'][fw]:>14,.0f}" if fw in r["medians"] else f"{'-':>14}" for fw in frameworks)
        if "ratio" in r:
            spread = sorted(r["cycle_ratios"])
            q1, q3 = spread[len(spread) // 4], spread[(3 * len(spread)) // 4]
            verdict = "no target" if r["target"] is None else \
                f"{'>=' if r['key'] != 'batch1_latency_us' else '<='} {r['target']}x: {'met' if r['met'] else 'NOT met'}"
            path = r.get("paths", {}).get(r["best_peer"])
            verdict += f" (cycles {q1:.2f}-{q3:.2f}x, vs {r['best_peer']}{f' {path}' if path else ''})"
            lines.append(f"{label:<34}{cells}{r['ratio']:>13.2f}x  {verdict}")
        else:
            lines.append(f"{label:<34}{cells}{'-':>14}  no peer")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=15, help="bursts per framework (default 15)")
    ap.add_argument("--workloads", default=",".join(DEFAULT),
                    help=f"subset of {','.join(WORKLOADS)} (default: {','.join(DEFAULT)})")
    ap.add_argument("--frameworks", default=",".join(bench.FRAMEWORKS),
                    help=f"subset of {','.join(bench.FRAMEWORKS)} (kcompile always runs)")
    ap.add_argument("--batch", type=int, default=bench.BATCH,
                    help=f"training batch size (default {bench.BATCH}, the targets'; others get no verdict)")
    ap.add_argument("--json", default=str(HERE / "paired.json"), help="where every burst goes")
    ap.add_argument("--serve", nargs=3, metavar=("FRAMEWORK", "WORKLOAD", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    workloads = [w for w in args.workloads.split(",") if w]
    wanted = {f for f in args.frameworks.split(",") if f} | {"kcompile"}
    bad = [w for w in workloads if w not in WORKLOADS] + [f for f in wanted if f not in bench.FRAMEWORKS]
    if bad:
        ap.error(f"unknown {bad}")
    if args.batch < 1:
        ap.error("--batch must be a positive integer")
    frameworks = [f for f in bench.FRAMEWORKS if f in wanted and bench.installed(f)]
    for f in sorted(wanted - set(frameworks)):
        print(f"{f}: not installed (pip install -e '.[bench]'); skipped")
    start = time.perf_counter()
    say = lambda s: print(f"[{time.perf_counter() - start:6.1f}s] {s}", flush=True)  # noqa: E731
    rates = {"start": machine_rate(frameworks)}
    say(rate_line("start", rates["start"]))
    rows, raw = measure_all(workloads, frameworks, args.cycles, say=say, batch=args.batch)
    rates["end"] = machine_rate(frameworks)
    print(f"\npaired bursts, {args.cycles} cycles, training batch {args.batch}, {os.cpu_count()} CPU cores, "
          f"total {time.perf_counter() - start:.0f} s; each framework's median burst, and kcompile's median "
          f"ratio to the best peer's burst of the same cycle (its quartiles after 'cycles')\n")
    print(report(rows, frameworks))
    print(f"\nthe machine's float32 {rate_line('start', rates['start'])}; {rate_line('end', rates['end'])}")
    Path(args.json).write_text(json.dumps({"cycles": args.cycles, "batch": args.batch, "matmul_gflops": rates,
                                           "rows": rows, "bursts": raw}, indent=1, default=float))
    print(f"\nevery burst: {args.json}")


if __name__ == "__main__":
    main()
