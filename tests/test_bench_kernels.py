"""benchmarks/kernels.py on CPU: every Triton kernel under the interpreter at tiny shapes, against
the eager computation it replaces (bf16 outputs: within a few bf16 ulps of the float32 eager result)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import pandas as pd

from benchmarks import kernels

BF16_TOL = 0.07  # values of magnitude ~1-8 here: a bf16 ulp is up to 0.0625


def test_quick_run_covers_every_kernel_and_agrees_with_eager(tmp_path, capsys):
    out = tmp_path / "kernels.csv"
    assert kernels.run(["--device", "cpu", "--quick", "--reps", "1", "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert sorted(df.kernel) == sorted(kernels.KERNELS)
    assert (df.max_abs_diff <= BF16_TOL).all(), df[["kernel", "max_abs_diff"]]
    assert (df.triton_ms > 0).all() and (df.eager_ms > 0).all()
    assert df.loc[df.kernel == "swiglu", "shape"].item().startswith("halves of")  # split views, as in the graph


def test_unknown_kernel_is_a_usage_error(capsys):
    assert kernels.run(["--device", "cpu", "--quick", "--kernels", "rms_norm,flash"]) == 2
    assert "['flash'] unknown" in capsys.readouterr().err
