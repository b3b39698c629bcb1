"""Each core's speed, moment by moment: why kcompile's numbers change between runs. CPU, Linux:

    .venv/bin/python benchmarks/cores.py [--seconds 40] [--pingpong]

Twice a second, on each core in turn (the process pinned to it, a one-thread onnxruntime
session), it times ten Muls over two 784x512 float32 arrays (memory-bound, the kind of
element-wise work an optimizer update does) and one 128x784 by 784x512 matrix product
(compute-bound) and the same ten multiplications in numpy (in place, one buffer), then the
ten Muls on both cores (a two-thread session, as kcompile runs).
At the end, for each core: how often its element-wise time was more than 1.4x its best (a
slow moment), and the median slow / fast time of each kind of work.

On this 2-core machine each core has slow moments of its own, a second or several long:
the element-wise work then takes 1.8x as long and the matrix product 1.1x. A two-thread
op waits for its slower half. Frameworks whose steps are mostly matrix products, or that
fuse their element-wise work into one pass (XLA), slow down less than onnxruntime, which
runs each element-wise op as its own pass.

--pingpong instead builds benchmarks/pingpong.c (a C compiler is needed) and prints, four
times a second, the round trip of a cache line between cores 0 and 1, then how often the
cores were close (a round trip under 200 ns: a shared cache) or far apart. Here they were
close (54-75 ns) or far (330-420 ns) for minutes at a time; when far, every two-thread
onnxruntime op pays for its halves meeting across the machine, which is why kcompile splits
convolutional training steps and large predicts into one-core parts (README, Benchmarks).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import call_times  # noqa: E402  (run.py's timing loop)

SLOW = 1.4


def session(nodes, inputs, threads):
    info = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs]
    graph = helper.make_graph(nodes, "probe", info, [helper.make_tensor_value_info(nodes[-1].output[0],
                                                                                  TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.force_spinning_stop", "1")  # no spinning between probes
    s = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    binding = s.io_binding()
    rng = np.random.default_rng(0)
    for name, shape in inputs:
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(rng.random(shape, dtype=np.float32)))
    binding.bind_output(nodes[-1].output[0])
    return lambda: s.run_with_iobinding(binding)


def median_us(run, calls):
    return statistics.median(call_times(run, calls)) * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--pingpong", action="store_true", help="time the round trip between cores 0 and 1 instead")
    args = ap.parse_args()
    if args.pingpong:
        return pingpong(args.seconds)
    cores = sorted(os.sched_getaffinity(0))
    muls = [helper.make_node("Mul", ["a", "b"], ["t0"])] + [
        helper.make_node("Mul", [f"t{i}", "b"], [f"t{i + 1}"]) for i in range(9)]
    arrays = [("a", [512, 784]), ("b", [512, 784])]
    product = [helper.make_node("Gemm", ["w", "x"], ["y"], transB=1)]
    one = {"elementwise": session(muls, arrays, 1),
           "matmul": session(product, [("w", [512, 784]), ("x", [128, 784])], 1)}
    a, b, out = (np.random.default_rng(i).random((512, 784), dtype=np.float32) for i in range(3))

    def numpy_muls():
        np.multiply(a, b, out=out)
        for _ in range(9):
            np.multiply(out, b, out=out)
    one["numpy"] = numpy_muls
    both = session(muls, arrays, len(cores))
    samples = {c: {"elementwise": [], "matmul": [], "numpy": []} for c in cores}
    end = time.time() + args.seconds
    while time.time() < end:
        cells = []
        for c in cores:
            os.sched_setaffinity(0, {c})
            e, m, n = median_us(one["elementwise"], 30), median_us(one["matmul"], 10), median_us(one["numpy"], 30)
            samples[c]["elementwise"].append(e)
            samples[c]["matmul"].append(m)
            samples[c]["numpy"].append(n)
            cells.append(f"core {c}: element-wise {e:5.0f} us, product {m:5.0f}, numpy's {n:5.0f}")
        os.sched_setaffinity(0, set(cores))
        cells.append(f"both cores: element-wise {median_us(both, 50):6.0f} us")
        print(time.strftime("%H:%M:%S"), " | ".join(cells), flush=True)
        time.sleep(0.5)
    print()
    for c in cores:
        e, m, n = samples[c]["elementwise"], samples[c]["matmul"], samples[c]["numpy"]
        slow = [i for i, v in enumerate(e) if v > SLOW * min(e)]
        fast = [i for i in range(len(e)) if i not in slow]
        line = f"core {c}: slow in {len(slow)} of {len(e)} samples"
        if slow and fast:
            ratio = lambda xs: statistics.median(xs[i] for i in slow) / statistics.median(xs[i] for i in fast)  # noqa: E731
            line += f"; slow / fast: element-wise {ratio(e):.2f}x, product {ratio(m):.2f}x, numpy's {ratio(n):.2f}x"
        print(line)


FAR_NS = 200  # a round trip above this: the two cores share no cache


def pingpong(seconds: float) -> int:
    import shutil
    import subprocess
    import tempfile
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None or len(os.sched_getaffinity(0)) < 2:
        print("--pingpong needs a C compiler and two cores")
        return 1
    with tempfile.TemporaryDirectory() as folder:
        binary = os.path.join(folder, "pingpong")
        subprocess.run([compiler, "-O2", "-pthread", os.path.join(os.path.dirname(__file__), "pingpong.c"),
                        "-o", binary], check=True)
        out = subprocess.run([binary, str(max(1, round(seconds)))], capture_output=True, text=True, check=True)
    trips = [float(v) for v in out.stdout.split()]
    for i, ns in enumerate(trips):
        print(f"{i / 4:6.2f} s  round trip {ns:6.1f} ns  {'far' if ns > FAR_NS else 'close'}")
    close, far = [v for v in trips if v <= FAR_NS], [v for v in trips if v > FAR_NS]
    line = f"cores 0 and 1: close in {len(close)} of {len(trips)} samples, far in {len(far)}"
    for name, values in (("close", close), ("far", far)):
        if values:
            line += f"; {name} median {statistics.median(values):.0f} ns"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
