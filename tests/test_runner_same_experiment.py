"""A re-run into a folder whose rows came from another configuration is refused before anything runs,
naming what differs (it mixed two experiments in one table and overwrote experiment.json); adding a run
to the experiment is not a different configuration. The measurement itself is not what is tested here:
run_job (the seam graphopt.distributed.torchrun also uses) returns fixed metrics without a worker."""
from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import UserError
from graphopt.runner.execute import run_experiment
from graphopt.runner.same_experiment import differences
from graphopt.runner.config import load_config
from graphopt.runner.store import ResultStore

YAML = """\
name: same
model: tiny
data: {{limit: 4}}
warmup: 0
repeats: 1
output_dir: {out}
runs:
  - {{name: padded, capture: none, scoring: {{strategy: padded, options: {{batch_size: 4}}}}}}
"""


def _fixed_metrics(job, workdir, timeout_s):
    n = 4 * 4  # questions x endings
    np.save(job.loglik_out, np.full(n, -1.0))
    return {"status": "ok", "error": "", "n_items": 4, "n_requests": n, "acc": 0.25, "acc_norm": 0.25, "agree": 1.0,
            "max_abs_dloglik": 0.0, "latency_s": 1.0, "peak_mem_mb": 1.0}


def _run(cfg_path, *overrides):
    return run_experiment(load_config(cfg_path, list(overrides)), progress=False, log=lambda *a: None,
                          run_job=_fixed_metrics)


def test_other_configuration_is_refused_naming_what_differs(tmp_path):
    out = tmp_path / "out"
    cfg_path = tmp_path / "same.yaml"
    cfg_path.write_text(YAML.format(out=out))
    first = _run(cfg_path)
    record = (out / "experiment.json").read_text()
    with pytest.raises(UserError, match=r"output folder .*out' holds rows measured with another configuration "
                                        r"\(data\.limit 4 -> 3; repeats 1 -> 2; recorded in .*experiment\.json\)"):
        _run(cfg_path, "data.limit=3", "repeats=2")
    assert (out / "experiment.json").read_text() == record  # not overwritten
    assert list(ResultStore(out).load()["finished_at"]) == list(first["finished_at"])  # nothing ran

    # the same experiment with one more run: measured as a new row, the others kept
    cfg_path.write_text(YAML.format(out=out) + "  - {name: padded-8, capture: none, scoring: {strategy: padded, "
                                               "options: {batch_size: 8}}}\n")
    table = _run(cfg_path)
    assert list(table["run"]) == ["reference", "padded", "padded-8"]
    assert list(table["finished_at"])[:2] == list(first["finished_at"])


def test_differences_compare_only_what_both_records_know():
    old = {"data": {"path": None, "limit": 8}, "seed": 0}
    new = {"data": {"path": None, "limit": 4, "split": "validation"}, "seed": 0, "tokenizer": None}
    assert differences(old, new) == ["data.limit 8 -> 4"]  # keys a record written before them lacks: not compared
