"""kcompile against PyTorch, torch.compile and Keras 3 (JAX backend) on CPU, one command.

    .venv/bin/python benchmarks/run.py [--quick] [--rounds 3] [--json out.json] [--device cuda]
                                       [--frameworks kcompile,torch,torch_compile,keras_jax]

Peers are optional (`pip install -e '.[bench]'`); a framework that is not importable is
reported as "not installed" and the rest still runs. Every framework x workload runs in
its own subprocess (`run.py --worker FRAMEWORK WORKLOAD` prints one JSON line), one at a
time, so import time and peak memory belong to one framework and the frameworks never
compete for the cores.

Workloads (MNIST-shaped float32 images [28, 28, 1], one-hot targets, batch 128):
  mlp_train       examples/mnist_mlp.kdl: 784-512 relu-10 softmax, RMSprop(0.001), categorical
                  crossentropy; training samples/s on 60,000 synthetic samples
  mlp_train_real  the same on the 10,000 real MNIST t10k images (/work/shared/datasets/mnist
                  or --mnist), when present
  mlp_train_ftz   (torch only) mlp_train with torch.set_flush_denormal(True)
  cnn_train       examples/mnist_cnn.kdl (Keras's MNIST example), Adam(0.001); training samples/s
  lstm_train      examples/sentiment.kdl (Keras's IMDB LSTM example): 100 word ids of 20,000 ->
                  Embedding(128) -> LSTM(64) -> Dropout -> Dense(1, sigmoid), binary crossentropy,
                  Adam(0.001); training samples/s on 20,480 random sequences (no target: kcompile
                  against the peers on a recurrence, a Scan in ONNX)
  mlp_predict,    inference samples/s at batch 1024 and median latency of one sample
  cnn_predict     (batch 1) over >= 200 calls
  cold_mlp,       seconds from process start (interpreter + imports included) to the end of
  cold_cnn        the first training step: build/compile the model + optimizer + one step
  cnn_rss         peak resident memory (ru_maxrss) over one epoch of the CNN on 60,000
                  synthetic samples (10,000 with --quick)
  matmul          (numpy, onnxruntime, torch) attainable float32 GFLOP/s: 2048x2048 matmul, best
                  of several; the machine limit is the best of the three (numpy's OpenBLAS obeys
                  OPENBLAS_CORETYPE, which may hold it to AVX2 on an AVX-512 CPU)
  real_data       (kcompile only) the CNN trained on the first 8,000 real t10k images, accuracy
                  on the last 2,000, seconds per epoch
  profile         (kcompile only) onnxruntime's profiler on the training step as the runtime
                  runs it (one of its one-core parts, where it splits the batch: the CNN): time
                  per op type, and kernels vs onnxruntime vs Python overhead per step

Each timed number is the median of several repetitions after warm-up (fewer with --quick).
Achieved GFLOP/s = samples/s x analytic training FLOPs per sample (see train_flops_per_sample):
the model's work as the peers compute it, the same count for every framework. kcompile's
crop-unread-borders pass skips the CNN's unread borders (about 16% of its convolution work),
so its effective rate can exceed the machine's matmul limit.
The raw numbers go to --json (default benchmarks/results.json).
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

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DEFAULT_MNIST = ROOT.parent / "shared" / "datasets" / "mnist"
FRAMEWORKS = ["kcompile", "torch", "torch_compile", "keras_jax"]
PEERS = FRAMEWORKS[1:]
MARK = "@@RESULT "
DISTURBED = 10.0  # % of the CPU taken by other processes beyond which a worker's numbers are suspect
BATCH = 128
SOURCES = {"mlp": "mnist_mlp.kdl", "cnn": "mnist_cnn.kdl", "lstm": "sentiment.kdl"}  # (in examples/)


# ----------------------------------------------------------------------------------------
# FLOPs, counted analytically per sample, multiply-adds (MACs) x 2. A dense layer
# n_in -> n_out is n_in*n_out MACs; a "valid" 3x3 convolution c_in -> c_out channels with an
# h x w output is h*w*c_out*(3*3*c_in) MACs. Biases, activations, pooling, softmax, the loss
# and the optimizer update are left out (together < 1%).
# Training = forward + gradient of the weights (as many MACs as the forward) + gradient of
# the layer's input (as many again), which no framework computes for the first layer, whose
# input is the data: "3x forward" minus one forward of the first layer. (Plain 3x forward
# would overstate the MLP by 49%: its first layer holds 99% of its MACs.)
#   MLP: fwd 406,528 MACs = 0.813 MFLOP; training 818,176 MACs = 1.636 MFLOP per sample
#   CNN: fwd 2,631,040 MACs = 5.262 MFLOP; training 7,698,432 MACs = 15.397 MFLOP per sample
# ----------------------------------------------------------------------------------------
def layer_macs(model):
    if model == "mlp":
        return [784 * 512, 512 * 10]
    if model == "lstm":  # the Embedding (a lookup: none), the LSTM's 100 steps of 4 gates, the Dense
        return [0, 100 * (128 + 64) * 4 * 64, 64]
    return [26 * 26 * 32 * (3 * 3 * 1),      # Conv2D 32: 28x28x1 -> 26x26x32
            11 * 11 * 64 * (3 * 3 * 32),     # Conv2D 64: 13x13x32 (after pooling) -> 11x11x64
            (5 * 5 * 64) * 128,              # Dense 128: 5x5x64 (after pooling) = 1600 -> 128
            128 * 10]                        # Dense 10


def forward_flops_per_sample(model):
    return 2 * sum(layer_macs(model))


def train_flops_per_sample(model):
    macs = layer_macs(model)
    return 2 * (3 * sum(macs) - macs[0])


# ----------------------------------------------------------------------------------------
# Worker side: everything below runs in a fresh process for one framework and one workload.
# ----------------------------------------------------------------------------------------
def rss_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def current_rss_mb():
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def since_process_start():
    """Seconds since this process was launched, interpreter start-up and imports included: from
    the parent's clock reading just before it started the process when given (KC_BENCH_T0),
    else from /proc (clock ticks). psutil's create_time() is not used: it rests on the boot
    time in whole seconds, so it can be off by up to a second."""
    t0 = os.environ.get("KC_BENCH_T0")
    if t0:
        return time.time() - float(t0)
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def training_data(model, layout):
    """(x, y) of a training workload: random MNIST-shaped images or word ids, with targets."""
    if model == "lstm":
        import numpy as np
        rng = np.random.default_rng(0)
        n = 20_480
        return rng.integers(1, 20_000, (n, 100)), rng.integers(0, 2, (n, 1)).astype(np.float32)
    x, y, _ = synthetic(60_000 if model == "mlp" else 20_480, layout)
    return x, y


def synthetic(n, layout="nhwc", seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    shape = (n, 28, 28, 1) if layout == "nhwc" else (n, 1, 28, 28)
    x = rng.random(shape, dtype=np.float32)
    labels = rng.integers(0, 10, n)
    y = np.zeros((n, 10), np.float32)
    y[np.arange(n), labels] = 1.0
    return x, y, labels


def real_mnist(path, layout="nhwc"):
    """The 10,000 t10k images as float32 in [0, 1], one-hot targets and labels."""
    import numpy as np
    sys.path.insert(0, str(ROOT))
    from kcompile.datasets import mnist
    (_, _), (x, labels) = mnist.load_data(path=path)
    x = x.astype(np.float32) / 255.0
    x = x[..., None] if layout == "nhwc" else x[:, None]
    y = np.zeros((len(labels), 10), np.float32)
    y[np.arange(len(labels)), labels] = 1.0
    return np.ascontiguousarray(x), y, labels.astype(np.int64)


def warm_up(fn, min_calls=2, max_calls=12, max_s=180.0):
    """Call fn until it stops getting faster (sessions, tracing, JIT and background compiles
    done: a call no more than 10% faster than the one before), at least min_calls times.
    Returns the duration of the last call."""
    begin, last = time.perf_counter(), None
    for i in range(max_calls):
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
        if i + 1 >= min_calls and last is not None and took > 0.9 * last:
            break
        if time.perf_counter() - begin > max_s:
            break
        last = took
    return took


def timed_training(fit, pool_n, target_s, reps):
    """fit(n_samples, epochs) trains on the first n_samples of the pool. Warm up, size one
    repetition to about target_s seconds, and return the median samples/s over reps."""
    warm = 10 * BATCH
    rate = warm / warm_up(lambda: fit(warm, 1))
    want = max(10 * BATCH, int(rate * target_s) // BATCH * BATCH)
    n = min(want, pool_n // BATCH * BATCH)
    epochs = max(1, round(want / n))
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        fit(n, epochs)
        rates.append(n * epochs / (time.perf_counter() - start))
    return {"samples_per_s": statistics.median(rates), "reps": [round(r, 1) for r in rates],
            "samples_per_rep": n * epochs}


def call_times(fn, calls):
    """Seconds of each of ``calls`` calls of fn()."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def timed_predict(predict, x1024, x1, reps, calls):
    """predict(x) runs inference on x. Median samples/s at batch 1024 and median latency at batch 1."""
    warm_up(lambda: predict(x1024))
    out = {"batch1024_samples_per_s": len(x1024) / statistics.median(call_times(lambda: predict(x1024), reps))}
    warm_up(lambda: predict(x1), min_calls=20, max_calls=60)
    lat = call_times(lambda: predict(x1), calls)
    out["batch1_latency_us"] = statistics.median(lat) * 1e6
    out["batch1_latency_p90_us"] = sorted(lat)[int(0.9 * len(lat))] * 1e6
    out["batch1_calls"] = calls
    return out


# ---------------------------------- framework adapters ----------------------------------
class KerasLikeAdapter:
    """Training for frameworks with Keras's train_on_batch and fit (kcompile and Keras)."""
    def first_step(self, x, y):
        self.m.train_on_batch(x, y)

    def fitter(self, x, y):
        m = self.m

        def fit(n, epochs):
            m.fit(x[:n], y[:n], epochs=epochs, batch_size=BATCH, verbose=0)
        return fit


class KcompileAdapter(KerasLikeAdapter):
    layout = "nhwc"

    def __init__(self):
        t = time.perf_counter()
        sys.path.insert(0, str(ROOT))
        import kcompile
        # kcompile imports its compiler and onnxruntime lazily, on the first compile; import
        # them here so that import_s compares like with like (the cold-start total is the same)
        import importlib
        for name in ("kcompile.driver", "kcompile.runtime.model", "onnxruntime"):
            try:
                importlib.import_module(name)
            except ImportError:
                pass
        self.kcompile = kcompile
        self.import_s = time.perf_counter() - t

    device = "cpu"  # (--device)

    def build(self, model):
        self.m = self.kcompile.compile(EXAMPLES / SOURCES[model], seed=0, device=self.device)
        return self

    def predictors(self):
        m = self.m
        out = {"predict": lambda x: m.predict(x, batch_size=len(x))}
        try:  # private: the inference session itself, without predict()'s checks and slicing
            session = m._inference_session()
            name = session.get_inputs()[0].name
            out["raw_session"] = lambda x: session.run(None, {name: x})
        except Exception:
            pass
        return out


class TorchAdapter:
    layout = "nchw"
    compiled = False

    def __init__(self):
        t = time.perf_counter()
        import torch
        self.import_s = time.perf_counter() - t
        self.torch = torch
        torch.set_num_threads(os.cpu_count() or 1)  # the default on this machine; set explicitly
        torch.manual_seed(0)

    def build(self, model):
        torch, nn = self.torch, self.torch.nn
        if model == "mlp":
            net = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10))
            # Keras's RMSprop: rho=0.9 (torch's alpha), epsilon=1e-7 added outside the sqrt, as in torch.
            opt = torch.optim.RMSprop(net.parameters(), lr=0.001, alpha=0.9, eps=1e-7)
        elif model == "lstm":  # examples/sentiment.kdl
            class Sentiment(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.embed, self.lstm = nn.Embedding(20_000, 128), nn.LSTM(128, 64, batch_first=True)
                    self.drop, self.out = nn.Dropout(0.2), nn.Linear(64, 1)

                def forward(self, ids):
                    return self.out(self.drop(self.lstm(self.embed(ids))[0][:, -1]))
            net = Sentiment()
            opt = torch.optim.Adam(net.parameters(), lr=0.001, eps=1e-7)
        else:  # examples/mnist_cnn.kdl, channels-first (torch's native layout)
            net = nn.Sequential(
                nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(5 * 5 * 64, 128), nn.ReLU(), nn.Dropout(0.5),
                nn.Linear(128, 10))
            opt = torch.optim.Adam(net.parameters(), lr=0.001, eps=1e-7)  # Keras's epsilon
        self.net, self.opt = net, opt
        self.call = torch.compile(net) if self.compiled else net
        # softmax + categorical crossentropy, or sigmoid + binary crossentropy, computed from the
        # logits (torch's idiom; the same value as Keras's loss on the probabilities, without its clipping)
        F = torch.nn.functional
        self.loss = F.binary_cross_entropy_with_logits if model == "lstm" else F.cross_entropy
        return self

    def _step(self, xb, yb):
        self.opt.zero_grad(set_to_none=True)
        logits = self.call(xb)
        loss = self.loss(logits, yb)
        loss.backward()
        self.opt.step()
        return loss

    def first_step(self, x, y):
        self.net.train()
        self._step(self.torch.from_numpy(x), self.torch.from_numpy(y)).item()

    def fitter(self, x, y):
        torch = self.torch
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        gen = torch.Generator().manual_seed(0)

        def fit(n, epochs):
            self.net.train()
            for _ in range(epochs):
                order = torch.randperm(n, generator=gen)  # shuffled each epoch, like fit()
                for i in range(0, n, BATCH):
                    idx = order[i:i + BATCH]
                    loss = self._step(tx[idx], ty[idx])
                loss.item()
        return fit

    def predictors(self):
        torch = self.torch
        self.net.eval()

        def predict(x):
            with torch.inference_mode():
                return torch.softmax(self.call(torch.from_numpy(x)), dim=1).numpy()
        return {"predict": predict}


class TorchCompileAdapter(TorchAdapter):
    compiled = True


class KerasJaxAdapter(KerasLikeAdapter):
    layout = "nhwc"

    def __init__(self):
        os.environ["KERAS_BACKEND"] = "jax"
        t = time.perf_counter()
        import keras
        self.import_s = time.perf_counter() - t
        self.keras = keras
        keras.utils.set_random_seed(0)

    def build(self, model):
        keras, L = self.keras, self.keras.layers
        if model == "mlp":
            net = keras.Sequential([keras.Input((28, 28, 1)), L.Flatten(), L.Dense(512, activation="relu"),
                                    L.Dense(10, activation="softmax")])
            opt = keras.optimizers.RMSprop(learning_rate=0.001)
        elif model == "lstm":  # examples/sentiment.kdl
            net = keras.Sequential([keras.Input((100,), dtype="int64"), L.Embedding(20_000, 128), L.LSTM(64),
                                    L.Dropout(0.2), L.Dense(1, activation="sigmoid")])
            net.compile(optimizer=keras.optimizers.Adam(learning_rate=0.001), loss="binary_crossentropy",
                        metrics=["accuracy"])
            self.m = net
            return self
        else:  # examples/mnist_cnn.kdl
            net = keras.Sequential([
                keras.Input((28, 28, 1)),
                L.Conv2D(32, (3, 3), activation="relu"), L.MaxPooling2D((2, 2)),
                L.Conv2D(64, (3, 3), activation="relu"), L.MaxPooling2D((2, 2)),
                L.Flatten(), L.Dense(128, activation="relu"), L.Dropout(0.5),
                L.Dense(10, activation="softmax")])
            opt = keras.optimizers.Adam(learning_rate=0.001)
        net.compile(optimizer=opt, loss="categorical_crossentropy", metrics=["accuracy"])  # jit_compile default
        self.m = net
        return self

    def predictors(self):
        import numpy as np
        m = self.m
        # (the eager call returns JAX's asynchronous array: timed bare, it timed the dispatch and
        # not the work, up to 132k samples/s for the MLP where the result is ready at 48-56k)
        return {"predict": lambda x: m.predict(x, batch_size=len(x), verbose=0),
                "predict_on_batch": lambda x: m.predict_on_batch(x),
                "call": lambda x: np.asarray(m(x, training=False))}


ADAPTERS = {"kcompile": KcompileAdapter, "torch": TorchAdapter, "torch_compile": TorchCompileAdapter,
            "keras_jax": KerasJaxAdapter}
IMPORT_NAMES = {"kcompile": ["onnxruntime"], "torch": ["torch"], "torch_compile": ["torch"],
                "keras_jax": ["jax", "keras"]}


# ------------------------------------- workloads -----------------------------------------
def w_train(fw, model, args, data="synthetic", ftz=False):
    a = ADAPTERS[fw]()
    if ftz:
        if not a.torch.set_flush_denormal(True):
            raise RuntimeError("torch.set_flush_denormal(True) is not supported on this CPU")
    if data == "real":
        x, y, _ = real_mnist(args.mnist, a.layout)
    else:
        x, y = training_data(model, a.layout)
    a.build(model)
    target, reps = (0.35, 3) if args.quick else (0.7, 5)
    if model != "mlp":
        target = target * 1.5
    out = timed_training(a.fitter(x, y), len(x), target, reps)
    out.update(data=data if data == "synthetic" else f"real MNIST t10k ({len(x)} images)", import_s=a.import_s,
               train_flops_per_sample=train_flops_per_sample(model))
    out["gflops"] = out["samples_per_s"] * out["train_flops_per_sample"] / 1e9
    return out


def w_predict(fw, model, args):
    import numpy as np
    a = ADAPTERS[fw]()
    x, _, _ = synthetic(1024, a.layout)
    x1 = np.ascontiguousarray(x[:1])
    a.build(model)
    reps, calls = (5, 200) if args.quick else (11, 500)
    out = {"import_s": a.import_s, "variants": {}}
    for name, fn in a.predictors().items():
        try:
            out["variants"][name] = timed_predict(fn, x, x1, reps, calls)
        except Exception as e:  # one variant failing does not lose the others
            out["variants"][name] = {"error": f"{type(e).__name__}: {e}"[:300]}
    ok = {k: v for k, v in out["variants"].items() if "error" not in v}
    # the public API ("predict") is the headline; keras also has faster paths for one sample
    if fw == "kcompile":
        main = ok.get("predict", {})
        out.update(batch1024_samples_per_s=main.get("batch1024_samples_per_s"),
                   batch1_latency_us=main.get("batch1_latency_us"), batch1_path="predict")
    else:
        best_thr = max(ok, key=lambda k: ok[k]["batch1024_samples_per_s"])
        best_lat = min(ok, key=lambda k: ok[k]["batch1_latency_us"])
        out.update(batch1024_samples_per_s=ok[best_thr]["batch1024_samples_per_s"], batch1024_path=best_thr,
                   batch1_latency_us=ok[best_lat]["batch1_latency_us"], batch1_path=best_lat)
    return out


def w_cold(fw, model, args):
    # the clock starts at process creation: interpreter start-up and imports are included
    a = ADAPTERS[fw]()
    x, y, _ = synthetic(BATCH, a.layout)
    a.build(model)
    a.first_step(x, y)
    total = since_process_start()
    return {"build_to_first_step_s": total, "import_s": a.import_s, "peak_rss_mb": rss_mb()}


def w_rss(fw, model, args):
    n = 10_000 if args.quick else 60_000
    # the data first: its 188 MB (60,000 x 784 float32) are the same for every framework
    x, y, _ = synthetic(n, ADAPTERS[fw].layout)
    rss_data = current_rss_mb()
    a = ADAPTERS[fw]()
    a.build(model)
    rss_built = current_rss_mb()
    n = n // BATCH * BATCH  # whole batches only: no second shape to trace or compile
    start = time.perf_counter()
    a.fitter(x, y)(n, 1)
    epoch_s = time.perf_counter() - start
    import resource
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return {"samples": n, "peak_rss_mb": rss_mb(), "rss_after_data_mb": rss_data,
            "rss_after_build_mb": rss_built, "peak_over_data_mb": rss_mb() - rss_data,
            "children_peak_rss_mb": children, "epoch_s": epoch_s, "samples_per_s": n / epoch_s,
            "import_s": a.import_s}


def w_matmul(fw, model, args):
    n, reps = 2048, (5 if args.quick else 10)
    flops = 2 * n ** 3
    if fw == "numpy":
        import numpy as np
        a = np.random.default_rng(0).random((n, n), dtype=np.float32)
        b = np.random.default_rng(1).random((n, n), dtype=np.float32)
        mm = lambda: a @ b  # noqa: E731
        lib = ""
        try:
            cfg = np.show_config(mode="dicts")
            lib = cfg["Build Dependencies"]["blas"].get("name", "")
        except Exception:
            pass
    elif fw == "onnxruntime":  # the engine kcompile runs on: MLAS picks its own kernels (AVX-512 here)
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper
        info = [helper.make_tensor_value_info(v, TensorProto.FLOAT, [n, n]) for v in "ab"]
        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm", info,
                                  [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = {"a": np.random.default_rng(0).random((n, n), dtype=np.float32),
                 "b": np.random.default_rng(1).random((n, n), dtype=np.float32)}
        mm = lambda: session.run(None, feeds)  # noqa: E731
        lib = f"onnxruntime {ort.__version__} (MLAS)"
    else:
        import torch
        torch.set_num_threads(os.cpu_count() or 1)
        a, b = torch.rand(n, n), torch.rand(n, n)
        mm = lambda: a @ b  # noqa: E731
        lib = "torch (MKL)" if torch.backends.mkl.is_available() else "torch"
    mm()
    times = call_times(mm, reps)
    return {"gflops": flops / min(times) / 1e9, "gflops_median": flops / statistics.median(times) / 1e9,
            "blas": lib, "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "threads": os.cpu_count()}


def w_real_data(fw, model, args):
    import numpy as np
    a = KcompileAdapter()
    x, y, labels = real_mnist(args.mnist, "nhwc")
    a.build("cnn")
    m = a.m
    epochs = 2 if args.quick else 5
    per_epoch = []
    for e in range(epochs):
        start = time.perf_counter()
        m.fit(x[:8000], y[:8000], epochs=e + 1, initial_epoch=e, batch_size=BATCH, verbose=0)
        per_epoch.append(time.perf_counter() - start)
    logs = m.evaluate(x[-2000:], y[-2000:], batch_size=1000, verbose=0, return_dict=True)
    pred_acc = float(np.mean(np.argmax(m.predict(x[-2000:], batch_size=1000), 1) == labels[-2000:]))
    return {"train_images": 8000, "test_images": 2000, "epochs": epochs,
            "epoch_s": [round(t, 3) for t in per_epoch], "test_accuracy": logs.get("accuracy", pred_acc),
            "test_loss": logs.get("loss"), "predict_accuracy": pred_acc}


def _train_feeds(m, session, xb, yb, extra=None):
    """The training graph's feeds: through the model's private helper if it still has one, each
    input it does not give built from the session's declared inputs (ones for sample weights,
    as fit feeds them; weights by name, zeros for optimizer slots, uniform noise for dropout
    masks, lr and step scalars); ``extra`` added (a part's share)."""
    import numpy as np
    extra = extra or {}
    try:
        given, how = {**m._step_feeds(xb, yb, training=True), **extra}, "model._step_feeds"
    except Exception:
        given, how = {**xb, **yb, **extra}, "built from the session inputs"
    weights = dict(zip(m.weight_names, m.get_weights()))
    n = len(next(iter(xb.values())))
    types = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
    feeds, built, rng = {}, [], np.random.default_rng(0)
    for i in session.get_inputs():
        if i.name in given:
            feeds[i.name] = given[i.name]
            continue
        built.append(i.name)
        shape = [d if isinstance(d, int) else n for d in i.shape]  # (the batch: the only free dimension here)
        dt = types.get(i.type, np.float32)
        if "sample_weight" in i.name:
            feeds[i.name] = np.ones(shape, dt)
        elif i.name in weights:
            feeds[i.name] = weights[i.name]
        elif i.name == "lr":
            feeds[i.name] = np.asarray(0.001, dt)
        elif i.name == "step":
            feeds[i.name] = np.asarray(1, dt)
        else:
            feeds[i.name] = rng.random(shape).astype(dt) if "noise" in i.name or "mask" in i.name \
                else np.zeros(shape, dt)
    if built and how == "model._step_feeds":
        how += f" and built from the session inputs ({', '.join(built)})"
    return feeds, how


def w_profile(fw, model, args):
    import numpy as np
    import onnxruntime as ort
    a = KcompileAdapter().build(model)
    m = a.m
    x, y, _ = synthetic(BATCH, "nhwc")
    steps, warm = (10, 3) if args.quick else (30, 5)
    out = {"model": model, "steps": steps}
    # Python-level cost per step of the public API (fit over many batches, and train_on_batch)
    xs, ys, _ = synthetic(BATCH * steps, "nhwc", seed=1)
    m.fit(xs[:BATCH * 2], ys[:BATCH * 2], batch_size=BATCH, epochs=1, verbose=0)
    t = time.perf_counter()
    m.fit(xs, ys, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    out["fit_step_ms"] = (time.perf_counter() - t) / steps * 1e3
    m.train_on_batch(x, y)
    out["train_on_batch_ms"] = statistics.median(call_times(lambda: m.train_on_batch(x, y), steps)) * 1e3
    parts, extra = 1, {}
    try:  # the step as the model runs it (its private helpers: blocked convolutions on the CPU)
        parts = m._batch_parts()
        phases = m._split_graphs(parts)[0] if parts > 1 else []
        if len(phases) == 1:  # a split step: one of its one-core parts, on its share of the batch
            graph = phases[0]
            x, y, extra = x[:BATCH // parts], y[:BATCH // parts], {"share": np.asarray(1 / parts, np.float32)}
        else:  # (parts that exchange sums run in phases: the whole step is profiled instead)
            graph, parts = m._graph_for("train_step"), 1
    except Exception as e:
        out["profile"] = f"unavailable ({type(e).__name__}: {e})"
        return out
    out["graph"] = (f"one of its {parts} one-core parts ({BATCH // parts} rows, one thread), as the runtime splits it"
                    if parts > 1 else "the whole step")
    from kcompile.runtime.devices import cpu_cores, session_options
    options = session_options()  # the options the runtime's own sessions have
    if parts > 1:
        options.intra_op_num_threads = max(1, cpu_cores() // parts)
    providers = getattr(m, "_providers", None) or ["CPUExecutionProvider"]
    plain = ort.InferenceSession(graph, options, providers=providers)
    xname = m.inputs[0].name if hasattr(m, "inputs") else "image"
    tname = "probs_target"
    try:
        tname = m.manifest["training"]["targets"][0]["name"]
    except Exception:
        pass
    feeds, how = _train_feeds(m, plain, {xname: x}, {tname: y}, extra)
    out["feeds"] = how
    call_times(lambda: plain.run(None, feeds), warm)
    out["session_run_ms"] = statistics.median(call_times(lambda: plain.run(None, feeds), steps)) * 1e3
    prof_dir = tempfile.mkdtemp(prefix="kc_ortprof_")
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(prof_dir, "train_step")
    session = ort.InferenceSession(graph, options, providers=providers)
    for _ in range(warm + steps):
        session.run(None, feeds)
    path = session.end_profiling()
    events = json.loads(Path(path).read_text())
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    after = runs[warm] if len(runs) > warm else 0  # drop the warm-up runs
    by_op, count = {}, {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= after:
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0) + e["dur"]
            count[op] = count.get(op, 0) + 1
    total = sum(by_op.values())
    out["kernel_ms_per_step"] = total / steps / 1e3
    out["nodes_per_step"] = sum(count.values()) // steps
    out["top_ops"] = [{"op": op, "ms_per_step": us / steps / 1e3, "percent": 100.0 * us / total,
                       "calls_per_step": count[op] // steps}
                      for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])[:10]]
    for f in Path(prof_dir).glob("*"):
        f.unlink()
    os.rmdir(prof_dir)
    return out


WORKLOADS = {
    "mlp_train": lambda fw, args: w_train(fw, "mlp", args),
    "mlp_train_real": lambda fw, args: w_train(fw, "mlp", args, data="real"),
    "mlp_train_ftz": lambda fw, args: w_train(fw, "mlp", args, ftz=True),
    "cnn_train": lambda fw, args: w_train(fw, "cnn", args),
    "lstm_train": lambda fw, args: w_train(fw, "lstm", args),
    "mlp_predict": lambda fw, args: w_predict(fw, "mlp", args),
    "cnn_predict": lambda fw, args: w_predict(fw, "cnn", args),
    "cold_mlp": lambda fw, args: w_cold(fw, "mlp", args),
    "cold_cnn": lambda fw, args: w_cold(fw, "cnn", args),
    "cnn_rss": lambda fw, args: w_rss(fw, "cnn", args),
    "matmul": lambda fw, args: w_matmul(fw, None, args),
    "real_data": lambda fw, args: w_real_data(fw, None, args),
    "profile_mlp": lambda fw, args: w_profile(fw, "mlp", args),
    "profile_cnn": lambda fw, args: w_profile(fw, "cnn", args),
}


def worker(fw, workload, args):
    try:
        result = WORKLOADS[workload](fw, args)
        result["ok"] = True
    except Exception as e:
        import traceback
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
    print(MARK + json.dumps(result, default=float), flush=True)


# ----------------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------------
def installed(fw):
    import importlib.util
    return all(importlib.util.find_spec(name) is not None for name in IMPORT_NAMES.get(fw, []))


def busy_cpu_s():
    """CPU seconds spent by the whole machine (all processes) since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        busy = sum(fields[:3]) + sum(fields[5:8])  # user nice system (idle iowait) irq softirq steal
        return busy / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def wait_for_quiet(max_s, share=10.0, window=0.5):
    """Wait (at most max_s) until other processes use less than share % of the CPU over a
    window. Returns their last measured share (None when /proc/stat is unreadable)."""
    deadline = time.perf_counter() + max_s
    while True:
        b0 = busy_cpu_s()
        time.sleep(window)
        b1 = busy_cpu_s()
        if b0 is None or b1 is None:
            return None
        used = (b1 - b0) / (window * (os.cpu_count() or 1)) * 100
        if used < share or time.perf_counter() > deadline:
            return used


def children_cpu_s():
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_worker(fw, workload, args, env_extra=None, timeout=300):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", fw, workload, "--mnist", str(args.mnist)]
    if args.quick:
        cmd.append("--quick")
    cmd += ["--device", args.device]
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(env_extra or {})
    busy0, ours0 = busy_cpu_s(), children_cpu_s()
    start = time.perf_counter()
    env["KC_BENCH_T0"] = repr(time.time())
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout} s", "wall_s": time.perf_counter() - start}
    wall = time.perf_counter() - start
    busy1, ours1 = busy_cpu_s(), children_cpu_s()
    # CPU time that other processes on the machine took while the worker ran, as a share of
    # all cores: anything beyond a few % means the numbers of this worker are disturbed
    other = None
    if busy0 is not None and busy1 is not None:
        other = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (wall * (os.cpu_count() or 1)) * 100
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            result = json.loads(line[len(MARK):])
            result["wall_s"] = wall
            result["other_cpu_pct"] = other
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"ok": False, "error": f"exit {proc.returncode}: {' | '.join(tail)}"[:500], "wall_s": wall}


THROUGHPUT = ["mlp_train", "mlp_train_real", "mlp_train_ftz", "cnn_train", "lstm_train", "mlp_predict", "cnn_predict"]


def plan(frameworks, args):
    """(framework, workload, repetitions) in the order they run. With --rounds N the throughput
    workloads run N times, every framework once per round (kcompile, torch, ..., then again), so
    that a machine slower for a minute slows every framework alike; the median round counts."""
    jobs = [("numpy", "matmul", 1), ("onnxruntime", "matmul", 1)]
    if "torch" in frameworks or "torch_compile" in frameworks:
        jobs.append(("torch", "matmul", 1))
    have_mnist = args.mnist.is_dir()
    cold_reps = 1 if args.quick else 3
    for _ in range(args.rounds):
        for fw in frameworks:
            jobs += [(fw, wl, 1) for wl in THROUGHPUT
                     if (wl != "mlp_train_real" or have_mnist) and (wl != "mlp_train_ftz" or fw == "torch")]
    for fw in frameworks:
        # torch.compile's cold starts take 10-20 s each: one of each (only the CNN's in --quick)
        if not (fw == "torch_compile" and args.quick):
            jobs.append((fw, "cold_mlp", 1 if fw == "torch_compile" else cold_reps))
        jobs += [(fw, "cold_cnn", 1 if fw == "torch_compile" else cold_reps), (fw, "cnn_rss", 1)]
        if fw == "kcompile":
            jobs += [(fw, "profile_mlp", 1), (fw, "profile_cnn", 1)]
            if have_mnist:
                jobs.append((fw, "real_data", 1))
    return jobs


def merge_rounds(runs, workload):
    """The median round of a throughput workload (by its main number; batch-1 latency is the
    median of the rounds' own), with every round's number kept."""
    ok = [r for r in runs if r.get("ok")]
    if len(ok) < 2:
        return ok[0] if ok else runs[0]
    key = "samples_per_s" if "train" in workload else "batch1024_samples_per_s"
    ordered = sorted(ok, key=lambda r: r[key])
    out = dict(ordered[(len(ordered) - 1) // 2])
    # every round, None where it failed: round k of one framework pairs with round k of another
    out["rounds"] = [round(r[key], 1) if r.get("ok") else None for r in runs]
    if "batch1_latency_us" in out:
        out["batch1_latency_us"] = statistics.median(r["batch1_latency_us"] for r in ok)
        out["rounds_batch1_latency_us"] = [round(r["batch1_latency_us"], 1) if r.get("ok") else None for r in runs]
    return out


def merge_cold(results):
    ok = [r for r in results if r.get("ok")]
    if not ok:
        return results[0]
    out = dict(ok[0])
    out["build_to_first_step_s"] = statistics.median(r["build_to_first_step_s"] for r in ok)
    out["runs_s"] = [round(r["build_to_first_step_s"], 3) for r in ok]
    out["wall_s_runs"] = [round(r["wall_s"], 3) for r in ok]
    return out


# (label, workload, key, higher_is_better, target ratio or None, unit format)
ROWS = [
    ("MLP train, samples/s (synthetic)", "mlp_train", "samples_per_s", True, 1.3, "{:,.0f}"),
    ("MLP train, achieved GFLOP/s", "mlp_train", "gflops", True, None, "{:.1f}"),
    ("MLP train, samples/s (real MNIST)", "mlp_train_real", "samples_per_s", True, None, "{:,.0f}"),
    ("MLP train, torch flush-denormal", "mlp_train_ftz", "samples_per_s", True, None, "{:,.0f}"),
    ("CNN train, samples/s", "cnn_train", "samples_per_s", True, 1.5, "{:,.0f}"),
    ("CNN train, achieved GFLOP/s", "cnn_train", "gflops", True, None, "{:.1f}"),
    ("LSTM train (sentiment), samples/s", "lstm_train", "samples_per_s", True, None, "{:,.0f}"),
    ("MLP predict@1024, samples/s", "mlp_predict", "batch1024_samples_per_s", True, 1.0, "{:,.0f}"),
    ("CNN predict@1024, samples/s", "cnn_predict", "batch1024_samples_per_s", True, 1.2, "{:,.0f}"),
    ("MLP predict@1 median latency, us", "mlp_predict", "batch1_latency_us", False, 0.5, "{:,.0f}"),
    ("CNN predict@1 median latency, us", "cnn_predict", "batch1_latency_us", False, 0.5, "{:,.0f}"),
    ("MLP cold start to 1st step, s", "cold_mlp", "build_to_first_step_s", False, "abs1.5", "{:.2f}"),
    ("CNN cold start to 1st step, s", "cold_cnn", "build_to_first_step_s", False, "abs1.5", "{:.2f}"),
    ("  of which framework imports, s", "cold_cnn", "import_s", False, None, "{:.2f}"),
    ("CNN 1-epoch peak RSS, MB", "cnn_rss", "peak_rss_mb", False, "torch", "{:,.0f}"),
    ("  peak RSS above the data, MB", "cnn_rss", "peak_over_data_mb", False, None, "{:,.0f}"),
    ("CNN 1-epoch (RSS run) time, s", "cnn_rss", "epoch_s", False, None, "{:.1f}"),
]


def get(results, fw, wl):
    """The result of one worker, or None (not run, or the framework not installed)."""
    d = results.get(fw)
    return d.get(wl) if isinstance(d, dict) else None


def fmt(v, f):
    return "-" if v is None else f.format(v)


def table(results, frameworks):
    lines, verdicts = [], []
    w0, wc = 36, 14
    head = f"{'workload':<{w0}}" + "".join(f"{f:>{wc}}" for f in frameworks) + f"{'kc/best peer':>{wc}}  target"
    lines += [head, "-" * len(head)]
    for label, wl, key, higher, target, f in ROWS:
        if wl == "mlp_train_ftz" and "torch" not in frameworks:
            continue
        vals = {}
        for fw in frameworks:
            r = get(results, fw, wl)
            if r is None:
                vals[fw] = "n/a" if results.get(fw) != "not installed" else "not inst."
                continue
            if not r.get("ok"):
                vals[fw] = "FAILED"
                continue
            vals[fw] = r.get(key)
        kc = vals.get("kcompile")
        if wl == "mlp_train_ftz":  # torch's FTZ row: kcompile's plain number against it
            kc_r = get(results, "kcompile", "mlp_train")
            kc = kc_r.get("samples_per_s") if isinstance(kc_r, dict) and kc_r.get("ok") else None
        num = {fw: v for fw, v in vals.items() if isinstance(v, (int, float)) and fw != "kcompile"}
        if target == "torch":
            ref = num.get("torch")
            ref_name = "torch"
        elif num:
            ref_name = (max if higher else min)(num, key=num.get)
            ref = num[ref_name]
        else:
            ref, ref_name = None, None
        ratio = kc / ref if isinstance(kc, (int, float)) and ref else None
        cells = []
        for fw in frameworks:
            v = vals[fw]
            cells.append(fmt(v, f) if isinstance(v, (int, float)) or v is None else v)
        if wl == "mlp_train_ftz":
            cells[frameworks.index("kcompile")] = fmt(kc, f) + "*" if kc is not None else "-"
        verdict = ""
        if target is not None:
            if target == "abs1.5":
                goal = "< 1.5 s"
                met = isinstance(kc, (int, float)) and kc < 1.5
            elif target == "torch":
                goal = "<= torch"
                met = ratio is not None and ratio <= 1.0
            else:
                goal = f"{'>=' if higher else '<='} {target}x"
                met = ratio is not None and (ratio >= target if higher else ratio <= target)
            if not isinstance(kc, (int, float)):
                state = "no data"
            elif ratio is None and target != "abs1.5":
                state = "no peer"
            else:
                state = "met" if met else "NOT met"
            verdict = f"{goal}: {state}"
            verdicts.append({"row": label, "target": goal, "kcompile": kc if isinstance(kc, (int, float)) else None, "reference": ref,
                             "reference_framework": ref_name, "ratio": ratio, "met": met if state != "no data"
                             and state != "no peer" else None})
        rcell = f"{ratio:.2f}x" if ratio is not None else "-"
        lines.append(f"{label:<{w0}}" + "".join(f"{c:>{wc}}" for c in cells) + f"{rcell:>{wc}}  {verdict}")
    return "\n".join(lines), verdicts


def round_ratios(results, verdicts):
    """Each target row's kcompile / reference ratio round by round (with --rounds N): the
    frameworks of one round ran within minutes of each other, so the spread of these ratios
    shows how much the machine's changing speed moves a verdict. Adds them to the verdicts."""
    listed = {"samples_per_s": "rounds", "batch1024_samples_per_s": "rounds",
              "batch1_latency_us": "rounds_batch1_latency_us"}
    lines = []
    for v in verdicts:
        label, wl, key = next(row[:3] for row in ROWS if row[0] == v["row"])
        peer = v.get("reference_framework")
        if wl not in THROUGHPUT or key not in listed or not peer:
            continue
        mine, theirs = (get(results, fw, wl) or {} for fw in ("kcompile", peer))
        a, b = mine.get(listed[key]), theirs.get(listed[key])
        if a and b and len(a) == len(b):
            v["round_ratios"] = [x / y if x is not None and y else None for x, y in zip(a, b)]
            lines.append(f"  {label:<36} kcompile / {peer}: " + ", ".join(
                "failed" if r is None else f"{r:.2f}x" for r in v["round_ratios"]))
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and samples (about 3 minutes)")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results.json"),
                    help="where the raw numbers go (default benchmarks/results.json)")
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                    help=f"comma-separated subset of {','.join(FRAMEWORKS)}")
    ap.add_argument("--mnist", type=Path, default=DEFAULT_MNIST,
                    help="folder with the MNIST t10k IDX files (default ../shared/datasets/mnist)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the throughput workloads this many times, all frameworks in turn each round, "
                         "and report the median round (3 steadies the ratios on a noisy machine)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="where kcompile runs (the peers run on the CPU); cuda needs an NVIDIA GPU")
    ap.add_argument("--no-retry", dest="retry_busy", action="store_false",
                    help="do not run a worker again when other processes took > 10%% of the CPU during it")
    ap.add_argument("--paired", type=int, default=0, metavar="CYCLES",
                    help="then also measure the throughput and latency targets as pairs of one-second "
                         "bursts, the frameworks in turn, CYCLES times (benchmarks/paired.py; 15 takes "
                         "about 7 minutes; CPU only)")
    ap.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "WORKLOAD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        KcompileAdapter.device = args.device
        worker(*args.worker, args)
        return
    if args.device == "cuda":
        sys.path.insert(0, str(ROOT))
        from kcompile.runtime.devices import cuda_available
        if not cuda_available():
            ap.error("--device cuda: no usable CUDA GPU here")

    wanted = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = [f for f in wanted if f not in FRAMEWORKS]
    if unknown:
        ap.error(f"unknown frameworks {unknown}; choose from {FRAMEWORKS}")
    if "kcompile" not in wanted:
        wanted.insert(0, "kcompile")
    frameworks = [f for f in FRAMEWORKS if f in wanted]
    results = {}
    runnable = []
    for fw in frameworks:
        if installed(fw):
            runnable.append(fw)
        else:
            results[fw] = "not installed"
            print(f"{fw}: not installed (pip install -e '.[bench]'); skipped")
    if not args.mnist.is_dir():
        print(f"real MNIST: {args.mnist} is absent; the real-data runs are skipped")

    t_start = time.perf_counter()
    inductor_root = tempfile.mkdtemp(prefix="kc_bench_inductor_")
    shared_cache = os.path.join(inductor_root, "shared")
    jobs = plan(runnable, args)
    collected = {}
    for i, (fw, wl, reps) in enumerate(jobs):
        runs = []
        for r in range(reps):
            env = None
            if fw == "torch_compile":
                # cold starts get an empty compile cache (truly cold); the other workloads share
                # one cache made for this run, and their warm-up compiles anyway
                cache = os.path.join(inductor_root, f"cold{i}_{r}") if wl.startswith("cold") else shared_cache
                env = {"TORCHINDUCTOR_CACHE_DIR": cache}
            timeout = 420 if fw == "torch_compile" else 300
            print(f"[{time.perf_counter() - t_start:6.1f}s] {fw:<14}{wl:<16}"
                  f"{f'rep {r + 1}/{reps}' if reps > 1 else ''}", end="", flush=True)
            res = run_worker(fw, wl, args, env, timeout)
            other = res.get("other_cpu_pct")
            busy = f"  (other processes took {other:.0f}% of the CPU)" if other is not None and other > 5 else ""
            print(f"  {res['wall_s']:.1f}s{busy}" + ("" if res.get("ok") else f"  FAILED: {res.get('error')}"),
                  flush=True)
            if res.get("ok") and other is not None and other > DISTURBED and args.retry_busy:
                # a disturbed run: wait for the machine to calm down, run it once more, keep the calmer
                now = wait_for_quiet(30.0 if not args.quick else 10.0)
                print(f"         {'':<30}again{'' if now is None or now < 10 else f' (still {now:.0f}% busy)'}",
                      end="", flush=True)
                again = run_worker(fw, wl, args, env, timeout)
                o2 = again.get("other_cpu_pct")
                print(f"  {again['wall_s']:.1f}s" + (f"  (other processes took {o2:.0f}% of the CPU)"
                                                     if o2 is not None and o2 > 5 else ""), flush=True)
                if again.get("ok") and (o2 or 0) < other:
                    again["disturbed_first_try"] = res
                    res = again
            runs.append(res)
        collected.setdefault((fw, wl), []).append(merge_cold(runs) if wl.startswith("cold") else runs[0])
    for (fw, wl), runs in collected.items():
        results.setdefault(fw, {})[wl] = merge_rounds(runs, wl) if wl in THROUGHPUT else runs[0]
    subprocess.run(["rm", "-rf", inductor_root])
    total_s = time.perf_counter() - t_start

    # ---------------------------------- report ----------------------------------
    matmul = get(results, "numpy", "matmul") or {}
    print(f"\nkcompile benchmarks{' (--quick)' if args.quick else ''}: {os.cpu_count()} CPU cores, "
          f"{'kcompile on the CUDA provider, ' if args.device == 'cuda' else ''}"
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')} (measured as-is), "
          f"total {total_s:.0f} s")
    if matmul.get("ok"):
        extra = "".join(f"; {name} {r['gflops']:.0f} GFLOP/s" for name in ("onnxruntime", "torch")
                        for r in [get(results, name, "matmul") or {}] if r.get("ok"))
        print(f"attainable float32 matmul 2048x2048 (best of several): numpy/{matmul.get('blas') or 'BLAS'} "
              f"{matmul['gflops']:.0f} GFLOP/s{extra}")
    peak = max([r["gflops"] for k in ("numpy", "onnxruntime", "torch") for r in [get(results, k, "matmul") or {}]
                if r.get("ok")] or [0])
    print(f"training FLOPs per sample (forward + weight gradients + input gradients but the first layer's): MLP {train_flops_per_sample('mlp') / 1e6:.2f} M, "
          f"CNN {train_flops_per_sample('cnn') / 1e6:.2f} M\n")
    text, verdicts = table(results, frameworks)
    print(text)
    by_round = round_ratios(results, verdicts)
    if by_round:
        print("\nthe target rows round by round (the table takes each framework's median round):")
        print("\n".join(by_round))
        print("(this machine's state moves these: benchmarks/paired.py measures the targets as "
              "pairs of one-second bursts, the frameworks in turn)")
    print("\nratios: kcompile / the best peer for that row (higher is better for samples/s and GFLOP/s, "
          "lower for latency, seconds and MB); the peak-RSS target is against torch.\n"
          "* the flush-denormal row compares torch with FTZ against kcompile's plain MLP number.\n"
          "keras batch-1 latency is the fastest of predict(), predict_on_batch() and model(x); "
          "kcompile's is predict().")
    if peak:
        for wl, name in (("mlp_train", "MLP"), ("cnn_train", "CNN")):
            parts = [f"{fw} {r['gflops'] / peak * 100:.0f}%" for fw in frameworks
                     for r in [get(results, fw, wl)]
                     if r and r.get("ok")]
            print(f"{name} training, share of the attainable {peak:.0f} GFLOP/s: {', '.join(parts)}")
    kc = results.get("kcompile") if isinstance(results.get("kcompile"), dict) else {}
    for wl in ("mlp_predict", "cnn_predict"):
        raw = kc.get(wl, {}).get("variants", {}).get("raw_session") if kc.get(wl, {}).get("ok") else None
        if raw and "error" not in raw:
            print(f"kcompile {wl[:3].upper()} raw onnxruntime session (no predict() wrapper): "
                  f"{raw['batch1024_samples_per_s']:,.0f} samples/s at 1024, {raw['batch1_latency_us']:,.0f} us at 1")
    rd = kc.get("real_data")
    if rd and rd.get("ok"):
        print(f"\nreal data: kcompile CNN, first 8,000 MNIST t10k images, {rd['epochs']} epochs, batch 128: "
              f"test accuracy {rd['test_accuracy']:.4f} on the last 2,000; seconds per epoch "
              f"{', '.join(f'{t:.2f}' for t in rd['epoch_s'])}")
    elif rd:
        print(f"\nreal data: FAILED: {rd.get('error')}")
    else:
        print(f"\nreal data: skipped ({args.mnist} absent)")
    for wl in ("profile_mlp", "profile_cnn"):
        p = kc.get(wl)
        if not p:
            continue
        if not p.get("ok"):
            print(f"\n{wl}: FAILED: {p.get('error')}")
            continue
        print(f"\nwhere kcompile's {p['model'].upper()} training step goes (batch 128): fit() "
              f"{p['fit_step_ms']:.2f} ms/step, train_on_batch {p['train_on_batch_ms']:.2f} ms", end="")
        if "top_ops" not in p:
            print(f"; onnxruntime profile {p.get('profile', 'unavailable')}")
            continue
        print(f";\n  a plain InferenceSession on its training graph as the runtime runs it, "
              f"{p.get('graph', 'the whole step')}: run() {p['session_run_ms']:.2f} ms, of which "
              f"kernels {p['kernel_ms_per_step']:.2f} ms as profiled ({p['nodes_per_step']} nodes; feeds from "
              f"{p['feeds']}); the profiler adds its own cost to each node, so read the shares:")
        for op in p["top_ops"]:
            print(f"    {op['op']:<28}{op['ms_per_step']:>8.3f} ms {op['percent']:>6.1f}%  x{op['calls_per_step']}")
    disturbed = [(fw, wl, r["other_cpu_pct"]) for fw, d in results.items() if isinstance(d, dict)
                 for wl, r in d.items() if isinstance(r, dict) and (r.get("other_cpu_pct") or 0) > DISTURBED]
    if disturbed:
        print("\nWARNING: other processes were busy during " + ", ".join(f"{fw} {wl} ({p:.0f}% of the CPU)"
                                                                  for fw, wl, p in disturbed)
              + "; those numbers are disturbed, run again on a quiet machine")
    out = {"quick": args.quick, "device": args.device, "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
           "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"), "total_s": total_s,
           "flops_per_sample": {"mlp_train": train_flops_per_sample("mlp"), "cnn_train": train_flops_per_sample("cnn")},
           "targets": verdicts, "results": results, "versions": versions(runnable)}
    if args.paired:
        out["paired"] = paired_targets(runnable, args)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2, default=float))
    print(f"\nraw numbers: {args.json}")


def paired_targets(frameworks, args):
    """benchmarks/paired.py's measurement of the targets, printed and returned (its rows)."""
    if args.device != "cpu":
        print("\npaired bursts: CPU only, skipped with --device cuda")
        return None
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import paired
    print(f"\npaired bursts ({args.paired} cycles; benchmarks/paired.py): the frameworks of a workload alive "
          f"at once, taking turns; kcompile's median ratio to the best peer's burst of the same cycle", flush=True)
    rows, _ = paired.measure_all(paired.WORKLOADS, frameworks, args.paired, say=lambda line: print(line, flush=True))
    print(paired.report(rows, frameworks))
    return rows


def versions(frameworks):
    from importlib import metadata
    out = {}
    for pkg in ("numpy", "onnxruntime", "onnxruntime-gpu", "torch", "jax", "jaxlib", "keras"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


if __name__ == "__main__":
    main()
