"""Execution-provider choice (CPU by default, CUDA when asked for and present) and the options
of the sessions that run models."""
from __future__ import annotations

import collections
import ctypes
import functools
import os


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """GPUs the CUDA driver sees; 0 without a driver (no onnxruntime noise: we ask the driver)."""
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not Linux)
        return os.cpu_count() or 1


def cuda_available() -> bool:
    import onnxruntime as ort
    return "CUDAExecutionProvider" in ort.get_available_providers() and cuda_device_count() > 0


def providers_for(device: str) -> list[str]:
    """``cpu``, ``cuda`` (error if absent) or ``auto`` (CUDA when present, else CPU, silently)."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device in ("cuda", "gpu"):
        if not cuda_available():
            raise RuntimeError("device='cuda' was asked for, but no CUDA GPU is usable here "
                               "(onnxruntime-gpu and an NVIDIA driver are needed); use device='cpu' or 'auto'")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "auto":
        return providers_for("cuda") if cuda_available() else ["CPUExecutionProvider"]
    raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'auto'")


class TurnTaking:
    """Whether this process's sessions take turns (a GAN's models step by step, train_on_batch
    then predict, models predicting in turn), seen from the sequence of runs: at least
    ``SWITCHES`` changes of session among the last ``WINDOW`` runs. A fit with validation
    changes session twice an epoch and is not taking turns. Once seen, it stays seen."""

    WINDOW = 32
    SWITCHES = 8

    def __init__(self):
        self.reset()

    def reset(self):
        self.seen = False
        self.last = None  # the session that ran last (its id)
        self._switches = collections.deque(maxlen=self.WINDOW)  # whether each recent run changed session
        self._count = 0  # how many of them did

    def follows_itself(self, session) -> bool:
        """Whether ``session``'s run now would follow a run of its own (runs back to back)."""
        return self.last == id(session)

    def ran(self, session) -> None:
        """Note a run of ``session`` (under a microsecond: this is on every batch-1 predict)."""
        key, last = id(session), self.last
        self.last = key
        if self.seen or (key == last and not self._count):
            return  # (one session's runs back to back: nothing to count)
        switched = last is not None and key != last
        if len(self._switches) == self.WINDOW:
            self._count -= self._switches[0]
        self._switches.append(switched)
        self._count += switched
        self.seen = self._count >= self.SWITCHES


TURNS = TurnTaking()  # this process's


# onnxruntime graph rewrites that slow kcompile's graphs down on the CPU. SkipLayerNormFusion folds the
# residual Add before a LayerNormalization into its SkipLayerNormalization, which ran 3-6x the
# time of the two ops apart ([64, 50, 64]: 0.91 against 0.27 ms on one thread; [128, 8, 4096]
# 18.6 against 3.3): the survey's transformer block's step 14.4-14.6 ms with it, 12.5-13.0 without.
DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


def session_options(stop_spinning: bool = False):
    """The options every session that runs a model starts from.

    ``stop_spinning``: each session has its own thread pool, whose threads spin for a while
    after a run ends. That makes a session's runs back to back fast (the MNIST MLP's batch-1
    predict 22 us, against 42-70 us with pools that stop spinning after each run; evaluate()
    at batch 32 15-25% faster), but where sessions take turns, every run shares the cores
    with the other pool's spinning thread: two MNIST MLP models stepping in turn 1.5-1.8x slower
    per step, the GAN example's step 1.9x. The runtime asks for stopping pools once it sees its
    sessions taking turns (TURNS). benchmarks/sessions.py measures both."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.force_spinning_stop", "1" if stop_spinning else "0")
    return options


def built_at_once(makers: list) -> list:
    """Each ``maker()``'s result, in order, the makers run on up to this CPU's cores at once:
    onnxruntime builds a session without holding the GIL (two part sessions of a 10,000-node
    training step, two DepthwiseConv2D of 512 channels: 10.0 s at once against 16.0 one after
    the other; the split step's first run 10.8 against 16.1 s. The MNIST CNN's first step,
    0.57-0.62 s from process start either way)."""
    if len(makers) < 2 or cpu_cores() < 2:
        return [make() for make in makers]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(min(len(makers), cpu_cores())) as pool:
        return list(pool.map(lambda make: make(), makers))


def create_session(make, model: str, graph: str, providers):
    """``make()``, an onnxruntime session; where the provider lacks a kernel for one of the graph's
    ops in its dtype (the CPU has no float64 Conv), a RuntimeError that says so plainly."""
    try:
        return make()
    except Exception as e:
        if "Could not find an implementation" not in str(e):
            raise
        raise RuntimeError(f"model {model}: onnxruntime's {providers[0]} cannot run its {graph} graph "
                           f"({str(e).split(' : ')[-1].strip()}); float32 models run everywhere") from None
