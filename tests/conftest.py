"""Fixtures shared across the test folders."""
import pytest


@pytest.fixture
def turns():
    """The process's turn-taking detector (runtime/devices.py), fresh: other tests' models took
    turns too. Put back to fresh afterwards."""
    from kcompile.runtime.devices import TURNS
    TURNS.reset()
    yield TURNS
    TURNS.reset()


@pytest.fixture
def taking_turns(turns):
    """As if this process's sessions had been seen taking turns: sessions are made to stop
    spinning after each run from the start, and never rebuilt for it."""
    turns.seen = True
    return turns


@pytest.fixture
def forced_parts_form(monkeypatch):
    """``force(module, name, kept)`` -> (rewrites, timed): predict's one-core parts on two cores;
    each graph the rewrite ``module.name`` makes is recorded in rewrites (its return value);
    Model._faster_parts still runs every form, and appends their runs' rows to timed, but keeps
    form ``kept`` (0 the plain graph)."""
    def force(module, name, kept):
        from kcompile.runtime import devices
        from kcompile.runtime.model import Model
        monkeypatch.setattr(devices, "cpu_cores", lambda: 2)
        rewrites, timed = [], []
        real, real_faster = getattr(module, name), Model._faster_parts
        monkeypatch.setattr(module, name, lambda *args: rewrites.append(real(*args)) or rewrites[-1])

        def faster(self, choices, feeds, n, fixed):
            timed.append([rows for _, rows in choices])
            real_faster(self, choices, feeds, n, fixed)
            return choices[kept]
        monkeypatch.setattr(Model, "_faster_parts", faster)
        return rewrites, timed
    return force


@pytest.fixture
def keras(monkeypatch):
    """Keras on JAX, for the tests that compare against it with copied weights; they skip where
    it is not installed (a benchmark extra, not a test dependency)."""
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("Keras was imported with another backend")
    return keras


@pytest.fixture
def located():
    """(source, line, message, col=None) -> the first diagnostic of compiling ``source`` (as t.kdl),
    checked to be at t.kdl:line(:col), to say ``message``, to name its place first and to show
    its line with a caret under that column."""
    def check(source, line, message, col=None):
        import kcompile
        from kcompile.errors import KcompileError
        with pytest.raises(KcompileError) as info:
            kcompile.compile_string(source, file="t.kdl")
        d = info.value.diagnostics[0]
        assert d.loc is not None and (d.loc.file, d.loc.line) == ("t.kdl", line), d.render()
        assert col is None or d.loc.col == col, d.render()
        assert message in d.message, d.render()
        text = d.render().splitlines()
        assert text[0].startswith(f"t.kdl:{line}:{d.loc.col}: error: "), d.render()
        assert text[1].strip() == source.splitlines()[line - 1].strip(), d.render()
        assert text[2].startswith("    " + " " * (d.loc.col - 1) + "^"), d.render()
        return d
    return check


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark("run")``: a script of benchmarks/ imported as a module of its own."""
    import importlib.util
    from pathlib import Path

    def load(name):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"kc_bench_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
