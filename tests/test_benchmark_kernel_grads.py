"""benchmarks/kernel_grads.py on one small shape: every form timed, the rule's form named for the
regime asked (the full grid runs for minutes and is not part of the suite)."""
import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("kernel_grads")


@pytest.mark.parametrize("regime,rule", [("parts", "slices"), ("whole", "onehot")])
def test_one_shape_in_each_regime(bench, capsys, regime, rule):
    """The rule's form is the one kernel_grad_form gives for the regime timed, and its regret
    its time over the fastest form's."""
    from kcompile.ops.nn import kernel_grad_form
    row, = bench.main(["--rounds", "1", "--regime", regime, "6x16x16"])  # (16 x 36 values: gathered)
    assert set(row["ms"]) == {"gather", "slices", "onehot"}
    assert row["rule"] == kernel_grad_form(16, 16, 36, 9, (1, 1), in_parts=regime == "parts") == "gather"
    assert row["regret"] >= 1 and row["regret"] == row["ms"]["gather"] / min(row["ms"].values())
    row, = bench.main(["--rounds", "1", "--regime", regime, "--dims", "1", "800x16x16x3"])  # (16 x 800: not gathered)
    assert row["rule"] == rule
    out = capsys.readouterr().out
    assert "rule: gather" in out and f"rule: {rule}" in out and f"1 shapes, {regime}" in out


def test_strided_shapes_and_large_windows(bench):
    row, = bench.main(["--rounds", "1", "8x8x16x3x2"])
    assert set(row["ms"]) == {"gather", "onehot"} and row["rule"] == "gather"  # (no strided slices)
    with pytest.raises(SystemExit, match="one form only"):
        bench.main(["--rounds", "1", "8x8x8x7"])
