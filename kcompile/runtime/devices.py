"""Execution-provider choice: CPU by default, CUDA when asked for and present."""
from __future__ import annotations

import ctypes
import functools


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


def session_options(stop_spinning: bool = True):
    """The options every session that runs a model starts from.

    ``stop_spinning``: each session has its own thread pool, whose threads spin for a while
    after a run ends. Where sessions take turns (a GAN's models step by step, train_on_batch
    then predict), every run would share the cores with the other pool's spinning thread:
    measured here, two MNIST MLP models stepping in turn 1.5x slower per step, the GAN
    example's step 1.9x. With it, a session's next run wakes its pool instead: a single
    model's fit within the noise, but a batch-1 predict 42-70 us instead of 22, so only the
    folded inference session (serving, latency) keeps spinning. benchmarks/sessions.py
    measures both."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.force_spinning_stop", "1" if stop_spinning else "0")
    return options


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
