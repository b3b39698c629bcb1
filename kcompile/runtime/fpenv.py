"""Denormal numbers flushed to zero inside training steps, and nowhere else.

Where a weight's gradient is zero (the inputs of a dead ReLU unit), RMSprop's and Adam's
velocities decay geometrically and after some 700 steps pass through the denormal range: the
MNIST MLP on synthetic data has 290k of its 400k velocities denormal after two epochs. Many
CPUs (Intel's in particular) take a slow path for every denormal operand; this machine's AMD
EPYC does not (a Mul over 400k denormals: 48 us, as fast as normal numbers). XLA (Keras on
JAX) and TensorFlow flush denormals on CPU; PyTorch does not by default.

onnxruntime's ``session.set_denormal_as_zero`` sets the flush bits on the session's pool
threads, but the calling thread, which takes its share of every parallel op, only for the
first session of a process; and there the bits would stay set for the user's numpy too. So
the session is created with the caller's environment put back afterwards, and each run
switches the caller's thread to flushing and back: fegetenv/fesetenv of the C library (about
2 us per step in all). onnxruntime flushes its pool threads on x86-64 only, so that is where
kcompile flushes (Linux, glibc's fenv_t); elsewhere nothing is flushed.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
import threading

_ENV_BYTES = 256  # room for any platform's fenv_t


@functools.lru_cache(maxsize=1)
def _flush_bits():
    """(byte offset of the control register in glibc's fenv_t, the bits that flush), or None.
    Only where onnxruntime flushes its pool threads too (x86-64): flushing the calling thread
    alone would make a result depend on which thread computed it."""
    system, machine = platform.system(), platform.machine().lower()
    if system == "Linux" and machine in ("x86_64", "amd64"):
        return 28, 0x8040  # MXCSR: flush-to-zero (bit 15) and denormals-are-zero (bit 6)
    return None


@functools.lru_cache(maxsize=1)
def _libm():
    for name in (ctypes.util.find_library("m"), "libm.so.6"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if hasattr(lib, "fegetenv") and hasattr(lib, "fesetenv"):
            return lib
    return None


class NoFlush:
    """Steps with IEEE denormals: sessions as they are, nothing entered around a run."""

    def session(self, make, options):
        return make(options)

    def __enter__(self):
        pass

    def __exit__(self, *exc):
        pass


class FlushDenormals(NoFlush):
    """Sessions whose pool threads flush, and a context entered around each of their runs
    that makes the calling thread flush too."""

    @staticmethod
    def available() -> bool:
        return _flush_bits() is not None and _libm() is not None

    def __init__(self):
        self._get, self._set = _libm().fegetenv, _libm().fesetenv
        self._offset, self._bits = _flush_bits()
        self._threads = threading.local()  # each thread's saved and flushing environments

    def session(self, make, options):
        """``make(options)``, a session whose pool threads flush; the calling thread's
        environment is put back after it (onnxruntime may set its flush bits for good)."""
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        kept = ctypes.create_string_buffer(_ENV_BYTES)
        self._get(kept)
        try:
            return make(options)
        finally:
            self._set(kept)

    def __enter__(self):
        t = self._threads
        if not hasattr(t, "callers"):
            t.callers = ctypes.create_string_buffer(_ENV_BYTES)
            t.flushing = ctypes.create_string_buffer(_ENV_BYTES)
            t.register = ctypes.c_uint32.from_buffer(t.flushing, self._offset)
        self._get(t.callers)
        ctypes.memmove(t.flushing, t.callers, _ENV_BYTES)
        t.register.value |= self._bits
        self._set(t.flushing)

    def __exit__(self, *exc):
        self._set(self._threads.callers)


def step_environment(flush: bool) -> NoFlush:
    """What a training step runs in: flushing where asked for and possible, else IEEE."""
    return FlushDenormals() if flush and FlushDenormals.available() else NoFlush()
