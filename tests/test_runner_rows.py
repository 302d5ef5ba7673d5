"""Result rows name the dtype a run computes in, not only the dtype it loads in."""
from graphopt.runner.execute import compute_dtype
from graphopt.runner.schema import config_from_dict
from graphopt.runner.sweep import expand


def test_cast_dtype_run_reports_the_cast_dtype():
    cfg = config_from_dict({"model": "tiny", "runs": [
        {"name": "fp32", "capture": "export", "passes": ["fuse_rmsnorm"]},
        {"name": "bf16", "capture": "export", "passes": ["fuse_rmsnorm", {"name": "cast_dtype", "dtype": "bfloat16"}]},
        {"name": "fp16", "capture": "export", "passes": [{"name": "cast_dtype", "dtype": "float16"}]},
    ]}, "<test>", {})
    dtypes = {run.name: compute_dtype(run) for run in expand(cfg)}
    assert dtypes == {"reference": "float32", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
