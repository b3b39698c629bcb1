"""kcompile.progress: Keras-style progress bar output for verbose 0, 1 and 2."""
import io
import re

import pytest

from kcompile.progress import ProgressBar, epoch_header, format_value

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class FakeClock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


class TTY(io.StringIO):
    def isatty(self):
        return True


def run_epoch(bar, clock, steps, values_at, step_time=0.005, first_step=1.0, final=None):
    """Drive ``bar`` like fit does: one update per step (finalize=False), then the
    final update with the epoch logs."""
    for i in range(1, steps + 1):
        clock.t += first_step if i == 1 else step_time
        bar.update(i, values_at(i), finalize=False)
    bar.update(steps, final if final is not None else values_at(steps), finalize=True)


def test_format_value_like_keras():
    assert format_value(0.5432) == "0.5432"
    assert format_value(12.3456789) == "12.3457"
    assert format_value(-0.25) == "-0.2500"
    assert format_value(6.1507e-07) == "6.1507e-07"
    assert format_value(0.0) == "0.0000e+00"
    assert format_value(1e-3) == "1.0000e-03"
    assert format_value(float("nan")) == "nan"


def test_verbose2_exact_line():
    clock, out = FakeClock(), io.StringIO()
    bar = ProgressBar(469, verbose=2, stream=out, clock=clock)
    # fit with verbose=2 only finalizes: elapsed 3.2s over 469 steps -> 7ms/step
    clock.t += 3.2
    bar.update(469, [("accuracy", 0.9), ("loss", 0.3), ("val_accuracy", 0.91),
                     ("val_loss", 0.00001234)], finalize=True)
    assert out.getvalue() == (
        "469/469 - 3s - 7ms/step - accuracy: 0.9000 - loss: 0.3000 - "
        "val_accuracy: 0.9100 - val_loss: 1.2340e-05\n")


def test_verbose2_prints_nothing_before_finalize():
    clock, out = FakeClock(), io.StringIO()
    bar = ProgressBar(10, verbose=2, stream=out, clock=clock)
    for i in range(1, 10):
        clock.t += 0.1
        bar.update(i, [("loss", 1.0 / i)], finalize=False)
    assert out.getvalue() == ""
    clock.t += 0.1
    bar.update(10, [("loss", 0.1)])           # finalize=None -> current >= target
    assert out.getvalue() == "10/10 - 1s - 100ms/step - loss: 0.1000\n"


def test_verbose2_excludes_first_step_from_time_per_step():
    clock, out = FakeClock(), io.StringIO()
    bar = ProgressBar(101, verbose=2, stream=out, clock=clock)
    run_epoch(bar, clock, 101, lambda i: [("loss", 0.5)], step_time=0.002, first_step=2.0)
    # 2s first step + 100 * 2ms; per step measured after the first: 2ms
    assert out.getvalue() == "101/101 - 2s - 2ms/step - loss: 0.5000\n"


def test_verbose1_non_tty_prints_only_final_line():
    clock, out = FakeClock(), io.StringIO()
    bar = ProgressBar(469, verbose=1, stream=out, clock=clock)
    run_epoch(bar, clock, 469, lambda i: [("accuracy", 0.5 + i / 1000), ("loss", 1.0 / i)],
              final=[("accuracy", 0.8123), ("loss", 0.5432)])
    text = out.getvalue()
    assert "\r" not in text
    # elapsed 1 + 468 * 0.005 = 3.34s; time per step after the first: 5ms
    assert text == ("469/469 " + "━" * 20 +
                    " 3s 5ms/step - accuracy: 0.8123 - loss: 0.5432\n")


def test_verbose1_tty_updates_in_place_with_eta():
    clock, out = FakeClock(), TTY()
    bar = ProgressBar(469, verbose=1, width=20, stream=out, clock=clock, interval=0.0)
    for i in range(1, 38):
        clock.t += 0.01 if i == 1 else 0.005
        bar.update(i, [("accuracy", 0.8123), ("loss", 0.5432)], finalize=False)
    text = ANSI.sub("", out.getvalue())
    frames = text.split("\r")[1:]
    assert len(frames) == 37
    assert "\n" not in text
    last = frames[-1].rstrip()
    # 37/469 steps, bar 20 wide (1 done), ETA = 432 steps * 5ms = 2s
    assert last == " 37/469 " + "━" * 20 + " 2s 5ms/step - accuracy: 0.8123 - loss: 0.5432"
    # colours: done part green, the rest dim
    assert "\x1b[32m━\x1b[0m\x1b[37m" + "━" * 19 in out.getvalue()
    clock.t += 432 * 0.005
    bar.update(469, [("accuracy", 0.9), ("loss", 0.25), ("val_loss", 0.3)], finalize=True)
    final = ANSI.sub("", out.getvalue()).split("\r")[-1]
    assert final.endswith("\n")
    assert final.rstrip() == ("469/469 " + "━" * 20 +
                              " 2s 5ms/step - accuracy: 0.9000 - loss: 0.2500 - val_loss: 0.3000")


def test_verbose1_tty_pads_shorter_lines():
    clock, out = FakeClock(), TTY()
    bar = ProgressBar(5, verbose=1, stream=out, clock=clock, interval=0.0)
    clock.t += 1
    bar.update(1, [("loss", 123.456)], finalize=False)
    clock.t += 1
    bar.update(2, [("loss", 1.5)], finalize=False)
    first, second = ANSI.sub("", out.getvalue()).split("\r")[1:]
    assert len(second) >= len(first)


def test_verbose1_interval_throttles_redraws():
    clock, out = FakeClock(), TTY()
    bar = ProgressBar(100, verbose=1, stream=out, clock=clock, interval=1.0)
    for i in range(1, 100):
        clock.t += 0.125
        bar.update(i, [("loss", 0.5)], finalize=False)
    # first draw at step 1, then one per simulated second: steps 9, 17, ..., 97
    assert out.getvalue().count("\r") == 13
    bar.update(100, [("loss", 0.5)], finalize=True)   # finalize always draws
    assert out.getvalue().count("\r") == 14


def test_verbose0_prints_nothing():
    clock, out = FakeClock(), TTY()
    bar = ProgressBar(10, verbose=0, stream=out, clock=clock)
    run_epoch(bar, clock, 10, lambda i: [("loss", 0.5)])
    assert out.getvalue() == ""


def test_values_are_stateful_by_default():
    clock, out = FakeClock(), TTY()
    bar = ProgressBar(4, verbose=1, stream=out, clock=clock, interval=0.0)
    for i, loss in enumerate([4.0, 3.0, 2.0], start=1):
        clock.t += 1
        bar.update(i, [("loss", loss)], finalize=False)
    # a running mean passed in is shown as-is, not averaged with the earlier ones
    assert ANSI.sub("", out.getvalue()).split("\r")[-1].rstrip().endswith("loss: 2.0000")


def test_explicit_stateful_metrics_average_the_others():
    clock, out = FakeClock(), TTY()
    bar = ProgressBar(4, verbose=1, stream=out, clock=clock, interval=0.0,
                      stateful_metrics=["acc"])
    for i, (loss, acc) in enumerate([(4.0, 0.1), (3.0, 0.2), (2.0, 0.3)], start=1):
        clock.t += 1
        bar.update(i, [("loss", loss), ("acc", acc)], finalize=False)
    last = ANSI.sub("", out.getvalue()).split("\r")[-1].rstrip()
    assert last.endswith("loss: 3.0000 - acc: 0.3000")   # loss averaged (4+3+2)/3


def test_unknown_target():
    clock, out = FakeClock(), io.StringIO()
    bar = ProgressBar(None, verbose=1, stream=out, clock=clock)
    for i in range(1, 6):
        clock.t += 0.2
        bar.update(i, [("loss", 0.5)])
    assert out.getvalue() == ""           # never finalizes by itself
    bar.update(5, [("loss", 0.25)], finalize=True)
    assert out.getvalue() == "      5/Unknown 1s 200ms/step - loss: 0.2500\n"


def test_slow_steps_use_seconds_and_fast_use_microseconds():
    clock, out = FakeClock(), io.StringIO()
    bar = ProgressBar(3, verbose=2, stream=out, clock=clock, unit_name="batch")
    clock.t += 6
    bar.update(3, [], finalize=True)
    assert out.getvalue() == "3/3 - 6s - 2s/batch\n"
    clock2, out2 = FakeClock(), io.StringIO()
    bar2 = ProgressBar(1000, verbose=2, stream=out2, clock=clock2)
    clock2.t += 0.05
    bar2.update(1000, [], finalize=True)
    assert out2.getvalue() == "1000/1000 - 0s - 50us/step\n"


def test_default_stream_is_stdout_at_write_time(capsys):
    bar = ProgressBar(2, verbose=2)
    bar.update(2, [("loss", 0.5)])
    assert re.fullmatch(r"2/2 - 0s - \d+(us|ms)/step - loss: 0\.5000\n", capsys.readouterr().out)


@pytest.mark.parametrize("verbose", [1, 2, "auto"])
def test_epoch_header_printed(verbose):
    out = io.StringIO()
    assert epoch_header(2, 10, verbose, stream=out) == "Epoch 3/10"
    assert out.getvalue() == "Epoch 3/10\n"


def test_epoch_header_silent_for_verbose0_and_single_epoch():
    out = io.StringIO()
    epoch_header(0, 10, 0, stream=out)
    epoch_header(0, 1, 1, stream=out)      # Keras prints no header when epochs == 1
    assert out.getvalue() == ""
