"""benchmarks/kernel_grads.py on one small shape: every form timed, the rule's form named for the
regime asked (the full grid runs for minutes and is not part of the suite)."""
import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("kernel_grads")


@pytest.mark.parametrize("regime,rule", [("parts", "slices"), ("whole", "onehot")])
def test_one_shape_in_each_regime(bench, capsys, regime, rule):
    rows = bench.main(["--rounds", "1", "--regime", regime, "6x16x16"])  # (16 x 36 values: gathered)
    row, = rows
    assert set(row["ms"]) == {"gather", "slices", "onehot"} and all(t > 0 for t in row["ms"].values())
    assert row["rule"] == "gather" and row["regret"] == pytest.approx(row["ms"]["gather"] / min(row["ms"].values()))
    rows = bench.main(["--rounds", "1", "--regime", regime, "--dims", "1", "800x16x16x3"])  # (16 x 800: not gathered)
    assert rows[0]["rule"] == rule
    out = capsys.readouterr().out
    assert "rule: gather" in out and f"rule: {rule}" in out and f"1 shapes, {regime}" in out


def test_strided_shapes_have_no_slices(bench):
    row, = bench.main(["--rounds", "1", "8x8x16x3x2"])
    assert set(row["ms"]) == {"gather", "onehot"}
