"""Keras-style progress display for ``Model.fit`` / ``evaluate`` / ``predict``.

``ProgressBar`` mirrors ``keras.utils.Progbar`` (Keras 3):

* ``verbose=1`` draws a bar updated in place::

      37/469 ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━ 2s 5ms/step - accuracy: 0.8123 - loss: 0.5432

  with the ETA while running, and elapsed time + time per step once finalized.
  When the stream is not a terminal (a log file, a pipe, a captured stream), only
  the finalized line is written, so logs don't fill with carriage returns.
* ``verbose=2`` writes one line when finalized::

      469/469 - 3s - 6ms/step - accuracy: 0.9000 - loss: 0.3000 - val_loss: 0.2500

* ``verbose=0`` writes nothing.

Numbers are formatted as Keras does: ``0.1234`` (4 decimals) when ``abs(x) > 1e-3``,
else ``1.2340e-05``.

Metric values passed to ``update`` are, by default, treated as *stateful*: they are
already running means (that is what ``fit``'s logs hold), so the bar shows the latest
value as-is instead of averaging it over steps again. Passing ``stateful_metrics``
explicitly restores Keras' behaviour: only the named metrics are shown as-is, the
others are averaged over the steps seen (weighted by the step increments).
"""

from __future__ import annotations

import math
import os
import sys
import time

__all__ = ["ProgressBar", "epoch_header", "format_value"]

_BAR_CHAR = "━"
_GREEN = "\x1b[32m"
_DIM = "\x1b[37m"
_BOLD = "\x1b[1m"
_RESET = "\x1b[0m"


def format_value(value) -> str:
    """Format one metric value the way Keras' progress bar does."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        try:  # a 1-element array, or an array to average (Keras averages)
            import numpy as np
            v = float(np.mean(np.asarray(value, dtype=np.float64)))
        except Exception:
            return str(value)
    if abs(v) > 1e-3:
        return f"{v:.4f}"
    return f"{v:.4e}"


def format_time_per_unit(time_per_unit: float, unit_name: str = "step") -> str:
    """``5ms/step``-style text (no leading space)."""
    if time_per_unit >= 1 or time_per_unit == 0:
        return f"{time_per_unit:.0f}s/{unit_name}"
    if time_per_unit >= 1e-3:
        return f"{time_per_unit * 1e3:.0f}ms/{unit_name}"
    return f"{time_per_unit * 1e6:.0f}us/{unit_name}"


def _format_eta(eta: float) -> str:
    if eta > 3600:
        return "%d:%02d:%02d" % (eta // 3600, (eta % 3600) // 60, eta % 60)
    if eta > 60:
        return "%d:%02d" % (eta // 60, eta % 60)
    return "%ds" % eta


def epoch_header(epoch: int, epochs: int, verbose=1, stream=None) -> str:
    """Print ``Epoch {epoch + 1}/{epochs}`` as Keras does at the start of an epoch.

    ``epoch`` is the 0-based epoch index (the one callbacks receive), so
    ``epoch_header(2, 10)`` prints ``Epoch 3/10``. Printed for ``verbose`` 1, 2 and
    ``"auto"``; like Keras, nothing is printed when ``epochs == 1``. Returns the text
    (without newline) whether or not it was printed.
    """
    text = f"Epoch {epoch + 1}/{epochs}"
    if verbose == "auto":
        verbose = 1
    if verbose in (1, 2) and epochs > 1:
        stream = stream if stream is not None else sys.stdout
        stream.write(text + "\n")
        stream.flush()
    return text


def _is_dynamic(stream) -> bool:
    try:
        if stream.isatty():
            return True
    except Exception:
        pass
    return "ipykernel" in sys.modules or "PYCHARM_HOSTED" in os.environ


class ProgressBar:
    """A Keras-style progress bar.

    Args:
        target: total number of steps, or None if unknown (shows ``N/Unknown``).
        verbose: 0 (silent), 1 (bar) or 2 (one line when finalized).
        width: bar width in characters.
        stateful_metrics: None means every metric is already a running mean and is
            shown as given; an iterable names the only metrics shown as given,
            the others being averaged over steps as ``keras.utils.Progbar`` does.
        unit_name: the unit in ``5ms/step``.
        interval: minimum seconds between two redraws (verbose=1).
        stream: where to write; None means ``sys.stdout`` at the time of writing.
        clock: a ``() -> seconds`` function (for tests); default ``time.time``.
    """

    def __init__(self, target, verbose=1, width=20, stateful_metrics=None,
                 unit_name="step", interval=0.05, stream=None, *, clock=None):
        if verbose == "auto":
            verbose = 1
        self.target = target
        self.verbose = verbose
        self.width = width
        self.unit_name = unit_name
        self.interval = interval
        self._stream = stream
        self._clock = clock or time.time
        self._all_stateful = stateful_metrics is None
        self.stateful_metrics = set(stateful_metrics) if stateful_metrics is not None else set()
        self._dynamic_display = _is_dynamic(self.stream)
        self._seen_so_far = 0
        self._values = {}          # name -> [sum, count]
        self._values_order = []
        self._start = self._clock()
        self._last_update = None
        self._time_after_first_step = None
        self._prev_total_width = 0

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stdout

    def _is_stateful(self, name) -> bool:
        return self._all_stateful or name in self.stateful_metrics

    def update(self, current, values=None, finalize=None):
        """Move the bar to step ``current`` (1-based count of steps done).

        ``values``: list of ``(name, value)`` pairs (or a dict). ``finalize``: whether
        this is the last update of the bar; None means ``current >= target``.
        """
        if finalize is None:
            finalize = False if self.target is None else current >= self.target
        if isinstance(values, dict):
            values = list(values.items())
        for k, v in values or []:
            if k not in self._values_order:
                self._values_order.append(k)
            if finalize or self._is_stateful(k):
                self._values[k] = [v, 1]
            else:
                base = max(current - self._seen_so_far, 1)
                if k not in self._values:
                    self._values[k] = [v * base, base]
                else:
                    self._values[k][0] += v * base
                    self._values[k][1] += base
        self._seen_so_far = current

        now = self._clock()
        time_per_unit = self._estimate_step_duration(current, now)

        if self.verbose == 1:
            if not finalize:
                if not self._dynamic_display:
                    return
                if self._last_update is not None and now - self._last_update < self.interval:
                    return
            self._draw(current, now, time_per_unit, finalize)
        elif self.verbose == 2 and finalize:
            self._write(self._line_verbose2(current, now, time_per_unit) + "\n")
        self._last_update = now

    def add(self, n, values=None):
        """Advance by ``n`` steps."""
        self.update(self._seen_so_far + n, values)

    # ---- rendering -----------------------------------------------------------

    def _metric_text(self) -> str:
        out = ""
        for k in self._values_order:
            total, count = self._values[k]
            if count != 1:
                try:
                    total = total / max(1, count)
                except TypeError:
                    pass
            out += f" - {k}: {format_value(total)}"
        return out

    def _count_text(self, current) -> str:
        numdigits = int(math.log10(self.target)) + 1 if self.target and self.target > 0 else 1
        return ("%" + str(numdigits) + "d/%d") % (current, self.target)

    def _draw(self, current, now, time_per_unit, finalize):
        color = self._dynamic_display
        if self.target is not None:
            count = self._count_text(current)
            prog = (float(current) / self.target) if self.target else 1.0
            done = max(0, min(self.width, int(self.width * prog)))
            if color:
                bar = f"{_BOLD}{count}{_RESET} "
                if done:
                    bar += _GREEN + _BAR_CHAR * done + _RESET
                bar += _DIM + _BAR_CHAR * (self.width - done) + _RESET
            else:
                bar = f"{count} " + _BAR_CHAR * self.width
            visible = len(count) + 1 + self.width
        else:
            bar = "%7d/Unknown" % current
            visible = len(bar)

        if self.target is not None and not finalize:
            t = _format_eta(time_per_unit * (self.target - current))
        else:
            t = f"{now - self._start:.0f}s"
        info = " " + (f"{_BOLD}{t}{_RESET}" if color else t)
        visible_info = 1 + len(t)
        rest = " " + format_time_per_unit(time_per_unit, self.unit_name) + self._metric_text()
        info += rest
        visible_info += len(rest)

        total_width = visible + visible_info
        message = ("\r" if self._dynamic_display else "") + bar + info
        if self._dynamic_display and self._prev_total_width > total_width:
            message += " " * (self._prev_total_width - total_width)
        if finalize:
            message += "\n"
        self._write(message)
        self._prev_total_width = total_width

    def _line_verbose2(self, current, now, time_per_unit) -> str:
        count = self._count_text(current) if self.target is not None else "%d/Unknown" % current
        line = f"{count} - {now - self._start:.0f}s"
        line += " - " + format_time_per_unit(time_per_unit, self.unit_name)
        return line + self._metric_text()

    def _write(self, text):
        s = self.stream
        s.write(text)
        s.flush()

    def _estimate_step_duration(self, current, now) -> float:
        # The first step (tracing/compilation, warm-up) is left out of the average
        # once a later step has been seen, as Keras does.
        if not current:
            return 0.0
        if self._time_after_first_step is not None and current > 1:
            per = (now - self._time_after_first_step) / (current - 1)
        else:
            per = (now - self._start) / current
        if current == 1:
            self._time_after_first_step = now
        return per
